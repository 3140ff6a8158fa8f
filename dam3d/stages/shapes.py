"""Shape priors for single-view meshes: a cuboid or a solid of revolution fitted to the cutout's silhouette.

A catalogue shot is one view, mostly three-quarter and from a little above. Silhouette
inflation (`inflate`) takes it as a flat front, so a box seen from its corner becomes a
pillow and its other sides are slivers. Many products are boxes (cartons, appliances,
cabinets) or solids of revolution (bottles, cans, jars, bowls, lamps); for those, the
silhouette says which, and fixes the shape:

- **cuboid**: the silhouette of a box seen from a corner is the convex hexagon of its
  8 projected corners. Its yaw, the camera's elevation and the depth/width ratio are
  fitted by grid search on the silhouette's IoU (the bounding box fixes the scale; the
  camera is a pinhole of the catalogue lens's field of view `fov`, orthographic at 0).
  The visible faces (front, one side, top) are painted from the photo; each hidden face takes the colours of its mirror image through the box's
  planes of symmetry (back = front, the other side = the seen side, bottom = top), as
  they are (`hidden: mirror`), blurred (`blur`) or as one colour (`plain`): see HIDDEN.
- **revolution**: a silhouette symmetric about a vertical axis is the envelope of
  the projected circles of a solid of revolution; each image row gives a circle's radius
  (the top and bottom rows are the caps' ellipses, `elevation` degrees above). The
  visible half is wrapped round: a point on the hidden side takes the colour of the
  point with the same azimuth mirrored to the camera's side (blurred or plain as `hidden` says).

A prior is used when its silhouette matches the cutout's with an IoU of at least
`min_iou`; otherwise the caller inflates. The fit is recorded with the mesh
(`ShapeFit`, written into the GLB's extras by the mesh stage).

Frame: glTF (+Y up, front +Z); the catalogue camera ends at azimuth `ShapeFit.azimuth`
(degrees, toward +X) and elevation `ShapeFit.elevation`, as the renderer counts them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import json
import struct
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial import ConvexHull

PRIOR_DEFAULTS: dict[str, Any] = {
    "azimuth": 30.0,      # catalogue camera's azimuth from the product's front (degrees): where a solid
                          # of revolution's photographed side is put (a cuboid fits its own yaw)
    "fov": 30.0,          # catalogue lens's field of view (degrees; 0: orthographic): a cuboid's far edges
                          # look smaller through it
    "elevation": 20.0,    # catalogue camera's elevation (degrees): used for solids of revolution, and the
                          # tie-break of a cuboid's fit (which fits its own elevation in [0, 45])
    "min_iou": 0.94,      # a prior whose silhouette matches the cutout's less well is not used (inflate)
    "shapes": ["cuboid", "revolution"],  # priors tried, best IoU wins (README: Shape priors, Hidden sides)
    "cells": 48,          # grid cells along the longest side of a cuboid face / rings of a revolution
    "back_shade": 0.92,   # a hidden face repeats its mirror image's colours, a little darker
    "hidden": "blur",     # how hidden sides are painted: see HIDDEN (blur chosen on the products tuning seed, README)
    "alpha_threshold": 127,
}

# The mesh's metadata entry (the GLB's mesh `extras`) that records the fit: see `shape_record`.
SHAPE_KEY = "dam3d_shape"
FIT_SIDE = 64  # px: silhouettes are compared at this size (longest side of the bounding box)
MIN_FIT_PIXELS = 8  # a silhouette narrower than this at FIT_SIDE gets no prior
PROFILE_SIDE = 256  # px: a solid of revolution's profile is read at this size for its mesh
SEGMENTS = 64  # around a solid of revolution
CATALOGUE_FILL = 0.8  # share of the frame a catalogue shot's product spans (for the lens's distance)
EDGE_PIXELS = 3  # the cutout's outermost pixels, not painted from (at the cutout's 512 px)
REVOLUTION_MARGIN = 0.01  # IoU a solid of revolution must gain over a cuboid to be chosen (seed-1 benchmark)
DEPTH_PRIOR = 0.6  # depth / width of a box whose silhouette cannot tell (seen square-on): a typical carton
# How the sides the catalogue camera did not see are painted (`hidden`). A package's back and
# other side are printed differently from its front (a text table, a barcode, a side band), so
# repeating the front's print may mislead more than it helps:
#   mirror: the seen side's colours, as seen (a box's back is its front mirrored);
#   blur:   the seen side's colours averaged over HIDDEN_BLUR of the object's longest side: its
#           colour layout (base colour, bands) without its print;
#   plain:  one colour, the median of the cutout's object pixels.
HIDDEN = ("mirror", "blur", "plain")
HIDDEN_BLUR = 0.25


@dataclass(frozen=True)
class ShapeFit:
    """The prior chosen for one cutout and how well its silhouette matched (IoU in [0, 1]).

    `shape` is "cuboid", "revolution" or "inflate" (no prior matched well enough; `iou` is
    then the best prior's). `azimuth` and `elevation` (degrees) place the catalogue camera
    in the mesh's frame. `size` is (width X, height Y, depth Z) in cutout pixels (a cuboid).
    """

    shape: str
    iou: float
    azimuth: float
    elevation: float
    size: tuple[float, float, float] | None = None

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        out["iou"] = round(self.iou, 4)
        out["azimuth"], out["elevation"] = round(self.azimuth, 1), round(self.elevation, 1)
        if self.size is not None:
            out["size"] = [round(float(s), 1) for s in self.size]
        return out


def camera_basis(azimuth: float, elevation: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors (right, up, toward the camera) of an orthographic camera, glTF frame.

    Azimuth 0 looks from +Z, growing toward +X; elevation above the horizon (degrees),
    as blender/render_views.py places its cameras.
    """
    a, e = np.radians(azimuth), np.radians(elevation)
    right = np.array([np.cos(a), 0.0, -np.sin(a)])
    up = np.array([-np.sin(a) * np.sin(e), np.cos(e), -np.cos(a) * np.sin(e)])
    toward = np.array([np.sin(a) * np.cos(e), np.sin(e), np.cos(a) * np.cos(e)])
    return right, up, toward


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 0.0


def _fit_mask(mask: np.ndarray, side: int = 0) -> tuple[np.ndarray, float, tuple[int, int]]:
    """The silhouette cropped to its bounding box, scaled to `side` (default FIT_SIDE) px on its longer side:
    (mask, scale fit-px per px, (top, left))."""
    rows, cols = np.nonzero(mask)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    scale = (side or FIT_SIDE) / max(y1 - y0, x1 - x0)
    size = (max(int(round((x1 - x0) * scale)), 1), max(int(round((y1 - y0) * scale)), 1))
    crop = Image.fromarray((mask[y0:y1, x0:x1] * 255).astype(np.uint8)).resize(size, Image.Resampling.BOX)
    return np.asarray(crop) >= 128, scale, (int(y0), int(x0))


def _polygon_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise the convex hull of 2D points (x, y in px, y down) into a boolean (rows, cols) mask."""
    img = Image.new("1", (shape[1], shape[0]), 0)
    hull = points[ConvexHull(points).vertices]
    ImageDraw.Draw(img).polygon([(float(x), float(y)) for x, y in hull], fill=1)
    return np.asarray(img, dtype=bool)


def _box_corners(width: float, height: float, depth: float) -> np.ndarray:
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)
    return signs * np.array([width, height, depth]) / 2.0


def _project(points: np.ndarray, azimuth: float, elevation: float, distance: float = 0.0) -> np.ndarray:
    """(N, 3) glTF points -> (N, 2) image coordinates (x right, y down), unshifted.

    `distance` > 0: a pinhole camera that far from the origin (same units as the points), else orthographic.
    """
    right, up, toward = camera_basis(azimuth, elevation)
    xy = np.column_stack([points @ right, -(points @ up)])
    if distance > 0:
        xy *= (distance / (distance - points @ toward))[:, None]
    return xy


def lens_distance(extent: float, fov: float) -> float:
    """How far a camera of field of view `fov` (degrees; 0: orthographic, returns 0) stands from an object
    whose projection spans `extent` and fills CATALOGUE_FILL of the frame (same units as `extent`)."""
    if fov <= 0:
        return 0.0
    return extent / (2.0 * np.tan(np.radians(fov) / 2.0) * CATALOGUE_FILL)


def fit_cuboid(mask: np.ndarray, elevation: float, fov: float = 0.0) -> tuple[float, dict[str, float]]:
    """Search a box's yaw, the camera's elevation and the depth/width ratio that best explain the silhouette.

    Returns (IoU, parameters: azimuth and elevation in degrees, width, height, depth in the
    mask's pixels; `distance`, `sx`, `sy`: the camera and the projection's scale onto the
    silhouette's bounding box, for `cuboid_mesh`). With `fov` > 0 the camera is a pinhole
    (a catalogue lens: a box's far edges look smaller). A coarse grid (yaw every 7.5 degrees in [-45, 45], elevation every 7.5 in
    [0, 45], 9 ratios in [0.1, 4]) then a finer one around the 3 best. Near-ties go to the
    prior `elevation` and a depth/width ratio of DEPTH_PRIOR: a box seen square-on shows
    no side, so its silhouette trades depth for elevation freely.
    """
    fit, scale, _ = _fit_mask(mask)
    fh, fw = fit.shape

    def score(yaw: float, elev: float, ratio: float) -> tuple[float, float, dict[str, float]]:
        cy, sy = abs(np.cos(np.radians(yaw))), abs(np.sin(np.radians(yaw)))
        ce, se = np.cos(np.radians(elev)), np.sin(np.radians(elev))
        width = fw / (cy + ratio * sy)
        depth = ratio * width
        height = (fh - (width * sy + depth * cy) * se) / ce
        if height <= 0.05 * fh:
            return -1.0, 0.0, {}
        distance = lens_distance(max(fw, fh), fov)
        pts = _project(_box_corners(width, height, depth), yaw, elev, distance)
        # the orthographic sizes above fill the box exactly; a pinhole's projection is brought to it
        stretch = np.array([fw, fh]) / np.maximum(np.ptp(pts, axis=0), 1e-9)
        iou = _iou(_polygon_mask((pts - pts.min(axis=0)) * stretch, fit.shape), fit)
        penalty = 0.002 * abs(elev - elevation) / 5.0 + 0.002 * abs(np.log(ratio / DEPTH_PRIOR))
        return iou - penalty, iou, {"azimuth": float(yaw), "elevation": float(elev), "ratio": float(ratio),
                                    "width": width / scale, "height": height / scale, "depth": depth / scale,
                                    "distance": distance / scale, "sx": float(stretch[0]), "sy": float(stretch[1])}

    coarse = [score(y, e, r) for y in np.arange(-45.0, 45.01, 7.5) for e in np.arange(0.0, 45.01, 7.5)
              for r in np.geomspace(0.1, 4.0, 9)]
    fine = []
    for _, _, p in sorted(coarse, key=lambda c: c[0], reverse=True)[:3]:
        if not p:
            continue
        fine += [score(y, e, p["ratio"] * f)
                 for y in np.clip(p["azimuth"] + np.arange(-5.0, 5.01, 2.5), -45, 45)
                 for e in np.clip(p["elevation"] + np.arange(-5.0, 5.01, 2.5), 0, 45)
                 for f in np.geomspace(0.75, 1.33, 5)]
    best = max(coarse + fine, key=lambda c: c[0])
    if not best[2]:
        return 0.0, {}
    params = dict(best[2])
    params.pop("ratio")
    return best[1], params


def _ellipses_mask(centre_x: float, rows: np.ndarray, radii: np.ndarray, squash: float,
                   shape: tuple[int, int]) -> np.ndarray:
    """Union of ellipses centred (centre_x, row) with semi-axes (radius, radius * squash), at pixel centres."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5
    out = np.zeros(shape, dtype=bool)
    b = np.maximum(radii * squash, 0.5)
    for row, a, bb in zip(rows, radii, b, strict=True):
        if a <= 0:
            continue
        out |= ((xx - centre_x) / a) ** 2 + ((yy - row) / bb) ** 2 <= 1.0
    return out


def revolution_profile(mask: np.ndarray, elevation: float, side: int = 0) -> tuple[float, dict[str, Any]]:
    """A solid of revolution's profile from the silhouette, seen from `elevation` degrees, and how well it fits.

    Returns (IoU, {"axis": x of the axis, "rows": ring centre rows, "radii": ring radii,
    in the mask's pixels}). The IoU compares the projected rings' envelope with the
    silhouette, so a silhouette that is not symmetric about a vertical axis scores low.
    `side`: the silhouette's size for the work (default FIT_SIDE; a mesh's profile wants more).
    """
    fit, scale, (top, left) = _fit_mask(mask, side)
    rows_any = np.flatnonzero(fit.any(axis=1))
    if len(rows_any) < 3:
        return 0.0, {}
    squash = np.sin(np.radians(elevation))
    lefts = np.array([np.argmax(fit[r]) for r in rows_any], dtype=float)
    rights = np.array([fit.shape[1] - np.argmax(fit[r][::-1]) for r in rows_any], dtype=float)
    half = (rights - lefts) / 2.0
    centres = (lefts + rights) / 2.0
    axis = float(np.average(centres, weights=half + 1e-6))
    # The caps: the top ring's centre lies radius * sin(elevation) below the silhouette's top row.
    r_top, r_bot = rows_any[0], rows_any[-1] + 1
    centre_rows = rows_any + 0.5
    keep = (centre_rows - r_top >= half * squash) & (r_bot - centre_rows >= half * squash)
    if keep.sum() < 2:
        return 0.0, {}
    rows, radii = centre_rows[keep], half[keep]
    if side:
        # a pixel-stepped profile would shade as rings round the product: smooth it over a few rows
        radii = ndimage.gaussian_filter1d(radii, sigma=side / 128.0, mode="nearest")
    iou = _iou(_ellipses_mask(axis, rows, radii, squash, fit.shape), fit)
    return iou, {"axis": left + axis / scale, "rows": top + rows / scale, "radii": radii / scale}


def fit_revolution(mask: np.ndarray, elevation: float) -> tuple[float, float, dict[str, Any]]:
    """`revolution_profile` at the elevation (every 5 degrees, within 10 of the prior `elevation`, at least 5)
    that explains the silhouette best.

    Returns (IoU, elevation in degrees, profile). Near-ties go to the prior: a pinhole lens
    shows the top ring flatter than the bottom one, so no single elevation is exact. Not
    below 5 degrees: seen level, the caps vanish and any mirror-symmetric silhouette (a box
    seen from its corner) would be a perfect solid of revolution.
    """
    best: tuple[float, float, float, dict[str, Any]] = (-1.0, 0.0, elevation, {})
    for elev in np.arange(max(elevation - 10.0, 5.0), min(elevation + 10.0, 60.0) + 0.01, 5.0):
        iou, profile = revolution_profile(mask, float(elev))
        score = iou - 0.002 * abs(elev - elevation) / 5.0
        if profile and score > best[0]:
            best = (score, iou, float(elev), profile)
    return best[1], best[2], best[3]


# ---------------------------------------------------------------------------
# Meshes painted from the photo


class Painter:
    """Samples the cutout's colours at image positions (px from the image's top-left pixel edge, y down).

    Pixels outside the object (alpha <= `alpha_threshold`) and its outer `edge` pixels take their
    nearest object pixel's colour; `smooth` > 1 averages over a square of that side (px).
    """

    def __init__(self, rgba: np.ndarray, alpha_threshold: int, smooth: int, edge: int = EDGE_PIXELS) -> None:
        visible = rgba[..., 3] > alpha_threshold
        # The silhouette's edge (anti-aliased, matted, seen edge-on) is no colour of the product:
        # its pixels take their nearest inner neighbour's colour, as the background's do.
        if edge > 0:   # (scipy erodes until nothing changes for 0 iterations)
            inner = ndimage.binary_erosion(visible, iterations=edge)
            if inner.any():
                visible = inner
        _, (ny, nx) = ndimage.distance_transform_edt(~visible, return_indices=True)
        rgb = rgba[..., :3].astype(np.float32)[ny, nx]
        if smooth > 1:
            rgb = ndimage.uniform_filter(rgb, size=(smooth, smooth, 1))
        self.rgb = rgb

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        h, w = self.rgb.shape[:2]
        # map_coordinates counts from pixel centres, positions here from pixel edges
        py = np.clip(xy[:, 1] - 0.5, 0, h - 1)
        px = np.clip(xy[:, 0] - 0.5, 0, w - 1)
        return np.stack([ndimage.map_coordinates(self.rgb[..., k], [py, px], order=1) for k in range(3)], axis=1)


def hidden_painter(rgba: np.ndarray, p: dict, paint: Painter) -> Painter | Callable[[np.ndarray], np.ndarray]:
    """What paints the sides the catalogue camera did not see (`p["hidden"]`, one of HIDDEN).

    Returns a callable like `Painter`: image positions (N, 2) float (x, y, px) -> RGB (N, 3) float32.
    Raises ValueError for an unknown `hidden`.
    """
    mode = p.get("hidden", "mirror")
    if mode not in HIDDEN:
        raise ValueError(f"mesh.prior.hidden must be one of {HIDDEN}, not {mode!r}")
    if mode == "mirror":
        return paint
    visible = rgba[..., 3] > int(p["alpha_threshold"])
    if mode == "plain":
        colour = np.median(rgba[visible][:, :3].astype(np.float32), axis=0) if visible.any() else np.zeros(3)
        return lambda xy: np.tile(colour.astype(np.float32), (len(xy), 1))
    rows, cols = np.nonzero(visible)
    extent = max(rows.max() + 1 - rows.min(), cols.max() + 1 - cols.min()) if len(rows) else 1
    return Painter(rgba, int(p["alpha_threshold"]), max(int(round(HIDDEN_BLUR * extent)), 1))


def _grid(n_a: int, n_b: int) -> tuple[np.ndarray, np.ndarray]:
    """(n_a+1)(n_b+1) parameters in [0,1]^2 and the faces of the grid, counter-clockwise in (a, b)."""
    a, b = np.meshgrid(np.linspace(0, 1, n_a + 1), np.linspace(0, 1, n_b + 1), indexing="ij")
    idx = np.arange((n_a + 1) * (n_b + 1)).reshape(n_a + 1, n_b + 1)
    p, q, r, s = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    faces = np.concatenate([np.column_stack([p.ravel(), q.ravel(), r.ravel()]),
                            np.column_stack([p.ravel(), r.ravel(), s.ravel()])])
    return np.column_stack([a.ravel(), b.ravel()]), faces


def cuboid_mesh(rgba: np.ndarray, params: dict[str, float], top_left: tuple[float, float], p: dict) -> trimesh.Trimesh:
    """A box of the fitted size, each face a vertex-coloured grid painted from the photo or its mirror face."""
    width, height, depth = params["width"], params["height"], params["depth"]
    yaw, elev = params["azimuth"], params["elevation"]
    _, _, toward = camera_basis(yaw, elev)
    half = np.array([width, height, depth]) / 2.0
    distance, stretch = params["distance"], np.array([params["sx"], params["sy"]])
    corners = _project(_box_corners(width, height, depth), yaw, elev, distance)
    origin = corners.min(axis=0)
    top_left_xy = np.array(top_left)[::-1]   # image position of the projected box's top-left
    cell = max(width, height, depth) / int(p["cells"])
    paint = Painter(rgba, int(p["alpha_threshold"]), max(int(round(cell)), 1))
    paint_hidden = hidden_painter(rgba, p, paint)
    # Mirror images through the box's planes; a face takes the best-seen one (itself when seen).
    mirrors = [np.array([sx, sy, sz], dtype=float) for sx in (1, -1) for sy in (1, -1) for sz in (1, -1)]

    vertices, faces, colours = [], [], []
    for axis in range(3):
        for sign in (1.0, -1.0):
            normal = np.zeros(3)
            normal[axis] = sign
            u_axis, v_axis = [k for k in range(3) if k != axis]
            n_u = max(int(np.ceil(2 * half[u_axis] / cell)), 1)
            n_v = max(int(np.ceil(2 * half[v_axis] / cell)), 1)
            uv, grid_faces = _grid(n_u, n_v)
            pts = np.zeros((len(uv), 3))
            pts[:, axis] = sign * half[axis]
            pts[:, u_axis] = (uv[:, 0] - 0.5) * 2 * half[u_axis]
            pts[:, v_axis] = (uv[:, 1] - 0.5) * 2 * half[v_axis]
            # wind so the face's normal points out: (u x v) . normal > 0 for counter-clockwise (u, v)
            cross = np.cross(np.eye(3)[u_axis], np.eye(3)[v_axis])
            if float(cross @ normal) < 0:
                grid_faces = grid_faces[:, ::-1]
            seen = max(mirrors, key=lambda m: float((m * normal) @ toward))
            visible = bool(np.all(seen == 1))
            shade = 1.0 if visible else float(p["back_shade"])
            xy = (_project(pts * seen, yaw, elev, distance) - origin) * stretch + top_left_xy
            faces.append(grid_faces + sum(len(v) for v in vertices))
            vertices.append(pts)
            colours.append((paint if visible else paint_hidden)(xy) * shade)
    return _coloured(np.vstack(vertices), np.vstack(faces), np.vstack(colours))


def revolution_mesh(rgba: np.ndarray, profile: dict[str, Any], elevation: float, p: dict) -> trimesh.Trimesh:
    """The profile's rings turned about the vertical axis, closed by caps, painted from the photo's visible half."""
    rows, radii, axis = np.asarray(profile["rows"]), np.asarray(profile["radii"]), float(profile["axis"])
    n_rings = min(len(rows), max(2 * int(p["cells"]), 2))   # rings: the profile and the colours down the side
    pick = np.unique(np.linspace(0, len(rows) - 1, n_rings).round().astype(int))
    rows, radii = rows[pick], radii[pick]
    ce, se = np.cos(np.radians(elevation)), np.sin(np.radians(elevation))
    heights = -(rows - rows[0]) / max(ce, 1e-6)   # a ring's centre projects to its row
    angle = np.linspace(0.0, 2 * np.pi, SEGMENTS, endpoint=False)   # 0: toward the camera (+Z here)
    paint = Painter(rgba, int(p["alpha_threshold"]), max(int(round(float(radii.max()) / int(p["cells"]))), 1))
    paint_hidden = hidden_painter(rgba, p, paint)

    def ring_points(height: float, radius: np.ndarray, theta: np.ndarray) -> np.ndarray:
        return np.column_stack([radius * np.sin(theta), np.full(theta.shape, height), radius * np.cos(theta)])

    def image_xy(radius: np.ndarray, theta: np.ndarray, row: float, fold: bool) -> np.ndarray:
        # the hidden half takes the colour of the same azimuth mirrored onto the camera's side
        depth = np.abs(np.cos(theta)) if fold else np.cos(theta)
        return np.column_stack([axis + radius * np.sin(theta), row + radius * depth * se])

    verts, cols, shade = [], [], float(p["back_shade"])
    front = np.cos(angle) >= 0   # the half the catalogue camera saw
    for row, radius, height in zip(rows, radii, heights, strict=True):
        r = np.full(SEGMENTS, radius)
        verts.append(ring_points(height, r, angle))
        xy = image_xy(r, angle, row, fold=True)
        ring = np.empty((SEGMENTS, 3), dtype=np.float32)
        ring[front] = paint(xy[front])
        ring[~front] = paint_hidden(xy[~front]) * shade
        cols.append(ring)
    side = np.vstack(verts)
    n_r = len(rows)
    idx = np.arange(n_r * SEGMENTS).reshape(n_r, SEGMENTS)
    nxt = np.roll(idx, -1, axis=1)
    a, b, c, d = idx[:-1], nxt[:-1], nxt[1:], idx[1:]   # ring i (above) to ring i+1 (below)
    faces = [np.column_stack([a.ravel(), d.ravel(), c.ravel()]), np.column_stack([a.ravel(), c.ravel(), b.ravel()])]
    colours = np.vstack(cols)

    # Caps: concentric rings down to the centre; the top is seen from above, the bottom repeats it darker.
    # (the top's colours are the photo's top ellipse; the bottom is never seen by the catalogue camera)
    steps = np.linspace(1.0, 0.0, 9)[1:-1]
    top_radius = radii[0]
    for end, sign in ((0, 1.0), (n_r - 1, -1.0)):
        base = len(side)
        cap_pts, cap_cols = [], []
        for frac in steps:
            r = np.full(SEGMENTS, radii[end] * frac)
            cap_pts.append(ring_points(heights[end], r, angle))
            look = np.full(SEGMENTS, top_radius * frac)
            cap_cols.append(paint(image_xy(look, angle, rows[0], fold=False)) * (1.0 if sign > 0 else shade))
        cap_pts.append(np.array([[0.0, heights[end], 0.0]]))
        cap_cols.append(paint(np.array([[axis, rows[0]]])) * (1.0 if sign > 0 else shade))
        ring_ids = [idx[end]] + [base + k * SEGMENTS + np.arange(SEGMENTS) for k in range(len(steps))]
        for outer, inner in zip(ring_ids[:-1], ring_ids[1:], strict=True):
            o2, i2 = np.roll(outer, -1), np.roll(inner, -1)
            quad = [np.column_stack([outer, o2, i2]), np.column_stack([outer, i2, inner])]
            faces += [q if sign > 0 else q[:, ::-1] for q in quad]
        last, centre = ring_ids[-1], base + len(steps) * SEGMENTS
        fan = np.column_stack([last, np.roll(last, -1), np.full(SEGMENTS, centre)])
        faces.append(fan if sign > 0 else fan[:, ::-1])
        side = np.vstack([side, np.vstack(cap_pts)])
        colours = np.vstack([colours, np.vstack(cap_cols)])
    return _coloured(side, np.vstack(faces), colours)


def _coloured(vertices: np.ndarray, faces: np.ndarray, rgb: np.ndarray) -> trimesh.Trimesh:
    rgb8 = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    colours = np.column_stack([rgb8, np.full(len(rgb8), 255, dtype=np.uint8)])
    return trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=colours, process=False)


def fit_shape(mask: np.ndarray, params: dict | None = None) -> tuple[ShapeFit, dict[str, Any]]:
    """The best prior for a silhouette (bool (H, W)): its ShapeFit and the fitted parameters.

    `shape` is "inflate" when no prior reaches `min_iou`.
    """
    p = {**PRIOR_DEFAULTS, **(params or {})}
    elevation, azimuth = float(p["elevation"]), float(p["azimuth"])
    candidates: list[tuple[float, ShapeFit, dict[str, Any]]] = []
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        raise ValueError("fit_shape: the mask is empty")
    height, width = rows.max() + 1 - rows.min(), cols.max() + 1 - cols.min()
    if min(height, width) * FIT_SIDE < MIN_FIT_PIXELS * max(height, width):
        # At FIT_SIDE a sliver is a few pixels wide: any box matches it, at a made-up thickness.
        return ShapeFit("inflate", 0.0, 0.0, 0.0), {}
    if "cuboid" in p["shapes"]:
        iou, box = fit_cuboid(mask, elevation, float(p["fov"]))
        if box:
            size = (box["width"], box["height"], box["depth"])
            candidates.append((iou, ShapeFit("cuboid", iou, box["azimuth"], box["elevation"], size), box))
    if "revolution" in p["shapes"]:
        iou, elev, profile = fit_revolution(mask, elevation)
        if profile:
            candidates.append((iou, ShapeFit("revolution", iou, azimuth, elev), profile))
    if not candidates:
        return ShapeFit("inflate", 0.0, 0.0, 0.0), {}
    # A box seen from near its corner is nearly symmetric too, and at 64 px a straight top edge and
    # an ellipse's arc differ by little: a solid of revolution must explain the silhouette clearly better.
    iou, fit, fitted = max(candidates, key=lambda c: c[0] - (REVOLUTION_MARGIN if c[1].shape == "revolution" else 0.0))
    if iou < float(p["min_iou"]):
        return ShapeFit("inflate", iou, 0.0, 0.0), {}
    return fit, fitted


def prior_mesh(rgba: np.ndarray, mask: np.ndarray, params: dict | None = None) -> tuple[trimesh.Trimesh | None, ShapeFit]:
    """A mesh from the best-fitting prior, or (None, fit) when none fits (the caller inflates).

    `rgba` uint8 (H, W, 4) cutout, `mask` bool (H, W) its object. The mesh is in pixels,
    glTF frame, the catalogue camera at (fit.azimuth, fit.elevation); not yet normalised.
    """
    p = {**PRIOR_DEFAULTS, **(params or {})}
    fit, fitted = fit_shape(mask, p)
    if fit.shape == "cuboid":
        rows, cols = np.nonzero(mask)
        return cuboid_mesh(rgba, fitted, (float(rows.min()), float(cols.min())), p), fit
    if fit.shape == "revolution":
        _, profile = revolution_profile(mask, fit.elevation, side=PROFILE_SIDE)
        mesh = revolution_mesh(rgba, profile, fit.elevation, p)
        # the photographed side (built facing +Z) turns to face the catalogue camera's azimuth
        mesh.apply_transform(trimesh.transformations.rotation_matrix(np.radians(fit.azimuth), [0, 1, 0]))
        return mesh, fit
    return None, fit


def shape_record(glb: Path) -> dict[str, Any] | None:
    """How a `prior` mesh was made (shape, silhouette IoU, catalogue camera), read from the GLB's mesh extras.

    None for a mesh without the record (another backend) or a file that is not a GLB.
    """
    try:
        with open(glb, "rb") as fh:
            header = fh.read(20)
            if len(header) < 20 or header[:4] != b"glTF":
                return None
            length = struct.unpack("<I", header[12:16])[0]
            document = json.loads(fh.read(length))
    except (OSError, ValueError):
        return None
    meshes = document.get("meshes") if isinstance(document, dict) else None
    for mesh in meshes if isinstance(meshes, list) else []:
        extras = mesh.get("extras") if isinstance(mesh, dict) else None
        record = extras.get(SHAPE_KEY) if isinstance(extras, dict) else None
        if isinstance(record, dict) and isinstance(record.get("shape"), str) and isinstance(record.get("iou"), (int, float)):
            return record
    return None
