"""What a synthetic set is made of, decided before anything is drawn: label groups and their
sizes, product families and Kaggle-like ids (:func:`plan_families`), the sellers who list
the products (:func:`make_sellers`), and each family's product with its variants and
their designs (:func:`make_product`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tf_shopee.synthetic.vocabulary import (
    AUDIENCES,
    CATEGORIES,
    COLOURS,
    PHONE_MODELS,
    SELLER_SUFFIXES,
    SEPARATORS,
    SIZE_VALUES,
    SYLLABLES,
    Category,
)

MAX_GROUP_SIZE = 50  # postings in the largest label group, as in the real set

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
LAYOUT_STREAM = 0
SELLER_STREAM = 1
FAMILY_STREAM = 2


# --------------------------------------------------------------------------------------------
# Plan: groups, families, ids (decided in the parent process, cheap).
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """One label group: one sellable product and the ids of the postings that list it."""

    label_group: int
    posting_ids: tuple[str, ...]


@dataclass(frozen=True)
class FamilyTask:
    """One product family (its groups are the product's variants): a unit of work for a
    worker process, generated from the random stream of (seed, family index)."""

    index: int
    seed: int
    groups: tuple[Group, ...]


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


def plan_families(postings: int, seed: int, group_size: int | None = None) -> list[FamilyTask]:
    """Split ``postings`` into label groups, groups into families, and draw Kaggle-like ids."""
    rng = np.random.default_rng([seed, LAYOUT_STREAM])
    sizes = _sample_group_sizes(rng, postings, group_size)
    # Kaggle ids: posting ids "train_<up to 10 digits>", label groups up to 2**32.
    posting_numbers = _unique_integers(rng, postings, 10_000_000, 4_300_000_000)
    label_groups = _unique_integers(rng, len(sizes), 1_000_000, 4_294_967_296)
    family_sizes = np.array(list(FAMILY_SIZE_PROBABILITIES))
    family_weights = np.array(list(FAMILY_SIZE_PROBABILITIES.values()))
    families: list[FamilyTask] = []
    group_index = 0
    posting_index = 0
    while group_index < len(sizes):
        family_size = int(rng.choice(family_sizes, p=family_weights / family_weights.sum()))
        groups = []
        for _ in range(min(family_size, len(sizes) - group_index)):
            size = sizes[group_index]
            numbers = posting_numbers[posting_index : posting_index + size]
            groups.append(
                Group(label_groups[group_index], tuple(f"train_{number}" for number in numbers))
            )
            group_index += 1
            posting_index += size
        families.append(FamilyTask(len(families), seed, tuple(groups)))
    return families


# --------------------------------------------------------------------------------------------
# Sellers: each posting is listed by a seller whose habits shape the title and the photo.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seller:
    """A shop and its habits: how it writes titles (casing, language, promo words, typos ...)
    and how it photographs products (background, frame, watermark)."""

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
    word = "".join(SYLLABLES[int(rng.integers(len(SYLLABLES)))] for _ in range(count))
    return word.capitalize()


def random_colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, ...]:
    """An RGB colour, each channel drawn from [low, high)."""
    return tuple(int(value) for value in rng.integers(low, high, size=3))


def make_sellers(seed: int, count: int) -> tuple[Seller, ...]:
    """``count`` sellers drawn from the seed's seller stream (shared by every family)."""
    rng = np.random.default_rng([seed, SELLER_STREAM])
    sellers = []
    for _ in range(count):
        name = f"{_pseudo_word(rng)} {SELLER_SUFFIXES[int(rng.integers(len(SELLER_SUFFIXES)))]}"
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
        frame = random_colour(rng, 0, 230) if rng.random() < 0.25 else None
        sellers.append(
            Seller(
                name=name,
                code=code,
                casing=casing,
                english_rate=float(rng.uniform(0.0, 0.6)),
                synonym_rate=float(rng.uniform(0.1, 0.35)),
                promo_rate=float(rng.uniform(0.1, 0.8)),
                typo_rate=float(rng.uniform(0.0, 0.06)),
                drop_rate=float(rng.uniform(0.0, 0.2)),
                keyword_stuffing_rate=float(rng.uniform(0.0, 0.5)),
                separator=SEPARATORS[int(rng.integers(len(SEPARATORS)))],
                background=str(
                    rng.choice(["white", "solid", "gradient", "texture", "scene"],
                               p=[0.45, 0.2, 0.15, 0.1, 0.1])
                ),
                background_colour=random_colour(rng, 150, 256),
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
class Design:
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
class Variant:
    """One variant of a product, hence one label group: its colour, size, model and looks."""

    colour: tuple[str, ...]
    size: object
    model_code: str | None
    design: Design


@dataclass(frozen=True)
class Product:
    """A family's base product: the words every listing of it draws from, the one thing its
    variants differ in (``axis``: colour, size or model) and the variants."""

    category: Category
    brand: str
    line: str | None
    nouns: tuple[tuple[tuple[str, ...], int], ...]
    kinds: tuple[tuple[tuple[str, ...], int], ...]
    audience: tuple[tuple[str, ...], int] | None
    material: tuple[tuple[str, ...], int] | None
    features: tuple[tuple[tuple[str, ...], int], ...]
    axis: str
    variants: tuple[Variant, ...]


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


def make_product(rng: np.random.Generator, variant_count: int) -> Product:
    """A product of a random category with ``variant_count`` variants that differ in one
    thing (colour, model or size), each with its design."""
    weights = np.array([category.weight for category in CATEGORIES])
    category = CATEGORIES[int(rng.choice(len(CATEGORIES), p=weights / weights.sum()))]
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
    audience = _with_form(rng, AUDIENCES[int(rng.integers(len(AUDIENCES)))]) \
        if category.audience and rng.random() < 0.7 else None
    material = _with_form(rng, _choose(rng, category.materials, 1)[0]) \
        if category.materials and rng.random() < 0.6 else None
    feature_count = int(rng.choice([0, 1, 2], p=[0.3, 0.5, 0.2]))
    features = tuple(
        _with_form(rng, concept) for concept in _choose(rng, category.features, feature_count)
    )
    size_pool = SIZE_VALUES.get(category.size_kind, ())
    # Variants differ in one thing; size only when the category has enough distinct sizes.
    axes = ["colour", "model"] + (["size"] if len(size_pool) >= variant_count else [])
    axis = str(rng.choice(axes))

    base_code = _model_code(rng) if rng.random() < 0.55 or axis == "model" else None
    colour_indices = [int(index) for index in
                      rng.choice(len(COLOURS), size=variant_count, replace=False)]
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
            primary=_jitter(rng, COLOURS[colour_index][1], 12),
        )
        if axis == "model" and index > 0:
            code = _sibling_model_code(rng, base_code, used_codes)
            used_codes.add(code)
            # Another model looks slightly different: new trim colour or pattern.
            if rng.random() < 0.5:
                design = dataclasses.replace(design, secondary=random_colour(rng))
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
        variants.append(Variant(COLOURS[colour_index][0], size, code, design))
    return Product(category, brand, line, nouns, kinds, audience, material, features, axis,
                   tuple(variants))


def _pick_pattern(rng: np.random.Generator) -> str:
    return str(rng.choice(
        ["plain", "stripes", "dots", "checker", "band", "split", "gradient", "motif"],
        p=[0.28, 0.16, 0.1, 0.08, 0.12, 0.1, 0.08, 0.08],
    ))


def _make_design(rng: np.random.Generator, category: Category, brand: str) -> Design:
    silhouette = category.silhouettes[int(rng.integers(len(category.silhouettes)))]
    initials = "".join(word[0] for word in brand.split() if word[:1].isalnum()).upper()
    logo_text = (initials if len(initials) >= 2 else brand[:3].upper())[:3]
    return Design(
        silhouette=silhouette,
        stretch=(float(rng.uniform(0.82, 1.08)), float(rng.uniform(0.82, 1.08))),
        shape_parameter=float(rng.random()),
        primary=(0, 0, 0),
        secondary=random_colour(rng),
        accent=random_colour(rng),
        label_colour=random_colour(rng, 170, 256) if rng.random() < 0.7 else random_colour(rng),
        pattern=_pick_pattern(rng),
        pattern_scale=float(rng.uniform(0.05, 0.16)),
        pattern_angle=int(rng.choice([0, 90, 45, -45])),
        pattern_seed=int(rng.integers(2**31)),
        badge=str(rng.choice(["circle", "rect", "text", "diamond"])),
        logo_text=logo_text,
        sub_text=None,
        scale=1.0,
    )


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
        "phone": lambda: PHONE_MODELS[value][0].split()[-1],
    }[kind]()
