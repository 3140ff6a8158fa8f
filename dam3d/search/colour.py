"""Colour descriptors of cutouts and the colour-aware re-ranking of search candidates.

The descriptor of a cutout is a normalised joint histogram of its foreground pixels (alpha above
ALPHA_THRESHOLD) in CIELAB: L* in [0, 100] and a*, b* in [-AB_RANGE, AB_RANGE] (clipped), binned
`bins` = (L, a, b) ways, soft-assigned (each pixel's weight is shared linearly between the two
nearest bin centres on each axis, so a colour near a bin edge does not jump from bin to bin).
A grey, white or black object has a* and b* near 0: its descriptor says "achromatic" (the middle
a*b* bins), unlike any coloured SKU's; with more than one L* bin (`bins`) they are also told apart by
L*, which the default leaves out (lighting moves it; README, Colour re-ranking). The same function makes the catalogue's descriptors
(at index build, from RESULTS/cutout/) and the query's (from the cutout QueryEncoder.prepare makes).

Re-ranking (`rerank_keys`, `Index.search`): the first `depth` candidates by embedding score are
re-ordered by `score + weight * similarity`, similarity the histogram intersection in [0, 1].
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Bump when the descriptor changes meaning: rebuilds the indexes (workflow/rules/index.smk), recomputes cached queries'.
DESCRIPTOR_VERSION = 1
# The histogram bins along L*, a*, b*: a joint a*b* (chroma) histogram, lightness not binned. Chosen on the
# tuning benchmarks (README, Colour re-ranking): binning L* (4 x 8 x 8, 6 x 12 x 12, or an L* marginal
# beside a*b*) did worse there, the queries' lighting moves L* more than it moves a* and b*.
DEFAULT_BINS = (1, 12, 12)
# a* and b* beyond +-AB_RANGE go into the outermost bins; product colours rarely exceed it.
AB_RANGE = 80.0
# A pixel is foreground when its alpha is above this (0-255): the cutout's own mask is 0/255 with soft edges.
ALPHA_THRESHOLD = 128
# Fewer foreground pixels than this: the descriptor is all zeros (no colour evidence, re-ranking leaves the order).
MIN_PIXELS = 16
# The pixels a descriptor is computed on: the cutout is reduced to at most this side first (speed only).
MAX_SIDE = 128
# The re-ranked candidates: the first max(RERANK_MIN, RERANK_FACTOR * k) by embedding score.
RERANK_MIN = 50
RERANK_FACTOR = 4

# sRGB (D65) -> CIE XYZ, IEC 61966-2-1:1999 (sRGB), section 5.2; rows X, Y, Z.
_SRGB_TO_XYZ = np.array([[0.4124, 0.3576, 0.1805],
                         [0.2126, 0.7152, 0.0722],
                         [0.0193, 0.1192, 0.9505]], dtype=np.float64)
# The D65 reference white (X, Y, Z), Y = 1: CIE 15:2004, Table T.3 (2 degree observer).
_D65 = np.array([0.95047, 1.0, 1.08883])


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB values (..., 3) uint8 (0-255) or float in [0, 1] -> CIELAB (..., 3) float32 (L* 0-100, a*, b*), D65.

    sRGB decoding (the piecewise gamma, threshold 0.04045) and the sRGB -> XYZ matrix: IEC 61966-2-1:1999;
    XYZ -> L*a*b* (f(t) = t^(1/3) above (6/29)^3, else t / (3 (6/29)^2) + 4/29): CIE 15:2004, section 8.2.1.
    Agrees with skimage.color.rgb2lab to within 0.05 (tests).
    """
    rgb = np.asarray(rgb)
    c = rgb.astype(np.float64) / 255.0 if rgb.dtype == np.uint8 else np.asarray(rgb, dtype=np.float64)
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    t = (linear @ _SRGB_TO_XYZ.T) / _D65
    delta = 6.0 / 29.0
    f = np.where(t > delta**3, np.cbrt(t), t / (3 * delta**2) + 4.0 / 29.0)
    lab = np.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], axis=-1)
    return lab.astype(np.float32)


def _soft_bins(values: np.ndarray, low: float, high: float, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear soft assignment of (P,) values to `bins` equal bins on [low, high]: (lower bin, upper bin, upper weight)."""
    position = (np.clip(values, low, high) - low) / (high - low) * bins - 0.5   # in bin-centre units
    position = np.clip(position, 0.0, bins - 1.0)
    lower = np.floor(position).astype(np.int64)
    upper = np.minimum(lower + 1, bins - 1)
    return lower, upper, position - lower


def colour_descriptor(image: Image.Image, *, bins: tuple[int, int, int] = DEFAULT_BINS,
                      alpha_threshold: int = ALPHA_THRESHOLD) -> np.ndarray:
    """The colour histogram of an image's foreground: (L*a*b bins product,) float32, summing to 1 (or all 0).

    Foreground: the pixels whose alpha exceeds `alpha_threshold` (0-255); an image without alpha
    (a query photo in which the cutout found no object) counts every pixel. Fewer than MIN_PIXELS
    foreground pixels give all zeros: no colour evidence. The image is first reduced to at most
    MAX_SIDE pixels a side (nearest pixels: no colour is mixed with the background; a histogram needs no more). ValueError for a bin count < 1.
    """
    if min(bins) < 1:
        raise ValueError(f"colour bins must be at least 1 each, not {bins}")
    image = image.convert("RGBA")
    if max(image.size) > MAX_SIDE:
        scale = MAX_SIDE / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.NEAREST)
    pixels = np.asarray(image)
    rgb = pixels[..., :3][pixels[..., 3] > alpha_threshold]
    out = np.zeros(int(np.prod(bins)), dtype=np.float64)
    if len(rgb) < MIN_PIXELS:
        return out.astype(np.float32)
    lab = srgb_to_lab(rgb)
    axes = [_soft_bins(lab[:, 0], 0.0, 100.0, bins[0]),
            _soft_bins(lab[:, 1], -AB_RANGE, AB_RANGE, bins[1]),
            _soft_bins(lab[:, 2], -AB_RANGE, AB_RANGE, bins[2])]
    for corner in range(8):   # the 2 x 2 x 2 neighbouring bin centres of each pixel
        index = np.zeros(len(rgb), dtype=np.int64)
        weight = np.ones(len(rgb))
        for axis, (lower, upper, frac) in enumerate(axes):
            high = (corner >> axis) & 1
            index = index * bins[axis] + (upper if high else lower)
            weight = weight * (frac if high else 1.0 - frac)
        out += np.bincount(index, weights=weight, minlength=len(out))
    return (out / out.sum()).astype(np.float32)


def similarity(query: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Histogram intersection sum(min(q, c)) of a (B,) query with (..., B) descriptors: (...,) float32 in [0, 1].

    Swain & Ballard, "Color indexing", IJCV 7(1), 1991. 1 for identical normalised histograms, 0 for
    disjoint ones, or where either is all zeros (no colour evidence).
    """
    colours = np.asarray(colours, dtype=np.float32)
    return np.minimum(colours, np.asarray(query, dtype=np.float32)).sum(axis=-1).astype(np.float32)


def rerank_depth(k: int, count: int) -> int:
    """How many candidates are re-ranked for a top-k search over `count` SKUs: max(RERANK_MIN, RERANK_FACTOR k), at most count."""
    return min(count, max(RERANK_MIN, RERANK_FACTOR * k))


def rerank_keys(scores: np.ndarray, query_colours: np.ndarray, colours: np.ndarray, weight: float,
                depth: int) -> np.ndarray:
    """Ordering keys (Q, N) float64 that rank SKUs as a colour re-ranking search does: higher first, ties by row.

    scores (Q, N): embedding scores (cosine, in [-1, 1]); query_colours (Q, B); colours (N, B). In each
    row the first `depth` SKUs by score (ties: the lower row) get key 4 + w + score + w * similarity,
    above every other SKU, whose key is its score: so they come first, re-ordered, and the rest keep
    their order. These are keys, not scores. weight 0 keeps the order of `scores`.
    """
    scores = np.asarray(scores, dtype=np.float64)
    keys = scores.copy()
    if weight == 0 or depth <= 0:
        return keys
    n = scores.shape[1]
    colours = np.asarray(colours, dtype=np.float32)
    for q in range(len(scores)):
        top = np.lexsort((np.arange(n), -scores[q]))[:depth]
        keys[q, top] = 4.0 + weight + scores[q, top] + weight * similarity(query_colours[q], colours[top])
    return keys
