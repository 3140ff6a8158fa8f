"""Snakemake entry point: vectors of one asset's cutout and views (see dam3d.embed)."""

from pathlib import Path

from dam3d.jobenv import use_granted
from dam3d.embed import ModelSpec, embed_asset
from dam3d.stage import run_asset_stage

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
job = use_granted(smk.threads, torch=True)  # threads; Slurm's GPU is CUDA_VISIBLE_DEVICES
run_asset_stage(
    stage=f"embed-{smk.wildcards.model}",
    asset=smk.wildcards.asset,
    results=smk.config["results"],
    outputs=smk.output,
    requires=[smk.input.cutout],
    attempt=smk.resources.attempt,
    retries=smk.config["retries"],
    log=smk.log[0],
    note=job,
    work=lambda: embed_asset(
        smk.wildcards.asset,
        Path(smk.input.cutout),
        [Path(p) for p in smk.input.views],
        Path(smk.output[0]),
        ModelSpec(**smk.params.spec),
        background=tuple(smk.params.background),
        batch_size=smk.params.batch_size,
        device=smk.config["device"],
    ),
)
