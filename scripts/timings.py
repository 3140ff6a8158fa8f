"""Snakemake entry point: seconds per job of each stage, from the rules' `benchmark:` files."""

from pathlib import Path

from dam3d.report import write_timings

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
write_timings([Path(p) for p in smk.params.benchmarks], Path(smk.output.tsv), Path(smk.output.html))
Path(smk.log[0]).parent.mkdir(parents=True, exist_ok=True)
Path(smk.log[0]).write_text(Path(smk.output.tsv).read_text())
