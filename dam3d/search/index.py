"""The search index: per-SKU 2D vector, per-view 3D vectors, fused mean vector; cosine search, exact
or, for large indexes, over the candidates of ANN graphs (dam3d.search.ann).

Fusions (seeds 000/003):
- `2d`: cosine with the cutout's vector.
- `3d`: best cosine over the rendered views only.
- `mean`: cosine with normalise(2D vector + mean of the view vectors), one vector per SKU.
- `max` (MaxCos): best cosine over the cutout and every view.
A SKU whose renders failed keeps its 2D vector: `3d` and `max` fall back to it. Catalogue-side
augmentations (config embed.augment: `mirror`, `crop90`, ...) arrive from the embed stage as
extra views after the rendered ones and are used, and named by `matched`, like them.

Each hit says what gave its score (`matched`): a view's name (e.g. `az090`) or `cutout` for `3d`
and `max`, `cutout` for `2d`, `fused` for `mean`. A search can be restricted to the rows that
match a metadata filter (`where`, dam3d.search.filters) before it ranks them.

Storage (config `index.dtype`, `index.pca`; recorded in the manifest's `vectors`): the vectors
are stored float16 by default (half of float32's bytes; scores are computed in float32, a block
of SKUs at a time), and may be projected onto their first `index.pca` principal axes (fitted on
the catalogue's own 2D and view vectors at build time, `pca_components.npy`; queries are
projected the same way and re-normalised). The axes are those of the vectors about 0, not about
their mean: cosine scores are dot products about 0, and on a real index (README) centred axes
kept far less of the full-dimension ranking at the same dimension. An index written before this
(float32 files, no `vectors` in its manifest) loads and searches as it did.

Files (dam3d.search.update): an index's files are in a data folder that its manifest.json names, its
vectors in a store folder beside it (dam3d.search.store); an update keeps the rows of SKUs whose
embedding is unchanged where they are, appends the new and changed SKUs' rows to the store (or, past
COMPACT_SHARE of unreferenced rows, writes a new one) and switches to its new data folder by replacing
manifest.json. Indexes written before stores or before data folders load as they did.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dam3d import __version__
from dam3d.catalogue import Asset
from dam3d.runtime import layout
from dam3d.runtime.atomic import atomic_path, write_text
from dam3d.search.ann import ANN_DELTA_MAX, ANN_MIN_SKUS, OVERFETCH, TOMBSTONES_FILE, AnnCandidates, build_ann, update_ann
from dam3d.search.colour import DEFAULT_BINS, DESCRIPTOR_VERSION, colour_descriptor, rerank_depth, similarity
from dam3d.search.filters import Filter, parse_filter
from dam3d.search.update import (ANN_COMPACT_SHARE, ROWS_FILE, PreviousRows, current_data_dir, embedding_source, load_previous,
                                 new_data_dir, remove_stale)
from dam3d.search.store import COMPACT_SHARE, STORE_PREFIX, StoreWriter, open_index_vectors, row_shapes
from dam3d.stages.embed import l2_normalise

if TYPE_CHECKING:
    from PIL import Image

FUSIONS = ("2d", "3d", "mean", "max")
# The fusion of an index whose manifest records none, or `auto` without an evaluation on labelled
# photos: `mean` was the best or level with the best on every generated benchmark (README, Evaluation).
DEFAULT_FUSION = "mean"
# `search.fusion: auto` takes the best top-1 on the user's labelled photos; ties go to the earlier
# fusion here, so the views are used only where they beat the catalogue photo alone.
CHOICE_ORDER = ("2d", "mean", "max", "3d")
# What a hit's `matched` names besides a view: the catalogue cutout's vector, the fused `mean` vector.
MATCHED_CUTOUT = "cutout"
MATCHED_FUSED = "fused"
# A view vector this close to its SKU's 2D vector (max abs difference) is the 2D vector a failed
# render left in its place (build_index), so it matches as the cutout, not as that view.
_FALLBACK_ATOL = 1e-6
# How the vectors are stored (config `index.dtype`): float16 halves the bytes (README, Search and fusions).
DTYPES = ("float16", "float32")
DEFAULT_DTYPE = "float16"
# Rows (2D and view vectors together) the PCA is fitted on, drawn at random from a larger catalogue.
PCA_SAMPLE = 50_000
# Bytes of stored vectors `Index.scores` converts to float32 at a time (per block of SKUs).
SCORE_BLOCK_BYTES = 32 * 2**20
# `search.colour_weight` when the config names none (README, Search and fusions: Colour re-ranking).
DEFAULT_COLOUR_WEIGHT = 0.15
COLOUR_FILE = "colour.npy"


def choose_fusion(report: dict[str, dict]) -> str:
    """The fusion with the best top-1 in an evaluation report (ties: CHOICE_ORDER), e.g. '2d'."""
    return max((f for f in CHOICE_ORDER if f in report), key=lambda f: (report[f]["top1"], -CHOICE_ORDER.index(f)))


def manifest_digest(directory: str | Path) -> str:
    """SHA-1 of an index's manifest.json: which build of the index an evaluation was made on."""
    import hashlib

    return hashlib.sha1((Path(directory) / "manifest.json").read_bytes()).hexdigest()


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def as_float32(vectors: np.ndarray) -> np.ndarray:
    """Stored vectors (any shape; float16 or float32, possibly memory-mapped) as float32: the same values, read once.

    float16 goes through torch (a dependency already, for the models), whose vectorised conversion
    took 6 ms where numpy 1.26's `astype` took 37 ms and a table look-up 26 ms (8.4M values, one
    thread, best of 15, this project's 2-core machine); a float32 dot product over them takes ~2 ms.
    """
    if vectors.dtype != np.float16:
        return np.asarray(vectors, dtype=np.float32)
    import warnings

    import torch

    with warnings.catch_warnings():   # a read-only memory map: torch only reads it here
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(vectors)).float().numpy()


def fit_pca(vectors: np.ndarray, dim: int, *, sample: int = PCA_SAMPLE, seed: int = 0) -> tuple[np.ndarray, float]:
    """The first `dim` principal axes of `vectors` (M, D) about 0: (components (dim, D) float32, orthonormal rows;
    explained variance share in [0, 1]).

    Uncentred (the right singular vectors of the vectors themselves, numpy SVD), so projected dot
    products approximate the full ones best; the share is the kept part of the vectors' sum of
    squares. Fitted on at most `sample` rows drawn at random (seeded).
    ValueError if `dim` is not in [1, D) or exceeds M.
    """
    m, d = vectors.shape
    if not 1 <= dim < d or dim > m:
        raise ValueError(f"index.pca must be 0 (off) or in [1, {min(m, d - 1)}] for {m} vectors of {d} dimensions, not {dim}")
    if m > sample:
        vectors = vectors[np.sort(np.random.default_rng(seed).choice(m, sample, replace=False))]
    _, singular, vt = np.linalg.svd(np.asarray(vectors, dtype=np.float64), full_matrices=False)
    energy = singular**2
    return vt[:dim].astype(np.float32), float(energy[:dim].sum() / max(energy.sum(), 1e-30))


def project(vectors: np.ndarray, components: np.ndarray | None) -> np.ndarray:
    """Vectors (..., D) onto the PCA components (k, D), re-normalised: (..., k) float32; no PCA: as they are (float32)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if components is None:
        return vectors
    return l2_normalise(vectors @ components.T).astype(np.float32, copy=False)


def _stored_record(dtype: str, shapes: dict[str, tuple[int, ...]], input_dim: int, pca_record: dict | None,
                   store: dict) -> dict:
    """The manifest's `vectors`: dtype, dim (stored), input_dim (the model's), pca, bytes_per_sku of each kind, store."""
    size = np.dtype(dtype).itemsize
    return {"dtype": dtype, "dim": int(shapes["2d"][0]), "input_dim": int(input_dim), "pca": pca_record,
            "bytes_per_sku": {name: int(np.prod(shape)) * size for name, shape in shapes.items()}, "store": store}


def write_vectors(store: Path, vec2d: np.ndarray, vec3d: np.ndarray, vecmean: np.ndarray, *,
                  dtype: str = DEFAULT_DTYPE, pca: int = 0) -> dict:
    """Write a new vector store (dam3d.search.store) in the folder `store` and return the manifest's `vectors`.

    vec2d (N, D), vec3d (N, V, D), vecmean (N, D): float32, L2-normalised. With `pca` > 0 they are
    projected onto `pca` components fitted on vec2d and the view vectors (see `fit_pca`), then
    re-normalised (pca_components.npy in the store). They are stored as `dtype` (DTYPES). Returns what
    was stored: dtype, dim (stored), input_dim (the model's, what queries come in at), pca (None, or dim,
    explained_variance, fitted_on), bytes_per_sku of each kind and `store` (its folder's name, rows, ...).
    ValueError for an unknown dtype or a bad `pca`.
    """
    if dtype not in DTYPES:
        raise ValueError(f"index.dtype must be one of {DTYPES}, not {dtype!r}")
    n, views, dim = vec3d.shape
    pca_record = None
    store.mkdir(parents=True, exist_ok=True)
    if pca:
        sample = np.concatenate([vec2d, vec3d.reshape(n * views, dim)])
        components, explained = fit_pca(sample, pca)
        vec2d, vec3d, vecmean = (project(v, components) for v in (vec2d, vec3d, vecmean))
        _save_npy(store / "pca_components.npy", components)
        pca_record = {"dim": pca, "explained_variance": round(explained, 6), "fitted_on": int(min(len(sample), PCA_SAMPLE))}
    with StoreWriter(store, dtype) as writer:
        writer.append(vec2d, vec3d, vecmean)
    return _stored_record(dtype, writer.row_shapes, dim, pca_record, writer.record())


def write_colours(out_dir: Path, cutouts: Sequence[str | Path | None], bins: tuple[int, int, int] = DEFAULT_BINS, *,
                  previous: np.ndarray | None = None, previous_rows: np.ndarray | None = None) -> dict:
    """Write colour.npy, (N, B) float32, the colour descriptor (dam3d.search.colour) of each indexed row's cutout
    (RGBA PNG; a missing one gives all zeros: no colour evidence); return the manifest's `colour`.

    previous (M, B) and previous_rows (N,) int64 (-1: new): rows of an update copy the previous index's
    descriptor instead of opening their cutout (a changed cutout changes the embedding, so the row is new).
    """
    from PIL import Image

    size = int(np.prod(bins))
    out = np.zeros((len(cutouts), size), dtype=np.float32)   # a missing cutout: no colour evidence
    copied = np.zeros(len(cutouts), dtype=bool)
    if previous is not None and previous_rows is not None:
        copied = np.asarray(previous_rows) >= 0
        out[copied] = previous[np.asarray(previous_rows)[copied]]
    for i in np.flatnonzero(~copied).tolist():
        path = cutouts[i]
        if path is not None and Path(path).is_file():
            with Image.open(path) as image:
                out[i] = colour_descriptor(image, bins=bins)
    _save_npy(out_dir / COLOUR_FILE, out)
    return {"version": DESCRIPTOR_VERSION, "space": "CIELAB D65", "bins": list(bins), "histogram": "soft, normalised", "similarity": "intersection",
            "dtype": "float32", "missing": int((~out.any(axis=1)).sum())}


def _read_embeddings(paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """The stored-to-be vectors of SKUs from their embedding .npz (each opened once):
    (vec2d (n, D), vec3d (n, V, D) or (n, 1, D) for a 2D-only index, fused (n, D): float32, L2-normalised;
    view_ok (n, V) bool; the view names). Every row depends on its own .npz only, so a row computed
    here equals the same SKU's row of any other build (what lets an update reuse rows)."""
    vec2d, vec3d, view_ok = [], [], []
    views: list[str] = []
    for path in paths:
        with np.load(path) as data:
            vec2d.append(data["vec2d"])
            vec3d.append(data["vec3d"])
            view_ok.append(data["view_ok"])
            views = [str(v) for v in data["views"]]
    v2 = l2_normalise(np.stack(vec2d))
    v3 = np.stack(vec3d).astype(np.float32)
    ok = np.stack(view_ok).astype(bool)
    # Views that failed to render take the 2D vector, so `max` and `3d` degrade to `2d` for that SKU.
    v3 = np.where(ok[..., None], v3, v2[:, None, :])
    counts = np.maximum(ok.sum(axis=1, keepdims=True), 1)
    mean3d = np.where(ok[..., None], v3, 0.0).sum(axis=1) / counts
    mean3d = np.where(ok.any(axis=1, keepdims=True), mean3d, v2)
    fused = l2_normalise(v2 + l2_normalise(mean3d))
    if v3.shape[1] == 0:  # a 2D-only index (render.views: 0): every fusion is the 2D one
        v3 = v2[:, None, :]
    return v2, l2_normalise(v3), fused, ok, views


# Rows read or copied at a time: a full rebuild or an update holds COPY_BLOCK SKUs' float32 vectors, at any N.
COPY_BLOCK = 4096


class _ViewsChanged(Exception):
    """A new embedding has other views than the previous index: none of its rows fits (full rebuild)."""


def _write_rows(out_dir: Path, paths: Sequence[Path], previous_rows: np.ndarray, previous: PreviousRows | None,
                dtype: str) -> tuple[dict, np.ndarray, list[str], np.ndarray]:
    """Store the vectors of N rows (without PCA) as `dtype`, COPY_BLOCK rows at a time; return (the manifest's `vectors`,
    views_ok (N,) int64, the view names, store_rows (N,) int64: each row's row in the store).

    paths (N,): each row's embedding .npz; previous_rows (N,) int64: the previous index's row a row reuses, -1 where
    the row is new or changed (its .npz is opened; only those are). If the previous index has a store of this dtype
    that would hold at most COMPACT_SHARE unreferenced rows after it, the new rows are appended to it: O(change)
    bytes written. Otherwise (no previous store, another dtype, compaction) a new store is written in index order,
    the reused rows copied from the previous vectors. _ViewsChanged if a new .npz has other views than `previous`.
    """
    n = len(paths)
    views_ok = np.zeros(n, dtype=np.int64)
    reused = previous_rows >= 0
    fresh = np.flatnonzero(~reused)
    views = list(previous.views) if previous is not None else []
    if previous is not None:
        views_ok[reused] = previous.views_ok[previous_rows[reused]]
    record = previous.store_record if previous is not None else None
    # (load_previous gives no previous index of another dtype: its rows are kept as they are stored)
    appendable = record is not None and \
        (int(record["rows"]) + len(fresh) - n) <= COMPACT_SHARE * (int(record["rows"]) + len(fresh))

    def read(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        nonlocal views
        new = _read_embeddings([paths[i] for i in rows])
        if previous is not None and new[4] != previous.views:
            raise _ViewsChanged(f"the views changed ({previous.views} -> {new[4]})")
        views = new[4]
        views_ok[rows] = new[3].sum(axis=1)
        return new[:3]

    store_rows = np.full(n, -1, dtype=np.int64)
    if appendable:
        store = out_dir / record["folder"]
        store_rows[reused] = previous.store_rows[previous_rows[reused]]
        with StoreWriter(store, dtype, rows=int(record["rows"]), shapes=row_shapes(record)) as writer:
            for s in range(0, len(fresh), COPY_BLOCK):
                block = fresh[s : s + COPY_BLOCK]
                store_rows[block] = writer.append(*read(block))
    else:
        store = new_data_dir(out_dir, prefix=STORE_PREFIX)
        with StoreWriter(store, dtype) as writer:
            for s in range(0, n, COPY_BLOCK):
                block = np.arange(s, min(s + COPY_BLOCK, n))
                is_new = previous_rows[block] < 0
                new = read(block[is_new]) if is_new.any() else None
                if is_new.all():
                    parts = new
                else:
                    rows = previous_rows[block[~is_new]]
                    olds = (previous.vec2d, previous.vec3d, previous.vecmean)
                    # a run of unchanged rows in the previous order: one slice
                    pick = slice(rows[0], rows[-1] + 1) if (np.diff(rows) == 1).all() else rows
                    parts = [np.asarray(old[pick], dtype=dtype) for old in olds]
                    if new is not None:
                        merged = []
                        for part, fresh_part in zip(parts, new, strict=True):
                            full = np.empty((len(block), *part.shape[1:]), dtype=dtype)
                            full[~is_new], full[is_new] = part, fresh_part
                            merged.append(full)
                        parts = merged
                store_rows[block] = writer.append(*parts)
    shapes = writer.row_shapes
    return _stored_record(dtype, shapes, int(shapes["2d"][0]), None, writer.record()), views_ok, views, store_rows


def build_index(assets: Sequence[Asset], embeddings: Sequence[str | Path], out_dir: Path, manifest: dict, *,
                ann_min_skus: int = ANN_MIN_SKUS, dtype: str = DEFAULT_DTYPE, pca: int = 0,
                incremental: bool = True, cutouts: Sequence[str | Path] | None = None) -> dict:
    """Write the index for the assets whose embedding exists (non-empty); return the manifest.

    With `cutouts` (one RGBA PNG per asset, as `assets`) it also writes the colour descriptors of the
    indexed ones, colour.npy (`write_colours`; the manifest's `colour` records how), which search
    re-ranks with; without, the index has none (`colour`: null) and searches without colour. An
    update copies the descriptors of reused rows from the previous index (if it has the same kind).

    The vectors are stored as `dtype`, projected onto `pca` principal components if `pca` > 0
    (`write_vectors`; the manifest's `vectors` records how).

    Update (dam3d.search.update): each SKU's row records the version of the .npz it was made from
    (`embedding_source`: one stat). If the previous index in `out_dir` has the same dtype and model and
    neither has PCA (and `incremental`), the rows of SKUs whose .npz is unchanged are copied from its
    memory-mapped vectors and only new or changed SKUs' .npz are opened; deleted SKUs are dropped.
    Otherwise every .npz is read (a full rebuild); the manifest's `update` says which, and why.

    With more than `ann_min_skus` SKUs it also writes the HNSW graphs that `Index.search`
    takes its candidates from (dam3d.search.ann), rebuilt over all rows.

    Everything goes into a new data folder, then manifest.json is replaced (atomic rename): a build
    killed or failing at any point leaves the previous index as it was, searchable. RuntimeError if
    no asset has an embedding; ValueError for an unknown dtype or a bad `pca`.
    """
    if dtype not in DTYPES:
        raise ValueError(f"index.dtype must be one of {DTYPES}, not {dtype!r}")
    sources = [embedding_source(p) for p in embeddings]
    if len(sources) != len(assets):
        raise ValueError(f"{len(assets)} assets but {len(sources)} embeddings")
    if cutouts is not None and len(cutouts) != len(assets):
        raise ValueError(f"build_index: {len(cutouts)} cutouts for {len(assets)} assets")
    cutout_of = None if cutouts is None else {a.asset_id: c for a, c in zip(assets, cutouts, strict=True)}
    indexed = [(a, p, s) for a, p, s in zip(assets, embeddings, sources, strict=True) if s is not None]
    skipped = [a.asset_id for a, s in zip(assets, sources, strict=True) if s is None]
    if not indexed:
        raise RuntimeError("index: no asset has an embedding; every asset failed (see results/failures/)")
    previous, reason = load_previous(out_dir, manifest, dtype=dtype, pca=pca) if incremental else (None, "asked for")
    keep = current_data_dir(out_dir)
    folder = new_data_dir(out_dir)
    try:
        manifest = _build_into(folder, indexed, previous, reason, manifest, len(assets), skipped,
                               ann_min_skus=ann_min_skus, dtype=dtype, pca=pca, cutout_of=cutout_of)
        write_text(folder / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")   # the switch
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    remove_stale(out_dir, folder, keep)
    return manifest


def _link(source: Path, target: Path) -> None:
    """`target` as another name of the finished file `source` (a hard link; a copy where links are refused)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _write_ann(folder: Path, previous: PreviousRows | None, previous_rows: np.ndarray, keys: np.ndarray,
               stored: tuple[np.ndarray, ...]) -> dict:
    """Write (or link) the ANN graphs of the N rows of the index in `folder`; return the manifest's `ann`.

    previous_rows (N,) int64: the previous index's row each row reuses (-1: new or changed); keys (N,) int64: the
    rows' graph keys; stored: the rows' (vec2d, vec3d, vecmean) as stored. The graphs hold the keys below
    `covered`; rows with a key at or above it (the delta) are not in them and every ANN search scores them
    exactly; the keys of SKUs gone since (tombstones, tombstones.npy) are still in the graphs and dropped from
    their answers. If the previous index has graphs, an update keeps them (hard links, nothing rewritten) while the
    delta and the tombstones number at most ANN_DELTA_MAX; past that it puts them into the graphs
    (dam3d.search.ann.update_ann: tombstones removed, delta added); once the SKUs removed from the graphs since
    their last full build would exceed ANN_COMPACT_SHARE of N, or without previous graphs, the graphs are built
    over every row. `ann.built` says which (`kept`, `updated`, `full`); `ann.removed` counts the removed SKUs
    still marked in the graphs.
    """
    import usearch

    record = {"library": f"usearch {usearch.__version__}", "graph": "HNSW", "vectors": "float16"}
    previous_ann = previous.ann if previous is not None else None
    if previous_ann is not None and AnnCandidates.available(previous.folder):
        covered = int(previous_ann.get("covered", previous.keys.max() + 1 if len(previous.keys) else 0))
        used = np.zeros(len(previous.keys), dtype=bool)
        used[previous_rows[previous_rows >= 0]] = True
        gone = previous.keys[~used]
        tombstones = np.union1d(previous.tombstones, gone[gone < covered]).astype(np.int64)
        removed = int(previous_ann.get("removed", 0))
        delta = np.flatnonzero(keys >= covered)
        if removed + len(tombstones) <= ANN_COMPACT_SHARE * len(keys):
            if len(delta) + len(tombstones) <= ANN_DELTA_MAX:
                for path in AnnCandidates.files(previous.folder):
                    _link(path, folder / path.name)
                if len(tombstones):
                    _save_npy(folder / TOMBSTONES_FILE, tombstones)
                return {**record, "built": "kept", "removed": removed, "covered": covered, "delta": len(delta),
                        "tombstones": len(tombstones)}
            update_ann(previous.folder, folder, tombstones, keys[delta], *(v[delta] for v in stored))
            return {**record, "built": "updated", "removed": removed + len(tombstones), "covered": int(keys.max()) + 1,
                    "delta": 0, "tombstones": 0}
    build_ann(folder, *stored, keys=keys)
    return {**record, "built": "full", "removed": 0, "covered": int(keys.max()) + 1, "delta": 0, "tombstones": 0}


def _previous_colours(previous: PreviousRows | None) -> np.ndarray | None:
    """The previous index's colour descriptors (M, B), memory-mapped, if they are of this version and bins."""
    if previous is None or not (previous.folder / COLOUR_FILE).is_file():
        return None
    record = json.loads((previous.folder / "manifest.json").read_text()).get("colour") or {}
    if record.get("version") != DESCRIPTOR_VERSION or tuple(record.get("bins", ())) != DEFAULT_BINS:
        return None
    return np.load(previous.folder / COLOUR_FILE, mmap_mode="r")


def _build_into(folder: Path, indexed: list[tuple[Asset, Path, str]], previous: PreviousRows | None, reason: str,
                manifest: dict, total: int, skipped: list[str], *, ann_min_skus: int, dtype: str, pca: int,
                cutout_of: dict[str, Path] | None = None) -> dict:
    """Write the rows, vectors and graphs of `indexed` (asset, .npz, source) into `folder`; return the manifest."""
    paths = [p for _, p, _ in indexed]
    out_dir = folder.parent
    if pca:   # the axes are fitted on every row: all embeddings are read at once (no previous index, see load_previous)
        new = _read_embeddings(paths)
        stored = write_vectors(new_data_dir(out_dir, prefix=STORE_PREFIX), *new[:3], dtype=dtype, pca=pca)
        previous_rows, views_ok, views = np.full(len(indexed), -1, dtype=np.int64), new[3].sum(axis=1), new[4]
        store_rows = np.arange(len(indexed), dtype=np.int64)
    else:
        reusable = [None if previous is None else previous.reusable(a.asset_id, s) for a, _, s in indexed]
        previous_rows = np.array([-1 if r is None else r for r in reusable], dtype=np.int64)
        try:
            stored, views_ok, views, store_rows = _write_rows(out_dir, paths, previous_rows, previous, dtype)
        except _ViewsChanged as changed:   # no row of the previous index fits: read them all
            previous, reason = None, str(changed)
            previous_rows[:] = -1
            stored, views_ok, views, store_rows = _write_rows(out_dir, paths, previous_rows, None, dtype)
    new_rows = np.flatnonzero(previous_rows < 0)
    reused = previous_rows >= 0
    keys = np.arange(len(indexed), dtype=np.int64)   # each row's key in the ANN graphs: kept while its SKU is unchanged
    if previous is not None:
        keys[reused] = previous.keys[previous_rows[reused]]
        keys[new_rows] = previous.next_key + np.arange(len(new_rows))
    rows = [{"asset_id": a.asset_id, "sku": a.sku, "image": str(a.image), "views_ok": int(v), **a.metadata}
            for (a, _, _), v in zip(indexed, views_ok.tolist(), strict=True)]
    pq.write_table(pa.Table.from_pylist(rows), folder / "assets.parquet")
    pq.write_table(pa.table({"asset_id": [a.asset_id for a, _, _ in indexed], "source": [s for _, _, s in indexed],
                             "views_ok": views_ok, "key": keys, "store_row": store_rows}), folder / ROWS_FILE)
    ann = None
    if len(rows) > ann_min_skus:
        vectors = open_index_vectors(out_dir, folder, {"vectors": stored}, store_rows)[:3]
        ann = {**_write_ann(folder, previous, previous_rows, keys, vectors), "min_skus": ann_min_skus}
    colour = None
    if cutout_of is not None:
        before = _previous_colours(previous)
        colour = write_colours(folder, [cutout_of.get(a.asset_id) for a, _, _ in indexed],
                               previous=before, previous_rows=previous_rows if before is not None else None)
    dropped = 0 if previous is None else len(previous.row_of.keys() - {a.asset_id for a, _, _ in indexed})
    same_store = previous is not None and previous.store_record is not None and \
        previous.store_record["folder"] == stored["store"]["folder"]
    update = {"mode": "incremental" if previous is not None else "full", "reason": reason,
              "reused": int((previous_rows >= 0).sum()), "read": int(len(new_rows)), "dropped": dropped,
              "store": "written" if not same_store else "appended" if len(new_rows) else "unchanged"}
    return {
        **manifest,
        "dam3d_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "counts": {"assets": total, "indexed": len(rows), "failed": len(skipped),
                   "with_views": int((views_ok > 0).sum()), "views_per_asset": len(views)},
        "views": views,
        "dim": int(stored["input_dim"]),
        "vectors": stored,
        "colour": colour,
        "failed_assets": skipped,
        "ann": ann,
        "data": folder.name,
        "update": update,
    }


@dataclass
class Index:
    """A built index, its vectors memory-mapped (float16, or float32 for indexes built before `index.dtype`).

    vec2d (N, d), vec3d (N, V, d), vecmean (N, d): L2-normalised as stored, in index order (memory maps of
    the index's vector store, or dam3d.search.store.StoredRows over them where the store holds rows of other
    builds: indexing either gives ndarrays); d is the model's dimension D, or `index.pca` when the index was
    built with PCA, in which case pca_components (d, D) float32 project the queries (`project`).
    """

    directory: Path
    manifest: dict
    assets: list[dict]
    vec2d: np.ndarray  # (N, d)
    vec3d: np.ndarray  # (N, V, d)
    vecmean: np.ndarray  # (N, d)
    pca_components: np.ndarray | None = None  # (d, D)
    colours: np.ndarray | None = None  # (N, B) float32, colour descriptors (dam3d.search.colour); None: built without
    data_dir: Path | None = None   # the folder of its files (manifest `data`); None: `directory` itself (older indexes)
    _ann: AnnCandidates | None = field(default=None, repr=False, compare=False)
    _said_no_colour: bool = field(default=False, repr=False, compare=False)

    @classmethod
    def load(cls, directory: str | Path) -> Index:
        """The index in `directory`, vectors memory-mapped. FileNotFoundError if it has no manifest.json."""
        directory = Path(directory)
        manifest_path = directory / "manifest.json"
        if not manifest_path.exists():
            raise FileNotFoundError(f"no index at {directory} (manifest.json missing): build it with `snakemake --cores 8`")
        manifest = json.loads(manifest_path.read_text())
        data = directory / manifest["data"] if manifest.get("data") else directory   # older indexes: files at the top
        store_rows = None   # an index without data folders (e.g. serve's synthetic one): its store's rows in order
        if (manifest.get("vectors") or {}).get("store") and manifest.get("data"):
            if not (data / ROWS_FILE).is_file():   # which store row is which SKU's is only written there
                raise FileNotFoundError(f"index {directory}: {data / ROWS_FILE} is missing; rebuild the index "
                                        f"(remove {directory} and run snakemake)")
            store_rows = pq.read_table(data / ROWS_FILE, columns=["store_row"]).column("store_row").to_numpy()
        return cls(
            directory,
            manifest,
            pq.read_table(data / "assets.parquet").to_pylist(),
            *open_index_vectors(directory, data, manifest, store_rows),
            np.load(data / COLOUR_FILE, mmap_mode="r") if manifest.get("colour") and (data / COLOUR_FILE).is_file() else None,
            data_dir=data,
        )

    @property
    def files(self) -> Path:
        """The folder holding this index's vectors, assets.parquet and graphs (a data folder, dam3d.search.update)."""
        return self.data_dir or self.directory

    @property
    def colour_bins(self) -> tuple[int, int, int] | None:
        """The (L, a, b) bins of this index's colour descriptors (a query's must match), or None without descriptors."""
        if self.colours is None:
            return None
        return tuple((self.manifest.get("colour") or {}).get("bins", DEFAULT_BINS))

    def colour_weight(self, flag: float | None = None) -> float:
        """The colour re-ranking weight a search uses: `flag`, else the index's config search.colour_weight,
        else DEFAULT_COLOUR_WEIGHT. 0: off. ValueError if negative."""
        weight = flag if flag is not None else self.manifest.get("config", {}).get("search", {}).get("colour_weight")
        weight = DEFAULT_COLOUR_WEIGHT if weight is None else float(weight)
        if weight < 0:
            raise ValueError(f"colour weight must be >= 0, not {weight}")
        return weight

    def query_colour(self, cutout: Image.Image) -> np.ndarray | None:
        """The colour descriptor (B,) float32 of a query's cutout (RGBA, or RGB: every pixel), with this index's bins;
        None for an index without descriptors."""
        bins = self.colour_bins
        return None if bins is None else colour_descriptor(cutout, bins=bins)

    def project(self, queries: np.ndarray) -> np.ndarray:
        """L2-normalised query vectors at the model's dimension, (..., D), as this index stores its vectors: (..., d) float32.

        Without PCA they are returned as they are (float32). ValueError if D is not the dimension
        the index expects.
        """
        queries = np.asarray(queries, dtype=np.float32)
        expected = self.vec2d.shape[1] if self.pca_components is None else self.pca_components.shape[1]
        if queries.shape[-1] != expected:
            raise ValueError(f"query vectors have {queries.shape[-1]} dimensions; this index's model gives {expected}")
        return project(queries, self.pca_components)

    @property
    def results(self) -> Path:
        """The results folder this index belongs to: the index is RESULTS/index/{model}/."""
        return self.directory.resolve().parent.parent

    def fusion(self, flag: str | None = None) -> str:
        """The fusion a search uses (see `fusion_source`). ValueError for an unknown one."""
        return self.fusion_source(flag)[0]

    def fusion_source(self, flag: str | None = None) -> tuple[str, str]:
        """The fusion a search uses and why: `flag` (the command's), else the one this index was built with
        (its manifest's config, search.fusion); `auto` (or none) is the best fusion on the labelled queries
        evaluated on this very build of the index (layout.fusion_choice), else DEFAULT_FUSION."""
        if flag:
            fusion, source = flag, "asked for"
        else:
            fusion = self.manifest.get("config", {}).get("search", {}).get("fusion") or "auto"
            source = "the index's config"
        if fusion == "auto":
            fusion, source = DEFAULT_FUSION, "auto: default, no evaluation on labelled photos for this index"
            choice_path = layout.fusion_choice(self.results, self.directory.name)
            try:
                choice = json.loads(choice_path.read_text())
            except (OSError, ValueError):
                choice = None
            if isinstance(choice, dict) and choice.get("index_manifest_sha1") == manifest_digest(self.directory):
                if choice.get("fusion") in FUSIONS:
                    fusion = choice["fusion"]
                    source = f"auto: best top-1 on {choice.get('queries', '?')} labelled photos ({choice_path})"
                else:
                    source = f"auto: default, {choice_path} names no fusion of {FUSIONS}"
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, not {fusion!r}")
        return fusion, source

    def scores(self, queries: np.ndarray, fusion: str, *, chunk: int = 256, rows: np.ndarray | None = None,
               block: int | None = None) -> np.ndarray:
        """Cosine scores of L2-normalised query vectors against every SKU: (D,) -> (N,), (Q, D) -> (Q, N) float32.

        Queries come at the model's dimension D and are projected as the index's vectors were
        (`project`). The stored vectors are read `block` SKUs at a time (default: SCORE_BLOCK_BYTES
        of them) and converted to float32 there, so memory stays bounded at any N; queries go
        `chunk` at a time. `rows` (int array): score only those SKUs, in that order (N becomes len(rows)).
        ValueError for an unknown fusion or a query of the wrong dimension.
        """
        fusion = self.fusion(fusion)
        queries = self.project(queries)
        if queries.ndim == 1:
            return self._scores(queries[None], fusion, chunk=chunk, rows=rows, block=block)[0]
        return self._scores(queries, fusion, chunk=chunk, rows=rows, block=block)

    def _scores(self, queries: np.ndarray, fusion: str, *, chunk: int, rows: np.ndarray | None,
                block: int | None) -> np.ndarray:
        """`scores` of projected queries (Q, d) float32 for a resolved fusion."""
        count = int(self.vec2d.shape[0]) if rows is None else len(rows)
        n_views, dim = int(self.vec3d.shape[1]), int(self.vec3d.shape[2])
        per_sku = dim * (n_views if fusion in ("3d", "max") else 1) * 4
        block = block or max(1, SCORE_BLOCK_BYTES // per_sku)
        out = np.empty((len(queries), count), dtype=np.float32)
        for b in range(0, count, block):
            pick = slice(b, min(b + block, count)) if rows is None else np.asarray(rows[b : b + block], dtype=np.int64)
            if fusion in ("2d", "max"):
                vec2d = as_float32(self.vec2d[pick])
            if fusion in ("3d", "max"):
                vec3d = as_float32(self.vec3d[pick]).reshape(-1, dim)   # (n V, d)
            if fusion == "mean":
                vecmean = as_float32(self.vecmean[pick])
            n = (pick.stop - pick.start) if isinstance(pick, slice) else len(pick)
            for s in range(0, len(queries), chunk):
                q = queries[s : s + chunk]
                target = out[s : s + chunk, b : b + n]
                if fusion in ("2d", "max"):
                    target[:] = q @ vec2d.T
                if fusion in ("3d", "max"):
                    views = (vec3d @ q.T).reshape(n, n_views, len(q)).max(axis=1).T
                    target[:] = views if fusion == "3d" else np.maximum(target, views)
                if fusion == "mean":
                    target[:] = q @ vecmean.T
        return out

    @property
    def columns(self) -> list[str]:
        """The columns of assets.parquet a filter may name: asset_id, sku, image, views_ok and the catalogue's metadata."""
        return list(self.assets[0]) if self.assets else []

    def select(self, where: str | Filter) -> np.ndarray:
        """(M,) int64 rows, ascending, of the SKUs that match a metadata filter (dam3d.search.filters).

        FilterError (a ValueError) for bad syntax or a column the index does not have.
        """
        if isinstance(where, str):
            where = parse_filter(where, self.columns)
        return np.flatnonzero(where.mask(self.assets)).astype(np.int64)

    def matched(self, query: np.ndarray, fusion: str, rows: np.ndarray) -> list[str]:
        """What gave each of `rows` (int, (R,)) its score for one L2-normalised (D,) query: R names.

        `3d`: the best view's name (the manifest's `views`, e.g. 'az090'); `max`: that, or 'cutout' where
        the 2D vector scores at least as high; `2d`: 'cutout'; `mean`: 'fused'. A view that holds the
        2D vector (its render failed; a 2D-only index) is 'cutout'. Costs R x V dot products.
        """
        fusion = self.fusion(fusion)
        rows = np.asarray(rows, dtype=np.int64)
        if fusion in ("2d", "mean"):
            return [MATCHED_CUTOUT if fusion == "2d" else MATCHED_FUSED] * len(rows)
        query = self.project(np.asarray(query, dtype=np.float32))
        vec2d = np.asarray(self.vec2d[rows], dtype=np.float32)   # (R, D)
        vec3d = np.asarray(self.vec3d[rows], dtype=np.float32)   # (R, V, D)
        view_scores = np.einsum("d,rvd->rv", query, vec3d)
        best = view_scores.argmax(axis=1) if len(rows) else np.zeros(0, dtype=np.int64)
        picked = np.arange(len(rows))
        cutout = np.abs(vec3d[picked, best] - vec2d).max(axis=1, initial=0.0) <= _FALLBACK_ATOL
        if fusion == "max":
            cutout |= vec2d @ query >= view_scores[picked, best]
        names = [str(v) for v in self.manifest.get("views", [])]
        return [MATCHED_CUTOUT if c or b >= len(names) else names[b] for c, b in zip(cutout.tolist(), best.tolist(), strict=True)]

    def ann(self) -> AnnCandidates | None:
        """The ANN candidates of this index (opened once), or None if it was built without graphs (<= ANN_MIN_SKUS)."""
        if self._ann is None and AnnCandidates.available(self.files):
            keys = None   # the graphs' key of each row (an updated index's); older indexes: the row number
            if (self.files / ROWS_FILE).is_file():
                keys = pq.read_table(self.files / ROWS_FILE, columns=["key"]).column("key").to_numpy()
            covered = (self.manifest.get("ann") or {}).get("covered")
            delta = None if keys is None or covered is None else np.flatnonzero(keys >= covered)
            self._ann = AnnCandidates(self.files, views=int(self.vec3d.shape[1]), size=len(self.assets), keys=keys,
                                      delta=delta)
        return self._ann

    def search(self, query: np.ndarray, *, k: int = 5, fusion: str | None = None, exact: bool = False,
               where: str | Filter | np.ndarray | None = None, colour: np.ndarray | None = None,
               colour_weight: float | None = None) -> list[dict]:
        """The top `k` SKUs for one L2-normalised (D,) query vector, best first (ties: index order).

        Each hit: {"rank": int, "sku": str, "asset_id": str, "score": float, "image": str, "matched": str}
        (`matched`: see `Index.matched`). Fewer than `k` hits when fewer SKUs are searched.

        `where` restricts the search, before ranking, to the SKUs of a metadata filter (its text or a
        parsed Filter: FilterError for a bad one), of an (N,) bool mask, or of an int array of rows;
        those are scored exactly, ANN graphs or not, at a cost linear in the number of matching rows.
        No match: an empty list. ValueError for k < 1 or an unknown fusion.

        Unfiltered, an index built with ANN graphs (more than ANN_MIN_SKUS SKUs) scores only the
        candidates its graphs give, exactly (dam3d.search.ann); `exact=True` scores every SKU.

        Colour re-ranking: with the query cutout's descriptor `colour` ((B,) float32, `query_colour`)
        and a weight > 0 (`colour_weight`), the first max(50, 4k) SKUs by score are re-ordered by
        score + weight * histogram intersection (dam3d.search.colour); each hit then also has
        "colour" (the intersection, in [0, 1]) and "score" stays the fusion's score. An index built
        without descriptors searches without, and says so once on stderr.
        """
        fusion = self.fusion(fusion)
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        model_query = np.asarray(query, dtype=np.float32)
        rows = None if where is None else self._rows(where)
        if rows is not None and len(rows) == 0:
            return []
        k = min(k, len(self.assets))
        query = self.project(model_query)   # the graphs and the stored vectors are in the index's space
        weight = self._use_colour(colour, colour_weight)
        # Colour re-ranking asks the graphs for as many candidates as it re-orders.
        wanted = k if weight == 0 else rerank_depth(k, len(self.assets))
        # The graphs help only when they are asked for fewer candidates than there are SKUs.
        ann = None if rows is not None or exact or OVERFETCH * wanted >= len(self.assets) else self.ann()
        if ann is not None:
            rows = ann.rows(query, fusion, wanted)   # sorted: positions keep the index order
        scores = self._scores(query[None], fusion, chunk=1, rows=rows, block=None)[0]
        depth = min(k, len(scores)) if weight == 0 else rerank_depth(k, len(scores))
        k = min(k, len(scores))
        top = np.argpartition(-scores, depth - 1)[:depth]
        top = top[np.lexsort((top, -scores[top]))]
        sims = None
        if weight:
            rows_top = top if rows is None else rows[top]
            sims = similarity(colour, self.colours[rows_top])
            order = np.lexsort((np.arange(len(top)), -(scores[top] + weight * sims)))[:k]
            top, sims = top[order], sims[order]
        top = top[:k]
        found = top if rows is None else rows[top]
        matched = self.matched(model_query, fusion, found)
        hits = [{"rank": r + 1, "sku": self.assets[i]["sku"], "asset_id": self.assets[i]["asset_id"],
                 "score": float(scores[t]), "image": self.assets[i]["image"], "matched": m}
                for r, (i, t, m) in enumerate(zip(found.tolist(), top.tolist(), matched, strict=True))]
        if sims is not None:
            for hit, sim in zip(hits, sims.tolist(), strict=False):
                hit["colour"] = float(sim)
        return hits

    def _use_colour(self, colour: np.ndarray | None, flag: float | None) -> float:
        """The weight a search re-ranks with: 0 without a query descriptor or index descriptors (said once)."""
        weight = self.colour_weight(flag)
        if weight == 0 or colour is None:
            return 0.0
        if self.colours is None:
            if not self._said_no_colour:
                import sys

                print(f"dam3d: the index {self.directory} has no colour descriptors (built before them): "
                      "searching without colour re-ranking", file=sys.stderr)
                self._said_no_colour = True
            return 0.0
        colour = np.asarray(colour)
        if colour.shape != self.colours.shape[1:]:
            raise ValueError(f"a query colour descriptor of shape {colour.shape}; this index's are {self.colours.shape[1:]}")
        return weight

    def _rows(self, where: str | Filter | np.ndarray) -> np.ndarray:
        """Ascending int64 rows of a filter, an (N,) bool mask or an array of rows (ValueError if out of range)."""
        if isinstance(where, str | Filter):
            return self.select(where)
        where = np.asarray(where)
        if where.dtype == bool:
            if where.shape != (len(self.assets),):
                raise ValueError(f"a row mask must have shape ({len(self.assets)},), not {where.shape}")
            return np.flatnonzero(where).astype(np.int64)
        rows = np.unique(where.astype(np.int64))
        if len(rows) and (rows[0] < 0 or rows[-1] >= len(self.assets)):
            raise ValueError(f"rows must be in 0..{len(self.assets) - 1}")
        return rows
