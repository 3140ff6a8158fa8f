"""What a job was granted, and making the stage use exactly that.

Threads: Snakemake gives each job `threads` (capped by --cores locally; on Slurm
the executor asks for them as --cpus-per-task). `use_granted` makes torch, the
BLAS/OpenMP libraries, onnxruntime (rembg reads OMP_NUM_THREADS) and Blender
(blender/render_views.py reads DAM3D_THREADS) use that many, not every core of a
shared node.

GPUs: Slurm sets CUDA_VISIBLE_DEVICES to the GPUs it granted, so CUDA numbers
them from 0 and `device: auto` (cuda when available) uses the granted one.
Nothing to do here but to say so in the job's log.
"""

from __future__ import annotations

import os
import socket

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "DAM3D_THREADS",
)


def use_granted(threads: int, *, torch: bool = False) -> str:
    """Make this process (and its children) use `threads` CPU threads; return a one-line description.

    Snakemake already exports the OpenMP/BLAS variables to a script job's process
    (they take effect when those libraries load); setting them again here covers
    child processes and adds DAM3D_THREADS for Blender. `torch=True` also calls
    torch.set_num_threads, whatever torch read at import.
    """
    threads = max(1, int(threads))
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    if torch:
        import torch as _torch

        _torch.set_num_threads(threads)
    return describe(threads)


def describe(threads: int) -> str:
    """Where this job runs: host, Slurm job (if any), threads, visible GPUs."""
    job = os.environ.get("SLURM_JOB_ID")
    array = os.environ.get("SLURM_ARRAY_TASK_ID")
    where = f"slurm job {job}" + (f" task {array}" if array else "") if job else "local"
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (
        f"dam3d: {where} on {socket.gethostname()}: threads={threads} "
        f"CUDA_VISIBLE_DEVICES={gpus if gpus is not None else '(unset)'}"
    )
