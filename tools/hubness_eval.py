"""Hubness corrections of the `max` fusion on one results folder: top-1 of each setting against plain `max`.

    python tools/hubness_eval.py QUERIES.csv RESULTS

Exact search, no colour re-ranking. Two corrections of each cosine before the maximum over the
2D vector and the views (README, Search and fusions):
- CSLS (Lample et al. 2018, "Word translation without parallel data"): less beta times the vector's
  mean cosine to its k nearest vectors of other SKUs (a view like every photo scores less);
- slot centring: less gamma times the query's cosine to the mean vector of the view angle.
Each line: top-1, the paired difference with plain `max` and its bootstrap 95 % interval, the
difference with `2d`. Memory grows with (SKUs x views)^2: for benchmarks of a few hundred SKUs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from dam3d.evaluation.evaluate import bootstrap_interval, ranks_of, read_queries
from dam3d.search.index import Index, as_float32
from dam3d.search.query import QueryEncoder


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    queries = read_queries(argv[0])
    index = Index.load(next(d for d in Path(argv[1], "index").iterdir() if d.is_dir()))
    q = QueryEncoder(index).encode_many([x.path for x in queries]).astype(np.float32)
    row_of = {str(a["sku"]): i for i, a in enumerate(index.assets)}
    targets = [row_of.get(x.sku) for x in queries]
    vec2d, vec3d = as_float32(np.asarray(index.vec2d)), as_float32(np.asarray(index.vec3d))
    n, v, d = vec3d.shape
    slots = np.concatenate([vec2d[:, None], vec3d], axis=1)  # (N, 1 + V, d): the cutout, then the views
    ok = np.concatenate([np.ones((n, 1), bool), np.linalg.norm(vec3d, axis=2) > 0.5], axis=1)  # failed views are 0

    def top1(scores: np.ndarray) -> np.ndarray:
        return (np.array(ranks_of(scores, targets)) == 1).astype(float)

    cos = np.einsum("qd,nsd->qns", q, slots)
    cos[:, ~ok] = -np.inf
    plain, flat2d = top1(cos.max(2)), top1(cos[:, :, 0])

    def line(name: str, hits: np.ndarray) -> None:
        lo, hi = bootstrap_interval(hits - plain)
        print(f"{name:28s} max {hits.mean() * 100:5.1f}  vs max {(hits - plain).mean() * 100:+5.1f} "
              f"({lo * 100:+.1f} to {hi * 100:+.1f})  vs 2d {(hits - flat2d).mean() * 100:+5.1f}")

    print(f"{len(queries)} queries, {n} SKUs; 2d {flat2d.mean() * 100:.1f}, max {plain.mean() * 100:.1f}")
    flat = slots.reshape(-1, d)
    sims = flat @ flat.T
    owner = np.repeat(np.arange(n), 1 + v)
    sims[owner[:, None] == owner[None, :]] = -np.inf  # other SKUs' vectors only
    sims[:, ~ok.reshape(-1)] = -np.inf
    nearest = -np.sort(-sims, axis=1)
    for k in (5, 10, 20, 50):
        hub = np.where(np.isfinite(nearest[:, :k]), nearest[:, :k], 0).mean(1).reshape(n, 1 + v)
        for beta in (0.25, 0.5, 1.0):
            line(f"CSLS k {k} beta {beta}", top1((cos - beta * hub[None]).max(2)))
    means = np.array([slots[:, s][ok[:, s]].mean(0) for s in range(1 + v)])  # (1 + V, d)
    for gamma in (0.25, 0.5, 0.75, 1.0):
        line(f"slot centring gamma {gamma}", top1((cos - gamma * (q @ means.T)[:, None, :]).max(2)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
