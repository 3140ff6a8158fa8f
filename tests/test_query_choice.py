"""The query-side choice: which object of a cluttered photo is searched with, or the whole photo, and why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import product_photo
from dam3d import cli
from dam3d.search.query import SPECK_SHARE, Choice, select_object


def mask_with(size: tuple[int, int], *boxes: tuple[float, float, float, float]) -> Image.Image:
    """An L mask (0/255) with a filled ellipse in each box (shares of width and height)."""
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    w, h = size
    for x0, y0, x1, y1 in boxes:
        draw.ellipse((x0 * w, y0 * h, x1 * w, y1 * h), fill=255)
    return mask


def box(mask: Image.Image) -> tuple[int, int, int, int]:
    return Image.fromarray((np.asarray(mask) > 16).astype(np.uint8) * 255).getbbox()


def test_big_object_is_kept_and_a_distant_small_one_dropped() -> None:
    mask = mask_with((640, 480), (0.3, 0.25, 0.7, 0.85), (0.85, 0.05, 0.95, 0.2))  # product + a cup in the corner
    kept, choice = select_object(mask)
    assert choice.kind == "largest object" and "kept 1 of 2 objects" in choice.reason
    assert kept is not None and box(kept) == box(mask_with((640, 480), (0.3, 0.25, 0.7, 0.85)))
    assert choice.note and choice.note.startswith("largest object: ")


def test_closeness_to_the_centre_outweighs_a_slightly_larger_object_at_the_edge() -> None:
    # The edge object is 20 % larger but sits in a corner (weight ~0.55); the centred one is kept.
    centred = (0.4, 0.35, 0.6, 0.65)
    mask = mask_with((600, 600), centred, (0.0, 0.0, 0.22, 0.33))
    kept, choice = select_object(mask)
    assert choice.kind == "largest object" and box(kept) == box(mask_with((600, 600), centred))


def test_one_object_with_specks_is_a_cutout_without_the_specks() -> None:
    mask = mask_with((400, 400), (0.25, 0.25, 0.75, 0.75))
    mask.putpixel((5, 5), 255)  # a speck, far under SPECK_SHARE
    assert 1 / (400 * 400) < SPECK_SHARE
    kept, choice = select_object(mask)
    assert choice == Choice("cutout", choice.reason) and "1 speck(s) dropped" in choice.reason
    assert choice.note is None and kept.getpixel((5, 5)) == 0 and box(kept)[0] >= 99


def test_empty_mask_and_sliver_fall_back_to_the_whole_photo() -> None:
    kept, choice = select_object(Image.new("L", (300, 200), 0))
    assert kept is None and choice.kind == "whole photo" and "found nothing" in choice.reason
    sliver = Image.new("L", (300, 200), 0)
    ImageDraw.Draw(sliver).rectangle((20, 100, 280, 102), fill=255)  # a table edge, 3 px high
    kept, choice = select_object(sliver)
    assert kept is None and choice.kind == "whole photo" and "sliver" in choice.reason


def dark_pixels(image: Image.Image) -> Image.Image:
    """A stand-in segmenter that, unlike u2netp, keeps every object: the pixels darker than the studio white."""
    return Image.fromarray(((np.asarray(image.convert("L")) < 200) * 255).astype(np.uint8), mode="L")


def test_search_json_says_what_was_searched_with(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`dam3d search --json` names the choice: a product with a small distant object next to it, an empty photo.

    The index is built with the real u2netp; the query's segmenter is a stand-in that finds
    both objects (u2netp itself leaves a small distractor out, and then there is nothing to choose).
    """
    import dam3d.stages.cutout
    from test_evaluate import real_index

    index_dir = real_index(tmp_path, ["red-vase", "blue-box"])
    monkeypatch.setattr(dam3d.stages.cutout, "mask_fn", lambda *a, **k: dark_pixels)
    photo = product_photo("red-vase", size=(640, 480))
    ImageDraw.Draw(photo).rectangle((540, 20, 620, 100), fill=(30, 60, 200))  # a small blue thing in the corner
    photo.save(tmp_path / "cluttered.png")
    Image.new("RGB", (320, 240), (250, 250, 250)).save(tmp_path / "empty.png")
    choices = {}
    for name in ("cluttered", "empty"):
        assert cli.main(["search", str(tmp_path / f"{name}.png"), "--index", str(index_dir), "--json", "-k", "2"]) == 0
        out = json.loads(capsys.readouterr().out)
        choices[name] = out["cutout"]
        if name == "cluttered":
            assert out["results"][0]["sku"] == "RED-VASE"
    assert choices["cluttered"]["choice"] == "largest object", choices
    assert choices["empty"] == {"choice": "whole photo",
                                "reason": "the cutout found nothing; searching with the whole photo"}, choices
