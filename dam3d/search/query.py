"""The one query path of `dam3d search`, `dam3d serve` and `dam3d evaluate`: decode, cut out, embed.

A photo goes through the index's own cutout backend and embedding model (read from
its manifest), so queries and catalogue vectors are comparable; `Index.search` then
ranks SKUs with the fusion `Index.fusion` chooses. A photo in which the cutout finds
no object is searched with the whole frame, and says so.

Query vectors can be cached by content (`encode_many` with a cache folder): the key is
the sha256 of the image bytes, the model spec, the cutout backend and settings and
the background.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from dam3d.runtime import layout
from dam3d.runtime.atomic import atomic_path
from dam3d.runtime.backends import backend
from dam3d.errors import AssetError
from dam3d.search.index import Index

CACHE_VERSION = 1  # bump when the query preprocessing changes meaning


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

    def prepare(self, photo: str | Path) -> tuple[Image.Image, Image.Image, str | None]:
        """(cutout or whole photo, the RGB image the model sees, a note when no object was found)."""
        from dam3d.stages.cutout import cut_out
        from dam3d.stages.images import flatten, load_image

        image = load_image(photo, str(photo), stage="query", max_pixels=self.cutout_cfg["max_pixels"])
        note = None
        try:
            cutout = cut_out(image, str(photo), mask=self.mask, size=self.cutout_cfg["size"], margin=self.cutout_cfg["margin"])
        except AssetError as exc:
            # A query with no detectable object is still worth answering from the whole frame.
            note = f"{exc}; searching with the whole photo"
            cutout = image
        return cutout, flatten(cutout, self.background), note

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        from dam3d.stages.embed import embed_images

        return embed_images(self.spec, list(images), batch_size=self.batch_size, device=self.device)

    def encode(self, photo: str | Path) -> tuple[Image.Image, np.ndarray, str | None]:
        """The image searched with (the cutout, or the whole photo), its vector, and a note when no object was found."""
        cutout, flat, note = self.prepare(photo)
        return cutout, self.embed([flat])[0], note

    def __call__(self, photo: str | Path) -> np.ndarray:
        _, vector, note = self.encode(photo)
        if note:
            print(f"dam3d: {note}", file=sys.stderr)
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
                _, flat, note = self.prepare(photos[i])
                if note and log:
                    log(f"{photos[i]}: {note}")
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
