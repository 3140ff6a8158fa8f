"""Snakemake entry point: top-1/3/5 per fusion on the configured query set (see dam3d.evaluation.evaluate)."""

import json
import sys
from pathlib import Path

from dam3d.runtime.atomic import write_text
from dam3d.evaluation.evaluate import evaluate, format_confusions, format_table
from dam3d.search.index import Index, choose_fusion, manifest_digest
from dam3d.evaluation.report import accuracy_html, bar_plot

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
Path(smk.log[0]).parent.mkdir(parents=True, exist_ok=True)
with open(smk.log[0], "w") as log:

    def note(message: str) -> None:
        print(f"dam3d: {message}", file=log, flush=True)

    index = Index.load(smk.params.index)
    report, encoder = evaluate(index, smk.input.queries, cache_dir=smk.params.cache, log=note)
    model = index.manifest["model"]["name"]
    backends = index.manifest["backends"]
    first = next(iter(report.values()))
    notes = [
        f"{first['n']} queries from {smk.input.queries} against {len(index.assets)} SKUs; "
        f"model {model}, cutout {backends.get('cutout_model') or backends.get('cutout')}, "
        f"mesh {backends.get('mesh')}, renders {backends.get('render_engine')}.",
        f"Query vectors: {encoder.stats['cached']} from the cache, {encoder.stats['computed']} computed.",
    ]
    if first["absent"]:
        notes.append(f"Expected SKUs not in the index (counted as misses): {', '.join(first['absent'])}")
    write_text(smk.output.json, json.dumps(report, indent=2) + "\n")
    # `search.fusion: auto` searches this index with the fusion that did best on these photos
    best = choose_fusion(report)
    notes.append(f"Best fusion on these photos (what `search.fusion: auto` searches with): {best}.")
    write_text(smk.output.choice, json.dumps({
        "fusion": best, "queries": first["n"], "top1": {f: r["top1"] for f, r in report.items()},
        "queries_csv": str(smk.input.queries), "index_manifest_sha1": manifest_digest(index.directory),
    }, indent=2) + "\n")
    write_text(smk.output.table, accuracy_html(report, title=f"Top-k accuracy by fusion ({model})", notes=notes))
    bar_plot(report, Path(smk.output.plot), title=f"{model}, {first['n']} queries")
    summary = "\n".join([*notes, format_table(report), *(format_confusions(report, f, limit=3) for f in report)])
    print(summary, file=log)
    print(summary, file=sys.stderr)
