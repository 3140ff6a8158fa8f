"""Snakemake entry point: mesh of one asset (see dam3d.mesh)."""

from pathlib import Path

from dam3d.jobenv import use_granted
from dam3d.mesh import build_mesh
from dam3d.stage import run_asset_stage

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
job = use_granted(smk.threads, torch=smk.params.backend == "trellis")  # threads; Slurm's GPU is CUDA_VISIBLE_DEVICES
run_asset_stage(
    stage="mesh",
    asset=smk.wildcards.asset,
    results=smk.config["results"],
    outputs=smk.output,
    requires=[smk.input.cutout],
    attempt=smk.resources.attempt,
    retries=smk.config["retries"],
    log=smk.log[0],
    note=job,
    work=lambda: build_mesh(
        smk.wildcards.asset,
        Path(smk.input.cutout),
        Path(smk.output[0]),
        smk.params.backend,
        dict(smk.params.settings),
        provided=Path(smk.input.provided[0]) if smk.input.provided else None,
    ),
)
