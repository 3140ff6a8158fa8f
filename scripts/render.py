"""Snakemake entry point: the N views of one asset (see dam3d.render and blender/render_views.py)."""

from pathlib import Path

from dam3d.errors import AssetError
from dam3d.render import render_assets
from dam3d.stage import run_job

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
asset = smk.wildcards.asset
out_dir = Path(smk.output[0]).parent


def render() -> None:
    # Blender's threads come from DAM3D_THREADS (dam3d.jobenv); Slurm's GPU from CUDA_VISIBLE_DEVICES.
    errors = render_assets([(Path(smk.input[0]), out_dir)], blender=smk.params.blender, **smk.params.settings)
    error = errors.get(out_dir)
    if error:
        raise AssetError(asset, "render", error)
    missing = [p for p in smk.output if not Path(p).exists()]
    if missing:
        raise AssetError(asset, "render", f"renderer wrote no {missing[0]}")


run_job(smk, "render", render, requires=smk.input)
