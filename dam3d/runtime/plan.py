"""Which assets each per-asset stage still has to compute, in chunks of many assets per job.

A GPU model takes seconds to load and a process seconds to start; one Snakemake job
per asset and stage would pay that for every SKU. So each per-asset stage runs as
chunk jobs (rule wildcard `chunk`) of up to `chunks.{stage}` assets: one process,
one model load, batched inference. Snakemake decides per *job*, so which assets go
into a chunk is decided here, per *asset*, when the workflow starts:

- every asset has a key per stage: a hash of the stage, its settings, its own
  source (photo or provided mesh digest) and the keys of the stages it reads from;
- a finished asset leaves a stamp (dam3d.runtime.stamps: a journal entry, compacted
  into the stage's store at the end of the run), written after its outputs
  (atomically, last), holding that key and its chunk; the plan reads a stage's
  stamps in one pass;
- an asset is pending when its stamp is missing, holds another key or an unexpected
  error (retried next run), an output is missing (the views: their folder), or an upstream stage is pending for
  it. Pending assets are cut into chunks named by a hash of their members and keys
  whose manifest (results/chunks/{stage}/{chunk}.json, the rule's declared output)
  does not exist yet, so Snakemake runs them.

The aggregate rules (index, contact sheet) take, per asset, the manifest of the
chunk that last computed it: the same files run after run while nothing changes,
so a refresh with nothing new runs nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

from dam3d.runtime import layout
from dam3d.runtime.stamps import read_stamps


def code_digest(path: str | Path) -> str:
    """SHA-1 of a Python file's code, blind to what does not change what it computes.

    Comments, docstrings, formatting and the module a name is imported from are left out
    (a package moved or a comment edited reruns nothing); any other edit changes the digest,
    another imported name too. Part of each asset's key, as Snakemake's `code` rerun trigger
    would be.
    """
    import ast

    tree = ast.parse(Path(path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            node.module, node.level = None, 0
        body = getattr(node, "body", None)
        if isinstance(body, list):
            body[:] = [stmt for stmt in body if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
                                                      and isinstance(stmt.value.value, str))]
    return hashlib.sha1(ast.dump(tree).encode()).hexdigest()


# json.dumps(value, sort_keys=True, default=str) without making an encoder per call (one digest per SKU and stage).
_ENCODER = json.JSONEncoder(sort_keys=True, default=str)


def digest(value: Any) -> str:
    return hashlib.sha1(_ENCODER.encode(value).encode()).hexdigest()


def _key_digests(stage: str) -> Callable[[Any, list[str]], str]:
    """`digest([stage, parts, upstream_keys])` of one asset after another: the same digests, about twice as fast.

    An asset's key parts are mostly the stage's settings, the same objects for every SKU: their JSON is
    made once per plan (by identity; each object is kept, so that its id is not reused, and the settings
    do not change while a stage is planned). Strings are encoded as the encoder encodes them, and the
    lists joined as json.dumps joins them.
    """
    head = f"[{encode_basestring_ascii(stage)}, ["
    known: dict[int, tuple[Any, str]] = {}  # id -> (the object, its JSON)

    def text(part: Any) -> str:
        if isinstance(part, str):
            return encode_basestring_ascii(part)
        if id(part) not in known:
            known[id(part)] = (part, _ENCODER.encode(part))
        return known[id(part)][1]

    def key(parts: Any, upstream_keys: list[str]) -> str:
        if not isinstance(parts, list):
            return digest([stage, parts, upstream_keys])
        body, ups = ", ".join(map(text, parts)), ", ".join(map(encode_basestring_ascii, upstream_keys))
        return hashlib.sha1(f"{head}{body}], [{ups}]]".encode()).hexdigest()

    return key


@dataclass
class StagePlan:
    """One stage's keys, pending assets and chunks for this run."""

    stage: str
    results: str
    keys: dict[str, str]
    outputs: dict[str, list[str]]
    pending: list[str] = field(default_factory=list)
    chunks: dict[str, list[str]] = field(default_factory=dict)
    chunk_of: dict[str, str] = field(default_factory=dict)
    # Per finished asset: the manifest of the chunk that made it (its members file when that job died first).
    made_by: dict[str, str] = field(default_factory=dict)
    # Per chunk of this run, its manifest (a string per chunk, not a Path per asset).
    manifests: dict[str, str] = field(default_factory=dict)
    # What a chunk job needs to know of each asset beyond key and outputs (set by the workflow).
    members: Callable[[str], dict[str, Any]] | None = None

    def aggregate_input(self, asset: str) -> str:
        """The file an aggregate rule takes as input for this asset at this stage.

        Pending: the manifest of the chunk computing it now (ordering). Done: the
        manifest of the chunk that computed it, or that chunk's members file when its
        job died before writing its manifest (its finished assets are kept).
        """
        if asset in self.chunk_of:
            return self.manifests[self.chunk_of[asset]]
        return self.made_by[asset]

    def chunk_refs(self, assets: Iterable[str]) -> list[str]:
        """Manifests of this stage's chunks computing any of `assets` now (a downstream chunk waits for them)."""
        return sorted({self.manifests[self.chunk_of[a]] for a in assets if a in self.chunk_of})

    def chunk_pattern(self) -> str:
        # A wildcard constraint: only this run's chunks are made by the rule; older
        # manifests on disk are plain input files.
        return "|".join(self.chunks) or "(?!)"


def plan_stage(
    stage: str,
    results: str | Path,
    assets: Sequence[str],
    *,
    outputs: Callable[[str], list[str]],
    key_parts: Callable[[str], Any],
    upstream: Sequence[StagePlan] = (),
    per_job: int,
    present: Callable[[str], list[str]] | None = None,
) -> StagePlan:
    """Keys, pending assets and chunks of `stage` for `assets` (in catalogue order).

    An asset with its stamp is done when the paths `present(asset)` gives exist (default: its
    `outputs(asset)`); a stage whose outputs fill one folder per asset names the folder: its
    shard folder's listing answers for every SKU, where the files would need a listing per SKU.
    """
    results = str(results)
    plan = StagePlan(stage, results, keys={}, outputs={})
    stamps = read_stamps(results, stage)
    records: dict[str, str | None] = {}  # per chunk a stamp names: the file standing for what it made (one stat)
    upstream_pending = set().union(*(up.chunk_of for up in upstream))
    all_exist = _exists_by_listing()
    key_digest = _key_digests(stage)
    # Names bound once: this loop runs for every SKU at every stage of every run (5 x 100,000 at 100,000 SKUs).
    keys, outputs_of, made_by, pending, by_asset = plan.keys, plan.outputs, plan.made_by, plan.pending, stamps.by_asset
    upstream_keys = [up.keys for up in upstream]
    for asset in assets:
        key = keys[asset] = key_digest(key_parts(asset), [up_keys[asset] for up_keys in upstream_keys])
        paths = outputs_of[asset] = outputs(asset)
        if present is not None:
            paths = present(asset)
        stamp = by_asset.get(asset)
        if (
            stamp is not None
            and stamp["key"] == key
            # An unexpected error (not the asset's fault: a crash, the GPU) is tried again next run.
            and not stamp.get("retry")
            and asset not in upstream_pending
            and all_exist(paths)
        ):
            chunk = str(stamp["chunk"])
            if chunk not in records:
                records[chunk] = _chunk_record(results, stage, chunk)
            if (record := records[chunk]) is not None:
                made_by[asset] = record
                continue
        pending.append(asset)
    n_chunks = math.ceil(len(plan.pending) / max(1, per_job))
    for i in range(n_chunks):
        # Near-equal chunks: 65 pending with 64 per job make 33 + 32, not 64 + 1.
        members = plan.pending[i * len(plan.pending) // n_chunks : (i + 1) * len(plan.pending) // n_chunks]
        # Named by its members and keys, and new: a chunk whose manifest exists was run
        # before, and Snakemake would take it as done. The same pending work after a killed
        # run gets the same name again, so a resumed job skips the assets it finished.
        for attempt in itertools.count():
            name = f"{len(members)}x-" + digest([stage, [(a, plan.keys[a]) for a in members], attempt])[:12]
            if not layout.chunk_manifest(results, stage, name).exists():
                break
        plan.chunks[name] = members
        plan.manifests[name] = str(layout.chunk_manifest(results, stage, name))
        plan.chunk_of.update(dict.fromkeys(members, name))
    return plan


def _exists_by_listing() -> Callable[[list[str]], bool]:
    """Whether os.path.exists holds for every path of a list, for many files in few folders: one
    os.scandir per folder, not one stat per file.

    The plan asks for every output of every SKU at every stage (12 files per SKU with 8 views),
    and the outputs of a stage share 256 shard folders (the views: one folder per SKU). One call
    per asset and stage, the paths looked up inline: a call per file cost ~1 s at 100,000 SKUs.
    """
    listed: dict[str, set[str] | None] = {}

    def all_exist(paths: list[str]) -> bool:
        for path in paths:
            cut = path.rfind("/") + 1  # not os.path.split: it costs as much as the stat it saves
            folder, name = path[:cut], path[cut:]
            if name:
                if folder in listed:
                    names = listed[folder]
                else:
                    names = listed[folder] = _listing(folder)
                if names is not None:
                    if name not in names:
                        return False
                    continue
            # A folder's own path ("a/"), or a folder that may be searched but not read: ask per file.
            if not os.path.exists(path):
                return False
        return True

    return all_exist


def _listing(folder: str) -> set[str] | None:
    """The names in `folder` that os.path.exists finds (a dangling link is not one); None if it cannot be listed."""
    try:
        with os.scandir(folder or ".") as entries:  # folder: "" or ending in "/"
            # is_symlink from the listing (no stat); only a link needs its target checked.
            return {e.name for e in entries if not e.is_symlink() or os.path.exists(e.path)}
    except (FileNotFoundError, NotADirectoryError):
        return set()
    except OSError:  # e.g. a folder that may be searched but not read: ask per file
        return None


def _chunk_record(results: str, stage: str, chunk: str) -> str | None:
    """The file standing for what `chunk` made: its manifest, or its members file if its job died first.

    None if neither is left (the chunks folder removed by hand): its assets are computed again,
    since nothing else would tell the index that they changed.
    """
    for path in (layout.chunk_manifest(results, stage, chunk), layout.chunk_members(results, stage, chunk)):
        if path.exists():
            return str(path)
    return None


def summary(plans: Mapping[str, StagePlan]) -> str:
    """One line for the start of a run: what each stage will compute."""
    parts = [
        f"{stage} {len(plan.pending)}/{len(plan.keys)}" + (f" in {len(plan.chunks)} job(s)" if plan.chunks else "")
        for stage, plan in plans.items()
    ]
    return "dam3d: to compute (assets/catalogue): " + ", ".join(parts)
