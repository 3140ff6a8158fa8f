"""Do catalogue-side 2D augmentations (embed.augment) pay off on a built results folder?

`python tools/augment_eval.py RESULTS QUERIES.csv [--model mobilenetv2] [--variants mirror;crop90;...] [--cache DIR]`

Embeds the augmentations (dam3d.stages.embed.AUGMENTS) of RESULTS' catalogue cutouts with the
index's model, writes per variant copies of the per-asset embeddings (results/embed/{model}/)
with those extra views appended as the embed stage stores them, builds each variant's index
(build_index, float32) in a temporary folder, and prints per fusion the top-1 on the labelled
queries of the baseline (no augmentation) and of each variant, with the paired difference and its
bootstrap 95 % interval (the same resampled queries for both). A variant whose name starts with
`2donly:` drops the rendered views first (a render.views: 0 index), and is compared with the
baseline's `2d`. Query vectors are cached (--cache, default RESULTS/cache/queries/{model}).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from dam3d.catalogue import Asset
from dam3d.evaluation.evaluate import bootstrap_interval, ranks_of, read_queries
from dam3d.runtime import layout
from dam3d.search.index import FUSIONS, Index, build_index
from dam3d.stages.embed import ModelSpec, augment_image, check_augment, embed_images
from dam3d.stages.images import flatten, load_image

DEFAULT_VARIANTS = "mirror;crop90;rot+10,rot-10;mirror,crop90,rot+10,rot-10;2donly:mirror,crop90,rot+10,rot-10"


def augmented(results: Path, assets: list[Asset], spec: ModelSpec, names: list[str],
              background: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Per augmentation name: (N, D) float32 L2-normalised vectors of each asset's transformed cutout."""
    cutouts = [load_image(layout.cutout(results, a.asset_id), a.asset_id, stage="embed") for a in assets]
    return {n: embed_images(spec, [flatten(augment_image(c, n), background) for c in cutouts]) for n in names}


def variant_embeddings(embeddings: list[Path], extra: dict[str, np.ndarray], names: tuple[str, ...],
                       out: Path, *, views: bool = True) -> list[Path]:
    """Copies of the per-asset .npz with the augmentation views `names` appended (as embed_assets stores them)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for row, path in enumerate(embeddings):
        with np.load(path) as d:
            vec3d, ok, view_names = (d["vec3d"], d["view_ok"], [str(v) for v in d["views"]]) if views else \
                (np.zeros((0, d["vec2d"].shape[0]), np.float32), np.zeros(0, bool), [])
            vec2d = d["vec2d"]
        aug = np.stack([extra[n][row] for n in names]) if names else np.zeros((0, vec2d.shape[0]), np.float32)
        target = out / path.name
        np.savez(target, vec2d=vec2d, vec3d=np.concatenate([vec3d, aug]).astype(np.float32),
                 view_ok=np.concatenate([ok, np.ones(len(names), bool)]),
                 views=np.array(view_names + list(names), dtype=str))
        paths.append(target)
    return paths


def hits(index: Index, vectors: np.ndarray, targets: list[int | None]) -> dict[str, np.ndarray]:
    """Per fusion: (Q,) float 0/1 top-1 hits."""
    return {f: np.array([1.0 if r == 1 else 0.0 for r in ranks_of(index.scores(vectors, f), targets)]) for f in FUSIONS}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path)
    p.add_argument("queries", type=Path)
    p.add_argument("--model", default="mobilenetv2")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help="`;`-separated variants, each a `,`-separated list")
    p.add_argument("--cache", type=Path, default=None, help="query vector cache (default RESULTS/cache/queries/{model})")
    a = p.parse_args(argv)
    from dam3d.search.query import QueryEncoder

    reference = Index.load(layout.index(a.results, a.model))
    spec = ModelSpec(**{k: v for k, v in reference.manifest["model"].items() if k in ("name", "backend", "model", "pooling")})
    background = tuple(reference.manifest.get("config", {}).get("background", (255, 255, 255)))
    assets = [Asset(r["asset_id"], r["sku"], Path(r["image"])) for r in reference.assets]
    embeddings = [layout.embedding(a.results, a.model, x.asset_id) for x in assets]
    queries = read_queries(a.queries)
    vectors = QueryEncoder(reference, cache_dir=a.cache or layout.query_cache(a.results, a.model)).encode_many(
        [q.path for q in queries])
    variants = [(v.startswith("2donly:"), check_augment(v.removeprefix("2donly:").split(","))) for v in a.variants.split(";")]
    names = sorted({n for _, ns in variants for n in ns})
    extra = augmented(a.results, assets, spec, names, background)  # type: ignore[arg-type]
    print(f"{a.results}: {len(assets)} SKUs, {len(queries)} labelled queries, model {spec.name}")
    print(f"{'variant':<36} " + " ".join(f"{f:>26}" for f in FUSIONS))
    with tempfile.TemporaryDirectory(prefix="dam3d-augment-") as tmp:
        def run(label: str, names: tuple[str, ...], views: bool) -> dict[str, np.ndarray]:
            out = Path(tmp) / label.replace(",", "_").replace(":", "_")
            paths = variant_embeddings(embeddings, extra, names, out / "embed", views=views)
            build_index(assets, paths, out / "index", {"model": reference.manifest["model"]}, dtype="float32")
            index = Index.load(out / "index")
            by_sku = {str(x["sku"]): i for i, x in enumerate(index.assets)}
            return hits(index, vectors, [by_sku.get(q.sku) for q in queries])

        base = run("baseline", (), True)
        print(f"{'baseline (top-1 %)':<36} " + " ".join(f"{base[f].mean() * 100:>26.1f}" for f in FUSIONS))
        for only2d, ns in variants:
            label = ("2donly:" if only2d else "") + ",".join(ns)
            got = run(label, ns, not only2d)
            cells = []
            for f in FUSIONS:
                delta = got[f] - (base["2d"] if only2d else base[f])
                lo, hi = bootstrap_interval(delta)
                cells.append(f"{got[f].mean() * 100:5.1f} {delta.mean() * 100:+5.1f} ({lo * 100:+.1f},{hi * 100:+.1f})")
            print(f"{label:<36} " + " ".join(f"{c:>26}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
