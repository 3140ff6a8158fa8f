"""Catalogues as they arrive from real DAMs and PIMs (tests/data/realworld, one folder per case).

Each runs the real workflow: the good SKUs are indexed, the bad entry is named in
failures.tsv with its reason (or indexed correctly), and the run exits 0. The cases
were made from the sample photos; see each folder's README.txt.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from test_workflow import snakemake
from dam3d.search.update import index_files

CASES = Path(__file__).parent / "data" / "realworld"
GOOD = {"CHAIR-0002", "FAN-0010", "SOFA-0006"}
# Fast: 2D only, except where the case is about what reaches the 3D stages.
TWO_D = {"render": {"views": 0}}


def run(tmp_path: Path, catalogue: Path, config: dict | None = None) -> tuple[str, set[str], dict[str, tuple[str, str]], dict]:
    """Run the pipeline; return its output, the indexed SKUs, failures.tsv by SKU (or file) and the index manifest."""
    result = snakemake(tmp_path, "--cores", "2", config={"catalogue": str(catalogue), **(config or TWO_D)})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    index = tmp_path / "results" / "index" / "mobilenetv2"
    skus = set(pq.read_table(index_files(index) / "assets.parquet").column("sku").to_pylist())
    with open(tmp_path / "results" / "failures.tsv", newline="") as fh:
        failures = {row["sku"]: (row["stage"], row["reason"]) for row in csv.DictReader(fh, delimiter="\t")}
    return output, skus, failures, json.loads((index / "manifest.json").read_text())


def test_url_instead_of_path_fails_that_sku_alone(tmp_path: Path) -> None:
    output, skus, failures, _ = run(tmp_path, CASES / "19-url-instead-of-path" / "catalogue.csv")
    assert skus == GOOD
    stage, reason = failures["CHAIR-0003"]
    assert stage == "cutout" and "https://cdn.example.com/media/catalog/product/c/h/CHAIR-0003.jpg" in reason
    assert "does not download" in reason


def test_missing_file_in_a_manifest_fails_that_sku_alone(tmp_path: Path) -> None:
    case = tmp_path / "case"
    shutil.copytree(CASES / "19-url-instead-of-path", case)
    text = (case / "catalogue.csv").read_text().replace(
        "https://cdn.example.com/media/catalog/product/c/h/CHAIR-0003.jpg", "images/CHAIR-0003.jpg")
    (case / "catalogue.csv").write_text(text)  # a path to a file that is not there
    _, skus, failures, _ = run(tmp_path, case / "catalogue.csv")
    assert skus == GOOD
    assert failures["CHAIR-0003"][0] == "cutout" and "image not found" in failures["CHAIR-0003"][1]
    # The file arrives: the next run computes that SKU (its content is in the key), nothing else.
    shutil.copy(CASES / "14-csv-semicolon" / "images" / "CHAIR-0003.jpg", case / "images" / "CHAIR-0003.jpg")
    output, skus, failures, _ = run(tmp_path, case / "catalogue.csv")
    assert skus == GOOD | {"CHAIR-0003"} and "CHAIR-0003" not in failures
    assert "cutout 1/4" in output


def test_braces_in_a_file_name_are_just_characters(tmp_path: Path) -> None:
    case = tmp_path / "case"
    shutil.copytree(CASES / "28-braces-in-file-name", case)
    # And a photo too small to be trusted: indexed, with a warning in the run and the index.
    with Image.open(case / "FAN-0010.jpg") as im:
        im.resize((120, 120)).save(case / "FAN-SMALL.jpg")
    output, skus, failures, manifest = run(tmp_path, case)
    assert skus == GOOD | {"CHAIR{3}", "FAN-SMALL"}
    # Nothing failed; the case's README.txt is listed as skipped, with the reason.
    assert list(failures) == ["README.txt"] and failures["README.txt"][0] == "catalogue"
    assert "dam3d: WARNING FAN-SMALL: cutout: photo is only 120x120 px (under 256 px" in output
    [warning] = manifest["warnings"]
    assert warning["sku"] == "FAN-SMALL" and "120x120" in warning["warning"]


def test_semicolon_manifest_as_excel_writes_it(tmp_path: Path) -> None:
    _, skus, failures, _ = run(tmp_path, CASES / "14-csv-semicolon" / "catalogue.csv")
    assert skus == GOOD | {"CHAIR-0003"} and failures == {}
    rows = {r["sku"]: r for r in pq.read_table(index_files(tmp_path / "results" / "index" / "mobilenetv2") / "assets.parquet").to_pylist()}
    assert rows["CHAIR-0002"]["Preis"] == "49,90" and rows["SOFA-0006"]["Bezeichnung"] == "Sofa Größe L"


def test_avif_in_a_folder_is_indexed_and_other_files_are_listed(tmp_path: Path) -> None:
    output, skus, failures, _ = run(tmp_path, CASES / "11-avif-in-folder")
    assert skus == GOOD | {"CHAIR-0003"}
    assert "dam3d: skipped README.txt: not a catalogue image type (.txt)" in output
    with open(tmp_path / "results" / "failures.tsv") as fh:
        assert "\tREADME.txt\tcatalogue\tnot a catalogue image type (.txt)" in fh.read()


@pytest.mark.parametrize("views", [8])
def test_blank_and_placeholder_photos_fail_at_the_cutout_and_stay_out_of_the_index(tmp_path: Path, views: int) -> None:
    # With the 3D path on: a failed cutout must leave the SKU out of every fusion, views or not.
    _, skus, failures, manifest = run(tmp_path, CASES / "08-blank-and-placeholder",
                                      {"render": {"views": views, "resolution": 64}})
    assert skus == GOOD
    assert failures["BLANK-0001"][0] == "cutout" and "blank" in failures["BLANK-0001"][1]
    assert failures["PLACEHOLDER-0002"][0] == "cutout" and "placeholder" in failures["PLACEHOLDER-0002"][1]
    assert manifest["counts"]["failed"] == 2
