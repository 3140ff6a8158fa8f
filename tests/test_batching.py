"""Chunk jobs: batched forwards that halve on CUDA out-of-memory, prefetching, and the batch
paths of the cutout and embed stages giving what the one-asset paths give."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import dam3d.stages.cutout
import dam3d.stages.embed
from conftest import REPO, bad_files, only, product_photo
from dam3d.runtime.batching import Halving, prefetch, run_halving
from dam3d.stages.cutout import check_subject, cut_out, make_cutouts, mask_fn
from dam3d.stages.embed import ModelSpec, embed_assets, embed_images
from dam3d.errors import AssetError
from dam3d.stages.images import flatten, load_image
from tiny_models import make_tiny_birefnet

MOBILENET = ModelSpec("mobilenetv2", "mobilenetv2")


def oom_above(limit: int, calls: list[int]):  # noqa: ANN201 - a fake forward
    def forward(batch: list[int]) -> list[int]:
        calls.append(len(batch))
        if len(batch) > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [x * 10 for x in batch]

    return forward


def test_run_halving_halves_on_oom_keeps_order_and_the_smaller_size(capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[int] = []
    assert run_halving(oom_above(2, calls), list(range(11)), 8, label="embed x") == [x * 10 for x in range(11)]
    # 8 and 4 fail; from then on 2 for the rest of the run (never 8 again), the last one alone.
    assert calls == [8, 4, 2, 2, 2, 2, 2, 1]
    assert capsys.readouterr().err.splitlines() == [
        "embed x: CUDA out of memory at batch 8; retrying with 4",
        "embed x: CUDA out of memory at batch 4; retrying with 2",
    ]
    # A Halving keeps its reduced size across calls (one per batch of a chunk job).
    halving, calls = Halving(8, label="cutout"), []
    assert halving(oom_above(4, calls), list(range(8))) == [x * 10 for x in range(8)]
    assert halving(oom_above(4, calls), list(range(8))) == [x * 10 for x in range(8)]
    assert calls == [8, 4, 4, 4, 4] and halving.size == 4


def test_run_halving_reraises_at_one_and_never_hides_other_errors() -> None:
    calls: list[int] = []
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_halving(oom_above(0, calls), [1, 2, 3, 4], 4, label="t")
    assert calls == [4, 2, 1]

    def plain_oom_message(batch: list[int]) -> list[int]:  # older torch: a RuntimeError
        if len(batch) > 1:
            raise RuntimeError("CUDA error: out of memory")
        return batch

    assert run_halving(plain_oom_message, [1, 2, 3], 4, label="t") == [1, 2, 3]
    calls = []

    def broken(batch: list[int]) -> list[int]:
        calls.append(len(batch))
        raise ValueError("shape mismatch")

    with pytest.raises(ValueError):
        run_halving(broken, [1, 2, 3, 4], 4, label="t")
    assert calls == [4]


def test_prefetch_keeps_order_returns_errors_and_runs_ahead() -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def slow_square(x: int) -> int:
        time.sleep(0.02 * (x % 3))  # finish out of order
        with lock:
            seen.append(x)
        if x == 3:
            raise ValueError("bad item 3")
        return x * x

    out = []
    for item, result in prefetch(range(8), slow_square, workers=2, ahead=4):
        if item == 0:
            time.sleep(0.2)  # the consumer is busy: the pool must prepare the next items meanwhile
            assert len(seen) >= 4
        out.append((item, result))
    assert [item for item, _ in out] == list(range(8))
    assert isinstance(out[3][1], ValueError) and "bad item 3" in str(out[3][1])
    assert [r for i, r in out if i != 3] == [i * i for i in range(8) if i != 3]


def test_make_cutouts_u2netp_reports_each_bad_asset_alone(tmp_path: Path) -> None:
    catalogue = sorted((REPO / "sample" / "catalogue").glob("*.jpg"))[:3]
    bad = bad_files(tmp_path / "bad")
    jobs = [(p.stem, p, tmp_path / "out" / f"{p.stem}.png") for p in catalogue]
    jobs.insert(1, ("BROKEN", bad["corrupt"], tmp_path / "out" / "BROKEN.png"))
    jobs.append(("GLASS", bad["transparent"], tmp_path / "out" / "GLASS.png"))
    results = dict(make_cutouts(jobs, backend="u2netp", model="", size=128, batch_size=2))
    assert set(results) == {j[0] for j in jobs}
    assert isinstance(results.pop("BROKEN"), AssetError) and not (tmp_path / "out" / "BROKEN.png").exists()
    assert results == {a: None for a in results}
    # Each written cutout is exactly what the one-asset path writes.
    for asset, path, out in jobs:
        if asset != "BROKEN":
            only(make_cutouts([(asset, path, tmp_path / "single.png")], backend="u2netp", model="", size=128,
                              batch_size=1))
            np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "single.png")))
    assert Image.open(tmp_path / "out" / "GLASS.png").mode == "RGBA"


def test_make_cutouts_rmbg_batches_give_the_single_image_masks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)  # the random weights decide how much structure the masks have: fix them
    folder = str(make_tiny_birefnet(tmp_path / "tiny_birefnet_batch"))
    # Random init gives near-flat maps around 0.5; scaled-up weights give masks with structure,
    # so that the comparisons below can fail.
    weights = Path(folder) / "model.safetensors"
    save_file({k: v * 20 for k, v in load_file(weights).items()}, weights, metadata={"format": "pt"})
    sizes = [(480, 400), (300, 200), (640, 360), (256, 256), (400, 500)]
    kinds = ["red-vase", "blue-box", "green-lamp", "stripes", "red-vase"]
    jobs = []
    for n, (kind, size) in enumerate(zip(kinds, sizes)):
        path = tmp_path / f"{n}-{kind}.jpg"
        product_photo(kind, size=size, background=(30 * n, 200, 240 - 40 * n)).save(path, quality=95)
        jobs.append((f"A{n}", path, tmp_path / "out" / f"A{n}.png"))

    calls: list[int] = []

    class Recording(Halving):
        def __call__(self, forward, items):  # noqa: ANN001, ANN204
            calls.append(len(items))
            return super().__call__(forward, items)

    monkeypatch.setattr(dam3d.stages.cutout, "Halving", Recording)
    results = list(make_cutouts(jobs, backend="rmbg", model=folder, size=96, device="cpu", batch_size=2))
    assert calls == [2, 2, 1]  # one forward per batch of 2, the rest alone
    assert [a for a, _ in results] == [j[0] for j in jobs]

    # The network's probability maps: a batch of 5 equals 5 single forwards, and they are not flat.
    net = dam3d.stages.cutout._rmbg_net(folder, "cpu")
    images = [load_image(path, asset) for asset, path, _ in jobs]
    batched = net.forward([net.prepare(im) for im in images])
    single = np.concatenate([net([im]) for im in images])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert batched.shape == (5, 1024, 1024) and batched.std() > 0.05

    # The written cutouts equal the single-image mask fn's (random weights may find no foreground:
    # then both paths must report it).
    mask = mask_fn("rmbg", model=folder, device="cpu")
    for (asset, _, out), image, (_, error) in zip(jobs, images, results):
        try:
            # The chunk path also refuses photos with nothing to find (check_subject): so does this one.
            check_subject(image, mask(image), asset)
            expected = np.asarray(cut_out(image, asset, mask=mask, size=96, margin=0.08))
        except AssetError:
            assert isinstance(error, AssetError)
            continue
        assert error is None
        np.testing.assert_allclose(np.asarray(Image.open(out), dtype=int), expected.astype(int), atol=2)


def test_embed_assets_batches_across_assets_like_one_asset_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def asset_files(name: str, kind: str, views: list[str]) -> tuple[str, Path, list[Path], Path]:
        folder = tmp_path / name
        folder.mkdir()
        cutout = folder / "cutout.png"
        product_photo(kind).convert("RGBA").save(cutout)
        paths = []
        for n, state in enumerate(views):
            path = folder / f"az{n * 45:03d}.png"
            if state == "ok":
                product_photo(kind, size=(256 - 20 * n, 256)).save(path)
            elif state == "failed":
                path.write_bytes(b"")  # placeholder of a failed render
            else:
                path.write_text("not a png")
            paths.append(path)
        return name, cutout, paths, tmp_path / "out" / f"{name}.npz"

    vase = asset_files("VASE", "red-vase", ["ok", "failed", "ok"])
    nocut = asset_files("NOCUT", "stripes", ["ok", "ok", "ok"])
    nocut[1].write_bytes(b"")  # the cutout stage failed for this asset
    lamp = asset_files("LAMP", "green-lamp", ["ok", "ok", "ok"])
    broken = asset_files("BROKEN", "blue-box", ["ok", "corrupt", "ok"])
    box = asset_files("BOX", "blue-box", ["ok", "ok", "ok"])
    jobs = [vase, nocut, lamp, broken, box]

    calls: list[int] = []

    class Recording(Halving):
        def __call__(self, forward, items):  # noqa: ANN001, ANN204
            calls.append(len(items))
            return super().__call__(forward, items)

    monkeypatch.setattr(dam3d.stages.embed, "Halving", Recording)
    results = dict(embed_assets(jobs, MOBILENET, batch_size=4, device="cpu"))
    assert set(results) == {"VASE", "NOCUT", "LAMP", "BROKEN", "BOX"}
    assert isinstance(results["NOCUT"], AssetError) and "no cutout" in str(results["NOCUT"])
    assert isinstance(results["BROKEN"], AssetError) and "not an image" in str(results["BROKEN"])
    assert not (tmp_path / "out" / "NOCUT.npz").exists() and not (tmp_path / "out" / "BROKEN.npz").exists()
    # Forwards of 4 images: VASE 3 + LAMP 1 | LAMP 3 + BROKEN's cutout (its bad view comes later) | BOX 4.
    assert calls == [4, 4, 4]

    for name, cutout, views, out in (vase, lamp, box):
        assert results[name] is None
        data = np.load(out)
        ok = [v.stat().st_size > 0 for v in views]
        assert data["view_ok"].tolist() == ok and data["model"] == "mobilenetv2"
        assert data["views"].tolist() == [v.stem for v in views]
        # Reference: the asset's images embedded alone, one image per forward.
        images = [flatten(load_image(p, name), (255, 255, 255)) for p in [cutout, *(v for v, k in zip(views, ok) if k)]]
        expected = embed_images(MOBILENET, images, batch_size=1, device="cpu")
        np.testing.assert_allclose(data["vec2d"], expected[0], atol=1e-5)
        np.testing.assert_allclose(data["vec3d"][ok], expected[1:], atol=1e-5)
        assert not data["vec3d"][[not k for k in ok]].any()
        np.testing.assert_allclose(np.linalg.norm(data["vec3d"][ok], axis=1), 1.0, atol=1e-5)
    assert not np.allclose(np.load(vase[3])["vec2d"], np.load(lamp[3])["vec2d"])
