"""`python -m dam3d.benchmarks.scale`: search at catalogue scale on a synthetic index (no model runs).

    python -m dam3d.benchmarks.scale [--skus 20000] [--views 8] [--dim 1280] [--queries 200] [--threads 2] [--dtype float16] [--pca 0]
    python -m dam3d.benchmarks.scale --update [--skus 10000] [--views 8] [--dim 1280] [--ann]

`--update` times the index build instead (`index_update`): a full rebuild from N embedding .npz
files against the incremental update after one SKU is added (its rows appended to the vector
store, dam3d.search.store) and an update with nothing changed; without ANN graphs, or with
`--ann` with them at any size (built in full, then kept beside a delta or updated).

Draws vectors in clusters, as real embeddings come (look-alike products; each SKU's views
near its 2D vector), stores them as an index does (`--dtype`, `--pca`: dam3d.search.index.write_vectors),
builds the ANN graphs the index builds for large catalogues (dam3d.search.ann), and prints:
the bytes per SKU on disk of each file; per fusion, single-query search latency p50/p95 (k=10)
through the graphs and exactly (and exactly on the float32 vectors held in RAM), recall@10
of the graph search against exact search of the stored vectors, recall@10 of exact search
of the stored vectors against exact search of the float32 full-dimension ones (what float16
and PCA cost), and the bytes per SKU an exact search of that fusion made resident (measured:
the resident pages of the memory-mapped vector files, /proc/self/smaps). Queries are noisy
copies of random SKUs' views (cosine ~0.7 with their view: a customer photo of a catalogued product).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dam3d.search.ann import build_ann
from dam3d.search.index import DEFAULT_DTYPE, DTYPES, FUSIONS, Index, write_vectors
from dam3d.search.store import NAMES, open_index_vectors, open_store, vector_file



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


def mapped_resident(folder: Path) -> int | None:
    """Bytes of this process's memory maps of `folder`'s vector files that are resident (Linux); None elsewhere."""
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return None
    total, inside = 0, False
    names = {str(vector_file(folder.resolve(), name)) for name in NAMES}
    for line in lines:
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):   # a mapping's header
            inside = len(fields) >= 6 and fields[5] in names
        elif inside and fields[:1] == ["Rss:"]:
            total += int(fields[1]) * 1024
    return total


def stored_index(folder: Path, stored: dict, assets: list[dict]) -> Index:
    """The index whose store write_vectors wrote in `folder` (`stored`: what it returned) and whose graphs build_ann
    wrote there, vectors memory-mapped, as Index.load maps them."""
    return Index(folder, {}, assets, *open_index_vectors(folder.parent, folder, {"vectors": stored}, None))


def top10(index: Index, query: np.ndarray, fusion: str, *, exact: bool) -> set[str]:
    return {h["sku"] for h in index.search(query, k=10, fusion=fusion, exact=exact)}


def index_update(folder: Path, skus: int, views: int, dim: int, *, seed: int = 0, dtype: str = DEFAULT_DTYPE,
                 ann: bool = False) -> dict[str, float]:
    """Seconds of an index build (dam3d.search.index.build_index) over `skus` synthetic SKUs in `folder`; with `ann`,
    with its ANN graphs whatever the size (built in full, then updated in place), else without.

    Writes one float32 .npz per SKU (vec2d (D,), vec3d (V, D), view_ok, views: as the embed stage does, each
    ~(V + 1) x D x 4 bytes), then times: `full`, a rebuild reading every .npz; `add_one`, the update after
    one SKU is added (one .npz opened, the other rows copied from the previous index); `unchanged`, an
    update with nothing changed; `write_npz`, writing the .npz files. The page cache is not dropped.
    """
    from dam3d.catalogue import Asset
    from dam3d.search.index import build_index

    rng = np.random.default_rng(seed)
    embed, out = folder / "embed", folder / "index"
    embed.mkdir(parents=True, exist_ok=True)
    names = np.array([f"v{j}" for j in range(views)])
    t = time.perf_counter()
    for s in range(0, skus + 1, 4096):   # one SKU more than indexed at first: the one added
        vec2d, vec3d, _ = clustered(rng, min(4096, skus + 1 - s), views, dim)
        for i in range(len(vec2d)):
            np.savez(embed / f"S{s + i}.npz", vec2d=vec2d[i], vec3d=vec3d[i], view_ok=np.ones(views, bool), views=names)
    timings = {"write_npz": time.perf_counter() - t}
    assets = [Asset(f"S{i}", f"SKU {i}", Path(f"{i}.jpg")) for i in range(skus + 1)]
    paths = [embed / f"S{i}.npz" for i in range(skus + 1)]
    no_ann = {"ann_min_skus": 0 if ann else 2**62, "dtype": dtype}
    for name, n, incremental in (("full", skus, False), ("add_one", skus + 1, True), ("unchanged", skus + 1, True)):
        t = time.perf_counter()
        manifest = build_index(assets[:n], paths[:n], out, {"model": {"name": "synthetic"}}, incremental=incremental, **no_ann)
        timings[name] = time.perf_counter() - t
        timings[f"{name}_read"] = manifest["update"]["read"]
        timings[f"{name}_ann"] = (manifest["ann"] or {}).get("built", "none")
        timings[f"{name}_store"] = manifest["update"]["store"]
    return timings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dam3d.benchmarks.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--skus", type=int, default=20_000)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--dim", type=int, default=1280, help="embedding size (MobileNetV2: 1280; ViT-L: 1024)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--threads", type=int, default=2, help="BLAS threads for exact search")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=DTYPES, default=DEFAULT_DTYPE, help="stored vectors (config index.dtype)")
    p.add_argument("--pca", type=int, default=0, help="PCA dimension (config index.pca; 0: off)")
    p.add_argument("--update", action="store_true", help="time a full index rebuild against a one-SKU update instead")
    p.add_argument("--ann", action="store_true", help="with --update: with ANN graphs at any size")
    a = p.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(a.threads))
    if a.update:
        with tempfile.TemporaryDirectory(prefix="dam3d-update-") as tmp:
            t = index_update(Path(tmp), a.skus, a.views, a.dim, seed=a.seed, dtype=a.dtype, ann=a.ann)
        graphs = f"ANN graphs: {t['full_ann']}, then {t['add_one_ann']}, {t['unchanged_ann']}" if a.ann else "no ANN graphs"
        print(f"dam3d scale --update: {a.skus:,} SKUs x (1 + {a.views} views) x {a.dim}-d, {a.dtype}, {graphs} "
              f"(load average {os.getloadavg()[0]:.1f}):\n"
              f"  wrote the .npz files in {t['write_npz']:.1f} s\n"
              f"  full rebuild   {t['full']:7.2f} s ({t['full_read']:,} .npz read)\n"
              f"  one SKU added  {t['add_one']:7.2f} s ({t['add_one_read']:,} .npz read; vector store {t['add_one_store']})\n"
              f"  nothing changed {t['unchanged']:6.2f} s ({t['unchanged_read']:,} .npz read; vector store {t['unchanged_store']})")
        return 0
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

    assets = [{"sku": str(i), "asset_id": str(i), "image": ""} for i in range(a.skus)]
    reference = Index(Path("."), {}, assets, vec2d, vec3d, vecmean)   # float32, full dimension, in RAM
    with tempfile.TemporaryDirectory(prefix="dam3d-scale-") as tmp:
        folder = Path(tmp)
        stored = write_vectors(folder, vec2d, vec3d, vecmean, dtype=a.dtype, pca=a.pca)
        t = time.perf_counter()
        files = build_ann(folder, *open_store(folder, stored["store"]))
        build = time.perf_counter() - t
        sizes = {f.name: f.stat().st_size for f in files}
        pca = stored["pca"]
        print(f"  vectors stored {a.dtype}, {stored['dim']}-d"
              + (f" (PCA of {a.dim}-d, {pca['explained_variance']:.3f} of the sum of squares kept)" if pca else "")
              + "; bytes per SKU on disk: " + ", ".join(f"{vector_file(folder, name).name} "
                                                       f"{vector_file(folder, name).stat().st_size / a.skus:,.0f}"
                                                       for name in NAMES))
        print(f"  ANN graphs (usearch HNSW, float16): built in {build:.1f} s; on disk "
              + ", ".join(f"{n} {s / 2**20:.0f} MiB ({s / a.skus:,.0f} B/SKU)" for n, s in sizes.items()))
        print(f"  {'fusion':<6} {'ANN p50':>9} {'ANN p95':>9} {'exact p50':>10} {'exact p95':>10} {'f32 p50':>9} "
              f"{'ANN r@10':>9} {'vs f32 r@10':>12} {'resident B/SKU':>15}")
        for fusion in FUSIONS:
            gc.collect()   # the previous fusion's maps are gone: what is resident now, this fusion read
            index = stored_index(folder, stored, assets)
            ann_ms, exact_ms, f32_ms, recall, recall_f32 = [], [], [], [], []
            for q in queries:
                t = time.perf_counter()
                got = top10(index, q, fusion, exact=False)
                ann_ms.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                exact = top10(index, q, fusion, exact=True)
                exact_ms.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                want = top10(reference, q, fusion, exact=True)
                f32_ms.append((time.perf_counter() - t) * 1000)
                recall.append(len(got & exact) / len(exact))
                recall_f32.append(len(exact & want) / len(want))
            resident = mapped_resident(folder)
            del index
            print(f"  {fusion:<6} {np.percentile(ann_ms, 50):7.1f}ms {np.percentile(ann_ms, 95):7.1f}ms "
                  f"{np.percentile(exact_ms, 50):8.1f}ms {np.percentile(exact_ms, 95):8.1f}ms {np.percentile(f32_ms, 50):7.1f}ms "
                  f"{np.mean(recall):9.3f} {np.mean(recall_f32):12.3f} "
                  + (f"{resident / a.skus:15,.0f}" if resident is not None else f"{'n/a':>15}"))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"  peak resident memory {rss:.1f} GiB (the float32 reference vectors are held in RAM here; "
          "a stored index is memory-mapped and scored a block of SKUs at a time)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
