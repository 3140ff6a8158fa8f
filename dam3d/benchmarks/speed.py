"""Benchmark: throughput of each stage on this machine, with model loads and start-up apart.

    python -m dam3d.benchmarks.speed [--catalogue sample/catalogue] [--assets 12] [--device auto] [--batch-size N]
    python -m dam3d.benchmarks.speed --target [--assets 8]            # also the target models' architectures, random weights
    python -m dam3d.benchmarks.speed --search 3000 [--queries 30]     # query latency of dam3d search / serve
    python -m dam3d.benchmarks.speed --models-only [--assets 64]      # only the target models: a bare CUDA machine

For the model stages (cutout, embed) it prints what a chunk job does, through make_cutouts /
embed_assets (decode, preprocessing, batched forward, writing), next to the raw forward of
the same model on a ready-made batch on the same device, their ratio, the model load and the
process start-up as a share of a chunk job. Prints one table; nothing is asserted.
Artefacts go to a temporary folder.

`--models-only` times just the target architectures' model stages (the `--target` rows) and
imports nothing else: it runs from a checkout on `PYTHONPATH` where only torch, transformers,
Pillow, NumPy and PyYAML are installed (a bare CUDA machine: no rembg, onnxruntime, trimesh,
bpy or Snakemake). Its embed stage reads each catalogue photo as the cutout and as every view
(1 + render.views images per asset, as after rendering), since random cutout weights give
random masks.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from dam3d import CHECKOUT
from dam3d.runtime.backends import backend as get_backend
from dam3d.runtime.backends import register, torch_device
from dam3d.runtime.batching import BatchNet
from dam3d.catalogue import load_catalogue
from dam3d.stages.cutout import RmbgCutout, make_cutouts, resolve_backend, rmbg_batch_net
from dam3d.stages.embed import ModelSpec, VitEmbed, embed_assets, encoder, resolve_models, vit_batch_net
from dam3d.errors import AssetWarning
from dam3d.runtime import layout
from dam3d.runtime.chunk import has_result
from dam3d.stages.images import load_image

REPO = CHECKOUT


def _timed(fn) -> float:  # noqa: ANN001 - any zero-argument callable
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --target: the target architectures with random weights of the real sizes (nothing can be
# downloaded), registered as backends (below) so that the very code path of a chunk job is timed.
TARGET_CUTOUT = "bench-random/birefnet-swin-large-encoder-1024"
TARGET_EMBED = "bench-random/vit-large-patch16-224"


# The stand-ins' architectures: BiRefNet's Swin-L encoder (its swin_v1_l) and google/vit-large-patch16-224.
SWIN_L: dict[str, Any] = {"embed_dim": 192, "depths": [2, 2, 18, 2], "num_heads": [6, 12, 24, 48], "window_size": 12,
                          "image_size": 1024}
VIT_L: dict[str, Any] = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                         "intermediate_size": 4096, "image_size": 224, "patch_size": 16}


def _swin_standin() -> Any:
    """BiRefNet stand-in: its Swin-L backbone at 1024x1024 plus a light head to a 1-channel
    1024x1024 logit map. BiRefNet's decoder is NOT included, so the time is a lower bound of
    the real model's (issue 6 anchor: Swin-L encoder fp16 on an H100, 76 images/s)."""
    import torch
    from transformers import SwinConfig, SwinModel

    class SwinSegmentation(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            config = SwinConfig(**SWIN_L)
            self.backbone = SwinModel(config, add_pooling_layer=False)
            self.head = torch.nn.Sequential(torch.nn.Conv2d(config.hidden_size, 64, 1), torch.nn.ReLU(), torch.nn.Conv2d(64, 1, 1))

        def forward(self, x: Any) -> list[Any]:
            hidden = self.backbone(pixel_values=x).last_hidden_state  # (B, 32*32, 1536)
            side = int(hidden.shape[1] ** 0.5)
            grid = hidden.transpose(1, 2).reshape(hidden.shape[0], -1, side, side)
            # A list of side outputs, the last at full resolution, like BiRefNet.
            return [torch.nn.functional.interpolate(self.head(grid), size=x.shape[-2:], mode="bilinear")]

    return SwinSegmentation().eval()


def _vit_large_random() -> tuple[Any, Any]:
    """ViT-L/16 at 224 (google/vit-large-patch16-224's architecture), random weights, and its processor."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(**VIT_L)
    return ViTModel(config, add_pooling_layer=False).eval(), ViTImageProcessor()


@register
class RmbgTargetStandIn(RmbgCutout):
    """`rmbg`'s code path with a Swin-L encoder at 1024 px and random weights (see _swin_standin)."""

    name = "rmbg-target-standin"

    def load(self, settings: dict[str, Any], device: str) -> BatchNet:
        return _standin_cutout(device)


@register
class VitTargetStandIn(VitEmbed):
    """`vit`'s code path with ViT-L/16 at 224 and random weights (see _vit_large_random)."""

    name = "vit-target-standin"

    def load(self, settings: dict[str, Any], device: str) -> BatchNet:
        return _standin_embed(settings.get("pooling", "cls"), device)


@functools.cache
def _standin_cutout(device: str) -> BatchNet:
    return rmbg_batch_net(_swin_standin(), device)


@functools.cache
def _standin_embed(pooling: str, device: str) -> BatchNet:
    return vit_batch_net(*_vit_large_random(), pooling, device)[0]


def _raw_rate(net: BatchNet, image: Any, batch_size: int, *, seconds: float = 2.0) -> float:
    """Images/s of the network alone on a ready-made device batch, after a warm-up."""
    import torch

    cuda = net.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    x = net.collate([net.prepare(image)] * batch_size)
    with torch.inference_mode():
        for _ in range(3 if cuda else 1):  # kernel selection, lazy initialisation
            net.run(x)
        sync()
        runs, start = 0, time.perf_counter()
        while runs == 0 or time.perf_counter() - start < seconds:
            net.run(x)
            sync()
            runs += 1
    return runs * batch_size / (time.perf_counter() - start)


def _raw_rate_onnx(session: Any, *, seconds: float = 2.0) -> float:
    """Images/s of an ONNX session alone (one image per call at the model's input size: 320x320 for
    rembg's u2netp/u2net, 1024x1024 for isnet)."""
    import numpy as np

    inner = session.inner_session
    shape = tuple(d if isinstance(d, int) else 1 for d in inner.get_inputs()[0].shape)
    feed = {inner.get_inputs()[0].name: np.random.default_rng(0).random(shape, dtype=np.float32)}
    inner.run(None, feed)
    runs, start = 0, time.perf_counter()
    while runs == 0 or time.perf_counter() - start < seconds:
        inner.run(None, feed)
        runs += 1
    return runs / (time.perf_counter() - start)


_IMPORTS: dict[str, float] = {}


def _import_seconds(modules: str) -> float:
    """Seconds a fresh Python process takes to import what a chunk job of the stage imports."""
    if modules not in _IMPORTS:
        _IMPORTS[modules] = _timed(lambda: subprocess.run([sys.executable, "-c", f"import {modules}"], check=True))
    return _IMPORTS[modules]


def _model_rows(label: str, *, n: int, images: int, pipeline: float, failed: int, batch: int, raw: float,
                raw_batch: int, load: float, imports: str, chunk: int) -> list[tuple[str, str]]:
    """The three lines of a model stage: pipeline vs raw forward, then load and start-up."""
    startup = _import_seconds(imports) + load
    job = startup + chunk * pipeline / n
    return [
        (label, f"pipeline {n / pipeline:.2f} assets/s = {images / pipeline:.2f} images/s "
                f"(batch {batch}{f'; {failed} assets failed' if failed else ''})"),
        ("", f"raw forward {raw:.2f} images/s (batch {raw_batch}, ready-made input) -> pipeline at "
             f"{images / pipeline / raw:.0%} of raw"),
        ("", f"model load {load:.1f} s; start-up {startup:.1f} s (imports {startup - load:.1f} s + load) = "
             f"{startup / job:.1%} of a {chunk}-asset chunk job"),
    ]


def _cutout_rows(label: str, backend: str, model: str, jobs: list, *, cut: dict, device: str, batch: int,
                 chunk: int, workers: int) -> list[tuple[str, str]]:
    """Time one cutout backend: load, raw forward, then make_cutouts."""
    import transformers  # noqa: F401 - imported before timing the load: counted with the start-up imports

    loaded: list[Any] = []
    seconds = _timed(lambda: loaded.append(get_backend("cutout", backend).load({"model": model}, device)))
    first = load_image(jobs[0][1], jobs[0][0])
    batched = isinstance(loaded[0], BatchNet)
    if batched:
        raw, raw_batch = _raw_rate(loaded[0], first, batch), batch
    else:
        raw, raw_batch = _raw_rate_onnx(loaded[0].session), 1
    results: list = []
    t = _timed(lambda: results.extend(make_cutouts(jobs, backend=backend, model=model, size=cut["size"], margin=cut["margin"],
                                                   max_pixels=cut["max_pixels"], device=device, batch_size=batch,
                                                   workers=workers)))
    imports = "dam3d.runtime.chunk, dam3d.stages.cutout, torch" + (", transformers" if batched else "")
    return _model_rows(label, n=len(jobs), images=len(jobs), pipeline=t,
                       failed=sum(e is not None and not isinstance(e, AssetWarning) for _, e in results),
                       batch=batch if batched else 1, raw=raw, raw_batch=raw_batch, load=seconds,
                       imports=imports, chunk=chunk)


def _embed_rows(label: str, spec: ModelSpec, jobs: list, *, background: tuple[int, int, int], device: str, batch: int,
                chunk: int, workers: int) -> list[tuple[str, str]]:
    """Time one embedding model: load, raw forward, then embed_assets."""
    import transformers  # noqa: F401 - imported before timing the load: counted with the start-up imports

    seconds = _timed(lambda: encoder(spec, device))
    first = load_image(jobs[0][1], jobs[0][0]).convert("RGB")
    raw = _raw_rate(encoder(spec, device), first, batch)
    images = sum(1 + sum(has_result(v) for v in views) for _, cutout, views, _ in jobs if has_result(cutout))
    results: list = []
    t = _timed(lambda: results.extend(embed_assets(jobs, spec, background=background, batch_size=batch, device=device,
                                                 workers=workers)))
    imports = "dam3d.runtime.chunk, dam3d.stages.embed, torch" + (", transformers" if get_backend("embed", spec.backend).gpu else "")
    return _model_rows(label, n=len(jobs), images=images, pipeline=t, failed=sum(e is not None for _, e in results),
                       batch=batch, raw=raw, raw_batch=batch, load=seconds, imports=imports, chunk=chunk)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dam3d.benchmarks.speed", description=__doc__.split("\n")[0])
    parser.add_argument("--catalogue", default=str(REPO / "sample" / "catalogue"))
    parser.add_argument("--config", default=str(REPO / "config.yaml"))
    parser.add_argument("--assets", type=int, default=None,
                        help="assets to run (default 12 on CPU, 64 on CUDA); catalogue images are cycled beyond its size")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per forward for cutout and embed (default: cutout.batch_size, embed.batch_size)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding/preprocessing threads, as a chunk job with that many threads uses "
                             "(default: max(2, torch threads))")
    parser.add_argument("--target", action="store_true",
                        help="also time the target architectures with random weights: BiRefNet's Swin-L encoder at "
                             "1024 px (+ a light head) for cutout, ViT-L/16 at 224 for embed")
    parser.add_argument("--models-only", action="store_true",
                        help="only the target architectures' cutout and embed stages (random weights), importing only "
                             "torch, transformers, Pillow, NumPy and PyYAML: for a bare CUDA machine")
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
        from dam3d.search.serve import search_latency

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
    device = torch_device(args.device)
    catalogue = load_catalogue(args.catalogue)
    n = args.assets or (64 if device.startswith("cuda") else 12)
    # Beyond the catalogue's size its images come round again under new asset ids.
    assets = [(a.asset_id if k < len(catalogue) else f"{a.asset_id}-r{k // len(catalogue)}", a.image)
              for k, a in ((k, catalogue[k % len(catalogue)]) for k in range(n))]
    if args.models_only:
        rows = _models_only_rows(assets, config, device=device, batch=args.batch_size, workers=args.workers)
        _print_table(rows, assets=n, catalogue=catalogue, path=args.catalogue, device=device, workers=args.workers)
        return 0
    from dam3d.stages.mesh import build_mesh
    from dam3d.stages.render import run_batch, view_names

    backend = resolve_backend(cut["backend"], cut["model"])
    (spec,) = resolve_models(embed["models"][:1], embed["presets"])
    views = view_names(render["views"])
    cut_batch = args.batch_size or cut.get("batch_size", 8)
    embed_batch = args.batch_size or embed["batch_size"]
    chunks = config.get("chunks", {})
    import torch

    workers = args.workers or max(2, torch.get_num_threads())
    background = tuple(config.get("background", (255, 255, 255)))
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="dam3d-bench-") as tmp:
        out = Path(tmp)
        jobs = [(a, image, layout.cutout(out, a)) for a, image in assets]
        rows += _cutout_rows(f"cutout ({backend}, {device})", backend, cut["model"], jobs, cut=cut, device=device,
                             batch=cut_batch, chunk=chunks.get("cutout", 64), workers=workers)
        if args.target:
            target_jobs = [(a, image, layout.cutout(out / "target", a)) for a, image in assets]
            rows += _cutout_rows(f"cutout (target: Swin-L 1024 stand-in, random, {device})", RmbgTargetStandIn.name,
                                 TARGET_CUTOUT, target_jobs, cut=cut, device=device, batch=cut_batch,
                                 chunk=chunks.get("cutout", 64), workers=workers)

        params = get_backend("mesh", mesh["backend"]).key(mesh)   # what the mesh rule hands the backend
        t = _timed(lambda: [build_mesh(a, layout.cutout(out, a), layout.mesh(out, a),
                                       mesh["backend"], params) for a, _ in assets])
        rows.append((f"mesh ({mesh['backend']})", f"{t / n:.3f} s/asset"))

        jobs = [(layout.mesh(out, a), layout.views(out, a)) for a, _ in assets]
        settings = {k: render[k] for k in ("views", "elevation", "resolution", "engine", "device", "samples", "fov", "aa")}
        one = run_batch(jobs[:1], **settings)
        batch = run_batch(jobs, **settings)
        rendering = sum(r.get("render_seconds") or 0.0 for r in batch.records)
        outside = 1.0 - rendering / batch.wall_seconds
        label = f"render ({render['engine']}, {render['resolution']} px, aa {render['aa']}, {len(views)} views)"
        rows.append((label, f"{one.wall_seconds:.2f} s for one asset, start-up included (one job per asset)"))
        rows.append(("", f"{(batch.wall_seconds - (batch.startup_seconds or 0)) / n:.3f} s/asset in a batch of {n}; "
                         f"start-up {batch.startup_seconds or 0:.2f} s; {outside:.0%} of the batch outside rendering"))

        jobs = [(a, layout.cutout(out, a), [layout.view(out, a, v) for v in views], layout.embedding(out, spec.name, a))
                for a, _ in assets]
        rows += _embed_rows(f"embed ({spec.name}, {device})", spec, jobs, background=background, device=device,
                            batch=embed_batch, chunk=chunks.get("embed", 64), workers=workers)
        if args.target:
            target = ModelSpec("vit-large-random", VitTargetStandIn.name, TARGET_EMBED, "cls")
            rows += _embed_rows(f"embed (target: ViT-L/16 224, random, {device})", target,
                                [(a, c, v, layout.embedding(out / "target", target.name, a)) for a, c, v, _ in jobs],
                                background=background, device=device, batch=embed_batch, chunk=chunks.get("embed", 64),
                                workers=workers)

    _print_table(rows, assets=n, catalogue=catalogue, path=args.catalogue, device=device, workers=workers)
    return 0


def _models_only_rows(assets: list[tuple[str, Path]], config: dict, *, device: str, batch: int | None,
                      workers: int | None) -> list[tuple[str, str]]:
    """The `--target` rows alone: the Swin-L cutout and ViT-L embed stand-ins through make_cutouts / embed_assets."""
    import torch

    workers = workers or max(2, torch.get_num_threads())
    chunks, cut = config.get("chunks", {}), config["cutout"]
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="dam3d-bench-") as tmp:
        out = Path(tmp)
        jobs = [(a, image, layout.cutout(out, a)) for a, image in assets]
        rows += _cutout_rows(f"cutout (target: Swin-L 1024 stand-in, random, {device})", RmbgTargetStandIn.name,
                             TARGET_CUTOUT, jobs, cut=cut, device=device, batch=batch or cut.get("batch_size", 8),
                             chunk=chunks.get("cutout", 64), workers=workers)
        target = ModelSpec("vit-large-random", VitTargetStandIn.name, TARGET_EMBED, "cls")
        embed_jobs = []
        for a, image in assets:
            photo = out / "photo" / f"{a}.png"
            photo.parent.mkdir(parents=True, exist_ok=True)
            load_image(image, a).convert("RGBA").save(photo)
            embed_jobs.append((a, photo, [photo] * config["render"]["views"], layout.embedding(out, target.name, a)))
        rows += _embed_rows(f"embed (target: ViT-L/16 224, random, {device})", target, embed_jobs,
                            background=tuple(config.get("background", (255, 255, 255))), device=device,
                            batch=batch or config["embed"]["batch_size"], chunk=chunks.get("embed", 64), workers=workers)
    return rows


def _print_table(rows: list[tuple[str, str]], *, assets: int, catalogue: list, path: str, device: str,
                 workers: int | None) -> None:
    import torch

    workers = workers or max(2, torch.get_num_threads())
    gpu = f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else ""
    print(f"dam3d bench: {assets} assets ({len(catalogue)} catalogue images{', cycled' if assets > len(catalogue) else ''}) "
          f"from {path}; device {device}{gpu}; torch threads {torch.get_num_threads()}, prefetch threads {workers}; "
          f"{platform.machine()}, {platform.python_version()}")
    print("  model stages: pipeline = make_cutouts / embed_assets as a chunk job runs them (decode, preprocessing, "
          "batched forward, writing); raw = the network alone on a ready-made batch")
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


if __name__ == "__main__":
    raise SystemExit(main())
