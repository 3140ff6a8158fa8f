"""Running a chunk of assets through one stage so that a bad asset never costs the whole run.

A bad asset (AssetError) or an error that survives its retries leaves a
failure record, results/failures/{stage}/{asset}.json, and 0-byte
placeholder outputs; downstream stages see the placeholder and pass the
failure on instead of crashing. The index skips such assets and lists them.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from pathlib import Path

from dam3d.atomic import remove_leftovers, write_text
from dam3d.errors import AssetError


def is_placeholder(path: str | Path) -> bool:
    path = Path(path)
    return path.exists() and path.stat().st_size == 0


def failure_path(results: str | Path, stage: str, asset: str) -> Path:
    return Path(results) / "failures" / stage / f"{asset}.json"


def read_failures(results: str | Path) -> list[dict]:
    """All failure records under `results`, oldest stage first."""
    records = []
    for path in sorted(Path(results, "failures").glob("*/*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return records


@contextlib.contextmanager
def _logging_to(log: str | Path | None) -> Iterator[None]:
    if log is None:
        yield
        return
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        yield


def _placeholders(outputs: list[Path]) -> None:
    for path in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


Process = Callable[[list[dict]], Iterable[tuple[str, BaseException | None]]]


def each(members: list[dict], work: Callable[[dict], None]) -> Iterator[tuple[str, BaseException | None]]:
    """A `Process` for stages without batching: `work(member)` for each, its error kept to it."""
    for member in members:
        # Into the job's log: should the process die on this asset, the log's last line names it.
        print(f"dam3d: {member['asset']} ...", file=sys.stderr, flush=True)
        try:
            work(member)
        except Exception as exc:  # noqa: BLE001 - reported for this asset alone
            yield member["asset"], exc
        else:
            yield member["asset"], None


# A chunk job that dies this many times while computing an asset records it as failed.
MAX_DEATHS = 2


def _starts_path(results: str | Path, stage: str, asset: str) -> Path:
    from dam3d.plan import stamp_path

    return stamp_path(results, stage, asset).with_suffix(".starts")


class ChunkError(RuntimeError):
    """The stage itself failed, not one asset (a model that does not load, a lost GPU).

    The chunk job fails so that Snakemake retries it; the assets it finished keep
    their stamps and the others are planned again on the next run.
    """


def run_members(
    *,
    stage: str,
    chunk: str,
    members: list[dict],
    process: Process,
    results: str | Path,
    retries: int = 0,
    progress: Any = None,
) -> list[dict]:
    """Compute a chunk's members through `process`, each asset's failure alone; return their outcomes.

    `members` are dicts with asset, key, outputs and, optionally, requires (files
    from earlier stages; a placeholder there passes that stage's failure on). An
    asset this chunk already stamped with its key is skipped (a retried or resumed
    job). An AssetError is recorded at once; any other error is retried alone up to
    `retries` times, then recorded and stamped to be tried again next run. Every
    finished asset gets its stamp (dam3d.plan), after its outputs, so a killed job
    keeps what it finished. An error of `process` itself raises ChunkError once the
    retries are spent.
    """
    from dam3d.plan import read_stamp, stamp_path

    progress = progress or sys.stderr
    outcomes: dict[str, dict] = {}
    started = time.monotonic()
    last_report = started

    def finish(member: dict, reason: str | None, *, record: bool = True, retry: bool = False) -> None:
        nonlocal last_report
        asset = member["asset"]
        failure = failure_path(results, stage, asset)
        if reason is None:
            failure.unlink(missing_ok=True)
        else:
            if record:
                write_text(failure, json.dumps({"asset": asset, "stage": stage, "reason": reason}) + "\n")
            else:
                failure.unlink(missing_ok=True)
            _placeholders([Path(p) for p in member["outputs"]])
            print(f"dam3d: FAILED {asset}: {stage}: {reason}", file=sys.stderr)
        stamp = {"key": member["key"], "chunk": chunk, "ok": reason is None, "reason": reason}
        write_text(stamp_path(results, stage, asset), json.dumps({**stamp, **({"retry": True} if retry else {})}) + "\n")
        _starts_path(results, stage, asset).unlink(missing_ok=True)
        outcomes[asset] = {"asset": asset, "ok": reason is None, "reason": reason}
        # Long chunks (TRELLIS: minutes) say how far they are on the terminal, every 30 s.
        now = time.monotonic()
        if now - last_report > 30 and len(outcomes) < len(members):
            last_report = now
            print(f"dam3d: {stage} {chunk}: {len(outcomes)}/{len(members)} assets, "
                  f"{(now - started) / len(outcomes):.2f} s/asset", file=progress, flush=True)

    def starts(asset: str) -> int:
        """How many times a job started this asset and died before finishing it."""
        try:
            return int(_starts_path(results, stage, asset).read_text())
        except (OSError, ValueError):
            return 0

    def started(batch: list[dict]) -> None:
        for member in batch:
            write_text(_starts_path(results, stage, member["asset"]), str(starts(member["asset"]) + 1))

    todo, suspects = [], []
    for member in members:
        stamp = read_stamp(results, stage, member["asset"])
        if (stamp and stamp.get("chunk") == chunk and stamp.get("key") == member["key"] and not stamp.get("retry")
                and all(Path(p).exists() for p in member["outputs"])):
            outcomes[member["asset"]] = {"asset": member["asset"], "ok": stamp.get("ok", True),
                                         "reason": stamp.get("reason"), "resumed": True}
            continue
        # The old stamp goes before the outputs change: killed between new outputs and new
        # stamp, the asset must be pending, not taken as done with its old key.
        stamp_path(results, stage, member["asset"]).unlink(missing_ok=True)
        for output in member["outputs"]:  # what a killed job was writing for it
            remove_leftovers(output)
        failed_inputs = [str(p) for p in member.get("requires", ()) if is_placeholder(p)]
        died = starts(member["asset"])
        if failed_inputs:
            # The earlier stage holds the failure record with the real reason; only pass the placeholder on.
            finish(member, f"an earlier stage failed for this asset (placeholder {failed_inputs[0]})", record=False)
        elif died >= MAX_DEATHS:
            finish(member, f"the {stage} process died {died} times while computing this asset (a crash in native "
                           f"code or a memory limit); remove {stamp_path(results, stage, member['asset'])} to try again")
        elif died:
            suspects.append(member)
        else:
            todo.append(member)

    def compute(todo: list[dict]) -> None:
        """`process` over `todo`, retrying errors of single assets (or of the stage) up to `retries` times."""
        for attempt in range(retries + 1):
            if not todo:  # nothing left (or a resumed job with all done): no model is loaded
                return
            by_asset = {m["asset"]: m for m in todo}
            again: list[dict] = []
            try:
                for asset, error in process(todo):
                    member = by_asset.pop(asset, None)
                    if member is None:
                        print(f"dam3d: {stage}: ignored a second or unknown result for {asset!r}", file=sys.stderr)
                    elif error is None:
                        finish(member, None)
                    elif isinstance(error, AssetError):
                        finish(member, error.reason)
                    elif attempt < retries:
                        print(f"dam3d: {asset}: {stage}: attempt {attempt + 1} failed ({_describe(error)}); retrying",
                              file=sys.stderr)
                        again.append(member)
                    else:
                        finish(member, _describe(error), retry=True)
            except Exception as exc:  # noqa: BLE001 - the stage itself failed (e.g. its model did not load)
                traceback.print_exc()
                if attempt == retries:
                    for member in by_asset.values():  # raised, not died: not the assets' doing
                        _starts_path(results, stage, member["asset"]).unlink(missing_ok=True)
                    raise ChunkError(f"{stage} {chunk}: {_describe(exc)} ({len(by_asset)} asset(s) not done; "
                                     "they are computed again by the job's retry or the next run)") from exc
                print(f"dam3d: {stage} {chunk}: attempt {attempt + 1} failed ({_describe(exc)}); "
                      f"retrying the {len(by_asset)} asset(s) left", file=sys.stderr)
                again.extend(by_asset.values())
                by_asset = {}
            for member in by_asset.values():  # a process that skipped an asset is a bug; never lose it silently
                finish(member, "internal error: the stage returned no result for this asset", retry=True)
            todo = again

    # A job that dies (segfault, memory limit) leaves its unfinished assets with a start
    # counted. Next time those go last and one by one: the one that kills the process is
    # found, the others finish, and after MAX_DEATHS it is recorded as failed unrun.
    started(todo)
    compute(todo)
    for member in suspects:
        print(f"dam3d: {member['asset']}: {stage}: a job died while computing it before; computing it alone",
              file=sys.stderr, flush=True)
        started([member])
        compute([member])
    return [outcomes[m["asset"]] for m in members]


def _describe(error: BaseException) -> str:
    if isinstance(error, AssetError):
        return error.reason
    return f"{type(error).__name__}: {error}"


def run_chunk(smk: Any, stage: str, process: Process, *, torch: bool = False) -> list[dict]:
    """`run_members` for a Snakemake chunk job: members, retries and log from `smk`; writes the chunk manifest.

    Threads (and, on Slurm, the GPU in CUDA_VISIBLE_DEVICES) are taken up first, see
    dam3d.jobenv. The job's chatter goes to its log; failures and progress also to the terminal.
    """
    from dam3d.jobenv import use_granted

    members = [dict(m) for m in smk.params.members]
    chunk = smk.wildcards.chunk
    terminal = sys.stderr
    started = time.monotonic()
    with _logging_to(smk.log[0]):
        print(use_granted(smk.threads, torch=torch), file=sys.stderr)
        print(f"dam3d: {stage} {chunk}: {len(members)} assets", file=sys.stderr)
        outcomes = run_members(stage=stage, chunk=chunk, members=members, process=process,
                               results=smk.config["results"], retries=smk.config["retries"], progress=terminal)
    seconds = time.monotonic() - started
    failed = [o for o in outcomes if not o["ok"]]
    for o in failed:
        print(f"dam3d: FAILED {o['asset']}: {stage}: {o['reason']}", file=terminal)
    resumed = sum(bool(o.get("resumed")) for o in outcomes)
    computed = len(outcomes) - resumed
    print(f"dam3d: {stage} {chunk}: {computed} computed" + (f", {resumed} done before" if resumed else "")
          + f" in {seconds:.1f} s ({seconds / max(1, computed):.2f} s/asset), {len(failed)} failed", file=terminal)
    write_text(smk.output[0], json.dumps({"stage": stage, "chunk": chunk, "seconds": round(seconds, 3),
                                          "members": outcomes}, indent=1) + "\n")
    return outcomes
