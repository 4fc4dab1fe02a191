"""Data: synthetic mini-Shopee generator, CSV → TFRecord conversion, TFRecord schema, tf.data."""
