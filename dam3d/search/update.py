"""Incremental index updates: which rows of the previous index a rebuild can reuse, and the
versioned data folders that keep the previous index searchable until the new one is complete.

Layout (dam3d.search.index.build_index): RESULTS/index/{model}/manifest.json names the data
folder it was built into (`"data": "data-000007"`); that folder holds assets.parquet, colour.npy,
the ANN graphs (ann_*.usearch, tombstones.npy), rows.parquet (per row: asset_id, the embedding's
`source`, views_ok, its graph `key` and its `store_row`) and a copy of the manifest, written last
inside it. The vectors are in a store folder beside it (store-NNNNNN, dam3d.search.store) that the
manifest's `vectors.store` names, shared by the data folders of successive updates. An update
writes a new data folder (appending its new rows to the store, or writing a new store) and
switches to it by replacing manifest.json (atomic rename); the folder before it is kept one more
update (for readers that loaded the old manifest), older and unfinished ones, and stores neither
of those two uses, are removed after the switch. (Indexes written before stores hold
vectors_{2d,3d,mean}.npy and pca_components.npy in the data folder: they load, and the next
update copies their rows into a store.)

An embedding's version is its .npz file's identity as `os.stat` gives it (size, mtime_ns,
inode): the embed stage writes each .npz to a temporary name and renames it into place, so a
recomputed embedding gets a new inode and mtime even when its bytes are equal, and an unchanged
one keeps all three. One stat per SKU, no file opened.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from dam3d.search.ann import TOMBSTONES_FILE
from dam3d.search.store import STORE_PREFIX, open_index_vectors

DATA_PREFIX = "data-"
ROWS_FILE = "rows.parquet"
# An updated index's graphs are rebuilt from scratch (compacted) once the SKUs removed from them since
# their last full build (deleted or changed) exceed this share of the index: removed nodes stay in a
# usearch graph, marked deleted, and still cost memory and search time.
ANN_COMPACT_SHARE = 0.2


def embedding_source(path: str | os.PathLike[str]) -> str | None:
    """The version of one asset's embedding .npz, 'size:mtime_ns:inode'; None if it has no result
    (missing, or the empty placeholder of a failed asset). One stat, the file is not opened."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if st.st_size == 0:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def data_dirs(out_dir: Path, prefix: str = DATA_PREFIX) -> list[tuple[int, Path]]:
    """(generation, folder) of every data folder (or, with prefix STORE_PREFIX, store) under an index folder,
    finished or not, oldest first."""
    if not out_dir.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)$")
    found = [(int(m.group(1)), p) for p in out_dir.iterdir() if p.is_dir() and (m := pattern.match(p.name))]
    return sorted(found)


def new_data_dir(out_dir: Path, prefix: str = DATA_PREFIX) -> Path:
    """A fresh data folder (or store) named after the highest generation seen plus one (never a killed update's name)."""
    generations = [g for g, _ in data_dirs(out_dir, prefix)]
    path = out_dir / f"{prefix}{(max(generations) + 1) if generations else 1:06d}"
    path.mkdir(parents=True)
    return path


def current_data_dir(out_dir: Path) -> Path | None:
    """The finished data folder of the index in `out_dir`: the one its manifest.json names, else (the
    manifest was removed: by hand, or by Snakemake before it reran the rule when the manifest was the rule's
    output, as it was before layout.index_stamp) the newest folder holding its own
    manifest.json; None if there is none (no index yet, or one written before data folders)."""
    try:
        name = json.loads((out_dir / "manifest.json").read_text()).get("data")
    except (OSError, ValueError):
        name = None
    if name and (out_dir / name / "manifest.json").is_file():
        return out_dir / name
    finished = [p for _, p in data_dirs(out_dir) if (p / "manifest.json").is_file()]
    return finished[-1] if finished else None


def _store_of(folder: Path | None) -> str | None:
    """The store folder's name that the finished data folder `folder` uses (None: none, or written before stores)."""
    try:
        return ((json.loads((folder / "manifest.json").read_text()).get("vectors") or {}).get("store") or {}).get("folder")
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def remove_stale(out_dir: Path, current: Path, keep: Path | None) -> None:
    """After a switch to `current`: remove every other data folder but `keep` (the previous one), every store
    neither uses, and the files of an index written before data folders (at the top of `out_dir`)."""
    for _, path in data_dirs(out_dir):
        if path not in (current, keep):
            shutil.rmtree(path, ignore_errors=True)
    used = {_store_of(current), _store_of(keep)}
    for _, path in data_dirs(out_dir, STORE_PREFIX):
        if path.name not in used:
            shutil.rmtree(path, ignore_errors=True)
    for name in ("assets.parquet", "vectors_2d.npy", "vectors_3d.npy", "vectors_mean.npy", "pca_components.npy",
                 "ann_2d.usearch", "ann_mean.usearch", "ann_views.usearch"):
        (out_dir / name).unlink(missing_ok=True)


@dataclass
class PreviousRows:
    """The rows of a previous index that a rebuild may copy instead of reading their .npz.

    row_of: asset_id -> (row, source) in the previous index; vec2d (N, D), vec3d (N, V, D), vecmean (N, D):
    its stored vectors in its row order, memory-mapped; views_ok (N,) int; views: the view names; folder: its
    data folder; keys (N,) int64: each row's key in its ANN graphs; ann: its manifest's `ann` (None: no
    graphs); store_record: its manifest's `vectors.store` (None: written before stores) and store_rows (N,)
    int64 each row's store row; tombstones: graph keys of SKUs gone but still in its graphs; next_key: the
    first graph key no row or graph has used.
    """

    folder: Path
    row_of: dict[str, tuple[int, str]]
    views_ok: np.ndarray
    views: list[str]
    vec2d: np.ndarray
    vec3d: np.ndarray
    vecmean: np.ndarray
    keys: np.ndarray
    ann: dict | None
    store_record: dict | None
    store_rows: np.ndarray
    tombstones: np.ndarray
    next_key: int

    def reusable(self, asset_id: str, source: str) -> int | None:
        """The previous row of `asset_id` if its embedding is the one that row was made from, else None."""
        found = self.row_of.get(asset_id)
        return found[0] if found is not None and found[1] == source else None


def load_previous(out_dir: Path, manifest: dict, *, dtype: str, pca: int) -> tuple[PreviousRows | None, str]:
    """The previous index in `out_dir` if its rows can be reused by a build with these settings, and why (or why not).

    Reusable when it was written with data folders and per-row sources, stores `dtype`, both are without PCA
    (PCA axes are fitted on the whole catalogue: every row changes) and it was made by the same model
    (`manifest["model"]`, the embed spec). Otherwise (None, the reason for a full rebuild).
    """
    folder = current_data_dir(out_dir)
    if folder is None:
        return None, "no previous index with per-row sources"
    previous = json.loads((folder / "manifest.json").read_text())
    stored = previous.get("vectors") or {}
    if pca or stored.get("pca"):
        return None, "PCA is on (its axes are fitted on the whole catalogue)"
    if stored.get("dtype") != dtype:
        return None, f"index.dtype changed ({stored.get('dtype')} -> {dtype})"
    if previous.get("model") != manifest.get("model"):
        return None, "the embedding model changed"
    if not (folder / ROWS_FILE).is_file():
        return None, "the previous index records no per-row sources"
    table = pq.read_table(folder / ROWS_FILE).to_pydict()
    row_of = {a: (i, s) for i, (a, s) in enumerate(zip(table["asset_id"], table["source"], strict=True))}
    n = len(row_of)
    store_rows = np.asarray(table["store_row"], dtype=np.int64) if "store_row" in table else np.arange(n, dtype=np.int64)
    try:
        vectors = open_index_vectors(out_dir, folder, previous, store_rows if "store_row" in table else None)[:3]
    except (OSError, ValueError) as damaged:   # removed or cut short by hand: nothing to reuse
        return None, f"the previous index's vectors cannot be read ({damaged})"
    keys = np.asarray(table["key"], dtype=np.int64) if "key" in table else np.arange(n, dtype=np.int64)
    ann = previous.get("ann")
    tombstones = np.load(folder / TOMBSTONES_FILE) if (folder / TOMBSTONES_FILE).is_file() else np.zeros(0, np.int64)
    next_key = max(int(keys.max()) + 1 if n else 0, int((ann or {}).get("covered", 0)))
    return PreviousRows(folder, row_of, np.asarray(table["views_ok"], dtype=np.int64),
                        [str(v) for v in previous.get("views", [])], *vectors, keys, ann, stored.get("store"),
                        store_rows, tombstones, next_key), f"previous index {folder.name}"


def index_files(out_dir: str | os.PathLike[str]) -> Path:
    """The folder holding the files (assets.parquet, vectors_*.npy, graphs) of the index in `out_dir`: the data
    folder its manifest.json names, or `out_dir` itself for an index written before data folders.
    FileNotFoundError if there is no manifest.json."""
    out_dir = Path(out_dir)
    name = json.loads((out_dir / "manifest.json").read_text()).get("data")
    return out_dir / name if name else out_dir
