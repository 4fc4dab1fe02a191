"""Photographing a drawn product: how a seller takes one photo (:func:`make_shot`) or
re-uploads another one (:func:`reupload`), rendering it on a background with shop overlays
and photo edits (:func:`render_shot`), and the JPEG bytes (:func:`encode_jpeg`).
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from tf_shopee.synthetic.drawing import contrasting_colour, embedded_font
from tf_shopee.synthetic.plans import Seller, random_colour


@dataclass(frozen=True)
class Shot:
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


def make_shot(rng: np.random.Generator, seller: Seller) -> Shot:
    """A new photo of a product by ``seller``: often in the seller's usual set-up, with its
    own framing, lighting, overlays and JPEG quality."""
    styled = rng.random() < seller.style_rate  # the seller's usual studio set-up
    background = seller.background if styled else str(
        rng.choice(["white", "solid", "gradient", "texture", "scene"],
                   p=[0.25, 0.2, 0.2, 0.2, 0.15]))
    first = seller.background_colour if styled else random_colour(
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
                   float(rng.uniform(0.12, 0.28)), random_colour(rng), text)
    return Shot(
        background=background,
        background_colours=(first, random_colour(rng, 60, 256)),
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


def reupload(rng: np.random.Generator, shot: Shot) -> Shot:
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


def _background(shot: Shot, side: int) -> Image.Image:
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
        colour = random_colour(rng)
        if rng.random() < 0.5:
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
        else:
            draw.rectangle((x - radius, y - radius * 1.5, x + radius, y + radius * 1.5),
                           fill=colour)
    return image


def render_shot(product: Image.Image, shot: Shot, side: int) -> Image.Image:
    """The photo (RGB, ``side`` square) of an RGBA product image taken as ``shot`` says."""
    if shot.panels > 1:
        image = _collage(product, shot, side)
    else:
        image = _photograph(product, shot, side)
    return _edit_photo(image, shot, side)


def _collage(product: Image.Image, shot: Shot, side: int) -> Image.Image:
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
            background_colours=(random_colour(rng, 120, 256), random_colour(rng)))
        # Each cell holds a square view, centred on the view's own background colour.
        panel_side = min(panel_width, panel_height)
        panel = _photograph(product, view, panel_side)
        left, top = (index % columns) * panel_width, (index // columns) * panel_height
        image.paste(view.background_colours[0] + (255,),
                    (left, top, left + panel_width, top + panel_height))
        image.paste(panel, (left + (panel_width - panel_side) // 2,
                            top + (panel_height - panel_side) // 2))
    return image


def _photograph(product: Image.Image, shot: Shot, side: int) -> Image.Image:
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


def _edit_photo(image: Image.Image, shot: Shot, side: int) -> Image.Image:
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
                      fill=contrasting_colour(shot.frame_colour) + (255,),
                      font=embedded_font(int(banner_height * 0.6)), anchor="mm")
    if shot.graphic is not None:
        _draw_graphic(image, shot.graphic, side)
    if shot.watermark:
        layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        x, y = shot.watermark_position
        draw.text((x * side, y * side), shot.watermark, fill=(255, 255, 255, shot.watermark_alpha),
                  font=embedded_font(side // 12), anchor="mm", stroke_width=1,
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
                  font=embedded_font(int(radius * 0.6)), anchor="mm")

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
    text_colour = contrasting_colour(colour) + (255,)
    if kind == "banner":
        box = {"top": (0, 0, side, thickness // 2 + 4),
               "bottom": (0, side - thickness // 2 - 4, side, side),
               "left": (0, 0, thickness // 2 + 4, side),
               "right": (side - thickness // 2 - 4, 0, side, side)}[edge]
        draw.rectangle(box, fill=colour + (255,))
        if edge in ("top", "bottom"):
            draw.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), text, fill=text_colour,
                      font=embedded_font(int(thickness * 0.35)), anchor="mm")
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
                  font=embedded_font(int(thickness * 0.3)), anchor="mm")
    else:
        radius = thickness * 0.7
        centre_x = min(max(radius, corner_x), side - radius)
        centre_y = min(max(radius, corner_y), side - radius)
        draw.ellipse((centre_x - radius, centre_y - radius, centre_x + radius,
                      centre_y + radius), fill=colour + (255,))
        draw.text((centre_x, centre_y), text.split()[0], fill=text_colour,
                  font=embedded_font(int(radius * 0.45)), anchor="mm")


def _lighting_table(photo: Image.Image, shot: Shot) -> list[int]:
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


def encode_jpeg(photo: Image.Image, quality: int) -> bytes:
    """The JPEG bytes of ``photo`` at ``quality`` (Pillow's defaults otherwise)."""
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
