"""Colour re-ranking on a generated benchmark, from its existing pipeline results (no stage re-run).

    python tools/colour_eval.py QUERIES.csv RESULTS [RESULTS ...] [--weights 0,0.1,0.2] [--bins 4,8,8]
                                [--work DIR]

For each RESULTS folder (its index/{model}/ and cutout/), per fusion and weight: top-1 without and
with colour re-ranking and the paired bootstrap 95 % interval of the per-query difference
(dam3d.evaluation.evaluate.bootstrap_interval); from the second RESULTS on, also the paired
difference with the first RESULTS folder at the same weight (e.g. a mesher against inflate). Catalogue descriptors come from the index's
colour.npy when it has one, else from RESULTS/cutout/{asset}.png (as build_index computes them);
the queries' from the cutout QueryEncoder.prepare makes (cut-outs and query vectors are cached
under --work, keyed as the query vector cache is).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from dam3d.evaluation.evaluate import bootstrap_interval, ranks_of, read_queries
from dam3d.runtime import layout
from dam3d.search.colour import colour_descriptor, rerank_depth, rerank_keys
from dam3d.search.index import FUSIONS, Index
from dam3d.search.query import QueryEncoder, default_cache_dir


def query_cutouts(encoder: QueryEncoder, photos: list[Path], work: Path) -> list[Image.Image]:
    """The cutout of each query photo (cached as PNG under work/cutouts/, keyed like the vector cache).

    A photo whose vector is not cached yet is embedded from this same cutout (each photo is cut out once).
    """
    from dam3d.stages.images import flatten

    folder = work / "cutouts"
    folder.mkdir(parents=True, exist_ok=True)
    out, todo = [], []
    for photo in photos:
        key = encoder.cache_key(photo)
        path = folder / f"{key}.png"
        if not path.is_file():
            encoder.prepare(photo)[0].save(path)
        out.append(Image.open(path).copy())
        if encoder._read_cache(key) is None:
            todo.append((key, flatten(out[-1], encoder.background)))
        if len(todo) == encoder.batch_size or (todo and photo == photos[-1]):
            for (k, _), vector in zip(todo, encoder.embed([f for _, f in todo]), strict=True):
                encoder._write_cache(k, vector)
            todo = []
        print(f"cut out {len(out)}/{len(photos)}", end="\r", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("queries")
    parser.add_argument("results", nargs="+")
    parser.add_argument("--weights", default="0.1,0.2,0.3")
    parser.add_argument("--bins", default="4,8,8", help="L,a,b bins; several sets separated by ';'")
    parser.add_argument("--work", default="/tmp/colour_work")
    parser.add_argument("--k", type=int, default=5, help="the search's k: re-ranked depth max(50, 4k)")
    args = parser.parse_args(argv)
    queries = read_queries(args.queries)
    weights = [float(w) for w in args.weights.split(",")]
    bin_sets = [tuple(int(b) for b in s.split(",")) for s in args.bins.split(";")]
    work = Path(args.work)
    first: dict[tuple, np.ndarray] = {}   # the first RESULTS folder's hits, per (bins, fusion, weight)
    for results in args.results:
        index = Index.load(next(d for d in layout.indexes(results).iterdir() if d.is_dir()))
        cache = default_cache_dir(index)
        encoder = QueryEncoder(index, cache_dir=cache if cache.is_dir() else work / "vectors")
        cutouts = query_cutouts(encoder, [q.path for q in queries], work)
        vectors = encoder.encode_many([q.path for q in queries])
        by_sku = {str(a["sku"]): i for i, a in enumerate(index.assets)}
        targets = [by_sku.get(q.sku) for q in queries]
        catalogue = [Image.open(layout.cutout(results, str(a["asset_id"]))) for a in index.assets]
        for bins in bin_sets:
            stored = index.colours if bins == index.colour_bins else None
            colours = stored if stored is not None else np.stack([colour_descriptor(c, bins=bins) for c in catalogue])
            query_colours = np.stack([colour_descriptor(c, bins=bins) for c in cutouts])
            depth = rerank_depth(args.k, len(index.assets))
            print(f"{results}  bins {bins}  depth {depth}  n {len(queries)}")
            for fusion in FUSIONS:
                scores = index.scores(vectors, fusion)
                base = np.array([1.0 if r == 1 else 0.0 for r in ranks_of(scores, targets)])
                cells = []
                for w in weights:
                    keys = rerank_keys(scores, query_colours, colours, w, depth)
                    hits = np.array([1.0 if r == 1 else 0.0 for r in ranks_of(keys, targets)])
                    diff = hits - base
                    lo, hi = bootstrap_interval(diff)
                    cell = f"w={w:g}: {hits.mean() * 100:5.1f} ({diff.mean() * 100:+.1f}, {lo * 100:+.1f} to {hi * 100:+.1f})"
                    if (bins, fusion, w) in first:
                        vs = hits - first[bins, fusion, w]
                        lo, hi = bootstrap_interval(vs)
                        cell += f" vs first {vs.mean() * 100:+.1f} ({lo * 100:+.1f} to {hi * 100:+.1f})"
                    else:
                        first[bins, fusion, w] = hits
                    cells.append(cell)
                print(f"  {fusion:4s} off {base.mean() * 100:5.1f} | " + " | ".join(cells))
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
