"""profiles/local on this machine: jobs that ask for the GPU run one at a time."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO, product_photo
from tiny_models import make_tiny_vit


def _intervals(log: str, rule: str) -> list[tuple[int, int]]:
    """(start, end) of each job of `rule` as line numbers of Snakemake's log ('rule X:' ... 'Finished jobid: N')."""
    starts, ends = {}, {}
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if re.fullmatch(rf"(local)?rule {rule}:", line.strip()):
            jobid = next(int(x.split(":")[1]) for x in lines[i + 1 : i + 12] if x.strip().startswith("jobid:"))
            starts[jobid] = i
        elif m := re.match(r"Finished jobid: (\d+)", line.strip()):
            ends[int(m.group(1))] = i
    return sorted((starts[j], ends[j]) for j in starts)


def test_local_profile_runs_gpu_jobs_one_at_a_time(tmp_path: Path) -> None:
    catalogue = tmp_path / "catalogue"
    catalogue.mkdir()
    for kind in ("red-vase", "blue-box", "green-lamp"):
        product_photo(kind).save(catalogue / f"{kind}.jpg")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["catalogue"] = str(catalogue)
    config["render"]["views"] = 0
    config["embed"]["models"] = ["tiny"]
    config["embed"]["presets"]["tiny"] = {"backend": "vit", "model": str(make_tiny_vit(tmp_path / "vit")), "pooling": "cls"}
    config["chunks"] = {"cutout": 1, "embed": 1}  # one asset per job, to see how jobs share the machine
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
        "--configfile", str(tmp_path / "config.yaml"), "--profile", str(REPO / "profiles" / "local"), "--cores", "2",
        "--set-threads", "cutout=1", "embed=1",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert re.search(r"Provided resources: gpu=(Resource\(.gpu., )?1\b", log), log[:2000]
    embeds = _intervals(log, "embed")  # the vit backend asks for the GPU
    assert len(embeds) == 3, embeds
    for (_, end), (start, _) in zip(embeds, embeds[1:]):
        assert start >= end, embeds  # never two at once, though 2 cores were free
    cutouts = _intervals(log, "cutout")  # u2netp asks for none: side by side
    assert len(cutouts) == 3 and cutouts[1][0] < cutouts[0][1], cutouts
