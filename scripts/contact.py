"""Snakemake entry point: contact sheets, per asset (cutout + views) and for the whole run."""

import contextlib
from pathlib import Path

from dam3d.contact import asset_sheet, run_sheet

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive


def draw() -> None:
    if smk.rule == "contact_asset":
        asset_sheet(
            Path(smk.input.cutout),
            [Path(p) for p in smk.input.views],
            Path(smk.output[0]),
            background=tuple(smk.params.background),
            label=smk.params.sku,
        )
    else:
        run_sheet([Path(p) for p in smk.input], Path(smk.output[0]))


Path(smk.log[0]).parent.mkdir(parents=True, exist_ok=True)
with open(smk.log[0], "w") as log, contextlib.redirect_stderr(log):
    draw()
