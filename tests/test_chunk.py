"""The chunk runner (dam3d.runtime.chunk): each asset's failure alone, retries alone, stamps so finished work is kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dam3d.errors import AssetError
from dam3d.runtime.stamps import read_stamps
from dam3d.runtime.chunk import ChunkError, one_by_one, read_failures, run_members


def read_stamp(results: Path, stage: str, asset: str) -> dict | None:
    return read_stamps(results, stage).get(asset)


def member(tmp_path: Path, asset: str, **extra: object) -> dict:
    return {"asset": asset, "key": f"key-{asset}", "outputs": [str(tmp_path / "out" / f"{asset}.png")], **extra}


def write_outputs(m: dict) -> None:
    for p in m["outputs"]:
        Path(p).parent.mkdir(parents=True, exist_ok=True)
        Path(p).write_bytes(b"result " + m["asset"].encode())


def test_one_bad_asset_fails_alone_with_a_record_placeholders_and_a_stamp(tmp_path: Path) -> None:
    calls: list[str] = []

    def work(m: dict) -> None:
        calls.append(m["asset"])
        if m["asset"] == "B":
            raise AssetError("B", "cutout", "image file is empty")
        write_outputs(m)

    members = [member(tmp_path, a) for a in "ABC"]
    outcomes = run_members(stage="cutout", chunk="3x-abc", members=members, process=lambda ms: one_by_one(ms, work),
                           results=tmp_path, retries=3)
    assert [(o["asset"], o["ok"]) for o in outcomes] == [("A", True), ("B", False), ("C", True)]
    assert calls == ["A", "B", "C"]  # an AssetError is not retried
    assert (tmp_path / "out" / "B.png").read_bytes() == b"" and (tmp_path / "out" / "C.png").read_bytes() == b"result C"
    assert read_failures(tmp_path) == [{"asset": "B", "stage": "cutout", "reason": "image file is empty"}]
    assert read_stamp(tmp_path, "cutout", "B") == {"key": "key-B", "chunk": "3x-abc", "ok": False, "reason": "image file is empty"}
    assert read_stamp(tmp_path, "cutout", "A")["ok"] is True


def test_unexpected_errors_are_retried_alone_then_recorded(tmp_path: Path) -> None:
    batches: list[list[str]] = []

    def process(ms: list[dict]):
        batches.append([m["asset"] for m in ms])
        for m in ms:
            if m["asset"] == "C":
                yield "C", RuntimeError("CUDA error: an illegal memory access")
            else:
                write_outputs(m)
                yield m["asset"], None

    members = [member(tmp_path, a) for a in "ABC"]
    outcomes = run_members(stage="mesh", chunk="x", members=members, process=process, results=tmp_path, retries=2)
    assert batches == [["A", "B", "C"], ["C"], ["C"]]
    assert [o["ok"] for o in outcomes] == [True, True, False]
    assert read_failures(tmp_path)[0]["reason"] == "RuntimeError: CUDA error: an illegal memory access"
    # Recorded, and tried again next run (an AssetError is not: see above).
    assert read_stamp(tmp_path, "mesh", "C")["retry"] is True and "retry" not in read_stamp(tmp_path, "mesh", "A")


def test_a_process_that_dies_fails_the_job_and_keeps_what_it_finished(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def process(ms: list[dict]):
        calls.append([m["asset"] for m in ms])
        write_outputs(ms[0])
        yield ms[0]["asset"], None
        raise OSError("model weights not found: /models/rmbg")

    members = [member(tmp_path, a) for a in "ABC"]
    with pytest.raises(ChunkError, match="model weights not found"):
        run_members(stage="cutout", chunk="x", members=members, process=process, results=tmp_path, retries=1)
    assert calls == [["A", "B", "C"], ["B", "C"]]  # the retry takes only what is left
    assert read_stamp(tmp_path, "cutout", "A")["ok"] and read_stamp(tmp_path, "cutout", "B")["ok"]
    # Not the assets' fault: C is neither stamped nor recorded as failed; the next run plans it again.
    assert read_stamp(tmp_path, "cutout", "C") is None and read_failures(tmp_path) == []


def test_placeholder_input_is_passed_on_without_running(tmp_path: Path) -> None:
    upstream = tmp_path / "cutout.png"
    upstream.write_bytes(b"")

    def never(m: dict) -> None:
        raise AssertionError("must not run")

    m = member(tmp_path, "D", requires=[str(upstream)])
    [outcome] = run_members(stage="mesh", chunk="x", members=[m], process=lambda ms: one_by_one(ms, never), results=tmp_path)
    assert not outcome["ok"] and "earlier stage failed" in outcome["reason"]
    assert (tmp_path / "out" / "D.png").read_bytes() == b"" and read_failures(tmp_path) == []


def test_stamped_assets_are_skipped_and_success_clears_an_old_failure(tmp_path: Path) -> None:
    record = tmp_path / "failures" / "cutout" / "E.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"asset": "E", "stage": "cutout", "reason": "old"}))
    calls: list[str] = []

    def work(m: dict) -> None:
        calls.append(m["asset"])
        write_outputs(m)

    members = [member(tmp_path, "E"), member(tmp_path, "F")]
    run_members(stage="cutout", chunk="x", members=members, process=lambda ms: one_by_one(ms, work), results=tmp_path)
    assert not record.exists() and calls == ["E", "F"]
    # A retried or resumed job computes only what has no stamp with its key (or lost an output).
    (tmp_path / "out" / "F.png").unlink()
    members.append(member(tmp_path, "G"))
    outcomes = run_members(stage="cutout", chunk="x", members=members, process=lambda ms: one_by_one(ms, work), results=tmp_path)
    assert calls == ["E", "F", "F", "G"]
    assert [o.get("resumed", False) for o in outcomes] == [True, False, False]
    # Another chunk computing E (its upstream was recomputed) computes it: only the same chunk resumes.
    run_members(stage="cutout", chunk="y", members=members[:1], process=lambda ms: one_by_one(ms, work), results=tmp_path)
    assert calls == ["E", "F", "F", "G", "E"]


def test_a_duplicate_or_unknown_result_does_not_cost_the_other_assets(tmp_path: Path) -> None:
    def process(ms: list[dict]):
        for m in ms:
            write_outputs(m)
            yield m["asset"], None
            yield m["asset"], None
        yield "stranger", None

    outcomes = run_members(stage="cutout", chunk="x", members=[member(tmp_path, a) for a in "AB"], process=process,
                           results=tmp_path)
    assert [o["ok"] for o in outcomes] == [True, True]


KILLER = """
import os, signal, sys
from pathlib import Path
from dam3d.runtime.chunk import one_by_one, run_members

results = Path(sys.argv[1])


def work(m):
    if m["asset"] == "X":
        os.kill(os.getpid(), signal.SIGKILL)  # a segfault in native code, an out-of-memory kill
    out = Path(m["outputs"][0])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("ok")


members = [{"asset": a, "key": "k", "outputs": [str(results / "out" / f"{a}.txt")]} for a in "AXBC"]
run_members(stage="mesh", chunk="c", members=members, process=lambda ms: one_by_one(ms, work), results=results)
"""


def test_an_asset_that_kills_its_job_is_found_and_failed_while_the_others_finish(tmp_path: Path) -> None:
    import subprocess
    import sys

    def attempt() -> int:
        return subprocess.run([sys.executable, "-c", KILLER, str(tmp_path)], capture_output=True).returncode

    assert attempt() != 0  # dies at X: A is done, X, B and C are not
    assert read_stamp(tmp_path, "mesh", "A")["ok"] and read_stamp(tmp_path, "mesh", "B") is None
    assert attempt() != 0  # the unfinished ones go one by one: X dies again before B and C
    assert attempt() == 0  # X is recorded without running; B and C finish
    assert [read_stamp(tmp_path, "mesh", a)["ok"] for a in "ABC"] == [True, True, True]
    x = read_stamp(tmp_path, "mesh", "X")
    assert not x["ok"] and "process died 2 times while computing this asset" in x["reason"]
    # What to do about it: a command that removes what the plan checks (for the views, their folder).
    assert f"to try again: dam3d rerun X --from mesh --results {tmp_path}" in x["reason"]
    assert [f["asset"] for f in read_failures(tmp_path)] == ["X"]
    assert not list(tmp_path.rglob("*.starts"))


def test_temporaries_a_killed_writer_left_are_removed_when_the_asset_is_computed(tmp_path: Path) -> None:
    m = member(tmp_path, "A")
    leftover = tmp_path / "out" / ".A.k2j4x9.tmp.png"  # as dam3d.runtime.atomic names them
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a PNG")
    other = tmp_path / "out" / ".B.k2j4x9.tmp.png"  # another asset's: not ours to touch
    other.write_bytes(b"x")
    run_members(stage="cutout", chunk="x", members=[m], process=lambda ms: one_by_one(ms, write_outputs), results=tmp_path)
    assert not leftover.exists() and other.exists()


class FakeClock:
    """A monotonic clock the test moves: the progress line fires without waiting 30 s."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_line_fires_past_the_interval_and_counts_each_finished_asset(tmp_path: Path) -> None:
    import io

    from dam3d.runtime.chunk import PROGRESS_EVERY, ChunkRunner

    clock, terminal = FakeClock(), io.StringIO()

    def work(m: dict) -> None:
        write_outputs(m)
        clock.now += PROGRESS_EVERY / 2 + 1  # each asset takes just over half the interval

    members = [member(tmp_path, a) for a in "ABCDE"]
    runner = ChunkRunner(stage="render", chunk="5x-abc", members=members, process=lambda ms: one_by_one(ms, work),
                         results=tmp_path, progress=terminal, clock=clock)
    outcomes = runner.run()
    assert [o["ok"] for o in outcomes] == [True] * 5  # the crash of the round: this raised TypeError
    lines = terminal.getvalue().splitlines()
    # Past 30 s after B (2 x 16 s) and D (2 x 16 s more); never after the last asset (the summary says it).
    assert lines == ["dam3d: render 5x-abc: 2/5 assets, 16.00 s/asset", "dam3d: render 5x-abc: 4/5 assets, 16.00 s/asset"]


def test_progress_interval_is_a_setting(tmp_path: Path) -> None:
    import io

    from dam3d.runtime.chunk import ChunkRunner

    clock, terminal = FakeClock(), io.StringIO()

    def work(m: dict) -> None:
        write_outputs(m)
        clock.now += 1.0

    ChunkRunner(stage="mesh", chunk="c", members=[member(tmp_path, a) for a in "ABC"], process=lambda ms: one_by_one(ms, work),
                results=tmp_path, progress=terminal, clock=clock, progress_every=1.0).run()
    assert terminal.getvalue().count("\n") == 2  # after A and after B
    terminal2 = io.StringIO()
    ChunkRunner(stage="mesh", chunk="d", members=[member(tmp_path, a) for a in "XYZ"], process=lambda ms: one_by_one(ms, work),
                results=tmp_path, progress=terminal2, clock=clock, progress_every=10.0).run()
    assert terminal2.getvalue() == ""  # 3 s in all: under the interval


def test_finished_assets_are_kept_when_the_worker_side_fails_on_another(tmp_path: Path) -> None:
    """A worker (Blender) wrote A and B; the Python side then fails on C: A and B stay stamped, never redone."""
    computed: list[list[str]] = []

    def process(ms: list[dict]):
        computed.append([m["asset"] for m in ms])
        for m in ms:
            if m["asset"] == "C" and len(computed) == 1:
                raise KeyError("the renderer's record for C has no 'out'")
            write_outputs(m)
            yield m["asset"], None

    members = [member(tmp_path, a) for a in "ABCD"]
    outcomes = run_members(stage="render", chunk="x", members=members, process=process, results=tmp_path, retries=1)
    assert computed == [["A", "B", "C", "D"], ["C", "D"]]  # the retry takes only what was not finished
    assert all(o["ok"] for o in outcomes)
    # And a job's retry (Snakemake's) with the same chunk computes nothing again.
    assert run_members(stage="render", chunk="x", members=members, process=process, results=tmp_path)[0]["resumed"]
    assert len(computed) == 2


def test_refused_members_fail_with_the_catalogue_reason_without_running(tmp_path: Path) -> None:
    def never(m: dict) -> None:
        raise AssertionError("must not run")

    m = member(tmp_path, "U", refused="image is a URL (https://cdn.example.com/u.jpg); dam3d does not download images")
    [outcome] = run_members(stage="cutout", chunk="x", members=[m], process=lambda ms: one_by_one(ms, never), results=tmp_path)
    assert not outcome["ok"] and outcome["reason"].startswith("image is a URL")
    assert read_failures(tmp_path) == [{"asset": "U", "stage": "cutout", "reason": outcome["reason"]}]
    assert "retry" not in read_stamp(tmp_path, "cutout", "U")  # final until the catalogue changes (the key)


def test_warnings_are_said_and_kept_in_the_stamp(tmp_path: Path) -> None:
    import io

    from dam3d.errors import AssetWarning

    def process(ms: list[dict]):
        for m in ms:
            write_outputs(m)
            yield m["asset"], AssetWarning(m["asset"], "cutout", ["photo is only 90x60 px"]) if m["asset"] == "S" else None

    terminal = io.StringIO()
    outcomes = run_members(stage="cutout", chunk="x", members=[member(tmp_path, a) for a in "RS"], process=process,
                           results=tmp_path, progress=terminal)
    assert [o["ok"] for o in outcomes] == [True, True] and outcomes[1]["warnings"] == ["photo is only 90x60 px"]
    assert read_stamp(tmp_path, "cutout", "S")["warnings"] == ["photo is only 90x60 px"]
    assert terminal.getvalue() == "dam3d: WARNING S: cutout: photo is only 90x60 px\n"
