"""`dam3d bench make OUT`: a labelled benchmark built from textured 3D models.

For each object it writes one catalogue photo (the DAM's studio shot: white
background, soft contact shadow, fixed three-quarter front view) and
`--queries-per-object` customer-style photos: another side of the object
(azimuth 45-150 degrees away from the catalogue view, alternately left and
right), another elevation, a key light turned about the object, a
room background made of floor and wall textures, varied scale, position and
roll, colour cast, blur, noise and JPEG compression.

Objects come from Debian's `sweethome3d-furniture` (the Blend Swap CC0 and
CC-BY 3.0 catalogues; every model's own licence file is checked) and, with
`--sources products`, from `dam3d.benchmarks.products` (procedural packaged goods
and kitchenware: boxes, cans, bottles, jars, tubs, bowls with printed labels;
generated, CC0). They are
rendered by the project's render script (`blender/render_views.py`) with EEVEE by
default: shaded, with highlights, a soft world light and a key sun (in the catalogue
shot over the photographer's shoulder, in each query from its own side), so that the
photos do not share the flat Workbench look of the pipeline's own views, and the views
cannot be tuned to the benchmark by rendering them like its queries (about 2.5 s per
view at 512 px on 2 cores; `--engine BLENDER_WORKBENCH`, the earlier benchmarks, well
under one). Composited with Pillow.

    OUT/catalogue/SKU-xxxxxx.jpg   one studio shot per object (a folder catalogue: SKU = file stem)
    OUT/queries/q-xxxxxxxxxx.jpg   customer photos
    OUT/queries.csv                query,sku (what `dam3d evaluate` reads)
    OUT/objects.csv                sku -> source model, name, dimensions, author, licence (the answer key and credits)
    OUT/bench.json                 seed, settings, every query's parameters and every generated product's
    OUT/LICENSE.md                 sources and licences

SKUs and query names are hashes of the seed and the model: they say nothing
about the object. The same seed gives the same files, byte for byte, on the
same machine.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dam3d import __version__
from dam3d.benchmarks import products, sh3d
from dam3d.runtime.atomic import atomic_path, write_bytes, write_text
from dam3d.stages.render import run_batch

CATALOGUE_VIEW = (25.0, 15.0)  # azimuth, elevation (degrees): three-quarter front, as make_sample.py
CATALOGUE_FILL = 0.72  # object's larger side / image side
QUERY_LIGHTS = ("studio.sl", "paint.sl", "outdoor.sl", "rim.sl", "Default")  # Workbench studio lights
# Engines of the benchmark's photos. EEVEE by default: not the pipeline's default Workbench views.
ENGINES = ("BLENDER_EEVEE", "BLENDER_WORKBENCH", "CYCLES")
SOURCES = ("cc0", "cc-by", "products")  # SH3D catalogues by licence; procedural packaged goods
DEFAULT_SOURCES = ("cc0", "cc-by")
PRODUCTS = "products"
EXCLUDED_CATEGORIES = {"Staircases"}  # parts of a building, not products
MIN_TEXTURE_SIDE = 64


@dataclass(frozen=True)
class Candidate:
    """One model of a SH3D catalogue that may become a benchmark object."""

    licence: str  # "cc0", "cc-by" or "products" (generated)
    catalogue: Path | None  # the SH3D zip; None for a generated product
    folder: str  # model folder inside the catalogue (`armchair`), or the generated product's key (`p0007`)
    entry: dict = field(hash=False, compare=False)
    page: str = ""  # Blend Swap page named in the model's licence file

    @property
    def key(self) -> str:
        return f"{self.licence}/{self.folder}"


@dataclass
class QuerySpec:
    """Everything that makes one customer photo; written to bench.json."""

    name: str
    sku: str
    azimuth: float
    elevation: float
    light: str  # Workbench's studio light (the other engines light with a key sun at light_rotation)
    light_rotation: float  # degrees about the vertical
    height_frac: float  # object's larger side / image height
    centre_x: float  # image fractions
    bottom_y: float
    roll: float
    brightness: float
    warmth: float
    blur: float
    noise: float
    quality: int
    horizon: float
    wall: str  # texture name or "plain"
    floor: str
    wall_tint: tuple[int, int, int]
    floor_tint: tuple[int, int, int]


def query_size(resolution: int) -> tuple[int, int]:
    """Customer photos are 4:3, 1.25 x the catalogue side wide: 640x480 at 512."""
    return round(resolution * 1.25), round(resolution * 0.9375)


def _rng(seed: int, *parts: object) -> np.random.Generator:
    """A generator that depends on the seed and the object only, not on the other objects."""
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _hexid(seed: int, *parts: object, n: int) -> str:
    return hashlib.sha256(":".join(map(str, ("dam3d-bench", seed, *parts))).encode()).hexdigest()[:n]


# --------------------------------------------------------------------------- sources


def load_candidates(sources: list[str], pattern: str = sh3d.CATALOGUE_GLOB) -> tuple[list[Candidate], dict[str, dict]]:
    """Every eligible model of the chosen SH3D catalogues (sorted), and each catalogue's header."""
    out: list[Candidate] = []
    headers: dict[str, dict] = {}
    for licence in sources:
        path = sh3d.find_catalogue(licence, pattern)
        with zipfile.ZipFile(path) as zf:
            header, models = sh3d.read_properties(zf)
            names = zf.namelist()
            headers[licence] = {"path": str(path), **header}
            for folder, entry in sorted(models.items()):
                if entry.get("doorOrWindow") == "true" or entry.get("staircaseCutOutShape"):
                    continue
                if entry.get("category") in EXCLUDED_CATEGORIES:
                    continue
                model_dir = entry["model"].lstrip("/").rsplit("/", 1)[0]
                files = sh3d.licence_files(names, model_dir)
                if not files:
                    continue  # no licence file of its own: not used
                try:
                    page = sh3d.check_licence(zf.read(files[0]).decode("utf-8", "replace"), folder, licence)
                except ValueError:
                    continue
                out.append(Candidate(licence, path, folder, entry, page))
    return out, headers


def texture_names(cc0_catalogue: Path, exclude: set[str]) -> list[str]:
    """CC0 texture images of models that are not benchmark objects (for query backgrounds)."""
    with zipfile.ZipFile(cc0_catalogue) as zf:
        names = [n for n in zf.namelist() if n.count("/") >= 2 and n.lower().endswith((".jpg", ".jpeg", ".png"))]
    return sorted(n for n in names if n.split("/")[1] not in exclude)


class Textures:
    """Lazily decoded background textures; unusable ones (tiny, mostly transparent) are skipped."""

    def __init__(self, catalogue: Path | None, names: list[str]) -> None:
        self.catalogue, self.names = catalogue, names
        self._cache: dict[str, Image.Image | None] = {}

    def get(self, index: int) -> tuple[str, Image.Image] | None:
        """The first usable texture at or after `index` (cyclically), or None if none is usable."""
        for k in range(len(self.names)):
            name = self.names[(index + k) % len(self.names)]
            if name not in self._cache:
                self._cache[name] = self._load(name)
            if self._cache[name] is not None:
                return name, self._cache[name]
        return None

    def _load(self, name: str) -> Image.Image | None:
        assert self.catalogue is not None
        try:
            with zipfile.ZipFile(self.catalogue) as zf, Image.open(io.BytesIO(zf.read(name))) as im:
                im.load()
                if min(im.size) < MIN_TEXTURE_SIDE:
                    return None
                if im.mode in ("RGBA", "LA", "P"):
                    rgba = im.convert("RGBA")
                    if np.asarray(rgba.getchannel("A")).mean() < 240:
                        return None  # leaves, decals: not a surface
                return im.convert("RGB")
        except (OSError, ValueError):
            return None


# --------------------------------------------------------------------------- compositing


def _crop_to_alpha(rgba: Image.Image) -> Image.Image:
    box = rgba.getchannel("A").point(lambda a: 255 if a > 8 else 0).getbbox()
    if box is None:
        raise ValueError("empty render (the object is not in the frame)")
    return rgba.crop(box)


def _shadow(size: tuple[int, int], box: tuple[float, float, float, float], opacity: float, blur: float) -> Image.Image:
    """An L mask with a soft elliptical contact shadow in `box`."""
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse(box, fill=int(255 * opacity))
    return mask.filter(ImageFilter.GaussianBlur(blur))


def studio_shot(render: Image.Image, side: int) -> Image.Image:
    """The catalogue photo: object centred on white, filling CATALOGUE_FILL, soft contact shadow."""
    obj = _crop_to_alpha(render)
    scale = CATALOGUE_FILL * side / max(obj.size)
    obj = obj.resize((max(1, round(obj.width * scale)), max(1, round(obj.height * scale))), Image.LANCZOS)
    x, y = (side - obj.width) // 2, (side - obj.height) // 2
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    bottom = y + obj.height
    shadow = _shadow((side, side), (x + obj.width * 0.08, bottom - side * 0.025, x + obj.width * 0.92, bottom + side * 0.02),
                     0.30, side * 0.012)
    canvas.paste((150, 150, 150), (0, 0), shadow)
    canvas.paste(obj, (x, y), obj)
    return canvas


def _tile(texture: Image.Image, size: tuple[int, int], tile: int) -> Image.Image:
    """`texture` resized to `tile` px wide and repeated over `size`."""
    t = texture.resize((tile, max(1, round(texture.height * tile / texture.width))), Image.BILINEAR)
    out = Image.new("RGB", size)
    for yy in range(0, size[1], t.height):
        for xx in range(0, size[0], t.width):
            out.paste(t, (xx, yy))
    return out


def _plain(size: tuple[int, int], rgb: tuple[int, int, int], rng: np.random.Generator) -> Image.Image:
    """A plain surface with low-frequency mottling (paint, plaster, lino)."""
    grid = rng.normal(0.0, 1.0, (6, 8)).astype(np.float32)
    low = np.asarray(Image.fromarray(grid).resize(size, Image.BICUBIC), dtype=np.float32)
    shade = 1.0 + 0.06 * low[..., None]
    return Image.fromarray(np.clip(np.array(rgb, np.float32) * shade, 0, 255).astype(np.uint8))


def _perspective_coeffs(dst: list[tuple[float, float]], src: list[tuple[float, float]]) -> list[float]:
    """Coefficients for Image.transform(PERSPECTIVE) mapping the output quad `dst` to the input quad `src`."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return [float(c) for c in np.linalg.solve(np.array(rows, float), np.array(rhs, float))]


def room_background(size: tuple[int, int], q: QuerySpec, textures: Textures, rng: np.random.Generator) -> Image.Image:
    """Wall above the horizon, floor below it in perspective, a little vignetting."""
    w, h = size
    horizon = int(h * q.horizon)

    def surface(name: str, tint: tuple[int, int, int], area: tuple[int, int], tile: int) -> Image.Image:
        if name == "plain":
            return _plain(area, tint, rng)
        found = textures.get(textures.names.index(name))
        assert found is not None
        tiled = _tile(found[1], area, tile)
        # Tint towards a room colour so that textures read as painted walls / floors, not as objects.
        return Image.blend(tiled, Image.new("RGB", area, tint), 0.35)

    wall = surface(q.wall, q.wall_tint, (w, max(1, horizon)), max(32, int(w * rng.uniform(0.15, 0.4))))
    floor_h = h - horizon
    depth = 3 * w
    flat = surface(q.floor, q.floor_tint, (depth, depth), max(32, int(w * rng.uniform(0.2, 0.5))))
    # The far edge of the floor (at the horizon) sees the whole flat width, the near edge a third of it.
    coeffs = _perspective_coeffs(
        [(0, 0), (w, 0), (w, floor_h), (0, floor_h)],
        [(0, 0), (depth, 0), (2 * depth / 3, depth), (depth / 3, depth)],
    )
    floor = flat.transform((w, max(1, floor_h)), Image.PERSPECTIVE, coeffs, Image.BILINEAR)
    room = Image.new("RGB", size)
    room.paste(wall, (0, 0))
    room.paste(floor, (0, horizon))
    # Skirting line and a darker corner: the eye reads a room.
    ImageDraw.Draw(room).line([(0, horizon), (w, horizon)], fill=tuple(int(c * 0.7) for c in q.wall_tint), width=max(1, h // 160))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    vignette = 1.0 - 0.25 * (((xx - w / 2) / w) ** 2 + ((yy - h / 2) / h) ** 2) * 2
    arr = np.asarray(room, np.float32) * vignette[..., None]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def customer_photo(render: Image.Image, q: QuerySpec, size: tuple[int, int], textures: Textures) -> Image.Image:
    """Composite one rendered view into a room photo, then degrade it as a phone would."""
    w, h = size
    rng = np.random.default_rng(int(hashlib.sha256(q.name.encode()).hexdigest()[:8], 16))
    room = room_background(size, q, textures, rng)
    obj = _crop_to_alpha(render)
    scale = q.height_frac * h / max(obj.size)
    obj = obj.resize((max(1, round(obj.width * scale)), max(1, round(obj.height * scale))), Image.LANCZOS)
    # Keep the object inside the frame whatever the random placement.
    cx = min(max(q.centre_x * w, obj.width / 2 + 4), w - obj.width / 2 - 4)
    bottom = min(max(q.bottom_y * h, obj.height + 4), h - 4)
    x, y = round(cx - obj.width / 2), round(bottom - obj.height)
    shadow = _shadow(size, (x + obj.width * 0.05, bottom - h * 0.03, x + obj.width * 1.05, bottom + h * 0.025), 0.45, h * 0.015)
    room.paste((20, 18, 16), (0, 0), shadow)
    room.paste(obj, (x, y), obj)
    if q.roll:
        # A phone held slightly askew: rotate about the centre, crop back to the frame.
        big = room.rotate(q.roll, resample=Image.BICUBIC, expand=False, fillcolor=None)
        c, s = abs(np.cos(np.radians(q.roll))), abs(np.sin(np.radians(q.roll)))
        zoom = c + s * max(w / h, h / w) + 0.01
        cw, ch = w / zoom, h / zoom
        room = big.crop(((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)).resize(size, Image.BICUBIC)
    arr = np.asarray(room, np.float32)
    arr = arr * q.brightness * np.array([1 + q.warmth, 1.0, 1 - q.warmth], np.float32)
    if q.noise > 0:
        arr = arr + rng.normal(0.0, q.noise, arr.shape).astype(np.float32)
    photo = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if q.blur > 0.05:
        photo = photo.filter(ImageFilter.GaussianBlur(q.blur))
    return photo


def _jpeg(image: Image.Image, quality: int) -> bytes:
    """JPEG without EXIF or timestamps: the same image gives the same bytes."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


# --------------------------------------------------------------------------- planning


def plan_queries(seed: int, candidate: Candidate, sku: str, count: int, textures: Textures) -> list[QuerySpec]:
    """The customer photos of one object, drawn from a generator of (seed, object) only."""
    specs = []
    for j in range(count):
        side = 1 if j % 2 == 0 else -1
        # Two streams: the view does not depend on which textures exist, so it can be rendered first.
        rng = _rng(seed, "view", candidate.key, j)
        bg = _rng(seed, "background", candidate.key, j)
        n_tex = len(textures.names)

        def pick() -> str:
            if bg.random() < 0.3 or n_tex == 0:
                return "plain"
            found = textures.get(int(bg.integers(n_tex)))
            return found[0] if found else "plain"

        specs.append(QuerySpec(
            name=f"q-{_hexid(seed, 'query', candidate.key, j, n=10)}",
            sku=sku,
            azimuth=round((CATALOGUE_VIEW[0] + side * rng.uniform(45, 150)) % 360, 2),
            elevation=round(float(rng.uniform(0, 35)), 2),
            light=str(rng.choice(QUERY_LIGHTS)),
            light_rotation=round(float(rng.uniform(0, 360)), 1),
            height_frac=round(float(rng.uniform(0.35, 0.8)), 3),
            centre_x=round(float(rng.uniform(0.3, 0.7)), 3),
            bottom_y=round(float(rng.uniform(0.75, 0.95)), 3),
            roll=round(float(rng.uniform(-6, 6)), 2),
            brightness=round(float(rng.uniform(0.8, 1.15)), 3),
            warmth=round(float(rng.uniform(-0.08, 0.08)), 3),
            blur=round(float(rng.uniform(0, 1.2)), 2),
            noise=round(float(rng.uniform(0, 5)), 2),
            quality=int(rng.integers(60, 91)),
            horizon=round(float(bg.uniform(0.3, 0.6)), 3),
            wall=pick(),
            floor=pick(),
            wall_tint=tuple(int(c) for c in bg.integers(150, 245, 3)),
            floor_tint=tuple(int(c) for c in bg.integers(60, 200, 3)),
        ))
    return specs


def assign_skus(seed: int, chosen: list[Candidate]) -> dict[str, str]:
    """Candidate key -> `SKU-` + hex digits of a hash of (seed, model); longer on the rare collision."""
    skus: dict[str, str] = {}
    used: set[str] = set()
    for c in chosen:
        n = 6
        while (sku := f"SKU-{_hexid(seed, 'sku', c.key, n=n)}") in used:
            n += 2
        used.add(sku)
        skus[c.key] = sku
    return skus


# --------------------------------------------------------------------------- the command


def make_benchmark(
    out: Path,
    *,
    objects: int = 120,
    queries_per_object: int = 2,
    seed: int = 0,
    resolution: int = 512,
    engine: str = ENGINES[0],
    sources: tuple[str, ...] = DEFAULT_SOURCES,
    pattern: str = sh3d.CATALOGUE_GLOB,
    log=print,  # noqa: ANN001 - any print-like callable
) -> dict:
    """Build the benchmark in `out`; return a summary (counts, skipped models, seconds).

    `engine` renders the catalogue shots and the queries (one of ENGINES); ValueError for another.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    started = time.perf_counter()
    candidates, headers = load_candidates([s for s in sources if s != PRODUCTS], pattern)
    generated: dict[str, products.Product] = {}  # candidate key -> product, for --sources products
    if PRODUCTS in sources:
        for p in products.generate(seed, objects):
            generated[f"{PRODUCTS}/{p.key}"] = p
            candidates.append(Candidate(PRODUCTS, None, p.key, {
                "name": f"{p.params['brand']} {p.name} ({p.params['word'].lower()})", "category": p.kind,
                "creator": "dam3d (procedural)"}))
        headers[PRODUCTS] = {"path": "dam3d/benchmarks/products.py", "name": "dam3d procedural products",
                             "license": products.LICENCE, "version": __version__}
    if len(candidates) < objects:
        raise ValueError(f"only {len(candidates)} eligible models in {', '.join(sources)}; asked for {objects}")
    order = [candidates[i] for i in _rng(seed, "order").permutation(len(candidates))]
    qsize = query_size(resolution)

    for sub in ("catalogue", "queries", "meshes"):
        shutil.rmtree(out / sub, ignore_errors=True)  # a previous run's files must not linger
        (out / sub).mkdir(parents=True)

    chosen: list[Candidate] = []
    skipped: list[dict[str, str]] = []
    renders: dict[str, Path] = {}
    models: dict[str, tuple[Path, list[list[float]] | None]] = {}  # the true mesh of each object, and its turn
    with tempfile.TemporaryDirectory(prefix="dam3d-benchgen-") as tmp:
        work = Path(tmp)
        pos = 0
        # Render in rounds: a model that fails to import or render is replaced by the next one.
        while len(chosen) < objects and pos < len(order):
            batch = order[pos : pos + (objects - len(chosen))]
            pos += len(batch)
            jobs = []
            provisional = assign_skus(seed, batch)
            for c in batch:
                if c.key in generated:
                    obj = work / "models" / PRODUCTS / f"{c.folder}.glb"
                    obj.parent.mkdir(parents=True, exist_ok=True)
                    products.write_glb(generated[c.key], obj)
                else:
                    with zipfile.ZipFile(c.catalogue) as zf:
                        obj = sh3d.extract_model(zf, c.entry, work / "models" / c.licence)
                # Views of a job are named by role; the queries' angles come from the plan below.
                q = plan_queries(seed, c, provisional[c.key], queries_per_object, Textures(None, []))
                views = [{"name": "catalogue", "azimuth": CATALOGUE_VIEW[0], "elevation": CATALOGUE_VIEW[1]}]
                views += [{"name": f"query{j}", "azimuth": s.azimuth, "elevation": s.elevation,
                           "studio_light": s.light, "light_rotation": s.light_rotation} for j, s in enumerate(q)]
                rotation = None if c.key in generated else sh3d.rotation_rows(c.entry)  # products: pipeline frame
                jobs.append({"mesh": obj, "out": work / "renders" / c.licence / c.folder, "views": views,
                             "rotation": rotation})
                models[c.key] = (obj, rotation)
            t = time.perf_counter()
            # timeout: seconds without a finished object (start-up included for the first).
            run = run_batch(jobs, resolution=resolution, engine=engine, aa=8, samples=32, timeout=300)
            log(f"bench: rendered {len(jobs)} models x {1 + queries_per_object} views in {time.perf_counter() - t:.1f} s")
            records = {Path(r["out"]): r for r in run.records}
            for c, job in zip(batch, jobs, strict=True):
                rec = records.get(Path(job["out"]))
                reason = None if rec and rec["ok"] else (rec or {}).get("error") or f"renderer exited {run.returncode}"
                if reason is None:
                    try:
                        with Image.open(Path(job["out"]) / "catalogue.png") as im:
                            _crop_to_alpha(im.convert("RGBA"))
                    except (OSError, ValueError) as exc:
                        reason = str(exc)
                if reason:
                    skipped.append({"model": c.key, "reason": reason})
                    log(f"bench: skipped {c.key}: {reason}")
                    continue
                chosen.append(c)
                renders[c.key] = Path(job["out"])
        if len(chosen) < objects:
            raise RuntimeError(f"only {len(chosen)} of {objects} objects rendered; see the skipped models above")

        # Keep the catalogue in a fixed order (by SKU) whatever the rendering rounds did.
        skus = assign_skus(seed, chosen)
        cc0 = Path(headers["cc0"]["path"]) if "cc0" in headers else _cc0_catalogue(pattern)
        textures = Textures(cc0, texture_names(cc0, {c.folder for c in chosen if c.licence == "cc0"}) if cc0 else [])
        queries: list[QuerySpec] = []
        rows = []
        product_params: dict[str, dict] = {}
        for c in sorted(chosen, key=lambda c: skus[c.key]):
            sku = skus[c.key]
            with Image.open(renders[c.key] / "catalogue.png") as im:
                write_bytes(out / "catalogue" / f"{sku}.jpg", _jpeg(studio_shot(im.convert("RGBA"), resolution), 92))
            for j, q in enumerate(plan_queries(seed, c, sku, queries_per_object, textures)):
                with Image.open(renders[c.key] / f"query{j}.png") as im:
                    photo = customer_photo(im.convert("RGBA"), q, qsize, textures)
                write_bytes(out / "queries" / f"{q.name}.jpg", _jpeg(photo, q.quality))
                queries.append(q)
            if c.key in generated:  # already in the pipeline's frame
                shutil.copyfile(models[c.key][0], out / "meshes" / f"{sku}.glb")
                product_params[sku] = generated[c.key].params
            else:
                write_true_mesh(*models[c.key], out / "meshes" / f"{sku}.glb")
            rows.append({"sku": sku, "source": headers[c.licence].get("name", c.licence), "model": c.folder,
                         "name": c.entry.get("name", ""), "category": c.entry.get("category", ""),
                         "dimensions_m": _dimensions(c, generated.get(c.key)),
                         "creator": c.entry.get("creator", "unknown"),
                         "licence": products.LICENCE if c.key in generated else sh3d.LICENCES[c.licence].title,
                         "page": c.page})

    # The query list in an order that says nothing about the SKU order either.
    queries.sort(key=lambda q: q.name)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["query", "sku"])
    writer.writerows([f"queries/{q.name}.jpg", q.sku] for q in queries)
    write_text(out / "queries.csv", buffer.getvalue())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "objects.csv", buffer.getvalue())
    # The same catalogue with each SKU's true mesh: the `provided` mesh backend's input, for the
    # upper bound of what perfect meshes give (README, Results).
    write_text(out / "catalogue_meshes.csv", "asset_id,image,mesh\n" + "".join(
        f"{r['sku']},catalogue/{r['sku']}.jpg,meshes/{r['sku']}.glb\n" for r in rows))
    used_textures = sorted({n for q in queries for n in (q.wall, q.floor) if n != "plain"})
    meta = {
        "generator": f"dam3d {__version__} bench make",
        "seed": seed,
        "objects": len(rows),
        "queries_per_object": queries_per_object,
        "resolution": resolution,
        "query_size": list(qsize),
        "sources": {k: {kk: v[kk] for kk in ("path", "name", "license", "version") if kk in v} for k, v in headers.items()},
        "renderer": f"blender/render_views.py, {engine}, aa 8" + (", 32 samples" if engine == "CYCLES" else ""),
        "catalogue_view": {"azimuth": CATALOGUE_VIEW[0], "elevation": CATALOGUE_VIEW[1], "light": "paint.sl"},
        "queries": [asdict(q) for q in queries],
        "background_textures": used_textures,
        "skipped_models": skipped,
        # Every generated product's parameters (kind, style, dimensions in metres, brand, colours, look-alike).
        "products": product_params,
    }
    write_text(out / "bench.json", json.dumps(meta, indent=1) + "\n")
    write_licence(out, headers, rows, used_textures)
    seconds = time.perf_counter() - started
    log(f"bench: {len(rows)} objects, {len(queries)} queries in {out} ({seconds:.0f} s; {len(skipped)} models skipped)")
    return {"objects": len(rows), "queries": len(queries), "skipped": skipped, "seconds": seconds}


def _cc0_catalogue(pattern: str) -> Path | None:
    """The CC0 SH3D catalogue for query backgrounds when no SH3D source is used, or None (plain walls)."""
    try:
        return sh3d.find_catalogue("cc0", pattern)
    except FileNotFoundError:
        return None


def _dimensions(c: Candidate, product: products.Product | None) -> str:
    """Width x height x depth in metres: the product's, or the SH3D entry's (given in cm)."""
    if product is not None:
        return "x".join(f"{v:g}" for v in product.params["dimensions_m"])
    try:
        return "x".join(f"{float(c.entry[k]) / 100:g}" for k in ("width", "height", "depth"))
    except (KeyError, ValueError):
        return ""


def write_true_mesh(obj: Path, rotation: list[list[float]] | None, out: Path) -> None:
    """The object's own OBJ (with its MTL colours and textures) as a GLB in the pipeline's frame.

    SH3D's `modelRotation` turns the file's axes into +Y up, front +Z, as the renderer
    applies it (blender/render_views.py `_rotate`), so the `provided` backend's az000 view
    faces the object's front like the benchmark's own renders.
    """
    import numpy as np
    import trimesh

    scene = trimesh.load(obj, force="scene")
    if rotation is not None:
        turn = np.eye(4)
        turn[:3, :3] = np.asarray(rotation, dtype=float)
        scene.apply_transform(turn)
    with atomic_path(out) as tmp:
        scene.export(tmp, file_type="glb")


def write_licence(out: Path, headers: dict[str, dict], rows: list[dict], textures: list[str]) -> None:
    lines = ["# Benchmark: sources and licences", ""]
    catalogues = {k: h for k, h in headers.items() if k != PRODUCTS}
    if catalogues:
        lines += [
            "Generated by `dam3d bench make` from 3D models of the Debian package",
            f"`{sh3d.DEBIAN_PACKAGE}` (Sweet Home 3D furniture catalogues, models converted to OBJ by",
            "Emmanuel Puybaret / eTeks from Blend Swap originals). Catalogues used:",
            "",
        ]
        for licence, h in catalogues.items():
            lines.append(f"- \"{h.get('name', licence)}\" (`{Path(h['path']).name}`, version {h.get('version', '?')}): "
                         f"declared licence \"{h.get('license', '?')}\"; {sh3d.LICENCES[licence].title}, "
                         f"{sh3d.LICENCES[licence].url}")
        lines += [
            "",
            "Each model's own Blend Swap licence file was checked by the generator; models without one, or",
            "whose file does not state the catalogue's licence, were left out.",
            "",
            "The images are renders of these models (blender/render_views.py) composited with Pillow. Images of",
            "CC0 models are released under CC0 1.0. Images of CC BY 3.0 models are adaptations of those",
            "models and are under CC BY 3.0: keep the credits below when you share them.",
            "",
        ]
    if PRODUCTS in headers:
        lines += [
            "Packaged goods and kitchenware generated by `dam3d.benchmarks.products` (shapes, labels,",
            "brands and text all procedural, made up from the seed; any likeness to a real brand is chance):",
            "the meshes, textures and their renders are released under CC0 1.0.",
            "",
        ]
    lines += [
        "Query backgrounds are tiled texture images taken from the model folders of the CC0 catalogue",
        "(models that are not objects of this benchmark), CC0 1.0, or plain procedural surfaces:",
        "",
    ]
    lines += [f"- `{t}`" for t in textures] or ["- (none: procedural backgrounds only)"]
    lines += [
        "",
        "| SKU | model | name | author | licence | source |",
        "|-----|-------|------|--------|---------|--------|",
    ]
    for r in rows:
        lines.append(f"| {r['sku']} | {r['source']}: {r['model']} | {r['name']} | {r['creator']} | {r['licence']} "
                     f"| {r['page']} |")
    write_text(out / "LICENSE.md", "\n".join(lines) + "\n")


def run(args: argparse.Namespace) -> int:
    sources = tuple(s.strip() for s in args.sources.split(",") if s.strip())
    bad = [s for s in sources if s not in SOURCES]
    if bad or not sources:
        print(f"dam3d bench make: --sources takes {', '.join(SOURCES)}, not {args.sources!r}", file=sys.stderr)
        return 2
    if args.objects < 1 or args.queries_per_object < 1 or not 64 <= args.resolution <= 2048:
        print("dam3d bench make: need --objects >= 1, --queries-per-object >= 1, 64 <= --resolution <= 2048",
              file=sys.stderr)
        return 2
    try:
        make_benchmark(args.out, objects=args.objects, queries_per_object=args.queries_per_object, seed=args.seed,
                       resolution=args.resolution, sources=sources, engine=args.engine,
                       log=lambda m: print(m, file=sys.stderr, flush=True))
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"dam3d bench make: {exc}", file=sys.stderr)
        return 1
    return 0
