"""Benchmark of the refresh overhead on a large catalogue whose outputs are up to date.

    python -m dam3d.benchmarks.refresh [--assets 3000] [--keep DIR]

With `--keep DIR` the fixture stays in DIR, and a later run with the same DIR and size
measures it again without building it (a fixture of 100,000 assets takes about an hour
here): each such run adds another photo (NEW-000001, NEW-000002, ...).

Prints (nothing asserted):
- no-op refresh: `snakemake --cores 2` when everything is up to date (DAG build + checks),
  and the dry run `snakemake -n`;
- one-asset refresh: a run after adding one photo, minus the same asset's compute
  measured alone (a one-asset catalogue), i.e. the overhead a large catalogue adds.

Per-asset artefacts of the synthetic catalogue are hard links to one real asset's
results (computing 3,000 real assets would take hours here). Their stamps are written
from the chunks the workflow itself planned (`--touch` runs it without computing), and
the index is built for real.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from PIL import Image

from dam3d import CHECKOUT
from dam3d.runtime import layout

REPO = CHECKOUT
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]


def _snakemake(workdir: Path, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    cmd = [*SNAKEMAKE, "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"), *args]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return elapsed, result


def _photo(path: Path, seed: int) -> None:
    # Distinct content per SKU (the digest is what tells SKUs' photos apart).
    img = Image.new("RGB", (96, 96), (250, 250, 250))
    colour = ((seed * 37) % 200, (seed * 91) % 200, (seed * 53) % 200)
    img.paste(colour, (20 + seed % 20, 20, 70, 80))
    img.save(path, quality=90)


def _workdir(root: Path, name: str, assets: int) -> Path:
    work = root / name
    (work / "catalogue").mkdir(parents=True)
    for i in range(assets):
        _photo(work / "catalogue" / f"SKU-{i:06d}.jpg", i)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["catalogue"] = str(work / "catalogue")
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    return work


# Written last into a finished fixture: what a later run with --keep measures again.
FIXTURE = "fixture.json"


def _link(src: Path, dst: Path, sources: dict[Path, Path]) -> None:
    """Hard-link `dst` to `sources[src]` (first `src` itself); past the filesystem's link limit a copy starts anew.

    ext4 allows 65,000 links per file: a fixture of 100,000 assets links each artefact of the
    real asset more often than that.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(sources.get(src, src), dst)
    except OSError as error:
        if error.errno != errno.EMLINK:
            raise
        shutil.copyfile(src, dst)
        sources[src] = dst


def _build(root: Path, assets: int, single: Path) -> None:
    """The large catalogue's fixture: every asset's artefacts linked to `single`'s, stamped, indexed for real."""
    big = _workdir(root, "big", assets)
    results, real = big / "results", single / "results"
    first = "SKU-000000"
    models = [p.name for p in layout.embeddings(real).iterdir()]
    sources: dict[Path, Path] = {}
    for i in range(assets):
        asset = f"SKU-{i:06d}"
        links = [(layout.cutout(real, first), layout.cutout(results, asset)),
                 (layout.mesh(real, first), layout.mesh(results, asset)),
                 (layout.contact(real, first), layout.contact(results, asset))]
        links += [(view, layout.views(results, asset) / view.name) for view in layout.views(real, first).iterdir()]
        links += [(layout.embedding(real, m, first), layout.embedding(results, m, asset)) for m in models]
        for src, dst in links:
            _link(src, dst, sources)
    print(f"dam3d.benchmarks.refresh: {assets} assets in {big}; marking per-asset outputs up to date", file=sys.stderr)
    _snakemake(big, "--cores", "2", "--touch", "--until", "embed", "contact_asset")
    _stamp_planned_chunks(results)
    seconds_index, _ = _snakemake(big, "--cores", "2")  # index, contact sheet, report for real
    (big / FIXTURE).write_text(json.dumps({"assets": assets, "index_seconds": round(seconds_index, 1)}) + "\n")


def _stamp_planned_chunks(results: Path) -> None:
    """Stamp every asset of the chunks the run planned, as their jobs would have (see dam3d.runtime.stamps)."""
    from dam3d.runtime.stamps import write_stamp

    for members_file in results.glob("chunks/*/*.members.json"):
        stage, chunk = members_file.parent.name, members_file.name.removesuffix(".members.json")
        for member in json.loads(members_file.read_text()):
            write_stamp(results, stage, member["asset"], {"key": member["key"], "chunk": chunk, "ok": True, "reason": None})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dam3d.benchmarks.refresh", description=__doc__.split("\n")[0])
    parser.add_argument("--assets", type=int, default=3000)
    parser.add_argument("--keep", help="build in this folder and keep it (default: a temporary one)")
    args = parser.parse_args(argv)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="dam3d-refresh-"))
    root.mkdir(parents=True, exist_ok=True)
    big = root / "big"
    try:
        # One real asset, computed by the pipeline: its artefacts become everyone's (and its time is the
        # compute that the one-asset refresh below has to do anyway).
        shutil.rmtree(root / "single", ignore_errors=True)
        single = _workdir(root, "single", 1)
        seconds_single, _ = _snakemake(single, "--cores", "2")
        if (big / FIXTURE).exists():
            fixture = json.loads((big / FIXTURE).read_text())
            if fixture["assets"] != args.assets:
                raise SystemExit(f"dam3d.benchmarks.refresh: {big} holds a fixture of {fixture['assets']} assets, "
                                 f"not {args.assets}: give another --keep folder")
            print(f"dam3d.benchmarks.refresh: measuring the fixture kept in {big}", file=sys.stderr)
        else:
            shutil.rmtree(big, ignore_errors=True)  # a build that did not finish
            _build(root, args.assets, single)
            fixture = json.loads((big / FIXTURE).read_text())
        seconds_full_index = fixture["index_seconds"]

        seconds_dry, dry = _snakemake(big, "-n")
        seconds_noop, noop = _snakemake(big, "--cores", "2")
        if "Nothing to be done" not in noop.stdout + noop.stderr:
            raise SystemExit("dam3d.benchmarks.refresh: the no-op run found work to do:\n" + noop.stderr[-2000:])

        added = next(big / "catalogue" / f"NEW-{n:06d}.jpg" for n in range(1, 10**6)
                     if not (big / "catalogue" / f"NEW-{n:06d}.jpg").exists())
        shutil.copy(single / "catalogue" / "SKU-000000.jpg", added)
        seconds_add, _ = _snakemake(big, "--cores", "2")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print(f"dam3d refresh benchmark: {args.assets} assets up to date, {os.cpu_count()} cores")
    print(f"  no-op refresh (snakemake --cores 2, nothing to do)   {seconds_noop:6.1f} s")
    print(f"  dry run (snakemake -n)                               {seconds_dry:6.1f} s")
    print(f"  index + contact sheet of all {args.assets} assets        {seconds_full_index:6.1f} s (when built)")
    print(f"  refresh after adding one asset ({added.stem})         {seconds_add:6.1f} s")
    print(f"  the same asset alone (one-asset catalogue)           {seconds_single:6.1f} s")
    print(f"  overhead of the large catalogue on that refresh      {seconds_add - seconds_single:6.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
