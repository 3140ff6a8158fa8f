"""Snakemake entry point: results/failures.tsv, one line per failed asset (asset, SKU, stage, reason).

Catalogue files and manifest rows that are not assets (an unsupported file type, a row
without asset_id) come first, with stage `catalogue`, so nothing is left out silently.
"""

from pathlib import Path

from dam3d.runtime.atomic import write_text
from dam3d.runtime.chunk import read_failures

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
skus = smk.params.skus
# Records of SKUs no longer in the catalogue are left out: the report matches this run.
failures = [f for f in read_failures(smk.config["results"]) if f["asset"] in skus and f["stage"] in smk.params.stages]
lines = ["asset_id\tsku\tstage\treason"]
lines += [f"\t{name}\tcatalogue\t{' '.join(reason.split())}" for name, reason in smk.params.skipped]
lines += [f"{f['asset']}\t{skus[f['asset']]}\t{f['stage']}\t{' '.join(f['reason'].split())}" for f in failures]
write_text(smk.output[0], "\n".join(lines) + "\n")
Path(smk.log[0]).write_text(f"{len(failures)} failure(s), {len(smk.params.skipped)} catalogue entries skipped\n")
