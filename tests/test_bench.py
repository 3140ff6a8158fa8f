"""The benchmark's pieces: the --target hook goes through the chunk-job path, and the row arithmetic."""

from __future__ import annotations

import functools
import re

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dam3d.benchmarks.speed as bench
from conftest import product_photo
from dam3d.runtime.backends import register
from dam3d.runtime.batching import BatchNet
from dam3d.stages.cutout import RmbgCutout, make_cutouts, rmbg_batch_net


class HalfPlane(torch.nn.Module):
    """Foreground = the left half, whatever the image: an easy mask to check."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        logits = torch.full((x.shape[0], 1, *x.shape[-2:]), -20.0, dtype=x.dtype)
        logits[..., : x.shape[-1] // 2] = 20.0
        return [logits * self.scale]


@register
class HalfPlaneCutout(RmbgCutout):
    """A stand-in registered as a backend, as the benchmark's target stand-ins are."""

    name = "test-half-plane"

    def load(self, settings: dict, device: str) -> BatchNet:
        return _half_plane(device)


@functools.cache
def _half_plane(device: str) -> BatchNet:
    return rmbg_batch_net(HalfPlane(), device)


def test_a_registered_net_runs_through_make_cutouts_and_the_raw_timer(tmp_path: Path) -> None:
    jobs = []
    for n, kind in enumerate(("red-vase", "blue-box", "stripes")):
        product_photo(kind, size=(260 + 40 * n, 260)).save(tmp_path / f"{kind}.jpg")
        jobs.append((kind, tmp_path / f"{kind}.jpg", tmp_path / "out" / f"{kind}.png"))
    results = list(make_cutouts(jobs, backend="test-half-plane", model="", size=64, margin=0.0, device="cpu", batch_size=2))
    assert results == [(kind, None) for kind, _, _ in jobs]
    # The left half of each photo, centred on the square: a tall object, transparent at the sides.
    alpha = np.asarray(Image.open(tmp_path / "out" / "red-vase.png").getchannel("A"))
    assert alpha[:, 32].min() > 200 and alpha[:, :5].max() == 0 and alpha[:, -5:].max() == 0

    assert bench._raw_rate(_half_plane("cpu"), product_photo("red-vase"), 2, seconds=0.05) > 0


def test_target_stand_ins_are_registered_backends() -> None:
    from dam3d.runtime.backends import backend

    assert backend("cutout", "rmbg-target-standin").gpu and backend("embed", "vit-target-standin").gpu


def test_model_rows_share_of_a_chunk_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(bench._IMPORTS, "m", 3.0)
    rows = bench._model_rows("embed (x)", n=10, images=90, pipeline=5.0, failed=1, batch=32, raw=36.0, raw_batch=32,
                             load=1.0, imports="m", chunk=64)
    text = "\n".join(v for _, v in rows)
    assert "2.00 assets/s = 18.00 images/s" in text and "1 assets failed" in text
    assert "pipeline at 50% of raw" in text
    # start-up 3 + 1 = 4 s against 64 assets at 0.5 s each: 4 / 36.
    assert f"= {4 / 36:.1%} of a 64-asset chunk job" in text


# What a bare CUDA machine lacks (it has torch, transformers, Pillow, NumPy, PyYAML): `--models-only` must not import them.
BARE_MACHINE_LACKS = ("rembg", "onnxruntime", "trimesh", "bpy", "snakemake", "usearch", "gradio", "scipy", "pyarrow")


def test_models_only_runs_where_only_the_model_packages_are(tmp_path: Path) -> None:
    """`--models-only` imports no rembg, trimesh, bpy, Snakemake...: it times the target stand-ins' cutout and embed stages."""
    import subprocess
    import sys

    from conftest import REPO

    catalogue = tmp_path / "catalogue"
    catalogue.mkdir()
    for kind in ("red-vase", "blue-box"):
        product_photo(kind).save(catalogue / f"{kind}.jpg")
    # The same code with tiny architectures, so that the CPU runs it in seconds.
    code = (
        "import sys\n"
        f"for name in {BARE_MACHINE_LACKS!r}: sys.modules[name] = None\n"
        "import dam3d.benchmarks.speed as speed\n"
        "speed.SWIN_L.update(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=8)\n"
        "speed.VIT_L.update(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)\n"
        f"sys.exit(speed.main(['--models-only', '--assets', '3', '--device', 'cpu', '--batch-size', '2', "
        f"'--catalogue', {str(catalogue)!r}]))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    lines = run.stdout.splitlines()
    assert "3 assets (2 catalogue images, cycled)" in lines[0], run.stdout
    rows = [line.strip() for line in lines[2:]]
    assert rows[0].startswith("cutout (target: Swin-L 1024 stand-in, random, cpu)  pipeline") and "images/s" in rows[0]
    # 3 assets x (1 photo + 8 views) through the ViT stand-in.
    embed = next(r for r in rows if r.startswith("embed (target: ViT-L/16 224, random, cpu)"))
    assets, images = (float(x) for x in re.findall(r"([\d.]+) (?:assets|images)/s", embed))
    assert images == pytest.approx(9 * assets, rel=0.01), embed
    assert not any(r.startswith(("mesh", "render")) for r in rows), run.stdout
