"""Catalogue use: a persistent index of a catalogue, new postings matched against it, and a web
app to search it.

* :mod:`tf_shopee.catalog.index` — the index folder (``python -m tf_shopee.catalog build|add|
  info``): embeddings per model, ids, labels, the TF-IDF state fitted on the catalogue, phashes,
  thresholds and a manifest, written atomically.
* :mod:`tf_shopee.catalog.search` — exact or approximate (FAISS IVF) nearest catalogue rows,
  behind one interface.
* :mod:`tf_shopee.catalog.query` — ``predict.py --catalog``: the sources, thresholds, union and
  min2 of self-matching, adapted to queries; F1, top-1 accuracy and recall@1.
* :mod:`tf_shopee.catalog.reader` — loading one version of an index, paths confined to its
  folder, every file checked while parsed; :mod:`tf_shopee.catalog.photos` — decoding photos
  with a pixel limit.
* :mod:`tf_shopee.catalog.app` — ``make app``: upload a photo and/or type a title, see the best
  catalogue matches; the JSON API (FastAPI on uvicorn). Its model of the catalogue (kept current
  when the index is replaced) is :mod:`tf_shopee.catalog.live`, its pages
  :mod:`tf_shopee.catalog.pages`, its response bodies :mod:`tf_shopee.catalog.api_models`.
"""
