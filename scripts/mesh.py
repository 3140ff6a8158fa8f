"""Snakemake entry point: mesh of one asset (see dam3d.mesh)."""

from pathlib import Path

from dam3d.mesh import build_mesh
from dam3d.stage import run_job

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
run_job(
    smk,
    "mesh",
    lambda: build_mesh(
        smk.wildcards.asset,
        Path(smk.input.cutout),
        Path(smk.output[0]),
        smk.params.backend,
        dict(smk.params.settings),
        provided=Path(smk.input.provided[0]) if smk.input.provided else None,
    ),
    requires=[smk.input.cutout],
    torch=smk.params.backend == "trellis",
)
