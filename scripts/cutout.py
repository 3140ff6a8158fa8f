"""Snakemake entry point: cutouts of one chunk of assets (see dam3d.stages.cutout, dam3d.runtime.chunk)."""

from pathlib import Path

from dam3d.runtime.backends import backend
from dam3d.stages.cutout import make_cutouts
from dam3d.runtime.chunk import run_chunk

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
run_chunk(
    smk,
    "cutout",
    lambda members: make_cutouts(
        [(m["asset"], Path(m["image"]), Path(m["outputs"][0])) for m in members],
        backend=smk.params.backend,
        model=smk.params.model,
        size=smk.params.size,
        margin=smk.params.margin,
        max_pixels=smk.params.max_pixels,
        device=smk.config["device"],
        batch_size=smk.params.batch_size,
        # Decoding and preprocessing threads: on a GPU they, not the model, can set the pace.
        workers=max(2, smk.threads),
    ),
    torch=backend("cutout", smk.params.backend).torch,
)
