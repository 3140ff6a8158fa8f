"""The catalogue: a folder of images (asset id = file stem) or a CSV/Parquet manifest.

A SKU may hold characters that break file paths or Snakemake wildcards
(spaces, slashes, accents). Every SKU gets a safe asset id used for file
names; the index keeps the original SKU, so search answers in the brand's ids.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

# AVIF too, whether or not the Pillow at hand decodes it: which files are SKUs must not depend
# on the environment a job runs in (a Pillow without AVIF fails that SKU at the cutout, saying so).
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".avif"}
MESH_SUFFIXES = {".glb", ".gltf", ".obj", ".ply", ".stl", ".off"}
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Spreadsheet exports: Excel writes ';' where the decimal separator is ',' (de-DE, fr-FR...).
DELIMITERS = (",", ";", "\t")


class CatalogueError(ValueError):
    """The catalogue as a whole cannot be read (not a single bad asset)."""


@dataclass(frozen=True)
class Asset:
    asset_id: str  # safe: used in paths and wildcards
    sku: str  # as the brand wrote it
    image: Path
    mesh: Path | None = None  # a mesh the DAM already has, for the `provided` mesh backend
    metadata: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    # Why this catalogue entry cannot be used (a URL, no image given): the cutout stage
    # records it as the asset's failure without running, so it shows in failures.tsv.
    problem: str | None = None


@dataclass(frozen=True)
class Skipped:
    """A file of a catalogue folder, or a manifest row, that is not an asset, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class Catalogue:
    assets: list[Asset]
    skipped: list[Skipped]


def safe_id(sku: str) -> str:
    """Map a SKU to a path- and wildcard-safe id; ids that had to change get a hash suffix.

    The suffix keeps two SKUs apart that normalise to the same text
    ("Lamp 7" and "Lamp_7"), and is stable across runs.
    """
    if SAFE_ID.fullmatch(sku) and not sku.endswith((".", "_", "-")):
        return sku  # what the steps below leave unchanged, checked at once (every SKU, every run)
    ascii_text = unicodedata.normalize("NFKD", sku).encode("ascii", "ignore").decode("ascii")
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_text).strip("._-")
    if cleaned == sku and SAFE_ID.fullmatch(sku):
        return sku
    digest = hashlib.sha1(sku.encode("utf-8")).hexdigest()[:8]
    return f"{cleaned}-{digest}" if cleaned else f"sku-{digest}"


def load_catalogue(source: str | Path) -> list[Asset]:
    """The assets of `read_catalogue(source)`, sorted by id."""
    return read_catalogue(source).assets


def read_catalogue(source: str | Path) -> Catalogue:
    """Read a folder of images or a manifest (`asset_id,image[,mesh,...]`): assets sorted by id, and what was skipped.

    Raises CatalogueError when the catalogue as a whole cannot be read (not found, a
    manifest without the asset_id and image columns, duplicate SKUs); a single unusable
    entry is an asset with a `problem` or a `Skipped` file instead, never an error.
    """
    source = Path(source)
    if source.is_dir():
        rows, skipped = _rows_from_folder(source)
    elif source.suffix.lower() in (".csv", ".parquet"):
        rows, skipped = _rows_from_manifest(source)
    elif not source.exists():
        raise CatalogueError(f"catalogue not found: {source}")
    else:
        raise CatalogueError(f"catalogue must be a folder of images or a .csv/.parquet manifest: {source}")
    return Catalogue(_assets(rows, source), skipped)


def _rows_from_folder(folder: Path) -> tuple[list[tuple[dict[str, str], None]], list[Skipped]]:
    rows, skipped = [], []
    taken = IMAGE_SUFFIXES
    # One listing, file types from it (no stat per file), sorted by name (as the Paths of one folder sort):
    # every run reads the catalogue, a million SKUs or not.
    with os.scandir(folder) as found:
        names = sorted(e.name for e in found if not e.name.startswith(".") and _is_file(e))
    # Names and paths as strings (str(folder / name), Path's stem and suffix), not a Path per file.
    prefix = "" if str(folder) == "." else os.path.join(str(folder), "")
    files = [(name, *_stem_suffix(name)) for name in names]
    meshes = {stem: prefix + name for name, stem, suffix in files if suffix.lower() in MESH_SUFFIXES}
    for name, stem, suffix in files:
        suffix = suffix.lower()
        if suffix in taken:
            row = {"asset_id": stem, "image": prefix + name}
            if stem in meshes:
                row["mesh"] = meshes[stem]
            rows.append((row, None))
        elif suffix not in MESH_SUFFIXES:
            skipped.append(Skipped(name, f"not a catalogue image type ({suffix or 'no extension'}); "
                                         f"the catalogue takes {' '.join(sorted(taken))}"))
    if not rows:
        raise CatalogueError(f"no images ({', '.join(sorted(taken))}) in catalogue folder {folder}")
    return rows, skipped


def _stem_suffix(name: str) -> tuple[str, str]:
    """Path(name).stem and .suffix (pathlib's rule: no suffix for a name ending in "." or only starting with one)."""
    i = name.rfind(".")
    return (name[:i], name[i:]) if 0 < i < len(name) - 1 else (name, "")


def _is_file(entry: os.DirEntry[str]) -> bool:
    """Path.is_file of a listed entry (a link is followed; a dangling one or a loop is no file)."""
    try:
        return entry.is_file()
    except OSError:
        return Path(entry.path).is_file()  # what pathlib ignores (a link loop) or raises, as it does


def _read_csv(path: Path) -> tuple[list[tuple[int, dict[str, str]]], list[Skipped]]:
    """A CSV as spreadsheet exports write it: delimiter , ; or tab, UTF-8 (BOM or not) or cp1252; values as text."""
    import csv
    import io

    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Excel's "CSV" on Windows in western locales; it decodes every byte but five.
        try:
            text = data.decode("cp1252")
        except UnicodeDecodeError as exc:
            raise CatalogueError(f"manifest {path}: neither UTF-8 nor cp1252 text ({exc.reason} at byte "
                                 f"{exc.start}); save it as CSV UTF-8") from None
    first = text.splitlines()[0] if text.strip() else ""
    # The delimiter that splits the header into the most columns, preferring one that names asset_id and image.
    def columns(delimiter: str) -> list[str]:
        return [c.strip() for c in next(csv.reader([first], delimiter=delimiter), [])]

    delimiter = max(DELIMITERS, key=lambda d: ({"asset_id", "image"} <= set(columns(d)), len(columns(d))))
    header = columns(delimiter)
    if not {"asset_id", "image"} <= set(header):
        shown = {",": "comma", ";": "semicolon", "\t": "tab"}[delimiter]
        raise CatalogueError(f"manifest {path} lacks column(s) {sorted({'asset_id', 'image'} - set(header))}; it needs "
                             f"asset_id,image (comma, semicolon or tab separated); found header {header} "
                             f"split by {shown}")
    rows, skipped = [], []
    try:
        # Universal newlines: "\r" alone ends a line too (Excel's "CSV (Macintosh)"); a line
        # break inside a quoted cell stays in the value.
        records = list(csv.reader(io.StringIO(text, newline=None), delimiter=delimiter))
    except csv.Error as exc:
        raise CatalogueError(f"manifest {path}: not readable as CSV with separator {delimiter!r}: {exc}") from None
    for number, values in enumerate(records[1:], start=2):
        if not any(v.strip() for v in values):
            continue  # a blank line, as spreadsheets leave at the end
        if len(values) > len(header) and any(v.strip() for v in values[len(header):]):
            skipped.append(Skipped(f"{path.name} row {number}", f"{len(values)} values for {len(header)} columns "
                                   f"(separator {delimiter!r}): quote values that contain it"))
            continue
        rows.append((number, {name: (values[i] if i < len(values) else "") for i, name in enumerate(header)}))
    return rows, skipped


def _rows_from_manifest(path: Path) -> tuple[list[tuple[dict[str, str], str | None]], list[Skipped]]:
    if not path.exists():
        raise CatalogueError(f"catalogue manifest not found: {path}")
    if path.suffix.lower() == ".csv":
        # Every value as text: SKUs like 000123 stay 000123, a price 49,90 stays 49,90.
        table, skipped = _read_csv(path)
    else:
        import pyarrow.parquet as pq

        try:
            parquet = pq.read_table(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
            raise CatalogueError(f"manifest {path}: not a Parquet file pyarrow can read ({exc})") from None
        missing = {"asset_id", "image"} - set(parquet.column_names)
        if missing:
            raise CatalogueError(f"manifest {path} lacks column(s) {sorted(missing)}; it needs asset_id,image")
        table = [(number, {k: "" if v is None else str(v) for k, v in row.items()})
                 for number, row in enumerate(parquet.to_pylist(), start=2)]
        skipped = []
    base = path.parent
    rows = []
    for number, row in table:  # number: the row as a spreadsheet shows it (header = 1)
        sku, image = row["asset_id"].strip(), row["image"].strip()
        if not sku:
            skipped.append(Skipped(f"{path.name} row {number}", f"no asset_id (image {image or 'none'})"))
            continue
        record = dict(row, asset_id=sku)
        problem = None
        if not image:
            problem = f"manifest row {number} gives no image"
        elif URL.match(image):
            problem = (f"image is a URL ({image}); dam3d does not download images: save the file and "
                       "give its path in the manifest")
        record["image"] = image if problem else str(_resolve(base, image))
        if record.get("mesh"):
            record["mesh"] = str(_resolve(base, record["mesh"]))
        rows.append((record, problem))
    return rows, skipped


def _resolve(base: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base / path


def _assets(rows: list[tuple[dict[str, str], str | None]], source: Path) -> list[Asset]:
    """Assets from (row, problem) pairs: a row's own columns are never taken for the problem."""
    seen_sku: dict[str, str] = {}
    by_id: dict[str, Asset] = {}
    for row, problem in rows:
        sku = row["asset_id"]
        if sku in seen_sku:
            raise CatalogueError(
                f"duplicate SKU {sku!r} in {source} ({seen_sku[sku]} and {row['image']}): "
                "each SKU needs exactly one catalogue image"
            )
        seen_sku[sku] = row["image"]
        asset_id = safe_id(sku)
        if asset_id in by_id:  # only possible if a brand SKU literally equals another's safe id
            raise CatalogueError(f"SKUs {by_id[asset_id].sku!r} and {sku!r} map to the same id {asset_id!r}")
        metadata = {k: v for k, v in row.items() if k not in ("asset_id", "image", "mesh")}
        mesh = Path(row["mesh"]) if row.get("mesh") else None
        by_id[asset_id] = Asset(asset_id, sku, Path(row["image"]), mesh, metadata, problem)
    return [by_id[k] for k in sorted(by_id)]


def file_digests(paths: list[Path], cache_file: Path) -> dict[Path, str]:
    """SHA-1 of each file's content, re-hashing only files whose size or mtime changed.

    The workflow reruns a SKU when its photo's content changes (these digests are
    rule params), not when a file is merely touched or copied.
    """
    import json

    from dam3d.runtime.atomic import write_text

    try:
        cache: dict[str, list] = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    digests: dict[Path, str] = {}
    fresh: dict[str, list] = {}
    real_folders: dict[str, str] = {}
    for path in paths:
        # One lstat per photo: Path.stat, is_file and resolve made ~8 system calls each (every run, every SKU).
        try:
            st = os.lstat(path)
            link = stat.S_ISLNK(st.st_mode)
            if link:
                st = os.stat(path)
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):  # missing, a folder, a URL: the cutout stage reports it
            digests[path] = "missing"
            continue
        # str(path.resolve()): the link's target resolved, else the resolved folder (once per folder) and the name.
        if link:
            key = os.path.realpath(path)
        else:
            text = os.fspath(path)
            cut = text.rfind("/") + 1   # os.path.split and join, without their cost per photo
            folder = text[:cut]
            if folder not in real_folders:
                real_folders[folder] = os.path.join(os.path.realpath(folder or "."), "")
            key = real_folders[folder] + text[cut:]
        entry = cache.get(key)
        # A damaged cache's entry (not [size, mtime_ns, sha1]) is hashed again, as a missing one is.
        if not isinstance(entry, list) or len(entry) != 3 or entry[0] != st.st_size or entry[1] != st.st_mtime_ns:
            entry = [st.st_size, st.st_mtime_ns, hashlib.sha1(path.read_bytes()).hexdigest()]
        fresh[key] = entry
        digests[path] = entry[2]
    if fresh != cache:
        write_text(cache_file, json.dumps(fresh))
    return digests
