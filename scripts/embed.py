"""Snakemake entry point: vectors of one chunk of assets' cutouts and views (see dam3d.stages.embed, dam3d.runtime.chunk)."""

from pathlib import Path

from dam3d.runtime.backends import backend
from dam3d.stages.embed import ModelSpec, embed_assets
from dam3d.runtime.chunk import run_chunk

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
run_chunk(
    smk,
    f"embed-{smk.wildcards.model}",
    lambda members: embed_assets(
        [(m["asset"], Path(m["cutout"]), [Path(v) for v in m["views"]], Path(m["outputs"][0])) for m in members],
        ModelSpec(**smk.params.spec),
        background=tuple(smk.params.background),
        batch_size=smk.params.batch_size,
        device=smk.config["device"],
        # Decoding and preprocessing threads: on a GPU they, not the model, can set the pace.
        workers=max(2, smk.threads),
        augment=smk.params.augment,
    ),
    torch=backend("embed", smk.params.spec["backend"]).torch,
)
