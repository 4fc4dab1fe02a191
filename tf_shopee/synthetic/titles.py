"""Listing titles: one seller's title for a product variant (:func:`compose_title`) with its
word choice, unit forms, promo words, typos and casing, and a copied title touched up
(:func:`relist_title`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tf_shopee.synthetic.plans import Product, Seller, Variant
from tf_shopee.synthetic.vocabulary import (
    ABBREVIATIONS,
    BONUS_PHRASES,
    ESCAPE_PATTERN,
    ESCAPED_SYMBOLS,
    LOCATION_TAGS,
    PHONE_MODELS,
    PROMO_FORMATS,
    PROMO_WORDS,
)


def _number_text(value: float, comma: bool) -> str:
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text.replace(".", ",") if comma else text


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
        return pick(PHONE_MODELS[value])
    raise ValueError(f"unknown size kind {kind!r}")


def _surface(rng: np.random.Generator, seller: Seller, concept_and_form) -> str:
    """The form of a concept this seller writes: the product's usual one, or a synonym."""
    concept, form = concept_and_form
    if len(concept) > 1 and rng.random() < seller.synonym_rate:
        if rng.random() < seller.english_rate:
            return concept[-1]
        return concept[int(rng.integers(len(concept)))]
    return concept[form]


def _typo(rng: np.random.Generator, word: str) -> str:
    lower = word.lower()
    if lower in ABBREVIATIONS and rng.random() < 0.6:
        abbreviation = ABBREVIATIONS[lower]
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
    parts = ESCAPE_PATTERN.split(text)
    if len(parts) > 1:
        return "".join(part if ESCAPE_PATTERN.fullmatch(part) else
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


def compose_title(rng: np.random.Generator, product: Product, variant: Variant,
                  seller: Seller) -> str:
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
        promo = PROMO_WORDS[int(rng.integers(len(PROMO_WORDS)))]
        promo = PROMO_FORMATS[int(rng.integers(len(PROMO_FORMATS)))].format(promo)
        if rng.random() < 0.03:
            symbol = ESCAPED_SYMBOLS[int(rng.integers(len(ESCAPED_SYMBOLS)))]
            promo = f"{symbol}{promo.title()}{symbol}"
        if rng.random() < 0.6:
            phrases.insert(0, promo)
        else:
            phrases.append(promo)
    if rng.random() < seller.promo_rate * 0.3:
        phrases.append(PROMO_WORDS[int(rng.integers(len(PROMO_WORDS)))])
    if rng.random() < 0.08:
        phrases.append(BONUS_PHRASES[int(rng.integers(len(BONUS_PHRASES)))])
    if rng.random() < 0.04:
        phrases.insert(0, LOCATION_TAGS[int(rng.integers(len(LOCATION_TAGS)))])
    if seller.code and rng.random() < 0.8:
        phrases.insert(0, seller.code)

    words = " ".join(phrases).split(" ")
    words = [_typo(rng, word) if rng.random() < seller.typo_rate else word for word in words]
    title = _apply_casing(rng, " ".join(word for word in words if word), seller.casing)
    if rng.random() < 0.01:  # the real CSV has escaped emoji bytes inside titles too
        symbol = ESCAPED_SYMBOLS[int(rng.integers(len(ESCAPED_SYMBOLS)))]
        title = f"{symbol}{title}"
    return title


def relist_title(rng: np.random.Generator, title: str, seller: Seller) -> str:
    """A seller copying another listing's title and touching it up: unchanged, recased, with a
    promo word or shop code added, or with a word or two dropped."""
    choice = rng.random()
    if choice < 0.3:
        return title
    if choice < 0.5:
        return _apply_casing(rng, title, seller.casing)
    if choice < 0.75:
        promo = PROMO_WORDS[int(rng.integers(len(PROMO_WORDS)))]
        if seller.code and rng.random() < 0.5:
            promo = seller.code
        return f"{promo} {title}" if rng.random() < 0.5 else f"{title} {promo}"
    words = title.split(" ")
    for _ in range(int(rng.integers(1, 3))):
        if len(words) > 3:
            del words[int(rng.integers(len(words)))]
    return " ".join(words)
