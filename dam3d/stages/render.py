"""Render stage: N turntable views per mesh with Blender, many assets per Blender start-up.

The rendering itself lives in `blender/render_views.py`, which runs either in
this Python (the `bpy` module) or in a `blender` binary; this module only
writes its job list, runs it in a subprocess and reads its per-asset records as they come, so a
crash inside Blender never takes the caller down.

`python -m dam3d.stages.render --bench` times start-up and per-asset cost of an engine.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dam3d import CHECKOUT

SCRIPT = CHECKOUT / "blender" / "render_views.py"
ENGINES = ("BLENDER_WORKBENCH", "BLENDER_EEVEE", "CYCLES")
# How render_stream starts the error of an asset that Blender never reported (it died first).
RENDERER_EXITED = "renderer exited"
# render_views.py prints one line per finished asset: this prefix, then its record as JSON.
RECORD_PREFIX = "render_views: record "


def view_names(views: int) -> list[str]:
    """File stems of the views, `az000`, `az045`, ... (same rule as render_views.view_names)."""
    return [f"az{round(i * 360 / views) % 360:03d}" for i in range(views)]


@dataclass
class BatchRun:
    """What one Blender process did: its per-job records, plus timings."""

    records: list[dict[str, Any]]
    wall_seconds: float
    startup_seconds: float | None  # as measured inside Blender (import bpy + scene setup)
    returncode: int
    output: str = field(repr=False)  # stdout + stderr, for logs


def stream_batch(
    jobs: list[tuple[Path, Path]] | list[dict[str, Any]],
    *,
    views: int = 8,
    elevation: float = 15.0,
    resolution: int = 256,
    engine: str = "BLENDER_WORKBENCH",
    device: str = "CPU",
    samples: int = 16,
    fov: float = 30.0,
    aa: int = 4,
    vertex_colors: str = "srgb",
    blender: str | None = None,
    timeout: float | None = None,
) -> Generator[dict[str, Any], None, BatchRun]:
    """Run render_views.py once for all `jobs` ((mesh, out_dir) pairs), yielding each job's record as it ends.

    A record is render_views.py's {"mesh", "out", "ok", "error", "seconds", ...}, read
    from its `RECORD_PREFIX` line the moment Blender has written that asset's views,
    so the caller can keep (stamp) each asset before Blender goes on to the next one.
    Returns the BatchRun (StopIteration.value; `run = yield from stream_batch(...)`).
    `timeout` (seconds, None: no limit) is how long Blender may go without finishing an
    asset (start-up included for the first) before it is taken as hung and killed; the
    jobs it did not reach have no record. Closing the generator early kills Blender.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    with tempfile.TemporaryDirectory(prefix="dam3d-render-") as tmp:
        jobs_file = Path(tmp) / "jobs.json"
        # A job is (mesh, out_dir), or a dict with render_views.py's optional per-job keys (views, rotation).
        jobs_file.write_text(json.dumps([
            {k: str(v) if k in ("mesh", "out") else v for k, v in j.items()} if isinstance(j, dict)
            else {"mesh": str(j[0]), "out": str(j[1])} for j in jobs
        ]))
        args = [
            "--jobs", str(jobs_file),
            "--views", str(views), "--elevation", str(elevation), "--resolution", str(resolution),
            "--engine", engine, "--device", device, "--samples", str(samples), "--fov", str(fov),
            "--aa", str(aa), "--vertex-colors", vertex_colors,
        ]
        if blender is None:
            cmd = [sys.executable, str(SCRIPT), "--", *args]
        else:
            # --python-exit-code: an uncaught exception in the script must not look like success.
            cmd = [blender, "-b", "--factory-startup", "--python-exit-code", "1", "-P", str(SCRIPT), "--", *args]
        t = time.perf_counter()
        # One pipe for both streams: two would deadlock once the unread one fills.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        timed_out = threading.Event()
        watchdog = _Watchdog(timeout, lambda: (timed_out.set(), proc.kill()))
        records: list[dict[str, Any]] = []
        output: list[str] = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                record = _record(line, output)
                if record is not None:
                    watchdog.restart()  # an asset finished: Blender is alive
                    records.append(record)
                    yield record
            rc = proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:  # the caller stopped early, or failed: no orphaned Blender
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if timed_out.is_set() and rc != 0:  # not a run that ended on its own as the timer fired
            output.append(f"\ntimed out: no asset finished within {timeout} s")
            rc = -9
        wall = time.perf_counter() - t
    text = "".join(output)
    m = re.search(r"startup_seconds=([0-9.]+)", text)
    return BatchRun(records, wall, float(m.group(1)) if m else None, rc, text)


def _record(line: str, output: list[str]) -> dict[str, Any] | None:
    """The record on one line of Blender's output, else None (the line goes to `output`).

    Blender's own C-level prints can leave a partial line in the shared pipe, so the prefix
    is looked for anywhere in the line; a record that does not parse is output, not an error.
    """
    at = line.find(RECORD_PREFIX)
    if at >= 0:
        try:
            record = json.loads(line[at + len(RECORD_PREFIX):])
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and "out" in record:
            output.append(line[:at])
            return record
    output.append(line)
    return None


class _Watchdog:
    """Calls `action` once `seconds` pass without a `restart` (None: never)."""

    def __init__(self, seconds: float | None, action: Callable[[], Any]) -> None:
        self.seconds, self.action = seconds, action
        self.timer: threading.Timer | None = None
        self.restart()

    def restart(self) -> None:
        self.cancel()
        if self.seconds is not None:
            self.timer = threading.Timer(self.seconds, self.action)
            self.timer.daemon = True
            self.timer.start()

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()


def run_batch(jobs: list[tuple[Path, Path]] | list[dict[str, Any]], **settings: Any) -> BatchRun:
    """`stream_batch` run to its end: every record, timings and output at once."""
    stream = stream_batch(jobs, **settings)
    while True:
        try:
            next(stream)
        except StopIteration as stop:
            return stop.value


def render_stream(
    jobs: list[tuple[Path, Path]],
    *,
    views: int = 8,
    engine: str = "BLENDER_WORKBENCH",
    **settings: Any,
) -> Iterator[tuple[Path, str | None]]:
    """Render every (mesh, out_dir) job; yield (out_dir, None) when done or (out_dir, the error), as each ends.

    Writes out_dir/az000.png ... (RGBA, transparent background), one Blender process
    for the whole list.  A crash of that process is reported against every job
    it did not finish (the error starts with RENDERER_EXITED), never raised.
    `settings` are stream_batch's (elevation, resolution, device, samples, fov, aa,
    vertex_colors, blender, timeout).
    """
    if not jobs:
        return
    names = view_names(views)
    pending = {Path(out) for _, out in jobs}
    run = yield from _checked(stream_batch(jobs, views=views, engine=engine, **settings), names, pending)
    for _, out in jobs:
        if Path(out) in pending:
            why = f"{RENDERER_EXITED} with code {run.returncode} before this asset: {_tail(run.output)}"
            if engine != "CYCLES" and "EGL" in run.output and run.returncode != 0:
                why += " (Workbench/EEVEE need OpenGL through EGL: apt install libegl1 libegl-mesa0 libgl1-mesa-dri)"
            yield Path(out), why


def _checked(stream: Generator[dict[str, Any], None, BatchRun], names: list[str],
             pending: set[Path]) -> Generator[tuple[Path, str | None], None, BatchRun]:
    """Blender's records as (out_dir, error): a view file missing on disk is an error too.

    However this generator ends (exhausted, closed early, an error), `stream` is closed with
    it, which stops Blender then rather than when the generator is collected.
    """
    try:
        while True:
            try:
                rec = next(stream)
            except StopIteration as stop:
                return stop.value
            out = Path(rec["out"])
            if out not in pending:
                continue
            pending.discard(out)
            if not rec["ok"]:
                yield out, str(rec["error"])
            else:
                missing = [n for n in names if not (out / f"{n}.png").is_file()]
                yield out, f"renderer wrote no {missing[0]}.png" if missing else None
    finally:
        stream.close()


def render_members(members: list[dict], **settings: Any) -> Iterator[tuple[str, BaseException | None]]:
    """The render stage's `Process` for a chunk (dam3d.runtime.chunk): (asset, None or its error) as each ends.

    `members` are chunk members with `asset`, `mesh` and `outputs` (the view PNGs);
    `settings` are render_stream's. When Blender dies or hangs (RENDERER_EXITED), the asset
    it was on is reported (a RuntimeError: retried alone, not the asset's fault for sure)
    and a fresh Blender takes the rest, so one asset that hangs or crashes Blender costs
    only itself. Two Blenders in a row that die before finishing any asset fail all that
    are left (a set-up error, such as no EGL: restarting per asset would only repeat it).
    """
    from dam3d.errors import AssetError

    by_dir = {Path(m["outputs"][0]).parent: m for m in members}
    todo = list(by_dir)
    idle_deaths = 0  # Blenders in a row that died before finishing an asset
    while todo:
        finished_here, restart = 0, False
        for out_dir, error in render_stream([(Path(by_dir[d]["mesh"]), d) for d in todo], **settings):
            todo.remove(out_dir)
            asset = by_dir[out_dir]["asset"]
            if error and error.startswith(RENDERER_EXITED):
                yield asset, RuntimeError(error)
                idle_deaths = 0 if finished_here else idle_deaths + 1
                if idle_deaths < 2:  # this asset stopped Blender: the rest get a new one
                    restart = True
                    break
            else:
                finished_here += 1
                yield asset, AssetError(asset, "render", error) if error else None
        if not restart:
            return


def _tail(output: str) -> str:
    """The last meaningful line of Blender's output (its EGL chatter is noise)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip() and not ln.startswith("EGL Error")]
    return lines[-1] if lines else "no output"


# --------------------------------------------------------------------------- benchmark

def bench_meshes(folder: Path, n: int) -> list[Path]:
    """`n` small GLBs: trimesh primitives with vertex colours, the last one textured."""
    import numpy as np
    import trimesh
    from PIL import Image

    rng = np.random.default_rng(0)
    makers = [
        lambda: trimesh.creation.box(extents=(1.0, 0.6, 0.4)),
        lambda: trimesh.creation.icosphere(subdivisions=3, radius=0.5),
        lambda: trimesh.creation.cylinder(radius=0.3, height=1.0, sections=48),
        lambda: trimesh.creation.capsule(height=0.8, radius=0.25),
        lambda: trimesh.creation.annulus(r_min=0.2, r_max=0.5, height=0.3, sections=48),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        mesh = makers[i % len(makers)]()
        if i == n - 1:
            uv = rng.random((len(mesh.vertices), 2))
            check = ((np.indices((128, 128)) // 16).sum(0) % 2 * 200 + 30).astype(np.uint8)
            tex = Image.fromarray(np.stack([check, 255 - check, np.full_like(check, 90)], -1))
            mesh.visual = trimesh.visual.TextureVisuals(uv=uv, image=tex)
        else:
            mesh.visual.vertex_colors = rng.integers(40, 255, (len(mesh.vertices), 4), dtype=np.uint8) | np.array(
                [0, 0, 0, 255], dtype=np.uint8
            )
        path = folder / f"bench{i:03d}.glb"
        mesh.export(path)
        paths.append(path)
    return paths


def bench(engine: str, resolution: int, assets: int, samples: int, aa: int, blender: str | None) -> int:
    """Render `assets` test meshes once and print start-up, per-asset and overhead figures."""
    with tempfile.TemporaryDirectory(prefix="dam3d-bench-") as tmp:
        meshes = bench_meshes(Path(tmp) / "meshes", assets)
        jobs = [(m, Path(tmp) / "views" / m.stem) for m in meshes]
        run = run_batch(jobs, engine=engine, resolution=resolution, samples=samples, aa=aa, blender=blender)
    ok = [r for r in run.records if r["ok"]]
    if not ok:
        print(f"bench: no asset rendered (exit {run.returncode}): {_tail(run.output)}", file=sys.stderr)
        return 1
    job_s = sum(r["seconds"] for r in run.records)
    render_s = sum(r.get("render_seconds", 0.0) for r in run.records)
    per_asset = sum(r["seconds"] for r in ok) / len(ok)
    # Start-up as the caller pays it: process launch + import bpy + scene setup.
    startup = run.wall_seconds - job_s
    print(f"engine={engine} resolution={resolution} views=8 assets={assets} ok={len(ok)} "
          f"samples={samples if engine == 'CYCLES' else aa}")
    print(f"start-up seconds:              {startup:.3f} (inside Blender: {run.startup_seconds})")
    print(f"seconds per asset (8 views):   {per_asset:.3f} (first {run.records[0]['seconds']:.3f})")
    print(f"one asset incl. start-up:      {startup + run.records[0]['seconds']:.3f}")
    print(f"total wall seconds:            {run.wall_seconds:.3f}")
    print(f"share of time outside render:  {1.0 - render_s / run.wall_seconds:.1%}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dam3d.stages.render", description="Render-stage tools.")
    p.add_argument("--bench", action="store_true", help="time the renderer on generated test meshes")
    p.add_argument("--engine", choices=ENGINES, default="BLENDER_WORKBENCH")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--assets", type=int, default=5)
    p.add_argument("--samples", type=int, default=16, help="Cycles samples")
    p.add_argument("--aa", type=int, default=4, help="Workbench/EEVEE anti-aliasing samples")
    p.add_argument("--blender", default=None, help="a blender binary instead of the bpy module")
    a = p.parse_args(argv)
    if not a.bench:
        p.error("nothing to do: pass --bench")
    if a.assets < 1:
        p.error("--assets must be >= 1")
    return bench(a.engine, a.resolution, a.assets, a.samples, a.aa, a.blender)


if __name__ == "__main__":
    sys.exit(main())
