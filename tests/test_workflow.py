"""The Snakemake workflow: config validation, lint, and end-to-end runs on real images."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import REPO, bad_files, product_photo
from dam3d.cli import main as dam3d
from dam3d.runtime import layout
from dam3d.search.update import index_files

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]


def snakemake(workdir: Path, *args: str, config: dict | None = None) -> subprocess.CompletedProcess[str]:
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    for key, value in (config or {}).items():
        if isinstance(value, dict):
            base[key] = {**base.get(key, {}), **value}
        else:
            base[key] = value
    (workdir / "test-config.yaml").write_text(yaml.safe_dump(base))
    cmd = [*SNAKEMAKE, "--directory", str(workdir), "--configfile", str(workdir / "test-config.yaml"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"cutout": {"backend": "magic"}}, "magic"),
        ({"render": {"views": -1}}, "views"),
        ({"colour": 3}, "colour"),
    ],
)
def test_bad_config_fails_at_start_naming_the_key(tmp_path: Path, config: dict, message: str) -> None:
    (tmp_path / "cat").mkdir()
    product_photo("red-vase").save(tmp_path / "cat" / "A.jpg")
    result = snakemake(tmp_path, "-n", config={"catalogue": str(tmp_path / "cat"), **config})
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("setting", "hint"),
    [
        ("render={elevation: 25}", "put that section in a YAML file and give it with --configfile FILE"),
        ("embed={batch_size: 16}", "put that section in a YAML file and give it with --configfile FILE"),
        ("strict=true", "--config reads only True and False (capitalised) as booleans: strict=True"),
        ("render={elevation: high}", None),
    ],
)
def test_a_typed_value_that_command_line_config_gives_as_text_is_explained(tmp_path: Path, setting: str,
                                                                            hint: str | None) -> None:
    """Snakemake hands `--config 'render={elevation: 25}'` (and a top-level `true`) over as text, which the schema refuses."""
    product_photo("red-vase").save(tmp_path / "A.jpg")
    config = [f"catalogue={tmp_path}", f"results={tmp_path / 'results'}", setting]
    result = subprocess.run([*SNAKEMAKE, "-n", "--config", *config], capture_output=True, text=True, cwd=REPO)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "is not of type" in out
    dam3d_lines = [line for line in out.splitlines() if line.startswith("dam3d: --config") or "--configfile FILE" in line]
    assert (hint in out) if hint else not dam3d_lines, out


def test_missing_catalogue_is_reported(tmp_path: Path) -> None:
    result = snakemake(tmp_path, "-n", config={"catalogue": str(tmp_path / "nowhere")})
    assert result.returncode != 0 and "catalogue not found" in result.stdout + result.stderr


def test_lint_is_clean(tmp_path: Path) -> None:
    product_photo("red-vase").save(tmp_path / "A.jpg")
    result = subprocess.run([*SNAKEMAKE, "--lint", "--config", f"catalogue={tmp_path}"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_2d_pipeline_end_to_end_with_bad_assets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Four good photos and every kind of bad file: the good ones are indexed and found, the bad ones listed."""
    catalogue = tmp_path / "catalogue"
    for kind in ("red-vase", "blue-box", "green-lamp", "stripes"):
        catalogue.mkdir(exist_ok=True)
        product_photo(kind).save(catalogue / f"{kind}.jpg")
    bad = bad_files(catalogue)
    (catalogue / "SKU Ünïcode 7.jpg").write_bytes((catalogue / "red-vase.jpg").read_bytes())
    # A record left by an earlier run with renders: this 2D run neither reports nor indexes it.
    stale = tmp_path / "results" / "failures" / "render" / "stripes.json"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"asset": "stripes", "stage": "render", "reason": "old"}))
    result = snakemake(tmp_path, "--cores", "2", config={"catalogue": str(catalogue), "render": {"views": 0}})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cutout=u2netp" in result.stderr and "embed=mobilenetv2" in result.stderr

    index_dir = tmp_path / "results" / "index" / "mobilenetv2"
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert manifest["backends"]["cutout"] == "u2netp" and manifest["model"]["name"] == "mobilenetv2"
    failed = {f["asset"]: f["reason"] for f in manifest["failures"]}
    assert set(failed) == {"corrupt", "empty", "notes", "huge"}, failed
    assert "stripes" not in (tmp_path / "results" / "failures.tsv").read_text()
    assert "12000x12000" in failed["huge"] and "empty" in failed["empty"]
    assert manifest["counts"]["indexed"] == 4 + len(bad) - 4 + 1

    # A customer photo: another size, background and position.
    query = Image.new("RGB", (640, 480), (200, 190, 170))
    query.paste(product_photo("green-lamp", size=(300, 300), background=(200, 190, 170)), (300, 120))
    query.save(tmp_path / "query.jpg")
    assert dam3d(["search", str(tmp_path / "query.jpg"), "--results", str(tmp_path / "results"), "--json", "-k", "3"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert hits[0]["sku"] == "green-lamp" and len(hits) == 3

    # Nothing left to do on a second run: the refresh is incremental.
    again = snakemake(tmp_path, "-n", config={"catalogue": str(catalogue), "render": {"views": 0}})
    assert "Nothing to be done" in again.stdout + again.stderr

    # The results folder copied elsewhere (Snakemake has no records of it there): unchanged, nothing to do;
    # with a setting changed, the stages it changes and the index run again.
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "results", copy / "results", symlinks=True)
    same = snakemake(copy, "-n", config={"catalogue": str(catalogue), "render": {"views": 0}})
    assert "Nothing to be done" in same.stdout + same.stderr, same.stderr[-3000:]
    changed = snakemake(copy, "-n", config={"catalogue": str(catalogue), "render": {"views": 0}, "cutout": {"margin": 0.1}})
    assert re.search(r"to compute \(assets/catalogue\): cutout (\d+)/\1 in", changed.stderr), changed.stderr[-3000:]
    jobs = changed.stdout + changed.stderr
    assert "Nothing to be done" not in jobs and re.search(r"^index\s+1$", jobs, re.M), jobs[-3000:]

    # These results as an older dam3d left them (no shard folders): the run refuses them; once migrated, it
    # computes nothing again.
    flatten(tmp_path / "results")
    old = snakemake(tmp_path, "-n", config={"catalogue": str(catalogue), "render": {"views": 0}})
    assert old.returncode != 0 and "dam3d migrate-layout results" in old.stdout + old.stderr, old.stderr[-3000:]
    assert dam3d(["migrate-layout", str(tmp_path / "results")]) == 0
    migrated = snakemake(tmp_path, "-n", config={"catalogue": str(catalogue), "render": {"views": 0}})
    assert re.search(r"dam3d: to compute \(assets/catalogue\): cutout 0/\d+, embed-mobilenetv2 0/\d+\n", migrated.stderr)
    assert "Nothing to be done" in migrated.stdout + migrated.stderr, migrated.stderr[-3000:]


def flatten(results: Path) -> None:
    """Move a results folder's per-asset artefacts out of their shard folders: the layout of older versions."""
    stage_folders = [layout.cutouts(results), layout.meshes(results), layout.renders(results), layout.contacts(results)]
    stage_folders += [p for p in layout.embeddings(results).iterdir() if p.is_dir()]
    for folder in filter(Path.is_dir, stage_folders):
        for shard in [p for p in folder.iterdir() if layout.SHARD_NAME.fullmatch(p.name)]:
            for artefact in shard.iterdir():
                artefact.replace(folder / artefact.name)
            shard.rmdir()


def test_3d_pipeline_end_to_end_and_incremental_refresh(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Meshes, 8 views, contact sheets and the fused index; a changed photo recomputes only its SKU."""
    catalogue = tmp_path / "catalogue"
    catalogue.mkdir()
    for kind in ("red-vase", "blue-box", "green-lamp"):
        product_photo(kind).save(catalogue / f"{kind}.jpg")
    (catalogue / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    config = {"catalogue": str(catalogue), "render": {"resolution": 96}}
    result = snakemake(tmp_path, "--cores", "2", config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    results = tmp_path / "results"
    for kind in ("red-vase", "blue-box", "green-lamp"):
        assert layout.mesh(results, kind).stat().st_size > 1000
        views = sorted(layout.views(results, kind).glob("*.png"))
        assert [v.stem for v in views] == [f"az{a:03d}" for a in range(0, 360, 45)]
        assert Image.open(views[2]).size == (96, 96)
    assert layout.view(results, "broken", "az000").stat().st_size == 0  # placeholder
    assert Image.open(results / "contact_sheet.png").height > 3 * 50
    manifest = json.loads((results / "index" / "mobilenetv2" / "manifest.json").read_text())
    assert manifest["counts"]["with_views"] == 3 and manifest["backends"]["mesh"] == "inflate"
    assert [f["asset"] for f in manifest["failures"]] == ["broken"]

    query = Image.new("RGB", (500, 400), (180, 200, 210))
    query.paste(product_photo("red-vase", size=(260, 300), background=(180, 200, 210)), (40, 60))
    query.save(tmp_path / "query.jpg")
    for fusion in ("2d", "3d", "mean", "max"):
        argv = ["search", str(tmp_path / "query.jpg"), "--results", str(results), "--json", "--fusion", fusion]
        assert dam3d(argv) == 0
        assert json.loads(capsys.readouterr().out)["results"][0]["sku"] == "red-vase", fusion

    # The brand retouches one photo: only that SKU is recomputed (plus the index and the run's sheet).
    product_photo("blue-box", size=(500, 400)).save(catalogue / "blue-box.jpg")
    dry = snakemake(tmp_path, "-n", config=config)
    assert ("dam3d: to compute (assets/catalogue): cutout 1/4 in 1 job(s), mesh 1/4 in 1 job(s), render 1/4 in 1 job(s), "
            "contact 1/4 in 1 job(s), embed-mobilenetv2 1/4 in 1 job(s)") in dry.stderr, dry.stderr[-3000:]


def test_dot_test_configs_run_as_the_community_workflows_run_them(tmp_path: Path) -> None:
    """`.test/`: a 2D-only and a 3D config over 3 sample photos, run with `snakemake --directory .test`."""
    import shutil

    import pyarrow.parquet as pq

    workdir = tmp_path / ".test"
    shutil.copytree(REPO / ".test", workdir)  # the same files, without writing into the checkout
    two_d = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--cores", "2"], capture_output=True, text=True,
                           cwd=REPO)
    assert two_d.returncode == 0, two_d.stderr[-3000:]
    three_d = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--cores", "2", "--configfile",
                              str(workdir / "config-3d.yaml")], capture_output=True, text=True, cwd=REPO)
    assert three_d.returncode == 0, three_d.stderr[-3000:]
    for results, views in (("results", 0), ("results-3d", 8)):
        index = workdir / results / "index" / "mobilenetv2"
        manifest = json.loads((index / "manifest.json").read_text())
        assert manifest["counts"]["indexed"] == 3 and manifest["counts"]["views_per_asset"] == views, manifest["counts"]
        assert sorted(pq.read_table(index_files(index) / "assets.parquet").column("sku").to_pylist()) == [
            "CHAIR-0002", "FAN-0010", "LAMP 0007"]
    # config-3d.yaml's mesh backend `prior` records, per SKU, the shape it chose: the lamp's stand (u2netp leaves
    # out its white shade) is a solid of revolution; no prior fits the chair or the fan, which are inflated
    from dam3d.stages.shapes import shape_record

    records = {p.stem: shape_record(p) for p in layout.meshes(workdir / "results-3d").glob("*/*.glb")}
    shapes = {asset: record["shape"] for asset, record in records.items()}
    assert shapes == {"CHAIR-0002": "inflate", "FAN-0010": "inflate", "LAMP_0007-0669d907": "revolution"}, records
    # contact_sheet.max_assets 2 of 3 SKUs: the run's sheet stacks 2 asset sheets; each SKU keeps its own.
    sheets = sorted(layout.contacts(workdir / "results-3d").glob("*/*.png"))
    assert len(sheets) == 3
    with Image.open(sheets[0]) as one, Image.open(workdir / "results-3d" / "contact_sheet.png") as run:
        assert run.size == (one.width, 2 * one.height), (run.size, one.size)


def test_audit_rule_writes_the_look_alikes_and_the_report_shows_its_page(tmp_path: Path) -> None:
    """`audit` set in a config file: results/audit/{model}.csv and .html, the page under "Look-alikes" in the report."""
    import csv
    import shutil

    workdir = tmp_path / ".test"
    shutil.copytree(REPO / ".test", workdir)
    (workdir / "audit.yaml").write_text("audit: {threshold: -1.0, fusion: 2d}\n")   # -1: every pair is a look-alike
    configs = ["--configfile", str(workdir / "config.yaml"), str(workdir / "audit.yaml")]
    run = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--cores", "2", *configs], capture_output=True,
                         text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "dam3d: audit mobilenetv2: 3 look-alike pair(s) among 3 SKUs (fusion 2d, similarity >= -1" in run.stderr
    with (workdir / "results" / "audit" / "mobilenetv2.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {frozenset((r["sku_a"], r["sku_b"])) for r in rows} == {
        frozenset(p) for p in (("CHAIR-0002", "FAN-0010"), ("CHAIR-0002", "LAMP 0007"), ("FAN-0010", "LAMP 0007"))}
    assert {r["fusion"] for r in rows} == {"2d"}
    page = (workdir / "results" / "audit" / "mobilenetv2.html").read_text()
    assert "3 pairs found; all shown." in page and page.count("data:image/jpeg;base64,") == 6
    report = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--cores", "2", *configs, "--report",
                             str(workdir / "report.html")], capture_output=True, text=True, cwd=REPO)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "Look-alikes" in (workdir / "report.html").read_text()
    (workdir / "audit.yaml").write_text("audit: {threshold: 2}\n")
    bad = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "-n", *configs], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode != 0 and "threshold" in bad.stdout + bad.stderr
