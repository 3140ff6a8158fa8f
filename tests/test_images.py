from __future__ import annotations

from pathlib import Path

import pytest

from conftest import bad_files
from dam3d.errors import AssetError
from dam3d.stages.images import flatten, load_image


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return bad_files(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("corrupt", "corrupt or truncated"),
        ("empty", "empty (0 bytes)"),
        ("not-image", "not an image file"),
        ("huge", "12000x12000 (144 MP), over the limit"),
    ],
)
def test_unusable_files_get_a_one_line_reason_naming_the_asset(files: dict[str, Path], kind: str, reason: str) -> None:
    with pytest.raises(AssetError) as caught:
        load_image(files[kind], f"SKU-{kind}")
    assert caught.value.asset == f"SKU-{kind}"
    assert reason in caught.value.reason
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith(f"SKU-{kind}: cutout: ")


@pytest.mark.parametrize(("kind", "mode"), [("cmyk", "RGB"), ("16bit", "RGB"), ("palette", "RGB"), ("transparent", "RGBA")])
def test_awkward_but_valid_files_become_8bit(files: dict[str, Path], kind: str, mode: str) -> None:
    img = load_image(files[kind], kind)
    assert img.mode == mode
    assert img.size == (480, 400)


def test_sixteen_bit_keeps_its_contrast(files: dict[str, Path]) -> None:
    lo, hi = load_image(files["16bit"], "x").convert("L").getextrema()
    # Naive conversion clips every value above 255 to white; scaling keeps dark and light apart.
    assert lo < 80 and hi > 200


def test_huge_limit_is_configurable(files: dict[str, Path]) -> None:
    assert load_image(files["huge"], "x", max_pixels=200_000_000).size == (12000, 12000)


def test_flatten_composites_on_background(files: dict[str, Path]) -> None:
    flat = flatten(load_image(files["transparent"], "x"), (10, 20, 30))
    assert flat.mode == "RGB"
    assert flat.getpixel((5, 5)) == (10, 20, 30)
