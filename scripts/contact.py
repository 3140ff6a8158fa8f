"""Snakemake entry point: contact sheets, per asset (cutout + views, in chunks) and for the whole run."""

import contextlib
from pathlib import Path

from dam3d.stages.contact import asset_label, asset_sheet, run_sheet
from dam3d.runtime.chunk import one_by_one, run_chunk

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive



if smk.rule == "contact_asset":
    run_chunk(
        smk,
        "contact",
        lambda members: one_by_one(
            members,
            lambda m: asset_sheet(
                Path(m["cutout"]),
                [Path(p) for p in m["views"]],
                Path(m["outputs"][0]),
                background=tuple(smk.params.background),
                label=asset_label(m["sku"], Path(m["mesh"])),
            ),
        ),
    )
else:
    Path(smk.log[0]).parent.mkdir(parents=True, exist_ok=True)
    with open(smk.log[0], "w") as log, contextlib.redirect_stderr(log):
        run_sheet([Path(p) for p in smk.params.sheets], Path(smk.output[0]))
