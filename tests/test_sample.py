"""The committed sample catalogue (`sample/`) is complete and consistent.

It is rendered by tools/make_sample.py; this only checks the result, it never re-renders.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

SAMPLE = Path(__file__).resolve().parent.parent / "sample"
CATALOGUE_SIZE = (512, 512)
QUERY_SIZE = (640, 480)


def _catalogue() -> dict[str, Path]:
    """SKU (file stem, as the folder catalogue reads it) -> image."""
    return {p.stem: p for p in sorted((SAMPLE / "catalogue").glob("*.jpg"))}


def _queries() -> list[dict[str, str]]:
    with (SAMPLE / "queries.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_catalogue_has_enough_skus() -> None:
    assert len(_catalogue()) >= 12


def test_sku_ids_exercise_id_handling() -> None:
    # At least one SKU needs the safe-id mapping (a space), the rest are plain.
    skus = list(_catalogue())
    assert any(" " in sku for sku in skus)
    assert len(set(skus)) == len(skus)


@pytest.mark.parametrize("path", sorted((SAMPLE / "catalogue").glob("*.jpg")), ids=lambda p: p.name)
def test_catalogue_images_open_at_stated_size(path: Path) -> None:
    with Image.open(path) as im:
        im.load()  # decodes fully: catches a truncated file, not only a bad header
        assert im.format == "JPEG"
        assert im.mode == "RGB"
        assert im.size == CATALOGUE_SIZE
        # Studio photo: the corners are plain light background.
        corner = im.getpixel((2, 2))
        assert min(corner) >= 230, corner


def test_queries_csv_columns_and_rows() -> None:
    with (SAMPLE / "queries.csv").open(newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    assert header == ["query", "sku"]
    rows = _queries()
    assert len(rows) >= 4
    assert len({row["query"] for row in rows}) == len(rows)


def test_every_query_sku_is_in_the_catalogue() -> None:
    catalogue = _catalogue()
    for row in _queries():
        assert row["sku"] in catalogue, row


def test_query_images_open_at_stated_size() -> None:
    for row in _queries():
        path = SAMPLE / row["query"]  # relative to the csv's folder
        assert path.is_file(), row
        with Image.open(path) as im:
            im.load()
            assert im.format == "JPEG"
            assert im.size == QUERY_SIZE
            # Customer photo: not on the studio's white background.
            assert min(im.getpixel((2, 2))) < 230 or min(im.getpixel((2, im.height - 3))) < 230


def test_no_stray_query_images() -> None:
    listed = {Path(row["query"]).name for row in _queries()}
    on_disk = {p.name for p in (SAMPLE / "queries").iterdir()}
    assert on_disk == listed


def test_licence_names_source_and_every_sku() -> None:
    text = (SAMPLE / "LICENSE.md").read_text(encoding="utf-8")
    assert "sweethome3d-furniture" in text
    assert "CC0" in text
    for sku in _catalogue():
        assert f"| {sku} |" in text, sku


def test_sample_stays_small() -> None:
    total = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert total < 1_500_000, total
