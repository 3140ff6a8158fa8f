"""Sweet Home 3D furniture catalogues (`.sh3f` zips) as a source of textured 3D models.

Debian's package `sweethome3d-furniture` installs several catalogues under
/usr/share/sweethome3d/furniture/. Each is a zip with a
`PluginFurnitureCatalog.properties` index and one folder per model (OBJ, MTL,
textures and, for the Blend Swap catalogues, the model's own licence file).

Used by `tools/make_sample.py` (the committed sample) and `dam3d bench make`
(the benchmark generator). Licences are checked twice: the catalogue's header
must declare the expected licence, and each model's own licence file must say
it too, so a model under other terms never slips in.
"""

from __future__ import annotations

import glob
import html
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

CATALOGUE_DIR = "/usr/share/sweethome3d/furniture"
CATALOGUE_GLOB = f"{CATALOGUE_DIR}/*.sh3f"
DEBIAN_PACKAGE = "sweethome3d-furniture"


@dataclass(frozen=True)
class LicenceKind:
    """How to recognise one licence in a catalogue header and in a model's licence file."""

    key: str  # "cc0", "cc-by"
    title: str  # as written in LICENSE files we produce
    url: str
    header_id: str  # substring of the catalogue's `id`
    header_licence: str  # the catalogue's `license`, lower case
    model_pattern: str  # regex the model's own licence text must match
    model_reject: str | None = None  # regex it must not match


LICENCES = {
    "cc0": LicenceKind(
        "cc0", "CC0 1.0 (Creative Commons Zero, public domain)",
        "https://creativecommons.org/publicdomain/zero/1.0/",
        "CC-0", "public domain", r"Creative Commons Zero|CC0|CC-0",
    ),
    "cc-by": LicenceKind(
        "cc-by", "CC BY 3.0 (Creative Commons Attribution 3.0)",
        "https://creativecommons.org/licenses/by/3.0/",
        "CC-BY", "creative commons attribution 3.0 license", r"Creative Commons Attribution 3\.0|CC-BY|CC BY",
        # Only plain attribution: no share-alike or non-commercial terms.
        r"NonCommercial|Non-Commercial|ShareAlike|Share-Alike|NoDerivs",
    ),
}


def read_header(path: str | Path) -> dict[str, str]:
    with zipfile.ZipFile(path) as zf:
        text = zf.read("PluginFurnitureCatalog.properties").decode("latin-1")
    return dict(re.findall(r"^(id|license|name|version)=(.*)$", text, flags=re.M))


def find_catalogue(licence: str = "cc0", pattern: str = CATALOGUE_GLOB) -> Path:
    """The Blend Swap .sh3f zip whose header declares `licence` ("cc0" or "cc-by")."""
    kind = LICENCES[licence]
    for path in sorted(glob.glob(pattern)):
        header = read_header(path)
        if kind.header_id in header.get("id", "") and header.get("license", "").strip().lower() == kind.header_licence:
            return Path(path)
    raise FileNotFoundError(
        f"no {licence.upper()} SweetHome3D catalogue matches {pattern}; install the Debian package {DEBIAN_PACKAGE}"
    )


def find_cc0_catalogue(pattern: str = CATALOGUE_GLOB) -> Path:
    """The .sh3f zip whose catalogue declares itself public domain (CC0)."""
    return find_catalogue("cc0", pattern)


def read_properties(zf: zipfile.ZipFile) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """The catalogue header and its models keyed by model folder name (`armchair`, ...)."""
    # Java .properties are Latin-1 with \\uXXXX escapes.
    text = zf.read("PluginFurnitureCatalog.properties").decode("latin-1")
    header: dict[str, str] = {}
    by_index: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip().encode("latin-1").decode("unicode_escape")
        if "#" in key:
            name, index = key.split("#", 1)
            by_index.setdefault(index, {})[name] = value
        else:
            header[key] = value
    models = {entry["model"].split("/")[-2]: entry for entry in by_index.values() if "model" in entry}
    return header, models


def licence_files(names: list[str], folder: str) -> list[str]:
    """Names (in the zip or a folder listing) of the licence files inside one model folder."""
    prefix = folder.rstrip("/") + "/"
    return sorted(
        n for n in names
        if n.startswith(prefix) and "license" in n.rsplit("/", 1)[-1].lower() and n.lower().endswith((".txt", ".html"))
    )


def check_licence(text: str, name: str, licence: str = "cc0") -> str:
    """The Blend Swap page named in a model's licence text; raise ValueError if it is not `licence`."""
    kind = LICENCES[licence]
    text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))
    if not re.search(kind.model_pattern, text):
        raise ValueError(f"{name}: licence file does not say {licence.upper()}")
    if kind.model_reject and re.search(kind.model_reject, text):
        raise ValueError(f"{name}: licence file adds terms beyond {licence.upper()}")
    url = re.search(r"https?://www\.blendswap\.com/blends?/view/\d+", text)
    return url.group(0) if url else ""


def model_licence(folder: Path, licence: str = "cc0") -> tuple[str, str]:
    """(licence title, Blend Swap page) for one extracted model folder; raise ValueError if it is not `licence`."""
    files = sorted(p for p in folder.iterdir() if "license" in p.name.lower() and p.suffix.lower() in (".txt", ".html"))
    if not files:
        raise ValueError(f"{folder.name}: no licence file in the model folder")
    page = check_licence(files[0].read_text(encoding="utf-8", errors="replace"), folder.name, licence)
    number = re.match(r"(\d+) - ", files[0].name)
    if not page and number:
        page = f"https://www.blendswap.com/blends/view/{number.group(1)}"
    return LICENCES[licence].title, page


def extract_model(zf: zipfile.ZipFile, entry: dict[str, str], dest: Path) -> Path:
    """Extract one model folder (OBJ, MTL, textures, licence) and return the OBJ path."""
    model_path = entry["model"].lstrip("/")
    prefix = model_path.rsplit("/", 1)[0] + "/"
    for name in zf.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            zf.extract(name, dest)
    return dest / model_path


def rotation_rows(entry: dict[str, str]) -> list[list[float]] | None:
    """SH3D's `modelRotation` (row-major 3x3 in the OBJ's axes) as nested lists, or None."""
    raw = entry.get("modelRotation")
    if not raw:
        return None
    values = [float(v) for v in raw.split()]
    if len(values) != 9:
        raise ValueError(f"modelRotation must have 9 numbers, not {raw!r}")
    return [values[i * 3 : i * 3 + 3] for i in range(3)]
