"""Data: CSV → TFRecord conversion, the TFRecord schema and the tf.data input pipeline."""
