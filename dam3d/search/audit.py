"""The catalogue's look-alikes (`dam3d audit`): for each SKU, the other SKUs it is similar to, per fusion.

SKU-to-SKU similarity, a cosine in [-1, 1] (float32) from the index's L2-normalised vectors:

- `2d`: cosine of the two SKUs' cutout vectors (`Index.vec2d`). D multiply-adds per pair.
- `mean`: cosine of the two fused vectors (`Index.vecmean`). D per pair.
- `3d`: the mean, over the V views, of the cosine between the two SKUs' views at the same azimuth
  ("alike from every side"; a dot product of the V concatenated views, divided by V). V x D per pair.
- `max`: the larger of `2d` and `3d` (alike in the catalogue photo, or from every side). (V + 1) x D.

A view that failed to render holds the SKU's 2D vector, as in search; in a 2D-only index `3d` and
`max` equal `2d`. `3d` is not the best cosine over all pairs of views (what a customer photo meets
in search): with silhouette-inflated meshes, two unrelated SKUs' side views are both thin slivers
and look alike, and on the 150-object tuning benchmark (MobileNetV2) that definition put 243 of
11,175 pairs at 0.9 or more, unrelated ones first (an armchair and a stove at 0.976); the mean
over matching views put 3 there, all kitchen cabinets of one set.

Which pairs are reported: a pair (a, b) whose score is at least `threshold` and where b is among
a's `k` best-scoring SKUs or a among b's; each pair once, sku_a the one earlier in the index.

Cost. Exact (an index of at most ANN_MIN_SKUS SKUs, or `exact=True`): N (N - 1) / 2 pairs, the
upper triangle of the score matrix computed `block` x `block` at a time (never N x N in memory),
each block one matrix product per part; memory O(block^2 + N k). Above ANN_MIN_SKUS (an index
built with its graphs, dam3d.search.ann) each SKU's own vectors query the graphs for candidates,
as a search with k + 1 would (`3d`: each of its V views in the view graph; `max`: its 2D vector and
every view), and only those candidates are scored, exactly: N x (1 or V or V + 1) graph searches.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dam3d.runtime.atomic import write_text
from dam3d.search.ann import OVERFETCH
from dam3d.search.index import FUSIONS, Index

# Cosine at or above which two SKUs are look-alikes. On the generated benchmarks (MobileNetV2,
# 60 and 150 distinct furniture objects) the pairs at 0.9 or more were families of one design
# (kitchen cabinets of one set, two toilet units): 2d 5, mean 19, 3d 3 of 11,175 pairs; at 0.85
# `mean` flagged 98, mostly unrelated. The scale depends on the embedding model: check a few pairs.
DEFAULT_THRESHOLD = 0.9
DEFAULT_K = 10            # neighbours listed per SKU at most
BLOCK = 2048              # SKUs per side of a score block (2048 x 2048 float32: 16 MiB per part)
COLUMNS = ("sku_a", "sku_b", "fusion", "score")


@dataclass(frozen=True)
class Pair:
    """Two look-alike SKUs: rows of the index (a < b), their SKUs and asset ids, their similarity."""

    a: int
    b: int
    sku_a: str
    sku_b: str
    asset_a: str
    asset_b: str
    score: float


@dataclass
class Audit:
    """The look-alike pairs of one index for one fusion, best first (ties: index order)."""

    fusion: str
    threshold: float
    k: int
    method: str       # "exact" or "ann"
    skus: int
    pairs: list[Pair] = field(default_factory=list)
    seconds: float = 0.0


def _parts(index: Index, fusion: str, rows: np.ndarray) -> list[np.ndarray]:
    """The vectors whose dot products make `fusion`'s similarity (the max over parts), each (len(rows), d) float32."""
    if fusion == "2d":
        return [np.asarray(index.vec2d[rows], dtype=np.float32)]
    if fusion == "mean":
        return [np.asarray(index.vecmean[rows], dtype=np.float32)]
    views = np.asarray(index.vec3d[rows], dtype=np.float32)
    # sum_v a_v . b_v / V, as one dot product: each side scaled by 1 / sqrt(V)
    flat = views.reshape(len(rows), -1) / np.float32(np.sqrt(views.shape[1]))
    return [flat] if fusion == "3d" else [np.asarray(index.vec2d[rows], dtype=np.float32), flat]


def _dot(left: list[np.ndarray], right: list[np.ndarray]) -> np.ndarray:
    """(B, C) float32: the max over parts of left @ right.T."""
    out = left[0] @ right[0].T
    for lp, rp in zip(left[1:], right[1:], strict=True):
        np.maximum(out, lp @ rp.T, out=out)
    return out


def similarity(index: Index, fusion: str, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """SKU-to-SKU similarity of index rows `rows` (B,) against rows `cols` (C,): (B, C) float32 cosines.

    See the module docstring for each fusion's definition. ValueError for an unknown fusion.
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, not {fusion!r}")
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    return _dot(_parts(index, fusion, rows), _parts(index, fusion, cols))


class _TopK:
    """Each SKU's k best neighbours at or above a threshold, kept as blocks of scores arrive."""

    def __init__(self, n: int, k: int, threshold: float) -> None:
        self.k, self.threshold = k, np.float32(threshold)
        self.scores = np.full((n, k), -np.inf, dtype=np.float32)
        self.cols = np.full((n, k), -1, dtype=np.int64)

    def add(self, rows: np.ndarray, cols: np.ndarray, scores: np.ndarray, *, again: bool = False) -> None:
        """Offer scores (len(rows), len(cols)) of index rows `rows` against `cols` (a SKU never against itself).

        again: some of these pairs may have been offered before (ANN candidates: a pair is found from
        both sides); those a row already lists are dropped, so no neighbour takes two of its k places.
        """
        if again:
            listed = (self.cols[rows][:, :, None] == cols[None, None, :]).any(axis=1)
            scores = np.where(listed, np.float32(-np.inf), scores)
        hit = (scores >= self.threshold).any(axis=1)
        if not hit.any():
            return
        rows, scores = rows[hit], scores[hit]
        scores = np.where(scores >= self.threshold, scores, np.float32(-np.inf))
        merged = np.concatenate([self.scores[rows], scores], axis=1)
        merged_cols = np.concatenate([self.cols[rows], np.broadcast_to(cols, scores.shape)], axis=1)
        best = np.argpartition(-merged, self.k - 1, axis=1)[:, : self.k]   # k listed + at least 1 offered
        kept = np.take_along_axis(merged, best, axis=1)
        self.scores[rows] = kept
        self.cols[rows] = np.where(kept > -np.inf, np.take_along_axis(merged_cols, best, axis=1), -1)

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each pair once: rows a < b and score (float32), best first, ties by (a, b)."""
        row, slot = np.nonzero(self.cols >= 0)
        col, score = self.cols[row, slot], self.scores[row, slot]
        a, b = np.minimum(row, col), np.maximum(row, col)
        order = np.lexsort((-score, b, a))          # per pair, its highest score first (the two sides may
        a, b, score = a[order], b[order], score[order]  # differ in the last bit when scored apart)
        first = np.ones(len(a), dtype=bool)
        first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
        a, b, score = a[first], b[first], score[first]
        order = np.lexsort((b, a, -score))
        return a[order], b[order], score[order]


def _exact(index: Index, fusion: str, top: _TopK, block: int, progress: Callable[[str], None]) -> None:
    n = len(index.assets)
    for i0 in range(0, n, block):
        rows = np.arange(i0, min(n, i0 + block))
        left = _parts(index, fusion, rows)
        for j0 in range(i0, n, block):   # the upper triangle of blocks: each pair scored once
            cols = np.arange(j0, min(n, j0 + block))
            scores = _dot(left, left if j0 == i0 else _parts(index, fusion, cols))
            if j0 == i0:
                np.fill_diagonal(scores, -np.inf)
                top.add(rows, cols, scores)   # symmetric: its transpose adds nothing
            else:
                top.add(rows, cols, scores)
                top.add(cols, rows, scores.T)
        progress(f"audit {fusion}: {min(n, i0 + block)}/{n} SKUs")


def _probes(index: Index, fusion: str, row: int) -> list[tuple[str, np.ndarray]]:
    """(graph fusion, vector) pairs: the SKU's own vectors that look for its neighbours in the ANN graphs."""
    views = [("3d", np.asarray(v, dtype=np.float32)) for v in index.vec3d[row]]
    if fusion in ("2d", "mean"):
        return [(fusion, np.asarray((index.vec2d if fusion == "2d" else index.vecmean)[row], dtype=np.float32))]
    return views if fusion == "3d" else [("2d", np.asarray(index.vec2d[row], dtype=np.float32)), *views]


def _ann(index: Index, fusion: str, top: _TopK, progress: Callable[[str], None]) -> None:
    ann = index.ann()
    assert ann is not None
    n = len(index.assets)
    started = time.monotonic()
    for row in range(n):
        found = [ann.rows(vector, graph, top.k + 1) for graph, vector in _probes(index, fusion, row)]
        cols = np.unique(np.concatenate(found))
        cols = cols[cols != row]
        if len(cols):
            scores = similarity(index, fusion, np.array([row]), cols)
            top.add(np.array([row]), cols, scores, again=True)
            top.add(cols, np.array([row]), scores.T, again=True)   # b lists a even where b's own search missed it
        if (row + 1) % 1000 == 0 or row + 1 == n:
            progress(f"audit {fusion}: {row + 1}/{n} SKUs through the ANN graphs, {time.monotonic() - started:.0f} s")


def audit(index: Index, fusion: str | None = None, *, threshold: float = DEFAULT_THRESHOLD, k: int = DEFAULT_K,
          exact: bool = False, block: int = BLOCK, progress: Callable[[str], None] = lambda message: None) -> Audit:
    """The look-alike pairs of `index` for `fusion` (None: the index's, Index.fusion), best first.

    threshold: cosine in [-1, 1]; k: neighbours per SKU, at least 1; exact: score every pair even
    where the index has ANN graphs; block: SKUs per side of a score block. ValueError for a bad
    fusion, threshold, k or block. See the module docstring for the definitions and the cost.
    """
    fusion = index.fusion(fusion)
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine, between -1 and 1, not {threshold}")
    if k < 1 or block < 1:
        raise ValueError(f"k and block must be at least 1, not {k} and {block}")
    started = time.monotonic()
    n = len(index.assets)
    top = _TopK(n, k, threshold)
    use_ann = not exact and OVERFETCH * (k + 1) < n and index.ann() is not None
    if use_ann:
        _ann(index, fusion, top, progress)
    else:
        _exact(index, fusion, top, block, progress)
    a, b, score = top.pairs()
    assets = index.assets
    pairs = [Pair(i, j, assets[i]["sku"], assets[j]["sku"], assets[i]["asset_id"], assets[j]["asset_id"], float(s))
             for i, j, s in zip(a.tolist(), b.tolist(), score.tolist(), strict=True)]
    return Audit(fusion, threshold, k, "ann" if use_ann else "exact", n, pairs, time.monotonic() - started)


def table_csv(result: Audit) -> str:
    """The pairs as CSV text: a header `sku_a,sku_b,fusion,score`, one row per pair, best first, score to 6 decimals."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for p in result.pairs:
        writer.writerow((p.sku_a, p.sku_b, result.fusion, f"{p.score:.6f}"))
    return out.getvalue()


def write_table(result: Audit, path: str | Path) -> Path:
    """Write the CSV (table_csv) atomically at `path`; return it."""
    write_text(path, table_csv(result))
    return Path(path)


def summary(result: Audit, *, top: int = 10) -> dict:
    """A JSON-ready summary: fusion, threshold, k, method, SKUs, pairs found, seconds and the `top` best pairs."""
    return {"fusion": result.fusion, "threshold": result.threshold, "k": result.k, "method": result.method,
            "skus": result.skus, "pairs_found": len(result.pairs), "seconds": round(result.seconds, 3),
            "top_pairs": [{"sku_a": p.sku_a, "sku_b": p.sku_b, "asset_a": p.asset_a, "asset_b": p.asset_b,
                           "score": round(p.score, 6)} for p in result.pairs[:top]]}
