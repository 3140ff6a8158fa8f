"""Snakemake entry point: the N views of one chunk of assets, in one Blender process (see dam3d.stages.render)."""

from dam3d.runtime.chunk import run_chunk
from dam3d.stages.render import render_members

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
# Blender's threads come from DAM3D_THREADS (dam3d.runtime.jobenv); Slurm's GPU from CUDA_VISIBLE_DEVICES.
# Each asset is yielded the moment Blender has written its views, so it is stamped then:
# a job that dies or fails later keeps it (and the progress line counts it).
run_chunk(smk, "render", lambda members: render_members(members, blender=smk.params.blender,
                                                        timeout=smk.params.timeout, **smk.params.settings))
