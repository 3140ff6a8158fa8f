"""Snakemake entry point: vectors of one asset's cutout and views (see dam3d.embed)."""

from pathlib import Path

from dam3d.embed import ModelSpec, embed_asset
from dam3d.stage import run_job

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
run_job(
    smk,
    f"embed-{smk.wildcards.model}",
    lambda: embed_asset(
        smk.wildcards.asset,
        Path(smk.input.cutout),
        [Path(p) for p in smk.input.views],
        Path(smk.output[0]),
        ModelSpec(**smk.params.spec),
        background=tuple(smk.params.background),
        batch_size=smk.params.batch_size,
        device=smk.config["device"],
    ),
    requires=[smk.input.cutout],
    torch=True,
)
