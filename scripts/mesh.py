"""Snakemake entry point: meshes of one chunk of assets (see dam3d.stages.mesh, dam3d.runtime.chunk).

The backend's model (TRELLIS) is loaded once per process, so once per chunk.
"""

from pathlib import Path

from dam3d.runtime.backends import backend
from dam3d.stages.mesh import build_mesh
from dam3d.runtime.chunk import one_by_one, run_chunk

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
run_chunk(
    smk,
    "mesh",
    lambda members: one_by_one(
        members,
        lambda m: build_mesh(
            m["asset"],
            Path(m["cutout"]),
            Path(m["outputs"][0]),
            smk.params.backend,
            dict(smk.params.settings),
            provided=Path(m["provided"]) if m["provided"] else None,
        ),
    ),
    torch=backend("mesh", smk.params.backend).torch,
)
