"""The words a synthetic listing is made of: product categories (their silhouettes, nouns,
kinds, materials, features, sizes and brands), colours, promo words, abbreviations, seller
names and phone models.

A "concept" is a tuple of interchangeable surface forms, Indonesian first, English after;
a listing picks one of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Category:
    """A kind of product: the silhouettes it is drawn as, the concepts its titles use, how its
    size is written (``size_kind``), its well-known brands and how common it is (``weight``)."""

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


CATEGORIES = (
    Category(
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
    Category(
        "sandal", ("shoe",),
        nouns=(("Sandal", "Sandals", "Sendal"),),
        kinds=(("Jepit", "Flip Flop"), ("Slop", "Slide"), ("Gunung", "Outdoor"), ("Wedges",),
               ("Selop",), ("Karet", "Rubber")),
        materials=(("Karet", "Rubber"), ("Kulit", "Leather"), ("Spons", "Sponge")),
        features=(("Anti Slip",), ("Empuk", "Comfortable"), ("Ringan",)),
        size_kind="shoe", audience=True,
        brands=("Swallow", "Eiger", "Crocs", "Carvil", "Fipper", "Homyped", "Bata", "Skechers"),
    ),
    Category(
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
    Category(
        "kemeja", ("shirt",),
        nouns=(("Kemeja", "Shirt", "Hem"),),
        kinds=(("Flanel", "Flannel"), ("Batik",), ("Lengan Panjang", "Long Sleeve"),
               ("Formal", "Kantor"), ("Kotak", "Kotak-kotak"), ("Koko",), ("Oxford",)),
        materials=(("Katun", "Cotton"), ("Linen",), ("Denim",), ("Rayon",)),
        features=(("Slim Fit", "Slimfit"), ("Adem",), ("Premium",)),
        size_kind="clothing", audience=True, weight=1.2,
        brands=("Alisan", "Executive", "Hammer", "Arrow", "Cardinal", "Kemeja Id"),
    ),
    Category(
        "jaket", ("jacket",),
        nouns=(("Jaket", "Jacket"), ("Hoodie", "Sweater")),
        kinds=(("Bomber",), ("Parasut", "Windbreaker"), ("Jumper",), ("Zipper", "Resleting"),
               ("Crewneck",), ("Varsity",), ("Motor", "Riding")),
        materials=(("Fleece",), ("Baby Terry", "Babyterry"), ("Jeans", "Denim"), ("Kulit",)),
        features=(("Tebal",), ("Hangat", "Warm"), ("Anti Angin",), ("Premium",)),
        size_kind="clothing", audience=True, weight=1.2,
        brands=("Erigo", "Eiger", "Consina", "Uniqlo", "Rising", "HRCN", "Respiro"),
    ),
    Category(
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
    Category(
        "gamis", ("dress",),
        nouns=(("Gamis", "Dress", "Long Dress"), ("Daster", "Dress Rumah")),
        kinds=(("Syari", "Syar'i"), ("Batik",), ("Motif", "Printing"), ("Polos", "Plain"),
               ("Kancing Depan", "Busui"), ("Kaftan",), ("Brokat",)),
        materials=(("Rayon",), ("Katun", "Cotton"), ("Jersey",), ("Wolfis",), ("Ceruti",)),
        features=(("Adem",), ("Jumbo", "Big Size"), ("Premium",)),
        size_kind="clothing", weight=1.2,
        brands=("Zoya", "Rabbani", "Elzatta", "Alhadi", "Nibras", "Hijup"),
    ),
    Category(
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
    Category(
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
    Category(
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
    Category(
        "dompet", ("wallet",),
        nouns=(("Dompet", "Wallet"),),
        kinds=(("Lipat", "Fold"), ("Panjang", "Long Wallet"), ("Kartu", "Card Holder"),
               ("Koin", "Coin"), ("Resleting", "Zipper")),
        materials=(("Kulit", "Leather"), ("Kulit Asli", "Genuine Leather"), ("Kanvas",)),
        features=(("Slim", "Tipis"), ("Banyak Slot",), ("Import",)),
        audience=True,
        brands=("Jims Honey", "Braun Buffel", "Elizabeth", "Guess", "Charles Keith"),
    ),
    Category(
        "topi", ("cap",),
        nouns=(("Topi", "Cap", "Hat"),),
        kinds=(("Baseball",), ("Bucket", "Bucket Hat"), ("Trucker",), ("Snapback",),
               ("Rajut", "Kupluk", "Beanie"), ("Golf",)),
        materials=(("Katun", "Cotton"), ("Rajut", "Knit"), ("Jeans", "Denim")),
        features=(("Bordir", "Embroidery"), ("Polos",), ("Distro",)),
        audience=True,
        brands=("Eiger", "Erigo", "NY", "Consina", "Rei"),
    ),
    Category(
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
    Category(
        "case", ("phone",),
        nouns=(("Case", "Casing", "Softcase"), ("Case HP", "Phone Case")),
        kinds=(("Silikon", "Silicone"), ("Bening", "Clear", "Transparan"),
               ("Anti Crack", "Anticrack"), ("Motif",), ("Slim", "Tipis"), ("Magnetic", "Magnet"),
               ("Hardcase", "Hard Case"), ("Macaron",)),
        features=(("Pelindung Kamera", "Camera Protect"), ("Full Cover",), ("Lucu", "Cute")),
        size_kind="phone", weight=1.4,
        brands=("Spigen", "Nillkin", "Baseus", "Ume", "Rock", "Casetify"),
    ),
    Category(
        "kabel", ("cable",),
        nouns=(("Kabel Data", "Data Cable"), ("Kabel Charger", "Charger Cable", "Charger")),
        kinds=(("Micro USB",), ("Type C", "Type-C", "Tipe C"), ("Lightning", "iPhone"),
               ("Fast Charging", "Fast Charge", "Quick Charge"), ("3in1", "3 in 1"),
               ("Magnetic", "Magnet")),
        features=(("Original",), ("Anti Putus", "Tidak Mudah Putus"), ("Garansi",)),
        size_kind="length",
        brands=("Robot", "Vivan", "Baseus", "Anker", "Xiaomi", "Samsung", "Hippo", "Ugreen"),
    ),
    Category(
        "headset", ("headphone",),
        nouns=(("Headset", "Earphone"), ("Headphone", "Handsfree")),
        kinds=(("Bluetooth", "Wireless"), ("Gaming",), ("Bass", "Super Bass", "Extra Bass"),
               ("TWS",), ("Stereo",), ("Sport",)),
        features=(("Mic", "Microphone"), ("Noise Cancelling",), ("Original",), ("Garansi",)),
        brands=("JBL", "Sony", "Xiaomi", "Robot", "Rexus", "Sades", "Lenovo", "Baseus"),
    ),
    Category(
        "powerbank", ("box",),
        nouns=(("Powerbank", "Power Bank", "PB"),),
        kinds=(("Fast Charging", "Quick Charge"), ("Mini",), ("Slim",), ("Dual USB",),
               ("LED Display",)),
        features=(("Original",), ("Garansi Resmi", "Garansi"), ("Real Capacity",)),
        size_kind="capacity",
        brands=("Robot", "Vivan", "Anker", "Xiaomi", "Hippo", "Baseus", "Aukey"),
    ),
    Category(
        "botol", ("bottle", "can"),
        nouns=(("Botol Minum", "Water Bottle", "Botol"), ("Tumbler", "Termos")),
        kinds=(("Sport", "Olahraga"), ("Anak", "Kids"), ("Kaca", "Glass"),
               ("Stainless", "Stainless Steel"), ("Viral",), ("Motivasi", "Motivational"),
               ("Bening", "Transparan")),
        features=(("BPA Free",), ("Anti Bocor", "Leak Proof"), ("Tahan Panas",)),
        size_kind="volume", weight=1.2,
        brands=("Lock&Lock", "Tupperware", "Lion Star", "Claris", "Corkcicle", "Zojirushi"),
    ),
    Category(
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
    Category(
        "lipstik", ("tube",),
        nouns=(("Lipstik", "Lipstick"), ("Lip Cream", "Lip Matte"), ("Lip Tint",)),
        kinds=(("Matte",), ("Glossy",), ("Tahan Lama", "Long Lasting"), ("Waterproof",),
               ("Transferproof",)),
        features=(("BPOM",), ("Original",), ("Halal",)),
        brands=("Wardah", "Make Over", "Emina", "Pixy", "Maybelline", "Implora", "Madame Gie",
                "Purbasari"),
    ),
    Category(
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
    Category(
        "parfum", ("bottle",),
        nouns=(("Parfum", "Perfume", "Minyak Wangi"),),
        kinds=(("EDT", "Eau de Toilette"), ("EDP", "Eau de Parfum"), ("Body Mist",),
               ("Tahan Lama", "Long Lasting"), ("Refill",)),
        features=(("Original",), ("Reject",), ("Segel",), ("Wangi Mewah",)),
        size_kind="volume", audience=True,
        brands=("Casablanca", "Axe", "Evangeline", "HMNS", "The Body Shop", "Vitalis", "Saff"),
    ),
    Category(
        "mie", ("pouch",),
        nouns=(("Mie Instan", "Instant Noodle"), ("Mie", "Mi", "Noodle")),
        kinds=(("Goreng", "Fried"), ("Kuah", "Soup"), ("Pedas", "Spicy", "Hot"),
               ("Ayam Bawang",), ("Rendang",), ("Soto",), ("Kari Ayam", "Chicken Curry")),
        features=(("Halal",), ("Grosir",), ("Exp Lama",)),
        size_kind="count",
        brands=("Indomie", "Mie Sedaap", "Sarimi", "Samyang", "Supermi", "Lemonilo"),
    ),
    Category(
        "snack", ("pouch",),
        nouns=(("Keripik", "Kripik", "Chips"), ("Cemilan", "Camilan", "Snack")),
        kinds=(("Pedas", "Spicy"), ("Balado",), ("Original",), ("Keju", "Cheese"),
               ("Singkong", "Cassava"), ("Pisang", "Banana"), ("Kentang", "Potato")),
        features=(("Halal",), ("Renyah", "Crispy"), ("Homemade",), ("Oleh Oleh",)),
        size_kind="weight", weight=1.2,
        brands=("Maicih", "Qtela", "Chitato", "Lays", "Taro", "Kusuka", "Basreng"),
    ),
    Category(
        "kopi", ("pouch", "jar", "can"),
        nouns=(("Kopi", "Coffee"),),
        kinds=(("Bubuk", "Powder"), ("Sachet",), ("Arabika", "Arabica"), ("Robusta",),
               ("Susu", "Latte"), ("Gula Aren", "Palm Sugar"), ("Instan", "Instant")),
        features=(("Halal",), ("Asli",), ("Premium",)),
        size_kind="weight",
        brands=("Kapal Api", "Nescafe", "Good Day", "Luwak", "Torabika", "Excelso", "ABC"),
    ),
    Category(
        "minuman", ("can", "bottle"),
        nouns=(("Minuman", "Drink"), ("Susu", "Milk")),
        kinds=(("Kaleng", "Can"), ("UHT",), ("Coklat", "Chocolate"), ("Stroberi", "Strawberry"),
               ("Full Cream",), ("Soda",), ("Teh", "Tea")),
        features=(("Halal",), ("Dus", "Karton"), ("Grosir",)),
        size_kind="volume",
        brands=("Ultra Milk", "Bear Brand", "Frisian Flag", "Coca Cola", "Pocari Sweat",
                "Teh Pucuk", "Milo"),
    ),
    Category(
        "mainan", ("toy",),
        nouns=(("Mainan", "Toy", "Mainan Anak"), ("Boneka", "Doll", "Plush")),
        kinds=(("Edukasi", "Educational"), ("Lucu", "Cute"), ("Karakter", "Character"),
               ("Puzzle",), ("Bulu", "Plush"), ("Jumbo",), ("Musik", "Music")),
        features=(("SNI",), ("Aman Untuk Anak",), ("Import",), ("Kado", "Hadiah", "Gift")),
        size_kind="length", weight=1.2,
        brands=("Lego", "Hot Wheels", "Barbie", "Istana Boneka", "Miniso"),
    ),
    Category(
        "helm", ("helmet",),
        nouns=(("Helm", "Helmet"),),
        kinds=(("Bogo",), ("Retro", "Klasik"), ("Full Face", "Fullface"), ("Half Face",),
               ("Anak", "Kids"), ("Cakil",)),
        features=(("SNI",), ("Kaca Cembung",), ("Double Visor",)),
        audience=True,
        brands=("INK", "KYT", "NHK", "GM", "Bogo", "MDS", "Cargloss"),
    ),
    Category(
        "dapur", ("jar", "pan"),
        nouns=(("Panci", "Pot"), ("Wajan", "Frying Pan", "Teflon")),
        kinds=(("Anti Lengket", "Non Stick"), ("Stainless",), ("Set",),
               ("Presto", "Pressure Cooker"), ("Susu", "Milk Pan"), ("Granite",)),
        features=(("Tebal",), ("Bisa Induksi", "Induction"), ("Tutup Kaca",)),
        size_kind="diameter",
        brands=("Maspion", "Kirin", "Oxone", "Cosmos", "Miyako", "Happycall", "Supra"),
    ),
    Category(
        "toples", ("jar", "box"),
        nouns=(("Toples", "Stoples", "Jar"), ("Kotak Makan", "Tempat Makan", "Lunch Box")),
        kinds=(("Kaca", "Glass"), ("Plastik", "Plastic"), ("Kedap Udara", "Airtight"),
               ("Bulat", "Round"), ("Kotak", "Square"), ("Susun",)),
        features=(("BPA Free",), ("Microwave Safe",), ("Anti Tumpah",)),
        size_kind="volume",
        brands=("Lock&Lock", "Tupperware", "Lion Star", "Claris", "Calista", "Yooyee"),
    ),
    Category(
        "buku", ("book",),
        nouns=(("Buku", "Book"),),
        kinds=(("Tulis", "Notebook"), ("Gambar", "Drawing"), ("Cerita Anak", "Story Book"),
               ("Agenda", "Planner"), ("Mewarnai", "Coloring"), ("Diary",)),
        features=(("Hard Cover", "Hardcover"), ("Murah",), ("Isi Lengkap",)),
        size_kind="sheets",
        brands=("Sidu", "Kiky", "Big Boss", "Campus", "Gramedia", "Joyko"),
    ),
    Category(
        "lampu", ("bulb",),
        nouns=(("Lampu", "Lamp"), ("Bohlam", "Bulb", "Lampu LED")),
        kinds=(("Tidur", "Night Light"), ("Emergency",), ("Tumblr", "Fairy Light"),
               ("Meja", "Desk Lamp"), ("Hemat Energi", "Hemat Listrik"), ("Sensor",)),
        features=(("Terang",), ("Garansi",), ("SNI",)),
        size_kind="watt",
        brands=("Philips", "Hannochs", "Osram", "Panasonic", "Visalux", "Shinyoku"),
    ),
)

COLOURS = (
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

AUDIENCES = (
    ("Pria", "Cowok", "Laki-laki", "Men"),
    ("Wanita", "Cewek", "Perempuan", "Women", "Ladies"),
    ("Anak", "Anak-anak", "Kids"),
    ("Dewasa", "Adult"),
    ("Unisex",),
    ("Remaja", "Teen"),
    ("Bayi", "Baby"),
)

PROMO_WORDS = (
    "PROMO", "READY STOCK", "READY", "ORIGINAL", "ORI", "COD", "BISA COD", "TERMURAH", "MURAH",
    "BIG SALE", "SALE", "NEW", "NEW ARRIVAL", "HOT SALE", "GROSIR", "IMPORT", "PREMIUM",
    "BEST SELLER", "FREE ONGKIR", "100% ORIGINAL", "GARANSI", "LIMITED", "DISKON", "FLASH SALE",
    "TERLARIS", "KIRIM CEPAT", "HARGA GROSIR", "TERBARU", "VIRAL", "BISA GROSIR",
)  # fmt: skip
PROMO_FORMATS = ("{}", "[{}]", "({})", "{}!!", "{} -", "{}!", "**{}**")
BONUS_PHRASES = (
    "Free Box", "Bonus Pouch", "Gratis Kotak", "+ Box", "FREE GIFT", "Free Bubble Wrap",
    "Bonus Stiker", "Free Dus",
)
LOCATION_TAGS = ("(READY-JKT)", "(READY-MEDAN)", "[Bandung]", "(Ready Surabaya)", "[JKT]", "BDG")
ESCAPED_SYMBOLS = (
    "\\xe2\\x9d\\x80", "\\xe2\\x98\\xae", "\\xf0\\x9f\\x94\\xa5", "\\xe2\\x9c\\xa8",
    "\\xe2\\x98\\x85", "\\xf0\\x9f\\x92\\xaf", "\\xe2\\x9c\\x85", "\\xe2\\x98\\x9b",
)
ESCAPE_PATTERN = re.compile(r"(\\x[0-9a-f]{2})")
ABBREVIATIONS = {
    "dengan": "dgn", "untuk": "utk", "yang": "yg", "harga": "hrg", "original": "ori",
    "ukuran": "uk", "tahun": "thn", "sudah": "sdh", "murah": "mrh", "kualitas": "kwalitas",
    "premium": "prem", "garansi": "grs", "wanita": "wnt", "pria": "pr", "ready": "redi",
}
SYLLABLES = (
    "ka", "ri", "na", "mo", "la", "zu", "ve", "ta", "si", "ro", "ne", "da", "pu", "ki", "ya", "lo",
    "me", "sa", "tri", "vi", "xo", "bra", "ga", "no", "fe", "lu", "ze", "co", "ar", "el", "in",
    "ju", "ke", "wa", "ha", "go", "bi", "ton", "rex", "lin", "mar", "vo", "dia", "sky", "jo",
)  # fmt: skip
SELLER_SUFFIXES = (
    "Shop", "Store", "Official", ".id", "Grosir", "Collection", "Mart", "Olshop", "Jaya",
    "Store ID", "Official Shop", "Outlet", "Gallery", "88",
)
SEPARATORS = (" / ", " - ", " | ", " || ", ", ", " ")

PHONE_MODELS = (
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
SIZE_VALUES = {
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
    "phone": tuple(range(len(PHONE_MODELS))),
}  # fmt: skip
