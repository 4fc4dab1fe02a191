"""Synthetic mini-Shopee: a procedurally generated stand-in for the Kaggle "Shopee - Price Match
Guarantee" training set, so the demo, the tests and the tutorials run without the real photos.

``python -m tf_shopee.synthetic --out DIR --postings N --seed S`` writes ``DIR/train.csv``
with exactly the Kaggle columns (posting_id, image, image_phash, title, label_group) and the photos
in ``DIR/train_images/<32 hex>.jpg``.

How the data is made, and why it behaves like the real set:

* **Groups.** A label group is one sellable product (one colour / size / model of an item); its
  size is drawn from the real Shopee group-size histogram (2..50 postings, mean about 3.1, 63 % of
  groups are pairs).
* **Families and hard negatives.** Groups come in families: the variants of one base product
  (another colour, size or model number) are separate label groups whose titles are near-identical
  and whose photos look alike, just as "Case iPhone 11" and "Case iPhone 12" are different
  products on Shopee.
* **Titles.** Each posting is listed by a seller with its own habits: word order, casing,
  Indonesian or English synonyms, promo words (PROMO, READY STOCK, ORIGINAL, COD, ...), unit forms
  (500ml / 0,5 L), typos and abbreviations, dropped words, keyword stuffing, shop codes, and the
  literal ``\\xe2\\x9d\\x80`` escapes that the real CSV contains. Vocabulary and style follow
  Indonesian e-commerce listings (Sepatu, Kaos, Masker, Tas, brands, sizes ...).
* **Photos.** A product is a procedurally drawn object (a silhouette such as a bottle, shoe, shirt
  or bag, with colours, a pattern and a brand badge) that a CNN can recognise at 64 px. Every
  posting photographs it differently: zoom and crop, rotation, flips, lighting, backgrounds, shop
  frames, watermark text, noise and JPEG quality. Some postings reuse another posting's image file
  and some re-upload a lightly edited copy, which is what makes ``image_phash`` matching work on
  the real data about as well as it works here.
* **Determinism.** Every family draws from its own random generator seeded by ``(seed, family)``,
  so the CSV and the JPEG bytes are the same for a seed whatever the number of worker processes
  (on one machine: other Pillow / libjpeg builds may encode JPEGs differently).

The CSV rows are sorted by image file name, as in Kaggle's train.csv. The image file name is the
MD5 of the JPEG bytes (Kaggle's names look like that too), so a file reused by two postings
appears once on disk.

Calibration (mean per-posting F1, Kaggle definition; every posting matches itself, at most 50
matches), measured on 3,000 synthetic postings (seed 0) and, for reference, on the full real
train.csv (34,250 postings; a subset that small would score higher, having fewer distractors):

============================================  =========  ==========
method                                        synthetic  real Kaggle
============================================  =========  ==========
each posting matches only itself              0.458      0.461
identical image_phash                         0.553      0.553
image_phash Hamming distance <= 8             0.577      0.596
TfidfVectorizer() on titles, best threshold   0.650      0.649
============================================  =========  ==========

so titles and hashes get about as far here as on the real data, and a learned model has room
to show its gain.

The package, by what each module makes:

* :mod:`~tf_shopee.synthetic.vocabulary`: the words (categories, brands, colours, promo words);
* :mod:`~tf_shopee.synthetic.plans`: label groups, families, ids, sellers, products and their
  variants and designs;
* :mod:`~tf_shopee.synthetic.titles`: each posting's title;
* :mod:`~tf_shopee.synthetic.drawing`: the product as an image;
* :mod:`~tf_shopee.synthetic.photos`: each posting's photo of it and the JPEG bytes;
* :mod:`~tf_shopee.synthetic.dataset`: :func:`generate_dataset`, its worker pool and the command
  line (``tf-shopee-synthetic``).

It is a fixture generator for the demo, the tests and the benchmarks; nothing in training or
matching imports it.
"""

from tf_shopee.synthetic.dataset import (
    CSV_COLUMNS,
    CSV_NAME,
    DEFAULT_IMAGE_SIZE,
    IMAGES_DIRNAME,
    build_argument_parser,
    generate_dataset,
    main,
)

__all__ = [
    "CSV_COLUMNS",
    "CSV_NAME",
    "DEFAULT_IMAGE_SIZE",
    "IMAGES_DIRNAME",
    "build_argument_parser",
    "generate_dataset",
    "main",
]
