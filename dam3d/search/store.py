"""An index's vector store: append-only files of stored vectors, shared by the index's data folders, so that
an update writes the rows of the SKUs that changed, not the catalogue's.

Layout: RESULTS/index/{model}/store-NNNNNN/ holds vectors_2d.bin (P, d), vectors_3d.bin (P, V, d) and
vectors_mean.bin (P, d): C order, the stored dtype (float16 or float32), no header (so rows can be
appended); P, V, d and the dtype are in the manifest's `vectors.store` (`folder`, `rows`, `views`, `dim`,
`dtype`); pca_components.npy beside them when the vectors are projected (a store with PCA is never
appended to: its axes are fitted on the whole catalogue). Row p of the files ("store row") is one
embedding of one SKU; the index's rows.parquet gives each indexed SKU its store row (`store_row`).

An update appends the rows of new and changed SKUs (dam3d.search.index.build_index): the rows of changed
and deleted SKUs stay in the files, no longer referenced (tombstones), until they exceed COMPACT_SHARE of
the store and the next update writes a new store with the live rows only (compaction). A reader maps the
first P rows its manifest names; bytes past P (rows appended by a later update, or left by a killed one)
are never read, and an append first truncates the files to the current manifest's P, so what a killed
update left is dropped. The previous manifest's P is never larger than the current one's, so a search
process still using it reads unchanged bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

STORE_PREFIX = "store-"
NAMES = ("2d", "3d", "mean")
# Unreferenced rows (changed or deleted SKUs) a store may hold before an update compacts it, as a share
# of its rows: they cost disk, and the exact scoring of whole blocks reads past them.
COMPACT_SHARE = 0.2


def vector_file(store: Path, name: str) -> Path:
    """The file of one kind of vector (`2d`, `3d`, `mean`) in a store folder."""
    return store / f"vectors_{name}.bin"


def row_shapes(record: dict) -> dict[str, tuple[int, ...]]:
    """The shape of one row of each file of a store record: 2d and mean (d,), 3d (V, d)."""
    d, v = int(record["dim"]), int(record["views"])
    return {"2d": (d,), "3d": (v, d), "mean": (d,)}


def open_store(store: Path, record: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first `record["rows"]` rows of a store's files, memory-mapped read-only:
    (vec2d (P, d), vec3d (P, V, d), vecmean (P, d)) of `record["dtype"]`. FileNotFoundError if a file is missing,
    ValueError if one is shorter than the record says (a store damaged by hand)."""
    rows, dtype = int(record["rows"]), np.dtype(record["dtype"])
    out = []
    for name, shape in row_shapes(record).items():
        path = vector_file(store, name)
        need = rows * int(np.prod(shape)) * dtype.itemsize
        if path.stat().st_size < need:
            raise ValueError(f"index vector store {path} holds {path.stat().st_size:,} bytes; its manifest names {rows:,} rows "
                             f"({need:,} bytes): rebuild the index (snakemake --forcerun index)")
        out.append(np.memmap(path, dtype=dtype, mode="r", shape=(rows, *shape)) if rows else np.zeros((0, *shape), dtype))
    return out[0], out[1], out[2]


class StoreWriter:
    """Appends rows to a store's files: a new store (`rows=0`), or an existing one after its first `rows` rows
    (the files are truncated there first: what a killed append left past them is dropped).

    Use as a context manager; `append` returns the store rows written; on leaving the block the files are
    flushed and fsync'ed, and `record` is the manifest's `vectors.store` of the store as written.
    """

    def __init__(self, store: Path, dtype: str, *, rows: int = 0, shapes: dict[str, tuple[int, ...]] | None = None) -> None:
        """`shapes` (an existing store's `row_shapes`): the shapes its rows have, checked before anything is written."""
        self.store, self.dtype, self.rows = Path(store), np.dtype(dtype), rows
        self.expected = shapes
        self.shapes: dict[str, tuple[int, ...]] | None = None
        self._files: dict[str, object] = {}

    def __enter__(self) -> StoreWriter:
        self.store.mkdir(parents=True, exist_ok=True)
        for name in NAMES:
            path = vector_file(self.store, name)
            f = open(path, "r+b" if path.exists() else "w+b")  # noqa: SIM115 - closed in __exit__
            self._files[name] = f
        return self

    def append(self, vec2d: np.ndarray, vec3d: np.ndarray, vecmean: np.ndarray) -> np.ndarray:
        """Write n rows (vec2d (n, d), vec3d (n, V, d), vecmean (n, d), converted to the store's dtype) after the
        store's rows; return their store rows (n,) int64. ValueError, with nothing written, if their shapes differ
        from the store's (`shapes` given to the writer, or those of the rows appended before)."""
        n = len(vec2d)
        shapes = {"2d": tuple(vec2d.shape[1:]), "3d": tuple(vec3d.shape[1:]), "mean": tuple(vecmean.shape[1:])}
        expected = self.shapes or self.expected
        if expected is not None and shapes != {k: tuple(v) for k, v in expected.items()}:
            # before any truncation: the store is shared with the index being searched
            raise ValueError(f"rows of shapes {shapes} do not fit the vector store {self.store}, whose rows are {expected} "
                             "(embeddings of another dimension or number of views than the index's)")
        if self.shapes is None:
            self.shapes = shapes
            for name, f in self._files.items():   # from here on the files hold exactly `rows` rows, then appends
                f.truncate(self.rows * int(np.prod(shapes[name])) * self.dtype.itemsize)
                f.seek(0, os.SEEK_END)
        for name, vectors in zip(NAMES, (vec2d, vec3d, vecmean), strict=True):
            self._files[name].write(np.ascontiguousarray(vectors, dtype=self.dtype).tobytes())
        first = self.rows
        self.rows += n
        return np.arange(first, self.rows, dtype=np.int64)

    def __exit__(self, *exc: object) -> None:
        for f in self._files.values():
            if exc[0] is None:
                f.flush()
                os.fsync(f.fileno())
            f.close()

    @property
    def row_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of one row of each file: those appended, else those the writer was given (`shapes`).
        ValueError if neither (a new store nothing was written to)."""
        shapes = self.shapes or self.expected
        if shapes is None:
            raise ValueError(f"nothing was written to the store {self.store}")
        return shapes

    def record(self) -> dict:
        """The manifest's `vectors.store`: folder (name), rows, views, dim, dtype."""
        shapes = self.row_shapes
        return {"folder": self.store.name, "rows": self.rows, "views": int(shapes["3d"][0]), "dim": int(shapes["2d"][0]),
                "dtype": self.dtype.name}


class StoredRows:
    """The rows of a memory-mapped store array in index order: row i is the store's row `store_rows[i]`.

    Indexing (an int, a slice, an int array or a bool mask, then any further axes) returns an ndarray and
    reads only the rows asked for; a run of consecutive store rows is read as one slice. `np.asarray`
    gives the whole (N, ...) array. Used where an index's store holds tombstones or rows out of index order.
    """

    def __init__(self, array: np.ndarray, store_rows: np.ndarray) -> None:
        self.array, self.store_rows = array, np.asarray(store_rows, dtype=np.int64)
        self.shape = (len(self.store_rows), *array.shape[1:])
        self.dtype, self.ndim = array.dtype, array.ndim

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: object) -> np.ndarray:
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if key is None or key is Ellipsis or np.ndim(key) > 1 or \
                any(r is None or r is Ellipsis or np.ndim(r) > 0 for r in rest):
            raise IndexError("StoredRows takes an int, a slice, a 1-D int or bool array of rows, then ints or slices")
        picked = self.store_rows[key]
        if np.ndim(picked) == 0:
            out = self.array[int(picked)]
        elif len(picked) and picked[-1] - picked[0] == len(picked) - 1 and (np.diff(picked) == 1).all():
            out = np.asarray(self.array[picked[0] : picked[-1] + 1])
        else:
            out = self.array[picked]
        return out[(slice(None), *rest)] if rest and np.ndim(picked) else out[rest] if rest else out

    def __array__(self, dtype: object = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def rows_of(array: np.ndarray, store_rows: np.ndarray | None) -> np.ndarray | StoredRows:
    """`array` itself where the index's rows are its first rows in order (store_rows None or 0..N-1), else a StoredRows."""
    if store_rows is None:
        return array
    store_rows = np.asarray(store_rows, dtype=np.int64)
    if len(store_rows) <= len(array) and (store_rows == np.arange(len(store_rows))).all():
        return array[: len(store_rows)]
    return StoredRows(array, store_rows)


def open_index_vectors(index_dir: Path, data_dir: Path, manifest: dict, store_rows: np.ndarray | None
                       ) -> tuple[np.ndarray | StoredRows, np.ndarray | StoredRows, np.ndarray | StoredRows, np.ndarray | None]:
    """An index's vectors in index order, memory-mapped: (vec2d (N, d), vec3d (N, V, d), vecmean (N, d), pca components
    (d, D) float32 or None). From its store (`manifest["vectors"]["store"]`, folder under `index_dir`; row i is
    store row `store_rows[i]`), or, for an index written before stores, from the .npy files in `data_dir`."""
    vectors = manifest.get("vectors") or {}
    record = vectors.get("store")
    with_pca = bool(vectors.get("pca"))
    if record is None:   # written before stores: vectors_*.npy and pca_components.npy in the data folder
        arrays = [np.load(data_dir / f"vectors_{n}.npy", mmap_mode="r") for n in NAMES]
        components = np.load(data_dir / "pca_components.npy") if with_pca else None
    else:
        store = index_dir / record["folder"]
        arrays = list(open_store(store, record))
        components = np.load(store / "pca_components.npy") if with_pca else None
    vec2d, vec3d, vecmean = (rows_of(a, store_rows) for a in arrays)
    return vec2d, vec3d, vecmean, components
