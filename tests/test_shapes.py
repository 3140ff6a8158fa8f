"""Shape priors (dam3d.stages.shapes): which prior a silhouette gets, the fitted camera and size, the painted sides."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from dam3d.stages.shapes import _box_corners, _project, fit_shape, prior_mesh

ORTHO = {"fov": 0.0}  # the drawings below are orthographic
BOTH = {"shapes": ["cuboid", "revolution"]}  # the default, named
RED, GREEN, BLUE = (220, 30, 30), (30, 200, 40), (40, 60, 230)


def box_photo(width: float, height: float, depth: float, yaw: float, elevation: float, side: int = 512) -> np.ndarray:
    """An RGBA cutout of a box seen from (yaw, elevation), orthographic: front red, +X side green, top blue."""
    corners = _box_corners(width, height, depth)
    xy = _project(corners, yaw, elevation)
    xy = xy - xy.min(axis=0) + (side - (xy.max(axis=0) - xy.min(axis=0))) / 2
    img = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    faces = {  # corner indices: bit 2 = x>0, bit 1 = y>0, bit 0 = z>0
        RED: [1, 3, 7, 5],     # z = +d/2
        GREEN: [4, 5, 7, 6],   # x = +w/2
        BLUE: [2, 3, 7, 6],    # y = +h/2
    }
    for colour, idx in faces.items():
        draw.polygon([tuple(map(float, xy[i])) for i in idx], fill=(*colour, 255))
    return np.asarray(img)


def vase_photo(elevation: float = 20.0, side: int = 512) -> np.ndarray:
    """An RGBA cutout of a vase (a solid of revolution): the envelope of its rings' ellipses, orange."""
    img = np.zeros((side, side, 4), dtype=np.uint8)
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    mask = np.zeros((side, side), dtype=bool)
    squash = np.sin(np.radians(elevation))
    for t in np.linspace(0, 1, 200):
        row = 80 + t * 340
        radius = 60 + 70 * np.sin(np.pi * t) ** 2 + 20 * t
        mask |= ((xx - 256) / radius) ** 2 + ((yy - row) / (radius * squash)) ** 2 <= 1
    img[mask] = (240, 140, 20, 255)
    return img


def chair_photo(side: int = 512) -> np.ndarray:
    """An RGBA cutout no prior explains: an L-shaped chair silhouette with legs."""
    img = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    brown = (120, 70, 30, 255)
    draw.rectangle((120, 60, 170, 300), fill=brown)   # back
    draw.rectangle((120, 260, 400, 300), fill=brown)  # seat
    draw.rectangle((130, 300, 145, 460), fill=brown)  # legs
    draw.rectangle((380, 300, 395, 460), fill=brown)
    return np.asarray(img)


def test_box_from_its_corner_is_a_cuboid_with_its_camera_and_proportions():
    rgba = box_photo(200, 300, 120, yaw=30, elevation=20)
    fit, box = fit_shape(rgba[..., 3] > 127, ORTHO)
    assert fit.shape == "cuboid"
    assert fit.iou > 0.97
    assert abs(fit.azimuth - 30) <= 5 and abs(fit.elevation - 20) <= 5
    width, height, depth = fit.size
    assert depth / width == pytest.approx(120 / 200, rel=0.2)
    assert height / width == pytest.approx(300 / 200, rel=0.15)


def _colours_on(mesh, axis: int, sign: float) -> np.ndarray:
    v = np.asarray(mesh.vertices)
    lo, hi = v.min(axis=0), v.max(axis=0)
    end = hi[axis] if sign > 0 else lo[axis]
    on = np.isclose(v[:, axis], end, atol=1e-6)
    # the face's inner part: away from its edges, where neighbours' colours blend in
    others = [k for k in range(3) if k != axis]
    for k in others:
        span = hi[k] - lo[k]
        on &= (v[:, k] > lo[k] + 0.2 * span) & (v[:, k] < hi[k] - 0.2 * span)
    return np.asarray(mesh.visual.vertex_colors)[on, :3].astype(float)


def test_box_hidden_faces_take_their_mirror_faces_colours():
    rgba = box_photo(200, 300, 120, yaw=30, elevation=20)
    mesh, fit = prior_mesh(rgba, rgba[..., 3] > 127, {**ORTHO, "hidden": "mirror"})
    assert fit.shape == "cuboid" and mesh is not None
    for axis, colour in ((2, RED), (0, GREEN), (1, BLUE)):
        seen = _colours_on(mesh, axis, +1).mean(axis=0)
        hidden = _colours_on(mesh, axis, -1).mean(axis=0)
        assert np.abs(seen - colour).max() < 25, (axis, seen)
        # the hidden face repeats the seen one, a little darker (back_shade)
        assert np.abs(hidden - np.array(colour) * 0.92).max() < 25, (axis, hidden)


def printed_box_photo() -> np.ndarray:
    """box_photo with a print on its red front: white vertical stripes 8 px wide, 16 px apart."""
    rgba = box_photo(200, 300, 120, yaw=30, elevation=20).copy()
    front = np.all(rgba[..., :3] == RED, axis=-1)
    stripes = (np.arange(rgba.shape[1]) // 8) % 2 == 0
    rgba[front & stripes[None, :], :3] = 255
    return rgba


@pytest.mark.parametrize("hidden", ["mirror", "blur", "plain"])
def test_box_hidden_faces_mirror_the_print_blur_it_or_take_one_colour(hidden):
    rgba = printed_box_photo()
    mesh, fit = prior_mesh(rgba, rgba[..., 3] > 127, {**ORTHO, "hidden": hidden})
    assert fit.shape == "cuboid"
    seen, back = _colours_on(mesh, 2, +1), _colours_on(mesh, 2, -1)
    assert seen.std(axis=0).max() > 40   # the print is on the front whatever `hidden` says
    if hidden == "mirror":
        assert back.std(axis=0).max() > 40
    elif hidden == "blur":
        # the stripes are averaged away; the colour stays the front's mean, darker
        assert back.std(axis=0).max() < 15
        assert np.abs(back.mean(axis=0) - seen.mean(axis=0) * 0.92).max() < 30
    else:
        obj = rgba[rgba[..., 3] > 127][:, :3].astype(float)
        for axis in range(3):
            hidden_face = _colours_on(mesh, axis, -1)
            assert np.abs(hidden_face - np.median(obj, axis=0) * 0.92).max() <= 1.0, axis


def test_unknown_hidden_mode_is_refused():
    rgba = printed_box_photo()
    with pytest.raises(ValueError, match="hidden"):
        prior_mesh(rgba, rgba[..., 3] > 127, {**ORTHO, "hidden": "guess"})


def test_vase_hidden_half_blurred_keeps_its_colour_without_its_print():
    rgba = vase_photo(elevation=20).copy()
    body = rgba[..., 3] > 127
    stripes = (np.arange(rgba.shape[1]) // 6) % 2 == 0
    rgba[body & stripes[None, :], :3] = (20, 20, 200)
    params = {**BOTH, "azimuth": 0.0, "elevation": 20.0}
    for hidden, spread in (("mirror", 40), ("blur", 20)):
        mesh, fit = prior_mesh(rgba, rgba[..., 3] > 127, {**params, "hidden": hidden})
        assert fit.shape == "revolution"
        v, c = np.asarray(mesh.vertices), np.asarray(mesh.visual.vertex_colors)[:, :3].astype(float)
        mid = np.abs(v[:, 1] - v[:, 1].mean()) < 0.2 * np.ptp(v[:, 1])
        back = mid & (v[:, 2] < -0.5 * np.abs(v[:, 2]).max())
        front = mid & (v[:, 2] > 0.5 * np.abs(v[:, 2]).max())
        assert c[front].std(axis=0).max() > 40
        if hidden == "mirror":
            assert c[back].std(axis=0).max() > spread
        else:
            assert c[back].std(axis=0).max() < spread
            assert np.abs(c[back].mean(axis=0) - c[front].mean(axis=0) * 0.92).max() < 30


def test_vase_is_a_solid_of_revolution_closed_and_facing_the_catalogue_camera():
    rgba = vase_photo(elevation=20)
    mesh, fit = prior_mesh(rgba, rgba[..., 3] > 127, {**BOTH, "azimuth": 30.0, "elevation": 20.0})
    assert fit.shape == "revolution"
    assert fit.iou > 0.95
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    # round: as wide across X as across Z, widest at the belly
    extent = mesh.extents
    assert extent[0] == pytest.approx(extent[2], rel=0.02)
    colours = np.asarray(mesh.visual.vertex_colors)[:, :3].astype(float)
    assert np.abs(colours.mean(axis=0) - (240 * 0.96, 140 * 0.96, 20)).max() < 20


def test_what_no_prior_explains_is_left_to_inflation():
    rgba = chair_photo()
    mesh, fit = prior_mesh(rgba, rgba[..., 3] > 127)
    assert mesh is None and fit.shape == "inflate"
    assert fit.iou < 0.94


def test_a_round_thing_is_not_taken_for_a_box_nor_a_box_for_a_round_thing():
    vase = vase_photo()
    box = box_photo(200, 300, 120, yaw=25, elevation=15)
    assert fit_shape(vase[..., 3] > 127, BOTH)[0].shape == "revolution"
    assert fit_shape(box[..., 3] > 127, {**BOTH, **ORTHO})[0].shape == "cuboid"
    # the default tries both; told to try cuboids only, the vase is inflated
    assert fit_shape(vase[..., 3] > 127)[0].shape == "revolution"
    assert fit_shape(vase[..., 3] > 127, {"shapes": ["cuboid"]})[0].shape == "inflate"


# --- the `prior` mesh backend --------------------------------------------------------------------


def test_prior_backend_writes_the_fitted_box_and_records_its_choice_in_the_glb(tmp_path):
    import trimesh

    from dam3d.stages.mesh import build_mesh
    from dam3d.stages.shapes import shape_record

    src, out = tmp_path / "box.png", tmp_path / "mesh" / "box.glb"
    Image.fromarray(box_photo(200, 300, 120, yaw=30, elevation=20)).save(src)
    build_mesh("box", src, out, "prior", {"prior": ORTHO, "inflate": {}})
    record = shape_record(out)
    assert record["shape"] == "cuboid" and record["iou"] > 0.97 and abs(record["azimuth"] - 30) <= 5
    mesh = trimesh.load(out, force="mesh")
    # canonical frame; a box's proportions, not a pillow's: its depth is what the corner view showed
    assert max(mesh.extents) == pytest.approx(1.0)
    assert mesh.extents[2] / mesh.extents[0] == pytest.approx(120 / 200, rel=0.2)


def test_prior_backend_inflates_what_no_prior_explains_and_says_so(tmp_path):
    import trimesh

    from dam3d.stages.mesh import build_mesh, inflate
    from dam3d.stages.shapes import shape_record

    src, out = tmp_path / "chair.png", tmp_path / "chair.glb"
    Image.fromarray(chair_photo()).save(src)
    build_mesh("chair", src, out, "prior", {"prior": {}, "inflate": {"resolution": 40}})
    assert shape_record(out)["shape"] == "inflate"
    expected = inflate(Image.open(src), "chair", {"resolution": 40})   # the inflate settings were used
    assert len(trimesh.load(out, force="mesh", process=False).vertices) == len(expected.vertices)


def test_shape_record_is_none_for_other_meshes_and_for_placeholders(tmp_path):
    from dam3d.stages.mesh import build_mesh
    from dam3d.stages.shapes import shape_record

    src, out = tmp_path / "chair.png", tmp_path / "chair.glb"
    Image.fromarray(chair_photo()).save(src)
    build_mesh("chair", src, out, "inflate", {"resolution": 40})
    assert shape_record(out) is None
    empty = tmp_path / "failed.glb"
    empty.write_bytes(b"")
    assert shape_record(empty) is None and shape_record(tmp_path / "missing.glb") is None


def test_contact_sheet_label_names_the_shape(tmp_path):
    from dam3d.stages.contact import asset_label
    from dam3d.stages.mesh import build_mesh

    src, out = tmp_path / "vase.png", tmp_path / "vase.glb"
    Image.fromarray(vase_photo()).save(src)
    build_mesh("vase", src, out, "prior", {"prior": BOTH, "inflate": {}})
    assert asset_label("VASE 1", out) in ("VASE 1   mesh: revolution (silhouette IoU 0.99)", "VASE 1   mesh: revolution (silhouette IoU 1.00)")
    assert asset_label("VASE 1", tmp_path / "missing.glb") == "VASE 1"


def test_a_sliver_gets_no_prior_and_an_odd_glb_no_record(tmp_path):
    import json
    import struct

    from dam3d.stages.shapes import shape_record

    sliver = np.zeros((512, 512), dtype=bool)
    sliver[6:506, 250:253] = True   # 3 px wide: at 64 px any box would match it at a made-up thickness
    assert fit_shape(sliver, BOTH)[0].shape == "inflate"
    for document in ([1], {"meshes": ["x"]}, {"meshes": [{"extras": "x"}]},
                     {"meshes": [{"extras": {"dam3d_shape": {"shape": "cuboid"}}}]}):
        body = json.dumps(document).encode()
        path = tmp_path / "odd.glb"
        path.write_bytes(b"glTF" + struct.pack("<II", 2, 20 + len(body)) + struct.pack("<I", len(body)) + b"JSON" + body)
        assert shape_record(path) is None, document
