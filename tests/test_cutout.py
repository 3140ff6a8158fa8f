from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import only, product_photo
from dam3d.stages.cutout import crop_square, cut_out, make_cutouts, mask_fn, model_available, resolve_backend
from dam3d.errors import AssetError
from tiny_models import make_tiny_birefnet


def alpha_box(path: Path) -> tuple[int, int, int, int]:
    alpha = np.asarray(Image.open(path).getchannel("A"))
    ys, xs = np.nonzero(alpha > 128)
    return xs.min(), ys.min(), xs.max(), ys.max()


def test_u2netp_cutout_is_square_recentred_and_transparent(tmp_path: Path) -> None:
    # The object sits off-centre in a wide photo; the cutout must centre it with the margin.
    photo = Image.new("RGB", (800, 400), (250, 250, 250))
    photo.paste(product_photo("red-vase", size=(200, 300), background=(250, 250, 250)), (560, 50))
    photo.save(tmp_path / "vase.jpg")
    only(make_cutouts([("VASE-1", tmp_path / "vase.jpg", tmp_path / "out.png")], backend="u2netp", model="", size=256,
                      margin=0.1))
    out = Image.open(tmp_path / "out.png")
    assert out.mode == "RGBA" and out.size == (256, 256)
    x0, y0, x1, y1 = alpha_box(tmp_path / "out.png")
    assert abs((x0 + x1) / 2 - 128) <= 4 and abs((y0 + y1) / 2 - 128) <= 4
    # The longer side spans the square minus the margins (10% each side).
    assert 256 * 0.8 - 8 <= max(x1 - x0, y1 - y0) <= 256 * 0.8 + 2
    assert out.getpixel((2, 2))[3] == 0
    r, g, b, a = out.getpixel((128, 150))
    assert a > 240 and r > 150 and g < 80


def test_transparent_input_keeps_its_own_alpha(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    rgba.paste((20, 200, 20, 255), (50, 100, 150, 200))

    def never(_: Image.Image) -> Image.Image:
        raise AssertionError("segmenter must not run on an image that is already cut out")

    out = cut_out(rgba, "X", mask=never, size=64, margin=0.0)
    assert out.getbbox() is not None and out.getpixel((32, 32)) == (20, 200, 20, 255)


def test_empty_mask_is_an_asset_error() -> None:
    image = Image.new("RGB", (50, 50), "white")
    with pytest.raises(AssetError, match="no foreground found"):
        crop_square(image, Image.new("L", (50, 50), 0), size=32, margin=0.1, asset="BLANK")


def test_rmbg_backend_loads_birefnet_remote_code_from_a_local_folder(tmp_path: Path) -> None:
    folder = make_tiny_birefnet(tmp_path / "tiny_birefnet")
    assert model_available(str(folder))
    assert resolve_backend("auto", str(folder)) == "rmbg"
    mask = mask_fn("rmbg", model=str(folder), device="cpu")
    photo = product_photo("blue-box", size=(300, 200))
    m = mask(photo)
    # Resized back to the photo, a probability map in 0..255 (random weights: values, not quality).
    assert m.mode == "L" and m.size == (300, 200)
    assert mask_fn("rmbg", model=str(folder), device="cpu") is mask  # loaded once per process
    product_photo("blue-box").save(tmp_path / "box.jpg")
    # A random network may mask out everything; either result must be a clean outcome.
    try:
        only(make_cutouts([("BOX", tmp_path / "box.jpg", tmp_path / "box.png")], backend="rmbg", model=str(folder),
                          size=64))
        assert Image.open(tmp_path / "box.png").size == (64, 64)
    except AssetError as exc:  # check_subject: all or nothing masked
        assert "no foreground" in exc.reason or "took the whole photo" in exc.reason


def test_auto_falls_back_offline_and_strict_refuses(tmp_path: Path) -> None:
    assert not model_available("briaai/RMBG-2.0-not-cached")
    assert resolve_backend("auto", str(tmp_path / "missing")) == "u2netp"
    with pytest.raises(RuntimeError, match="not available offline"):
        resolve_backend("auto", str(tmp_path / "missing"), strict=True)
    assert resolve_backend("u2netp", "whatever", strict=True) == "u2netp"


def test_bad_catalogue_image_names_the_asset(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(AssetError) as caught:
        only(make_cutouts([("SKU 9", tmp_path / "x.jpg", tmp_path / "x.png")], backend="u2netp", model=""))
    assert caught.value.asset == "SKU 9" and not (tmp_path / "x.png").exists()


def test_check_subject_thresholds_each_reached() -> None:
    """Each 'nothing to find' rule of check_subject, reached with a mask made for it; a real photo passes."""
    from PIL import ImageDraw

    from dam3d.stages.cutout import MIN_SOLID_SHARE, WHOLE_FRAME_SHARE, check_subject
    from dam3d.errors import AssetError

    photo = product_photo("blue-box")
    w, h = photo.size
    good = Image.new("L", photo.size, 0)
    ImageDraw.Draw(good).rectangle((w * 0.25, h * 0.2, w * 0.9, h * 0.8), fill=255)
    check_subject(photo, good, "ok")  # a product on a background: no error

    whole = Image.new("L", photo.size, 255)
    ImageDraw.Draw(whole).rectangle((0, 0, 2, 2), fill=0)  # 99.99 % masked: over WHOLE_FRAME_SHARE
    assert WHOLE_FRAME_SHARE < 0.999
    with pytest.raises(AssetError, match="took the whole photo as the product"):
        check_subject(photo, whole, "whole")

    speck = Image.new("L", photo.size, 0)
    speck.putpixel((w // 2, h // 2), 255)  # one sure pixel: under MIN_SOLID_SHARE
    assert 1 / (256 * 256) < MIN_SOLID_SHARE
    with pytest.raises(AssetError, match="no foreground found"):
        check_subject(photo, speck, "speck")

    with pytest.raises(AssetError, match="blank"):
        check_subject(Image.new("RGB", (300, 200), (250, 250, 250)), good.resize((300, 200)), "blank")
    grey = Image.new("RGB", photo.size, (200, 200, 200))
    ImageDraw.Draw(grey).rectangle((w * 0.3, h * 0.3, w * 0.7, h * 0.7), fill=(170, 170, 170))
    with pytest.raises(AssetError, match="placeholder graphic"):
        check_subject(grey, good, "placeholder")
    # The same flat grey object on studio white is a product (chrome, steel): kept.
    on_white = Image.new("RGB", photo.size, (255, 255, 255))
    ImageDraw.Draw(on_white).rectangle((w * 0.45, h * 0.3, w * 0.55, h * 0.7), fill=(200, 200, 200))
    check_subject(on_white, good, "grey product on white")
    # The same grey tile with a little colour noise, as a camera gives, is a photo.
    noisy = np.asarray(grey, dtype=np.int16) + np.random.default_rng(0).integers(-3, 4, (h, w, 3))
    check_subject(Image.fromarray(noisy.clip(0, 255).astype(np.uint8)), good, "grey product")
