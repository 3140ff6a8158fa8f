"""Chunk plans: which assets a stage computes, cut into chunk jobs, decided per asset from stamps."""

from __future__ import annotations

import json
from pathlib import Path

from dam3d.runtime import layout
from dam3d.runtime.plan import plan_stage, summary


def plan(tmp_path: Path, stage: str, assets: list[str], *, settings: object = 1, upstream=(), per_job: int = 64,
         sources: dict[str, str] | None = None):
    return plan_stage(
        stage,
        tmp_path,
        assets,
        outputs=lambda a: [str(tmp_path / stage / f"{a}.out")],
        key_parts=lambda a: [settings, (sources or {}).get(a, "")],
        upstream=upstream,
        per_job=per_job,
    )


def finish(tmp_path: Path, p, *, write_manifest: bool = True) -> None:
    """What chunk jobs leave behind: outputs, a stamp per asset, the chunk manifest."""
    for name, assets in p.chunks.items():
        for a in assets:
            for out in p.outputs[a]:
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                Path(out).write_text("x")
            stamp = layout.stamp(tmp_path, p.stage, a)
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.write_text(json.dumps({"key": p.keys[a], "chunk": name, "ok": True}))
        if write_manifest:
            layout.chunk_manifest(tmp_path, p.stage, name).parent.mkdir(parents=True, exist_ok=True)
            layout.chunk_manifest(tmp_path, p.stage, name).write_text("{}")


def test_pending_assets_are_cut_into_near_equal_chunks(tmp_path: Path) -> None:
    assets = [f"A{i:03d}" for i in range(130)]
    p = plan(tmp_path, "cutout", assets, per_job=64)
    assert p.pending == assets
    assert sorted(len(m) for m in p.chunks.values()) == [43, 43, 44]
    assert [a for m in p.chunks.values() for a in m] == assets
    assert all(name.startswith(f"{len(m)}x-") for name, m in p.chunks.items())
    assert summary({"cutout": p}) == "dam3d: to compute (assets/catalogue): cutout 130/130 in 3 job(s)"


def test_only_new_changed_or_lost_assets_are_pending_and_downstream_follows(tmp_path: Path) -> None:
    sources = {"A": "photo-a", "B": "photo-b", "C": "photo-c"}
    cut = plan(tmp_path, "cutout", list(sources), sources=sources)
    finish(tmp_path, cut)
    mesh = plan(tmp_path, "mesh", list(sources), upstream=[cut])
    finish(tmp_path, mesh)

    # Nothing changed: nothing to do, and the aggregate inputs are the manifests that made each asset.
    cut = plan(tmp_path, "cutout", [*sources, "D"], sources={**sources, "B": "photo-b2", "D": "photo-d"})
    assert cut.pending == ["B", "D"]
    mesh = plan(tmp_path, "mesh", ["A", "B", "C", "D"], upstream=[cut])
    assert mesh.pending == ["B", "D"]  # upstream pending: computed again even though B's mesh exists
    assert mesh.aggregate_input("A").endswith(".json") and "/chunks/mesh/" in mesh.aggregate_input("A")
    assert mesh.aggregate_input("B") == str(layout.chunk_manifest(tmp_path, "mesh", mesh.chunk_of["B"]))
    assert mesh.chunk_refs(["A", "B"]) == [mesh.aggregate_input("B")]

    # A lost output, or another setting, makes the asset pending again; a stable plan keeps its names.
    (tmp_path / "cutout" / "C.out").unlink()
    again = plan(tmp_path, "cutout", [*sources, "D"], sources={**sources, "B": "photo-b2", "D": "photo-d"})
    assert again.pending == ["B", "C", "D"]
    assert plan(tmp_path, "cutout", list(sources), settings=2, sources=sources).pending == ["A", "B", "C"]


def test_assets_finished_by_a_job_that_died_are_kept(tmp_path: Path) -> None:
    p = plan(tmp_path, "render", ["A", "B"])
    [name] = p.chunks
    layout.chunk_members(tmp_path, "render", name).parent.mkdir(parents=True)
    layout.chunk_members(tmp_path, "render", name).write_text("[]")
    finish(tmp_path, p, write_manifest=False)  # the job was killed after both stamps, before its manifest
    again = plan(tmp_path, "render", ["A", "B"])
    assert again.pending == [] and again.chunks == {}
    # Its members file (written when the run started) stands for what it made.
    assert again.aggregate_input("A") == str(layout.chunk_members(tmp_path, "render", name))
    assert again.chunk_pattern() == "(?!)"
    # With neither file left (the chunks folder removed), nothing tells the index they changed: computed again.
    layout.chunk_members(tmp_path, "render", name).unlink()
    assert plan(tmp_path, "render", ["A", "B"]).pending == ["A", "B"]


def test_the_same_work_planned_again_gets_a_new_chunk_unless_its_job_never_finished(tmp_path: Path) -> None:
    first = plan(tmp_path, "cutout", ["A", "B"])
    # Killed before its manifest: the resumed run plans the same chunk (its finished assets are skipped).
    assert plan(tmp_path, "cutout", ["A", "B"]).chunks == first.chunks
    finish(tmp_path, first)
    # A setting changed and back (or an output deleted): the same members and keys as a chunk that
    # ran. Its manifest exists and Snakemake would take it as done, so the chunk gets a new name.
    (tmp_path / "cutout" / "A.out").unlink()
    (tmp_path / "cutout" / "B.out").unlink()
    again = plan(tmp_path, "cutout", ["A", "B"])
    assert again.pending == ["A", "B"] and set(again.chunks).isdisjoint(first.chunks)


def test_an_unexpected_failure_is_tried_again_next_run_an_asset_error_is_not(tmp_path: Path) -> None:
    p = plan(tmp_path, "mesh", ["A", "B"])
    finish(tmp_path, p)
    for asset, retry in (("A", True), ("B", False)):
        stamp = layout.stamp(tmp_path, "mesh", asset)
        stamp.write_text(json.dumps({**json.loads(stamp.read_text()), "ok": False, "reason": "x", "retry": retry}))
    assert plan(tmp_path, "mesh", ["A", "B"]).pending == ["A"]


def test_outputs_are_found_by_listing_their_folders_as_exists_would(tmp_path: Path, monkeypatch) -> None:
    import os

    from dam3d.runtime.plan import _exists_by_listing

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "file").write_text("x")
    (tmp_path / "d" / "sub").mkdir()
    (tmp_path / "d" / "link").symlink_to("file")
    (tmp_path / "d" / "dangling").symlink_to("nowhere")
    monkeypatch.chdir(tmp_path)  # a bare name is in the working folder
    (tmp_path / "bare").write_text("x")
    all_exist = _exists_by_listing()
    paths = [f"{tmp_path}/d/{name}" for name in ("file", "sub", "link", "dangling", "none")]
    paths += [f"{tmp_path}/none/file", f"{tmp_path}/d/file/x", "bare", "d/file", "none", "/", "d/", f"{tmp_path}//d/file"]
    assert [all_exist([p]) for p in paths] == [os.path.exists(p) for p in paths]
    assert [all_exist([p]) for p in paths] == [True, True, True, False, False, False, False, True, True, False, True, True, True]
    # A list holds when each of its paths does (the 8 views of an asset are one list).
    assert all_exist(paths[:3]) and all_exist([]) and not all_exist([*paths[:3], paths[3]])
    assert not all_exist([paths[4], *paths[:3]])
    # An output that is a dangling link is missing: its asset is computed again.
    p = plan(tmp_path, "cutout", ["A", "B"])
    finish(tmp_path, p)
    (tmp_path / "cutout" / "B.out").unlink()
    (tmp_path / "cutout" / "B.out").symlink_to("nowhere")
    assert plan(tmp_path, "cutout", ["A", "B"]).pending == ["B"]


def test_a_folder_that_cannot_be_listed_is_asked_per_file(tmp_path: Path, monkeypatch) -> None:
    import os

    from dam3d.runtime import plan as plan_module

    (tmp_path / "f").write_text("x")

    def refused(folder: str) -> None:
        raise PermissionError(folder)

    monkeypatch.setattr(plan_module.os, "scandir", refused)
    all_exist = plan_module._exists_by_listing()
    assert all_exist([f"{tmp_path}/f"]) and not all_exist([f"{tmp_path}/g"]) and os.path.exists(f"{tmp_path}/f")
    assert not all_exist([f"{tmp_path}/f", f"{tmp_path}/g"])


def test_code_digest_ignores_comments_docstrings_and_imports_only(tmp_path: Path) -> None:
    from dam3d.runtime.plan import code_digest

    script = tmp_path / "s.py"
    script.write_text('"""Doc."""\nfrom a import b\n\ndef f(x):\n    return b(x) + 1\n')
    before = code_digest(script)
    script.write_text('"""Other doc."""\nfrom a.moved import b  # moved\n\n\ndef f(x):\n    """New."""\n    return b(x) + 1\n')
    assert code_digest(script) == before
    script.write_text('from a import b\n\ndef f(x):\n    return b(x) + 2\n')
    assert code_digest(script) != before
    script.write_text('from a import c as b\n\ndef f(x):\n    return b(x) + 1\n')
    assert code_digest(script) != before  # another name imported: another computation


def test_key_digests_are_digest_of_stage_parts_and_upstream_keys() -> None:
    from dam3d.runtime.plan import _key_digests, digest

    settings = {"size": 512, "margin": 0.08, "model": {"name": "é", "path": Path("/m")}, "views": [0, 45.5, None, True]}
    parts_of_asset = [
        ["3f" * 20, settings, "u2netp"], [settings, None, 1, "Ünïcode \"q\" \\ \u2028"], [], [settings, settings],
        [[settings], {}], ("a tuple", settings), {"not": "a list"}, None, [float("inf"), -0.0, 10**30],
    ]
    for stage in ("cutout", "embed-vit-large"):
        key = _key_digests(stage)
        for parts in parts_of_asset * 2:  # the second time from the settings' JSON made the first time
            for upstream_keys in ([], ["a" * 40], ["a" * 40, "b" * 40]):
                assert key(parts, upstream_keys) == digest([stage, parts, upstream_keys])


def test_a_stage_with_a_folder_per_asset_is_done_while_the_folder_is_there(tmp_path: Path) -> None:
    def views_plan():
        return plan_stage("render", tmp_path, ["A", "B"], key_parts=lambda a: [1],
                          outputs=lambda a: [f"{tmp_path}/render/{a}/az{i:03d}.png" for i in (0, 180)],
                          present=lambda a: [f"{tmp_path}/render/{a}"], per_job=64)

    first = views_plan()
    assert first.pending == ["A", "B"] and first.outputs["A"][1].endswith("/render/A/az180.png")
    finish(tmp_path, first)
    (tmp_path / "render" / "A" / "az180.png").unlink()   # a file inside the folder: not looked at
    assert views_plan().pending == []
    for view in (tmp_path / "render" / "B").iterdir():
        view.unlink()
    (tmp_path / "render" / "B").rmdir()                   # the folder: the asset is rendered again
    assert views_plan().pending == ["B"]
