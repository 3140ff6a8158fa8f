"""Running one asset through one stage so that a bad asset never costs the whole run.

A bad asset (AssetError) or an error that survives its retries leaves a
failure record, results/failures/{stage}/{asset}.json, and 0-byte
placeholder outputs; downstream stages see the placeholder and pass the
failure on instead of crashing. The index skips such assets and lists them.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable, Iterable
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
    retries: int = 1,
) -> bool:
    """Run `work` for one asset; on failure record it and leave placeholders. True if it succeeded."""
    outputs = [Path(p) for p in outputs]
    record = failure_path(results, stage, asset)
    failed_inputs = [str(p) for p in requires if is_placeholder(p)]
    reason = None
    if failed_inputs:
        reason = f"an earlier stage failed for this asset (placeholder {failed_inputs[0]})"
    else:
        for attempt in range(retries + 1):
            try:
                work()
                record.unlink(missing_ok=True)
                return True
            except AssetError as exc:
                reason = exc.reason
                break
            except Exception as exc:  # noqa: BLE001 - anything else is retried, then recorded
                reason = f"{type(exc).__name__}: {exc}"
                if attempt < retries:
                    print(f"dam3d: {asset}: {stage}: attempt {attempt + 1} failed ({reason}); retrying", file=sys.stderr)
                else:
                    traceback.print_exc()
    print(f"dam3d: FAILED {asset}: {stage}: {reason}", file=sys.stderr)
    write_text(record, json.dumps({"asset": asset, "stage": stage, "reason": reason}) + "\n")
    for path in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return False
