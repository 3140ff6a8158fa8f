from __future__ import annotations

import json
from pathlib import Path

import pytest

from dam3d.errors import AssetError
from dam3d.stage import read_failures, run_asset_stage


def test_asset_error_is_recorded_with_placeholders_and_not_retried(tmp_path: Path) -> None:
    calls = []

    def work() -> None:
        calls.append(1)
        raise AssetError("A", "cutout", "image file is empty")

    out = tmp_path / "out" / "A.png"
    assert not run_asset_stage(stage="cutout", asset="A", results=tmp_path, outputs=[out], work=work, retries=3)
    assert calls == [1] and out.read_bytes() == b""
    assert read_failures(tmp_path) == [{"asset": "A", "stage": "cutout", "reason": "image file is empty"}]


def test_unexpected_errors_are_raised_for_a_retry_then_recorded_on_the_last_attempt(tmp_path: Path) -> None:
    def broken() -> None:
        raise RuntimeError("out of memory")

    log = tmp_path / "logs" / "C.log"
    kwargs = dict(stage="mesh", asset="C", results=tmp_path, outputs=[tmp_path / "c.glb"], work=broken, retries=1, log=log)
    with pytest.raises(RuntimeError):
        run_asset_stage(attempt=1, **kwargs)
    assert read_failures(tmp_path) == [] and not (tmp_path / "c.glb").exists()
    assert "Snakemake will retry" in log.read_text()
    assert not run_asset_stage(attempt=2, **kwargs)
    assert read_failures(tmp_path)[0]["reason"] == "RuntimeError: out of memory"
    assert (tmp_path / "c.glb").read_bytes() == b"" and "Traceback" in log.read_text()


def test_placeholder_input_is_passed_on_without_running(tmp_path: Path) -> None:
    upstream = tmp_path / "cutout.png"
    upstream.write_bytes(b"")

    def never() -> None:
        raise AssertionError("must not run")

    out = tmp_path / "mesh.glb"
    assert not run_asset_stage(stage="mesh", asset="D", results=tmp_path, outputs=[out], work=never, requires=[upstream])
    assert out.read_bytes() == b"" and read_failures(tmp_path) == []


def test_success_clears_an_old_failure_record(tmp_path: Path) -> None:
    record = tmp_path / "failures" / "cutout" / "E.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"asset": "E", "stage": "cutout", "reason": "old"}))
    assert run_asset_stage(stage="cutout", asset="E", results=tmp_path, outputs=[], work=lambda: None)
    assert not record.exists()
