"""The catalogue: a folder of images (asset id = file stem) or a CSV/Parquet manifest.

A SKU may hold characters that break file paths or Snakemake wildcards
(spaces, slashes, accents). Every SKU gets a safe asset id used for file
names; the index keeps the original SKU, so search answers in the brand's ids.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"}
MESH_SUFFIXES = {".glb", ".gltf", ".obj", ".ply", ".stl", ".off"}
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Used as the Snakemake wildcard constraint, so the two stay in step.
SAFE_ID_PATTERN = SAFE_ID.pattern


class CatalogueError(ValueError):
    """The catalogue as a whole cannot be read (not a single bad asset)."""


@dataclass(frozen=True)
class Asset:
    asset_id: str  # safe: used in paths and wildcards
    sku: str  # as the brand wrote it
    image: Path
    mesh: Path | None = None  # a mesh the DAM already has, for the `provided` mesh backend
    metadata: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


def safe_id(sku: str) -> str:
    """Map a SKU to a path- and wildcard-safe id; ids that had to change get a hash suffix.

    The suffix keeps two SKUs apart that normalise to the same text
    ("Lamp 7" and "Lamp_7"), and is stable across runs.
    """
    ascii_text = unicodedata.normalize("NFKD", sku).encode("ascii", "ignore").decode("ascii")
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_text).strip("._-")
    if cleaned == sku and SAFE_ID.fullmatch(sku):
        return sku
    digest = hashlib.sha1(sku.encode("utf-8")).hexdigest()[:8]
    return f"{cleaned}-{digest}" if cleaned else f"sku-{digest}"


def load_catalogue(source: str | Path) -> list[Asset]:
    """Read a folder of images or a manifest (`asset_id,image[,mesh,...]`) into assets sorted by id."""
    source = Path(source)
    if source.is_dir():
        rows = _rows_from_folder(source)
    elif source.suffix.lower() in (".csv", ".parquet"):
        rows = _rows_from_manifest(source)
    elif not source.exists():
        raise CatalogueError(f"catalogue not found: {source}")
    else:
        raise CatalogueError(f"catalogue must be a folder of images or a .csv/.parquet manifest: {source}")
    return _assets(rows, source)


def _rows_from_folder(folder: Path) -> list[dict[str, str]]:
    rows = []
    meshes = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in MESH_SUFFIXES}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        row = {"asset_id": path.stem, "image": str(path)}
        if path.stem in meshes:
            row["mesh"] = str(meshes[path.stem])
        rows.append(row)
    if not rows:
        raise CatalogueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in catalogue folder {folder}")
    return rows


def _rows_from_manifest(path: Path) -> list[dict[str, str]]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if not path.exists():
        raise CatalogueError(f"catalogue manifest not found: {path}")
    if path.suffix.lower() == ".csv":
        # Every column as text: SKUs like 000123 must not become integers.
        with path.open("rb") as fh:
            header = fh.readline().decode("utf-8-sig").strip().split(",")
        convert = pacsv.ConvertOptions(column_types={name: "string" for name in header}, strings_can_be_null=False)
        table = pacsv.read_csv(path, convert_options=convert)
    else:
        table = pq.read_table(path)
    missing = {"asset_id", "image"} - set(table.column_names)
    if missing:
        raise CatalogueError(f"manifest {path} lacks column(s) {sorted(missing)}; it needs asset_id,image")
    base = path.parent
    rows = []
    for number, row in enumerate(table.to_pylist(), start=2):
        sku = "" if row["asset_id"] is None else str(row["asset_id"]).strip()
        image = "" if row["image"] is None else str(row["image"]).strip()
        if not sku or not image:
            raise CatalogueError(f"manifest {path} row {number}: empty asset_id or image")
        record = {k: "" if v is None else str(v) for k, v in row.items()}
        record["asset_id"] = sku
        record["image"] = str(_resolve(base, image))
        if record.get("mesh"):
            record["mesh"] = str(_resolve(base, record["mesh"]))
        rows.append(record)
    return rows


def _resolve(base: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base / path


def _assets(rows: list[dict[str, str]], source: Path) -> list[Asset]:
    seen_sku: dict[str, str] = {}
    by_id: dict[str, Asset] = {}
    for row in rows:
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
        by_id[asset_id] = Asset(asset_id, sku, Path(row["image"]), mesh, metadata)
    return [by_id[k] for k in sorted(by_id)]


def file_digests(paths: list[Path], cache_file: Path) -> dict[Path, str]:
    """SHA-1 of each file's content, re-hashing only files whose size or mtime changed.

    The workflow reruns a SKU when its photo's content changes (these digests are
    rule params), not when a file is merely touched or copied.
    """
    import json

    from dam3d.atomic import write_text

    try:
        cache: dict[str, list] = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    digests: dict[Path, str] = {}
    fresh: dict[str, list] = {}
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            digests[path] = "missing"  # the cutout stage reports it for that asset
            continue
        key = str(path.resolve())
        entry = cache.get(key)
        if entry is None or entry[:2] != [stat.st_size, stat.st_mtime_ns]:
            entry = [stat.st_size, stat.st_mtime_ns, hashlib.sha1(path.read_bytes()).hexdigest()]
        fresh[key] = entry
        digests[path] = entry[2]
    if fresh != cache:
        write_text(cache_file, json.dumps(fresh))
    return digests
