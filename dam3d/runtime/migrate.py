"""`dam3d migrate-layout`: move a results folder's per-asset artefacts from the flat layout into shard folders.

Before shard folders (dam3d.runtime.layout), each per-asset artefact lay directly in its stage
folder: cutout/ASSET.png, mesh/ASSET.glb, render/ASSET/az000.png, contact/ASSET.png,
embed/{model}/ASSET.npz. The migration moves each one to the path layout gives it now with
os.replace: within one filesystem nothing is copied, and each file keeps its inode, size and
mtime. That is what keeps the computed work:

- the planner (dam3d.runtime.plan) keys an asset by settings and content, never by path, so
  the next run computes no per-asset stage again;
- an index update (dam3d.search.update) knows an embedding by its size, mtime and inode, so it
  reuses every row of the previous index.

Each move is atomic (a file, or a whole views folder), so a migration killed at any point leaves
every artefact at its old path or at its new one, and running it again moves the rest. The
workflow refuses to start on a results folder that still holds flat artefacts (`find_flat`):
it would otherwise compute every asset again.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dam3d.runtime import layout

# A flat views folder named like a shard (asset "3f": render/3f/az000.png) is first renamed to
# render/.flat-3f: the shard folder render/3f/ must not be created inside it. A killed migration
# may leave such folders; the next run finishes them.
STAGED = ".flat-"
# A progress line every so many moves (a million-SKU folder moves millions of files).
PROGRESS_EVERY = 10_000


class LayoutError(Exception):
    """The folder is not a dam3d results folder, or is in a layout this command does not handle."""


@dataclass(frozen=True)
class Move:
    """One flat artefact (a file, or an asset's views folder) and where layout puts it now."""

    stage: str  # cutout, mesh, render, contact or embed-{model}
    asset: str
    source: Path
    target: Path


@dataclass
class Report:
    """What a migration moved, per stage, and what it left (a file already at the new path)."""

    moved: Counter[str] = field(default_factory=Counter)
    conflicts: list[Move] = field(default_factory=list)


def check_results(results: str | Path) -> Path:
    """`results` as a Path if it is a dam3d results folder (it holds a per-asset stage folder), else LayoutError."""
    folder = Path(results)
    if not folder.is_dir():
        raise LayoutError(f"{folder} is not a folder")
    stage_folders = [layout.cutouts(folder), layout.meshes(folder), layout.renders(folder), layout.contacts(folder),
                     layout.embeddings(folder)]
    if not any(p.is_dir() for p in stage_folders):
        names = ", ".join(f"{p.name}/" for p in stage_folders)
        raise LayoutError(f"{folder} is not a dam3d results folder: none of {names} is in it")
    return folder


def _entries(folder: Path) -> Iterator[os.DirEntry[str]]:
    """The entries of `folder` (none if it does not exist), read as they come: a flat folder may hold millions."""
    try:
        scan = os.scandir(folder)
    except FileNotFoundError:
        return
    with scan:
        yield from scan


def _flat_files(stage: str, folder: Path, suffix: str, target: Callable[[str], Path]) -> Iterator[Move]:
    """The artefacts lying directly in a stage folder (flat layout); hidden files (killed writes' temporaries) are left."""
    for entry in _entries(folder):
        if not entry.name.startswith(".") and entry.name.endswith(suffix) and entry.is_file():
            asset = entry.name[: -len(suffix)]
            yield Move(stage, asset, Path(entry.path), target(asset))


def _holds_files(folder: Path) -> bool:
    """Whether a folder of render/ named like a shard is an asset's flat views folder (views are files; a
    shard holds folders only). Its first entry decides: one entry read per shard, not thousands."""
    return next((e.is_file() for e in _entries(folder) if not e.name.startswith(".")), False)


def _flat_views(results: Path) -> Iterator[Move]:
    """Each asset's views folder lying directly in render/ (flat layout), staged ones included."""
    for entry in _entries(layout.renders(results)):
        name = entry.name
        if not entry.is_dir() or (name.startswith(".") and not name.startswith(STAGED)):
            continue
        asset = name.removeprefix(STAGED)
        if name.startswith(STAGED) or not layout.SHARD_NAME.fullmatch(name) or _holds_files(Path(entry.path)):
            yield Move("render", asset, Path(entry.path), layout.views(results, asset))


def flat_artefacts(results: str | Path) -> Iterator[Move]:
    """Every flat-layout artefact of a results folder, stage by stage (nothing is moved)."""
    results = Path(results)
    yield from _flat_files("cutout", layout.cutouts(results), ".png", lambda a: layout.cutout(results, a))
    yield from _flat_files("mesh", layout.meshes(results), ".glb", lambda a: layout.mesh(results, a))
    yield from _flat_views(results)
    yield from _flat_files("contact", layout.contacts(results), ".png", lambda a: layout.contact(results, a))
    for model in sorted(e.name for e in _entries(layout.embeddings(results)) if e.is_dir()):
        yield from _flat_files(f"embed-{model}", layout.model_embeddings(results, model), ".npz",
                               lambda a, model=model: layout.embedding(results, model, a))


def find_flat(results: str | Path) -> Path | None:
    """The first artefact of `results` still in the flat layout, or None: cheap on a sharded folder
    (each stage folder lists its 256 shards), so the workflow asks it at every start."""
    return next((move.source for move in flat_artefacts(results)), None)


def flat_layout_message(results: str | Path, found: Path) -> str:
    """The one line that stops a workflow or command on a results folder in the flat layout."""
    return (f"dam3d: {results} holds artefacts of an older dam3d in the flat layout (e.g. {found}); move them into "
            f"shard folders, without recomputing anything, with: dam3d migrate-layout {results}")


def _stage_shard_named_views(results: Path) -> None:
    """Rename each flat views folder named like a shard (an asset id of 2 hex digits) to render/.flat-ASSET
    first: 256 names to look at, not the whole of render/."""
    for name in (f"{i:02x}" for i in range(256)):
        folder = layout.renders(results) / name
        if folder.is_dir() and _holds_files(folder):
            os.replace(folder, folder.with_name(STAGED + name))


def migrate(results: str | Path, progress: Callable[[str], None] = lambda _: None) -> Report:
    """Move every flat artefact of `results` to its sharded path (os.replace); see the module docstring.

    An artefact whose new path is taken already (by a run of a newer dam3d) is left where it is
    and listed in the report's conflicts: nothing is overwritten.
    """
    results = check_results(results)
    _stage_shard_named_views(results)
    report, shards = Report(), set[Path]()  # shard folders made (or found) already: one mkdir each, not one per move
    # Passes until one moves nothing: a folder listed while its entries move out may skip some (POSIX
    # leaves readdir unspecified for entries added or removed meanwhile); the last pass finds no work.
    while True:
        conflicts, before = [], sum(report.moved.values())
        for move in flat_artefacts(results):
            if move.target.exists():
                conflicts.append(move)
                continue
            if move.target.parent not in shards:
                move.target.parent.mkdir(parents=True, exist_ok=True)
                shards.add(move.target.parent)
            os.replace(move.source, move.target)
            report.moved[move.stage] += 1
            total = sum(report.moved.values())
            if total % PROGRESS_EVERY == 0:
                progress(f"{total:,} moved ({counts(report.moved)})")
        if sum(report.moved.values()) == before:
            report.conflicts = conflicts
            return report


def counts(moved: Counter[str]) -> str:
    """`cutout 3, mesh 3, ...`: moves per stage, in pipeline order."""
    return ", ".join(f"{stage} {n:,}" for stage, n in moved.items()) or "nothing"
