"""Mesh stage: RGBA cutout -> GLB in the canonical frame (+Y up, front faces +Z, centred, largest extent 1).

Backends (registered in dam3d.runtime.backends): `prior` (CPU, a cuboid or a solid of revolution fitted
to the silhouette where one fits, else inflation; dam3d.stages.shapes), `inflate` (CPU, silhouette
inflation), `trellis` (TRELLIS image-to-3D on a CUDA GPU) and `provided` (a mesh the DAM already has).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import trimesh
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from dam3d.runtime.atomic import atomic_path
from dam3d.runtime.backends import Backend, hub_available, register
from dam3d.runtime.backends import backend as get_backend
from dam3d.errors import AssetError
from dam3d.stages.shapes import PRIOR_DEFAULTS, SHAPE_KEY, Painter, hidden_painter, prior_mesh

STAGE = "mesh"

INFLATE_DEFAULTS: dict[str, Any] = {
    "resolution": 96,       # grid cells along the longer side of the silhouette
    "depth": 0.35,          # thickest front-to-back depth, relative to the silhouette width
                            # (capped at the widest inscribed circle: a horizontal belt stays round, not a fin)
    "back_ratio": 1.0,      # back surface height relative to the front
    "alpha_threshold": 127,
    "back_shade": 0.85,     # the back is a little darker than the front
    "hidden": "blur",       # the back: the front's colours blurred (blur), its print (mirror), one colour (plain)
    "smooth": 2.0,          # gaussian sigma (cells) on the distance field: rounds the medial-axis ridge
    "hole_fill": 0.01,      # holes under this fraction of the object's area are matting noise and get
                            # filled; larger ones (a bag handle's opening) stay open as real holes
}

TRELLIS_DEFAULTS: dict[str, Any] = {
    "model": "microsoft/TRELLIS-image-large",
    "seed": 1,
    "ss_steps": 12,
    "ss_cfg": 7.5,
    "slat_steps": 12,
    "slat_cfg": 3.0,
    "simplify": 0.95,
    "texture_size": 1024,
}

MAX_EXTENT = 1e6
MIN_FOREGROUND_PIXELS = 16

TRELLIS_INSTALL_HINT = (
    "install TRELLIS in a CUDA environment (conda env create -f envs/trellis.yaml, then clone "
    "github.com/microsoft/TRELLIS and run its setup.sh; steps in docs/trellis.md), "
    "or use the CPU mesh backend 'inflate'"
)


class BackendUnavailable(RuntimeError):
    """A backend's software or model is missing on this machine (not the asset's fault)."""


# ---------------------------------------------------------------------------
# Canonical frame and validation


def _as_mesh(obj: Any) -> trimesh.Trimesh:
    """A Trimesh from a Trimesh or a Scene (all triangle geometry, node transforms applied)."""
    if isinstance(obj, trimesh.Trimesh):
        return obj
    if isinstance(obj, trimesh.Scene):
        meshes = []
        # dump() applies each node's transform; keep only triangle meshes (a scene may hold points or paths)
        for geom in obj.dump():
            if isinstance(geom, trimesh.Trimesh) and len(geom.faces) > 0:
                meshes.append(geom)
        if not meshes:
            return trimesh.Trimesh()
        if len(meshes) == 1:
            return meshes[0]
        if len({m.visual.kind for m in meshes}) > 1:
            # concatenating mixed kinds (texture + colours) drops all colour: bring every part to vertex colours
            for m in meshes:
                if m.visual.kind == "texture":
                    m.visual = m.visual.to_color()
                m.visual.vertex_colors = np.asarray(m.visual.vertex_colors)
        return trimesh.util.concatenate(meshes)
    raise TypeError(f"expected a trimesh.Trimesh or trimesh.Scene, got {type(obj).__name__}")


def normalise(mesh: trimesh.Trimesh | trimesh.Scene) -> trimesh.Trimesh:
    """Centre the bounding box at the origin and scale the largest extent to 1 (in place for a Trimesh)."""
    mesh = _as_mesh(mesh)
    lo, hi = mesh.bounds
    size = float(np.max(hi - lo))
    if not np.isfinite(size) or size <= 0:
        raise ValueError(f"cannot normalise a mesh of size {size}")
    mesh.apply_translation(-(lo + hi) / 2.0)
    mesh.apply_scale(1.0 / size)
    return mesh


def _has_colour(mesh: trimesh.Trimesh) -> bool:
    visual = mesh.visual
    if visual is None:
        return False
    if visual.kind in ("vertex", "face"):
        return True
    if visual.kind == "texture":
        material = getattr(visual, "material", None)
        image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
        if image is not None and getattr(visual, "uv", None) is not None:
            return True
        # An untextured material is a colour, white included: a white product is a product.
        # (A file with no material at all loads with no visual kind and is refused above.)
        factor = getattr(material, "baseColorFactor", None)
        if factor is None:
            factor = getattr(material, "diffuse", None)
        if factor is not None:
            return True
    return False


def validate_mesh(asset: str, mesh: trimesh.Trimesh | trimesh.Scene) -> trimesh.Trimesh:
    """Return the mesh (a Scene is concatenated) or raise AssetError saying what is wrong with it."""
    try:
        mesh = _as_mesh(mesh)
    except TypeError as exc:
        raise AssetError(asset, STAGE, str(exc)) from None
    if len(mesh.faces) == 0 or len(mesh.vertices) == 0:
        raise AssetError(asset, STAGE, "mesh is empty: no faces")
    vertices = np.asarray(mesh.vertices)
    if not np.all(np.isfinite(vertices)):
        bad = int(np.sum(~np.all(np.isfinite(vertices), axis=1)))
        raise AssetError(asset, STAGE, f"mesh has non-finite vertices (NaN or inf): {bad} of {len(vertices)}")
    extents = vertices.max(axis=0) - vertices.min(axis=0)
    if float(extents.max()) <= 0:
        raise AssetError(asset, STAGE, "mesh is degenerate: zero size")
    if float(extents.max()) > MAX_EXTENT:
        raise AssetError(asset, STAGE, f"mesh is unbounded: extent {float(extents.max()):.3g} > {MAX_EXTENT:g}")
    if not _has_colour(mesh):
        raise AssetError(asset, STAGE, "mesh has no colour: neither a texture nor vertex or face colours")
    return mesh


# ---------------------------------------------------------------------------
# inflate: single-view reconstruction by silhouette inflation


def _largest_component(mask: np.ndarray, diagonal: bool = False) -> np.ndarray:
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)) if diagonal else None)
    if n <= 1:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def _fill_small_holes(mask: np.ndarray, fraction: float) -> np.ndarray:
    """Fill the holes whose area is at most `fraction` of the object's (fraction >= 1: all of them)."""
    holes = ndimage.binary_fill_holes(mask) & ~mask
    if not holes.any():
        return mask
    labels, n = ndimage.label(holes)
    sizes = ndimage.sum_labels(holes, labels, index=np.arange(1, n + 1))
    small = np.flatnonzero(sizes <= fraction * mask.sum()) + 1
    return mask | np.isin(labels, small)


def _clean_cells(mask: np.ndarray, hole_fill: float) -> np.ndarray:
    """Largest 4-connected component, small holes filled, no diagonal-only contacts.

    A corner shared by two cells that touch only diagonally would give that
    corner four rim edges: the stitched surface would not be a manifold.
    """
    mask = mask.copy()
    while True:
        a, b = mask[:-1, :-1], mask[:-1, 1:]
        c, d = mask[1:, :-1], mask[1:, 1:]
        diag = a & d & ~b & ~c      # [[1,0],[0,1]]: fill the top-right cell
        anti = b & c & ~a & ~d      # [[0,1],[1,0]]: fill the top-left cell
        if not (diag.any() or anti.any()):
            return _fill_small_holes(_largest_component(mask), hole_fill)
        mask[:-1, 1:] |= diag
        mask[:-1, :-1] |= anti


def _foreground(rgba: np.ndarray, asset: str, threshold: int, hole_fill: float) -> np.ndarray:
    mask = rgba[..., 3] > threshold
    count = int(mask.sum())
    if count == 0:
        raise AssetError(asset, STAGE, "cutout is empty: no foreground pixels")
    if count < MIN_FOREGROUND_PIXELS:
        raise AssetError(asset, STAGE, f"cutout is nearly empty: only {count} foreground pixels")
    # 8-connected: a thin diagonal strap in the photo still belongs to the object
    mask = _fill_small_holes(_largest_component(mask, diagonal=True), hole_fill)
    if int(mask.sum()) < MIN_FOREGROUND_PIXELS:
        raise AssetError(asset, STAGE, f"cutout is nearly empty: its largest object has {int(mask.sum())} pixels")
    return mask


def inflate(image: Image.Image, asset: str, params: dict) -> trimesh.Trimesh:
    """Inflate the cutout's silhouette into a closed, vertex-coloured 'pillow' (front +Z, back -Z)."""
    p = {**INFLATE_DEFAULTS, **(params or {})}
    rgba = np.asarray(image.convert("RGBA"))
    mask = _foreground(rgba, asset, int(p["alpha_threshold"]), float(p["hole_fill"]))

    # Crop to the object and choose a square cell size; never finer than one pixel.
    rows, cols = np.nonzero(mask)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    cell = max(max(y1 - y0, x1 - x0) / max(int(p["resolution"]), 2), 1.0)
    n_rows, n_cols = int(np.ceil((y1 - y0) / cell)), int(np.ceil((x1 - x0) / cell))

    # Cell occupancy: area coverage of the silhouette over each cell, >= half.
    crop = np.zeros((int(np.ceil(n_rows * cell)), int(np.ceil(n_cols * cell))), dtype=np.uint8)
    crop[: y1 - y0, : x1 - x0] = mask[y0:y1, x0:x1] * 255
    box = (0, 0, n_cols * cell, n_rows * cell)
    cover = np.asarray(Image.fromarray(crop).resize((n_cols, n_rows), Image.Resampling.BOX, box=box))
    cells = _clean_cells(cover >= 128, float(p["hole_fill"]))
    if cells.sum() == 0:
        raise AssetError(asset, STAGE, "cutout is nearly empty: nothing left at the mesh resolution")

    # Corners used by some occupied cell; "interior" corners have all four cells occupied.
    padded = np.pad(cells, 1)
    around = padded[:-1, :-1].astype(int) + padded[:-1, 1:] + padded[1:, :-1] + padded[1:, 1:]
    used, interior = around > 0, around == 4

    # Height: circular (sqrt) profile of the distance to the rim, so a disc becomes a dome.
    # The rim sits half a cell out, which gives the silhouette edge a small but real thickness.
    dist = ndimage.distance_transform_edt(interior)
    inscribed = max(2.0 * float(dist.max()), 1.0)   # diameter of the widest circle inside the silhouette
    sigma = float(p["smooth"])
    if sigma > 0:
        weight = ndimage.gaussian_filter(used.astype(float), sigma)
        dist = ndimage.gaussian_filter(dist, sigma) / np.maximum(weight, 1e-9)
    dist = np.where(used, dist + 0.5, 0.0)
    dmax = float(dist.max())
    profile = np.sqrt(np.clip(dist * (2 * dmax - dist), 0, None)) / dmax
    back_ratio = float(p["back_ratio"])
    thickness = min(float(p["depth"]) * n_cols, inscribed)   # front-to-back, at the thickest point
    front_height = thickness / (1.0 + back_ratio)
    height = front_height * profile

    # Vertices: front sheet then back sheet, one vertex per used corner each. Image x -> +X, image up -> +Y.
    ci, cj = np.nonzero(used)
    n = len(ci)
    index = np.full(used.shape, -1, dtype=np.int64)
    index[ci, cj] = np.arange(n)
    h = height[ci, cj]
    front = np.column_stack([cj, -ci, h]).astype(np.float64)
    back = np.column_stack([cj, -ci, -h * back_ratio]).astype(np.float64)
    vertices = np.vstack([front, back])

    # Colours: the mean colour of a cell-sized patch around each corner. Transparent pixels
    # first take their nearest foreground colour so the rim does not pick up the background.
    # not `mask`: filled pinholes have no colour of their own; the rim keeps its own pixels (edge 0)
    paint = Painter(rgba, int(p["alpha_threshold"]), max(int(round(cell)), 1), edge=0)
    corners = np.column_stack([x0 + cj * cell, y0 + ci * cell])
    colour = paint(corners)
    # The back was never seen: painted as `hidden` says (dam3d.stages.shapes.HIDDEN), a little darker.
    paint_back = hidden_painter(rgba, p, paint)
    back_colour = (colour if paint_back is paint else paint_back(corners)) * float(p["back_shade"])
    rgb8 = np.clip(np.rint(np.vstack([colour, back_colour])), 0, 255).astype(np.uint8)
    vertex_colors = np.column_stack([rgb8, np.full(2 * n, 255, dtype=np.uint8)])

    # Faces. A cell's corners a(top-left) b(top-right) c(bottom-right) d(bottom-left) run
    # d->c->b->a counter-clockwise seen from +Z; the back sheet is wound the other way.
    r, c = np.nonzero(cells)
    a, b = index[r, c], index[r, c + 1]
    cc, d = index[r + 1, c + 1], index[r + 1, c]
    front_faces = np.concatenate([np.column_stack([d, cc, b]), np.column_stack([d, b, a])])
    back_faces = front_faces[:, ::-1] + n

    # Rim walls: every cell side facing an empty cell joins the two sheets. Each side is
    # listed in the front loop's direction u->v; the wall runs it backwards so edges pair up.
    sides = [
        (padded[r + 2, c + 1], d, cc),   # bottom neighbour empty: edge d->c
        (padded[r + 1, c + 2], cc, b),   # right: c->b
        (padded[r, c + 1], b, a),        # top: b->a
        (padded[r + 1, c], a, d),        # left: a->d
    ]
    walls = []
    for neighbour, u, v in sides:
        u, v = u[~neighbour], v[~neighbour]
        walls.append(np.column_stack([v, u, u + n]))
        walls.append(np.column_stack([v, u + n, v + n]))
    faces = np.vstack([front_faces, back_faces, *walls])

    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=vertex_colors, process=False)
    return normalise(mesh)


# ---------------------------------------------------------------------------
# trellis: TRELLIS image-to-3D (GPU)

_PIPELINES: dict[str, Any] = {}


def trellis_available(model: str) -> bool:
    """True if `trellis` is importable and the model is a local folder or already in the HF cache.

    For users checking an offline node (docs/trellis.md); never imports trellis or touches the network.
    """
    try:
        if importlib.util.find_spec("trellis") is None:
            return False
    except (ImportError, ValueError):
        return False
    return hub_available(model, "pipeline.json")


def _trellis_pipeline(model: str) -> Any:
    """Load the TRELLIS pipeline once per process and model (a batch of assets shares it)."""
    if model in _PIPELINES:
        return _PIPELINES[model]
    try:
        from trellis.pipelines import TrellisImageTo3DPipeline
    except ImportError as exc:
        raise BackendUnavailable(f"mesh backend 'trellis' is not installed ({exc}): {TRELLIS_INSTALL_HINT}") from exc
    pipeline = TrellisImageTo3DPipeline.from_pretrained(model)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        pipeline.cuda()   # Pipeline.cuda() moves every sub-model; it returns None
    _PIPELINES[model] = pipeline
    return pipeline


def trellis(image: Image.Image, asset: str, params: dict) -> trimesh.Trimesh:
    """TRELLIS image-to-3D, baked to a textured mesh by `postprocessing_utils.to_glb`.

    to_glb already rotates TRELLIS's Z-up frame to glTF Y-up; its front is the
    model's learned canonical front (Objaverse convention, -Y in Z-up, which is
    +Z here), which usually but not always matches the photographed side.
    """
    p = {**TRELLIS_DEFAULTS, **(params or {})}
    pipeline = _trellis_pipeline(str(p["model"]))
    from trellis.utils import postprocessing_utils   # heavy (nvdiffrast, xatlas...): only when used

    outputs = pipeline.run(
        image,
        seed=int(p["seed"]),
        sparse_structure_sampler_params={"steps": int(p["ss_steps"]), "cfg_strength": float(p["ss_cfg"])},
        slat_sampler_params={"steps": int(p["slat_steps"]), "cfg_strength": float(p["slat_cfg"])},
    )
    if not outputs.get("gaussian") or not outputs.get("mesh"):
        raise AssetError(asset, STAGE, "TRELLIS returned no gaussian or mesh output")
    glb = postprocessing_utils.to_glb(
        outputs["gaussian"][0],
        outputs["mesh"][0],
        simplify=float(p["simplify"]),
        texture_size=int(p["texture_size"]),
    )
    return normalise(validate_mesh(asset, glb))


class MeshBackend(Backend):
    """A mesh backend: `build` turns one asset's cutout (or the DAM's own mesh) into a mesh.

    `build`'s `params` are what `key` takes from the `mesh` config (the rule hands over exactly that).
    """

    stage, env = "mesh", "blender"
    # True for a backend that reads the DAM's own mesh file (catalogue `mesh` column or same-stem file).
    reads_dam_mesh: ClassVar[bool] = False

    def key(self, settings: dict[str, Any]) -> Any:
        # Only the active backend's settings: tuning another one reruns nothing.
        return settings.get(self.name, {})

    def load(self, settings: dict[str, Any], device: str) -> Any:
        return None  # nothing to load

    def build(self, asset: str, cutout: Path, params: dict, provided: Path | None) -> trimesh.Trimesh:
        raise NotImplementedError


@register
class InflateMesh(MeshBackend):
    """Silhouette inflation of the cutout (CPU, watertight, vertex-coloured): the offline default."""

    name = "inflate"

    def build(self, asset: str, cutout: Path, params: dict, provided: Path | None) -> trimesh.Trimesh:
        return inflate(_load_cutout(asset, cutout), asset, params)


@register
class PriorMesh(MeshBackend):
    """A shape prior fitted to the silhouette (cuboid, solid of revolution), else inflation (CPU, offline).

    Its settings are `mesh.prior` and, for the assets no prior fits, `mesh.inflate`. The
    choice is recorded in the mesh's metadata (the GLB's mesh extras: dam3d.stages.shapes.shape_record).
    """

    name = "prior"

    def key(self, settings: dict[str, Any]) -> Any:
        return {"prior": settings.get("prior", {}), "inflate": settings.get("inflate", {})}

    def build(self, asset: str, cutout: Path, params: dict, provided: Path | None) -> trimesh.Trimesh:
        image = _load_cutout(asset, cutout)
        p = {**PRIOR_DEFAULTS, **params.get("prior", {})}
        rgba = np.asarray(image)
        inflate_params = {**INFLATE_DEFAULTS, **params.get("inflate", {})}
        mask = _foreground(rgba, asset, int(p["alpha_threshold"]), float(inflate_params["hole_fill"]))
        mesh, fit = prior_mesh(rgba, mask, p)
        if mesh is None:
            mesh = inflate(image, asset, params.get("inflate", {}))
        mesh.metadata[SHAPE_KEY] = fit.record()
        print(f"dam3d: {asset}: mesh {fit.shape} (silhouette IoU {fit.iou:.3f})", file=sys.stderr, flush=True)
        return mesh


@register
class TrellisMesh(MeshBackend):
    """TRELLIS image-to-3D on a CUDA GPU (docs/trellis.md)."""

    name, gpu, env, torch = "trellis", True, "trellis", True

    def load(self, settings: dict[str, Any], device: str) -> Any:
        return _trellis_pipeline(str({**TRELLIS_DEFAULTS, **settings.get(self.name, {})}["model"]))

    def build(self, asset: str, cutout: Path, params: dict, provided: Path | None) -> trimesh.Trimesh:
        return trellis(_load_cutout(asset, cutout), asset, params)


@register
class ProvidedMesh(MeshBackend):
    """The mesh the DAM already has for the SKU."""

    name, reads_dam_mesh = "provided", True

    def build(self, asset: str, cutout: Path, params: dict, provided: Path | None) -> trimesh.Trimesh:
        if provided is None:
            raise AssetError(asset, STAGE, "mesh backend 'provided' but the asset has no mesh path")
        return read_provided(asset, Path(provided))


# ---------------------------------------------------------------------------
# provided meshes, loading cutouts, export


def read_provided(asset: str, path: Path) -> trimesh.Trimesh | trimesh.Scene:
    """The DAM's own mesh as the file holds it (a Scene keeps its parts), checked; AssetError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise AssetError(asset, STAGE, f"provided mesh not found: {path}")
    try:
        loaded = trimesh.load_scene(path) if hasattr(trimesh, "load_scene") else trimesh.load(path)
    except Exception as exc:   # trimesh raises many types for unreadable or unknown files
        raise AssetError(asset, STAGE, f"cannot read provided mesh {path}: {type(exc).__name__}: {exc}") from None
    try:
        validate_mesh(asset, loaded)
    except AssetError as exc:   # e.g. a text file trimesh parses as an empty OBJ: say which file
        raise AssetError(asset, STAGE, f"{exc.reason}: provided mesh {path}") from None
    return loaded


def _load_cutout(asset: str, cutout: Path) -> Image.Image:
    try:
        with Image.open(cutout) as img:
            img.load()
            return img.convert("RGBA")
    except FileNotFoundError:
        raise AssetError(asset, STAGE, f"cutout not found: {cutout}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise AssetError(asset, STAGE, f"cannot read cutout {cutout}: {exc}") from None


def _for_gltf(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """glTF has no face colours (trimesh would average them per vertex): give each face its own vertices."""
    if mesh.visual.kind == "face":
        colours = np.asarray(mesh.visual.face_colors)
        mesh = trimesh.Trimesh(
            vertices=mesh.vertices[mesh.faces].reshape(-1, 3),
            faces=np.arange(3 * len(mesh.faces)).reshape(-1, 3),
            vertex_colors=np.repeat(colours, 3, axis=0),
            process=False,
        )
    return mesh


def build_mesh(asset: str, cutout: Path, out: Path, backend: str, params: dict, provided: Path | None = None) -> None:
    """Make the asset's mesh with `backend`, check it, and write it to `out` as GLB (atomically).

    Raises AssetError for a bad asset, ValueError for an unknown backend.
    """
    made = get_backend(STAGE, backend).build(asset, Path(cutout), params or {}, provided)
    checked = validate_mesh(asset, made)
    parts = _parts(made)
    if len(parts) > 1:
        # Several parts (a provided scene) stay apart: concatenating them packs their textures
        # into one atlas, which breaks tiled UVs (a fur or wood texture came out as noise).
        glb: trimesh.Trimesh | trimesh.Scene = _canonical_scene(parts)
    else:
        glb = _for_gltf(normalise(checked))
    with atomic_path(out) as tmp:
        # smooth normals are written so viewers (Blender) do not fall back to flat shading
        glb.export(tmp, file_type="glb", include_normals=True)


def _parts(obj: trimesh.Trimesh | trimesh.Scene) -> list[trimesh.Trimesh]:
    """The triangle meshes of a mesh or scene, node transforms applied."""
    if isinstance(obj, trimesh.Scene):
        return [g for g in obj.dump() if isinstance(g, trimesh.Trimesh) and len(g.faces) > 0]
    return [obj]


def _canonical_scene(parts: list[trimesh.Trimesh]) -> trimesh.Scene:
    """The parts moved and scaled together into the canonical frame (centred, largest extent 1)."""
    lo = np.min([p.bounds[0] for p in parts], axis=0)
    hi = np.max([p.bounds[1] for p in parts], axis=0)
    size = float(np.max(hi - lo))
    turn = trimesh.transformations.scale_matrix(1.0 / size) @ trimesh.transformations.translation_matrix(-(lo + hi) / 2)
    for part in parts:
        part.apply_transform(turn)
    return trimesh.Scene([_for_gltf(p) for p in parts])

