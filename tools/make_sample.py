"""Render the small sample catalogue that ships in `sample/`.

The models come from the CC0 catalogue ("Blend Swap CC-0") of the Debian
package `sweethome3d-furniture`. Each chosen model is rendered twice with
Blender (bpy, Cycles on the CPU so that anyone can re-run it):

- `catalogue/<SKU>.jpg`: a studio photo, 512x512, white background with a soft
  contact shadow, three-quarter front view, object filling ~70 % of the frame;
- `queries/<name>.jpg`: for some SKUs, a "customer photo", 640x480, from
  another angle, smaller and off-centre, in a simple room (coloured floor and
  wall), as a phone snapshot would be.

Usage (about 6-11 minutes on 2 CPU cores; Cycles with a fixed seed and no
adaptive sampling gives byte-identical files on the same machine):

    .venv/bin/python tools/make_sample.py --out sample --count 16
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dam3d.benchmarks import sh3d
from dam3d.benchmarks.sh3d import CATALOGUE_GLOB, DEBIAN_PACKAGE, extract_model, read_properties


@dataclass(frozen=True)
class Item:
    """One SKU of the sample: the SH3D model (folder name in the catalogue) it is rendered from."""

    sku: str
    model: str
    yaw_deg: float = 0.0  # extra turn so the model's front faces the camera


# Chosen by looking at the catalogue's icons: furniture-shop products of
# different kinds and colours, with a few near neighbours (four chairs, two
# armchairs) so that search has to tell similar items apart. The order is the
# order `--count` takes them in. One SKU has a space, as real DAMs do.
ITEMS: tuple[Item, ...] = (
    Item("CHAIR-0001", "armchair"),  # green plastic office chair
    Item("CHAIR-0002", "plasticChair"),  # blue stacking chair
    Item("CHAIR-0003", "chair2"),  # red banquet chair
    Item("CHAIR-0004", "oakChair"),  # wooden spindle chair
    Item("ARMCHAIR-0005", "armchair2"),  # cream club armchair
    Item("SOFA-0006", "sofa2"),  # beige two-seater
    Item("LAMP 0007", "desklamp"),  # brass desk lamp
    Item("TABLE-0008", "oakTable"),  # round pedestal table
    Item("PLANT-0009", "littlePlant"),  # potted plant
    Item("FAN-0010", "tableFan"),  # blue desk fan
    Item("MIXER-0011", "kitchenaid"),  # stand mixer
    Item("LOCKER-0012", "lockedLocker"),  # blue metal locker
    Item("COFFEE-0013", "coffeeBrewer"),  # red espresso machine
    Item("CHAIR-0014", "designChair"),  # white tulip chair, blue cushion
    Item("TOY-0015", "teddyBear"),
    Item("SAFETY-0016", "fireExtinguisher"),
    Item("TOY-0017", "caballito"),  # rocking horse
    Item("PLANT-0018", "cactus"),
    Item("DECOR-0019", "orchids"),
    Item("ARMCHAIR-0020", "modernArmchair"),
)


@dataclass(frozen=True)
class Query:
    """A customer-style photo of one SKU: camera angle, framing and room colours."""

    name: str
    sku: str
    azimuth_deg: float  # 0 = straight at the model's front, positive = towards its right
    elevation_deg: float
    height_frac: float  # object's largest projected extent, as a fraction of the image height
    centre: tuple[float, float]  # where the object sits, in image fractions (0..1, y down)
    floor_rgb: tuple[float, float, float]
    wall_rgb: tuple[float, float, float]
    roll_deg: float = 0.0  # phones are rarely held level


# Angles well away from the catalogue's 25 deg front view, as the brief of the
# study asks (the 3D views are what should bridge that gap).
QUERIES: tuple[Query, ...] = (
    Query("IMG_2041", "CHAIR-0002", 120, 25, 0.50, (0.62, 0.55), (0.55, 0.38, 0.22), (0.86, 0.82, 0.72), 3.0),
    Query("IMG_2057", "LAMP 0007", 100, 28, 0.48, (0.36, 0.52), (0.30, 0.30, 0.33), (0.62, 0.74, 0.80), -2.0),
    Query("IMG_2063", "ARMCHAIR-0005", 140, 22, 0.45, (0.60, 0.58), (0.62, 0.58, 0.50), (0.45, 0.55, 0.45), 0.0),
    Query("IMG_2078", "FAN-0010", 95, 25, 0.50, (0.38, 0.50), (0.70, 0.66, 0.60), (0.85, 0.70, 0.62), 4.0),
    Query("IMG_2102", "SOFA-0006", 130, 25, 0.40, (0.56, 0.60), (0.42, 0.28, 0.18), (0.75, 0.78, 0.82), -3.0),
    Query("IMG_2110", "COFFEE-0013", 110, 30, 0.48, (0.42, 0.56), (0.50, 0.50, 0.52), (0.93, 0.90, 0.80), 2.0),
)

CATALOGUE_SIZE = (512, 512)
QUERY_SIZE = (640, 480)
CATALOGUE_VIEW = (25.0, 15.0)  # azimuth, elevation in degrees
CATALOGUE_FILL = 0.70
CATALOGUE_BACKGROUND = (255, 255, 255)
JPEG_QUALITY = 90
LENS_MM = 50.0
SENSOR_MM = 36.0


# ---------------------------------------------------------------- the SH3D catalogue
# Reading the catalogue and checking licences lives in the package (dam3d.benchmarks.sh3d),
# shared with the benchmark generator `dam3d bench make`.


def model_licence(folder: Path) -> tuple[str, str]:
    """(licence, Blend Swap page) of one model folder; stops if its own licence file is not CC0."""
    try:
        return sh3d.model_licence(folder, "cc0")
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def find_cc0_catalogue(pattern: str = CATALOGUE_GLOB) -> Path:
    try:
        return sh3d.find_cc0_catalogue(pattern)
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from None


# ---------------------------------------------------------------- Blender scene


def _reset_scene(samples: int, size: tuple[int, int], seed: int):
    """An empty scene set up for a small, deterministic Cycles CPU render."""
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_adaptive_sampling = False  # fixed work per pixel: same noise every run
    scene.cycles.seed = seed
    scene.cycles.use_denoising = True
    scene.cycles.max_bounces = 6
    scene.cycles.transparent_max_bounces = 8
    scene.render.resolution_x, scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    # Standard keeps the models' catalogue colours (AgX desaturates them noticeably).
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    return scene


def _import_model(obj_path: Path, rotation: str | None, yaw_deg: float) -> list:
    """Import the OBJ, stand it on the origin with height-independent unit size; return its meshes."""
    import bpy
    from mathutils import Matrix

    with _quiet_stdout():
        bpy.ops.wm.obj_import(filepath=str(obj_path), forward_axis="NEGATIVE_Z", up_axis="Y")
    meshes = [o for o in bpy.context.scene.objects if o.type == "MESH"]
    if not meshes:
        raise SystemExit(f"{obj_path}: no mesh imported")
    transform = Matrix.Rotation(math.radians(yaw_deg), 4, "Z")
    if rotation:
        # SH3D's modelRotation is a row-major 3x3 in OBJ axes (Y up); map it to Blender's (Z up).
        r = Matrix([[float(v) for v in rotation.split()[i * 3 : i * 3 + 3]] for i in range(3)])
        axes = Matrix(((1, 0, 0), (0, 0, -1), (0, 1, 0)))  # OBJ (x, y, z) -> Blender (x, -z, y)
        transform = transform @ (axes @ r @ axes.inverted()).to_4x4()
    for obj in meshes:
        obj.matrix_world = transform @ obj.matrix_world
    bpy.context.view_layer.update()
    points = _world_vertices(meshes)
    lo, hi = points.min(axis=0), points.max(axis=0)
    scale = 1.0 / float((hi - lo).max())
    centre = (lo + hi) / 2
    move = Matrix.Translation((-centre[0] * scale, -centre[1] * scale, -lo[2] * scale)) @ Matrix.Scale(scale, 4)
    for obj in meshes:
        obj.matrix_world = move @ obj.matrix_world
    bpy.context.view_layer.update()
    _fix_material_colours(meshes)
    return meshes


def _srgb_to_linear(c: float) -> float:
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def _fix_material_colours(meshes) -> None:
    """Read MTL colours as sRGB, as Sweet Home 3D (and the catalogue's icons) do.

    Blender's OBJ importer takes Kd as linear, which washes out every plain
    coloured material (Kd 0.53 0.76 0.29 turns pastel). Textured colours
    (a linked Base Color) are already right.
    """
    seen = set()
    for obj in meshes:
        for slot in obj.material_slots:
            mat = slot.material
            if mat is None or mat.name in seen or mat.node_tree is None:
                continue
            seen.add(mat.name)
            for node in mat.node_tree.nodes:
                if node.type == "BSDF_PRINCIPLED":
                    base = node.inputs["Base Color"]
                    if not base.is_linked:
                        r, g, b, a = base.default_value
                        base.default_value = (_srgb_to_linear(r), _srgb_to_linear(g), _srgb_to_linear(b), a)


def _world_vertices(meshes) -> np.ndarray:
    """All vertices of the meshes in world coordinates, as an (n, 3) array."""
    chunks = []
    for obj in meshes:
        n = len(obj.data.vertices)
        local = np.empty(n * 3, dtype=np.float64)
        obj.data.vertices.foreach_get("co", local)
        local = local.reshape(n, 3)
        m = np.array(obj.matrix_world)
        chunks.append(local @ m[:3, :3].T + m[:3, 3])
    return np.concatenate(chunks)


def _place_camera(
    points: np.ndarray,
    azimuth_deg: float,
    elevation_deg: float,
    size: tuple[int, int],
    fill: float,
    centre: tuple[float, float],
    roll_deg: float = 0.0,
):
    """Add a camera looking at the object from (azimuth, elevation), framed by distance and lens shift.

    `fill` is the object's larger projected extent as a fraction of the image's
    smaller side; `centre` is where the object's projected box centre lands.
    """
    import bpy
    from mathutils import Quaternion, Vector

    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    # The model's front faces -Y (OBJ +Z, SH3D's front); azimuth turns towards +X.
    direction = np.array([math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)])
    target = (points.min(axis=0) + points.max(axis=0)) / 2
    forward = -direction
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    focal = LENS_MM / SENSOR_MM  # image-plane units where the larger image side spans 1
    width, height = size
    short_side = min(width, height) / max(width, height)

    def project(distance: float) -> tuple[np.ndarray, np.ndarray]:
        rel = points - (target + direction * distance)
        depth = rel @ forward
        return focal * (rel @ right) / depth, focal * (rel @ up) / depth

    # Extent shrinks monotonically with distance: bisect for the wanted fill.
    lo, hi = 0.6, 50.0
    for _ in range(60):
        mid = (lo + hi) / 2
        u, v = project(mid)
        extent = max(u.max() - u.min(), v.max() - v.min())
        if extent > fill * short_side:
            lo = mid
        else:
            hi = mid
    distance = hi
    u, v = project(distance)
    cu, cv = (u.max() + u.min()) / 2, (v.max() + v.min()) / 2
    want_u = (centre[0] - 0.5) * width / max(width, height)
    want_v = (0.5 - centre[1]) * height / max(width, height)

    cam_data = bpy.data.cameras.new("camera")
    cam_data.lens = LENS_MM
    cam_data.sensor_width = SENSOR_MM
    cam_data.sensor_fit = "AUTO"
    # Lens shift is in units of the larger image side, like our u/v.
    cam_data.shift_x = cu - want_u
    cam_data.shift_y = cv - want_v
    cam_data.clip_start = 0.01
    cam_data.clip_end = 200.0
    camera = bpy.data.objects.new("camera", cam_data)
    bpy.context.scene.collection.objects.link(camera)
    camera.location = Vector(target + direction * distance)
    # Roll about the viewing axis after framing: the object moves a little, as with a real tilted phone.
    look = Vector(forward).to_track_quat("-Z", "Y")
    camera.rotation_euler = (look @ Quaternion((0.0, 0.0, 1.0), math.radians(roll_deg))).to_euler()
    bpy.context.scene.camera = camera
    return camera


def _area_light(name: str, location, energy: float, size: float, colour=(1.0, 1.0, 1.0)):
    """A soft area light aimed at the object's middle."""
    import bpy
    from mathutils import Vector

    data = bpy.data.lights.new(name, "AREA")
    data.energy = energy
    data.size = size
    data.color = colour
    light = bpy.data.objects.new(name, data)
    bpy.context.scene.collection.objects.link(light)
    light.location = location
    light.rotation_euler = (Vector((0, 0, 0.4)) - Vector(location)).to_track_quat("-Z", "Y").to_euler()
    return light


def _world(colour, strength: float) -> None:
    import bpy

    world = bpy.data.worlds.new("world")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # use_nodes is still needed in bpy 5.0
        world.use_nodes = True
    background = world.node_tree.nodes["Background"]
    background.inputs["Color"].default_value = (*colour, 1.0)
    background.inputs["Strength"].default_value = strength
    bpy.context.scene.world = world


def _plane(name: str, size: float, location, rotation, material):
    import bpy

    mesh = bpy.data.meshes.new(name)
    h = size / 2
    mesh.from_pydata([(-h, -h, 0), (h, -h, 0), (h, h, 0), (-h, h, 0)], [], [(0, 1, 2, 3)])
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    obj.location = location
    obj.rotation_euler = rotation
    if material is not None:
        obj.data.materials.append(material)
    return obj


def _surface(name: str, rgb, roughness: float, noise_scale: float, noise_amount: float):
    """A matte material with a little low-frequency mottling, so floors and walls are not flat CG colour."""
    import bpy

    mat = bpy.data.materials.new(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # use_nodes is still needed in bpy 5.0
        mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = nodes["Principled BSDF"]
    bsdf.inputs["Roughness"].default_value = roughness
    noise = nodes.new("ShaderNodeTexNoise")
    noise.inputs["Scale"].default_value = noise_scale
    noise.inputs["Detail"].default_value = 4.0
    ramp = nodes.new("ShaderNodeValToRGB")
    dark = tuple(max(0.0, c * (1 - noise_amount)) for c in rgb)
    light = tuple(min(1.0, c * (1 + noise_amount)) for c in rgb)
    ramp.color_ramp.elements[0].color = (*dark, 1.0)
    ramp.color_ramp.elements[1].color = (*light, 1.0)
    links.new(noise.outputs["Fac"], ramp.inputs["Fac"])
    links.new(ramp.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


@contextlib.contextmanager
def _quiet_stdout():
    """Silence Blender's per-tile progress lines (C-level stdout, so redirect the file descriptor)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def _render(path: Path) -> Image.Image:
    import bpy

    bpy.context.scene.render.filepath = str(path)
    with _quiet_stdout():
        bpy.ops.render.render(write_still=True)
    with Image.open(path) as im:
        return im.convert("RGBA")


def render_catalogue_photo(obj_path: Path, entry: dict[str, str], item: Item, work: Path, samples: int) -> Image.Image:
    """Studio shot: white sweep, key/fill/rim lights, soft contact shadow."""
    scene = _reset_scene(samples, CATALOGUE_SIZE, seed=1)
    meshes = _import_model(obj_path, entry.get("modelRotation"), item.yaw_deg)
    points = _world_vertices(meshes)
    _place_camera(points, *CATALOGUE_VIEW, CATALOGUE_SIZE, CATALOGUE_FILL, (0.5, 0.5))
    _world((1.0, 1.0, 1.0), 0.35)
    _area_light("key", (-1.4, -2.0, 2.8), 120.0, 3.0)
    _area_light("fill", (2.4, -1.6, 1.4), 35.0, 3.0)
    _area_light("rim", (0.8, 2.2, 2.0), 50.0, 2.0)
    # The shadow catcher gives a soft floor shadow on a transparent film, laid on white below.
    floor = _plane("floor", 20.0, (0, 0, 0), (0, 0, 0), None)
    floor.is_shadow_catcher = True
    scene.render.film_transparent = True
    rgba = _render(work / f"{item.model}_catalogue.png")
    background = Image.new("RGBA", rgba.size, (*CATALOGUE_BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def render_query_photo(
    obj_path: Path, entry: dict[str, str], item: Item, query: Query, work: Path, samples: int
) -> Image.Image:
    """Customer snapshot: another angle, smaller, off-centre, on a coloured floor against a wall."""
    scene = _reset_scene(samples, QUERY_SIZE, seed=2)
    meshes = _import_model(obj_path, entry.get("modelRotation"), item.yaw_deg)
    points = _world_vertices(meshes)
    camera = _place_camera(
        points, query.azimuth_deg, query.elevation_deg, QUERY_SIZE, query.height_frac, query.centre, query.roll_deg
    )
    # Room: floor under the object, a wall behind it as seen from the camera.
    _plane("floor", 30.0, (0, 0, 0), (0, 0, 0), _surface("floor", query.floor_rgb, 0.6, 3.0, 0.25))
    az = math.radians(query.azimuth_deg)
    back = (-math.sin(az) * 1.6, math.cos(az) * 1.6, 0.0)
    _plane("wall", 30.0, back, (math.pi / 2, 0, az), _surface("wall", query.wall_rgb, 0.9, 1.5, 0.08))
    # Indoor light: a warm window-ish key from the camera's side and a dim sky.
    _world((0.9, 0.92, 1.0), 0.15)
    cam = np.array(camera.location)
    side = np.cross([0.0, 0.0, 1.0], cam / np.linalg.norm(cam))
    key = cam * 0.6 + side * 1.6 + np.array([0.0, 0.0, 1.8])
    _area_light("window", tuple(key), 150.0, 3.0, (1.0, 0.93, 0.85))
    _area_light("ceiling", (0.0, 0.0, 3.0), 50.0, 3.0)
    scene.render.film_transparent = False
    return _render(work / f"{query.name}.png").convert("RGB")


# ---------------------------------------------------------------- outputs


def _save_jpeg(image: Image.Image, path: Path) -> None:
    """JPEG without EXIF/timestamps, so reruns give the same bytes when the render does."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True, subsampling=0)
    path.write_bytes(buffer.getvalue())


def write_licence(out: Path, catalogue: Path, header: dict[str, str], rows: list[dict[str, str]]) -> None:
    """sample/LICENSE.md: where each model comes from, its author and licence."""
    lines = [
        "# Sample catalogue: sources and licence",
        "",
        "The images in `catalogue/` and `queries/` were rendered with Blender (bpy, Cycles on the CPU)",
        "by `tools/make_sample.py` from 3D models of the catalogue",
        f"\"{header.get('name', catalogue.stem)}\" (`{catalogue.name}`, version {header.get('version', '?')})",
        f"in the Debian package `{DEBIAN_PACKAGE}`. That catalogue declares its licence as",
        f"\"{header.get('license', '?')}\"; the Debian copyright file lists it as CC0, and each model's own",
        "Blend Swap licence file, checked by the script, says Creative Commons Zero (CC0 1.0).",
        "The models were made by the Blend Swap authors below and converted to OBJ by",
        "Emmanuel Puybaret (eTeks) for Sweet Home 3D. CC0 asks for no attribution; we give it anyway.",
        "",
        "The rendered images are released under the same terms: CC0 1.0",
        "(https://creativecommons.org/publicdomain/zero/1.0/).",
        "",
        "| SKU | file | model (SH3D id) | name | author | licence | source |",
        "|-----|------|-----------------|------|--------|---------|--------|",
    ]
    for row in rows:
        lines.append(
            f"| {row['sku']} | `catalogue/{row['sku']}.jpg` | {row['id']} | {row['name']} | {row['creator']} "
            f"| {row['licence']} | {row['page']} |"
        )
    lines += [
        "",
        "Queries (`queries.csv`) are renders of the same models from other angles, in a simple room;",
        "they are the \"customer photos\" the search should map back to their SKU.",
        "",
    ]
    (out / "LICENSE.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("sample"))
    parser.add_argument("--count", type=int, default=16, help=f"number of SKUs (at most {len(ITEMS)})")
    parser.add_argument(
        "--catalogue", type=Path, help="the CC0 .sh3f zip (default: found under /usr/share/sweethome3d)"
    )
    parser.add_argument("--samples", type=int, default=48, help="Cycles samples per pixel (denoised)")
    args = parser.parse_args(argv)
    if not 1 <= args.count <= len(ITEMS):
        parser.error(f"--count must be between 1 and {len(ITEMS)}")

    started = time.monotonic()
    catalogue = args.catalogue or find_cc0_catalogue()
    items = ITEMS[: args.count]
    skus = {item.sku for item in items}
    queries = [q for q in QUERIES if q.sku in skus]

    out: Path = args.out
    for sub in ("catalogue", "queries"):
        # Start clean so SKUs dropped from the list do not linger.
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True)

    rows = []
    with zipfile.ZipFile(catalogue) as zf, tempfile.TemporaryDirectory(prefix="make_sample-") as tmp:
        header, models = read_properties(zf)
        work = Path(tmp)
        for item in items:
            entry = models.get(item.model)
            if entry is None:
                raise SystemExit(f"model {item.model!r} is not in {catalogue}")
            obj_path = extract_model(zf, entry, work / "models")
            licence, page = model_licence(obj_path.parent)
            t0 = time.monotonic()
            photo = render_catalogue_photo(obj_path, entry, item, work, args.samples)
            _save_jpeg(photo, out / "catalogue" / f"{item.sku}.jpg")
            for query in (q for q in queries if q.sku == item.sku):
                photo = render_query_photo(obj_path, entry, item, query, work, args.samples)
                _save_jpeg(photo, out / "queries" / f"{query.name}.jpg")
            print(f"{item.sku:<14} {item.model:<20} {time.monotonic() - t0:5.1f}s", flush=True)
            rows.append(
                {
                    "sku": item.sku,
                    "id": entry.get("id", item.model),
                    "name": entry.get("name", ""),
                    "creator": entry.get("creator", "unknown"),
                    "licence": licence,
                    "page": page,
                }
            )

    with (out / "queries.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["query", "sku"])
        for query in queries:
            writer.writerow([f"queries/{query.name}.jpg", query.sku])
    write_licence(out, catalogue, header, rows)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    elapsed = time.monotonic() - started
    print(f"{len(items)} SKUs, {len(queries)} queries, {total / 1e6:.2f} MB in {out}, {elapsed:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
