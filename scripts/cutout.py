"""Snakemake entry point: cutout of one asset (see dam3d.cutout)."""

from dam3d.cutout import make_cutout
from dam3d.stage import run_job

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
run_job(
    smk,
    "cutout",
    lambda: make_cutout(
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
    torch=smk.params.backend == "rmbg",
)
