"""Embedding past one machine: ``python -m tf_shopee.beam embed`` as an Apache Beam pipeline.

The same pipeline runs on Beam's DirectRunner (tests, one machine) and unchanged on Dataflow,
Flink or Spark. It sits on the matching layer: postings are read by
:mod:`tf_shopee.matching.postings`, photos are checked and embedded by
:mod:`tf_shopee.matching.embedding` (inside RunInference, :mod:`tf_shopee.beam.handler`), and the
output's format is :mod:`tf_shopee.matching.precomputed`'s, which predict.py ``--embeddings`` and
``catalog build|add --embeddings`` read without importing Beam. Nothing below this package
imports it.

Modules: :mod:`~tf_shopee.beam.handler` (the ModelHandler), :mod:`~tf_shopee.beam.pipeline`
(plan, staging, the steps, resuming), :mod:`~tf_shopee.beam.cli` (the command line).
"""
