"""Incremental refresh, failure isolation, single-asset rerun and crash safety, counted from Snakemake's job stats."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import product_photo
from test_workflow import SNAKEMAKE, snakemake
from dam3d.catalogue import safe_id
from dam3d.cli import main as dam3d
from dam3d.runtime import layout
from dam3d.runtime.stamps import read_stamps
from dam3d.search.update import index_files

# A run-wide contact sheet capped below the catalogue's SKUs: the cap is reached in every refresh test.
CONFIG = {"render": {"resolution": 48, "aa": 1}, "contact_sheet": {"max_assets": 2}}
KINDS = ("red-vase", "blue-box", "green-lamp")


# The rule that runs each per-asset stage's chunk jobs.
CHUNK_RULES = {"cutout": "cutout", "mesh": "mesh", "render": "render", "contact": "contact_asset"}


def job_counts(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """Assets computed per per-asset stage (the run's plan line), jobs per aggregate rule (Snakemake's 'Job stats')."""
    jobs: dict[str, int] = {}
    text = result.stdout + result.stderr
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Job stats:"):
            for row in lines[i + 3 :]:
                parts = row.split()
                if len(parts) != 2 or not parts[1].isdigit():
                    break
                jobs[parts[0]] = int(parts[1])
            break
    plan = re.search(r"dam3d: to compute \(assets/catalogue\): (.*)", text)
    assert plan, text[-3000:]
    counts = {rule: n for rule, n in jobs.items() if rule not in (*CHUNK_RULES.values(), "embed", "total", "all")}
    planned: dict[str, int] = {}
    for part in plan.group(1).split(", "):
        stage, fraction = part.split()[:2]
        if n := int(fraction.split("/")[0]):
            planned[stage] = n
            # Planned assets are computed by chunk jobs that Snakemake ran (or, with -n, would run).
            assert ("embed" if stage.startswith("embed-") else CHUNK_RULES[stage]) in jobs, (stage, n, jobs)
    if "This was a dry-run" not in text:
        # ...and the chunk jobs computed exactly those (not found them done), from their closing lines.
        computed: dict[str, int] = {}
        for stage, n in re.findall(r"^dam3d: (\S+) \S+: (\d+) computed", text, re.M):
            computed[stage] = computed.get(stage, 0) + int(n)
        assert computed == planned, (computed, planned)
    counts.update(planned)
    return counts


def per_asset(n: int) -> dict[str, int]:
    return {"cutout": n, "mesh": n, "render": n, "embed-mobilenetv2": n, "contact": n}


def after_assets(n: int) -> dict[str, int]:
    # timings: the per-stage seconds page (evaluate.smk) follows every index rebuild.
    return {**per_asset(n), "index": 1, "contact_sheet": 1, "failure_report": 1, "timings": 1}


def run(workdir: Path, catalogue: Path, *args: str, **extra: dict) -> subprocess.CompletedProcess[str]:
    config = {"catalogue": str(catalogue), **CONFIG}
    for key, value in extra.items():
        config[key] = {**config.get(key, {}), **value}
    return snakemake(workdir, "--cores", "2", *args, config=config)


def indexed_skus(workdir: Path) -> list[str]:
    return sorted(pq.read_table(index_files(workdir / "results" / "index" / "mobilenetv2") / "assets.parquet").column("sku").to_pylist())


@pytest.fixture
def catalogue(tmp_path: Path) -> Path:
    folder = tmp_path / "catalogue"
    folder.mkdir()
    for kind in KINDS:
        product_photo(kind).save(folder / f"{kind}.jpg")
    return folder


def test_refresh_computes_only_what_changed(tmp_path: Path, catalogue: Path) -> None:
    first = run(tmp_path, catalogue)
    assert first.returncode == 0, first.stderr[-3000:]
    assert job_counts(first) == after_assets(3)

    # Touched (same content) and copied-over-itself files compute nothing.
    os.utime(catalogue / "red-vase.jpg")
    (catalogue / "blue-box.jpg").write_bytes((catalogue / "blue-box.jpg").read_bytes())
    assert job_counts(run(tmp_path, catalogue)) == {}

    # Add one, replace one's content, delete one.
    product_photo("stripes").save(catalogue / "stripes.jpg")
    product_photo("blue-box", size=(420, 420)).save(catalogue / "blue-box.jpg")
    (catalogue / "green-lamp.jpg").unlink()
    refresh = run(tmp_path, catalogue)
    assert refresh.returncode == 0, refresh.stderr[-3000:]
    assert job_counts(refresh) == after_assets(2)
    assert indexed_skus(tmp_path) == ["blue-box", "red-vase", "stripes"]
    # The index was updated, not rebuilt: red-vase's row copied, the new and changed SKUs' embeddings read.
    update = json.loads((tmp_path / "results" / "index" / "mobilenetv2" / "manifest.json").read_text())["update"]
    assert {k: update[k] for k in ("mode", "reused", "read", "dropped")} == \
        {"mode": "incremental", "reused": 1, "read": 2, "dropped": 1}, update
    # Chunk files that no asset was made by any more are gone; those left are each some asset's.
    stamps = [s for stage in per_asset(0) for s in read_stamps(tmp_path / "results", stage).by_asset.values()]
    manifests = {p.stem for p in (tmp_path / "results" / "chunks").glob("*/*.json") if not p.name.endswith(".members.json")}
    assert manifests == {s["chunk"] for s in stamps if s["chunk"] in manifests} and len(manifests) == 10, manifests
    assert len(list((tmp_path / "results" / "chunks").glob("*/*.members.json"))) == 5  # this run's chunks only
    # The run sheet, capped at 2 of 3 SKUs, shows the two this refresh computed (catalogue order: blue-box,
    # stripes; not red-vase), and the choice holds: the next run has nothing to do.
    results = tmp_path / "results"
    with Image.open(results / "contact_sheet.png") as sheet, Image.open(layout.contact(results, "stripes")) as stripes:
        assert sheet.size == (stripes.width, 2 * stripes.height)
        assert np.array_equal(np.asarray(sheet.convert("RGB"))[stripes.height:], np.asarray(stripes.convert("RGB")))
    assert job_counts(run(tmp_path, catalogue)) == {}


def test_parameter_and_model_changes_rerun_that_stage_onwards(tmp_path: Path, catalogue: Path) -> None:
    assert run(tmp_path, catalogue).returncode == 0
    # A render parameter: render and everything after it, for every asset; nothing before.
    dry = run(tmp_path, catalogue, "-n", render={"elevation": 30})
    assert job_counts(dry) == {"render": 3, "embed-mobilenetv2": 3, "contact": 3, "index": 1, "contact_sheet": 1,
                               "failure_report": 1, "timings": 1}
    # A cutout parameter: everything.
    assert job_counts(run(tmp_path, catalogue, "-n", cutout={"margin": 0.15})) == after_assets(3)
    # A second embedding model: its embeddings and index only; the first index stays.
    from tiny_models import make_tiny_vit

    tiny = str(make_tiny_vit(tmp_path / "tiny-vit"))
    presets = {"mobilenetv2": {"backend": "mobilenetv2"}, "tiny": {"backend": "vit", "model": tiny, "pooling": "mean"},
               "vit-large": {"backend": "vit", "model": "google/vit-large-patch16-224", "pooling": "cls"}}
    both = run(tmp_path, catalogue, embed={"models": ["mobilenetv2", "tiny"], "presets": presets})
    assert both.returncode == 0, both.stderr[-3000:]
    assert job_counts(both) == {"embed-tiny": 3, "index": 1, "failure_report": 1, "timings": 1}
    for model in ("mobilenetv2", "tiny"):
        assert json.loads((tmp_path / "results" / "index" / model / "manifest.json").read_text())["counts"]["indexed"] == 3


def test_a_setting_changed_and_back_recomputes_again(tmp_path: Path, catalogue: Path) -> None:
    """The same work as a chunk that ran before (same assets, same keys) still runs."""
    flat = {"render": {"views": 0}}
    assert run(tmp_path, catalogue, **flat).returncode == 0
    first = layout.cutout(tmp_path / "results", "red-vase").read_bytes()
    wide = run(tmp_path, catalogue, cutout={"margin": 0.2}, **flat)
    assert job_counts(wide) == {"cutout": 3, "embed-mobilenetv2": 3, "index": 1, "failure_report": 1, "timings": 1}
    assert layout.cutout(tmp_path / "results", "red-vase").read_bytes() != first
    back = run(tmp_path, catalogue, **flat)
    assert job_counts(back) == {"cutout": 3, "embed-mobilenetv2": 3, "index": 1, "failure_report": 1, "timings": 1}
    assert layout.cutout(tmp_path / "results", "red-vase").read_bytes() == first
    assert job_counts(run(tmp_path, catalogue, **flat)) == {}


def test_bad_asset_is_isolated_reported_and_picked_up_once_fixed(tmp_path: Path, catalogue: Path) -> None:
    (catalogue / "SKU 42.jpg").write_bytes(b"GIF89a but not really")
    first = run(tmp_path, catalogue)
    assert first.returncode == 0, first.stderr[-3000:]
    report = (tmp_path / "results" / "failures.tsv").read_text().splitlines()
    assert report[0] == "asset_id\tsku\tstage\treason"
    assert len(report) == 2 and "\tSKU 42\tcutout\tnot an image file" in report[1]
    assert "1 asset(s) failed at some stage: see results/failures.tsv" in first.stderr
    assert indexed_skus(tmp_path) == sorted(KINDS)

    product_photo("stripes").save(catalogue / "SKU 42.jpg", format="JPEG")
    fixed = run(tmp_path, catalogue)
    assert job_counts(fixed) == after_assets(1)
    assert (tmp_path / "results" / "failures.tsv").read_text().splitlines() == ["asset_id\tsku\tstage\treason"]
    assert indexed_skus(tmp_path) == sorted([*KINDS, "SKU 42"])

    # Rerun one asset from a given stage on purpose (e.g. after a bad mesh), named by its SKU:
    # that asset is computed from there on, nothing else.
    assert dam3d(["rerun", "SKU 42", "--from", "mesh", "--results", str(tmp_path / "results")]) == 0
    assert not layout.mesh(tmp_path / "results", safe_id("SKU 42")).exists()
    again = run(tmp_path, catalogue)
    assert job_counts(again) == {"mesh": 1, "render": 1, "embed-mobilenetv2": 1, "contact": 1, "index": 1, "contact_sheet": 1,
                                 "failure_report": 1, "timings": 1}


def test_sigkill_mid_run_resumes_without_redoing_finished_work(tmp_path: Path, catalogue: Path) -> None:
    for kind in ("stripes",):
        product_photo(kind).save(catalogue / f"{kind}.jpg")
    # Finer meshes (~0.8 s each here) so that the kill lands inside the mesh chunk job.
    slow = {"mesh": {"inflate": {"resolution": 500}}}
    config = {"catalogue": str(catalogue), **CONFIG, **slow}
    snakemake(tmp_path, "-n", config=config)  # writes test-config.yaml
    cmd = [*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(tmp_path / "test-config.yaml"), "--cores", "1"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    meshes = layout.meshes(tmp_path / "results")
    deadline = time.time() + 300
    while time.time() < deadline and len(list(meshes.glob("*/[!.]*.glb"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_cutouts = len(list(layout.cutouts(tmp_path / "results").glob("*/[!.]*.png")))  # not the temporaries
    done_meshes = len(list(meshes.glob("*/[!.]*.glb")))
    assert 2 <= done_meshes < 4, "the kill must land mid-run"

    # A killed run leaves Snakemake's lock behind; --unlock is the documented step.
    blocked = run(tmp_path, catalogue, **slow)
    assert blocked.returncode != 0 and "unlock" in (blocked.stdout + blocked.stderr).lower()
    assert run(tmp_path, catalogue, "--unlock", **slow).returncode == 0
    resumed = run(tmp_path, catalogue, **slow)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # What was finished is not recomputed; at most the job whose bookkeeping the kill cut short is.
    counts = job_counts(resumed)
    assert 4 - done_cutouts <= counts.get("cutout", 0) <= 4 - done_cutouts + 1, counts
    assert 4 - done_meshes <= counts["mesh"] <= 4 - done_meshes + 1, counts
    assert indexed_skus(tmp_path) == sorted([*KINDS, "stripes"])
    # Every artefact in place is whole: atomic writes never leave a half-written PNG or GLB under its real name.
    import trimesh
    from PIL import Image

    # The temporary a killed writer left behind is gone once its asset is computed again...
    assert not [p.name for p in tmp_path.joinpath("results").rglob(".*.tmp.*")]
    # ...and every artefact in place is whole.
    for png in layout.cutouts(tmp_path / "results").glob("*/*.png"):
        Image.open(png).load()
    for glb in meshes.glob("*/*.glb"):
        assert len(trimesh.load(glb, force="mesh").faces) > 0


def test_second_run_on_the_same_results_refuses(tmp_path: Path, catalogue: Path) -> None:
    config = {"catalogue": str(catalogue), **CONFIG}
    snakemake(tmp_path, "-n", config=config)
    cmd = [*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(tmp_path / "test-config.yaml"), "--cores", "1"]
    first = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    locks = tmp_path / ".snakemake" / "locks"
    deadline = time.time() + 120
    while time.time() < deadline and not (locks.exists() and any(locks.iterdir())):
        time.sleep(0.1)
    second = run(tmp_path, catalogue)
    out, _ = first.communicate(timeout=600)
    assert second.returncode != 0
    assert "cannot be locked" in (second.stdout + second.stderr).lower()
    assert first.returncode == 0, out[-3000:]
    assert indexed_skus(tmp_path) == sorted(KINDS)


def test_failures_command_prints_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dam3d(["failures", "--results", str(tmp_path)]) == 2
    (tmp_path / "failures.tsv").write_text("asset_id\tsku\tstage\treason\nA_1-1234\tA 1\tcutout\tnot an image file\n")
    assert dam3d(["failures", "--results", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "A 1\tcutout\tnot an image file" in out and "1 failed asset(s)" in err


def test_the_index_stays_searchable_while_its_rule_reruns_and_fails(tmp_path: Path, catalogue: Path) -> None:
    """Snakemake deletes a job's outputs before it runs it (and a failed job's after): the index's manifest.json
    is not one of them, so the previous index is loadable all through a rerun of the index rule, even a failed one."""
    from dam3d.runtime import layout
    from dam3d.search.index import Index

    flat = {"render": {"views": 0}}
    assert run(tmp_path, catalogue, **flat).returncode == 0
    results = tmp_path / "results"
    (stamp_file,) = layout.index_stamps(results, "mobilenetv2")
    stamp = json.loads(stamp_file.read_text())
    before = Index.load(layout.index(results, "mobilenetv2"))
    assert stamp["data"] == before.files.name and len(before.assets) == 3
    # The index rule run again and failing half-way: an embedding it must read is not an .npz any more.
    layout.embedding(results, "mobilenetv2", "blue-box").write_bytes(b"not an npz")
    failed = run(tmp_path, catalogue, "--forcerun", "index", **flat)
    assert failed.returncode != 0 and "index" in failed.stderr, failed.stderr[-3000:]
    assert not stamp_file.exists()  # so the next run builds it again
    after = Index.load(layout.index(results, "mobilenetv2"))
    assert after.files == before.files and sorted(a["sku"] for a in after.assets) == sorted(KINDS)


def test_a_run_compacts_the_stamps_a_dry_run_writes_nothing_and_an_old_journal_plans_as_before(
        tmp_path: Path, catalogue: Path) -> None:
    """Stamps (dam3d.runtime.stamps): a run's end merges each stage's journal into its store; a results folder
    from before the store (journal only) plans the same and is compacted by its first run."""
    from dam3d.runtime import layout
    from dam3d.runtime.stamps import read_stamps, write_stamp

    flat = {"render": {"views": 0}}
    stages = ("cutout", "embed-mobilenetv2")
    assert run(tmp_path, catalogue, **flat).returncode == 0
    results = tmp_path / "results"

    def journal() -> dict[str, list[str]]:
        return {s: sorted(p.name for p in layout.stamps(results, s).glob("[!.]*.json")) for s in stages}

    assert journal() == {s: [] for s in stages}
    assert all(layout.stamp_store(results, s).exists() and len(read_stamps(results, s).by_asset) == 3 for s in stages)
    product_photo("stripes").save(catalogue / "stripes.jpg")
    planned = re.search(r"dam3d: to compute.*", run(tmp_path, catalogue, "-n", **flat).stderr).group(0)
    assert "cutout 1/4" in planned

    # The folder as an older dam3d left it: one stamp file per asset and stage, no store.
    for stage in stages:
        store = layout.stamp_store(results, stage)
        for asset, stamp in read_stamps(results, stage).by_asset.items():
            write_stamp(results, stage, asset, stamp)
        store.unlink()
    old = journal()
    assert old == {s: ["blue-box.json", "green-lamp.json", "red-vase.json"] for s in stages}
    dry = run(tmp_path, catalogue, "-n", **flat)
    assert re.search(r"dam3d: to compute.*", dry.stderr).group(0) == planned
    assert journal() == old and not any(layout.stamp_store(results, s).exists() for s in stages)  # -n writes nothing

    refresh = run(tmp_path, catalogue, **flat)
    assert refresh.returncode == 0, refresh.stderr[-3000:]
    assert job_counts(refresh) == {"cutout": 1, "embed-mobilenetv2": 1, "index": 1, "failure_report": 1, "timings": 1}
    assert journal() == {s: [] for s in stages}
    assert all(layout.stamp_store(results, s).exists() and len(read_stamps(results, s).by_asset) == 4 for s in stages)
    assert job_counts(run(tmp_path, catalogue, **flat)) == {}


def test_the_refresh_benchmark_links_past_the_filesystems_link_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from dam3d.benchmarks import refresh

    real_link = os.link

    def limited_link(src, dst):  # noqa: ANN001, ANN202 - ext4's limit of 65,000 links per file, here 3
        if os.stat(src).st_nlink >= 3:
            raise OSError(errno.EMLINK, "Too many links", str(src))
        real_link(src, dst)

    monkeypatch.setattr(refresh.os, "link", limited_link)
    source = tmp_path / "real.png"
    source.write_bytes(b"artefact")
    sources: dict[Path, Path] = {}
    targets = [tmp_path / "big" / f"{i:02d}" / "a.png" for i in range(7)]
    for target in targets:
        refresh._link(source, target, sources)
    assert all(t.read_bytes() == b"artefact" for t in targets)
    # Past the limit a copy starts anew and the next targets link to it: 7 files in 3 inodes, none over 3 links.
    assert len({os.stat(t).st_ino for t in [source, *targets]}) == 3
    assert max(os.stat(t).st_nlink for t in [source, *targets]) == 3

    def refused(src, dst):  # noqa: ANN001, ANN202
        raise PermissionError(errno.EACCES, "Permission denied", str(dst))

    monkeypatch.setattr(refresh.os, "link", refused)
    with pytest.raises(PermissionError):   # any other error is not the link limit: no copy is made
        refresh._link(source, tmp_path / "other.png", sources)
    assert not (tmp_path / "other.png").exists()
