"""Sharded per-asset artefact paths (dam3d.runtime.layout), `dam3d migrate-layout` from the flat layout of
older versions, the workflow's refusal of a flat results folder, and `dam3d rerun ASSET --from STAGE`."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from dam3d.catalogue import safe_id
from dam3d.cli import main as dam3d
from dam3d.runtime import layout
from dam3d.runtime.migrate import STAGED, find_flat, migrate
from dam3d.runtime.rerun import stages_from

MODELS = ("mobilenetv2", "tiny")
VIEWS = ("az000", "az180")
# "6a": an asset id named like a shard, and CHAIR-0001's shard: its flat views folder render/6a/ is where the
# shard folder render/6a/ goes; "SKU_42-...": the safe id of a SKU with a space.
ASSETS = ("CHAIR-0001", "red-vase", "6a", safe_id("SKU 42"))


def flat_results(results: Path, assets: tuple[str, ...] = ASSETS) -> dict[str, bytes]:
    """A results folder as an older dam3d left it (every per-asset artefact in its stage folder), with a
    killed write's temporary; {path relative to results: content}, each file's content its own."""
    files = {}
    for asset in assets:
        files[f"cutout/{asset}.png"] = f"cutout {asset}".encode()
        files[f"mesh/{asset}.glb"] = f"mesh {asset}".encode()
        files[f"contact/{asset}.png"] = f"contact {asset}".encode()
        for view in VIEWS:
            files[f"render/{asset}/{view}.png"] = f"{view} {asset}".encode()
        for model in MODELS:
            files[f"embed/{model}/{asset}.npz"] = f"{model} {asset}".encode()
    for rel, content in files.items():
        (results / rel).parent.mkdir(parents=True, exist_ok=True)
        (results / rel).write_bytes(content)
    (results / "cutout" / ".red-vase.x1y2.tmp.png").write_bytes(b"half written")
    return files


def sharded(results: Path, rel: str) -> Path:
    """Where layout puts now the artefact that the flat layout had at `rel`."""
    stage, *rest = rel.split("/")
    if stage == "render":
        asset, name = rest
        return layout.views(results, asset) / name
    if stage == "embed":
        model, name = rest
        return layout.embedding(results, model, name.removesuffix(".npz"))
    path = {"cutout": layout.cutout, "mesh": layout.mesh, "contact": layout.contact}[stage]
    return path(results, rest[0].rsplit(".", 1)[0])


def test_each_asset_has_a_known_stable_shard() -> None:
    assert layout.shard("CHAIR-0001") == "6a" and layout.shard("red-vase") == "f5"   # SHA-1 of the asset id
    results = Path("results")
    assert layout.cutout(results, "CHAIR-0001") == results / "cutout" / "6a" / "CHAIR-0001.png"
    assert layout.mesh(results, "CHAIR-0001") == results / "mesh" / "6a" / "CHAIR-0001.glb"
    assert layout.view(results, "CHAIR-0001", "az000") == results / "render" / "6a" / "CHAIR-0001" / "az000.png"
    assert layout.contact(results, "CHAIR-0001") == results / "contact" / "6a" / "CHAIR-0001.png"
    assert layout.embedding(results, "m", "CHAIR-0001") == results / "embed" / "m" / "6a" / "CHAIR-0001.npz"
    # The planner's string versions spell each path as pathlib joins it, however the results folder is written.
    for folder in ("results", "./results/", "/srv//dam/results", Path("a/../results"), "."):
        for asset in ("CHAIR-0001", "6a"):
            at = Path(folder)
            part = layout.shard(asset)
            assert layout.cutout_file(folder, asset) == str(at / "cutout" / part / f"{asset}.png")
            assert layout.mesh_file(folder, asset) == str(at / "mesh" / part / f"{asset}.glb")
            assert layout.contact_file(folder, asset) == str(at / "contact" / part / f"{asset}.png")
            assert layout.embedding_file(folder, "m", asset) == str(at / "embed" / "m" / part / f"{asset}.npz")
            assert layout.view_files(folder, asset, ["az000", "az180"]) == [
                str(at / "render" / part / asset / "az000.png"), str(at / "render" / part / asset / "az180.png")]
            assert layout.views(folder, asset) == at / "render" / part / asset
    # 256 shards, evenly filled: 25,600 SKUs give about 100 per folder.
    counts = Counter(layout.shard(f"SKU-{i:06d}") for i in range(25_600))
    assert len(counts) == 256 and all(layout.SHARD_NAME.fullmatch(s) for s in counts)
    assert 50 < min(counts.values()) and max(counts.values()) < 150, counts.most_common(1)


@pytest.mark.parametrize("order", [None, False, True])
def test_migrate_moves_every_kind_of_artefact_keeping_content_inode_and_mtime(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, order: bool | None) -> None:
    """`order`: folders listed as the filesystem lists them, or sorted (False) or reversed (True): whether CHAIR-0001
    or the flat views folder render/6a/ comes first, CHAIR-0001's shard folder render/6a/ never lands inside it."""
    import dam3d.runtime.migrate as migrate_module

    if order is not None:
        listed = migrate_module._entries
        monkeypatch.setattr(migrate_module, "_entries", lambda folder: iter(sorted(listed(folder), key=lambda e: e.name,
                                                                                  reverse=order)))
    results = tmp_path / "results"
    files = flat_results(results)
    before = {rel: os.stat(results / rel) for rel in files}
    assert find_flat(results) is not None
    report = migrate(results)
    assert report.moved == {"cutout": 4, "mesh": 4, "render": 4, "contact": 4, "embed-mobilenetv2": 4, "embed-tiny": 4}
    assert not report.conflicts and find_flat(results) is None
    for rel, content in files.items():
        new = sharded(results, rel)
        assert new.read_bytes() == content, rel
        st = os.stat(new)
        assert (st.st_ino, st.st_mtime_ns) == (before[rel].st_ino, before[rel].st_mtime_ns), rel
        assert not (results / rel).exists(), rel
    # Only shard folders are left in the stage folders (and the killed write's temporary, not an artefact).
    for folder in (layout.cutouts(results), layout.meshes(results), layout.renders(results), layout.contacts(results),
                   *(layout.model_embeddings(results, m) for m in MODELS)):
        names = {p.name for p in folder.iterdir()} - {".red-vase.x1y2.tmp.png"}
        assert names and all(layout.SHARD_NAME.fullmatch(n) for n in names), (folder, names)
    # Idempotent: a second run moves nothing and changes nothing.
    tree = sorted(p.relative_to(results) for p in results.rglob("*"))
    again = migrate(results)
    assert not again.moved and not again.conflicts
    assert sorted(p.relative_to(results) for p in results.rglob("*")) == tree


@pytest.mark.parametrize("fail_after", [0, 1, 7, 20])
def test_a_migration_killed_mid_way_loses_nothing_and_the_next_run_finishes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_after: int) -> None:
    """Each move is one os.replace: a migration stopped after any number of them resumes (0: while it moves the
    views folder named like a shard aside, before anything else)."""
    results = tmp_path / "results"
    files = flat_results(results)
    real_replace, calls = os.replace, []

    def failing_replace(src: str | Path, dst: str | Path) -> None:
        if len(calls) == fail_after:
            raise OSError("killed")
        calls.append(src)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="killed"):
        migrate(results)
    monkeypatch.undo()
    assert len(calls) == fail_after and find_flat(results) is not None
    for rel, content in files.items():   # every artefact at its old path, its new one, or (views) moved aside
        stage, *rest = rel.split("/")
        aside = layout.renders(results) / f"{STAGED}{rest[0]}" / rest[-1] if stage == "render" else results / rel
        assert content in {p.read_bytes() for p in (results / rel, aside, sharded(results, rel)) if p.exists()}, rel
    migrate(results)
    assert find_flat(results) is None
    assert {rel: sharded(results, rel).read_bytes() for rel in files} == files


def test_migrate_layout_command_prints_counts_and_refuses_what_it_cannot_do(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    flat_results(results)
    assert dam3d(["migrate-layout", str(results)]) == 0
    out = capsys.readouterr().out
    assert "24 artefact(s) moved into shard folders" in out and "cutout 4, mesh 4, render 4, contact 4" in out, out
    assert dam3d(["migrate-layout", str(results)]) == 0
    assert "in the sharded layout already; nothing moved" in capsys.readouterr().out

    (tmp_path / "photos").mkdir()
    assert dam3d(["migrate-layout", str(tmp_path / "photos")]) == 2
    assert "is not a dam3d results folder: none of cutout/, mesh/" in capsys.readouterr().err
    assert dam3d(["migrate-layout", str(tmp_path / "nowhere")]) == 2
    assert "nowhere is not a folder" in capsys.readouterr().err

    # An old artefact whose new path is taken is left, not overwritten, and said.
    (layout.cutouts(results) / "red-vase.png").write_bytes(b"an older cutout")
    assert dam3d(["migrate-layout", str(results)]) == 1
    err = capsys.readouterr().err
    assert f"left {layout.cutouts(results) / 'red-vase.png'}: {layout.cutout(results, 'red-vase')} exists" in err, err
    assert layout.cutout(results, "red-vase").read_bytes() == b"cutout red-vase"


@pytest.mark.parametrize("rel", ["cutout/A.png", "mesh/A.glb", "render/A/az000.png", "render/6a/az000.png",
                                 "contact/A.png", "embed/m/A.npz"])
def test_the_workflow_start_check_finds_any_flat_artefact(tmp_path: Path, rel: str) -> None:
    results = tmp_path / "results"
    for asset in ("B", "6a"):   # a sharded folder around it, with an asset id named like a shard
        for path in (layout.cutout(results, asset), layout.mesh(results, asset), layout.view(results, asset, "az000"),
                     layout.contact(results, asset), layout.embedding(results, "m", asset)):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
    assert find_flat(results) is None and find_flat(tmp_path / "empty") is None
    (results / rel).parent.mkdir(parents=True, exist_ok=True)
    (results / rel).write_bytes(b"old")
    assert find_flat(results) == results / Path(rel).parent if rel.startswith("render") else results / rel


def test_a_dry_run_on_a_flat_results_folder_stops_with_the_migration_command(tmp_path: Path) -> None:
    from conftest import product_photo
    from test_workflow import snakemake

    (tmp_path / "cat").mkdir()
    product_photo("red-vase").save(tmp_path / "cat" / "red-vase.jpg")
    flat_results(tmp_path / "results", ("red-vase",))
    dry = snakemake(tmp_path, "-n", config={"catalogue": str(tmp_path / "cat"), "render": {"views": 0}})
    output = dry.stdout + dry.stderr
    assert dry.returncode != 0
    assert ("results holds artefacts of an older dam3d in the flat layout (e.g. results/cutout/red-vase.png); move them "
            "into shard folders, without recomputing anything, with: dam3d migrate-layout results") in output, output
    assert (tmp_path / "results" / "cutout" / "red-vase.png").exists()   # a dry run moves nothing


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A sharded results folder of every asset of ASSETS."""
    folder = tmp_path / "results"
    flat_results(folder)
    migrate(folder)
    return folder


def test_stages_from_follow_what_each_stage_reads() -> None:
    assert stages_from("cutout") == ["cutout", "mesh", "render", "contact", "embed"]
    assert stages_from("mesh") == ["mesh", "render", "contact", "embed"]
    assert stages_from("render") == ["render", "contact", "embed"]
    assert stages_from("contact") == ["contact"] and stages_from("embed") == ["embed"]


def test_rerun_removes_that_assets_artefacts_from_the_stage_on(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    everything = {p for p in results.rglob("*") if p.is_file()}
    assert dam3d(["rerun", "CHAIR-0001", "--from", "render", "--results", str(results)]) == 0
    gone = {layout.view(results, "CHAIR-0001", v) for v in VIEWS} | {layout.contact(results, "CHAIR-0001")}
    gone |= {layout.embedding(results, m, "CHAIR-0001") for m in MODELS}
    assert {p for p in results.rglob("*") if p.is_file()} == everything - gone
    assert not layout.views(results, "CHAIR-0001").exists()
    out = capsys.readouterr().out
    assert f"CHAIR-0001: removed {layout.views(results, 'CHAIR-0001')}, {layout.contact(results, 'CHAIR-0001')}" in out
    assert "it computes CHAIR-0001 again (render, contact, embed)" in out and "snakemake --cores 8" in out, out


def test_rerun_takes_a_sku_or_its_asset_id_and_several_assets(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dam3d(["rerun", "SKU 42", "red-vase", "--from", "cutout", "--results", str(results)]) == 0
    for asset in (safe_id("SKU 42"), "red-vase"):
        assert not any(p.exists() for p in (layout.cutout(results, asset), layout.mesh(results, asset),
                                            layout.views(results, asset), layout.contact(results, asset),
                                            *(layout.embedding(results, m, asset) for m in MODELS)))
    assert layout.cutout(results, "CHAIR-0001").exists() and layout.cutout(results, "6a").exists()
    assert dam3d(["rerun", "6a", "--from", "embed", "--results", str(results)]) == 0
    assert not layout.embedding(results, "tiny", "6a").exists() and layout.contact(results, "6a").exists()
    capsys.readouterr()
    # Asked again: nothing left from that stage on, said so.
    assert dam3d(["rerun", "6a", "--from", "embed", "--results", str(results)]) == 0
    assert "6a: nothing from embed on to remove" in capsys.readouterr().out


def test_rerun_refuses_an_unknown_asset_or_stage_and_a_flat_folder(results: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    everything = sorted(results.rglob("*"))
    assert dam3d(["rerun", "CHAIR-0001", "NO SUCH SKU", "--from", "mesh", "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert f"no artefact of NO SUCH SKU (asset id {safe_id('NO SUCH SKU')}) in {results}" in err, err
    assert sorted(results.rglob("*")) == everything   # nothing removed, not even the known asset's
    with pytest.raises(SystemExit) as refused:
        dam3d(["rerun", "CHAIR-0001", "--from", "index", "--results", str(results)])
    assert refused.value.code == 2 and "invalid choice: 'index'" in capsys.readouterr().err
    flat_results(tmp_path / "old", ("CHAIR-0001",))
    assert dam3d(["rerun", "CHAIR-0001", "--from", "mesh", "--results", str(tmp_path / "old")]) == 2
    assert f"dam3d migrate-layout {tmp_path / 'old'}" in capsys.readouterr().err
    assert (tmp_path / "old" / "mesh" / "CHAIR-0001.glb").exists()
    assert dam3d(["rerun", "CHAIR-0001", "--from", "mesh", "--results", str(tmp_path / "nowhere")]) == 2
    assert f"dam3d: rerun: {tmp_path / 'nowhere'} is not a folder" in capsys.readouterr().err
