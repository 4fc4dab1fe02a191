"""The product itself: a design (silhouette, colours, pattern, brand badge, printed size or
model) drawn as an RGBA image on a transparent background (:func:`draw_product`).

Shapes are given in a unit square and drawn at twice the product size, then downsampled,
which antialiases the edges.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tf_shopee.synthetic.plans import Design

_SUPERSAMPLE = 2


def _shape_operations(design: Design) -> tuple[list[tuple], tuple[float, float, float]]:
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
def embedded_font(size: int) -> ImageFont.FreeTypeFont:
    """The font of every text drawn on a product or a photo, ``size`` pixels (at least 6)."""
    # Pillow's embedded font: the same glyphs on every machine, no system font needed.
    return ImageFont.load_default(size=max(6, size))


def contrasting_colour(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Near-black on a light ``colour``, near-white on a dark one: readable text on it."""
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    return (20, 20, 20) if luminance > 140 else (245, 245, 245)


def _pattern_image(design: Design, side: int) -> Image.Image:
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


def draw_product(design: Design, side: int) -> Image.Image:
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
    text_colour = contrasting_colour(badge_colour)
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
    draw.text((centre_x, centre_y), design.logo_text, fill=text_colour,
              font=embedded_font(font_size), anchor="mm")
    if design.sub_text:
        draw.text((centre_x, centre_y + radius * 1.25), design.sub_text, fill=(30, 30, 30),
                  font=embedded_font(int(radius * 0.55)), anchor="mt", stroke_width=1,
                  stroke_fill=(235, 235, 235))
    # Box-filter downsampling of the 2x drawing: antialiased edges, and fast.
    return product.reduce(_SUPERSAMPLE)
