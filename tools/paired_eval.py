"""Top-1 of two pipeline results on the same labelled photos, and the paired difference.

    python tools/paired_eval.py QUERIES.csv RESULTS_A RESULTS_B

For each fusion: top-1 of A and of B (exact search, no colour re-ranking), B minus A with
its paired 95 % bootstrap interval over the queries (dam3d.evaluation.evaluate.bootstrap_interval),
and B minus B's own `2d`. RESULTS_* are `results` folders of the pipeline, each with one index
(RESULTS/index/{model}/). How the README's mesher and render comparisons were made.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from dam3d.evaluation.evaluate import bootstrap_interval, ranks_of, read_queries
from dam3d.search.index import FUSIONS, Index
from dam3d.search.query import QueryEncoder


def top1_hits(results: Path, queries: list) -> dict[str, np.ndarray]:
    """Per fusion, (Q,) float 1.0 where the query's SKU ranks first in the index of `results`."""
    index = Index.load(next(d for d in Path(results, "index").iterdir() if d.is_dir()))
    vectors = QueryEncoder(index).encode_many([q.path for q in queries])
    row_of = {str(a["sku"]): i for i, a in enumerate(index.assets)}
    targets = [row_of.get(q.sku) for q in queries]
    return {f: (np.array(ranks_of(index.scores(vectors, f), targets)) == 1).astype(float) for f in FUSIONS}


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    queries = read_queries(argv[0])
    a, b = top1_hits(Path(argv[1]), queries), top1_hits(Path(argv[2]), queries)
    print(f"{len(queries)} queries; A = {argv[1]}, B = {argv[2]}")
    for fusion in FUSIONS:
        delta = b[fusion] - a[fusion]
        lo, hi = bootstrap_interval(delta)
        print(f"{fusion:5s} A {a[fusion].mean() * 100:5.1f}  B {b[fusion].mean() * 100:5.1f}  "
              f"B-A {delta.mean() * 100:+5.1f} ({lo * 100:+.1f} to {hi * 100:+.1f})  "
              f"B-2d(B) {(b[fusion] - b['2d']).mean() * 100:+.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
