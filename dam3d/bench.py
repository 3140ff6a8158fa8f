"""Benchmark: seconds per asset for each stage on this machine, with model loads and start-up apart.

    python -m dam3d.bench [--catalogue sample/catalogue] [--assets 12] [--engine BLENDER_WORKBENCH]
    python -m dam3d.bench --search 3000 [--queries 30]     # query latency of dam3d search / serve

Prints one table; nothing is asserted. Artefacts go to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import yaml

from dam3d.catalogue import load_catalogue
from dam3d.cutout import make_cutout, mask_fn, resolve_backend
from dam3d.embed import embed_asset, encoder, resolve_models
from dam3d.mesh import build_mesh
from dam3d.render import VIEW_NAMES, run_batch

REPO = Path(__file__).resolve().parent.parent


def _timed(fn) -> float:  # noqa: ANN001 - any zero-argument callable
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dam3d.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--catalogue", default=str(REPO / "sample" / "catalogue"))
    parser.add_argument("--config", default=str(REPO / "config.yaml"))
    parser.add_argument("--assets", type=int, default=12)
    parser.add_argument("--engine", default=None, help="render engine (default: config)")
    parser.add_argument("--resolution", type=int, default=None, help="render resolution (default: config)")
    parser.add_argument("--aa", type=int, default=None, help="Workbench/EEVEE anti-aliasing (default: config)")
    parser.add_argument("--search", type=int, metavar="SKUS", default=None,
                        help="instead: seconds per query (cutout + embed + search, as `dam3d serve` runs it) "
                             "on a synthetic index of SKUS random vectors, with the sample queries")
    parser.add_argument("--queries", type=int, default=30, help="queries timed with --search (default: 30)")
    parser.add_argument("--threads", type=int, default=0, help="with --search: CPU threads per model (default 0: one per core)")
    args = parser.parse_args(argv)

    config = yaml.safe_load(Path(args.config).read_text())
    if args.search:
        from dam3d.serve import search_latency

        photos = sorted((REPO / "sample" / "queries").glob("*.jpg"))
        r = search_latency(photos, skus=args.search, queries=args.queries, config=config, threads=args.threads)
        print(f"dam3d bench --search: {r['queries']} queries ({len(photos)} sample photos in turn), index of {r['skus']} SKUs x "
              f"(1 + {r['views']} views) x {r['dim']}-d ({r['model']}, cutout {r['cutout']}); "
              f"threads {r['threads'] or 'default'}; {platform.machine()}, {platform.python_version()}")
        print(f"  per query, end to end:  median {r['median']:.3f} s   p95 {r['p95']:.3f} s")
        parts = r["parts_median"]
        print(f"  by part (medians):      cutout {parts['cutout']:.3f} s, embed {parts['embed']:.3f} s, "
              f"search {parts['search'] * 1000:.1f} ms")
        print(f"  CPU time per query (all threads): median {r['cpu_median']:.3f} s; load average at the end "
              f"{r['load_average']:.1f} on {os.cpu_count()} CPUs (other work on the machine slows the figures above)")
        print(f"  start-up (index + models, warm-up query): {r['load_seconds']:.1f} s, once per server")
        return 0
    cut, mesh, render, embed = config["cutout"], config["mesh"], dict(config["render"]), config["embed"]
    render.update({k: v for k, v in (("engine", args.engine), ("resolution", args.resolution), ("aa", args.aa)) if v})
    assets = load_catalogue(args.catalogue)[: args.assets]
    n = len(assets)
    backend = resolve_backend(cut["backend"], cut["model"])
    (spec,) = resolve_models(embed["models"][:1], embed["presets"])
    views = VIEW_NAMES(render["views"])
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="dam3d-bench-") as tmp:
        out = Path(tmp)
        load = _timed(lambda: mask_fn(backend, model=cut["model"]))
        t = _timed(lambda: [make_cutout(a.asset_id, a.image, out / "cutout" / f"{a.asset_id}.png", backend=backend,
                                         model=cut["model"], size=cut["size"], margin=cut["margin"]) for a in assets])
        rows.append((f"cutout ({backend})", f"{t / n:.3f} s/asset   (model load {load:.1f} s, once per job)"))

        params = mesh.get(mesh["backend"], {})
        t = _timed(lambda: [build_mesh(a.asset_id, out / "cutout" / f"{a.asset_id}.png", out / "mesh" / f"{a.asset_id}.glb",
                                       mesh["backend"], params) for a in assets])
        rows.append((f"mesh ({mesh['backend']})", f"{t / n:.3f} s/asset"))

        jobs = [(out / "mesh" / f"{a.asset_id}.glb", out / "render" / a.asset_id) for a in assets]
        settings = {k: render[k] for k in ("views", "elevation", "resolution", "engine", "device", "samples", "fov", "aa")}
        one = run_batch(jobs[:1], **settings)
        batch = run_batch(jobs, **settings)
        rendering = sum(r.get("render_seconds") or 0.0 for r in batch.records)
        outside = 1.0 - rendering / batch.wall_seconds
        label = f"render ({render['engine']}, {render['resolution']} px, aa {render['aa']}, {len(views)} views)"
        rows.append((label, f"{one.wall_seconds:.2f} s for one asset, start-up included (one job per asset)"))
        rows.append(("", f"{(batch.wall_seconds - (batch.startup_seconds or 0)) / n:.3f} s/asset in a batch of {n}; "
                         f"start-up {batch.startup_seconds or 0:.2f} s; {outside:.0%} of the batch outside rendering"))

        load = _timed(lambda: encoder(spec))
        t = _timed(lambda: [embed_asset(a.asset_id, out / "cutout" / f"{a.asset_id}.png",
                                        [out / "render" / a.asset_id / f"{v}.png" for v in views],
                                        out / "embed" / f"{a.asset_id}.npz", spec, batch_size=embed["batch_size"]) for a in assets])
        rows.append((f"embed ({spec.name})", f"{t / n:.3f} s/asset = {t / (n * (1 + len(views))):.4f} s/image   (model load {load:.1f} s)"))

    print(f"dam3d bench: {n} assets from {args.catalogue}; {platform.machine()}, {platform.python_version()}")
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
