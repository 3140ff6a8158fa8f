"""The README's products-benchmark figures: four runs' top-1 on the same photos, by fusion, kind and fitted shape.

    python tools/products_eval.py BENCH

BENCH is a `dam3d bench make --sources products` folder with the pipeline's results folders
beside its files: r_infl (inflate) and any other `r_*`, e.g. r_cub (prior, cuboid), r_rev (prior,
cuboid + revolution), r_blur (prior, revolution, `hidden: blur`), r_prov (the true meshes,
`provided`). Prints, per run and fusion, top-1, the paired difference
with r_infl and its 95 % bootstrap interval (as tools/paired_eval.py), the difference with the
run's own `2d`; how many SKUs each prior shape took, by true kind (objects.csv `category`); and
top-1 on the queries of each kind. Query vectors are encoded once (every run has the same
cutout and model) and searched exactly, without colour re-ranking.
"""

from __future__ import annotations

import collections
import csv
import sys
from pathlib import Path

import numpy as np

from dam3d.evaluation.evaluate import bootstrap_interval, ranks_of, read_queries
from dam3d.runtime import layout
from dam3d.search.index import FUSIONS, Index
from dam3d.search.query import QueryEncoder
from dam3d.stages.shapes import shape_record

BASE = "r_infl"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    bench = Path(argv[0])
    queries = read_queries(bench / "queries.csv")
    kind = {r["sku"]: r["category"] for r in csv.DictReader((bench / "objects.csv").open())}
    runs = sorted((d.name for d in bench.glob("r_*") if (d / "index").is_dir()), key=lambda n: (n != BASE, n))
    if BASE not in runs:
        print(f"{bench}: no {BASE}/index to compare with", file=sys.stderr)
        return 2
    indexes = {n: Index.load(next(d for d in (bench / n / "index").iterdir() if d.is_dir())) for n in runs}
    vectors = QueryEncoder(indexes[BASE]).encode_many([q.path for q in queries])
    hits = {}
    for name, index in indexes.items():
        row_of = {str(a["sku"]): i for i, a in enumerate(index.assets)}
        targets = [row_of.get(q.sku) for q in queries]
        hits[name] = {f: (np.array(ranks_of(index.scores(vectors, f), targets)) == 1).astype(float) for f in FUSIONS}
    base = hits[BASE]
    print(f"{bench}: {len(queries)} queries, {len(kind)} SKUs; top-1 (B - {BASE}, paired 95% CI; B - its 2d)")
    for name, h in hits.items():
        cells = []
        for f in FUSIONS:
            lo, hi = bootstrap_interval(h[f] - base[f])
            cells.append(f"{f} {h[f].mean() * 100:.1f}% ({(h[f] - base[f]).mean() * 100:+.1f}, {lo * 100:+.1f} to "
                         f"{hi * 100:+.1f}; vs 2d {(h[f] - h['2d']).mean() * 100:+.1f})")
        print(name, " | ".join(cells))
    index_of = {str(a["sku"]): str(a["asset_id"]) for a in indexes[BASE].assets}
    for name in runs:
        shape = {s: (shape_record(layout.mesh(bench / name, index_of[s])) or {}).get("shape", "none") for s in kind}
        if set(shape.values()) == {"none"}:
            continue   # not a prior run
        by_kind = collections.Counter((shape.get(s, "none"), k) for s, k in kind.items())
        print(name, "shapes:", dict(collections.Counter(shape.values())), "by kind:", sorted(by_kind.items()))
    for k in sorted(set(kind.values())):
        idx = np.array([kind[q.sku] == k for q in queries])
        print(f"kind {k} ({idx.sum()} queries):",
              {n: {f: round(h[f][idx].mean() * 100, 1) for f in FUSIONS} for n, h in hits.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
