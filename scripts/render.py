"""Snakemake entry point: the N views of one chunk of assets, in one Blender process (see dam3d.stages.render)."""

from pathlib import Path

from dam3d.errors import AssetError
from dam3d.stages.render import RENDERER_EXITED, render_stream
from dam3d.runtime.chunk import run_chunk

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive


def render(members: list[dict]):
    # Blender's threads come from DAM3D_THREADS (dam3d.runtime.jobenv); Slurm's GPU from CUDA_VISIBLE_DEVICES.
    # Each asset is yielded the moment Blender has written its views, so it is stamped then:
    # a job that dies or fails later keeps it (and the progress line counts it).
    by_dir = {Path(m["outputs"][0]).parent: m for m in members}
    for out_dir, error in render_stream([(Path(m["mesh"]), d) for d, m in by_dir.items()],
                                        blender=smk.params.blender, timeout=smk.params.timeout,
                                        **smk.params.settings):
        asset = by_dir[out_dir]["asset"]
        if error and error.startswith(RENDERER_EXITED):
            # Blender died before this asset (another asset crashed it, or the machine):
            # not this asset's fault, so it is retried, alone, and again next run.
            yield asset, RuntimeError(error)
        elif error:
            yield asset, AssetError(asset, "render", error)
        else:
            yield asset, None


run_chunk(smk, "render", render)
