"""Procedural packaged goods and kitchenware for `dam3d bench make --sources products`.

No openly licensed models of boxes, bottles and cans were found, so this module builds
them: our own code, released with the benchmark under CC0. Each product is one textured
`trimesh.Trimesh` in the pipeline's frame (glTF: +Y up, front +Z, metres, standing on
y = 0), its texture a UV-mapped "printed" image drawn with Pillow:

- **boxes** (cereal box, shoe box, carton, tea box): a cuboid of 24 vertices whose six
  faces share one atlas; the front carries the brand, a logo and a product window, the
  back a table of text lines and a barcode, the sides a band and the brand turned on its
  side, so that other views of a box do not repeat its front (as real packaging);
- **solids of revolution** (can, bottle, jar, tub, bowl): a profile (r, y) turned about
  the Y axis, its parts (label, glass or plastic, cap or lid, rim, glaze) painted in
  bands along the profile; the label goes round, its front half facing +Z and a back
  design (text lines, barcode) on the far half.

Everything is drawn from `(seed, index)`: the same seed gives the same meshes and
textures. About a quarter of the products are look-alikes, as in real catalogues: the
same shape, brand and layout as the product before them in another colourway
(`LOOKALIKE_SHARE`, families of at most `FAMILY_MAX`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import trimesh
from PIL import Image, ImageDraw, ImageFont

TEXTURE_SIDE = 1024  # px: every product's texture is this square
SEGMENTS = 64  # around a solid of revolution
LOOKALIKE_SHARE = 0.3  # chance that a product is a colour variant of the one before it...
FAMILY_MAX = 3  # ...while its family (a template and its variants) has fewer products than this
LICENCE = "generated (dam3d, CC0)"

# Kinds and their share of the products; dimensions below are in metres (typical retail sizes).
KINDS = {"box": 0.4, "can": 0.15, "bottle": 0.2, "jar": 0.1, "tub": 0.07, "bowl": 0.08}
BOX_STYLES = {  # name: (width, height, depth) ranges, metres
    "cereal box": ((0.19, 0.28), (0.27, 0.38), (0.05, 0.09)),
    "shoe box": ((0.28, 0.36), (0.10, 0.14), (0.17, 0.22)),
    "carton": ((0.08, 0.15), (0.12, 0.22), (0.05, 0.10)),
    "tea box": ((0.13, 0.19), (0.06, 0.09), (0.07, 0.10)),
}
SYLLABLES = ("ka", "lo", "ve", "ri", "mo", "sa", "tu", "ne", "zor", "bel", "dri", "fen", "gra", "lux", "pi", "qua",
             "ro", "sel", "tan", "vi", "xo", "yu", "mar", "nor", "ol", "ex")
WORDS = ("ORIGINAL", "CLASSIC", "CRUNCH", "ORGANIC", "FRESH", "EXTRA", "LIGHT", "GOLD", "NATURAL", "PREMIUM",
         "ZERO", "FAMILY", "PURE", "DOUBLE", "MINI", "MAX", "HERBAL", "ROAST", "SPICY", "CREAMY")


@dataclass(frozen=True)
class Product:
    """One generated product: its mesh (textured, glTF frame, metres) and what made it.

    `params` holds the kind, the style's name, the dimensions (metres), the brand, the
    colours and whether it is a look-alike of the product before it: written to the
    benchmark's bench.json.
    """

    key: str
    kind: str
    name: str
    params: dict[str, Any]
    mesh: trimesh.Trimesh


def _rng(seed: int, *parts: object) -> np.random.Generator:
    digest = hashlib.sha256(":".join(map(str, ("dam3d-products", seed, *parts))).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


# --------------------------------------------------------------------------- colours and text


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    """HSV in [0, 1] to 8-bit RGB."""
    import colorsys

    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


def palette(rng: np.random.Generator) -> dict[str, tuple[int, int, int]]:
    """A label's colours: base, accent (another hue), ink (dark or white, legible on the base), cap."""
    hue = float(rng.random())
    base = _hsv(hue, float(rng.uniform(0.35, 0.95)), float(rng.uniform(0.45, 0.97)))
    accent = _hsv(hue + float(rng.choice([0.33, 0.5, 0.12, -0.12])), float(rng.uniform(0.5, 1.0)), float(rng.uniform(0.5, 1.0)))
    light = 0.299 * base[0] + 0.587 * base[1] + 0.114 * base[2]
    ink = (20, 20, 28) if light > 140 else (250, 250, 245)
    cap = _hsv(float(rng.random()), float(rng.uniform(0.0, 0.9)), float(rng.uniform(0.15, 0.95)))
    return {"base": base, "accent": accent, "ink": ink, "cap": cap}


def brand_name(rng: np.random.Generator) -> str:
    """A made-up, pronounceable brand of 2-3 syllables."""
    return "".join(str(s) for s in rng.choice(SYLLABLES, size=int(rng.integers(2, 4)))).capitalize()


def _font(px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(6, px))


def _fit_text(draw: ImageDraw.ImageDraw, text: str, width: float, height: float) -> ImageFont.FreeTypeFont:
    """The largest default-font size at which `text` fits in width x height px."""
    size = max(6, int(height))
    font = _font(size)
    box = draw.textbbox((0, 0), text, font=font)
    scale = min(width / max(1, box[2] - box[0]), height / max(1, box[3] - box[1]), 1.0)
    return _font(int(size * scale))


def _centred_text(draw: ImageDraw.ImageDraw, text: str, centre: tuple[float, float], width: float, height: float,
                  fill: tuple[int, int, int]) -> None:
    font = _fit_text(draw, text, width, height)
    draw.text(centre, text, font=font, fill=fill, anchor="mm")


# --------------------------------------------------------------------------- label designs


def front_design(size: tuple[int, int], layout: np.random.Generator, colours: dict, brand: str, word: str) -> Image.Image:
    """A product's front: base colour, bands, a product window, a logo shape and the brand."""
    w, h = size
    img = Image.new("RGB", size, colours["base"])
    d = ImageDraw.Draw(img)
    # Bands: one wide band across (where the brand sits) and a thin stripe or two.
    band_y = float(layout.uniform(0.12, 0.4)) * h
    band_h = float(layout.uniform(0.14, 0.24)) * h
    d.rectangle([0, band_y, w, band_y + band_h], fill=colours["accent"])
    for _ in range(int(layout.integers(1, 3))):
        y = float(layout.uniform(0.55, 0.95)) * h
        d.rectangle([0, y, w, y + max(2, 0.02 * h)], fill=colours["ink"])
    if layout.random() < 0.5:  # a diagonal sash
        x0 = float(layout.uniform(0.0, 0.5)) * w
        d.polygon([(x0, h), (x0 + 0.25 * w, h), (x0 + 0.75 * w, 0.55 * h), (x0 + 0.5 * w, 0.55 * h)], fill=colours["accent"])
    # The product window: an ellipse or a rounded block in a lighter tone.
    cx, cy = float(layout.uniform(0.35, 0.65)) * w, float(layout.uniform(0.6, 0.75)) * h
    rw, rh = float(layout.uniform(0.18, 0.3)) * w, float(layout.uniform(0.1, 0.18)) * h
    window = tuple(int(c + (255 - c) * 0.55) for c in colours["accent"])
    if layout.random() < 0.5:
        d.ellipse([cx - rw, cy - rh, cx + rw, cy + rh], fill=window, outline=colours["ink"], width=max(1, w // 120))
    else:
        d.rounded_rectangle([cx - rw, cy - rh, cx + rw, cy + rh], radius=min(rw, rh) * 0.3, fill=window)
    # The logo: a star, a circle or a diamond near the top corner.
    lx, ly = float(layout.choice([0.2, 0.8])) * w, 0.08 * h + 0.06 * min(w, h)
    r = 0.07 * min(w, h)
    shape = int(layout.integers(3))
    if shape == 0:
        pts = [(lx + (r if k % 2 == 0 else r * 0.45) * math.sin(k * math.pi / 5),
                ly - (r if k % 2 == 0 else r * 0.45) * math.cos(k * math.pi / 5)) for k in range(10)]
        d.polygon(pts, fill=colours["ink"])
    elif shape == 1:
        d.ellipse([lx - r, ly - r, lx + r, ly + r], fill=colours["ink"])
        d.ellipse([lx - r * 0.55, ly - r * 0.55, lx + r * 0.55, ly + r * 0.55], fill=colours["accent"])
    else:
        d.polygon([(lx, ly - r), (lx + r, ly), (lx, ly + r), (lx - r, ly)], fill=colours["ink"])
    _centred_text(d, brand.upper(), (w / 2, band_y + band_h / 2), 0.86 * w, 0.7 * band_h, colours["ink"])
    _centred_text(d, word, (cx, cy), 1.6 * rw, 0.5 * rh, colours["ink"])
    return img


def back_design(size: tuple[int, int], layout: np.random.Generator, colours: dict, brand: str) -> Image.Image:
    """A product's back: a paler base, a table of text lines, a barcode, the brand small."""
    w, h = size
    paler = tuple(int(c + (255 - c) * 0.6) for c in colours["base"])
    img = Image.new("RGB", size, paler)
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, w, 0.1 * h], fill=colours["base"])
    _centred_text(d, brand.upper(), (w / 2, 0.05 * h), 0.6 * w, 0.07 * h, colours["ink"])
    # A nutrition-table-like block: ruled lines of words and numbers.
    x0, x1 = 0.1 * w, 0.9 * w
    y, step = 0.16 * h, max(6.0, float(layout.uniform(0.035, 0.05)) * h)
    font = _font(int(step * 0.7))
    while y < 0.62 * h:
        d.text((x0, y), str(layout.choice(WORDS)).lower(), font=font, fill=(40, 40, 40))
        d.text((x1, y), f"{int(layout.integers(1, 99))} g", font=font, fill=(40, 40, 40), anchor="ra")
        d.line([(x0, y + step * 0.9), (x1, y + step * 0.9)], fill=(90, 90, 90), width=1)
        y += step
    # A barcode: black bars of random widths on a white patch.
    bx, by, bw, bh = 0.25 * w, 0.7 * h, 0.5 * w, 0.18 * h
    d.rectangle([bx, by, bx + bw, by + bh], fill=(255, 255, 255))
    x = bx + 0.05 * bw
    while x < bx + 0.95 * bw:
        bar = float(layout.uniform(0.005, 0.02)) * bw
        d.rectangle([x, by + 0.1 * bh, x + bar, by + 0.9 * bh], fill=(0, 0, 0))
        x += bar + float(layout.uniform(0.006, 0.02)) * bw
    return img


def side_design(size: tuple[int, int], layout: np.random.Generator, colours: dict, brand: str) -> Image.Image:
    """A box's side: the base with a vertical accent band and the brand turned on its side."""
    w, h = size
    img = Image.new("RGB", size, colours["base"])
    d = ImageDraw.Draw(img)
    x = float(layout.uniform(0.1, 0.5)) * w
    d.rectangle([x, 0, x + 0.3 * w, h], fill=colours["accent"])
    text = Image.new("L", (h, w), 0)  # drawn upright, then turned a quarter turn
    font = _fit_text(ImageDraw.Draw(text), brand.upper(), 0.8 * h, 0.35 * w)
    ImageDraw.Draw(text).text((h / 2, w / 2), brand.upper(), font=font, fill=255, anchor="mm")
    img.paste(colours["ink"], (0, 0), text.rotate(90, expand=True))
    return img


def glaze_design(size: tuple[int, int], layout: np.random.Generator, colours: dict) -> Image.Image:
    """Kitchenware's outside: the base glaze with accent rings and a row of dots."""
    w, h = size
    img = Image.new("RGB", size, colours["base"])
    d = ImageDraw.Draw(img)
    for _ in range(int(layout.integers(1, 4))):
        y = float(layout.uniform(0.1, 0.9)) * h
        d.rectangle([0, y, w, y + float(layout.uniform(0.02, 0.08)) * h], fill=colours["accent"])
    y, r = float(layout.uniform(0.3, 0.7)) * h, float(layout.uniform(0.02, 0.05)) * h
    for x in np.arange(r, w, 4 * r):
        d.ellipse([x - r, y - r, x + r, y + r], fill=colours["ink"])
    return img


def top_design(size: tuple[int, int], colours: dict, brand: str) -> Image.Image:
    """A box's top or bottom: the base colour and the brand small."""
    w, h = size
    img = Image.new("RGB", size, colours["base"])
    _centred_text(ImageDraw.Draw(img), brand, (w / 2, h / 2), 0.5 * w, 0.3 * h, colours["ink"])
    return img


# --------------------------------------------------------------------------- boxes


def box_mesh(width: float, height: float, depth: float, faces: dict[str, Image.Image], side: int = TEXTURE_SIDE
             ) -> trimesh.Trimesh:
    """A cuboid (metres; x in +-width/2, y in [0, height], z in +-depth/2) with one texture atlas.

    `faces` maps "front" (+Z), "right" (+X), "back", "left", "top", "bottom" to images; each
    is pasted into a `side` x `side` atlas laid out as an unfolded box at one scale (front,
    right, back, left in a row; top and bottom below), and seen from outside the right way
    up (the top with the front edge down).
    """
    W, H, D = width, height, depth
    scale = side / max(2 * (W + D), H + D)  # px per metre
    # Atlas rectangles, metres (x, y from the top-left) then px.
    rects = {"front": (0, 0, W, H), "right": (W, 0, D, H), "back": (W + D, 0, W, H), "left": (2 * W + D, 0, D, H),
             "top": (0, H, W, D), "bottom": (W, H, W, D)}
    # Each face: its bottom-left corner seen from outside, the right and up vectors.
    x, z = W / 2, D / 2
    frames = {
        "front": ((-x, 0, z), (W, 0, 0), (0, H, 0)),
        "right": ((x, 0, z), (0, 0, -D), (0, H, 0)),
        "back": ((x, 0, -z), (-W, 0, 0), (0, H, 0)),
        "left": ((-x, 0, -z), (0, 0, D), (0, H, 0)),
        "top": ((-x, H, z), (W, 0, 0), (0, 0, -D)),
        "bottom": ((-x, 0, -z), (W, 0, 0), (0, 0, D)),
    }
    atlas = Image.new("RGB", (side, side), faces["front"].getpixel((0, 0)))
    vertices, uvs, tris = [], [], []
    for name, (origin, right, up) in frames.items():
        rx, ry, rw, rh = (v * scale for v in rects[name])
        box = (round(rx), round(ry), round(rx + rw), round(ry + rh))
        atlas.paste(faces[name].resize((max(1, box[2] - box[0]), max(1, box[3] - box[1])), Image.LANCZOS), box[:2])
        o, r, u = (np.array(v, float) for v in (origin, right, up))
        n = len(vertices)
        vertices += [o, o + r, o + r + u, o + u]
        # UV (0, 0) is the image's bottom-left (glTF flips it on export).
        u0, u1 = box[0] / side, box[2] / side
        v0, v1 = 1 - box[3] / side, 1 - box[1] / side
        uvs += [(u0, v0), (u1, v0), (u1, v1), (u0, v1)]
        tris += [(n, n + 1, n + 2), (n, n + 2, n + 3)]
    return _textured(np.array(vertices), np.array(tris), np.array(uvs), atlas)


# --------------------------------------------------------------------------- solids of revolution


def revolution_mesh(profile: list[tuple[float, float, str]], paint: dict[str, Image.Image], side: int = TEXTURE_SIDE,
                    segments: int = SEGMENTS) -> trimesh.Trimesh:
    """A profile (r, y, part) in metres turned about +Y: one ring per point, `segments` around.

    The profile starts and ends on the axis (r = 0), so the surface is closed. Each point's
    `part` names the stretch of profile that follows it; `paint[part]` is drawn as a band
    of the texture (v: arc length along the profile from the bottom, u: the angle, 0.5 at
    the front +Z; the seam is at the back), stretched to the band.
    """
    r = np.array([p[0] for p in profile], float)
    y = np.array([p[1] for p in profile], float)
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(r), np.diff(y)))])
    v = arc / arc[-1]
    n, m = len(profile), segments + 1  # the seam's column repeats (u = 0 and 1)
    theta = 2 * np.pi * (np.arange(m) / segments - 0.5)
    vertices = np.stack([r[:, None] * np.sin(theta)[None], np.repeat(y[:, None], m, 1), r[:, None] * np.cos(theta)[None]],
                        -1).reshape(-1, 3)
    uvs = np.stack([np.tile(np.arange(m) / segments, n), np.repeat(v, m)], -1)
    tris = []
    for i in range(n - 1):
        for j in range(segments):
            a, b, c, d = i * m + j, i * m + j + 1, (i + 1) * m + j + 1, (i + 1) * m + j
            # Rings on the axis collapse: one triangle there, not a degenerate quad.
            if r[i] > 0:
                tris.append((a, b, c) if r[i + 1] > 0 else (a, b, d))
            if r[i + 1] > 0:
                tris.append((a, c, d))
    tris = np.array(tris)
    texture = Image.new("RGB", (side, side))
    start = 0
    for i in range(1, n + 1):  # each run of points with one part is one band
        if i < n and profile[i][2] == profile[start][2]:
            continue
        top, bottom = round((1 - v[min(i, n - 1)]) * side), round((1 - v[start]) * side)
        if bottom > top:
            texture.paste(paint[profile[start][2]].resize((side, bottom - top), Image.LANCZOS), (0, top))
        start = i
    mesh = _textured(vertices, tris, uvs, texture)
    if mesh.volume < 0:  # a profile drawn the other way round: turn the faces outward
        mesh.invert()
    return mesh


def wrapped_label(size: tuple[int, int], front: Image.Image, back: Image.Image) -> Image.Image:
    """A label going round: `front` on the middle half (facing +Z), `back` split over the seam."""
    w, h = size
    img = Image.new("RGB", size)
    half = (w // 2, h)
    img.paste(front.resize(half, Image.LANCZOS), (w // 4, 0))
    b = back.resize(half, Image.LANCZOS)
    img.paste(b, (w - w // 4, 0))
    img.paste(b, (-(w // 2 - w // 4), 0))
    return img


def _solid(colour: tuple[int, int, int], shade: float = 1.0) -> Image.Image:
    return Image.new("RGB", (8, 8), tuple(int(min(255, c * shade)) for c in colour))


def _smooth(r0: float, r1: float, y0: float, y1: float, part: str, steps: int = 6) -> list[tuple[float, float, str]]:
    """A shoulder: r from r0 to r1 while y goes from y0 to y1, on a half cosine (no kink at either end)."""
    t = np.linspace(0, 1, steps + 1)[1:]
    return [(float(r0 + (r1 - r0) * (1 - math.cos(math.pi * s)) / 2), float(y0 + (y1 - y0) * s), part) for s in t]


# --------------------------------------------------------------------------- the products


def _template(rng: np.random.Generator) -> dict[str, Any]:
    """What look-alikes share: kind, style, dimensions, brand, the layout's seed."""
    kind = str(rng.choice(list(KINDS), p=np.array(list(KINDS.values())) / sum(KINDS.values())))
    t: dict[str, Any] = {"kind": kind, "brand": brand_name(rng), "layout_seed": int(rng.integers(2**31))}
    u = lambda lo, hi: round(float(rng.uniform(lo, hi)), 4)  # noqa: E731 - dimensions to 0.1 mm
    if kind == "box":
        style = str(rng.choice(list(BOX_STYLES)))
        (w, h, d) = BOX_STYLES[style]
        t.update(name=style, width=u(*w), height=u(*h), depth=u(*d))
    elif kind == "can":
        radius = u(0.026, 0.05)
        t.update(name="can", radius=radius, height=round(radius * float(rng.uniform(1.4, 3.6)), 4))
    elif kind == "bottle":
        radius = u(0.028, 0.05)
        t.update(name="bottle", radius=radius, body=round(radius * float(rng.uniform(2.5, 5.0)), 4),
                 shoulder=round(radius * float(rng.uniform(0.5, 1.6)), 4),
                 neck_radius=round(radius * float(rng.uniform(0.28, 0.45)), 4),
                 neck=round(radius * float(rng.uniform(0.4, 1.5)), 4), cap=round(radius * float(rng.uniform(0.4, 0.9)), 4))
    elif kind == "jar":
        radius = u(0.035, 0.06)
        t.update(name="jar", radius=radius, body=round(radius * float(rng.uniform(1.1, 2.4)), 4),
                 lid=round(radius * float(rng.uniform(0.25, 0.45)), 4), lid_radius=round(radius * float(rng.uniform(0.78, 0.92)), 4))
    elif kind == "tub":
        radius = u(0.045, 0.08)
        t.update(name="tub", radius=radius, bottom_radius=round(radius * float(rng.uniform(0.72, 0.9)), 4),
                 height=round(radius * float(rng.uniform(0.7, 1.4)), 4))
    else:
        radius = u(0.06, 0.11)
        t.update(name="bowl", radius=radius, height=round(radius * float(rng.uniform(0.45, 0.8)), 4),
                 foot_radius=round(radius * float(rng.uniform(0.35, 0.55)), 4))
    return t


def profile_of(t: dict[str, Any]) -> list[tuple[float, float, str]]:
    """The (r, y, part) profile of a solid of revolution's template, bottom to top, metres."""
    k = t["kind"]
    if k == "can":
        r, h = t["radius"], t["height"]
        return [(0, 0, "metal"), (0.9 * r, 0, "metal"), (r, 0.05 * h, "label"), (r, 0.93 * h, "metal"),
                (0.9 * r, h, "metal"), (0, h, "metal")]
    if k == "bottle":
        r, b, s, rn, nk, cp = (t[x] for x in ("radius", "body", "shoulder", "neck_radius", "neck", "cap"))
        label0, label1 = 0.18 * b, 0.85 * b
        pts = [(0, 0, "glass"), (0.94 * r, 0, "glass"), (r, 0.03 * b, "glass"), (r, label0, "label"),
               (r, label1, "glass"), (r, b, "glass")]
        pts += _smooth(r, rn, b, b + s, "glass")
        y = b + s + nk
        rc = rn * 1.15
        pts += [(rn, y, "cap"), (rc, y, "cap"), (rc, y + cp, "cap"), (0, y + cp, "cap")]
        return pts
    if k == "jar":
        r, b, lid, rl = t["radius"], t["body"], t["lid"], t["lid_radius"]
        pts = [(0, 0, "glass"), (0.95 * r, 0, "glass"), (r, 0.05 * b, "label"), (r, 0.9 * b, "glass")]
        pts += _smooth(r, 0.95 * rl, 0.9 * b, b, "glass", 3)
        return pts + [(rl, b, "cap"), (rl, b + lid, "cap"), (0, b + lid, "cap")]
    if k == "tub":
        r, rb, h = t["radius"], t["bottom_radius"], t["height"]
        return [(0, 0, "rim"), (rb, 0, "label"), (r, 0.9 * h, "cap"), (1.03 * r, 0.92 * h, "cap"), (1.03 * r, h, "cap"),
                (0, h, "cap")]
    # A bowl: foot, outer wall up to the rim, the inside back down to the axis.
    r, h, rf = t["radius"], t["height"], t["foot_radius"]
    wall = 0.06 * r
    pts = [(0, 0, "glaze"), (rf, 0, "glaze"), (rf, 0.06 * h, "glaze")]
    pts += [(float(rf + (r - rf) * math.sin(a)), float(0.06 * h + 0.94 * h * (1 - math.cos(a))), "glaze")
            for a in np.linspace(0, math.pi / 2, 9)[1:]]
    pts += [(r - wall, h, "inside")]
    pts += [(float((r - wall) * math.sin(a)), float(h - (h - 0.1 * h) * math.cos(a)), "inside")
            for a in np.linspace(math.pi / 2, 0, 9)[1:]]
    return pts


def make_product(key: str, template: dict[str, Any], colours: dict, word: str, lookalike: bool) -> Product:
    """Build the mesh and texture of one product from its template and colourway."""
    layout = np.random.default_rng(template["layout_seed"])
    brand = template["brand"]
    params = {**template, "colours": {k: list(v) for k, v in colours.items()}, "word": word, "lookalike": lookalike}
    if template["kind"] == "box":
        w, h, d = template["width"], template["height"], template["depth"]
        px = TEXTURE_SIDE / max(2 * (w + d), h + d)
        size = lambda a, b: (max(8, round(a * px)), max(8, round(b * px)))  # noqa: E731 - a face's px size
        faces = {"front": front_design(size(w, h), layout, colours, brand, word),
                 "back": back_design(size(w, h), layout, colours, brand),
                 "right": side_design(size(d, h), layout, colours, brand),
                 "left": side_design(size(d, h), layout, colours, brand),
                 "top": top_design(size(w, d), colours, brand), "bottom": top_design(size(w, d), colours, brand)}
        mesh = box_mesh(w, h, d, faces)
        dims = (w, h, d)
    else:
        profile = profile_of(template)
        radius = max(p[0] for p in profile)
        height = max(p[1] for p in profile)
        # The label's own proportions (circumference x its height) so its text is not stretched.
        label_h = 200
        label_w = max(16, round(label_h * 2 * math.pi * radius / max(1e-3, 0.6 * height)))
        front = front_design((label_w // 2, label_h), layout, colours, brand, word)
        back = back_design((label_w // 2, label_h), layout, colours, brand)
        label = wrapped_label((label_w, label_h), front, back)
        glass = tuple(int(c * 0.5 + 255 * 0.3) for c in colours["accent"])  # tinted glass / plastic
        paint = {"label": label, "metal": _solid((200, 200, 205)), "glass": _solid(glass), "cap": _solid(colours["cap"]),
                 "rim": _solid(colours["cap"], 0.8), "glaze": glaze_design((label_w, label_h), layout, colours), "inside": _solid(colours["base"], 1.1)}
        mesh = revolution_mesh(profile, paint)
        dims = (2 * radius, height, 2 * radius)
    params["dimensions_m"] = [round(float(x), 4) for x in dims]
    return Product(key, template["kind"], template["name"], params, mesh)


def generate(seed: int, count: int) -> list[Product]:
    """`count` products for `seed`; product i depends only on (seed, i) and the template it copies."""
    out: list[Product] = []
    template: dict[str, Any] | None = None
    family = 0
    for i in range(count):
        rng = _rng(seed, "product", i)
        lookalike = template is not None and bool(rng.random() < LOOKALIKE_SHARE) and family < FAMILY_MAX
        if lookalike:
            family += 1
        else:
            template, family = _template(rng), 1
        assert template is not None
        out.append(make_product(f"p{i:04d}", template, palette(rng), str(rng.choice(WORDS)), lookalike))
    return out


def _textured(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, texture: Image.Image) -> trimesh.Trimesh:
    """A mesh whose glTF material's base colour is `texture` (matte, not metallic)."""
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=texture, metallicFactor=0.0, roughnessFactor=0.55)
    return trimesh.Trimesh(vertices=vertices, faces=faces, process=False,
                           visual=trimesh.visual.TextureVisuals(uv=uv, material=material))


def write_glb(product: Product, path) -> None:  # noqa: ANN001 - a path or an open binary file
    """The product as a GLB (embedded PNG texture, vertex normals), what the renderer and `provided` read."""
    mesh = product.mesh
    _ = mesh.vertex_normals  # computed now so the exporter includes them (smooth shading of the solids)
    data = trimesh.Scene(mesh).export(file_type="glb")
    if hasattr(path, "write"):
        path.write(data)
    else:
        with open(path, "wb") as fh:
            fh.write(data)
