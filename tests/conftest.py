"""Shared fixtures: real images drawn with Pillow, the offline u2netp weights, tiny target models."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def u2net_home() -> Path:
    """The u2netp weights installed by setup.sh; tests use the real model, never a download."""
    home = Path(os.environ.get("U2NET_HOME", REPO / "models" / "u2net"))
    if not (home / "u2netp.onnx").exists():
        pytest.fail(f"u2netp weights missing in {home}: run ./setup.sh (or `dam3d install-weights u2netp`)")
    os.environ["U2NET_HOME"] = str(home)
    return home


def product_photo(kind: str, size: tuple[int, int] = (480, 400), background: tuple[int, int, int] = (245, 245, 245)) -> Image.Image:
    """A studio-style photo of a simple coloured object, distinct per `kind`."""
    img = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(img)
    w, h = size
    if kind == "red-vase":
        draw.ellipse((w * 0.35, h * 0.3, w * 0.65, h * 0.85), fill=(190, 30, 30))
        draw.rectangle((w * 0.45, h * 0.15, w * 0.55, h * 0.35), fill=(150, 20, 20))
    elif kind == "blue-box":
        draw.rectangle((w * 0.25, h * 0.3, w * 0.75, h * 0.8), fill=(30, 60, 200))
        draw.polygon([(w * 0.25, h * 0.3), (w * 0.4, h * 0.18), (w * 0.9, h * 0.18), (w * 0.75, h * 0.3)], fill=(80, 110, 230))
    elif kind == "green-lamp":
        draw.polygon([(w * 0.3, h * 0.45), (w * 0.5, h * 0.15), (w * 0.7, h * 0.45)], fill=(40, 160, 60))
        draw.rectangle((w * 0.48, h * 0.45, w * 0.52, h * 0.85), fill=(60, 60, 60))
        draw.ellipse((w * 0.38, h * 0.82, w * 0.62, h * 0.9), fill=(60, 60, 60))
    elif kind == "stripes":
        for i, colour in enumerate([(230, 180, 20), (20, 20, 20)] * 4):
            draw.rectangle((w * 0.2 + i * w * 0.075, h * 0.25, w * 0.2 + (i + 1) * w * 0.075, h * 0.8), fill=colour)
    else:
        raise ValueError(kind)
    return img


@pytest.fixture
def photos(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "catalogue"
    folder.mkdir()
    paths = {}
    for kind in ("red-vase", "blue-box", "green-lamp", "stripes"):
        paths[kind] = folder / f"{kind}.jpg"
        product_photo(kind).save(paths[kind], quality=92)
    return paths


def bad_files(folder: Path) -> dict[str, Path]:
    """One file per kind of awkward input named in the issue; which ones must fail is up to the test."""
    folder.mkdir(parents=True, exist_ok=True)
    base = product_photo("red-vase")
    files = {}
    files["corrupt"] = folder / "corrupt.jpg"
    data = bytearray((lambda p: (base.save(p, quality=90), p.read_bytes())[1])(folder / "tmp.jpg"))
    (folder / "tmp.jpg").unlink()
    files["corrupt"].write_bytes(bytes(data[: len(data) // 3]))
    files["empty"] = folder / "empty.png"
    files["empty"].write_bytes(b"")
    files["not-image"] = folder / "notes.png"
    files["not-image"].write_text("this is a text file, not a PNG\n")
    files["cmyk"] = folder / "cmyk.jpg"
    product_photo("blue-box").convert("CMYK").save(files["cmyk"])
    files["16bit"] = folder / "sixteen.png"
    grey16 = (np.asarray(product_photo("green-lamp").convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(files["16bit"])
    files["palette"] = folder / "palette.png"
    product_photo("stripes").convert("P", palette=Image.ADAPTIVE, colors=16).save(files["palette"])
    files["transparent"] = folder / "transparent.png"
    rgba = product_photo("blue-box").convert("RGBA")
    alpha = Image.new("L", rgba.size, 0)
    ImageDraw.Draw(alpha).rectangle((100, 100, 380, 330), fill=255)
    rgba.putalpha(alpha)
    rgba.save(files["transparent"])
    files["huge"] = folder / "huge.png"
    # Mode "1" keeps a 12000x12000 image at 18 MB in memory and a few KB on disk.
    Image.new("1", (12000, 12000), 1).save(files["huge"])
    return files


def only(results):  # noqa: ANN001, ANN201 - an iterator of (asset, error)
    """Run a chunk function (make_cutouts, embed_assets) for one asset: raise its error, if any."""
    from dam3d.errors import AssetWarning

    [(_, error)] = list(results)
    if error is not None and not isinstance(error, AssetWarning):  # a warning: done, with a note
        raise error
