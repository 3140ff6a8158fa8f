"""Approximate nearest-neighbour candidates for large indexes (usearch HNSW, float16 vectors).

Exact search (dam3d.search.index.Index.scores) reads every SKU's vectors for every query:
fine for thousands of SKUs, not for millions. For an index with more than `ANN_MIN_SKUS`
SKUs, `Index.search` asks the HNSW graphs written here for candidates and scores only those
exactly, so a search returns the exact fusion scores of the SKUs it returns:

- `2d` and `mean`: one vector per SKU (`ann_2d.usearch`, `ann_mean.usearch`);
- `3d` and `max`: the view vectors (`ann_views.usearch`, key = row * views + view; a view
  that failed to render holds the SKU's 2D vector, as in exact search), `max` also the
  2D graph; the nearest `k * views * OVERFETCH` views are reduced to their SKUs.

usearch (Apache-2.0, unum-cloud/usearch) was chosen for a library that stores float16
vectors, memory-maps a saved graph (`view=True`) and supports numpy 1.x.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# An index with at most this many SKUs is searched exactly (ANN is for large catalogues).
ANN_MIN_SKUS = 20_000
# Candidates fetched per wanted SKU (views: per wanted SKU and view), at least MIN_CANDIDATES:
# the exact re-scoring then puts them in order; neighbours of one SKU crowd the view graph's results.
OVERFETCH = 4
MIN_CANDIDATES = 64
# HNSW links per node and build breadth: usearch's defaults (32 and 256 built 10x slower on one thread).
CONNECTIVITY = 16
EXPANSION_ADD = 128
# HNSW search breadth (usearch's `expansion_search`, default 64): wider finds more of the true neighbours.
EXPANSION_SEARCH = 256
FILES = {"2d": "ann_2d.usearch", "mean": "ann_mean.usearch", "views": "ann_views.usearch"}
# An update leaves the graphs as they are (linked into the new data folder, not rewritten) while the SKUs
# added or changed since they were last written (the delta: scored exactly by every search) and the SKUs
# gone since (tombstones: still in the graphs, dropped from their answers) number at most this many;
# past it they are put into the graphs. Scoring 1,024 SKUs' 9 vectors of 1,280 dimensions exactly
# costs ~12 ms a query (`max`, 2 cores: the 20,000-SKU exact figure in the README, scaled).
ANN_DELTA_MAX = 1024
TOMBSTONES_FILE = "tombstones.npy"


def _graph(ndim: int):  # noqa: ANN202 - usearch.index.Index, imported lazily (only for large indexes)
    from usearch.index import Index as Graph

    return Graph(ndim=ndim, metric="cos", dtype="f16", connectivity=CONNECTIVITY, expansion_add=EXPANSION_ADD)


# Vectors handed to a graph at a time (converted to float32 a block at a time: a memory-mapped float16 index stays on disk).
ADD_BLOCK = 65_536


def build_ann(out_dir: Path, vec2d: np.ndarray, vec3d: np.ndarray, vecmean: np.ndarray,
              keys: np.ndarray | None = None) -> list[Path]:
    """Write the HNSW graphs of an index: vec2d (N, D), vec3d (N, V, D), vecmean (N, D), L2-normalised, float16 or float32
    (may be memory-mapped); keys (N,) int64: each row's key in the graphs (default: the row number; views:
    key * V + view), see AnnCandidates.

    Returns the files written (atomically, each under its final name only when complete).
    """
    from dam3d.runtime.atomic import atomic_path

    n, views, dim = vec3d.shape
    keys = np.arange(n, dtype=np.uint64) if keys is None else np.asarray(keys, dtype=np.uint64)
    view_keys = (keys[:, None] * np.uint64(views) + np.arange(views, dtype=np.uint64)).reshape(-1)
    written = []
    for name, vectors, graph_keys, per_sku in (("2d", vec2d, keys, 1), ("mean", vecmean, keys, 1),
                                               ("views", vec3d, view_keys, views)):
        graph = _graph(dim)
        # One thread: the same vectors give the same graph. Built on several, the insertion order
        # varies and a few nodes of a clustered catalogue could end up unreachable (seen in tests).
        step = max(1, ADD_BLOCK // per_sku)
        for s in range(0, n, step):   # in order, one thread: the same graph as one call
            block = np.ascontiguousarray(vectors[s : s + step], dtype=np.float32).reshape(-1, dim)
            graph.add(graph_keys[s * per_sku : s * per_sku + len(block)], block, threads=1)
        path = out_dir / FILES[name]
        with atomic_path(path) as tmp:
            graph.save(str(tmp))
        written.append(path)
    return written


def update_ann(previous_dir: Path, out_dir: Path, remove: np.ndarray, add: np.ndarray,
               vec2d: np.ndarray, vec3d: np.ndarray, vecmean: np.ndarray) -> list[Path]:
    """Write into `out_dir` the graphs of `previous_dir` with the SKUs of keys `remove` (R,) taken out and those of
    keys `add` (M,) put in: vec2d (M, D), vec3d (M, V, D), vecmean (M, D), L2-normalised, float16 or float32.

    usearch removes in place (the node is marked deleted, its links stay until a full rebuild) and adds
    as a build does, one thread: the cost grows with R and M, plus loading and saving the graphs
    (their bytes). The previous graphs are not modified. Returns the files written.
    """
    from usearch.index import Index as Graph

    from dam3d.runtime.atomic import atomic_path

    m, views, dim = vec3d.shape
    remove, add = np.asarray(remove, dtype=np.uint64), np.asarray(add, dtype=np.uint64)
    def per_view(k: np.ndarray) -> np.ndarray:
        return (k[:, None] * np.uint64(views) + np.arange(views, dtype=np.uint64)).reshape(-1)

    written = []
    for name, vectors, gone, keys in (("2d", vec2d, remove, add), ("mean", vecmean, remove, add),
                                      ("views", vec3d.reshape(m * views, dim), per_view(remove), per_view(add))):
        graph = Graph.restore(str(previous_dir / FILES[name]))
        if len(gone):
            graph.remove(gone)
        for s in range(0, len(vectors), ADD_BLOCK):
            graph.add(keys[s : s + ADD_BLOCK], np.ascontiguousarray(vectors[s : s + ADD_BLOCK], dtype=np.float32), threads=1)
        path = out_dir / FILES[name]
        with atomic_path(path) as tmp:
            graph.save(str(tmp))
        written.append(path)
    return written


class AnnCandidates:
    """Candidate rows of an index for a query, from its saved graphs (memory-mapped, loaded once)."""

    def __init__(self, directory: Path, views: int, size: int, keys: np.ndarray | None = None,
                 delta: np.ndarray | None = None) -> None:
        """keys (size,) int64: each row's key in the graphs (an updated index's; build_ann); None: the row numbers.
        delta (int64): the rows not in the graphs (added since they were written), candidates of every search."""
        self.directory = Path(directory)
        self.delta = np.zeros(0, dtype=np.int64) if delta is None else np.asarray(delta, dtype=np.int64)
        self.views = views
        self.size = size   # SKUs in the index
        self._graphs: dict[str, object] = {}
        self._order = None if keys is None else np.argsort(keys, kind="stable")
        self._sorted = None if keys is None else np.asarray(keys, dtype=np.int64)[self._order]

    @staticmethod
    def files(directory: Path) -> list[Path]:
        return [Path(directory) / f for f in FILES.values()]

    @staticmethod
    def available(directory: Path) -> bool:
        """True if the index folder holds its ANN graphs (built for more than ANN_MIN_SKUS SKUs)."""
        return all(p.is_file() for p in AnnCandidates.files(directory))

    def _get(self, name: str):  # noqa: ANN202
        if name not in self._graphs:
            from usearch.index import Index as Graph

            graph = Graph.restore(str(self.directory / FILES[name]), view=True)
            graph.expansion_search = EXPANSION_SEARCH
            self._graphs[name] = graph
        return self._graphs[name]

    def rows(self, query: np.ndarray, fusion: str, k: int) -> np.ndarray:
        """Row numbers (int64, unique) of the SKUs that may be in the top `k` for `fusion`."""
        query = np.ascontiguousarray(query, dtype=np.float32)
        found: list[np.ndarray] = []
        if fusion in ("2d", "mean", "max"):
            graph = self._get("2d" if fusion != "mean" else "mean")
            count = max(OVERFETCH * k, MIN_CANDIDATES)
            found.append(np.asarray(graph.search(query, count).keys, dtype=np.int64))
        if fusion in ("3d", "max"):
            graph = self._get("views")
            count = max(OVERFETCH * k * self.views, MIN_CANDIDATES)
            graph.expansion_search = max(EXPANSION_SEARCH, 2 * count)   # a long answer needs a wider search
            keys = np.asarray(graph.search(query, count).keys, dtype=np.int64)
            found.append(keys // self.views)
        keys = np.concatenate(found)
        if self._sorted is not None:   # keys -> rows
            pos = np.clip(np.searchsorted(self._sorted, keys), 0, max(len(self._sorted) - 1, 0))
            hit = (keys >= 0) & (self._sorted[pos] == keys) if len(self._sorted) else np.zeros(len(keys), bool)
            keys = self._order[pos[hit]]
        rows = np.unique(np.concatenate([keys, self.delta]))
        return rows[(rows >= 0) & (rows < self.size)]   # a graph asked for more than it holds pads its answer
