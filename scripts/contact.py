"""Snakemake entry point: contact sheets, per asset (cutout + views) and for the whole run."""

from pathlib import Path

from dam3d.contact import asset_sheet, run_sheet

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
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
