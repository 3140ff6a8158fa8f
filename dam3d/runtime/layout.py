"""Where each artefact lives in a results folder: the one place that knows the layout.

The workflow (its rules' per-asset outputs), the chunk runtime (stamps, failures,
chunk manifests), search (renders shown by `dam3d serve`, the query cache) and the
tools ask here; README "Artefacts" describes the same tree. Every function takes the
results folder and returns a Path; nothing is created.

Per-asset artefacts (cutout, mesh, rendered views, contact sheet, embedding) live in
shard folders between their stage folder and the asset, e.g. cutout/3f/ASSET.png, so
that no folder holds one entry per SKU: a million entries in one directory make every
listing, backup and `ls` slow, and some filesystems degrade long before that. Results
written before the shards (the flat layout, cutout/ASSET.png) are moved into them by
`dam3d migrate-layout` (dam3d.runtime.migrate).
"""

from __future__ import annotations

import functools
import hashlib
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

# The name of a shard folder: two lowercase hex digits.
SHARD_NAME = re.compile(r"[0-9a-f]{2}")


# Remembered per asset id: the plan asks for each SKU's shard at every stage (~6 SHA-1s per SKU), for
# ~40 bytes per SKU (the 256 names themselves shared).
@functools.cache
def shard(asset: str) -> str:
    """The shard folder of an asset: the first 2 hex digits of the SHA-1 of its asset id.

    256 shards: a catalogue of 1,000,000 SKUs puts ~3,900 assets in each folder (SHA-1 spreads
    them evenly, whatever the SKUs look like), and the shard of an asset never changes.
    """
    return sys.intern(hashlib.sha1(asset.encode("utf-8")).hexdigest()[:2])


def cutouts(results: str | Path) -> Path:
    """The stage folder of every asset's cutout (shard folders inside)."""
    return Path(results) / "cutout"


def cutout(results: str | Path, asset: str) -> Path:
    """RGBA PNG, square, object recentred."""
    return Path(cutout_file(results, asset))


def meshes(results: str | Path) -> Path:
    """The stage folder of every asset's mesh (shard folders inside)."""
    return Path(results) / "mesh"


def mesh(results: str | Path, asset: str) -> Path:
    """GLB in the canonical frame (+Y up, front +Z, unit size, centred)."""
    return Path(mesh_file(results, asset))


def renders(results: str | Path) -> Path:
    """The folder of every asset's rendered views (shard folders inside)."""
    return Path(results) / "render"


def views(results: str | Path, asset: str) -> Path:
    """The folder of the asset's rendered views, one PNG per view name (az000.png, ...)."""
    return Path(views_folder(results, asset))


def view(results: str | Path, asset: str, name: str) -> Path:
    return views(results, asset) / f"{name}.png"


def view_files(results: str | Path, asset: str, names: Iterable[str]) -> list[str]:
    """`view` of each name, as strings: one folder per asset, not one Path per view (the planner asks for every SKU's)."""
    folder = views_folder(results, asset)
    return [f"{folder}/{name}.png" for name in names]


# The per-asset artefacts are spelled here, as strings; the Path functions above wrap them. The planner
# asks for every SKU's at every stage, and a Path per file cost more than the rest of the plan (pathlib
# parses each part; 765,000 parses at 10,000 SKUs).
@functools.lru_cache(maxsize=64)
def _folder(stage_folder: Callable[..., Path], results: str | Path, *args: str) -> str:
    # The stage folder through pathlib once: "./results/" and "results" spell it as the Path functions do.
    return str(stage_folder(results, *args))


def views_folder(results: str | Path, asset: str) -> str:
    """`views` as a string."""
    return f"{_folder(renders, results)}/{shard(asset)}/{asset}"


def cutout_file(results: str | Path, asset: str) -> str:
    """`cutout` as a string."""
    return f"{_folder(cutouts, results)}/{shard(asset)}/{asset}.png"


def mesh_file(results: str | Path, asset: str) -> str:
    """`mesh` as a string."""
    return f"{_folder(meshes, results)}/{shard(asset)}/{asset}.glb"


def contact_file(results: str | Path, asset: str) -> str:
    """`contact` as a string."""
    return f"{_folder(contacts, results)}/{shard(asset)}/{asset}.png"


def embedding_file(results: str | Path, model: str, asset: str) -> str:
    """`embedding` as a string."""
    return f"{_folder(model_embeddings, results, model)}/{shard(asset)}/{asset}.npz"


def contacts(results: str | Path) -> Path:
    """The stage folder of every asset's contact sheet (shard folders inside)."""
    return Path(results) / "contact"


def contact(results: str | Path, asset: str) -> Path:
    """The asset's contact sheet: cutout and views in one row."""
    return Path(contact_file(results, asset))


def embeddings(results: str | Path) -> Path:
    """The folder holding one folder of per-asset embeddings per embedding model."""
    return Path(results) / "embed"


def model_embeddings(results: str | Path, model: str) -> Path:
    """The folder of one embedding model's per-asset embeddings (shard folders inside)."""
    return embeddings(results) / model


def embedding(results: str | Path, model: str, asset: str) -> Path:
    """NPZ: vec2d (D,), vec3d (V, D), view_ok (V,)."""
    return Path(embedding_file(results, model, asset))


def indexes(results: str | Path) -> Path:
    """The folder holding one index folder per embedding model."""
    return Path(results) / "index"


def index(results: str | Path, model: str) -> Path:
    """The index folder of one embedding model."""
    return indexes(results) / model


def index_stamp(results: str | Path, model: str, build: str) -> Path:
    """The `index` rule's output: the build of one model's index the run made (its manifest's SHA-1, time).

    Not the index's manifest.json: Snakemake deletes a job's outputs before it runs the job, and the
    index must stay searchable while its update runs (dam3d.search.update replaces the manifest last).
    `build` is a digest of what the index is made of (every SKU's embedding key, the catalogue, the
    index settings): a results folder copied elsewhere, which Snakemake has no records of, still
    rebuilds its index when a setting changes, because the stamp it asks for does not exist yet.
    """
    return indexes(results) / f"{model}.{build}.built.json"


def index_stamps(results: str | Path, model: str) -> list[Path]:
    """The `index_stamp` files of one model's index on disk (one after a successful run: the build's)."""
    return sorted(indexes(results).glob(f"{model}.*.built.json"))


def fusion_choice(results: str | Path, model: str) -> Path:
    """The fusion that scored best on the configured labelled queries for one model's index (`search.fusion: auto`)."""
    return Path(results) / "evaluate" / f"{model}.fusion.json"


def audits(results: str | Path) -> Path:
    """The default folder of `dam3d audit`'s look-alike tables and pages (the `audit` rule's)."""
    return Path(results) / "audit"


def audit_table(folder: str | Path, model: str) -> Path:
    """CSV sku_a,sku_b,fusion,score of one model's look-alike pairs, in an audit folder (default `audits`)."""
    return Path(folder) / f"{model}.csv"


def audit_page(folder: str | Path, model: str) -> Path:
    """HTML page of one model's best look-alike pairs, the two catalogue images side by side."""
    return Path(folder) / f"{model}.html"


def query_cache(results: str | Path, model: str) -> Path:
    """Cached query vectors of `dam3d evaluate` for one model."""
    return Path(results) / "cache" / "queries" / model


def stamps(results: str | Path, stage: str) -> Path:
    """The folder of a stage's stamps: its store and its journal (dam3d.runtime.stamps)."""
    return Path(results) / "stamps" / stage


def stamp(results: str | Path, stage: str, asset: str) -> Path:
    """The asset's journal entry at `stage`: its key and the chunk that computed it (written after its outputs)."""
    return stamps(results, stage) / f"{asset}.json"


def stamp_store(results: str | Path, stage: str) -> Path:
    """SQLite file of a stage's stamps, one row per asset, that the journal is compacted into (dam3d.runtime.stamps)."""
    return stamps(results, stage) / "stamps.sqlite"


def failures(results: str | Path) -> Path:
    """The folder of failure records, one subfolder per stage."""
    return Path(results) / "failures"


def failure(results: str | Path, stage: str, asset: str) -> Path:
    """Why the asset failed at `stage`."""
    return failures(results) / stage / f"{asset}.json"


def chunks(results: str | Path, stage: str) -> Path:
    """The folder of a stage's chunk manifests and members files."""
    return Path(results) / "chunks" / stage


def chunk_manifest(results: str | Path, stage: str, chunk: str) -> Path:
    """A chunk job's manifest (its rule output): its assets, ok or the reason, seconds."""
    return chunks(results, stage) / f"{chunk}.json"


def chunk_members(results: str | Path, stage: str, chunk: str) -> Path:
    """What a chunk job computes, written when the run starts (for jobs that re-parse the workflow)."""
    return chunks(results, stage) / f"{chunk}.members.json"
