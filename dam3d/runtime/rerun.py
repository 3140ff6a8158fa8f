"""`dam3d rerun ASSET --from STAGE`: make the next run compute one asset again from a stage on.

The planner (dam3d.runtime.plan) takes an asset as pending at a stage when one of its outputs
there is missing, and at every stage after one where it is pending. Removing the asset's
artefacts from STAGE on is therefore enough for the next `snakemake` to compute that asset from
STAGE on, and nothing else; the later stages' artefacts go too, so that no result of the old
computation is left to look at meanwhile.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from dam3d.catalogue import safe_id
from dam3d.runtime import layout

# The per-asset stages, in pipeline order, each with the stages that read its result (the rules'
# `upstream`, turned around): mesh and contact read the cutout, render the mesh, contact and embed the views.
READ_BY: dict[str, tuple[str, ...]] = {
    "cutout": ("mesh", "contact", "embed"),
    "mesh": ("render",),
    "render": ("contact", "embed"),
    "contact": (),
    "embed": (),
}
STAGES = tuple(READ_BY)


class RerunError(Exception):
    """An asset this results folder has no artefact of."""


def stages_from(stage: str) -> list[str]:
    """`stage` and every stage computed again after it, in pipeline order."""
    found = {stage}
    for current in STAGES:  # pipeline order: a stage's readers come after it
        if current in found:
            found.update(READ_BY[current])
    return [s for s in STAGES if s in found]


def artefacts(results: str | Path, stage: str, asset: str) -> list[Path]:
    """Where the asset's artefacts of `stage` are (layout): a file, its views folder, or one embedding per model."""
    if stage == "embed":
        models = sorted(p.name for p in layout.embeddings(results).glob("*") if p.is_dir())
        return [layout.embedding(results, model, asset) for model in models]
    path = {"cutout": layout.cutout, "mesh": layout.mesh, "render": layout.views, "contact": layout.contact}[stage]
    return [path(results, asset)]


def resolve(results: str | Path, names: Iterable[str]) -> list[str]:
    """The asset id of each SKU or asset id given; RerunError naming those with no artefact in `results`."""
    assets, unknown = [], []
    for name in names:
        asset = safe_id(name)  # a SKU maps to its asset id, an asset id to itself
        if any(p.exists() for stage in STAGES for p in artefacts(results, stage, asset)):
            assets.append(asset)
        else:
            unknown.append(name if asset == name else f"{name} (asset id {asset})")
    if unknown:
        raise RerunError(f"no artefact of {', '.join(unknown)} in {results}: not a SKU or asset id computed there "
                         f"(`dam3d failures` and the index name the asset ids)")
    return list(dict.fromkeys(assets))


def remove_from(results: str | Path, asset: str, stage: str) -> list[Path]:
    """Remove the asset's artefacts of `stage` and every later stage; the paths removed."""
    removed = []
    for later in stages_from(stage):
        for path in artefacts(results, later, asset):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            else:
                continue
            removed.append(path)
    return removed
