"""The one query path of `dam3d search`, `dam3d serve` and `dam3d evaluate`: decode, cut out, embed.

A text query (`encode_text`, for an index built with a model that has a text tower, backend
`clip`) is embedded by that model's text tower into the same space; there is no cutout.

A photo goes through the index's own cutout backend and embedding model (read from
its manifest), so queries and catalogue vectors are comparable; `Index.search` then
ranks SKUs with the fusion `Index.fusion` chooses. A customer photo may hold more than
the product (a table, a cup behind it): of the objects the cutout's mask finds, the
query keeps one (`select_object`: the largest, weighted by closeness to the centre,
specks dropped); a photo in which it finds none, or only a sliver, is searched with the
whole frame. Every query says which (`Choice`: `cutout`, `largest object`, `whole photo`
and why), in `dam3d search --json` too.

A photo of several products side by side (a chair and a lamp) is searched once per product
when the query asks for it (`QueryEncoder.encode_objects`, used by `dam3d search` and
`dam3d serve` unless `--single`): `split_objects` finds the mask's sizeable separate objects
(components closer than MERGE_SHARE of the photo's shorter side are one object, so a chair's
separate legs stay with the chair; an object under SECOND_SHARE of the largest, or a sliver,
is not searched; at most MAX_OBJECTS), each is cut out on its own and all are embedded in one
batch. A photo with one such object takes the single-object path above, unchanged.

Query vectors can be cached by content (`encode_many` with a cache folder): the key is
the sha256 of the image bytes, the model spec, the cutout backend and settings and
the background.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dam3d.runtime import layout
from dam3d.runtime.atomic import atomic_path
from dam3d.runtime.backends import backend
from dam3d.errors import AssetError
from dam3d.search.index import Index

CACHE_VERSION = 2  # bump when the query preprocessing changes meaning (2: select_object)

# select_object's thresholds. Shares are of the photo's pixels; alpha levels 0-255.
OBJECT_ALPHA = 128  # a pixel the segmenter is sure of (cutout.SOLID_ALPHA)
EDGE_ALPHA = 16  # pixels above this join their object's component (soft edges stay with it)
SPECK_SHARE = 0.002  # a component with fewer sure pixels than this is a speck: dropped
SLIVER_SHARE = 0.005  # the chosen object is smaller than this: a sliver, not a product
SLIVER_SIDE = 0.03  # ... or its box's shorter side is under this share of the photo's shorter side
# split_objects' thresholds (several products in one photo).
MERGE_SHARE = 0.02  # components whose gap is at most this share of the photo's shorter side are one object
SECOND_SHARE = 0.25  # an object with fewer sure pixels than this share of the largest one's is not searched
MAX_OBJECTS = 4  # at most this many objects are searched, the most salient first
CENTRE_WEIGHT = 0.5  # score = sure pixels x (1 - CENTRE_WEIGHT x distance of the centroid from the
                     # centre / half the diagonal): an object in a corner counts half as much


@dataclass(frozen=True)
class Choice:
    """What a query was searched with: `kind` is `cutout`, `largest object` or `whole photo`; `reason` says why."""

    kind: str
    reason: str

    @property
    def note(self) -> str | None:
        """The line to show a user: None for a plain cutout."""
        return None if self.kind == "cutout" else f"{self.kind}: {self.reason}"

    def as_dict(self) -> dict[str, str]:
        return {"choice": self.kind, "reason": self.reason}


def select_object(mask: Image.Image) -> tuple[Image.Image | None, Choice]:
    """Keep the salient object of a segmenter's L mask (0-255, the photo's size).

    Components are 8-connected regions of pixels above EDGE_ALPHA; their size is their
    count of sure pixels (>= OBJECT_ALPHA); those under SPECK_SHARE of the photo are
    dropped. Of several, the one with the best size x closeness to the centre is kept
    (the mask is zeroed outside it). Returns (mask, choice), or (None, whole-photo choice)
    when nothing is left or the kept object is a sliver (SLIVER_SHARE, SLIVER_SIDE).
    """
    from scipy import ndimage

    alpha = np.asarray(mask.convert("L"))
    h, w = alpha.shape
    labels, n = ndimage.label(alpha > EDGE_ALPHA, structure=np.ones((3, 3), dtype=bool))
    sure = np.bincount(labels[alpha >= OBJECT_ALPHA], minlength=n + 1)[1:]  # sure pixels per component
    objects = [i for i in range(n) if sure[i] >= SPECK_SHARE * h * w]
    specks = n - len(objects)
    if not objects:
        why = "the cutout found nothing" if n == 0 else f"the cutout found only {n} speck(s)"
        return None, Choice("whole photo", f"{why}; searching with the whole photo")
    centres = ndimage.center_of_mass(alpha >= OBJECT_ALPHA, labels, [i + 1 for i in objects])
    half_diagonal = float(np.hypot(h, w)) / 2
    scores = [sure[i] * (1 - CENTRE_WEIGHT * min(1.0, float(np.hypot(cy - h / 2, cx - w / 2)) / half_diagonal))
              for i, (cy, cx) in zip(objects, centres)]
    best = objects[int(np.argmax(scores))]
    rows, cols = ndimage.find_objects(labels, max_label=best + 1)[best]
    short_side = min(rows.stop - rows.start, cols.stop - cols.start)
    share = sure[best] / (h * w)
    if share < SLIVER_SHARE or short_side < SLIVER_SIDE * min(h, w):
        return None, Choice("whole photo", f"the cutout found only a sliver ({share:.1%} of the photo, "
                                           f"{short_side} px across); searching with the whole photo")
    dropped = f", {specks} speck(s) dropped" if specks else ""
    if len(objects) == 1:
        return (mask if not specks else _only(alpha, labels, best)), Choice("cutout", f"one object, {share:.0%} of the photo{dropped}")
    return _only(alpha, labels, best), Choice(
        "largest object", f"kept 1 of {len(objects)} objects ({share:.0%} of the photo; the largest, weighted by "
                          f"closeness to the centre){dropped}")


def _only(alpha: np.ndarray, labels: np.ndarray, component: int) -> Image.Image:
    """`alpha` with every pixel outside `component` (0-based) set to 0, as an L image."""
    return Image.fromarray(np.where(labels == component + 1, alpha, 0).astype(np.uint8), mode="L")


Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class QueryObject:
    """One object of a query photo, as searched.

    `cutout`: the RGBA square searched with (or the whole photo, RGB/RGBA); `flat`: the RGB
    image the model sees; `choice`: what it is and why; `box`: [x0, y0, x1, y1] in the photo's
    pixels (x1, y1 exclusive, as PIL's getbbox) of the object's mask, the whole photo for a
    whole-photo choice; `vector`: its (D,) float32 embedding, None until embedded.
    """

    cutout: Image.Image
    flat: Image.Image
    choice: Choice
    box: Box
    vector: np.ndarray | None = None


def _salience(sizes: np.ndarray, centres: Sequence[tuple[float, float]], h: int, w: int) -> list[float]:
    """select_object's score of each object: sure pixels x (1 - CENTRE_WEIGHT x distance from the centre / half diagonal)."""
    half_diagonal = float(np.hypot(h, w)) / 2
    return [float(size) * (1 - CENTRE_WEIGHT * min(1.0, float(np.hypot(cy - h / 2, cx - w / 2)) / half_diagonal))
            for size, (cy, cx) in zip(sizes, centres)]


def split_objects(mask: Image.Image, *, max_objects: int = MAX_OBJECTS) -> list[tuple[Image.Image, Box, Choice]]:
    """The sizeable separate objects of a segmenter's L mask (0-255, the photo's size), the most salient first.

    Pixels above EDGE_ALPHA form 8-connected components; components whose gap is at most
    MERGE_SHARE of the photo's shorter side are merged into one object (the mask is dilated
    by half that gap to find them; the object's own pixels are not grown). An object is
    sizeable when its sure pixels (>= OBJECT_ALPHA) reach SECOND_SHARE of the largest
    object's and SLIVER_SHARE of the photo, and its box's shorter side SLIVER_SIDE of the
    photo's; they are ordered by select_object's score (size weighted by closeness to the
    centre) and at most `max_objects` (>= 1) are kept.

    Returns [(mask of that object only (L, the photo's size), box [x0, y0, x1, y1] in
    pixels, x1/y1 exclusive, its Choice)] when two or more objects are sizeable, else []
    (the caller takes the single-object path, select_object).
    """
    from scipy import ndimage

    alpha = np.asarray(mask.convert("L"))
    h, w = alpha.shape
    edge = alpha > EDGE_ALPHA
    _, n = ndimage.label(edge, structure=np.ones((3, 3), dtype=bool))
    if n < 2:
        return []  # one component (or none): nothing to split, and no dilation to pay for
    radius = MERGE_SHARE * min(h, w) / 2
    grown = ndimage.distance_transform_edt(~edge) <= radius  # the mask dilated by a disk of `radius`
    groups, _ = ndimage.label(grown, structure=np.ones((3, 3), dtype=bool))
    groups = np.where(edge, groups, 0)  # each pixel of the mask labelled with its merged object
    count = int(groups.max())
    sure = np.bincount(groups[alpha >= OBJECT_ALPHA], minlength=count + 1)
    sure[0] = 0
    boxes = ndimage.find_objects(groups)
    largest = int(sure.max())

    def sizeable(g: int) -> bool:
        rows, cols = boxes[g - 1]
        short = min(rows.stop - rows.start, cols.stop - cols.start)
        return (sure[g] >= SECOND_SHARE * largest and sure[g] >= SLIVER_SHARE * h * w
                and short >= SLIVER_SIDE * min(h, w))

    kept = [g for g in range(1, count + 1) if boxes[g - 1] is not None and sizeable(g)]
    if len(kept) < 2 or max_objects < 2:
        return []
    centres = ndimage.center_of_mass(alpha >= OBJECT_ALPHA, groups, kept)
    scores = _salience(sure[kept], centres, h, w)
    ordered = [g for _, g in sorted(zip(scores, kept), key=lambda t: -t[0])]
    searched, left = ordered[:max_objects], len(ordered) - max_objects
    others = count - len(kept)
    found = []
    for i, g in enumerate(searched, start=1):
        rows, cols = boxes[g - 1]
        box = (int(cols.start), int(rows.start), int(cols.stop), int(rows.stop))
        extra = ""
        if i == 1:
            notes = ([f"{left} more sizeable object(s) not searched (at most {max_objects})"] if left > 0 else []) + \
                    ([f"{others} small object(s) or speck(s) not searched"] if others else [])
            extra = "; " + ", ".join(notes) if notes else ""
        reason = (f"object {i} of {len(searched)}, {sure[g] / (h * w):.0%} of the photo, box {list(box)}"
                  f"{' (the most salient)' if i == 1 else ''}{extra}")
        found.append((Image.fromarray(np.where(groups == g, alpha, 0).astype(np.uint8), mode="L"), box,
                      Choice("object", reason)))
    return found


def _box(alpha: Image.Image | None, size: tuple[int, int]) -> Box:
    """[x0, y0, x1, y1] of the pixels above EDGE_ALPHA of an L mask; the whole photo (`size`: w, h) for None or empty."""
    if alpha is not None:
        box = Image.fromarray((np.asarray(alpha.convert("L")) > EDGE_ALPHA).astype(np.uint8)).getbbox()
        if box:
            return tuple(int(v) for v in box)  # type: ignore[return-value]
    return (0, 0, size[0], size[1])


class QueryEncoder:
    """Turns photos into query vectors with the same cutout and model the index was built with.

    Models load on first use, so a fully cached evaluation loads none. With a
    `cache_dir`, `encode_many` reads and writes the vector cache.
    """

    def __init__(self, index: Index, *, cache_dir: str | Path | None = None, batch_size: int | None = None) -> None:
        from dam3d.stages.embed import ModelSpec

        config = index.manifest["config"]
        self.cutout_cfg = config["cutout"]
        self.background = tuple(config["background"])
        self.device = config.get("device", "auto")
        self.spec = ModelSpec(**index.manifest["model"])
        self.cutout_backend = index.manifest["backends"]["cutout"]
        self.batch_size = batch_size or config.get("embed", {}).get("batch_size", 32)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._mask = None
        self.stats = {"cached": 0, "computed": 0}
        # What the vector of a photo depends on besides its bytes.
        self.key_config = {
            "version": CACHE_VERSION,
            "model": {"name": self.spec.name, "backend": self.spec.backend, "model": self.spec.model,
                      "pooling": self.spec.pooling},
            "cutout": {"backend": self.cutout_backend, "size": self.cutout_cfg["size"],
                       "margin": self.cutout_cfg["margin"],
                       "model": backend("cutout", self.cutout_backend).key(self.cutout_cfg)},
            "background": list(self.background),
        }
        self._config_digest = hashlib.sha256(json.dumps(self.key_config, sort_keys=True).encode()).hexdigest()

    @property
    def mask(self):  # noqa: ANN201 - a MaskFn
        if self._mask is None:
            from dam3d.stages.cutout import mask_fn

            self._mask = mask_fn(self.cutout_backend, model=self.cutout_cfg["model"], device=self.device)
        return self._mask

    def _load(self, photo: str | Path) -> Image.Image:
        from dam3d.stages.images import load_image

        return load_image(photo, str(photo), stage="query", max_pixels=self.cutout_cfg["max_pixels"])

    def prepare(self, photo: str | Path) -> tuple[Image.Image, Image.Image, Choice]:
        """(cutout or whole photo, the RGB image the model sees, what was searched with and why)."""
        obj = self._single(self._load(photo), photo)
        return obj.cutout, obj.flat, obj.choice

    def _single(self, image: Image.Image, photo: str | Path, mask: Image.Image | None = None) -> QueryObject:
        """The single-object path: the photo's own transparency, else select_object of `mask` (segmented if None)."""
        from dam3d.stages.cutout import has_own_alpha

        if has_own_alpha(image):
            alpha: Image.Image | None = image.getchannel("A")
            choice = Choice("cutout", "the photo's own transparency")
        else:
            alpha, choice = select_object(self.mask(image) if mask is None else mask)
        return self._cut(image, photo, alpha, choice)

    def _cut(self, image: Image.Image, photo: str | Path, alpha: Image.Image | None, choice: Choice) -> QueryObject:
        """Crop `image` to `alpha` (None: the whole photo) as the index's cutouts are cropped."""
        from dam3d.stages.cutout import crop_square
        from dam3d.stages.images import flatten

        cutout = image  # a query with no detectable object is still worth answering from the whole frame
        if alpha is not None:
            try:
                cutout = crop_square(image, alpha, size=self.cutout_cfg["size"], margin=self.cutout_cfg["margin"],
                                     asset=str(photo))
            except AssetError as exc:  # a transparent file with nothing opaque in it
                choice, alpha = Choice("whole photo", f"{exc.reason}; searching with the whole photo"), None
        return QueryObject(cutout, flatten(cutout, self.background), choice, _box(alpha, image.size))

    def prepare_objects(self, photo: str | Path, *, max_objects: int = MAX_OBJECTS) -> list[QueryObject]:
        """The objects of `photo` to search, the most salient first, not yet embedded.

        Several when the segmenter's mask holds two or more sizeable separate objects
        (split_objects); otherwise one, exactly `prepare`'s. A photo with its own
        transparency, or `max_objects` 1, is always one. Raises AssetError as `prepare`.
        """
        from dam3d.stages.cutout import has_own_alpha

        image = self._load(photo)
        if max_objects < 2 or has_own_alpha(image):
            return [self._single(image, photo)]
        mask = self.mask(image)
        found = split_objects(mask, max_objects=max_objects)
        if not found:
            return [self._single(image, photo, mask)]
        return [self._cut(image, photo, alpha, choice) for alpha, _, choice in found]

    def encode_objects(self, photo: str | Path, *, max_objects: int = MAX_OBJECTS) -> list[QueryObject]:
        """`prepare_objects`, each with its (D,) float32 vector; all embedded in one batch."""
        objects = self.prepare_objects(photo, max_objects=max_objects)
        vectors = self.embed([o.flat for o in objects])
        return [dataclasses.replace(o, vector=v) for o, v in zip(objects, vectors, strict=True)]

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        from dam3d.stages.embed import embed_images

        return embed_images(self.spec, list(images), batch_size=self.batch_size, device=self.device)

    @property
    def has_text(self) -> bool:
        """Whether the index's model has a text tower (`encode_text` works); loads no model."""
        from dam3d.stages.embed import has_text_tower

        return has_text_tower(self.spec)

    def encode_text(self, text: str) -> np.ndarray:
        """(D,) float32 L2-normalised vector of `text` from the index's model's text tower, in its image space.

        Raises dam3d.stages.embed.NoTextTower (a ValueError) when the model has none, ValueError for
        an empty text. Text vectors are not cached (one forward of the text tower is cheap).
        """
        from dam3d.stages.embed import embed_texts

        return embed_texts(self.spec, [text], device=self.device)[0]

    def encode(self, photo: str | Path) -> tuple[Image.Image, np.ndarray, Choice]:
        """The image searched with (the cutout, or the whole photo), its vector, and what was searched with and why."""
        cutout, flat, choice = self.prepare(photo)
        return cutout, self.embed([flat])[0], choice

    def __call__(self, photo: str | Path) -> np.ndarray:
        _, vector, choice = self.encode(photo)
        if choice.note:
            print(f"dam3d: {choice.note}", file=sys.stderr)
        return vector

    def cache_key(self, photo: str | Path) -> str:
        digest = hashlib.sha256(Path(photo).read_bytes()).hexdigest()
        return hashlib.sha256(f"{digest}:{self._config_digest}".encode()).hexdigest()

    def encode_many(self, photos: Sequence[str | Path], *, log: Callable[[str], None] | None = None) -> np.ndarray:
        """(N, D) vectors for `photos`: cached ones are read, the others cut out, embedded in batches and cached."""
        keys = [self.cache_key(p) for p in photos]
        vectors: list[np.ndarray | None] = [None] * len(photos)
        todo: list[int] = []
        for i, key in enumerate(keys):
            cached = self._read_cache(key)
            if cached is None:
                todo.append(i)
            else:
                vectors[i] = cached
        self.stats["cached"] += len(photos) - len(todo)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            flats = []
            for i in chunk:
                _, flat, choice = self.prepare(photos[i])
                if choice.note and log:
                    log(f"{photos[i]}: {choice.note}")
                flats.append(flat)
            for i, vector in zip(chunk, self.embed(flats), strict=True):
                vectors[i] = vector
                self._write_cache(keys[i], vector)
            self.stats["computed"] += len(chunk)
            if log:
                log(f"encoded {min(start + self.batch_size, len(todo))}/{len(todo)} new query photos")
        return np.stack(vectors).astype(np.float32)

    def colours_many(self, photos: Sequence[str | Path], bins: tuple[int, int, int],
                     *, log: Callable[[str], None] | None = None) -> np.ndarray:
        """(N, B) float32 colour descriptors (dam3d.search.colour) of the photos' cutouts, as `prepare` cuts them out.

        Cached beside the vectors ({key}.colour{DESCRIPTOR_VERSION}-{L}x{a}x{b}.npy) when there is a cache folder.
        """
        from dam3d.search.colour import DESCRIPTOR_VERSION, colour_descriptor

        suffix = f"colour{DESCRIPTOR_VERSION}-{'x'.join(str(b) for b in bins)}"
        out = []
        computed = 0
        for photo in photos:
            path = self._cache_file(f"{self.cache_key(photo)}.{suffix}")
            descriptor = None
            if path is not None and path.is_file():
                try:
                    descriptor = np.load(path)
                except (OSError, ValueError):
                    descriptor = None
            if descriptor is None or descriptor.shape != (int(np.prod(bins)),):
                descriptor = colour_descriptor(self.prepare(photo)[0], bins=bins)
                computed += 1
                if path is not None:
                    with atomic_path(path) as tmp:
                        np.save(tmp, descriptor)
            out.append(descriptor)
        if log and computed:
            log(f"colour descriptors: {computed} computed, {len(photos) - computed} cached")
        return np.stack(out).astype(np.float32) if out else np.zeros((0, int(np.prod(bins))), np.float32)

    def _cache_file(self, key: str) -> Path | None:
        return self.cache_dir / f"{key}.npy" if self.cache_dir else None

    def _read_cache(self, key: str) -> np.ndarray | None:
        path = self._cache_file(key)
        if path is None or not path.is_file():
            return None
        try:
            vector = np.load(path)
        except (OSError, ValueError):
            return None  # a damaged entry is recomputed
        return vector if vector.ndim == 1 else None

    def _write_cache(self, key: str, vector: np.ndarray) -> None:
        path = self._cache_file(key)
        if path is None:
            return
        with atomic_path(path) as tmp:
            np.save(tmp, np.asarray(vector, dtype=np.float32))


def default_cache_dir(index: Index) -> Path:
    """RESULTS/cache/queries/{model}/ for an index at RESULTS/index/{model}/."""
    return layout.query_cache(index.results, index.manifest["model"]["name"])
