"""Atomic writes: a killed run never leaves a half-written artefact that looks finished."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path`; move it into place only if the block succeeds.

    The temporary name keeps the suffix so that writers choosing a format by
    extension (Pillow, trimesh, numpy) still do the right thing.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_leftovers(path: str | os.PathLike[str]) -> None:
    """Remove the temporaries that a killed writer of `path` left next to it (see atomic_path), and their
    side files (SQLite's `-journal` of a temporary store)."""
    target = Path(path)
    for tmp in target.parent.glob(f".{target.stem}.*.tmp{target.suffix}*"):
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))
