from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dam3d.catalogue import SAFE_ID, CatalogueError, load_catalogue, safe_id


def test_plain_skus_are_kept() -> None:
    assert safe_id("CHAIR-0001") == "CHAIR-0001"
    assert safe_id("sku_12.v2") == "sku_12.v2"


@pytest.mark.parametrize("sku", ["LAMP 0007", "a/b", "Chaise Élégante", "椅子", "../etc", "x*y?", " lead"])
def test_unsafe_skus_map_to_safe_distinct_stable_ids(sku: str) -> None:
    mapped = safe_id(sku)
    assert SAFE_ID.fullmatch(mapped)
    assert mapped != sku
    assert safe_id(sku) == mapped


def test_skus_that_normalise_alike_stay_apart() -> None:
    assert safe_id("Lamp 7") != safe_id("Lamp_7") != safe_id("Lamp/7")
    assert safe_id("Lamp 7").startswith("Lamp_7-")


def test_folder_catalogue(tmp_path: Path) -> None:
    for name in ["B-2.jpg", "A 1.png", "notes.txt", ".hidden.jpg", "B-2.obj"]:
        (tmp_path / name).write_bytes(b"x")
    assets = load_catalogue(tmp_path)
    assert [a.sku for a in assets] == ["A 1", "B-2"]
    assert assets[0].asset_id.startswith("A_1-")
    assert assets[1].mesh == tmp_path / "B-2.obj"


def test_csv_manifest_keeps_metadata_and_text_skus(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "catalogue.csv").write_text("asset_id,image,brand,mesh\n000123,img/a.jpg,Acme,\nZ/9,img/b.jpg,Acme,img/b.glb\n")
    assets = {a.sku: a for a in load_catalogue(tmp_path / "catalogue.csv")}
    assert set(assets) == {"000123", "Z/9"}
    assert assets["000123"].image == tmp_path / "img" / "a.jpg"
    assert assets["000123"].metadata == {"brand": "Acme"}
    assert assets["000123"].mesh is None
    assert assets["Z/9"].mesh == tmp_path / "img" / "b.glb"


def test_parquet_manifest(tmp_path: Path) -> None:
    pq.write_table(pa.table({"asset_id": ["X1"], "image": ["/abs/x1.jpg"], "colour": ["red"]}), tmp_path / "c.parquet")
    (asset,) = load_catalogue(tmp_path / "c.parquet")
    assert asset.image == Path("/abs/x1.jpg") and asset.metadata == {"colour": "red"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("asset_id,image\nA,a.jpg\nA,b.jpg\n", "duplicate SKU 'A'"),
        ("sku,image\nA,a.jpg\n", "lacks column(s) ['asset_id']"),
        ("asset_id,image\nA,\n", "row 2: empty asset_id or image"),
    ],
)
def test_bad_manifests_are_rejected_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "c.csv").write_text(text)
    with pytest.raises(CatalogueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        load_catalogue(tmp_path / "c.csv")


def test_missing_and_empty_catalogues(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="not found"):
        load_catalogue(tmp_path / "nope")
    with pytest.raises(CatalogueError, match="no images"):
        load_catalogue(tmp_path)
