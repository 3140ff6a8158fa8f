"""Snakemake entry point: the search index of one embedding model (see dam3d.search.index)."""

import hashlib
import json
import os
import sys
from pathlib import Path

from dam3d.catalogue import load_catalogue
from dam3d.runtime import layout
from dam3d.runtime.atomic import write_text
from dam3d.search.index import build_index, manifest_digest
from dam3d.runtime.stamps import read_stamps
from dam3d.runtime.chunk import read_failures

smk = snakemake  # noqa: F821 - injected by Snakemake's script directive
config = smk.config
assets = load_catalogue(config["catalogue"])
# Paths as strings, not Path objects: at 100,000 SKUs each Path parse costs a second or more (README, Overhead).
by_id = {os.path.splitext(os.path.basename(p))[0]: p for p in smk.params.embeddings}
out_dir = Path(smk.params.index)
failures = [f for f in read_failures(config["results"]) if f["asset"] in by_id and f["stage"] in smk.params.stages]
# What the cutout stage warned about (a photo too small to be trusted) stays with the index.
cutout_stamps = read_stamps(config["results"], "cutout")
warnings = [
    {"asset": a.asset_id, "sku": a.sku, "stage": "cutout", "warning": w}
    for a in assets
    for w in (cutout_stamps.get(a.asset_id) or {}).get("warnings", [])
]
manifest = build_index(
    assets,
    [by_id[a.asset_id] for a in assets],
    out_dir,
    {
        "model": smk.params.spec,
        "backends": smk.params.backends,
        "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
        "config": config,
        "catalogue": str(config["catalogue"]),
        "failures": failures,
        "warnings": warnings,
    },
    dtype=config.get("index", {}).get("dtype", "float16"),
    pca=int(config.get("index", {}).get("pca", 0)),
    # the colour descriptors are made here, from the cutouts, once for every model's index (dam3d.search.colour)
    cutouts=[layout.cutout_file(config["results"], a.asset_id) for a in assets],
)
# The rule's output, written once the index is switched: which build this run made (see layout.index_stamp).
write_text(smk.output.stamp, json.dumps({"manifest_sha1": manifest_digest(out_dir), "data": manifest["data"],
                                         "created": manifest["created"]}) + "\n")
# Earlier builds' stamps name what the index was: one stamp per index, this build's.
for stale in layout.index_stamps(config["results"], smk.wildcards.model):
    if stale != Path(smk.output.stamp):
        stale.unlink(missing_ok=True)
counts = manifest["counts"]
summary = [
    f"dam3d: index {out_dir}: {counts['indexed']}/{counts['assets']} assets, "
    f"{counts['with_views']} with views, {counts['failed']} failed",
    # incremental: unchanged SKUs' rows kept from the previous index; full: why every embedding was read
    "dam3d: index update {mode}: {reused} rows reused, {read} embeddings read, {dropped} dropped, vector store {store} "
    "({reason})".format(**manifest["update"]),
]
if manifest.get("ann"):
    summary.append("dam3d: ANN graphs {built}: {delta} SKUs beside them, {tombstones} tombstones".format(**manifest["ann"]))
summary += [f"dam3d: failed {f['asset']} at {f['stage']}: {f['reason']}" for f in failures]
summary += [f"dam3d: warning {w['asset']} at {w['stage']}: {w['warning']}" for w in warnings]
Path(smk.log[0]).parent.mkdir(parents=True, exist_ok=True)
Path(smk.log[0]).write_text("\n".join(summary) + "\n")
print("\n".join(summary), file=sys.stderr)
