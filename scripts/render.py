"""Snakemake entry point: the N views of one chunk of assets, in one Blender process (see dam3d.render)."""

from pathlib import Path

from dam3d.errors import AssetError
from dam3d.render import RENDERER_EXITED, render_assets
from dam3d.stage import run_chunk

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive


def render(members: list[dict]):
    # Blender's threads come from DAM3D_THREADS (dam3d.jobenv); Slurm's GPU from CUDA_VISIBLE_DEVICES.
    out_dirs = {m["asset"]: Path(m["outputs"][0]).parent for m in members}
    errors = render_assets([(Path(m["mesh"]), out_dirs[m["asset"]]) for m in members],
                           blender=smk.params.blender, **smk.params.settings)
    for m in members:
        error = errors.get(out_dirs[m["asset"]])
        missing = [p for p in m["outputs"] if not Path(p).exists()]
        if error and error.startswith(RENDERER_EXITED):
            # Blender died before this asset (another asset crashed it, or the machine):
            # not this asset's fault, so it is retried, alone, and again next run.
            yield m["asset"], RuntimeError(error)
        elif error:
            yield m["asset"], AssetError(m["asset"], "render", error)
        elif missing:
            yield m["asset"], AssetError(m["asset"], "render", f"renderer wrote no {missing[0]}")
        else:
            yield m["asset"], None


run_chunk(smk, "render", render)
