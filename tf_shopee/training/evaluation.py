"""Validation during training: embed a fold, sweep the cosine threshold, and precise BatchNorm."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tf_shopee.matching.topk import matches_from_neighbours, top_k_neighbours
from tf_shopee.metrics import mean_f1_from_matches
from tf_shopee.training.trainer import input_names

# Cosine thresholds swept on the validation fold; finer near 1, where an untrained (or
# collapsed) model's neighbours all sit.
VALIDATION_THRESHOLDS = tuple(np.round(np.arange(0.0, 1.0, 0.02), 2).tolist()) + (
    0.99,
    0.995,
    0.999,
)
# Neighbours looked up per validation posting: Shopee groups have at most 51 postings.
VALIDATION_NEIGHBOURS = 51


def embedding_function(embedding_model):
    """A ``tf.function`` inputs → L2-normalised float32 embeddings (inference mode).

    Make it once per model and pass it to every :func:`embed_dataset` call: a new function per
    validation retraces the model each epoch (and TensorFlow warns about it).
    """

    @tf.function(reduce_retracing=True)
    def embed(inputs):
        embeddings = tf.cast(embedding_model(inputs, training=False), tf.float32)
        return tf.math.l2_normalize(embeddings, axis=1)

    return embed


def embed_dataset(
    embedding_model, dataset, kind: str, progress=None, embed=None
) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised embeddings and labels of every posting of a (finite) batched dataset.

    Runs the model outside ``strategy.run`` (one device): every worker of a multi-worker run
    gets the whole fold, so they all reach the same validation result. ``progress``, when
    given, is called with the number of postings embedded so far after each batch; ``embed``
    is the model's :func:`embedding_function` (made here when not given).
    """

    names = input_names(kind)
    if embed is None:
        embed = embedding_function(embedding_model)

    embeddings, labels = [], []
    done = 0
    for batch in dataset:
        embeddings.append(embed({key: batch[key] for key in names}).numpy())
        labels.append(batch["label"].numpy())
        done += len(labels[-1])
        if progress is not None:
            progress(done)
    if not embeddings:
        return np.zeros((0, int(embedding_model.output_shape[-1])), np.float32), np.zeros(0, int)
    return np.concatenate(embeddings), np.concatenate(labels)


def recalibrate_batch_norm(embedding_model, dataset, kind: str, batches: int) -> int:
    """Precise BatchNorm: re-estimate BatchNorm moving statistics from training batches.

    Every trainable ``BatchNormalization`` layer of ``embedding_model`` gets, as its moving mean
    and variance, the plain average of the batch statistics it sees over the first ``batches``
    batches of ``dataset`` (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021). Dropout is
    switched off meanwhile so that it does not inflate the variances. Frozen BatchNorm layers
    (``trainable=False``, e.g. a frozen backbone) keep their statistics: Keras runs them in
    inference mode. Nothing else changes: weights, optimizer state and step counters are
    untouched.

    Runs eagerly outside ``strategy.run``, like :func:`embed_dataset`, so every replica (and
    every worker, which reads the same batches) ends up with the same statistics.

    Args:
        embedding_model: the Keras embedding model (image, text or multimodal tower).
        dataset: batched, un-augmented training data (a dict per batch).
        kind: ``image``, ``text`` or ``multimodal``: which inputs the model takes.
        batches: how many batches to average over.

    Returns:
        The number of batches actually used (fewer when the dataset is shorter).
    """
    # Keras' walk over every tracked sublayer: unlike ``model.layers`` it also reaches layers
    # held inside custom layers (the Dropout of a keras-hub transformer block, for instance).
    norm_layers = [
        layer for layer in embedding_model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
    if not norm_layers or batches <= 0:
        return 0
    dropout_layers = [
        layer for layer in embedding_model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.Dropout)
    ]
    saved_momenta = [layer.momentum for layer in norm_layers]
    saved_rates = [layer.rate for layer in dropout_layers]
    names = input_names(kind)
    used = 0
    try:
        for layer in dropout_layers:
            layer.rate = 0.0
        for batch in dataset.take(batches):
            # momentum k / (k + 1) makes the moving value the running mean of the k + 1
            # batch statistics seen so far (the first batch replaces the old value outright).
            for layer in norm_layers:
                layer.momentum = used / (used + 1.0)
            embedding_model({key: batch[key] for key in names}, training=True)
            used += 1
    finally:
        for layer, momentum in zip(norm_layers, saved_momenta):
            layer.momentum = momentum
        for layer, rate in zip(dropout_layers, saved_rates):
            layer.rate = rate
    return used


def threshold_sweep(
    embeddings: np.ndarray, labels: np.ndarray, thresholds=VALIDATION_THRESHOLDS
) -> dict:
    """Mean F1 of cosine-threshold matching at each threshold, and the best one.

    Each posting matches the (up to 50) neighbours whose cosine is >= the threshold, itself
    included; F1 is the Kaggle mean F1 against the label groups.
    """

    neighbours = top_k_neighbours(embeddings, k=min(VALIDATION_NEIGHBOURS, len(embeddings)))
    sweep = []
    for threshold in thresholds:
        matches = matches_from_neighbours(neighbours, float(threshold))
        sweep.append((float(threshold), float(mean_f1_from_matches(matches, labels))))
    best_threshold, best_f1 = max(sweep, key=lambda item: (item[1], -item[0]))
    return {
        "best_threshold": best_threshold,
        "best_f1": best_f1,
        "sweep": [{"threshold": t, "f1": f} for t, f in sweep],
        "postings": int(len(labels)),
    }
