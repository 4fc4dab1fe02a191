"""Matching: postings → embeddings → neighbours per source → a decision → matches.

The layers, each used by the ones after it and never the other way round:

* :mod:`~tf_shopee.matching.topk` — exact chunked cosine top-k, thresholds with min2, unions;
  :mod:`~tf_shopee.matching.blend` — neighbourhood blending, for embeddings and TF-IDF titles.
* :mod:`~tf_shopee.matching.postings` — reading postings (CSV + image folder, or TFRecords);
  :mod:`~tf_shopee.matching.embedding` — calling an exported model on them, with a cache;
  :mod:`~tf_shopee.matching.sources` — source names and kinds, every model's embeddings plus
  ``concat``; :mod:`~tf_shopee.matching.model_free` — the TF-IDF and phash sources.
* :mod:`~tf_shopee.matching.decision` — rules, units, applying a decision, thresholds files;
  :mod:`~tf_shopee.matching.search` — choosing a decision on labelled postings;
  :mod:`~tf_shopee.matching.plan` — which decision a run applies;
  :mod:`~tf_shopee.matching.options` — the settings of a run, checked once;
  :mod:`~tf_shopee.matching.report` — the matches CSV and the F1 table.

``predict.py`` (:mod:`tf_shopee.predict`) orchestrates them for self-matching; the catalogue
(:mod:`tf_shopee.catalog`) uses them for queries against a stored index. Nothing here imports
either.
"""
