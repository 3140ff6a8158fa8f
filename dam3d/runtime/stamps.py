"""Per-asset stamps: a journal of one small file per asset, compacted into one store per stage.

A stamp says that an asset's outputs at a stage are finished: its key (dam3d.runtime.plan),
the chunk that computed it, ok or the reason it failed, whether that failure is retried next
run, and the warnings it left. It is written after the asset's outputs, so a killed job loses
at most the asset it was computing.

Chunk jobs may run side by side (several GPUs, cluster nodes), so none of them writes a shared
file: each writes its assets' stamps as **journal** entries, results/stamps/{stage}/{asset}.json
(atomic renames). Reading a journal of N files costs N opens, and every run's plan reads every
stage's stamps; so at the end of a run (its `onsuccess`/`onerror`, Snakemake's lock held and
every job finished: `compact`) the main process merges the journal into the stage's **store**,
results/stamps/{stage}/stamps.sqlite (SQLite: the standard library reads it in milliseconds, in
every process that plans or resumes a chunk; written to a temporary file and renamed), and only
then deletes the journal entries it merged. A run's plan then reads the store once and the journal's few newer entries
(one directory scan), and a journal entry wins over the store's row. Killed anywhere in a
compaction, nothing is lost: the store is replaced whole or not at all, and a journal entry
that outlives its merge says what the store says.

A job that recomputes an asset clears its stamp before the outputs change (`StageStamps.clear`):
the journal entry is removed, or, where the store has a row, replaced by a **clearing entry**
({"key": null}), which hides that row until the asset's new stamp is written. So an asset
whose job was killed between new outputs and new stamp is pending, never taken as done with
its old key (which a setting changed back would match again).

A results folder from before the store (journal only) is read the same way; its first run that
computes anything (hooks run) compacts it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dam3d.runtime import layout
from dam3d.runtime.atomic import atomic_path, remove_leftovers, write_text

# The identity of a journal entry as read (inode, mtime_ns, size): compaction deletes an entry only
# if it is still that file (entries are written by renames, so a newer one is another inode).
FileId = tuple[int, int, int]
# How many journal entries a compaction removes at once.
UNLINK_THREADS = 8


def _normal(asset: str, stamp: Any) -> dict[str, Any]:
    """A stamp as the journal writes it: key, chunk, ok, reason; retry and warnings only when set."""
    if not isinstance(stamp, dict) or "key" not in stamp:
        raise ValueError(f"stamp of {asset!r} is not a stamp: {stamp!r}")
    out = {"key": stamp["key"], "chunk": stamp.get("chunk"), "ok": stamp.get("ok", True), "reason": stamp.get("reason")}
    if stamp.get("retry"):
        out["retry"] = True
    if stamp.get("warnings"):
        out["warnings"] = list(stamp["warnings"])
    return out


def _read_entry(path: Path, asset: str) -> tuple[dict[str, Any] | None, FileId] | None:
    """One journal entry and its identity; None if it is gone or unreadable (a torn file is never renamed in)."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            stamp = _normal(asset, json.loads(fh.read()))
    except (OSError, ValueError):
        return None
    return (None if stamp["key"] is None else stamp), (st.st_ino, st.st_mtime_ns, st.st_size)


@dataclass
class StageStamps:
    """The stamps of one stage as read in one pass: the store, then the journal entries over it.

    by_asset: asset -> stamp (a cleared asset has none); in_store: the assets with a row in the
    store; journal: asset -> identity of each journal entry read (what `compact` may delete).
    """

    results: Path
    stage: str
    by_asset: dict[str, dict[str, Any]] = field(default_factory=dict)
    in_store: set[str] = field(default_factory=set)
    journal: dict[str, FileId] = field(default_factory=dict)

    def get(self, asset: str) -> dict[str, Any] | None:
        """The asset's stamp (key, chunk, ok, reason; retry, warnings when set), None if it has none."""
        return self.by_asset.get(asset)

    def clear(self, asset: str) -> None:
        """Remove the asset's stamp before its outputs change (see the module's docstring): a killed job
        leaves it pending."""
        entry = layout.stamp(self.results, self.stage, asset)
        if asset in self.in_store:
            write_text(entry, json.dumps({"key": None}) + "\n")
        else:
            entry.unlink(missing_ok=True)
        self.by_asset.pop(asset, None)


def write_stamp(results: str | Path, stage: str, asset: str, stamp: dict[str, Any]) -> None:
    """The asset's journal entry (atomic), written after its outputs."""
    write_text(layout.stamp(results, stage, asset), json.dumps(_normal(asset, stamp)) + "\n")


def _read_store(path: Path) -> dict[str, dict[str, Any]]:
    """Per asset, the stamp compacted into the store at `path` ({} before the first compaction)."""
    if not path.is_file():
        return {}
    try:
        # immutable: a store is replaced by a rename, never changed in place, so no lock and no side file
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True)) as db:
            rows = db.execute("SELECT asset, key, chunk, ok, reason, retry, warnings FROM stamps").fetchall()
    except sqlite3.Error as exc:
        raise RuntimeError(f"stamps store {path} is unreadable ({exc}); remove it and the stage's assets "
                           "are computed again") from exc
    # The rows as _normal gives them, built directly: every run's plan reads every SKU's row of every stage.
    stamps = {}
    for asset, key, chunk, ok, reason, retry, warnings in rows:
        stamp = {"key": key, "chunk": chunk, "ok": bool(ok), "reason": reason}
        if retry:
            stamp["retry"] = True
        if warnings != "[]":  # compact writes json.dumps of a list: "[]" when there are none
            if found := json.loads(warnings):
                stamp["warnings"] = list(found)
        stamps[asset] = stamp
    return stamps


def _read_journal(results: Path, stage: str, assets: Iterable[str] | None = None
                  ) -> dict[str, tuple[dict[str, Any] | None, FileId]]:
    """Per asset, its journal entry (None for a clearing entry) and the entry's identity.

    Every entry (one directory scan), or with `assets` only theirs (one open each).
    """
    if assets is None:
        try:
            with os.scandir(layout.stamps(results, stage)) as found:
                # Not the `.starts` counters beside them, nor a writer's temporaries (dot files).
                entries = [(e.name[: -len(".json")], Path(e.path)) for e in found
                           if e.name.endswith(".json") and not e.name.startswith(".")]
        except FileNotFoundError:
            entries = []
    else:
        entries = [(asset, layout.stamp(results, stage, asset)) for asset in assets]
    journal = {}
    for asset, path in entries:
        read = _read_entry(path, asset)
        if read is not None:
            journal[asset] = read
    return journal


def read_stamps(results: str | Path, stage: str, assets: Iterable[str] | None = None) -> StageStamps:
    """The stamps of `stage`: one read of its store, then its journal entries, which win over the store.

    Every journal entry (one directory scan; what a run's plan and the index read), or with `assets`
    only theirs (one open each: a chunk job reading its members', whatever else the journal holds).
    """
    results = Path(results)
    stamps = StageStamps(results, stage)
    store = _read_store(layout.stamp_store(results, stage))
    stamps.by_asset, stamps.in_store = store, set(store)
    for asset, (stamp, identity) in _read_journal(results, stage, assets).items():
        stamps.journal[asset] = identity
        if stamp is None:
            stamps.by_asset.pop(asset, None)
        else:
            stamps.by_asset[asset] = stamp
    return stamps


def compact(results: str | Path, stage: str) -> int:
    """Merge the stage's journal into its store (written atomically), then delete the entries merged.

    For the main process once no job of the run is left (the run's end, its lock held). An entry
    rewritten since it was read is kept (it wins over the store next time). Returns how many entries
    were merged; nothing is written when the journal is empty.

    The store is copied and the journal applied to the copy, which then replaces the store: a run that
    stamped a few SKUs rewrites no other row (writing every row again cost 0.7 s per stage at 100,000
    SKUs, at the end of every run: README, Overhead on a large catalogue).
    """
    results = Path(results)
    journal = _read_journal(results, stage)
    if not journal:
        return 0
    store = layout.stamp_store(results, stage)
    remove_leftovers(store)  # a compaction killed while writing
    cleared = [(asset,) for asset, (s, _) in sorted(journal.items()) if s is None]
    rows = [(asset, s["key"], s["chunk"], bool(s["ok"]), s["reason"], bool(s.get("retry")), json.dumps(s.get("warnings", [])))
            for asset, (s, _) in sorted(journal.items()) if s is not None]
    with atomic_path(store) as tmp:
        if store.is_file():
            shutil.copyfile(store, tmp)
        with contextlib.closing(sqlite3.connect(tmp)) as db:
            db.execute("CREATE TABLE IF NOT EXISTS stamps (asset TEXT PRIMARY KEY, key TEXT NOT NULL, chunk TEXT, "
                       "ok INTEGER NOT NULL, reason TEXT, retry INTEGER NOT NULL, warnings TEXT NOT NULL)")
            db.executemany("DELETE FROM stamps WHERE asset = ?", cleared)
            db.executemany("INSERT OR REPLACE INTO stamps VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            db.commit()

    def remove_if_unchanged(asset: str) -> None:
        entry = layout.stamp(results, stage, asset)
        try:
            st = entry.stat()
        except FileNotFoundError:
            return
        if (st.st_ino, st.st_mtime_ns, st.st_size) == journal[asset][1]:
            entry.unlink(missing_ok=True)

    # Threads: removing a file just written waits on the disk (~2.5 ms each here, ~0.2 ms with 8 at once).
    with ThreadPoolExecutor(max_workers=UNLINK_THREADS) as pool:
        for _ in pool.map(remove_if_unchanged, journal):
            pass
    return len(journal)
