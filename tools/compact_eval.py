"""What compact vectors cost on a real index: `python tools/compact_eval.py RESULTS QUERIES.csv [--model mobilenetv2] [--pca 64,128,256]`.

Rebuilds the index of RESULTS (from its per-asset embeddings, results/embed/{model}/) stored as
float32, float16 and float16 + PCA to each dimension asked for, encodes the labelled query photos
once (through the query cache, --cache), and prints per variant and fusion: top-1 on the labels,
and recall@10 of its exact search against exact search of the float32 full-dimension index.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from dam3d.catalogue import Asset
from dam3d.evaluation.evaluate import evaluate_vectors, read_queries
from dam3d.runtime import layout
from dam3d.search.index import FUSIONS, Index, build_index
from dam3d.search.query import QueryEncoder


def top10(index: Index, vectors: np.ndarray, fusion: str) -> list[set[int]]:
    """The exact top-10 rows per query (Q, D) -> Q sets."""
    scores = index.scores(vectors, fusion)
    return [set(np.argsort(-s, kind="stable")[:10].tolist()) for s in scores]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path)
    p.add_argument("queries", type=Path)
    p.add_argument("--model", default="mobilenetv2")
    p.add_argument("--pca", default="64,128,256")
    p.add_argument("--cache", type=Path, default=None, help="query vector cache (default RESULTS/cache/queries/{model})")
    a = p.parse_args(argv)
    reference = Index.load(layout.index(a.results, a.model))
    assets = [Asset(r["asset_id"], r["sku"], Path(r["image"])) for r in reference.assets]
    embeddings = [layout.embedding(a.results, a.model, x.asset_id) for x in assets]
    queries = read_queries(a.queries)
    encoder = QueryEncoder(reference, cache_dir=a.cache or layout.query_cache(a.results, a.model))
    vectors = encoder.encode_many([q.path for q in queries])
    variants = [("float32", 0), ("float16", 0)] + [("float16", int(d)) for d in a.pca.split(",") if d]
    print(f"{len(assets)} SKUs, {len(queries)} labelled queries, model {a.model} ({vectors.shape[1]}-d)")
    print(f"{'vectors':<16} {'explained':>9} {'B/SKU 3d':>9} " + " ".join(f"{f + ' top1/r@10':>16}" for f in FUSIONS))
    with tempfile.TemporaryDirectory(prefix="dam3d-compact-") as tmp:
        want: dict[str, list[set[int]]] = {}
        for dtype, pca in variants:
            out = Path(tmp) / f"{dtype}-{pca}"
            manifest = build_index(assets, embeddings, out, {"model": reference.manifest["model"]}, dtype=dtype, pca=pca)
            index = Index.load(out)
            report = evaluate_vectors(index, queries, vectors, fusions=FUSIONS)
            cells = []
            for fusion in FUSIONS:
                got = top10(index, vectors, fusion)
                want.setdefault(fusion, got)   # the first variant, float32 full dimension, is the reference
                recall = np.mean([len(g & w) / len(w) for g, w in zip(got, want[fusion], strict=True)])
                cells.append(f"{report[fusion]['top1']:.3f}/{recall:.3f}")
            stored = manifest["vectors"]
            explained = f"{stored['pca']['explained_variance']:.3f}" if stored["pca"] else "-"
            print(f"{dtype + (f' pca {pca}' if pca else ''):<16} {explained:>9} {stored['bytes_per_sku']['3d']:>9,} "
                  + " ".join(f"{c:>16}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
