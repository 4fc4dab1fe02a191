"""Synthetic mini-Shopee: a procedurally generated stand-in for the Kaggle "Shopee - Price Match
Guarantee" training set, so the demo, the tests and the tutorials run without the real photos.

``python -m tf_shopee.data.synthetic --out DIR --postings N --seed S`` writes ``DIR/train.csv``
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
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import io
import multiprocessing
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import imagehash
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

from tf_shopee.errors import UserError, exit_on_user_error
from tf_shopee.io_utils import atomic_path

CSV_COLUMNS = ("posting_id", "image", "image_phash", "title", "label_group")
CSV_NAME = "train.csv"
IMAGES_DIRNAME = "train_images"
DEFAULT_IMAGE_SIZE = 256
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 1024
MAX_POSTINGS = 1_000_000
MAX_GROUP_SIZE = 50

# Number of label groups of each size in the real Kaggle train.csv (34,250 postings, 11,014
# groups); the 7 groups of 51 are folded into 50 because the issue caps groups at 50.
REAL_GROUP_SIZE_COUNTS = {
    2: 6979, 3: 1779, 4: 862, 5: 468, 6: 282, 7: 154, 8: 118, 9: 91, 10: 48, 11: 38, 12: 39,
    13: 28, 14: 19, 15: 19, 16: 13, 17: 9, 18: 5, 19: 5, 20: 6, 21: 6, 22: 6, 23: 4, 24: 2,
    25: 2, 26: 1, 27: 1, 30: 1, 31: 2, 32: 3, 33: 3, 34: 3, 35: 4, 36: 1, 37: 1, 41: 1, 45: 1,
    46: 2, 49: 1, 50: 7,
}  # fmt: skip

# Number of label groups (variants) in one product family, and how likely each is. About 40 % of
# groups then have a sibling group that is a hard negative.
FAMILY_SIZE_PROBABILITIES = {1: 0.62, 2: 0.2, 3: 0.1, 4: 0.05, 5: 0.03}

# Independent random streams derived from the seed; a family's stream depends only on
# (seed, FAMILY_STREAM, family index), never on how work is split between processes.
_LAYOUT_STREAM = 0
_SELLER_STREAM = 1
_FAMILY_STREAM = 2

# --------------------------------------------------------------------------------------------
# Vocabulary. A "concept" is a tuple of interchangeable surface forms, Indonesian first, English
# after; a listing picks one of them.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Category:
    key: str
    silhouettes: tuple[str, ...]
    nouns: tuple[tuple[str, ...], ...]
    kinds: tuple[tuple[str, ...], ...]
    materials: tuple[tuple[str, ...], ...] = ()
    features: tuple[tuple[str, ...], ...] = ()
    size_kind: str | None = None
    brands: tuple[str, ...] = ()
    audience: bool = False
    weight: float = 1.0


_CATEGORIES = (
    _Category(
        "sepatu", ("shoe",),
        nouns=(("Sepatu", "Shoes"), ("Sneakers", "Sepatu Sneakers"), ("Sepatu", "Shoe")),
        kinds=(("Running", "Lari"), ("Sport", "Olahraga"), ("Casual", "Kasual"), ("Kets",),
               ("Slip On",), ("Pantofel",), ("Boots", "Boot"), ("Sekolah", "School"),
               ("Kerja", "Kantor"), ("Hiking", "Gunung")),
        materials=(("Kulit", "Leather"), ("Kanvas", "Canvas"), ("Suede",), ("Mesh", "Jaring")),
        features=(("Anti Slip",), ("Ringan", "Lightweight"), ("Empuk", "Nyaman", "Comfortable"),
                  ("Tahan Air", "Waterproof"), ("Sol Karet", "Rubber Sole")),
        size_kind="shoe", audience=True, weight=1.6,
        brands=("Adidas", "Nike", "Converse", "Vans", "Ventela", "Compass", "Brodo", "Piero",
                "Homyped", "Kickers", "Eagle", "Warrior", "Bata", "Fila", "Specs"),
    ),
    _Category(
        "sandal", ("shoe",),
        nouns=(("Sandal", "Sandals", "Sendal"),),
        kinds=(("Jepit", "Flip Flop"), ("Slop", "Slide"), ("Gunung", "Outdoor"), ("Wedges",),
               ("Selop",), ("Karet", "Rubber")),
        materials=(("Karet", "Rubber"), ("Kulit", "Leather"), ("Spons", "Sponge")),
        features=(("Anti Slip",), ("Empuk", "Comfortable"), ("Ringan",)),
        size_kind="shoe", audience=True,
        brands=("Swallow", "Eiger", "Crocs", "Carvil", "Fipper", "Homyped", "Bata", "Skechers"),
    ),
    _Category(
        "kaos", ("tshirt",),
        nouns=(("Kaos", "T-Shirt", "Tshirt"), ("Baju", "Kaos Oblong", "Atasan")),
        kinds=(("Polos", "Plain"), ("Distro",), ("Lengan Pendek", "Short Sleeve"), ("Oversize",),
               ("Sablon", "Printing"), ("Couple",), ("Raglan",), ("Anime",)),
        materials=(("Katun", "Cotton", "Cotton Combed 30s"), ("Polyester", "Poliester"),
                   ("Bahan Adem", "Cool Fabric")),
        features=(("Adem",), ("Tebal",), ("Premium",), ("Unisex",)),
        size_kind="clothing", audience=True, weight=1.6,
        brands=("Erigo", "Roughneck", "Thanksinsomnia", "3Second", "Greenlight", "Cardinal",
                "Uniqlo", "Screamous", "Dagadu"),
    ),
    _Category(
        "kemeja", ("shirt",),
        nouns=(("Kemeja", "Shirt", "Hem"),),
        kinds=(("Flanel", "Flannel"), ("Batik",), ("Lengan Panjang", "Long Sleeve"),
               ("Formal", "Kantor"), ("Kotak", "Kotak-kotak"), ("Koko",), ("Oxford",)),
        materials=(("Katun", "Cotton"), ("Linen",), ("Denim",), ("Rayon",)),
        features=(("Slim Fit", "Slimfit"), ("Adem",), ("Premium",)),
        size_kind="clothing", audience=True, weight=1.2,
        brands=("Alisan", "Executive", "Hammer", "Arrow", "Cardinal", "Kemeja Id"),
    ),
    _Category(
        "jaket", ("jacket",),
        nouns=(("Jaket", "Jacket"), ("Hoodie", "Sweater")),
        kinds=(("Bomber",), ("Parasut", "Windbreaker"), ("Jumper",), ("Zipper", "Resleting"),
               ("Crewneck",), ("Varsity",), ("Motor", "Riding")),
        materials=(("Fleece",), ("Baby Terry", "Babyterry"), ("Jeans", "Denim"), ("Kulit",)),
        features=(("Tebal",), ("Hangat", "Warm"), ("Anti Angin",), ("Premium",)),
        size_kind="clothing", audience=True, weight=1.2,
        brands=("Erigo", "Eiger", "Consina", "Uniqlo", "Rising", "HRCN", "Respiro"),
    ),
    _Category(
        "celana", ("pants",),
        nouns=(("Celana", "Pants"),),
        kinds=(("Jeans",), ("Chino", "Chinos"), ("Jogger",), ("Kulot", "Culottes"), ("Cargo",),
               ("Pendek", "Short"), ("Panjang", "Long"), ("Training", "Trening"),
               ("Legging",), ("Kerja", "Bahan")),
        materials=(("Katun", "Cotton"), ("Denim",), ("Jeans",), ("Drill",)),
        features=(("Stretch", "Melar"), ("Slim Fit",), ("Adem",), ("Karet Pinggang",)),
        size_kind="clothing", audience=True, weight=1.3,
        brands=("Levis", "Lea", "Cardinal", "Erigo", "Lois", "Wrangler", "Hammer"),
    ),
    _Category(
        "gamis", ("dress",),
        nouns=(("Gamis", "Dress", "Long Dress"), ("Daster", "Dress Rumah")),
        kinds=(("Syari", "Syar'i"), ("Batik",), ("Motif", "Printing"), ("Polos", "Plain"),
               ("Kancing Depan", "Busui"), ("Kaftan",), ("Brokat",)),
        materials=(("Rayon",), ("Katun", "Cotton"), ("Jersey",), ("Wolfis",), ("Ceruti",)),
        features=(("Adem",), ("Jumbo", "Big Size"), ("Premium",)),
        size_kind="clothing", weight=1.2,
        brands=("Zoya", "Rabbani", "Elzatta", "Alhadi", "Nibras", "Hijup"),
    ),
    _Category(
        "hijab", ("hijab",),
        nouns=(("Jilbab", "Hijab", "Kerudung"),),
        kinds=(("Segi Empat", "Square"), ("Pashmina",), ("Instan", "Instant"), ("Bergo",),
               ("Khimar",), ("Sport",)),
        materials=(("Voal", "Voile"), ("Ceruti",), ("Diamond", "Diamond Italiano"), ("Jersey",),
                   ("Paris",)),
        features=(("Tegak Paripurna",), ("Tidak Menerawang",), ("Adem",), ("Lasercut",)),
        size_kind="dimension",
        brands=("Zoya", "Rabbani", "Elzatta", "Bella Square", "Saudia", "Heaven Lights"),
    ),
    _Category(
        "masker", ("mask",),
        nouns=(("Masker", "Mask"), ("Masker Wajah", "Face Mask")),
        kinds=(("Kain", "Cloth"), ("Medis", "Medical"), ("Duckbill",), ("3 Ply", "3ply"),
               ("KF94",), ("Earloop",), ("Hijab", "Headloop"), ("Scuba",)),
        materials=(("Kain", "Fabric"), ("Non Woven",), ("Spunbond",)),
        features=(("Bisa Dicuci", "Washable"), ("Anti Virus",), ("BPOM", "Kemenkes"),
                  ("Nyaman",)),
        size_kind="count", audience=True, weight=1.2,
        brands=("Sensi", "Mitra", "Onemed", "Serenity", "Duckbill", "Evo", "Nexcare"),
    ),
    _Category(
        "tas", ("bag",),
        nouns=(("Tas", "Bag"),),
        kinds=(("Selempang", "Sling Bag"), ("Ransel", "Backpack"), ("Jinjing", "Handbag"),
               ("Tote Bag", "Totebag"), ("Pinggang", "Waist Bag"), ("Laptop",),
               ("Sekolah", "School"), ("Kerja", "Kantor"), ("Bahu", "Shoulder Bag")),
        materials=(("Kulit", "Leather"), ("Kanvas", "Canvas"), ("Nilon", "Nylon"), ("PU",)),
        features=(("Tahan Air", "Waterproof"), ("Muat Banyak",), ("Import",), ("Fashion",)),
        size_kind="dimension", audience=True, weight=1.6,
        brands=("Eiger", "Exsport", "Bodypack", "Consina", "Elizabeth", "Palomino", "Jims Honey",
                "Sophie Martin"),
    ),
    _Category(
        "dompet", ("wallet",),
        nouns=(("Dompet", "Wallet"),),
        kinds=(("Lipat", "Fold"), ("Panjang", "Long Wallet"), ("Kartu", "Card Holder"),
               ("Koin", "Coin"), ("Resleting", "Zipper")),
        materials=(("Kulit", "Leather"), ("Kulit Asli", "Genuine Leather"), ("Kanvas",)),
        features=(("Slim", "Tipis"), ("Banyak Slot",), ("Import",)),
        audience=True,
        brands=("Jims Honey", "Braun Buffel", "Elizabeth", "Guess", "Charles Keith"),
    ),
    _Category(
        "topi", ("cap",),
        nouns=(("Topi", "Cap", "Hat"),),
        kinds=(("Baseball",), ("Bucket", "Bucket Hat"), ("Trucker",), ("Snapback",),
               ("Rajut", "Kupluk", "Beanie"), ("Golf",)),
        materials=(("Katun", "Cotton"), ("Rajut", "Knit"), ("Jeans", "Denim")),
        features=(("Bordir", "Embroidery"), ("Polos",), ("Distro",)),
        audience=True,
        brands=("Eiger", "Erigo", "NY", "Consina", "Rei"),
    ),
    _Category(
        "jam", ("watch",),
        nouns=(("Jam Tangan", "Watch", "Arloji"),),
        kinds=(("Digital",), ("Analog",), ("Sport",), ("Smartwatch", "Smart Watch"),
               ("Rantai", "Strap Rantai"), ("Strap Kulit", "Leather Strap"), ("Couple",)),
        features=(("Tahan Air", "Waterproof", "Water Resistant"), ("Anti Air",),
                  ("Garansi", "Bergaransi"), ("Original",)),
        audience=True, weight=1.2,
        brands=("Casio", "Skmei", "Alexandre Christie", "Digitec", "Xiaomi", "Fossil",
                "Swiss Army", "Quartz"),
    ),
    _Category(
        "case", ("phone",),
        nouns=(("Case", "Casing", "Softcase"), ("Case HP", "Phone Case")),
        kinds=(("Silikon", "Silicone"), ("Bening", "Clear", "Transparan"),
               ("Anti Crack", "Anticrack"), ("Motif",), ("Slim", "Tipis"), ("Magnetic", "Magnet"),
               ("Hardcase", "Hard Case"), ("Macaron",)),
        features=(("Pelindung Kamera", "Camera Protect"), ("Full Cover",), ("Lucu", "Cute")),
        size_kind="phone", weight=1.4,
        brands=("Spigen", "Nillkin", "Baseus", "Ume", "Rock", "Casetify"),
    ),
    _Category(
        "kabel", ("cable",),
        nouns=(("Kabel Data", "Data Cable"), ("Kabel Charger", "Charger Cable", "Charger")),
        kinds=(("Micro USB",), ("Type C", "Type-C", "Tipe C"), ("Lightning", "iPhone"),
               ("Fast Charging", "Fast Charge", "Quick Charge"), ("3in1", "3 in 1"),
               ("Magnetic", "Magnet")),
        features=(("Original",), ("Anti Putus", "Tidak Mudah Putus"), ("Garansi",)),
        size_kind="length",
        brands=("Robot", "Vivan", "Baseus", "Anker", "Xiaomi", "Samsung", "Hippo", "Ugreen"),
    ),
    _Category(
        "headset", ("headphone",),
        nouns=(("Headset", "Earphone"), ("Headphone", "Handsfree")),
        kinds=(("Bluetooth", "Wireless"), ("Gaming",), ("Bass", "Super Bass", "Extra Bass"),
               ("TWS",), ("Stereo",), ("Sport",)),
        features=(("Mic", "Microphone"), ("Noise Cancelling",), ("Original",), ("Garansi",)),
        brands=("JBL", "Sony", "Xiaomi", "Robot", "Rexus", "Sades", "Lenovo", "Baseus"),
    ),
    _Category(
        "powerbank", ("box",),
        nouns=(("Powerbank", "Power Bank", "PB"),),
        kinds=(("Fast Charging", "Quick Charge"), ("Mini",), ("Slim",), ("Dual USB",),
               ("LED Display",)),
        features=(("Original",), ("Garansi Resmi", "Garansi"), ("Real Capacity",)),
        size_kind="capacity",
        brands=("Robot", "Vivan", "Anker", "Xiaomi", "Hippo", "Baseus", "Aukey"),
    ),
    _Category(
        "botol", ("bottle", "can"),
        nouns=(("Botol Minum", "Water Bottle", "Botol"), ("Tumbler", "Termos")),
        kinds=(("Sport", "Olahraga"), ("Anak", "Kids"), ("Kaca", "Glass"),
               ("Stainless", "Stainless Steel"), ("Viral",), ("Motivasi", "Motivational"),
               ("Bening", "Transparan")),
        features=(("BPA Free",), ("Anti Bocor", "Leak Proof"), ("Tahan Panas",)),
        size_kind="volume", weight=1.2,
        brands=("Lock&Lock", "Tupperware", "Lion Star", "Claris", "Corkcicle", "Zojirushi"),
    ),
    _Category(
        "skincare", ("bottle", "jar", "tube"),
        nouns=(("Serum", "Facial Serum"), ("Toner",), ("Pelembab", "Moisturizer"),
               ("Sunscreen", "Sunblock", "Tabir Surya"), ("Sabun Muka", "Facial Wash")),
        kinds=(("Pencerah", "Brightening"), ("Jerawat", "Acne", "Anti Acne"),
               ("Pemutih", "Whitening"), ("Melembabkan", "Hydrating"), ("Niacinamide",),
               ("Vitamin C",), ("Glowing",)),
        features=(("BPOM",), ("Original", "Ori"), ("Halal",), ("Share In Jar",)),
        size_kind="volume", weight=1.4,
        brands=("Wardah", "Scarlett", "Somethinc", "Garnier", "Emina", "Ponds", "Azarine",
                "Whitelab", "MS Glow", "Nivea", "Skintific"),
    ),
    _Category(
        "lipstik", ("tube",),
        nouns=(("Lipstik", "Lipstick"), ("Lip Cream", "Lip Matte"), ("Lip Tint",)),
        kinds=(("Matte",), ("Glossy",), ("Tahan Lama", "Long Lasting"), ("Waterproof",),
               ("Transferproof",)),
        features=(("BPOM",), ("Original",), ("Halal",)),
        brands=("Wardah", "Make Over", "Emina", "Pixy", "Maybelline", "Implora", "Madame Gie",
                "Purbasari"),
    ),
    _Category(
        "sabun", ("bottle", "pouch"),
        nouns=(("Sabun Mandi", "Body Wash", "Sabun Cair"), ("Shampoo", "Sampo"),
               ("Sabun Cuci Piring", "Pencuci Piring", "Dishwashing")),
        kinds=(("Refill", "Isi Ulang"), ("Pouch",), ("Botol", "Bottle"), ("Jeruk Nipis", "Lime"),
               ("Anti Ketombe", "Anti Dandruff"), ("Lavender",), ("Antibakteri", "Antibacterial")),
        features=(("Wangi", "Harum"), ("Original",), ("Hemat",)),
        size_kind="volume", weight=1.2,
        brands=("Lifebuoy", "Dove", "Sunsilk", "Pantene", "Clear", "Sunlight", "Mama Lemon", "Lux",
                "Biore", "Shinzui"),
    ),
    _Category(
        "parfum", ("bottle",),
        nouns=(("Parfum", "Perfume", "Minyak Wangi"),),
        kinds=(("EDT", "Eau de Toilette"), ("EDP", "Eau de Parfum"), ("Body Mist",),
               ("Tahan Lama", "Long Lasting"), ("Refill",)),
        features=(("Original",), ("Reject",), ("Segel",), ("Wangi Mewah",)),
        size_kind="volume", audience=True,
        brands=("Casablanca", "Axe", "Evangeline", "HMNS", "The Body Shop", "Vitalis", "Saff"),
    ),
    _Category(
        "mie", ("pouch",),
        nouns=(("Mie Instan", "Instant Noodle"), ("Mie", "Mi", "Noodle")),
        kinds=(("Goreng", "Fried"), ("Kuah", "Soup"), ("Pedas", "Spicy", "Hot"),
               ("Ayam Bawang",), ("Rendang",), ("Soto",), ("Kari Ayam", "Chicken Curry")),
        features=(("Halal",), ("Grosir",), ("Exp Lama",)),
        size_kind="count",
        brands=("Indomie", "Mie Sedaap", "Sarimi", "Samyang", "Supermi", "Lemonilo"),
    ),
    _Category(
        "snack", ("pouch",),
        nouns=(("Keripik", "Kripik", "Chips"), ("Cemilan", "Camilan", "Snack")),
        kinds=(("Pedas", "Spicy"), ("Balado",), ("Original",), ("Keju", "Cheese"),
               ("Singkong", "Cassava"), ("Pisang", "Banana"), ("Kentang", "Potato")),
        features=(("Halal",), ("Renyah", "Crispy"), ("Homemade",), ("Oleh Oleh",)),
        size_kind="weight", weight=1.2,
        brands=("Maicih", "Qtela", "Chitato", "Lays", "Taro", "Kusuka", "Basreng"),
    ),
    _Category(
        "kopi", ("pouch", "jar", "can"),
        nouns=(("Kopi", "Coffee"),),
        kinds=(("Bubuk", "Powder"), ("Sachet",), ("Arabika", "Arabica"), ("Robusta",),
               ("Susu", "Latte"), ("Gula Aren", "Palm Sugar"), ("Instan", "Instant")),
        features=(("Halal",), ("Asli",), ("Premium",)),
        size_kind="weight",
        brands=("Kapal Api", "Nescafe", "Good Day", "Luwak", "Torabika", "Excelso", "ABC"),
    ),
    _Category(
        "minuman", ("can", "bottle"),
        nouns=(("Minuman", "Drink"), ("Susu", "Milk")),
        kinds=(("Kaleng", "Can"), ("UHT",), ("Coklat", "Chocolate"), ("Stroberi", "Strawberry"),
               ("Full Cream",), ("Soda",), ("Teh", "Tea")),
        features=(("Halal",), ("Dus", "Karton"), ("Grosir",)),
        size_kind="volume",
        brands=("Ultra Milk", "Bear Brand", "Frisian Flag", "Coca Cola", "Pocari Sweat",
                "Teh Pucuk", "Milo"),
    ),
    _Category(
        "mainan", ("toy",),
        nouns=(("Mainan", "Toy", "Mainan Anak"), ("Boneka", "Doll", "Plush")),
        kinds=(("Edukasi", "Educational"), ("Lucu", "Cute"), ("Karakter", "Character"),
               ("Puzzle",), ("Bulu", "Plush"), ("Jumbo",), ("Musik", "Music")),
        features=(("SNI",), ("Aman Untuk Anak",), ("Import",), ("Kado", "Hadiah", "Gift")),
        size_kind="length", weight=1.2,
        brands=("Lego", "Hot Wheels", "Barbie", "Istana Boneka", "Miniso"),
    ),
    _Category(
        "helm", ("helmet",),
        nouns=(("Helm", "Helmet"),),
        kinds=(("Bogo",), ("Retro", "Klasik"), ("Full Face", "Fullface"), ("Half Face",),
               ("Anak", "Kids"), ("Cakil",)),
        features=(("SNI",), ("Kaca Cembung",), ("Double Visor",)),
        audience=True,
        brands=("INK", "KYT", "NHK", "GM", "Bogo", "MDS", "Cargloss"),
    ),
    _Category(
        "dapur", ("jar", "pan"),
        nouns=(("Panci", "Pot"), ("Wajan", "Frying Pan", "Teflon")),
        kinds=(("Anti Lengket", "Non Stick"), ("Stainless",), ("Set",),
               ("Presto", "Pressure Cooker"), ("Susu", "Milk Pan"), ("Granite",)),
        features=(("Tebal",), ("Bisa Induksi", "Induction"), ("Tutup Kaca",)),
        size_kind="diameter",
        brands=("Maspion", "Kirin", "Oxone", "Cosmos", "Miyako", "Happycall", "Supra"),
    ),
    _Category(
        "toples", ("jar", "box"),
        nouns=(("Toples", "Stoples", "Jar"), ("Kotak Makan", "Tempat Makan", "Lunch Box")),
        kinds=(("Kaca", "Glass"), ("Plastik", "Plastic"), ("Kedap Udara", "Airtight"),
               ("Bulat", "Round"), ("Kotak", "Square"), ("Susun",)),
        features=(("BPA Free",), ("Microwave Safe",), ("Anti Tumpah",)),
        size_kind="volume",
        brands=("Lock&Lock", "Tupperware", "Lion Star", "Claris", "Calista", "Yooyee"),
    ),
    _Category(
        "buku", ("book",),
        nouns=(("Buku", "Book"),),
        kinds=(("Tulis", "Notebook"), ("Gambar", "Drawing"), ("Cerita Anak", "Story Book"),
               ("Agenda", "Planner"), ("Mewarnai", "Coloring"), ("Diary",)),
        features=(("Hard Cover", "Hardcover"), ("Murah",), ("Isi Lengkap",)),
        size_kind="sheets",
        brands=("Sidu", "Kiky", "Big Boss", "Campus", "Gramedia", "Joyko"),
    ),
    _Category(
        "lampu", ("bulb",),
        nouns=(("Lampu", "Lamp"), ("Bohlam", "Bulb", "Lampu LED")),
        kinds=(("Tidur", "Night Light"), ("Emergency",), ("Tumblr", "Fairy Light"),
               ("Meja", "Desk Lamp"), ("Hemat Energi", "Hemat Listrik"), ("Sensor",)),
        features=(("Terang",), ("Garansi",), ("SNI",)),
        size_kind="watt",
        brands=("Philips", "Hannochs", "Osram", "Panasonic", "Visalux", "Shinyoku"),
    ),
)

_COLOURS = (
    (("Hitam", "Black"), (35, 35, 38)),
    (("Putih", "White"), (238, 238, 234)),
    (("Merah", "Red"), (200, 35, 40)),
    (("Biru", "Blue"), (40, 80, 200)),
    (("Hijau", "Green"), (40, 150, 70)),
    (("Kuning", "Yellow"), (240, 205, 40)),
    (("Pink", "Merah Muda"), (240, 140, 180)),
    (("Ungu", "Purple"), (120, 60, 160)),
    (("Abu-abu", "Abu", "Grey"), (130, 130, 135)),
    (("Coklat", "Brown"), (120, 75, 40)),
    (("Navy",), (25, 35, 85)),
    (("Maroon",), (110, 20, 35)),
    (("Cream", "Krem"), (235, 220, 185)),
    (("Oranye", "Orange"), (240, 125, 30)),
    (("Tosca", "Teal"), (20, 150, 150)),
    (("Mint",), (160, 225, 195)),
    (("Silver",), (185, 190, 195)),
    (("Gold", "Emas"), (205, 165, 60)),
    (("Biru Muda", "Light Blue", "Baby Blue"), (140, 190, 235)),
    (("Army", "Hijau Army"), (85, 95, 50)),
    (("Lilac", "Lavender"), (190, 160, 220)),
    (("Salem", "Peach"), (245, 180, 150)),
)

_AUDIENCES = (
    ("Pria", "Cowok", "Laki-laki", "Men"),
    ("Wanita", "Cewek", "Perempuan", "Women", "Ladies"),
    ("Anak", "Anak-anak", "Kids"),
    ("Dewasa", "Adult"),
    ("Unisex",),
    ("Remaja", "Teen"),
    ("Bayi", "Baby"),
)

_PROMO_WORDS = (
    "PROMO", "READY STOCK", "READY", "ORIGINAL", "ORI", "COD", "BISA COD", "TERMURAH", "MURAH",
    "BIG SALE", "SALE", "NEW", "NEW ARRIVAL", "HOT SALE", "GROSIR", "IMPORT", "PREMIUM",
    "BEST SELLER", "FREE ONGKIR", "100% ORIGINAL", "GARANSI", "LIMITED", "DISKON", "FLASH SALE",
    "TERLARIS", "KIRIM CEPAT", "HARGA GROSIR", "TERBARU", "VIRAL", "BISA GROSIR",
)  # fmt: skip
_PROMO_FORMATS = ("{}", "[{}]", "({})", "{}!!", "{} -", "{}!", "**{}**")
_BONUS_PHRASES = (
    "Free Box", "Bonus Pouch", "Gratis Kotak", "+ Box", "FREE GIFT", "Free Bubble Wrap",
    "Bonus Stiker", "Free Dus",
)
_LOCATION_TAGS = ("(READY-JKT)", "(READY-MEDAN)", "[Bandung]", "(Ready Surabaya)", "[JKT]", "BDG")
_ESCAPED_SYMBOLS = (
    "\\xe2\\x9d\\x80", "\\xe2\\x98\\xae", "\\xf0\\x9f\\x94\\xa5", "\\xe2\\x9c\\xa8",
    "\\xe2\\x98\\x85", "\\xf0\\x9f\\x92\\xaf", "\\xe2\\x9c\\x85", "\\xe2\\x98\\x9b",
)
_ESCAPE_PATTERN = re.compile(r"(\\x[0-9a-f]{2})")
_ABBREVIATIONS = {
    "dengan": "dgn", "untuk": "utk", "yang": "yg", "harga": "hrg", "original": "ori",
    "ukuran": "uk", "tahun": "thn", "sudah": "sdh", "murah": "mrh", "kualitas": "kwalitas",
    "premium": "prem", "garansi": "grs", "wanita": "wnt", "pria": "pr", "ready": "redi",
}
_SYLLABLES = (
    "ka", "ri", "na", "mo", "la", "zu", "ve", "ta", "si", "ro", "ne", "da", "pu", "ki", "ya", "lo",
    "me", "sa", "tri", "vi", "xo", "bra", "ga", "no", "fe", "lu", "ze", "co", "ar", "el", "in",
    "ju", "ke", "wa", "ha", "go", "bi", "ton", "rex", "lin", "mar", "vo", "dia", "sky", "jo",
)  # fmt: skip
_SELLER_SUFFIXES = (
    "Shop", "Store", "Official", ".id", "Grosir", "Collection", "Mart", "Olshop", "Jaya",
    "Store ID", "Official Shop", "Outlet", "Gallery", "88",
)
_SEPARATORS = (" / ", " - ", " | ", " || ", ", ", " ")

_PHONE_MODELS = (
    ("iPhone 11", "Iphone 11", "IP 11", "iphone11"),
    ("iPhone 12", "Iphone 12", "IP 12", "iphone12"),
    ("iPhone 12 Pro", "Iphone 12 Pro", "IP 12 Pro"),
    ("iPhone 7", "Iphone 7", "IP 7", "iPhone 7G"),
    ("iPhone X", "Iphone X", "IPX", "iPhone XS"),
    ("Samsung A12", "Samsung Galaxy A12", "SS A12", "A12"),
    ("Samsung A51", "Samsung Galaxy A51", "SS A51", "A51"),
    ("Samsung A02s", "Samsung Galaxy A02s", "SS A02s", "A02s"),
    ("Samsung J2 Prime", "Samsung J2Prime", "J2 Prime"),
    ("Redmi Note 9", "Xiaomi Redmi Note 9", "Redmi Note9", "RN9"),
    ("Redmi Note 8", "Xiaomi Redmi Note 8", "Redmi Note8", "RN8"),
    ("Redmi 9A", "Xiaomi Redmi 9A", "Redmi 9a"),
    ("Redmi 9C", "Xiaomi Redmi 9C", "Redmi 9c"),
    ("Oppo A5s", "OPPO A5S", "A5s"),
    ("Oppo A53", "OPPO A53", "A53"),
    ("Oppo A3s", "OPPO A3S", "A3s"),
    ("Vivo Y12", "VIVO Y12", "Y12"),
    ("Vivo Y20", "VIVO Y20", "Y20"),
    ("Vivo Y91", "VIVO Y91", "Y91"),
    ("Realme C11", "REALME C11", "C11"),
    ("Realme 5", "REALME 5", "Realme5"),
    ("Infinix Hot 10", "INFINIX HOT 10", "Hot 10"),
)
_SIZE_VALUES = {
    "shoe": ((36, 40), (39, 43), (40, 44), (37, 41), (38, 42), (35, 39), (28, 34), (41, 45)),
    "clothing": ("S", "M", "L", "XL", "XXL", "All Size", "M-XL", "XXXL", "Jumbo"),
    "volume": (30, 50, 60, 100, 150, 200, 250, 300, 350, 400, 450, 500, 600, 750, 1000, 1500, 2000),
    "weight": (20, 25, 50, 75, 80, 100, 150, 200, 250, 500, 1000, 2000),
    "count": (2, 3, 5, 6, 10, 12, 20, 24, 40, 50),
    "length": (25, 30, 50, 100, 150, 200, 300),
    "capacity": (5000, 10000, 20000, 30000),
    "dimension": ((30, 40), (25, 35), (110, 110), (115, 115), (40, 60), (20, 30), (130, 130)),
    "diameter": (16, 18, 20, 22, 24, 26, 28, 30, 32),
    "watt": (3, 5, 7, 9, 10, 12, 15, 20, 30, 40),
    "sheets": (32, 38, 40, 50, 58, 60, 80, 100, 200),
    "phone": tuple(range(len(_PHONE_MODELS))),
}  # fmt: skip

# --------------------------------------------------------------------------------------------
# Plan: groups, families, ids (decided in the parent process, cheap).
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Group:
    label_group: int
    posting_ids: tuple[str, ...]


@dataclass(frozen=True)
class _FamilyTask:
    index: int
    seed: int
    groups: tuple[_Group, ...]


def _sample_group_sizes(rng: np.random.Generator, postings: int,
                        group_size: int | None = None) -> list[int]:
    """Group sizes from the real histogram that add up to exactly ``postings`` (each 2..50).

    With ``group_size``, every group has that many postings instead; the remainder forms one
    more group, and a remainder of one joins the last group (or, when that group is already at
    the cap of 50, the last group gives one posting to a final pair).
    """
    if group_size is not None:
        sizes = [group_size] * (postings // group_size)
        remainder = postings - sum(sizes)
        if remainder >= 2 or not sizes:
            sizes.append(remainder)
        elif remainder and sizes[-1] < MAX_GROUP_SIZE:
            sizes[-1] += 1
        elif remainder:
            sizes[-1] -= 1
            sizes.append(2)
        return sizes
    sizes_table = np.array(sorted(REAL_GROUP_SIZE_COUNTS))
    weights = np.array([REAL_GROUP_SIZE_COUNTS[size] for size in sizes_table], dtype=np.float64)
    weights /= weights.sum()
    sizes: list[int] = []
    remaining = postings
    while remaining:
        size = min(int(rng.choice(sizes_table, p=weights)), remaining)
        if remaining - size == 1:
            # A group of one cannot exist (nothing to match); grow or shrink this one instead.
            size = size + 1 if size < MAX_GROUP_SIZE else size - 1
        sizes.append(size)
        remaining -= size
    return sizes


def _unique_integers(rng: np.random.Generator, count: int, low: int, high: int) -> list[int]:
    """``count`` distinct integers in [low, high), in draw order."""
    chosen: list[int] = []
    seen: set[int] = set()
    while len(chosen) < count:
        for value in rng.integers(low, high, size=count - len(chosen) + 8).tolist():
            if value not in seen and len(chosen) < count:
                seen.add(value)
                chosen.append(value)
    return chosen


def _plan_families(postings: int, seed: int, group_size: int | None = None) -> list[_FamilyTask]:
    """Split ``postings`` into label groups, groups into families, and draw Kaggle-like ids."""
    rng = np.random.default_rng([seed, _LAYOUT_STREAM])
    sizes = _sample_group_sizes(rng, postings, group_size)
    # Kaggle ids: posting ids "train_<up to 10 digits>", label groups up to 2**32.
    posting_numbers = _unique_integers(rng, postings, 10_000_000, 4_300_000_000)
    label_groups = _unique_integers(rng, len(sizes), 1_000_000, 4_294_967_296)
    family_sizes = np.array(list(FAMILY_SIZE_PROBABILITIES))
    family_weights = np.array(list(FAMILY_SIZE_PROBABILITIES.values()))
    families: list[_FamilyTask] = []
    group_index = 0
    posting_index = 0
    while group_index < len(sizes):
        family_size = int(rng.choice(family_sizes, p=family_weights / family_weights.sum()))
        groups = []
        for _ in range(min(family_size, len(sizes) - group_index)):
            size = sizes[group_index]
            numbers = posting_numbers[posting_index : posting_index + size]
            groups.append(
                _Group(label_groups[group_index], tuple(f"train_{number}" for number in numbers))
            )
            group_index += 1
            posting_index += size
        families.append(_FamilyTask(len(families), seed, tuple(groups)))
    return families


# --------------------------------------------------------------------------------------------
# Sellers: each posting is listed by a seller whose habits shape the title and the photo.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Seller:
    name: str
    code: str | None
    casing: str
    english_rate: float
    synonym_rate: float
    promo_rate: float
    typo_rate: float
    drop_rate: float
    keyword_stuffing_rate: float
    separator: str
    background: str
    background_colour: tuple[int, int, int]
    frame_colour: tuple[int, int, int] | None
    watermark_rate: float
    style_rate: float


def _pseudo_word(rng: np.random.Generator, syllables: tuple[int, int] = (2, 3)) -> str:
    count = int(rng.integers(syllables[0], syllables[1] + 1))
    word = "".join(_SYLLABLES[int(rng.integers(len(_SYLLABLES)))] for _ in range(count))
    return word.capitalize()


def _random_colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, ...]:
    return tuple(int(value) for value in rng.integers(low, high, size=3))


def _make_sellers(seed: int, count: int) -> tuple[_Seller, ...]:
    rng = np.random.default_rng([seed, _SELLER_STREAM])
    sellers = []
    for _ in range(count):
        name = f"{_pseudo_word(rng)} {_SELLER_SUFFIXES[int(rng.integers(len(_SELLER_SUFFIXES)))]}"
        code = None
        if rng.random() < 0.25:
            letters = "".join(chr(ord("A") + int(rng.integers(26))) for _ in range(2))
            style = int(rng.integers(4))
            code = (
                f"{letters}{int(rng.integers(10, 99999))}",
                f"[{name.split()[0].upper()}]",
                f"{letters}{int(rng.integers(1, 99))}-",
                f"{letters}-",
            )[style]
        casing = str(
            rng.choice(["upper", "title", "keep", "lower", "mixed"], p=[0.2, 0.3, 0.38, 0.02, 0.1])
        )
        frame = _random_colour(rng, 0, 230) if rng.random() < 0.25 else None
        sellers.append(
            _Seller(
                name=name,
                code=code,
                casing=casing,
                english_rate=float(rng.uniform(0.0, 0.6)),
                synonym_rate=float(rng.uniform(0.1, 0.35)),
                promo_rate=float(rng.uniform(0.1, 0.8)),
                typo_rate=float(rng.uniform(0.0, 0.06)),
                drop_rate=float(rng.uniform(0.0, 0.2)),
                keyword_stuffing_rate=float(rng.uniform(0.0, 0.5)),
                separator=_SEPARATORS[int(rng.integers(len(_SEPARATORS)))],
                background=str(
                    rng.choice(["white", "solid", "gradient", "texture", "scene"],
                               p=[0.45, 0.2, 0.15, 0.1, 0.1])
                ),
                background_colour=_random_colour(rng, 150, 256),
                frame_colour=frame,
                watermark_rate=float(rng.choice([0.0, 0.3, 0.9], p=[0.5, 0.3, 0.2])),
                style_rate=float(rng.uniform(0.3, 0.9)),
            )
        )
    return tuple(sellers)


# --------------------------------------------------------------------------------------------
# Products: a family is one base product; each of its groups is one variant.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Design:
    """What a product looks like; identical in every photo of it."""

    silhouette: str
    stretch: tuple[float, float]
    shape_parameter: float
    primary: tuple[int, int, int]
    secondary: tuple[int, int, int]
    accent: tuple[int, int, int]
    label_colour: tuple[int, int, int]
    pattern: str
    pattern_scale: float
    pattern_angle: int
    pattern_seed: int
    badge: str
    logo_text: str
    sub_text: str | None
    scale: float


@dataclass(frozen=True)
class _Variant:
    colour: tuple[str, ...]
    size: object
    model_code: str | None
    design: _Design


@dataclass(frozen=True)
class _Product:
    category: _Category
    brand: str
    line: str | None
    nouns: tuple[tuple[tuple[str, ...], int], ...]
    kinds: tuple[tuple[tuple[str, ...], int], ...]
    audience: tuple[tuple[str, ...], int] | None
    material: tuple[tuple[str, ...], int] | None
    features: tuple[tuple[tuple[str, ...], int], ...]
    axis: str
    variants: tuple[_Variant, ...]


def _choose(rng: np.random.Generator, items: Sequence, count: int) -> list:
    count = min(count, len(items))
    return [items[int(index)] for index in rng.choice(len(items), size=count, replace=False)]


def _with_form(rng: np.random.Generator, concept: tuple[str, ...]) -> tuple[tuple[str, ...], int]:
    """A concept and the form this product's "official" listing uses."""
    return concept, int(rng.integers(len(concept))) if rng.random() < 0.3 else 0


def _model_code(rng: np.random.Generator) -> str:
    letters = "".join(chr(ord("A") + int(rng.integers(26))) for _ in range(int(rng.integers(1, 3))))
    number = int(rng.integers(1, 1000)) if rng.random() < 0.6 else int(rng.integers(1, 20))
    return f"{letters}{number}"


def _sibling_model_code(rng: np.random.Generator, code: str, used: set[str]) -> str:
    """Another model number of the same line: same letters, nearby number (X2 -> X3, X5)."""
    letters = code.rstrip("0123456789")
    number = int(code[len(letters) :])
    while True:
        candidate = f"{letters}{max(1, number + int(rng.integers(-3, 6)))}"
        if candidate not in used:
            return candidate


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int], amount: int) -> tuple:
    return tuple(int(np.clip(channel + rng.integers(-amount, amount + 1), 0, 255))
                 for channel in colour)


def _make_product(rng: np.random.Generator, variant_count: int) -> _Product:
    weights = np.array([category.weight for category in _CATEGORIES])
    category = _CATEGORIES[int(rng.choice(len(_CATEGORIES), p=weights / weights.sum()))]
    if category.brands and rng.random() < 0.45:
        brand = category.brands[int(rng.integers(len(category.brands)))]
    else:
        brand = _pseudo_word(rng)
    line = _pseudo_word(rng, (2, 3)) if rng.random() < 0.7 else None
    noun_concepts = _choose(rng, category.nouns, 1 + int(rng.random() < 0.35))
    nouns = tuple(_with_form(rng, concept) for concept in noun_concepts)
    kinds = tuple(
        _with_form(rng, concept)
        for concept in _choose(rng, category.kinds, int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2])))
    )
    audience = _with_form(rng, _AUDIENCES[int(rng.integers(len(_AUDIENCES)))]) \
        if category.audience and rng.random() < 0.7 else None
    material = _with_form(rng, _choose(rng, category.materials, 1)[0]) \
        if category.materials and rng.random() < 0.6 else None
    feature_count = int(rng.choice([0, 1, 2], p=[0.3, 0.5, 0.2]))
    features = tuple(
        _with_form(rng, concept) for concept in _choose(rng, category.features, feature_count)
    )
    size_pool = _SIZE_VALUES.get(category.size_kind, ())
    # Variants differ in one thing; size only when the category has enough distinct sizes.
    axes = ["colour", "model"] + (["size"] if len(size_pool) >= variant_count else [])
    axis = str(rng.choice(axes))

    base_code = _model_code(rng) if rng.random() < 0.55 or axis == "model" else None
    colour_indices = [int(index) for index in
                      rng.choice(len(_COLOURS), size=variant_count, replace=False)]
    size_indices = (
        [int(index) for index in rng.choice(len(size_pool), size=min(5, len(size_pool)),
                                            replace=False)]
        if size_pool else []
    )
    base_design = _make_design(rng, category, brand)
    variants = []
    used_codes = {base_code} if base_code else set()
    for index in range(variant_count):
        colour_index = colour_indices[index if axis == "colour" else 0]
        size = size_pool[size_indices[index if axis == "size" else 0]] if size_pool else None
        code = base_code
        design = dataclasses.replace(
            base_design,
            primary=_jitter(rng, _COLOURS[colour_index][1], 12),
        )
        if axis == "model" and index > 0:
            code = _sibling_model_code(rng, base_code, used_codes)
            used_codes.add(code)
            # Another model looks slightly different: new trim colour or pattern.
            if rng.random() < 0.5:
                design = dataclasses.replace(design, secondary=_random_colour(rng))
            else:
                design = dataclasses.replace(design, pattern=_pick_pattern(rng),
                                             pattern_seed=int(rng.integers(2**31)))
        if axis == "model":
            design = dataclasses.replace(design, sub_text=code)
        if axis == "size":
            # Bigger sizes (later in the size table) are drawn a little bigger; the printed size
            # is on the label.
            family_sizes = sorted(size_indices[:variant_count])
            rank = family_sizes.index(size_indices[index])
            scale = 0.8 + 0.2 * rank / (variant_count - 1) if variant_count > 1 else 1.0
            design = dataclasses.replace(design, scale=scale,
                                         sub_text=_size_label(category.size_kind, size))
        variants.append(_Variant(_COLOURS[colour_index][0], size, code, design))
    return _Product(category, brand, line, nouns, kinds, audience, material, features, axis,
                    tuple(variants))


def _pick_pattern(rng: np.random.Generator) -> str:
    return str(rng.choice(
        ["plain", "stripes", "dots", "checker", "band", "split", "gradient", "motif"],
        p=[0.28, 0.16, 0.1, 0.08, 0.12, 0.1, 0.08, 0.08],
    ))


def _make_design(rng: np.random.Generator, category: _Category, brand: str) -> _Design:
    silhouette = category.silhouettes[int(rng.integers(len(category.silhouettes)))]
    initials = "".join(word[0] for word in brand.split() if word[:1].isalnum()).upper()
    logo_text = (initials if len(initials) >= 2 else brand[:3].upper())[:3]
    return _Design(
        silhouette=silhouette,
        stretch=(float(rng.uniform(0.82, 1.08)), float(rng.uniform(0.82, 1.08))),
        shape_parameter=float(rng.random()),
        primary=(0, 0, 0),
        secondary=_random_colour(rng),
        accent=_random_colour(rng),
        label_colour=_random_colour(rng, 170, 256) if rng.random() < 0.7 else _random_colour(rng),
        pattern=_pick_pattern(rng),
        pattern_scale=float(rng.uniform(0.05, 0.16)),
        pattern_angle=int(rng.choice([0, 90, 45, -45])),
        pattern_seed=int(rng.integers(2**31)),
        badge=str(rng.choice(["circle", "rect", "text", "diamond"])),
        logo_text=logo_text,
        sub_text=None,
        scale=1.0,
    )


# --------------------------------------------------------------------------------------------
# Titles.
# --------------------------------------------------------------------------------------------


def _number_text(value: float, comma: bool) -> str:
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text.replace(".", ",") if comma else text


def _size_label(kind: str | None, value) -> str | None:
    """The size as printed on the product (short, canonical)."""
    if kind is None or value is None:
        return None
    return {
        "shoe": lambda: f"{value[0]}-{value[1]}",
        "clothing": lambda: str(value),
        "volume": lambda: f"{value}ml",
        "weight": lambda: f"{value}g",
        "count": lambda: f"x{value}",
        "length": lambda: f"{value}cm",
        "capacity": lambda: f"{value // 1000}K",
        "dimension": lambda: f"{value[0]}x{value[1]}",
        "diameter": lambda: f"{value}cm",
        "watt": lambda: f"{value}W",
        "sheets": lambda: f"{value}",
        "phone": lambda: _PHONE_MODELS[value][0].split()[-1],
    }[kind]()


def _format_size(rng: np.random.Generator, kind: str, value) -> str:
    """One seller's way of writing the size: 500ml, 500 ML, 0,5 L, [ISI 5], Size 39-43 ..."""

    def pick(options: Sequence[str]) -> str:
        return options[int(rng.integers(len(options)))]

    comma = rng.random() < 0.4
    if kind == "shoe":
        low, high = value
        return pick([f"{low}-{high}", f"Size {low}-{high}", f"uk {low}-{high}",
                     f"No {low} - {high}", f"{low} - {high}", f"size {low} sd {high}"])
    if kind == "clothing":
        return pick([f"Size {value}", f"Ukuran {value}", f"uk {value}", f"({value})", str(value),
                     f"SIZE {value}"])
    if kind == "volume":
        forms = [f"{value}ml", f"{value} ml", f"{value}ML", f"{value} mL", f"{value}Ml"]
        if value >= 100:
            litres = _number_text(value / 1000, comma)
            forms += [f"{litres} L", f"{litres}L", f"{litres} Liter", f"{litres}lt"]
        return pick(forms)
    if kind == "weight":
        forms = [f"{value}gr", f"{value} gr", f"{value} gram", f"{value}g", f"{value} GR"]
        if value >= 250:
            kilos = _number_text(value / 1000, comma)
            forms += [f"{kilos} kg", f"{kilos}kg", f"{kilos} KG"]
        return pick(forms)
    if kind == "count":
        return pick([f"{value} pcs", f"{value}pcs", f"isi {value}", f"[ISI {value}]",
                     f"{value} biji", f"{value} Pcs", f"1 pack isi {value}", f"Isi {value} Pcs"])
    if kind == "length":
        forms = [f"{value}cm", f"{value} cm", f"{value} CM"]
        if value >= 100:
            metres = _number_text(value / 100, comma)
            forms += [f"{metres}m", f"{metres} Meter", f"{metres} M", f"{metres} meter"]
        return pick(forms)
    if kind == "capacity":
        thousands = value // 1000
        return pick([f"{value}mAh", f"{thousands}.000 mAh", f"{value} MAH", f"{thousands}rb mAh",
                     f"{value}mah", f"{thousands}000 mAh"])
    if kind == "dimension":
        width, height = value
        return pick([f"{width}x{height} cm", f"{width} x {height}cm", f"{width}*{height}",
                     f"{width}x{height}", f"uk {width}x{height}"])
    if kind == "diameter":
        return pick([f"{value}cm", f"{value} cm", f"D{value}", f"diameter {value}cm",
                     f"uk {value}", f"{value} CM"])
    if kind == "watt":
        return pick([f"{value}W", f"{value} Watt", f"{value}watt", f"{value} W", f"{value}w"])
    if kind == "sheets":
        return pick([f"{value} lembar", f"{value} lbr", f"{value} Lembar", f"isi {value}",
                     f"{value} hal"])
    if kind == "phone":
        return pick(_PHONE_MODELS[value])
    raise ValueError(f"unknown size kind {kind!r}")


def _surface(rng: np.random.Generator, seller: _Seller, concept_and_form) -> str:
    """The form of a concept this seller writes: the product's usual one, or a synonym."""
    concept, form = concept_and_form
    if len(concept) > 1 and rng.random() < seller.synonym_rate:
        if rng.random() < seller.english_rate:
            return concept[-1]
        return concept[int(rng.integers(len(concept)))]
    return concept[form]


def _typo(rng: np.random.Generator, word: str) -> str:
    lower = word.lower()
    if lower in _ABBREVIATIONS and rng.random() < 0.6:
        abbreviation = _ABBREVIATIONS[lower]
        return abbreviation.upper() if word.isupper() else abbreviation
    if len(word) < 4 or not word.isalpha():
        return word
    position = int(rng.integers(1, len(word) - 1))
    kind = int(rng.integers(4))
    if kind == 0:  # swap two neighbouring letters
        return word[:position] + word[position + 1] + word[position] + word[position + 2 :]
    if kind == 1:  # drop a letter
        return word[:position] + word[position + 1 :]
    if kind == 2:  # double a letter
        return word[: position + 1] + word[position:]
    vowels = "aeiou"  # drop the vowels, as in "hrga", "pkai"
    return word[0] + "".join(char for char in word[1:] if char.lower() not in vowels) or word


def _apply_casing(rng: np.random.Generator, text: str, casing: str) -> str:
    """Recase a title the seller's way, leaving ``\\xe2``-style escapes lower case: in the real
    CSV they are byte escapes made after the seller typed the title."""
    parts = _ESCAPE_PATTERN.split(text)
    if len(parts) > 1:
        return "".join(part if _ESCAPE_PATTERN.fullmatch(part) else
                       _apply_casing(rng, part, casing) for part in parts)
    if casing == "upper":
        return text.upper()
    if casing == "lower":
        return text.lower()
    if casing == "title":
        # str.title() turns "500ml" into "500Ml", which real listings show too.
        return text.title()
    if casing == "mixed":
        return " ".join(word.upper() if rng.random() < 0.4 else word for word in text.split(" "))
    return text


def _compose_title(rng: np.random.Generator, product: _Product, variant: _Variant,
                   seller: _Seller) -> str:
    """One seller's listing title for ``variant`` of ``product``."""
    axis = product.axis

    def keep(probability: float) -> bool:
        # Whether this listing mentions a part; careless sellers drop more.
        return rng.random() < probability * (1.0 - seller.drop_rate)


    brand = product.brand if keep(0.9) else None
    line = product.line if product.line and keep(0.9) else None
    nouns = [_surface(rng, seller, noun) for index, noun in enumerate(product.nouns)
             if index == 0 or keep(0.6)]
    kinds = [_surface(rng, seller, kind) for kind in product.kinds if keep(0.7)]
    audience = _surface(rng, seller, product.audience) \
        if product.audience and keep(0.6) else None
    material = _surface(rng, seller, product.material) \
        if product.material and keep(0.5) else None
    features = [_surface(rng, seller, feature) for feature in product.features if keep(0.4)]
    model = None
    if variant.model_code and keep(0.9 if axis == "model" else 0.75):
        code = variant.model_code
        letters = code.rstrip("0123456789")
        model = str(rng.choice([code, f"{letters}-{code[len(letters):]}", code.lower(),
                                f"{letters} {code[len(letters):]}"], p=[0.7, 0.1, 0.1, 0.1]))
    size = _format_size(rng, product.category.size_kind, variant.size) \
        if variant.size is not None and keep(0.85 if axis == "size" else 0.5) else None
    colour = _surface(rng, seller, (variant.colour, 0)) \
        if keep(0.6 if axis == "colour" else 0.25) else None
    if colour and rng.random() < 0.3:
        colour = f"Warna {colour}" if rng.random() < 0.5 else f"Color {colour}"

    template = int(rng.choice(3, p=[0.45, 0.4, 0.15]))
    noun_phrase = " ".join(nouns[:1] + kinds[:1] + ([audience] if audience else []))
    if template == 0:  # brand first: "Wardah Lightening Serum 30ml"
        phrases = [brand, line, model, " ".join(nouns[:1] + kinds), audience, material, size,
                   colour, *features, *nouns[1:]]
    elif template == 1:  # noun first: "Sepatu Running Pria Adidas Aero X2 39-43 Hitam"
        phrases = [noun_phrase, *kinds[1:], brand, line, model, material, colour, size,
                   *features, *nouns[1:]]
    else:  # keyword stuffed: "TAS SELEMPANG WANITA / SLING BAG / TAS WANITA MURAH"
        second_noun = nouns[1] if len(nouns) > 1 else _surface(rng, seller, product.nouns[0])
        phrases = [noun_phrase, seller.separator.strip() or "/",
                   " ".join(filter(None, [second_noun, *kinds[1:], brand, line, model])),
                   seller.separator.strip() or "/", *features, size, colour, material]
    phrases = [phrase for phrase in phrases if phrase]
    for index in range(len(phrases) - 1):  # sellers shuffle neighbouring phrases
        if rng.random() < 0.12:
            phrases[index], phrases[index + 1] = phrases[index + 1], phrases[index]
    if rng.random() < seller.keyword_stuffing_rate * 0.5:
        extra = [_surface(rng, seller, product.nouns[0])] + \
            [_surface(rng, seller, kind) for kind in product.kinds[:1]]
        phrases += [seller.separator.strip() or "/", " ".join(extra)]

    if rng.random() < seller.promo_rate:
        promo = _PROMO_WORDS[int(rng.integers(len(_PROMO_WORDS)))]
        promo = _PROMO_FORMATS[int(rng.integers(len(_PROMO_FORMATS)))].format(promo)
        if rng.random() < 0.03:
            symbol = _ESCAPED_SYMBOLS[int(rng.integers(len(_ESCAPED_SYMBOLS)))]
            promo = f"{symbol}{promo.title()}{symbol}"
        if rng.random() < 0.6:
            phrases.insert(0, promo)
        else:
            phrases.append(promo)
    if rng.random() < seller.promo_rate * 0.3:
        phrases.append(_PROMO_WORDS[int(rng.integers(len(_PROMO_WORDS)))])
    if rng.random() < 0.08:
        phrases.append(_BONUS_PHRASES[int(rng.integers(len(_BONUS_PHRASES)))])
    if rng.random() < 0.04:
        phrases.insert(0, _LOCATION_TAGS[int(rng.integers(len(_LOCATION_TAGS)))])
    if seller.code and rng.random() < 0.8:
        phrases.insert(0, seller.code)

    words = " ".join(phrases).split(" ")
    words = [_typo(rng, word) if rng.random() < seller.typo_rate else word for word in words]
    title = _apply_casing(rng, " ".join(word for word in words if word), seller.casing)
    if rng.random() < 0.01:  # the real CSV has escaped emoji bytes inside titles too
        symbol = _ESCAPED_SYMBOLS[int(rng.integers(len(_ESCAPED_SYMBOLS)))]
        title = f"{symbol}{title}"
    return title


def _relist_title(rng: np.random.Generator, title: str, seller: _Seller) -> str:
    """A seller copying another listing's title and touching it up: unchanged, recased, with a
    promo word or shop code added, or with a word or two dropped."""
    choice = rng.random()
    if choice < 0.3:
        return title
    if choice < 0.5:
        return _apply_casing(rng, title, seller.casing)
    if choice < 0.75:
        promo = _PROMO_WORDS[int(rng.integers(len(_PROMO_WORDS)))]
        if seller.code and rng.random() < 0.5:
            promo = seller.code
        return f"{promo} {title}" if rng.random() < 0.5 else f"{title} {promo}"
    words = title.split(" ")
    for _ in range(int(rng.integers(1, 3))):
        if len(words) > 3:
            del words[int(rng.integers(len(words)))]
    return " ".join(words)


# --------------------------------------------------------------------------------------------
# Drawing the product. Shapes are given in a unit square and drawn at twice the product size,
# then downsampled, which antialiases the edges.
# --------------------------------------------------------------------------------------------

_SUPERSAMPLE = 2


def _shape_operations(design: _Design) -> tuple[list[tuple], tuple[float, float, float]]:
    """(role, primitive, coordinates, extra) operations and the logo box (x, y, size).

    Roles: "body" (patterned primary colour), "trim" (secondary), "accent", "label", "dark",
    "erase" (cut out). Primitives: rect, rounded, ellipse, polygon, line, arc, pieslice.
    """
    shape = design.shape_parameter  # 0..1: this product's proportions
    name = design.silhouette
    if name == "bottle":
        width, neck, shoulder = 0.34 + 0.18 * shape, 0.12 + 0.08 * (1 - shape), 0.22 + 0.1 * shape
        left, right = 0.5 - width / 2, 0.5 + width / 2
        operations = [
            ("body", "rounded", (left, shoulder + 0.05, right, 0.96), width * 0.25),
            ("body", "polygon", [(left, shoulder + 0.12), (0.5 - neck / 2, shoulder - 0.02),
                                 (0.5 + neck / 2, shoulder - 0.02), (right, shoulder + 0.12)],
             None),
            ("body", "rect", (0.5 - neck / 2, 0.12, 0.5 + neck / 2, shoulder + 0.02), None),
            ("trim", "rect", (0.5 - neck / 2 - 0.02, 0.04, 0.5 + neck / 2 + 0.02, 0.14), None),
            ("label", "rounded", (left + 0.02, 0.5, right - 0.02, 0.8), 0.03),
        ]
        return operations, (0.5, 0.65, width * 0.7)
    if name == "can":
        operations = [
            ("body", "rect", (0.27, 0.12, 0.73, 0.88), None),
            ("trim", "ellipse", (0.27, 0.05, 0.73, 0.19), None),
            ("dark", "ellipse", (0.32, 0.08, 0.68, 0.16), None),
            ("body", "ellipse", (0.27, 0.81, 0.73, 0.95), None),
            ("label", "rect", (0.27, 0.35, 0.73, 0.62), None),
        ]
        return operations, (0.5, 0.48, 0.36)
    if name == "box" or name == "book" or name == "wallet":
        width = 0.55 + 0.3 * shape if name != "book" else 0.6
        height = 0.5 + 0.3 * (1 - shape) if name != "book" else 0.8
        left, top = 0.5 - width / 2, 0.5 - height / 2
        operations = [("body", "rect", (left, top, left + width, top + height), None)]
        if name == "box":
            operations += [
                ("dark", "polygon", [(left + width, top), (left + width + 0.08, top - 0.06),
                                     (left + width + 0.08, top + height - 0.06),
                                     (left + width, top + height)], None),
                ("trim", "polygon", [(left, top), (left + 0.08, top - 0.06),
                                     (left + width + 0.08, top - 0.06), (left + width, top)],
                 None),
            ]
        elif name == "book":
            operations.append(("trim", "rect", (left, top, left + 0.07, top + height), None))
        else:
            operations.append(("trim", "polygon", [(left, top), (left + width, top),
                                                   (left + width, top + height * 0.45),
                                                   (left, top + height * 0.3)], None))
            operations.append(("accent", "ellipse", (left + width - 0.12, top + height * 0.3,
                                                     left + width - 0.04, top + height * 0.42),
                               None))
        return operations, (0.5, 0.5 + (0.08 if name == "wallet" else 0), min(width, height) * 0.55)
    if name in ("tshirt", "shirt", "jacket"):
        long_sleeves = name == "jacket" or (name == "shirt" and shape > 0.4)
        if long_sleeves:
            sleeve = [(0.22, 0.14), (0.07, 0.5), (0.05, 0.86), (0.15, 0.87), (0.25, 0.45)]
        else:
            sleeve = [(0.22, 0.14), (0.05, 0.32), (0.16, 0.44), (0.25, 0.36)]
        right_sleeve = [(1 - x, y) for x, y in reversed(sleeve)]
        body = [(0.38, 0.1), *sleeve, (0.25, 0.95), (0.75, 0.95), *right_sleeve, (0.62, 0.1)]
        operations = [("body", "polygon", body, None),
                      ("erase", "ellipse", (0.39, 0.02, 0.61, 0.17), None)]
        if name == "shirt":
            operations += [
                ("trim", "polygon", [(0.38, 0.1), (0.5, 0.25), (0.43, 0.28), (0.35, 0.13)], None),
                ("trim", "polygon", [(0.62, 0.1), (0.5, 0.25), (0.57, 0.28), (0.65, 0.13)], None),
                ("dark", "line", [(0.5, 0.25), (0.5, 0.95)], 0.008),
            ]
        elif name == "jacket":
            operations += [("trim", "ellipse", (0.34, 0.0, 0.66, 0.2), None),
                           ("erase", "ellipse", (0.41, 0.04, 0.59, 0.17), None),
                           ("dark", "line", [(0.5, 0.17), (0.5, 0.95)], 0.012),
                           ("trim", "rect", (0.25, 0.88, 0.75, 0.95), None)]
        else:
            operations.append(("trim", "arc", (0.39, 0.02, 0.61, 0.17), (0, 180, 0.02)))
        return operations, (0.5, 0.45, 0.22)
    if name == "shoe":
        ankle = 0.18 + 0.25 * shape
        upper = [(0.08, 0.74), (0.08, ankle + 0.1), (0.18, ankle), (0.42, ankle + 0.02),
                 (0.58, 0.5), (0.84, 0.56), (0.95, 0.66), (0.95, 0.74)]
        operations = [
            ("body", "polygon", upper, None),
            ("trim", "rounded", (0.04, 0.72, 0.97, 0.84), 0.04),
            ("accent", "pieslice", (0.7, 0.52, 1.0, 0.84), (270, 360)),
            ("dark", "line", [(0.44, 0.42), (0.5, 0.5)], 0.012),
            ("dark", "line", [(0.5, 0.46), (0.56, 0.53)], 0.012),
        ]
        return operations, (0.28, 0.58, 0.2)
    if name == "bag":
        operations = [
            ("trim", "arc", (0.3, 0.08, 0.7, 0.6), (180, 360, 0.045)),
            ("body", "polygon", [(0.15, 0.35), (0.85, 0.35), (0.93, 0.93), (0.07, 0.93)], None),
            ("trim", "polygon", [(0.15, 0.35), (0.85, 0.35), (0.82, 0.55), (0.18, 0.55)], None),
            ("accent", "rect", (0.45, 0.5, 0.55, 0.6), None),
        ]
        return operations, (0.5, 0.74, 0.26)
    if name == "jar" or name == "pan":
        if name == "pan":
            operations = [
                ("trim", "rect", (0.75, 0.42, 0.99, 0.5), None),
                ("body", "ellipse", (0.05, 0.25, 0.8, 0.75), None),
                ("dark", "ellipse", (0.12, 0.31, 0.73, 0.69), None),
            ]
            return operations, (0.43, 0.5, 0.25)
        operations = [
            ("body", "rounded", (0.15, 0.3, 0.85, 0.93), 0.08),
            ("trim", "rounded", (0.12, 0.16, 0.88, 0.32), 0.04),
            ("label", "rect", (0.15, 0.48, 0.85, 0.78), None),
        ]
        return operations, (0.5, 0.63, 0.3)
    if name == "tube":
        width = 0.18 + 0.12 * shape
        left, right = 0.5 - width / 2, 0.5 + width / 2
        operations = [
            ("accent", "polygon", [(left + 0.02, 0.2), (left + 0.02, 0.1), (right - 0.02, 0.04),
                                   (right - 0.02, 0.2)], None),
            ("body", "rounded", (left, 0.18, right, 0.96), 0.03),
            ("trim", "rect", (left - 0.01, 0.62, right + 0.01, 0.96), None),
        ]
        return operations, (0.5, 0.42, width * 0.9)
    if name == "phone":
        operations = [
            ("body", "rounded", (0.25, 0.04, 0.75, 0.96), 0.07),
            ("trim", "rounded", (0.3, 0.09, 0.46, 0.3), 0.03),
            ("dark", "ellipse", (0.32, 0.11, 0.4, 0.19), None),
            ("dark", "ellipse", (0.32, 0.2, 0.4, 0.28), None),
        ]
        return operations, (0.5, 0.6, 0.26)
    if name == "mask":
        operations = [
            ("trim", "arc", (0.02, 0.3, 0.3, 0.75), (90, 270, 0.02)),
            ("trim", "arc", (0.7, 0.3, 0.98, 0.75), (270, 450, 0.02)),
            ("body", "rounded", (0.15, 0.28, 0.85, 0.78), 0.1 + 0.08 * shape),
            ("dark", "line", [(0.2, 0.45), (0.8, 0.45)], 0.006),
            ("dark", "line", [(0.2, 0.6), (0.8, 0.6)], 0.006),
        ]
        return operations, (0.68, 0.53, 0.14)
    if name == "cap":
        operations = [
            ("trim", "ellipse", (0.02 + 0.3 * shape, 0.58, 0.72 + 0.25 * shape, 0.72), None),
            ("body", "pieslice", (0.15, 0.22, 0.85, 0.95), (180, 360)),
            ("accent", "ellipse", (0.46, 0.19, 0.54, 0.26), None),
        ]
        return operations, (0.5, 0.42, 0.22)
    if name == "watch":
        operations = [
            ("trim", "rect", (0.38, 0.0, 0.62, 1.0), None),
            ("dark", "ellipse", (0.2, 0.23, 0.8, 0.77), None),
            ("body", "ellipse", (0.25, 0.28, 0.75, 0.72), None),
            ("dark", "line", [(0.5, 0.5), (0.5, 0.34)], 0.012),
            ("dark", "line", [(0.5, 0.5), (0.62, 0.55)], 0.012),
        ]
        return operations, (0.5, 0.62, 0.12)
    if name == "pouch":
        teeth = 9
        top = [(0.18 + 0.64 * index / teeth, 0.08 if index % 2 == 0 else 0.12)
               for index in range(teeth + 1)]
        bottom = [(0.82 - 0.64 * index / teeth, 0.92 if index % 2 == 0 else 0.88)
                  for index in range(teeth + 1)]
        operations = [
            ("body", "polygon", top + bottom, None),
            ("trim", "rect", (0.18, 0.12, 0.82, 0.22), None),
            ("label", "ellipse", (0.28, 0.55, 0.72, 0.85), None),
        ]
        return operations, (0.5, 0.4, 0.3)
    if name == "pants":
        operations = [
            ("body", "polygon", [(0.24, 0.06), (0.76, 0.06), (0.86, 0.96), (0.58, 0.96),
                                 (0.5, 0.36), (0.42, 0.96), (0.14, 0.96)], None),
            ("trim", "rect", (0.24, 0.04, 0.76, 0.11), None),
            ("dark", "line", [(0.3, 0.12), (0.36, 0.25)], 0.008),
            ("dark", "line", [(0.7, 0.12), (0.64, 0.25)], 0.008),
        ]
        return operations, (0.36, 0.3, 0.1)
    if name == "dress":
        operations = [
            ("body", "polygon", [(0.4, 0.05), (0.6, 0.05), (0.72, 0.12), (0.92, 0.5), (0.82, 0.54),
                                 (0.7, 0.3), (0.86, 0.96), (0.14, 0.96), (0.3, 0.3), (0.18, 0.54),
                                 (0.08, 0.5), (0.28, 0.12)], None),
            ("erase", "ellipse", (0.42, 0.0, 0.58, 0.12), None),
            ("trim", "rect", (0.29, 0.34, 0.71, 0.39), None),
        ]
        return operations, (0.5, 0.22, 0.12)
    if name == "hijab":
        operations = [
            ("body", "polygon", [(0.5, 0.04), (0.8, 0.22), (0.96, 0.92), (0.04, 0.92),
                                 (0.2, 0.22)], None),
            ("erase", "ellipse", (0.36, 0.18, 0.64, 0.5), None),
            ("accent", "ellipse", (0.46, 0.52, 0.54, 0.6), None),
        ]
        return operations, (0.5, 0.75, 0.2)
    if name == "helmet":
        operations = [
            ("body", "pieslice", (0.1, 0.1, 0.9, 0.95), (180, 360)),
            ("body", "rect", (0.1, 0.52, 0.9, 0.8), None),
            ("dark", "polygon", [(0.45, 0.45), (0.9, 0.45), (0.9, 0.7), (0.55, 0.7)], None),
            ("accent", "rect", (0.47, 0.1, 0.53, 0.45), None),
        ]
        return operations, (0.25, 0.6, 0.16)
    if name == "toy":
        operations = [
            ("trim", "ellipse", (0.24, 0.04, 0.38, 0.18), None),
            ("trim", "ellipse", (0.62, 0.04, 0.76, 0.18), None),
            ("body", "ellipse", (0.22, 0.42, 0.78, 0.96), None),
            ("body", "ellipse", (0.27, 0.08, 0.73, 0.5), None),
            ("dark", "ellipse", (0.38, 0.24, 0.44, 0.3), None),
            ("dark", "ellipse", (0.56, 0.24, 0.62, 0.3), None),
            ("label", "ellipse", (0.35, 0.56, 0.65, 0.86), None),
        ]
        return operations, (0.5, 0.71, 0.18)
    if name == "headphone":
        operations = [
            ("trim", "arc", (0.16, 0.06, 0.84, 0.84), (180, 360, 0.06)),
            ("body", "rounded", (0.08, 0.44, 0.3, 0.86), 0.06),
            ("body", "rounded", (0.7, 0.44, 0.92, 0.86), 0.06),
            ("dark", "rect", (0.26, 0.5, 0.32, 0.8), None),
            ("dark", "rect", (0.68, 0.5, 0.74, 0.8), None),
        ]
        return operations, (0.19, 0.65, 0.14)
    if name == "bulb":
        operations = [
            ("body", "ellipse", (0.2, 0.04, 0.8, 0.64), None),
            ("body", "polygon", [(0.3, 0.5), (0.7, 0.5), (0.62, 0.72), (0.38, 0.72)], None),
            ("trim", "rect", (0.37, 0.7, 0.63, 0.9), None),
            ("dark", "line", [(0.37, 0.76), (0.63, 0.76)], 0.01),
            ("dark", "line", [(0.37, 0.83), (0.63, 0.83)], 0.01),
            ("dark", "pieslice", (0.43, 0.86, 0.57, 0.98), (0, 180)),
        ]
        return operations, (0.5, 0.34, 0.26)
    if name == "cable":
        curve = [(0.2 + 0.6 * t + 0.12 * np.sin(6 * t), 0.22 + 0.56 * t + 0.15 * np.cos(5 * t))
                 for t in np.linspace(0, 1, 24)]
        operations = [
            ("trim", "line", curve, 0.03),
            ("body", "rounded", (0.08, 0.04, 0.32, 0.26), 0.03),
            ("accent", "rect", (0.15, 0.0, 0.25, 0.06), None),
            ("body", "rounded", (0.68, 0.74, 0.92, 0.96), 0.03),
            ("accent", "rect", (0.75, 0.94, 0.85, 1.0), None),
        ]
        return operations, (0.8, 0.85, 0.1)
    raise ValueError(f"unknown silhouette {name!r}")


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    # Pillow's embedded font: the same glyphs on every machine, no system font needed.
    return ImageFont.load_default(size=max(6, size))


def _contrasting(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    return (20, 20, 20) if luminance > 140 else (245, 245, 245)


def _pattern_image(design: _Design, side: int) -> Image.Image:
    """The body fill: the primary colour with the design's pattern in the secondary colour."""
    primary, secondary = design.primary, design.secondary
    image = Image.new("RGB", (side, side), primary)
    draw = ImageDraw.Draw(image)
    step = max(4, int(design.pattern_scale * side))
    kind = design.pattern
    if kind == "stripes":
        width = max(2, step // 3)
        for offset in range(-side, 2 * side, step):
            if design.pattern_angle == 0:
                draw.rectangle((0, offset, side, offset + width), fill=secondary)
            elif design.pattern_angle == 90:
                draw.rectangle((offset, 0, offset + width, side), fill=secondary)
            else:
                sign = 1 if design.pattern_angle > 0 else -1
                draw.line([(offset, 0), (offset + sign * side, side)], fill=secondary,
                          width=width)
    elif kind == "dots":
        radius = max(2, step // 4)
        for row, y in enumerate(range(0, side + step, step)):
            shift = step // 2 if row % 2 else 0
            for x in range(-step, side + step, step):
                draw.ellipse((x + shift - radius, y - radius, x + shift + radius, y + radius),
                             fill=secondary)
    elif kind == "checker":
        for row, y in enumerate(range(0, side, step)):
            for column, x in enumerate(range(0, side, step)):
                if (row + column) % 2:
                    draw.rectangle((x, y, x + step - 1, y + step - 1), fill=secondary)
    elif kind == "band":
        top = int(side * (0.3 + 0.3 * design.pattern_scale * 4))
        draw.rectangle((0, top, side, top + int(side * 0.16)), fill=secondary)
    elif kind == "split":
        if design.pattern_angle in (0, 90):
            draw.rectangle((0, side // 2, side, side), fill=secondary)
        else:
            draw.polygon([(0, side), (side, 0), (side, side)], fill=secondary)
    elif kind == "gradient":
        ramp = np.linspace(0.0, 1.0, side, dtype=np.float32)[:, None, None]
        colours = (np.array(primary, np.float32) * (1 - ramp) + np.array(secondary, np.float32)
                   * ramp)
        image = Image.fromarray(np.repeat(colours, side, axis=1).astype(np.uint8), "RGB")
    elif kind == "motif":
        motif_rng = np.random.default_rng(design.pattern_seed)
        for _ in range(int(10 + 40 * design.pattern_scale * 4)):
            x, y = motif_rng.uniform(0, side, size=2)
            radius = step * motif_rng.uniform(0.3, 0.7)
            if motif_rng.random() < 0.5:
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=secondary)
            else:
                draw.polygon([(x, y - radius), (x + radius, y + radius), (x - radius, y + radius)],
                             fill=design.accent)
    return image



def _draw_primitive(draw: ImageDraw.ImageDraw, primitive: str, coordinates, extra, fill, point,
                    box, canvas_side: int) -> None:
    """Draw one shape operation of :func:`_shape_operations` with ``fill``."""
    if primitive == "rect":
        draw.rectangle(box(coordinates), fill=fill)
    elif primitive == "rounded":
        draw.rounded_rectangle(box(coordinates), radius=extra * canvas_side, fill=fill)
    elif primitive == "ellipse":
        draw.ellipse(box(coordinates), fill=fill)
    elif primitive == "polygon":
        draw.polygon([point(x, y) for x, y in coordinates], fill=fill)
    elif primitive == "line":
        draw.line([point(x, y) for x, y in coordinates], fill=fill,
                  width=max(1, int(extra * canvas_side)), joint="curve")
    elif primitive == "arc":
        start, end, width = extra
        draw.arc(box(coordinates), start, end, fill=fill, width=max(1, int(width * canvas_side)))
    elif primitive == "pieslice":
        draw.pieslice(box(coordinates), extra[0], extra[1], fill=fill)
    else:
        raise ValueError(f"unknown primitive {primitive!r}")


def _draw_product(design: _Design, side: int) -> Image.Image:
    """The product on a transparent background, ``side`` pixels square (RGBA)."""
    canvas_side = side * _SUPERSAMPLE
    operations, (logo_x, logo_y, logo_size) = _shape_operations(design)
    stretch_x, stretch_y = design.stretch
    scale = design.scale

    def point(x: float, y: float) -> tuple[float, float]:
        # Per-product stretch and the size-variant scale, about the centre; 6 % margin.
        x = 0.5 + (x - 0.5) * stretch_x * scale
        y = 0.5 + (y - 0.5) * stretch_y * scale
        return (0.06 + 0.88 * x) * canvas_side, (0.06 + 0.88 * y) * canvas_side

    def box(coordinates) -> tuple[float, float, float, float]:
        (x0, y0), (x1, y1) = point(*coordinates[:2]), point(*coordinates[2:])
        return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)

    product = Image.new("RGBA", (canvas_side, canvas_side), (0, 0, 0, 0))
    pattern = _pattern_image(design, canvas_side).convert("RGBA")
    colours = {"trim": design.secondary, "accent": design.accent, "label": design.label_colour,
               "dark": (40, 40, 45)}
    product_draw = ImageDraw.Draw(product)
    for role, primitive, coordinates, extra in operations:
        if role == "body":  # the patterned fill goes through a mask of the shape
            mask = Image.new("L", (canvas_side, canvas_side), 0)
            _draw_primitive(ImageDraw.Draw(mask), primitive, coordinates, extra, 255, point,
                            box, canvas_side)
            product.paste(pattern, (0, 0), mask)
        else:  # solid parts are drawn directly; "erase" overwrites with transparent pixels
            fill = (0, 0, 0, 0) if role == "erase" else colours[role] + (255,)
            _draw_primitive(product_draw, primitive, coordinates, extra, fill, point, box,
                            canvas_side)

    draw = ImageDraw.Draw(product)
    centre_x, centre_y = point(logo_x, logo_y)
    radius = logo_size * 0.88 * canvas_side * min(stretch_x, stretch_y) * scale / 2
    badge_colour = design.accent
    text_colour = _contrasting(badge_colour)
    if design.badge == "circle":
        draw.ellipse((centre_x - radius, centre_y - radius, centre_x + radius, centre_y + radius),
                     fill=badge_colour)
    elif design.badge == "rect":
        draw.rectangle((centre_x - radius, centre_y - radius * 0.7, centre_x + radius,
                        centre_y + radius * 0.7), fill=badge_colour)
    elif design.badge == "diamond":
        draw.polygon([(centre_x, centre_y - radius), (centre_x + radius, centre_y),
                      (centre_x, centre_y + radius), (centre_x - radius, centre_y)],
                     fill=badge_colour)
    else:
        text_colour = badge_colour
    font_size = int(radius * (1.1 if len(design.logo_text) <= 2 else 0.8))
    draw.text((centre_x, centre_y), design.logo_text, fill=text_colour, font=_font(font_size),
              anchor="mm")
    if design.sub_text:
        draw.text((centre_x, centre_y + radius * 1.25), design.sub_text, fill=(30, 30, 30),
                  font=_font(int(radius * 0.55)), anchor="mt", stroke_width=1,
                  stroke_fill=(235, 235, 235))
    # Box-filter downsampling of the 2x drawing: antialiased edges, and fast.
    return product.reduce(_SUPERSAMPLE)


# --------------------------------------------------------------------------------------------
# Photographing the product.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shot:
    """How one photo of a product was taken and edited."""

    background: str
    background_colours: tuple[tuple[int, int, int], tuple[int, int, int]]
    background_seed: int
    scale: float
    angle: float
    flip: bool
    centre: tuple[float, float]
    copies: int
    shadow: bool
    frame_colour: tuple[int, int, int] | None
    banner: str | None
    watermark: str | None
    watermark_alpha: int
    watermark_position: tuple[float, float]
    watermark_angle: int
    brightness: float
    contrast: float
    saturation: float
    colour_cast: tuple[float, float, float]
    crop: tuple[float, float, float]
    blur: float
    noise: float
    quality: int
    graphic: tuple | None = None
    panels: int = 1
    sticker: str | None = None


def _make_shot(rng: np.random.Generator, seller: _Seller) -> _Shot:
    styled = rng.random() < seller.style_rate  # the seller's usual studio set-up
    background = seller.background if styled else str(
        rng.choice(["white", "solid", "gradient", "texture", "scene"],
                   p=[0.25, 0.2, 0.2, 0.2, 0.15]))
    first = seller.background_colour if styled else _random_colour(
        rng, 20 if rng.random() < 0.2 else 120, 256)
    copies = int(rng.choice([1, 2, 3], p=[0.86, 0.1, 0.04]))
    watermark = None
    if rng.random() < seller.watermark_rate:
        watermark = seller.name if rng.random() < 0.7 else str(
            rng.choice(["READY STOCK", "ORI 100%", "COD", "BEST SELLER", "PROMO"]))
    frame = seller.frame_colour if styled and seller.frame_colour else None
    crop_fraction = float(rng.uniform(0.72, 1.0))
    scale = float(rng.uniform(0.5, 1.0)) / (1.0 if copies == 1 else 1.5)
    # Off-centre placement, but a big product stays mostly inside the frame.
    low = max(0.3, 0.4 * scale)
    graphic = None
    if rng.random() < 0.35:  # shop advertising: a promo banner or a price tag on the photo
        kind = str(rng.choice(["banner", "price", "badge"]))
        text = (f"Rp {int(rng.integers(5, 500))}.{int(rng.choice([0, 500, 900])):03d}"
                if kind == "price" else str(rng.choice(
                    ["PROMO", "SALE 50%", "READY STOCK", "BEST SELLER", "FREE ONGKIR",
                     "COD", "ORIGINAL", "NEW ARRIVAL", "DISKON", "TERLARIS"])))
        graphic = (kind, str(rng.choice(["top", "bottom", "left", "right"])),
                   float(rng.uniform(0.12, 0.28)), _random_colour(rng), text)
    return _Shot(
        background=background,
        background_colours=(first, _random_colour(rng, 60, 256)),
        background_seed=int(rng.integers(2**31)),
        scale=scale,
        angle=float(np.clip(rng.normal(0.0, 14.0), -40, 40)),
        flip=bool(rng.random() < 0.3),
        centre=(float(rng.uniform(low, 1.0 - low)), float(rng.uniform(low, 1.0 - low))),
        copies=copies,
        shadow=bool(rng.random() < 0.5),
        frame_colour=frame,
        banner=(seller.name.upper() if rng.random() < 0.6 else "READY STOCK") if frame else None,
        watermark=watermark,
        watermark_alpha=int(rng.integers(60, 170)),
        watermark_position=(float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.15, 0.9))),
        watermark_angle=int(rng.choice([0, 0, 30, -30])),
        brightness=float(rng.uniform(0.75, 1.25)),
        contrast=float(rng.uniform(0.75, 1.25)),
        saturation=float(rng.uniform(0.7, 1.3)),
        colour_cast=tuple(float(value) for value in rng.uniform(0.9, 1.1, size=3)),
        crop=(crop_fraction, float(rng.random()), float(rng.random())),
        blur=float(rng.uniform(0.4, 1.2)) if rng.random() < 0.1 else 0.0,
        noise=float(rng.uniform(2.0, 7.0)) if rng.random() < 0.15 else 0.0,
        quality=int(rng.integers(35, 96)) if rng.random() < 0.15 else int(rng.integers(60, 96)),
        graphic=graphic,
        panels=int(rng.choice([1, 2, 4], p=[0.88, 0.08, 0.04])),
    )


def _reupload(rng: np.random.Generator, shot: _Shot) -> _Shot:
    """Another seller re-uploading the same photo: mostly just recompressed (same phash, as most
    near-duplicates in the real set), sometimes brightened, nudged or given a sticker."""
    kind = rng.random()
    quality = int(rng.integers(40, 96))
    if kind < 0.55:
        return dataclasses.replace(shot, quality=quality)
    if kind < 0.75:
        return dataclasses.replace(shot, quality=quality,
                                   brightness=shot.brightness * float(rng.uniform(0.93, 1.07)))
    if kind < 0.9:
        sticker = str(rng.choice(["COD", "PROMO", "READY", "ORI", "SALE"]))
        return dataclasses.replace(shot, quality=quality, sticker=sticker)
    fraction, offset_x, offset_y = shot.crop
    return dataclasses.replace(
        shot, quality=quality,
        crop=(min(1.0, fraction * float(rng.uniform(0.97, 1.03))), offset_x, offset_y))


def _background(shot: _Shot, side: int) -> Image.Image:
    first, second = shot.background_colours
    if shot.background == "white":
        grey = 245 + shot.background_seed % 11
        return Image.new("RGB", (side, side), (grey, grey, grey))
    if shot.background == "solid":
        return Image.new("RGB", (side, side), first)
    rng = np.random.default_rng(shot.background_seed)
    if shot.background == "gradient":  # in any of four directions, light or dark first
        ramp = np.linspace(0.0, 1.0, side, dtype=np.float32)
        direction = int(rng.integers(4))
        if direction == 0:
            weights = ramp[:, None] * np.ones((1, side), np.float32)
        elif direction == 1:
            weights = np.ones((side, 1), np.float32) * ramp[None, :]
        else:
            weights = (ramp[:, None] + (ramp if direction == 2 else ramp[::-1])[None, :]) / 2
        pixels = (np.array(first, np.float32) * (1 - weights[..., None])
                  + np.array(second, np.float32) * weights[..., None])
        return Image.fromarray(pixels.astype(np.uint8), "RGB")
    if shot.background == "texture":
        coarse = rng.uniform(0.0, 1.0, size=(6, 6)).astype(np.float32)
        smooth = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize(
            (side, side), Image.BICUBIC), np.float32) / 255.0
        if rng.random() < 0.5:  # wood grain
            grain = 0.5 + 0.5 * np.sin(np.linspace(0, rng.uniform(20, 50), side))[None, :]
            smooth = 0.6 * smooth + 0.4 * grain
        weights = smooth[..., None] * 0.6
        pixels = (np.array(first, np.float32) * (1 - weights)
                  + np.array(second, np.float32) * weights)
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    # "scene": a wall, a table edge and some clutter around the product.
    image = Image.new("RGB", (side, side), first)
    draw = ImageDraw.Draw(image)
    horizon = int(side * rng.uniform(0.45, 0.75))
    draw.rectangle((0, horizon, side, side), fill=second)
    for _ in range(int(rng.integers(1, 4))):
        x = float(rng.choice([rng.uniform(0, 0.2), rng.uniform(0.8, 1.0)])) * side
        y = rng.uniform(0.1, 0.9) * side
        radius = rng.uniform(0.05, 0.14) * side
        colour = _random_colour(rng)
        if rng.random() < 0.5:
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
        else:
            draw.rectangle((x - radius, y - radius * 1.5, x + radius, y + radius * 1.5),
                           fill=colour)
    return image


def _render_shot(product: Image.Image, shot: _Shot, side: int) -> Image.Image:
    """The photo (RGB, ``side`` square) of an RGBA product image taken as ``shot`` says."""
    if shot.panels > 1:
        image = _collage(product, shot, side)
    else:
        image = _photograph(product, shot, side)
    return _edit_photo(image, shot, side)


def _collage(product: Image.Image, shot: _Shot, side: int) -> Image.Image:
    """A 2- or 4-panel collage of views of the product, as shops often upload."""
    rng = np.random.default_rng(shot.background_seed)
    image = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    columns, rows = (2, 1) if shot.panels == 2 else (2, 2)
    panel_width, panel_height = side // columns, side // rows
    for index in range(shot.panels):
        view = dataclasses.replace(
            shot, panels=1, angle=float(rng.normal(0.0, 20.0)),
            scale=float(rng.uniform(0.6, 1.0)), flip=bool(rng.random() < 0.5),
            centre=(0.5, 0.5), copies=1, background_seed=int(rng.integers(2**31)),
            background_colours=(_random_colour(rng, 120, 256), _random_colour(rng)))
        # Each cell holds a square view, centred on the view's own background colour.
        panel_side = min(panel_width, panel_height)
        panel = _photograph(product, view, panel_side)
        left, top = (index % columns) * panel_width, (index // columns) * panel_height
        image.paste(view.background_colours[0] + (255,),
                    (left, top, left + panel_width, top + panel_height))
        image.paste(panel, (left + (panel_width - panel_side) // 2,
                            top + (panel_height - panel_side) // 2))
    return image


def _photograph(product: Image.Image, shot: _Shot, side: int) -> Image.Image:
    """The product placed on the shot's background (RGBA), before shop overlays and edits."""
    image = _background(shot, side).convert("RGBA")
    item_side = max(8, int(side * shot.scale))
    item = product.resize((item_side, item_side), Image.BILINEAR)
    if shot.flip:
        item = item.transpose(Image.FLIP_LEFT_RIGHT)
    if abs(shot.angle) >= 0.5:
        item = item.rotate(shot.angle, resample=Image.BILINEAR, expand=True)
    shadow = None
    if shot.shadow:
        shadow = Image.new("RGBA", item.size, (0, 0, 0, 0))
        shadow_alpha = item.getchannel("A").filter(ImageFilter.GaussianBlur(side / 60))
        shadow.putalpha(shadow_alpha.point([value * 2 // 5 for value in range(256)]))
    positions = [shot.centre]
    if shot.copies > 1:  # a multi-pack photo: the same item side by side
        spread = 0.22
        positions = [(shot.centre[0] + spread * (index - (shot.copies - 1) / 2), shot.centre[1])
                     for index in range(shot.copies)]
    for centre_x, centre_y in positions:
        left = int(centre_x * side - item.width / 2)
        top = int(centre_y * side - item.height / 2)
        if shadow is not None:
            _composite(image, shadow, left + side // 40, top + side // 30)
        _composite(image, item, left, top)
    return image


def _edit_photo(image: Image.Image, shot: _Shot, side: int) -> Image.Image:
    """Shop overlays (frame, banner, watermark, sticker), lighting, zoom, blur, noise: RGB."""
    if shot.frame_colour is not None:  # shop template: coloured border with a banner
        draw = ImageDraw.Draw(image)
        border = max(2, side // 20)
        draw.rectangle((0, 0, side - 1, side - 1), outline=shot.frame_colour + (255,),
                       width=border)
        banner_height = side // 9
        draw.rectangle((0, side - banner_height, side, side), fill=shot.frame_colour + (255,))
        if shot.banner:
            draw.text((side / 2, side - banner_height / 2), shot.banner[:22],
                      fill=_contrasting(shot.frame_colour) + (255,),
                      font=_font(int(banner_height * 0.6)), anchor="mm")
    if shot.graphic is not None:
        _draw_graphic(image, shot.graphic, side)
    if shot.watermark:
        layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        x, y = shot.watermark_position
        draw.text((x * side, y * side), shot.watermark, fill=(255, 255, 255, shot.watermark_alpha),
                  font=_font(side // 12), anchor="mm", stroke_width=1,
                  stroke_fill=(0, 0, 0, shot.watermark_alpha // 2))
        if shot.watermark_angle:
            layer = layer.rotate(shot.watermark_angle, resample=Image.BILINEAR)
        image.alpha_composite(layer)
    if shot.sticker:
        draw = ImageDraw.Draw(image)
        radius = side // 10
        draw.ellipse((side - 2.3 * radius, radius * 0.3, side - 0.3 * radius, 2.3 * radius),
                     fill=(220, 30, 40, 255))
        draw.text((side - 1.3 * radius, 1.3 * radius), shot.sticker, fill=(255, 255, 255, 255),
                  font=_font(int(radius * 0.6)), anchor="mm")

    photo = image.convert("RGB")
    photo = ImageEnhance.Color(photo).enhance(shot.saturation)
    photo = photo.point(_lighting_table(photo, shot))
    fraction, offset_x, offset_y = shot.crop
    if fraction < 1.0:  # zoom in: crop and scale back up in one resampling
        crop_side = side * fraction
        left = (side - crop_side) * offset_x
        top = (side - crop_side) * offset_y
        photo = photo.resize((side, side), Image.BICUBIC,
                             box=(left, top, left + crop_side, top + crop_side))
    if shot.blur:
        photo = photo.filter(ImageFilter.GaussianBlur(shot.blur * side / 256))
    if shot.noise:
        noise_rng = np.random.default_rng(shot.background_seed + 1)
        pixels = np.asarray(photo, np.float32) + noise_rng.normal(0.0, shot.noise,
                                                                  size=(side, side, 3))
        photo = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return photo


def _draw_graphic(image: Image.Image, graphic: tuple, side: int) -> None:
    """Shop advertising drawn over the photo: an edge banner, a price tag or a round badge."""
    kind, edge, size, colour, text = graphic
    draw = ImageDraw.Draw(image)
    thickness = int(size * side)
    text_colour = _contrasting(colour) + (255,)
    if kind == "banner":
        box = {"top": (0, 0, side, thickness // 2 + 4),
               "bottom": (0, side - thickness // 2 - 4, side, side),
               "left": (0, 0, thickness // 2 + 4, side),
               "right": (side - thickness // 2 - 4, 0, side, side)}[edge]
        draw.rectangle(box, fill=colour + (255,))
        if edge in ("top", "bottom"):
            draw.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), text, fill=text_colour,
                      font=_font(int(thickness * 0.35)), anchor="mm")
        return
    corner_x = side * (0.08 if edge in ("left", "top") else 0.92)
    corner_y = side * (0.1 if edge in ("top", "right") else 0.85)
    if kind == "price":
        width = thickness * 1.8
        left = min(max(0.0, corner_x - width / 2), side - width)
        draw.rounded_rectangle((left, corner_y - thickness / 3, left + width,
                                corner_y + thickness / 3), radius=thickness / 6,
                               fill=colour + (255,))
        draw.text((left + width / 2, corner_y), text, fill=text_colour,
                  font=_font(int(thickness * 0.3)), anchor="mm")
    else:
        radius = thickness * 0.7
        centre_x = min(max(radius, corner_x), side - radius)
        centre_y = min(max(radius, corner_y), side - radius)
        draw.ellipse((centre_x - radius, centre_y - radius, centre_x + radius,
                      centre_y + radius), fill=colour + (255,))
        draw.text((centre_x, centre_y), text.split()[0], fill=text_colour,
                  font=_font(int(radius * 0.45)), anchor="mm")


def _lighting_table(photo: Image.Image, shot: _Shot) -> list[int]:
    """One 768-entry lookup table for brightness, contrast (about the mean grey, as
    ImageEnhance.Contrast does) and a colour cast, so the photo is remapped in a single pass."""
    mean_grey = float(np.asarray(photo.convert("L"), np.float32).mean()) * shot.brightness
    values = np.arange(256, dtype=np.float32)
    table = []
    for gain in shot.colour_cast:
        channel = ((values * shot.brightness - mean_grey) * shot.contrast + mean_grey) * gain
        table.extend(np.clip(channel + 0.5, 0, 255).astype(np.int64).tolist())
    return table


def _composite(canvas: Image.Image, item: Image.Image, left: int, top: int) -> None:
    """Alpha-composite ``item`` onto ``canvas`` at (left, top); parts outside are cut off."""
    x0, y0 = max(0, left), max(0, top)
    x1, y1 = min(canvas.width, left + item.width), min(canvas.height, top + item.height)
    if x1 > x0 and y1 > y0:
        canvas.alpha_composite(item, dest=(x0, y0),
                               source=(x0 - left, y0 - top, x1 - left, y1 - top))


def _encode_jpeg(photo: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# One family, end to end: runs in a worker process.
# --------------------------------------------------------------------------------------------

# Set in each worker by _initialise_worker: (sellers, image size, images folder).
_WORKER_STATE: dict = {}

# How a posting's photo is obtained (the rest are new photos of the product).
REUSE_FILE_RATE = 0.08  # the same image file as an earlier posting of the group
REUPLOAD_RATE = 0.28  # a recompressed / lightly edited copy of an earlier posting's photo
OFFICIAL_PHOTO_RATE = 0.8  # copies take the group's first photo rather than any earlier one
SIBLING_TEMPLATE_RATE = 0.2  # a variant photographed in the same set-up as its sibling
SIBLING_FILE_RATE = 0.01  # a posting showing the sibling variant's photo (a wrong photo)
RELIST_TITLE_RATE = 0.25  # a title copied from an earlier posting of the group, touched up


def _initialise_worker(sellers: tuple[_Seller, ...], image_size: int, images_dir: str) -> None:
    _WORKER_STATE.update(sellers=sellers, image_size=image_size, images_dir=Path(images_dir))


def _write_image(jpeg: bytes) -> tuple[str, str]:
    """Store the JPEG under its MD5 name (atomically); return (file name, phash hex)."""
    name = hashlib.md5(jpeg).hexdigest() + ".jpg"
    path = _WORKER_STATE["images_dir"] / name
    if not path.exists():
        temporary = path.with_name(f".{name}.{os.getpid()}.tmp")
        temporary.write_bytes(jpeg)
        os.replace(temporary, path)
    with Image.open(io.BytesIO(jpeg)) as decoded:
        phash = str(imagehash.phash(decoded))
    return name, phash


def _generate_family(task: _FamilyTask) -> list[tuple[str, str, str, str, int]]:
    """Rows (posting_id, image, image_phash, title, label_group) of every posting in a family."""
    sellers = _WORKER_STATE["sellers"]
    product_rng, seller_rng, title_rng, photo_rng = (
        np.random.default_rng([task.seed, _FAMILY_STREAM, task.index, stream])
        for stream in range(4)
    )
    product = _make_product(product_rng, len(task.groups))
    group_sellers = [
        [sellers[int(index)]
         for index in seller_rng.integers(len(sellers), size=len(group.posting_ids))]
        for group in task.groups
    ]
    titles = _family_titles(title_rng, product, group_sellers)
    images = _family_images(photo_rng, product, group_sellers, _WORKER_STATE["image_size"])
    rows = []
    for group_index, group in enumerate(task.groups):
        for index, posting_id in enumerate(group.posting_ids):
            name, phash = images[group_index][index]
            rows.append((posting_id, name, phash, titles[group_index][index], group.label_group))
    return rows


def _family_titles(rng: np.random.Generator, product: _Product,
                   group_sellers: list[list[_Seller]]) -> list[list[str]]:
    """Titles of every posting, per group: mostly written afresh by each seller, sometimes
    copied from an earlier listing of the same product and touched up."""
    family_titles = []
    for variant, sellers in zip(product.variants, group_sellers):
        titles: list[str] = []
        for seller in sellers:
            if titles and rng.random() < RELIST_TITLE_RATE:
                title = _relist_title(rng, titles[int(rng.integers(len(titles)))], seller)
            else:
                title = _compose_title(rng, product, variant, seller)
            titles.append(title)
        family_titles.append(titles)
    return family_titles


def _pick_source(rng: np.random.Generator, items: list):
    """An earlier photo to copy: the group's first ("official") one most of the time."""
    if rng.random() < OFFICIAL_PHOTO_RATE:
        return items[0]
    return items[int(rng.integers(len(items)))]


def _family_images(rng: np.random.Generator, product: _Product,
                   group_sellers: list[list[_Seller]], side: int) -> list[list[tuple[str, str]]]:
    """(file name, phash) of every posting's photo, per group; new files are written."""
    first_shot: _Shot | None = None
    family_images: list[tuple[str, str]] = []
    result = []
    for variant, sellers in zip(product.variants, group_sellers):
        product_image = _draw_product(variant.design, side)
        shots: list[_Shot] = []
        images: list[tuple[str, str]] = []
        for index, seller in enumerate(sellers):
            choice = rng.random()
            image = shot = None
            if images and choice < REUSE_FILE_RATE:
                image = _pick_source(rng, images)
            elif shots and choice < REUSE_FILE_RATE + REUPLOAD_RATE:
                shot = _reupload(rng, _pick_source(rng, shots))
            elif family_images and choice > 1.0 - SIBLING_FILE_RATE:
                image = family_images[int(rng.integers(len(family_images)))]
            elif first_shot is not None and index == 0 and rng.random() < SIBLING_TEMPLATE_RATE:
                shot = dataclasses.replace(_reupload(rng, first_shot), sticker=None)
            else:
                shot = _make_shot(rng, seller)
            if image is None:
                photo = _render_shot(product_image, shot, side)
                image = _write_image(_encode_jpeg(photo, shot.quality))
                shots.append(shot)
                if first_shot is None:
                    first_shot = shot
            images.append(image)
        family_images.extend(images)
        result.append(images)
    return result


# --------------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------------


def _check_int(name: str, value, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserError(f"--{name.replace('_', '-')} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise UserError(f"--{name.replace('_', '-')} must be {bounds}, got {value}")
    return value


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def generate_dataset(
    out_dir: str | os.PathLike,
    *,
    postings: int,
    seed: int,
    image_size: int = DEFAULT_IMAGE_SIZE,
    workers: int | None = None,
    progress: bool = False,
    group_size: int | None = None,
) -> pd.DataFrame:
    """Write a synthetic mini-Shopee set: ``out_dir/train.csv`` and ``out_dir/train_images/``.

    Args:
        out_dir: Output folder (created if missing). An existing train.csv is replaced; image files
            are named by the MD5 of their bytes, so rerunning into the same folder rewrites nothing
            twice (images of an earlier, different run stay in train_images/ unreferenced).
        postings: Number of postings (rows), at least 2.
        seed: Non-negative random seed; the same seed gives the same CSV and image bytes, whatever
            ``workers`` is.
        image_size: Side of the square JPEG photos in pixels (32..1024).
        workers: Processes to render with; default: the CPUs this process may use.
        progress: Print a progress line to stderr as families finish.
        group_size: Give every label group this many postings (2..50) instead of drawing sizes
            from the real Shopee histogram: a set with many photos of each product, for
            pretraining an image backbone on classes it can actually learn from.

    Returns:
        The rows of train.csv: posting_id, image, image_phash, title (str) and label_group (int64),
        sorted by image file name like Kaggle's train.csv.

    Raises:
        UserError: an argument is out of range, or ``out_dir`` cannot be written.
    """
    postings = _check_int("postings", postings, 2, MAX_POSTINGS)
    seed = _check_int("seed", seed, 0)
    image_size = _check_int("image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    workers = _default_workers() if workers is None else _check_int("workers", workers, 1, 256)
    if group_size is not None:
        group_size = _check_int("group_size", group_size, 2, MAX_GROUP_SIZE)

    out_dir = Path(out_dir)
    images_dir = out_dir / IMAGES_DIRNAME
    try:
        images_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create output folder {images_dir}: {error}") from error

    families = _plan_families(postings, seed, group_size)
    # About one seller per four postings, so sellers recur across products like real shops.
    sellers = _make_sellers(seed, max(2, postings // 4))
    initial_arguments = (sellers, image_size, str(images_dir))
    workers = min(workers, len(families))
    rows: list[tuple] = []
    started = time.perf_counter()

    # On a terminal the progress line rewrites itself; in a log, about ten lines in all.
    interactive = sys.stderr.isatty()
    log_every = max(1, len(families) // 10)

    def report(done: int) -> None:
        if not progress or not (interactive or done % log_every == 0 or done == len(families)):
            return
        print(f"{chr(13) if interactive else ''}synthetic: {done}/{len(families)} product "
              f"families ({time.perf_counter() - started:.0f} s)",
              end="" if interactive else "\n", file=sys.stderr, flush=True)

    if workers == 1:
        _initialise_worker(*initial_arguments)
        for done, family_rows in enumerate(map(_generate_family, families), start=1):
            rows.extend(family_rows)
            report(done)
    else:
        # "spawn": a fresh interpreter per worker, safe even when the caller has TensorFlow's
        # threads running (forking those can deadlock).
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers, initializer=_initialise_worker,
                          initargs=initial_arguments) as pool:
            chunk = max(1, min(16, len(families) // (workers * 8)))
            for done, family_rows in enumerate(pool.imap(_generate_family, families, chunk),
                                               start=1):
                rows.extend(family_rows)
                report(done)
    if progress and interactive:
        print(file=sys.stderr)

    frame = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    frame["label_group"] = frame["label_group"].astype(np.int64)
    frame = frame.sort_values(["image", "posting_id"], kind="stable").reset_index(drop=True)
    with atomic_path(out_dir / CSV_NAME) as temporary:
        frame.to_csv(temporary, index=False, lineterminator="\n")
    return frame


def build_argument_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m tf_shopee.data.synthetic``."""
    parser = argparse.ArgumentParser(
        prog="python -m tf_shopee.data.synthetic",
        description="Write a synthetic mini-Shopee set: OUT/train.csv (posting_id, image, "
        "image_phash, title, label_group) and OUT/train_images/*.jpg.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--postings", type=int, required=True, help="number of postings (>= 2)")
    parser.add_argument("--seed", type=int, required=True, help="random seed (>= 0)")
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE,
                        help=f"photo side in pixels (default {DEFAULT_IMAGE_SIZE})")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: all usable CPUs)")
    parser.add_argument("--group-size", type=int, default=None,
                        help="postings per label group, 2..50 (default: sizes drawn from the "
                        "real Shopee histogram)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (``tf-shopee-synthetic``); bad arguments exit with status 2."""
    arguments = build_argument_parser().parse_args(argv)
    started = time.perf_counter()
    frame = generate_dataset(
        arguments.out,
        postings=arguments.postings,
        seed=arguments.seed,
        image_size=arguments.image_size,
        workers=arguments.workers,
        progress=not arguments.quiet,
        group_size=arguments.group_size,
    )
    elapsed = time.perf_counter() - started
    print(
        f"wrote {len(frame)} postings, {frame['label_group'].nunique()} label groups and "
        f"{frame['image'].nunique()} images to {Path(arguments.out) / CSV_NAME} in {elapsed:.1f} s"
    )


if __name__ == "__main__":
    main()
