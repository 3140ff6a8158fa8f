"""Snakemake entry point: seconds per job of each stage, from the rules' `benchmark:` files."""

from pathlib import Path

from dam3d.evaluation.report import write_timings

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
benchmarks = [tsv for folder in smk.params.benchmarks for tsv in sorted(Path(folder).glob("*.tsv"))]
write_timings(benchmarks, Path(smk.output.tsv), Path(smk.output.html))
Path(smk.log[0]).parent.mkdir(parents=True, exist_ok=True)
Path(smk.log[0]).write_text(Path(smk.output.tsv).read_text())
