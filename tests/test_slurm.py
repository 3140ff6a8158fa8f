"""profiles/slurm-gpu on a real Slurm: a throwaway single-node cluster on this machine.

tests/local_slurm.py starts munged, slurmctld and slurmd (two fake GPUs, a `cpu`
and a `gpu` partition); the pipeline runs on a 3-photo catalogue with
`--profile profiles/slurm-gpu`, its GPU stage being embed with a tiny ViT (the
`vit` backend asks for a GPU). The test checks that every job went through
sbatch, batched per stage; that the GPU stage's Slurm job was granted a GPU on
the gpu partition and saw it as CUDA_VISIBLE_DEVICES while the CPU stages got
none; that the stages used the threads granted; and that the index equals a
local run's. It fails, never skips, when Slurm cannot be started here.
"""

from __future__ import annotations

import collections
import os
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO, product_photo
from local_slurm import LocalSlurm, SlurmUnavailable
from tiny_models import make_tiny_vit
from dam3d.search.index import Index
from dam3d.search.update import index_files

pytestmark = pytest.mark.slow

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
KINDS = ("red-vase", "blue-box", "green-lamp")
PER_ASSET_STAGES = ("cutout", "mesh", "render", "embed", "contact_asset")
PROFILE = yaml.safe_load((REPO / "profiles" / "slurm-gpu" / "config.yaml").read_text())


@pytest.fixture(scope="module")
def slurm():
    # A short path: munge's socket path must fit in a sockaddr_un.
    root = Path(tempfile.mkdtemp(prefix="dam3d-slurm-"))
    # As many CPUs declared as the profile's largest set-threads (Slurm believes the config):
    # the README's command runs as written, each job with the threads the profile gives it.
    cluster = LocalSlurm(root, cpus=max(PROFILE["set-threads"].values()))
    try:
        cluster.start()
    except SlurmUnavailable as exc:
        pytest.fail(f"could not start a local Slurm (./setup.sh installs slurm-wlm and munge): {exc}")
    try:
        yield cluster
    finally:
        stopped = cluster.stop()
    assert len(stopped) == 3 and not cluster.running(), (stopped, cluster.running())
    shutil.rmtree(root, ignore_errors=True)


def _job_stats(output: str) -> collections.Counter:
    """Snakemake's 'Job stats' table: rule -> number of jobs."""
    table = output.split("Job stats:", 1)[1]
    counts = collections.Counter()
    for line in table.splitlines()[3:]:
        parts = line.split()
        if not parts or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def _target_jobs(sbatch_args: list[str]) -> list[str]:
    """The Snakemake jobs one sbatch call runs: the --target-jobs of its wrapped command."""
    wrap = next(a for a in sbatch_args if a.startswith("--wrap="))[len("--wrap="):]
    words = shlex.split(wrap)
    start = words.index("--target-jobs") + 1
    targets = []
    for word in words[start:]:
        if word.startswith("--"):
            break
        targets.append(word)
    return targets


def test_pipeline_on_slurm_with_gpu_profile(slurm: LocalSlurm, tmp_path: Path) -> None:
    catalogue = tmp_path / "catalogue"
    catalogue.mkdir()
    for kind in KINDS:
        product_photo(kind).save(catalogue / f"{kind}.jpg")
    vit = make_tiny_vit(tmp_path / "tiny-vit")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["catalogue"] = str(catalogue)
    config["render"]["resolution"] = 64
    config["embed"]["models"] = ["tiny"]
    config["embed"]["presets"]["tiny"] = {"backend": "vit", "model": str(vit), "pooling": "cls"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    common = ["--configfile", str(tmp_path / "config.yaml")]

    local_dir, slurm_dir = tmp_path / "local", tmp_path / "slurm"
    local_dir.mkdir()
    slurm_dir.mkdir()
    # The reference run, locally, while the Slurm run mostly waits on the queue.
    local = subprocess.Popen(
        [*SNAKEMAKE, "--directory", str(local_dir), *common, "--cores", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=local_dir,
    )
    t0 = time.monotonic()
    run = subprocess.run(
        [
            *SNAKEMAKE, "--directory", str(slurm_dir), *common,
            "--profile", str(REPO / "profiles" / "slurm-gpu"),
            # This cluster has no accounting database: poll with squeue, bill no account.
            "--slurm-status-command", "squeue",
            "--slurm-init-seconds-before-status-checks", "2",
            "--slurm-no-account",
        ],
        capture_output=True, text=True, cwd=slurm_dir, env=slurm.env(), timeout=1500,
    )
    slurm_seconds = time.monotonic() - t0
    local_out = local.communicate(timeout=900)[0]
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:] + "\n" + slurm.logs()
    assert local.returncode == 0, local_out[-3000:]
    print(f"slurm run: {slurm_seconds:.0f} s")

    # Every job went through sbatch: the jobs named in the sbatch calls are the run's jobs,
    # less `all` (no action, Snakemake's only local job).
    stats = _job_stats(output)
    calls = slurm.sbatch_calls()
    submitted = collections.Counter(t.split(":", 1)[0] for call in calls for t in _target_jobs(call))
    assert submitted == stats - collections.Counter(all=1), (submitted, stats)
    assert re.findall(r"^localrule (\w+):", output, re.M) == ["all"]
    # ...batched: each per-asset stage is one chunk job here (3 assets), one sbatch call each.
    n_jobs = sum(submitted.values())
    for stage in PER_ASSET_STAGES:
        batched = [c for c in calls if any(t.startswith(f"{stage}:") for t in _target_jobs(c))]
        assert len(batched) == 1 and len(_target_jobs(batched[0])) == 1, (stage, batched)
    assert len(calls) == n_jobs
    print(f"sbatch calls: {len(calls)} for {n_jobs} jobs")

    # What Slurm granted (scontrol; jobs stay listed for MinJobAge) and that they completed (sacct -c).
    jobs = {}
    for line in slurm.run("scontrol", "-d", "-o", "show", "job").stdout.splitlines():
        fields = dict(t.split("=", 1) for t in shlex.split(line) if "=" in t)
        if fields.get("WorkDir") == str(slurm_dir):
            jobs[fields["JobId"]] = fields
    assert len(jobs) == len(calls), jobs
    sacct = slurm.run("sacct", "-c", "-n", "-P", "-o", "jobid,partition,state").stdout
    states = {line.split("|")[0]: line.split("|")[1:] for line in sacct.splitlines() if line.count("|") == 2}
    for job_id, fields in jobs.items():
        gpu_job = fields["Comment"].startswith("rule_embed")
        assert states.get(job_id) == [fields["Partition"], "COMPLETED"], (job_id, states.get(job_id))
        if gpu_job:
            assert fields["Partition"] == "gpu" and fields["JOB_GRES"] == "gpu:a100:1", fields
        else:
            assert fields["Partition"] == "cpu" and fields["JOB_GRES"] == "(null)", fields

    # Inside the jobs: the Slurm job, the threads granted and the GPU Slurm handed over.
    results = slurm_dir / "results"
    for stage in PER_ASSET_STAGES[:4]:
        [log] = (results / "logs" / stage / ("tiny" if stage == "embed" else "")).glob("*.log")
        first = log.read_text().splitlines()[0]
        m = re.fullmatch(r"dam3d: slurm job (\d+) on \S+: threads=(\d+) CUDA_VISIBLE_DEVICES=(\S+)", first)
        assert m, first
        job_id, threads, gpus = m.groups()
        assert job_id in jobs and jobs[job_id]["Comment"].startswith(f"rule_{stage}"), (first, jobs.get(job_id))
        # The README's command as written (no --cores): Slurm grants each chunk job the profile's
        # set-threads; the job uses them, capped by the cores the node really has (this node
        # declares more CPUs than this machine's).
        assert jobs[job_id]["NumCPUs"] == str(PROFILE["set-threads"][stage]), (first, jobs[job_id])
        assert int(threads) == min(PROFILE["set-threads"][stage], len(os.sched_getaffinity(0))), first
        if stage == "embed":
            assert gpus == "0", first  # the one GPU granted, numbered from 0
        else:
            assert gpus == "(unset)", first
        # The job computed the chunk the main process planned: every asset, all fine.
        folder = "embed-tiny" if stage == "embed" else stage
        [manifest] = (results / "chunks" / folder).glob("*x-*[0-9a-f].json")
        members = json.loads(manifest.read_text())["members"]
        assert sorted(m["asset"] for m in members) == sorted(KINDS) and all(m["ok"] for m in members), members

    # The same index as the local run.
    cluster_index, local_index = Index.load(results / "index" / "tiny"), Index.load(local_dir / "results" / "index" / "tiny")
    for name in ("vec2d", "vec3d", "vecmean"):
        a, b = np.asarray(getattr(cluster_index, name)), np.asarray(getattr(local_index, name))
        assert a.shape == b.shape and a.shape[0] == len(KINDS), name
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=name)
    skus = pq.read_table(index_files(results / "index" / "tiny") / "assets.parquet").column("sku").to_pylist()
    assert skus == pq.read_table(index_files(local_dir / "results" / "index" / "tiny") / "assets.parquet").column("sku").to_pylist()
    assert sorted(skus) == sorted(KINDS)
