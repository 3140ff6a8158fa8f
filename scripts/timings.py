"""Snakemake entry point: seconds per job of each stage, from the rules' `benchmark:` files."""

from pathlib import Path

from dam3d.evaluation.report import TIMINGS_MAX_JOBS, recent_benchmarks, write_timings

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
benchmarks = recent_benchmarks(smk.params.benchmarks, TIMINGS_MAX_JOBS)
write_timings(benchmarks, Path(smk.output.tsv), Path(smk.output.html), max_jobs=TIMINGS_MAX_JOBS)
Path(smk.log[0]).parent.mkdir(parents=True, exist_ok=True)
Path(smk.log[0]).write_text(Path(smk.output.tsv).read_text())
