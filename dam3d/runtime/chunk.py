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
from pathlib import Path
from typing import Any, TextIO

from dam3d.runtime import layout
from dam3d.runtime.atomic import remove_leftovers, write_text
from dam3d.runtime.stamps import read_stamps, write_stamp
from dam3d.errors import AssetError, AssetWarning


def is_placeholder(path: str | Path) -> bool:
    """True for the 0-byte file a failed asset leaves where its output would be."""
    path = Path(path)
    return path.exists() and path.stat().st_size == 0


def has_result(path: str | Path) -> bool:
    """True for a finished output: the file exists and is not a failed asset's placeholder."""
    path = Path(path)
    return path.is_file() and path.stat().st_size > 0


def read_failures(results: str | Path) -> list[dict]:
    """All failure records under `results`, oldest stage first."""
    records = []
    for path in sorted(layout.failures(results).glob("*/*.json")):
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


def one_by_one(members: list[dict], work: Callable[[dict], None]) -> Iterator[tuple[str, BaseException | None]]:
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
# Long chunks (TRELLIS: minutes per asset, a render chunk: minutes) say how far they are
# on the terminal this often, in seconds.
PROGRESS_EVERY = 30.0


def starts_path(results: str | Path, stage: str, asset: str) -> Path:
    """How many times a chunk job started `asset` and died before finishing it."""
    return layout.stamp(results, stage, asset).with_suffix(".starts")


class ChunkError(RuntimeError):
    """The stage itself failed, not one asset (a model that does not load, a lost GPU).

    The chunk job fails so that Snakemake retries it; the assets it finished keep
    their stamps and the others are planned again on the next run.
    """


class ChunkRunner:
    """Computes a chunk's members through `process`, each asset's failure alone.

    `members` are dicts with asset, key, outputs and, optionally, requires (files
    from earlier stages; a placeholder there passes that stage's failure on) and
    refused (a reason the catalogue already gave: the asset fails without running).
    An asset this chunk already stamped with its key is skipped (a retried or resumed
    job). An AssetError is recorded at once; any other error is retried alone up to
    `retries` times, then recorded and stamped to be tried again next run. Every
    finished asset gets its stamp (dam3d.runtime.stamps) as soon as `process` yields it, after
    its outputs, so a killed or failing job keeps what it finished. An error of
    `process` itself raises ChunkError once the retries are spent.

    `clock` (seconds, monotonic) and `progress_every` (seconds) are injectable so that
    tests reach the progress line without waiting.
    """

    def __init__(
        self,
        *,
        stage: str,
        chunk: str,
        members: list[dict],
        process: Process,
        results: str | Path,
        retries: int = 0,
        progress: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        progress_every: float = PROGRESS_EVERY,
    ) -> None:
        self.stage, self.chunk, self.members = stage, chunk, members
        self.process, self.results, self.retries = process, Path(results), retries
        self.progress = progress or sys.stderr
        self.clock, self.progress_every = clock, progress_every
        self.outcomes: dict[str, dict] = {}
        self.start_time = self.last_report = clock()

    def run(self) -> list[dict]:
        """Compute every member; return their outcomes in member order."""
        todo, suspects = self._triage()
        # A job that dies (segfault, memory limit) leaves its unfinished assets with a start
        # counted. Next time those go last and one by one: the one that kills the process is
        # found, the others finish, and after MAX_DEATHS it is recorded as failed unrun.
        self._count_start(todo)
        self._compute(todo)
        for member in suspects:
            print(f"dam3d: {member['asset']}: {self.stage}: a job died while computing it before; computing it alone",
                  file=sys.stderr, flush=True)
            self._count_start([member])
            self._compute([member])
        return [self.outcomes[m["asset"]] for m in self.members]

    # -- bookkeeping of one asset

    def _deaths(self, asset: str) -> int:
        try:
            return int(starts_path(self.results, self.stage, asset).read_text())
        except (OSError, ValueError):
            return 0

    def _count_start(self, batch: list[dict]) -> None:
        for member in batch:
            write_text(starts_path(self.results, self.stage, member["asset"]), str(self._deaths(member["asset"]) + 1))

    def _triage(self) -> tuple[list[dict], list[dict]]:
        """Resume what this chunk finished before; fail at once what cannot run; the rest to compute."""
        todo, suspects = [], []
        # The store and this chunk's own journal entries, not the whole journal (other jobs write there).
        stamps = read_stamps(self.results, self.stage, [m["asset"] for m in self.members])
        for member in self.members:
            asset = member["asset"]
            stamp = stamps.get(asset)
            if (stamp and stamp["chunk"] == self.chunk and stamp["key"] == member["key"]
                    and not stamp.get("retry") and all(Path(p).exists() for p in member["outputs"])):
                self.outcomes[asset] = {"asset": asset, "ok": stamp["ok"], "reason": stamp["reason"],
                                        "resumed": True, **({"warnings": stamp["warnings"]} if stamp.get("warnings") else {})}
                continue
            # The old stamp goes before the outputs change: killed between new outputs and new
            # stamp, the asset must be pending, not taken as done with its old key.
            stamps.clear(asset)
            for output in member["outputs"]:  # what a killed job was writing for it
                remove_leftovers(output)
            failed_inputs = [str(p) for p in member.get("requires", ()) if is_placeholder(p)]
            died = self._deaths(asset)
            if member.get("refused"):
                self._finish(member, member["refused"])
            elif failed_inputs:
                # The earlier stage holds the failure record with the real reason; only pass the placeholder on.
                self._finish(member, f"an earlier stage failed for this asset (placeholder {failed_inputs[0]})",
                             record=False)
            elif died >= MAX_DEATHS:
                # `dam3d rerun` removes what the plan checks (a rendered asset's views folder, not one view file).
                self._finish(member, f"the {self.stage} process died {died} times while computing this asset (a "
                                     f"crash in native code or a memory limit); to try again: dam3d rerun {asset} "
                                     f"--from {self.stage.split('-', 1)[0]} --results {self.results}")
            elif died:
                suspects.append(member)
            else:
                todo.append(member)
        return todo, suspects

    def _finish(self, member: dict, reason: str | None, *, record: bool = True, retry: bool = False,
                warnings: list[str] | None = None) -> None:
        """Record one asset's outcome: failure record and placeholders, then its stamp (last)."""
        asset = member["asset"]
        failure = layout.failure(self.results, self.stage, asset)
        if reason is None:
            failure.unlink(missing_ok=True)
        else:
            if record:
                write_text(failure, json.dumps({"asset": asset, "stage": self.stage, "reason": reason}) + "\n")
            else:
                failure.unlink(missing_ok=True)
            _placeholders([Path(p) for p in member["outputs"]])
            print(f"dam3d: FAILED {asset}: {self.stage}: {reason}", file=sys.stderr)
        for warning in warnings or ():
            print(f"dam3d: WARNING {asset}: {self.stage}: {warning}", file=self.progress, flush=True)
        stamp = {"key": member["key"], "chunk": self.chunk, "ok": reason is None, "reason": reason}
        if retry:
            stamp["retry"] = True
        if warnings:
            stamp["warnings"] = list(warnings)
        write_stamp(self.results, self.stage, asset, stamp)
        starts_path(self.results, self.stage, asset).unlink(missing_ok=True)
        self.outcomes[asset] = {"asset": asset, "ok": reason is None, "reason": reason,
                                **({"warnings": list(warnings)} if warnings else {})}
        self._report_progress()

    def _report_progress(self) -> None:
        now = self.clock()
        if now - self.last_report >= self.progress_every and len(self.outcomes) < len(self.members):
            self.last_report = now
            print(f"dam3d: {self.stage} {self.chunk}: {len(self.outcomes)}/{len(self.members)} assets, "
                  f"{(now - self.start_time) / len(self.outcomes):.2f} s/asset", file=self.progress, flush=True)

    # -- the stage's work

    def _compute(self, todo: list[dict]) -> None:
        """`process` over `todo`, retrying errors of single assets (or of the stage) up to `retries` times."""
        for attempt in range(self.retries + 1):
            if not todo:  # nothing left (or a resumed job with all done): no model is loaded
                return
            todo = self._attempt(todo, attempt)

    def _attempt(self, todo: list[dict], attempt: int) -> list[dict]:
        """One pass of `process` over `todo`; returns the members to try again."""
        by_asset = {m["asset"]: m for m in todo}
        again: list[dict] = []
        last = attempt == self.retries
        try:
            for asset, error in self.process(todo):
                member = by_asset.pop(asset, None)
                if member is None:
                    print(f"dam3d: {self.stage}: ignored a second or unknown result for {asset!r}", file=sys.stderr)
                elif error is None or isinstance(error, AssetWarning):
                    self._finish(member, None, warnings=error.warnings if error is not None else None)
                elif isinstance(error, AssetError):
                    self._finish(member, error.reason)
                elif not last:
                    print(f"dam3d: {asset}: {self.stage}: attempt {attempt + 1} failed ({describe(error)}); "
                          "retrying", file=sys.stderr)
                    again.append(member)
                else:
                    self._finish(member, describe(error), retry=True)
        except Exception as exc:  # noqa: BLE001 - the stage itself failed (e.g. its model did not load)
            traceback.print_exc()
            if last:
                for member in by_asset.values():  # raised, not died: not the assets' doing
                    starts_path(self.results, self.stage, member["asset"]).unlink(missing_ok=True)
                raise ChunkError(f"{self.stage} {self.chunk}: {describe(exc)} ({len(by_asset)} asset(s) not done; "
                                 "they are computed again by the job's retry or the next run)") from exc
            print(f"dam3d: {self.stage} {self.chunk}: attempt {attempt + 1} failed ({describe(exc)}); "
                  f"retrying the {len(by_asset)} asset(s) left", file=sys.stderr)
            return again + list(by_asset.values())
        for member in by_asset.values():  # a process that skipped an asset is a bug; never lose it silently
            self._finish(member, "internal error: the stage returned no result for this asset", retry=True)
        return again


def run_members(**kwargs: Any) -> list[dict]:
    """`ChunkRunner(**kwargs).run()`: compute a chunk's members, return their outcomes."""
    return ChunkRunner(**kwargs).run()


def describe(error: BaseException) -> str:
    if isinstance(error, AssetError):
        return error.reason
    return f"{type(error).__name__}: {error}"


def run_chunk(smk: Any, stage: str, process: Process, *, torch: bool = False) -> list[dict]:
    """`run_members` for a Snakemake chunk job: members, retries and log from `smk`; writes the chunk manifest.

    Threads (and, on Slurm, the GPU in CUDA_VISIBLE_DEVICES) are taken up first, see
    dam3d.runtime.jobenv. The job's chatter goes to its log; failures and progress also to the terminal.
    """
    from dam3d.runtime.jobenv import use_granted

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
