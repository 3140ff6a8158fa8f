"""`python -m dam3d.benchmarks.scale`: search at catalogue scale on a synthetic index (no model runs).

    python -m dam3d.benchmarks.scale [--skus 20000] [--views 8] [--dim 1280] [--queries 200] [--threads 2]

Draws vectors in clusters, as real embeddings come (look-alike products; each SKU's views
near its 2D vector), builds the ANN graphs the index builds for large catalogues
(dam3d.search.ann), and prints per fusion: the graphs' build time and size, the bytes
per SKU of the vectors, single-query search latency p50/p95 (k=5) through the graphs and
exactly, and recall@10 of the graph search against exact float32 search. Queries are
noisy copies of random SKUs' views (cosine ~0.7 with their view: a customer photo of a
catalogued product).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dam3d.search.ann import build_ann
from dam3d.search.index import FUSIONS, Index


def clustered(rng: np.random.Generator, skus: int, views: int, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vec2d (N, D), vec3d (N, V, D), vecmean (N, D)) float32, L2-normalised, in clusters of ~20 SKUs."""
    def unit(a: np.ndarray) -> np.ndarray:
        return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)

    centres = rng.standard_normal((max(skus // 20, 1), dim), dtype=np.float32)
    vec2d = np.empty((skus, dim), dtype=np.float32)
    vec3d = np.empty((skus, views, dim), dtype=np.float32)
    for s in range(0, skus, 4096):   # in blocks: the noise of a million SKUs would not fit at once
        n = min(4096, skus - s)
        base = centres[np.arange(s, s + n) % len(centres)] + 0.6 * rng.standard_normal((n, dim), dtype=np.float32)
        vec2d[s : s + n] = unit(base + 0.3 * rng.standard_normal((n, dim), dtype=np.float32))
        vec3d[s : s + n] = unit(base[:, None] + 0.5 * rng.standard_normal((n, views, dim), dtype=np.float32))
    vecmean = unit(vec2d + unit(vec3d.mean(axis=1)))
    return vec2d, vec3d, vecmean


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dam3d.benchmarks.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--skus", type=int, default=20_000)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--dim", type=int, default=1280, help="embedding size (MobileNetV2: 1280; ViT-L: 1024)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--threads", type=int, default=2, help="BLAS threads for exact search")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(a.threads))
    rng = np.random.default_rng(a.seed)

    t = time.perf_counter()
    vec2d, vec3d, vecmean = clustered(rng, a.skus, a.views, a.dim)
    print(f"dam3d scale: {a.skus:,} SKUs x (1 + {a.views} views) x {a.dim}-d, drawn in {time.perf_counter() - t:.1f} s",
          file=sys.stderr)
    picks = rng.integers(0, a.skus, a.queries)
    # noise of norm ~1: cosine ~0.7 with the view it was drawn from, as a photo from another side
    noise = rng.standard_normal((a.queries, a.dim)).astype(np.float32) / np.sqrt(a.dim)
    queries = vec3d[picks, rng.integers(0, a.views, a.queries)] + noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    with tempfile.TemporaryDirectory(prefix="dam3d-scale-") as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        files = build_ann(folder, vec2d, vec3d, vecmean)
        build = time.perf_counter() - t
        sizes = {f.name: f.stat().st_size for f in files}
        index = Index(folder, {}, [{"sku": str(i), "asset_id": str(i), "image": ""} for i in range(a.skus)],
                      vec2d, vec3d, vecmean)
        print(f"  ANN graphs (usearch HNSW, float16): built in {build:.1f} s; on disk "
              + ", ".join(f"{n} {s / 2**20:.0f} MiB" for n, s in sizes.items()))
        print(f"  float32 vectors per SKU: 2d/mean {a.dim * 4:,} B each, views {a.views * a.dim * 4:,} B "
              f"(the graphs hold float16: half that, plus links)")
        print(f"  {'fusion':<6} {'ANN p50':>9} {'ANN p95':>9} {'exact p50':>10} {'exact p95':>10} {'recall@10':>10}")
        for fusion in FUSIONS:
            ann_ms, exact_ms, recall = [], [], []
            for q in queries:
                t = time.perf_counter()
                got = index.search(q, k=10, fusion=fusion)
                ann_ms.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                want = index.search(q, k=10, fusion=fusion, exact=True)
                exact_ms.append((time.perf_counter() - t) * 1000)
                recall.append(len({h["sku"] for h in got} & {h["sku"] for h in want}) / len(want))
            print(f"  {fusion:<6} {np.percentile(ann_ms, 50):7.1f}ms {np.percentile(ann_ms, 95):7.1f}ms "
                  f"{np.percentile(exact_ms, 50):8.1f}ms {np.percentile(exact_ms, 95):8.1f}ms {np.mean(recall):10.3f}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"  peak resident memory {rss:.1f} GiB (the vectors held in RAM here; an index on disk is memory-mapped)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
