from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dam3d.catalogue import SAFE_ID, CatalogueError, load_catalogue, read_catalogue, safe_id

CASES = Path(__file__).parent / "data" / "realworld"


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
    catalogue = read_catalogue(tmp_path)
    assets = catalogue.assets
    assert [a.sku for a in assets] == ["A 1", "B-2"]
    assert assets[0].asset_id.startswith("A_1-")
    assert assets[1].mesh == tmp_path / "B-2.obj"
    # Never silent: the text file is listed with the reason; hidden files and paired meshes are not.
    [skipped] = catalogue.skipped
    assert skipped.name == "notes.txt" and "not a catalogue image type (.txt)" in skipped.reason


def test_avif_in_a_folder_is_an_asset_and_a_pillow_without_avif_fails_it_saying_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image, features

    from dam3d.stages.images import load_image

    avif = CASES / "11-avif-in-folder" / "CHAIR-0003.avif"
    assert "CHAIR-0003" in [a.sku for a in load_catalogue(avif.parent)]
    assert features.check("avif") and load_image(avif, "CHAIR-0003").size == (512, 512)  # this Pillow decodes it
    # Where Pillow cannot (another environment), the asset fails with the reason, never silently.
    monkeypatch.setattr(features, "check", lambda feature: False)
    monkeypatch.setattr(Image, "open", lambda *a, **k: (_ for _ in ()).throw(__import__("PIL").UnidentifiedImageError()))
    with pytest.raises(RuntimeError, match="this Pillow cannot decode AVIF"):  # tried again next run
        load_image(avif, "CHAIR-0003")


def test_semicolon_cp1252_manifest_as_excel_writes_it_keeps_text() -> None:
    assets = {a.sku: a for a in load_catalogue(CASES / "14-csv-semicolon" / "catalogue.csv")}
    assert set(assets) == {"CHAIR-0002", "FAN-0010", "SOFA-0006", "CHAIR-0003"}
    assert assets["CHAIR-0002"].metadata == {"Bezeichnung": "Stuhl blau", "Preis": "49,90"}
    assert assets["SOFA-0006"].metadata["Bezeichnung"] == "Sofa Größe L"  # cp1252, decoded
    assert assets["FAN-0010"].image == CASES / "14-csv-semicolon" / "images" / "FAN-0010.jpg"


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp1252"])
def test_manifest_delimiters_and_encodings(tmp_path: Path, delimiter: str, encoding: str) -> None:
    import csv
    import io

    text = io.StringIO()  # as a spreadsheet exports: quoted where a value holds the delimiter
    csv.writer(text, delimiter=delimiter).writerows([["asset_id", "image", "name"], ["000123", "a.jpg", "Crème 0,5 l"]])
    (tmp_path / "c.csv").write_bytes(text.getvalue().encode(encoding) + b"\r\n")
    [asset] = load_catalogue(tmp_path / "c.csv")
    assert (asset.sku, asset.metadata, asset.problem) == ("000123", {"name": "Crème 0,5 l"}, None)


def test_unusable_manifest_rows_are_assets_with_a_problem_or_skipped_rows(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("asset_id,image\nA,https://cdn.example.com/a.jpg\nB,\n,c.jpg\nD,{x}/d.jpg\n")
    catalogue = read_catalogue(tmp_path / "c.csv")
    problems = {a.sku: a.problem for a in catalogue.assets}
    assert "dam3d does not download images" in problems["A"] and "https://cdn.example.com/a.jpg" in problems["A"]
    assert problems["B"] == "manifest row 3 gives no image"
    assert problems["D"] is None  # braces are just characters of a path (not a Snakemake wildcard)
    assert [(s.name, s.reason) for s in catalogue.skipped] == [("c.csv row 4", "no asset_id (image c.jpg)")]


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
        ("asset_id;bild\nA;a.jpg\n", "found header ['asset_id', 'bild'] split by semicolon"),
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


def test_spreadsheet_oddities_fail_a_row_not_the_catalogue(tmp_path: Path) -> None:
    from dam3d.catalogue import file_digests

    # Excel's "CSV (Macintosh)" ends lines with a bare CR; a row with a stray extra value is skipped and listed;
    # a user's own column named "problem" is metadata, not a refusal.
    (tmp_path / "c.csv").write_bytes(b"asset_id;image;problem\rA;a.jpg;scratched box\rB;b.jpg;;extra\rC;;\r")
    catalogue = read_catalogue(tmp_path / "c.csv")
    assets = {a.sku: a for a in catalogue.assets}
    assert set(assets) == {"A", "C"} and assets["A"].problem is None
    assert assets["A"].metadata == {"problem": "scratched box"} and assets["A"].image == tmp_path / "a.jpg"
    assert [(s.name, "3 values for 3 columns" not in s.reason and "4 values for 3 columns" in s.reason)
            for s in catalogue.skipped] == [("c.csv row 3", True)]
    # No image: the asset's problem, and its (empty) path digests as missing instead of crashing the plan.
    assert assets["C"].problem == "manifest row 4 gives no image"
    assert file_digests([assets["C"].image], tmp_path / "digests.json") == {assets["C"].image: "missing"}


def test_quoted_line_breaks_and_unicode_separators_stay_in_their_cell(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text('asset_id,image,note\nA,a.jpg,"line1\nline2"\nB,b.jpg,x\u2028y\n', newline="")
    assets = {a.sku: a for a in load_catalogue(tmp_path / "c.csv")}
    assert set(assets) == {"A", "B"}
    assert assets["A"].metadata["note"] == "line1\nline2" and assets["B"].metadata["note"] == "x\u2028y"


def test_a_catalogue_folder_takes_files_and_links_to_files_only_and_digests_by_resolved_path(tmp_path: Path) -> None:
    import json

    from dam3d.catalogue import file_digests

    folder, elsewhere = tmp_path / "cat", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    (folder / "B.jpg").write_bytes(b"b")
    (elsewhere / "A.jpg").write_bytes(b"a")
    (folder / "A.jpg").symlink_to(elsewhere / "A.jpg")
    (folder / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (folder / "loop1.jpg").symlink_to(folder / "loop2.jpg")
    (folder / "loop2.jpg").symlink_to(folder / "loop1.jpg")
    (folder / "dir.jpg").mkdir()
    (tmp_path / "linked").symlink_to(folder)
    assets = load_catalogue(folder)
    assert [(a.asset_id, a.image) for a in assets] == [("A", folder / "A.jpg"), ("B", folder / "B.jpg")]
    paths = [a.image for a in assets] + [tmp_path / "linked" / "B.jpg", folder / "gone.jpg", folder / "dir.jpg"]
    digests = file_digests(paths, tmp_path / "digests.json")
    assert list(digests.values())[2:] == [digests[folder / "B.jpg"], "missing", "missing"]
    # One cache entry per file, named by its resolved path (a link's target, a linked folder resolved).
    assert sorted(json.loads((tmp_path / "digests.json").read_text())) == sorted(
        [str((elsewhere / "A.jpg").resolve()), str((folder / "B.jpg").resolve())])


def test_a_damaged_digest_cache_entry_is_hashed_again(tmp_path: Path) -> None:
    import hashlib
    import json

    from dam3d.catalogue import file_digests

    photos = [tmp_path / f"{name}.jpg" for name in "abcd"]
    for photo in photos:
        photo.write_bytes(photo.name.encode())
    cache = tmp_path / "digests.json"
    file_digests(photos, cache)
    entries = json.loads(cache.read_text())
    keys = sorted(entries)
    # Hand-edited or truncated entries: none may crash the plan or stand for the photo's digest.
    for key, damaged in zip(keys, ([], [entries[keys[1]][0]], "text", [*entries[keys[3]][:2], "0" * 40, 1])):
        entries[key] = damaged
    cache.write_text(json.dumps(entries))
    assert file_digests(photos, cache) == {p: hashlib.sha1(p.name.encode()).hexdigest() for p in photos}
    assert all(len(entry) == 3 for entry in json.loads(cache.read_text()).values())
