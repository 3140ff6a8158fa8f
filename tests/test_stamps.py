"""Per-asset stamps (dam3d.runtime.stamps): a journal compacted into one store per stage, read in one pass."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest

from dam3d.runtime import layout
from dam3d.runtime.chunk import run_members
from dam3d.runtime.stamps import compact, read_stamps, write_stamp
from test_plan import finish, plan


def journal(results: Path, stage: str) -> list[str]:
    """The assets with a journal entry at `stage`."""
    return sorted(p.stem for p in layout.stamps(results, stage).glob("[!.]*.json"))


def stamp(key: str, chunk: str = "1x-c", **extra: object) -> dict:
    return {"key": key, "chunk": chunk, "ok": True, "reason": None, **extra}


def test_the_journal_wins_over_the_store_and_a_clearing_entry_hides_its_row(tmp_path: Path) -> None:
    write_stamp(tmp_path, "mesh", "A", stamp("a1"))
    write_stamp(tmp_path, "mesh", "B", stamp("b1", ok=False, reason="empty", retry=True))
    write_stamp(tmp_path, "mesh", "C", stamp("c1", warnings=["small"]))
    assert compact(tmp_path, "mesh") == 3 and journal(tmp_path, "mesh") == []
    write_stamp(tmp_path, "mesh", "A", stamp("a2"))   # recomputed since
    read_stamps(tmp_path, "mesh").clear("C")          # being recomputed: its store row must not count
    write_stamp(tmp_path, "mesh", "D", stamp("d1"))   # new
    stamps = read_stamps(tmp_path, "mesh")
    assert {a: s["key"] for a, s in stamps.by_asset.items()} == {"A": "a2", "B": "b1", "D": "d1"}
    assert stamps.get("B") == {"key": "b1", "chunk": "1x-c", "ok": False, "reason": "empty", "retry": True}
    assert stamps.get("C") is None
    # A chunk job reads the store and only its members' entries.
    assert read_stamps(tmp_path, "mesh", ["A", "C"]).journal.keys() == {"A", "C"}
    compact(tmp_path, "mesh")
    assert read_stamps(tmp_path, "mesh").by_asset == stamps.by_asset and journal(tmp_path, "mesh") == []


def test_a_job_killed_after_new_outputs_before_the_new_stamp_leaves_the_asset_pending(tmp_path: Path) -> None:
    first = plan(tmp_path, "cutout", ["A", "B"])
    finish(tmp_path, first)
    compact(tmp_path, "cutout")
    (tmp_path / "cutout" / "A.out").unlink()   # A is computed again, with the same key as its store row
    again = plan(tmp_path, "cutout", ["A", "B"])
    [(chunk, members)] = again.chunks.items()
    assert members == ["A"]

    def killed(ms: list[dict]):  # noqa: ANN202 - writes the output, then the process dies
        Path(ms[0]["outputs"][0]).write_text("half-way")
        raise KeyboardInterrupt
        yield

    member = {"asset": "A", "key": again.keys["A"], "outputs": again.outputs["A"]}
    with pytest.raises(KeyboardInterrupt):
        run_members(stage="cutout", chunk=chunk, members=[member], process=killed, results=tmp_path)
    assert plan(tmp_path, "cutout", ["A", "B"]).pending == ["A"]
    compact(tmp_path, "cutout")
    assert plan(tmp_path, "cutout", ["A", "B"]).pending == ["A"]


def test_a_compacted_stage_plans_as_its_journal_did_without_opening_a_stamp(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cut = plan(tmp_path, "cutout", ["A", "B", "C"])
    finish(tmp_path, cut)
    finish(tmp_path, plan(tmp_path, "mesh", ["A", "B"], upstream=[cut]))
    (tmp_path / "mesh" / "B.out").unlink()

    def planned() -> tuple:
        cut = plan(tmp_path, "cutout", ["A", "B", "C", "D"])
        mesh = plan(tmp_path, "mesh", ["A", "B", "C", "D"], upstream=[cut])
        return [(p.pending, p.chunks, p.made_by) for p in (cut, mesh)]

    from_journal = planned()   # a results folder from before the store
    assert from_journal[1][0] == ["B", "C", "D"]
    compact(tmp_path, "cutout")
    compact(tmp_path, "mesh")
    opened: list[str] = []
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):  # noqa: ANN001, ANN202
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    assert planned() == from_journal
    monkeypatch.undo()
    assert not [f for f in opened if f.endswith(".json") and "/stamps/" in f], opened


def test_a_compaction_that_fails_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    import dam3d.runtime.stamps as stamps_module

    p = plan(tmp_path, "cutout", ["A", "B"])
    finish(tmp_path, p)
    expected = read_stamps(tmp_path, "cutout").by_asset

    real_connect = sqlite3.connect

    def unwritable(path: Path) -> sqlite3.Connection:   # the store cannot be written (a full disk, say)
        return real_connect(f"{Path(path).as_uri()}?mode=ro", uri=True)

    monkeypatch.setattr(stamps_module.sqlite3, "connect", unwritable)
    with pytest.raises(sqlite3.OperationalError):
        compact(tmp_path, "cutout")
    monkeypatch.undo()
    assert journal(tmp_path, "cutout") == ["A", "B"] and not layout.stamp_store(tmp_path, "cutout").exists()
    assert not list(layout.stamps(tmp_path, "cutout").glob(".*"))   # nor a temporary left

    real_unlink = Path.unlink

    def killed_after_one(self: Path, missing_ok: bool = False) -> None:
        if self.name == "B.json":
            raise OSError("killed")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", killed_after_one)   # killed after the store, between two deletions
    with pytest.raises(OSError):
        compact(tmp_path, "cutout")
    monkeypatch.undo()
    assert layout.stamp_store(tmp_path, "cutout").exists() and "B" in journal(tmp_path, "cutout")
    assert read_stamps(tmp_path, "cutout").by_asset == expected
    assert plan(tmp_path, "cutout", ["A", "B"]).pending == []
    compact(tmp_path, "cutout")   # the next run's compaction finishes it
    assert journal(tmp_path, "cutout") == [] and read_stamps(tmp_path, "cutout").by_asset == expected


def test_an_entry_rewritten_after_it_was_read_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dam3d.runtime.stamps as stamps_module

    write_stamp(tmp_path, "embed-m", "A", stamp("a1"))
    real_write = stamps_module.atomic_path

    def job_writes_meanwhile(path):  # noqa: ANN001, ANN202 - a job stamps A again while the store is written
        write_stamp(tmp_path, "embed-m", "A", stamp("a2"))
        return real_write(path)

    monkeypatch.setattr(stamps_module, "atomic_path", job_writes_meanwhile)
    compact(tmp_path, "embed-m")
    monkeypatch.undo()
    assert journal(tmp_path, "embed-m") == ["A"] and read_stamps(tmp_path, "embed-m").get("A")["key"] == "a2"


def test_a_bad_journal_entry_is_no_stamp(tmp_path: Path) -> None:
    write_stamp(tmp_path, "cutout", "A", stamp("a1"))
    layout.stamp(tmp_path, "cutout", "B").write_text(json.dumps(["not", "a", "stamp"]))
    assert set(read_stamps(tmp_path, "cutout").by_asset) == {"A"}


def test_a_compaction_applies_the_journal_to_the_store_and_clears_what_a_killed_one_left(tmp_path: Path) -> None:
    for asset, key in (("A", "a1"), ("B", "b1"), ("C", "c1")):
        write_stamp(tmp_path, "mesh", asset, stamp(key))
    compact(tmp_path, "mesh")
    store = layout.stamp_store(tmp_path, "mesh")
    # What a compaction killed mid-write leaves: its temporary store and SQLite's rollback journal beside it.
    leftovers = [store.parent / ".stamps.x1.tmp.sqlite", store.parent / ".stamps.x1.tmp.sqlite-journal"]
    for leftover in leftovers:
        leftover.write_bytes(b"torn")
    write_stamp(tmp_path, "mesh", "B", stamp("b2"))
    read_stamps(tmp_path, "mesh").clear("C")
    write_stamp(tmp_path, "mesh", "D", stamp("d1"))
    assert compact(tmp_path, "mesh") == 3
    assert {a: s["key"] for a, s in read_stamps(tmp_path, "mesh").by_asset.items()} == {"A": "a1", "B": "b2", "D": "d1"}
    assert journal(tmp_path, "mesh") == [] and not any(p.exists() for p in leftovers)
    assert sorted(p.name for p in store.parent.iterdir()) == ["stamps.sqlite"]
