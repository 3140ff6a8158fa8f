"""Running one asset through one stage so that a bad asset never costs the whole run.

A bad asset (AssetError) or an error that survives its retries leaves a
failure record, results/failures/{stage}/{asset}.json, and 0-byte
placeholder outputs; downstream stages see the placeholder and pass the
failure on instead of crashing. The index skips such assets and lists them.
"""

from __future__ import annotations

import contextlib
import json
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from pathlib import Path

from dam3d.atomic import write_text
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


def run_asset_stage(
    *,
    stage: str,
    asset: str,
    results: str | Path,
    outputs: Iterable[str | Path],
    work: Callable[[], None],
    requires: Iterable[str | Path] = (),
    attempt: int = 1,
    retries: int = 0,
    log: str | Path | None = None,
    note: str | None = None,
) -> bool:
    """Run `work` for one asset; on failure record it and leave placeholders. True if it succeeded.

    `attempt` counts from 1 (Snakemake's); while attempt <= retries an unexpected
    error is raised so that Snakemake retries the job. The job's own chatter goes
    to `log` (after `note`, e.g. dam3d.jobenv's line); a failure is also told on the terminal.
    """
    with _logging_to(log):
        if note:
            print(note, file=sys.stderr)
        ok, reason = _run(stage, asset, results, outputs, work, requires, attempt, retries)
    if not ok:
        print(f"dam3d: FAILED {asset}: {stage}: {reason}", file=sys.stderr)
    return ok


@contextlib.contextmanager
def _logging_to(log: str | Path | None) -> Iterator[None]:
    if log is None:
        yield
        return
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        yield


def _run(
    stage: str,
    asset: str,
    results: str | Path,
    outputs: Iterable[str | Path],
    work: Callable[[], None],
    requires: Iterable[str | Path],
    attempt: int,
    retries: int,
) -> tuple[bool, str | None]:
    outputs = [Path(p) for p in outputs]
    record = failure_path(results, stage, asset)
    failed_inputs = [str(p) for p in requires if is_placeholder(p)]
    reason = None
    if failed_inputs:
        # The earlier stage holds the failure record with the real reason; only pass the placeholder on.
        reason = f"an earlier stage failed for this asset (placeholder {failed_inputs[0]})"
        record.unlink(missing_ok=True)
        _placeholders(outputs)
        return False, reason
    try:
        work()
        record.unlink(missing_ok=True)
        return True, None
    except AssetError as exc:
        reason = exc.reason
    except Exception as exc:  # noqa: BLE001 - anything else may be transient
        reason = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        if attempt <= retries:
            # Let Snakemake retry the job (rule `retries:`); only the last attempt is recorded.
            print(f"dam3d: {asset}: {stage}: attempt {attempt} failed ({reason}); Snakemake will retry", file=sys.stderr)
            raise
    print(f"dam3d: FAILED {asset}: {stage}: {reason}", file=sys.stderr)  # into the log
    write_text(record, json.dumps({"asset": asset, "stage": stage, "reason": reason}) + "\n")
    _placeholders(outputs)
    return False, reason


def _placeholders(outputs: list[Path]) -> None:
    for path in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def run_job(smk: Any, stage: str, work: Callable[[], None], *, requires: Iterable[str | Path] = (), torch: bool = False) -> bool:
    """`run_asset_stage` for a Snakemake `script:` job: asset, outputs, attempt, retries and log from `smk`.

    Threads (and, on Slurm, the GPU in CUDA_VISIBLE_DEVICES) are taken up first, see dam3d.jobenv.
    """
    from dam3d.jobenv import use_granted

    note = use_granted(smk.threads, torch=torch)
    return run_asset_stage(
        stage=stage,
        asset=smk.wildcards.asset,
        results=smk.config["results"],
        outputs=smk.output,
        work=work,
        requires=requires,
        attempt=smk.resources.attempt,
        retries=smk.config["retries"],
        log=smk.log[0],
        note=note,
    )
