"""Snakemake entry point: the N views of one asset (see dam3d.render and blender/render_views.py)."""

from pathlib import Path

from dam3d.jobenv import use_granted
from dam3d.errors import AssetError
from dam3d.render import render_assets
from dam3d.stage import run_asset_stage

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
job = use_granted(smk.threads)  # Blender's threads (DAM3D_THREADS); Slurm's GPU is CUDA_VISIBLE_DEVICES
settings = smk.params.settings
asset = smk.wildcards.asset
out_dir = Path(smk.output[0]).parent


def render() -> None:
    errors = render_assets(
        [(Path(smk.input[0]), out_dir)],
        views=settings["views"],
        elevation=settings["elevation"],
        resolution=settings["resolution"],
        engine=settings["engine"],
        device=settings["device"],
        samples=settings["samples"],
        fov=settings["fov"],
        aa=settings["aa"],
        blender=smk.params.blender,
    )
    error = errors.get(out_dir)
    if error:
        raise AssetError(asset, "render", error)
    missing = [p for p in smk.output if not Path(p).exists()]
    if missing:
        raise AssetError(asset, "render", f"renderer wrote no {missing[0]}")


run_asset_stage(
    stage="render",
    asset=asset,
    results=smk.config["results"],
    outputs=smk.output,
    requires=smk.input,
    attempt=smk.resources.attempt,
    retries=smk.config["retries"],
    log=smk.log[0],
    note=job,
    work=render,
)
