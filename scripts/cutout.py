"""Snakemake entry point: cutout of one asset (see dam3d.cutout)."""

from dam3d.jobenv import use_granted
from dam3d.cutout import make_cutout
from dam3d.stage import run_asset_stage

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
job = use_granted(smk.threads, torch=smk.params.backend == "rmbg")  # threads; Slurm's GPU is CUDA_VISIBLE_DEVICES
run_asset_stage(
    stage="cutout",
    asset=smk.wildcards.asset,
    results=smk.config["results"],
    outputs=smk.output,
    attempt=smk.resources.attempt,
    retries=smk.config["retries"],
    log=smk.log[0],
    note=job,
    work=lambda: make_cutout(
        smk.wildcards.asset,
        smk.input[0],
        smk.output[0],
        backend=smk.params.backend,
        model=smk.params.model,
        size=smk.params.size,
        margin=smk.params.margin,
        max_pixels=smk.params.max_pixels,
        device=smk.config["device"],
    ),
)
