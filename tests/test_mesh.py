"""Mesh stage: inflate, provided meshes, validation, and the TRELLIS adapter through a stand-in package."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image, ImageDraw

from dam3d.stages import mesh as M
from dam3d.errors import AssetError

RED, BLUE, GREEN = (220, 20, 20), (20, 40, 220), (20, 200, 40)


def cutout(size: int = 256) -> Image.Image:
    """A product-like cutout: red disc on top of a blue rectangle, a green tab on the right."""
    s = size / 256
    img = Image.new("RGBA", (size, size), (255, 255, 255, 0))   # transparent white, as matting tools leave it
    draw = ImageDraw.Draw(img)
    draw.ellipse([78 * s, 20 * s, 178 * s, 120 * s], fill=(*RED, 255))
    draw.rectangle([98 * s, 110 * s, 158 * s, 236 * s], fill=(*BLUE, 255))
    draw.rectangle([158 * s, 160 * s, 188 * s, 190 * s], fill=(*GREEN, 255))
    return img


def reload(path: Path) -> trimesh.Trimesh:
    return trimesh.load(path, force="mesh", process=False)


def assert_canonical(mesh: trimesh.Trimesh) -> None:
    lo, hi = mesh.bounds
    assert np.allclose((lo + hi) / 2, 0, atol=1e-6)
    assert abs(float(np.max(hi - lo)) - 1.0) < 1e-6


def colour_near(colours: np.ndarray, target: tuple[int, int, int], tol: int = 30) -> np.ndarray:
    return np.all(np.abs(colours[:, :3].astype(int) - np.array(target)) <= tol, axis=1)


# --- inflate -------------------------------------------------------------------------------------


def test_inflate_is_watertight_canonical_and_coloured_from_the_image() -> None:
    mesh = M.inflate(cutout(), "sku1", {})
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0   # faces point outwards
    assert_canonical(mesh)

    x, y, z = mesh.extents
    assert y > x > z > 0.05   # taller than wide, as in the photo; real thickness

    assert mesh.visual.kind == "vertex"
    colours_all = np.asarray(mesh.visual.vertex_colors)
    front_side = mesh.vertices[:, 2] >= 0   # the back repeats these colours, darker
    v, colours = mesh.vertices[front_side], colours_all[front_side]
    # image up -> +Y: the red disc is on top, blue at the bottom
    assert colour_near(colours[v[:, 1] > 0.35], RED).mean() > 0.9
    assert colour_near(colours[v[:, 1] < -0.35], BLUE, tol=60).mean() > 0.9
    # image right -> +X: the green tab is the rightmost part
    assert colour_near(colours[v[:, 0] > v[:, 0].max() - 0.05], GREEN, tol=60).mean() > 0.8
    # front (the photographed side) faces +Z: full colour there, the back is darker
    front, back = colours_all[np.argmax(mesh.vertices[:, 2])], colours_all[np.argmin(mesh.vertices[:, 2])]
    assert colour_near(front[None], RED).all() or colour_near(front[None], BLUE).all()
    assert front[:3].astype(int).sum() > back[:3].astype(int).sum()


@pytest.mark.parametrize("hidden", ["mirror", "blur", "plain"])
def test_inflate_back_repeats_blurs_or_flattens_the_fronts_print(hidden: str) -> None:
    img = Image.new("RGBA", (256, 256), (255, 255, 255, 0))
    draw = ImageDraw.Draw(img)
    draw.rectangle([40, 40, 216, 216], fill=(*RED, 255))
    for x in range(48, 208, 16):   # a print: white stripes 8 px wide
        draw.rectangle([x, 40, x + 7, 216], fill=(255, 255, 255, 255))
    mesh = M.inflate(img, "sku1", {"hidden": hidden, "resolution": 64})
    v, c = mesh.vertices, np.asarray(mesh.visual.vertex_colors)[:, :3].astype(float)
    n = len(v) // 2   # front sheet, then back sheet
    inner = (np.abs(v[:n, 0]) < 0.3) & (np.abs(v[:n, 1]) < 0.3)   # away from the rim
    front, back = c[:n][inner], c[n:][inner]
    assert front.std(axis=0).max() > 40   # the stripes are on the front whatever `hidden` says
    if hidden == "mirror":
        assert np.abs(back - front * 0.85).max() <= 1.0
    elif hidden == "blur":
        assert back.std(axis=0).max() < 15
        assert np.abs(back.mean(axis=0) - front.mean(axis=0) * 0.85).max() < 25
    else:
        assert np.ptp(back, axis=0).max() <= 1.0


def test_inflate_params_change_resolution_and_depth() -> None:
    coarse = M.inflate(cutout(), "sku1", {"resolution": 32})
    fine = M.inflate(cutout(), "sku1", {"resolution": 96})
    assert len(coarse.vertices) < len(fine.vertices)
    thin = M.inflate(cutout(), "sku1", {"depth": 0.1})
    assert thin.extents[2] < fine.extents[2]
    assert thin.is_watertight and coarse.is_watertight


def test_inflate_is_never_thicker_than_round() -> None:
    img = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    ImageDraw.Draw(img).rectangle([8, 118, 248, 138], fill=(90, 50, 20, 255))   # a belt, lying flat
    belt = M.inflate(img, "belt", {})
    assert belt.extents[2] <= belt.extents[1] * 1.05


def test_inflate_thin_necks_and_diagonal_contacts_stay_watertight() -> None:
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    px = img.load()
    for i in range(10, 50):          # a one-pixel diagonal line and a one-pixel-wide bar
        px[i, i] = (200, 100, 0, 255)
        px[i, 30] = (200, 100, 0, 255)
    mesh = M.inflate(img, "neck", {"resolution": 64})
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    assert mesh.extents[1] > 0.9   # the diagonal line was kept, not dropped as a separate piece


def test_inflate_keeps_a_handle_opening_and_fills_pinholes() -> None:
    img = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    draw.rectangle([30, 90, 170, 190], fill=(120, 60, 20, 255))                      # bag body
    draw.ellipse([60, 10, 140, 110], outline=(120, 60, 20, 255), width=12)          # handle
    draw.point([(100, 150), (101, 150)], fill=(0, 0, 0, 0))                          # matting pinhole
    mesh = M.inflate(img, "bag", {"resolution": 100})
    assert mesh.is_watertight and mesh.volume > 0
    assert mesh.euler_number == 0            # genus 1: the handle's opening, not the pinhole
    filled = M.inflate(img, "bag", {"resolution": 100, "hole_fill": 1.0})
    assert filled.is_watertight and filled.euler_number == 2


@pytest.mark.parametrize("alpha", [0, 3])
def test_inflate_empty_cutout_is_an_asset_error(alpha: int) -> None:
    img = Image.new("RGBA", (128, 128), (255, 0, 0, alpha))
    with pytest.raises(AssetError, match="cutout is empty: no foreground pixels") as info:
        M.inflate(img, "sku-empty", {})
    assert info.value.asset == "sku-empty" and info.value.stage == "mesh"


def test_inflate_speck_is_nearly_empty() -> None:
    img = Image.new("RGBA", (128, 128), (0, 0, 0, 0))
    img.putpixel((5, 5), (255, 0, 0, 255))
    with pytest.raises(AssetError, match="nearly empty"):
        M.inflate(img, "speck", {})


def test_build_mesh_inflate_writes_a_glb_that_reloads_with_the_same_vertices_and_colours(tmp_path: Path) -> None:
    src = tmp_path / "sku1.png"
    cutout().save(src)
    out = tmp_path / "mesh" / "sku1.glb"
    M.build_mesh("sku1", src, out, "inflate", {"resolution": 64})

    expected = M.inflate(cutout(), "sku1", {"resolution": 64})
    got = reload(out)
    assert len(got.vertices) == len(expected.vertices)
    assert np.array_equal(np.asarray(got.visual.vertex_colors), np.asarray(expected.visual.vertex_colors))
    assert got.is_watertight
    assert_canonical(got)
    assert [p.name for p in out.parent.iterdir()] == ["sku1.glb"]   # no temporary left behind


def test_build_mesh_missing_cutout_and_unknown_backend(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match="cutout not found"):
        M.build_mesh("sku1", tmp_path / "nope.png", tmp_path / "o.glb", "inflate", {})
    with pytest.raises(ValueError, match="unknown mesh backend"):
        M.build_mesh("sku1", tmp_path / "nope.png", tmp_path / "o.glb", "nerf", {})


@pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="bpy not installed")
def test_blender_imports_vertex_colours_into_the_material(tmp_path: Path) -> None:
    src, out = tmp_path / "c.png", tmp_path / "c.glb"
    cutout(128).save(src)
    M.build_mesh("sku1", src, out, "inflate", {"resolution": 32})
    script = textwrap.dedent(f"""
        import json, bpy
        bpy.ops.wm.read_factory_settings(use_empty=True)
        bpy.ops.import_scene.gltf(filepath={str(out)!r})
        obj = [o for o in bpy.data.objects if o.type == "MESH"][0]
        mat = obj.material_slots[0].material
        bsdf = [n for n in mat.node_tree.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled"][0]
        links = bsdf.inputs["Base Color"].links
        print("RESULT", json.dumps({{"attrs": [a.name for a in obj.data.color_attributes],
            "base_from": links[0].from_node.bl_idname if links else None}}))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    line = [ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, run.stdout + run.stderr
    result = json.loads(line[0][7:])
    assert result["attrs"], "no colour attribute imported"
    assert result["base_from"] in ("ShaderNodeVertexColor", "ShaderNodeAttribute")


# --- provided ------------------------------------------------------------------------------------


def coloured_box(extents=(2.0, 6.0, 1.0), offset=(10.0, 5.0, -3.0)) -> trimesh.Trimesh:
    box = trimesh.creation.box(extents=extents)
    box.apply_translation(offset)
    box.visual.vertex_colors = np.tile([30, 160, 90, 255], (len(box.vertices), 1))
    return box


def load_provided(asset: str, path: Path) -> trimesh.Trimesh:
    """The provided mesh as one canonical Trimesh, as these tests check it."""
    return M.normalise(M.read_provided(asset, path))


@pytest.mark.parametrize("suffix", ["obj", "ply", "glb", "off"])
def test_provided_mesh_is_normalised_to_a_glb(tmp_path: Path, suffix: str) -> None:
    src = tmp_path / f"dam.{suffix}"
    coloured_box().export(src)
    if suffix == "off":   # OFF carries no colour: such a file is refused, naming it
        with pytest.raises(AssetError, match=r"no colour.*dam\.off"):
            M.build_mesh("sku2", tmp_path / "unused.png", tmp_path / "o.glb", "provided", {}, provided=src)
        return
    out = tmp_path / "sku2.glb"
    M.build_mesh("sku2", tmp_path / "unused.png", out, "provided", {}, provided=src)
    got = reload(out)
    assert_canonical(got)
    assert np.allclose(got.extents, [1 / 3, 1.0, 1 / 6], atol=1e-6)   # axes kept, only centred and scaled
    assert colour_near(np.asarray(got.visual.vertex_colors), (30, 160, 90), tol=2).all()


def test_provided_scene_with_texture_and_face_colours(tmp_path: Path) -> None:
    textured = trimesh.creation.box()
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.new("RGB", (16, 16), (200, 50, 50)))
    textured.visual = trimesh.visual.TextureVisuals(uv=np.random.default_rng(0).random((8, 2)), material=material)
    faces = trimesh.creation.box()
    faces.apply_translation([0, 3, 0])
    faces.visual.face_colors = np.tile([0, 0, 255, 255], (12, 1))
    src = tmp_path / "scene.glb"
    trimesh.Scene([textured, faces]).export(src)

    mesh = load_provided("sku3", src)
    assert_canonical(mesh)
    assert len(mesh.faces) == 24
    assert M.validate_mesh("sku3", mesh) is mesh


def test_face_colours_survive_the_glb(tmp_path: Path) -> None:
    box = trimesh.creation.box()
    colours = np.tile([255, 0, 0, 255], (12, 1))
    colours[:6] = [0, 255, 0, 255]
    box.visual.face_colors = colours
    src, out = tmp_path / "faces.ply", tmp_path / "faces.glb"
    box.export(src)
    M.build_mesh("sku4", src, out, "provided", {}, provided=src)
    got = reload(out)
    vc = np.asarray(got.visual.vertex_colors)[got.faces[:, 0]]
    assert sorted(map(tuple, np.unique(vc, axis=0).tolist())) == [(0, 255, 0, 255), (255, 0, 0, 255)]


def test_provided_zip_archive(tmp_path: Path) -> None:
    import zipfile

    ply = tmp_path / "inner.ply"
    coloured_box().export(ply)
    src = tmp_path / "dam.zip"
    with zipfile.ZipFile(src, "w") as archive:
        archive.write(ply, "inner.ply")
    assert_canonical(load_provided("sku5", src))


def test_provided_missing_or_unreadable(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match="no mesh path") as info:
        M.build_mesh("sku6", tmp_path / "c.png", tmp_path / "o.glb", "provided", {}, provided=None)
    assert info.value.asset == "sku6"
    with pytest.raises(AssetError, match="not found: .*absent.obj"):
        load_provided("sku6", tmp_path / "absent.obj")
    garbage = tmp_path / "garbage.glb"
    garbage.write_bytes(b"not a mesh at all")
    with pytest.raises(AssetError, match="garbage.glb"):
        load_provided("sku6", garbage)
    text = tmp_path / "notes.obj"
    text.write_text("hello\n")
    with pytest.raises(AssetError, match=r"empty.*notes\.obj"):
        load_provided("sku6", text)
    assert not (tmp_path / "o.glb").exists()


# --- validate_mesh -------------------------------------------------------------------------------


def test_validate_mesh_rejects_each_problem_with_its_own_reason() -> None:
    good = coloured_box()
    assert M.validate_mesh("a", good) is good

    nan = coloured_box()
    nan.vertices[0] = [np.nan, 0, 0]
    with pytest.raises(AssetError, match="non-finite vertices"):
        M.validate_mesh("a", nan)
    with pytest.raises(AssetError, match="empty: no faces"):
        M.validate_mesh("a", trimesh.Trimesh())
    with pytest.raises(AssetError, match="empty: no faces"):
        M.validate_mesh("a", trimesh.Scene())
    with pytest.raises(AssetError, match="no colour"):
        M.validate_mesh("a", trimesh.creation.box())
    flat = trimesh.Trimesh(vertices=np.zeros((3, 3)), faces=[[0, 1, 2]], vertex_colors=[[1, 2, 3, 255]] * 3)
    with pytest.raises(AssetError, match="zero size"):
        M.validate_mesh("a", flat)
    huge = coloured_box(extents=(1e7, 1, 1))
    with pytest.raises(AssetError, match="unbounded"):
        M.validate_mesh("a", huge)


def test_normalise_centres_and_scales() -> None:
    mesh = M.normalise(coloured_box(extents=(4, 2, 1), offset=(3, 3, 3)))
    assert_canonical(mesh)
    assert np.allclose(mesh.extents, [1, 0.5, 0.25])


# --- trellis adapter (stand-in package) ------------------------------------------------------------

FAKE_PIPELINES = '''
CALLS = {"from_pretrained": [], "run": [], "cuda": 0}

class TrellisImageTo3DPipeline:
    @staticmethod
    def from_pretrained(path):
        CALLS["from_pretrained"].append(path)
        return TrellisImageTo3DPipeline()

    def cuda(self):
        CALLS["cuda"] += 1

    def run(self, image, seed=42, sparse_structure_sampler_params={}, slat_sampler_params={}):
        CALLS["run"].append({"size": image.size, "mode": image.mode, "seed": seed,
                             "ss": sparse_structure_sampler_params, "slat": slat_sampler_params})
        return {"gaussian": ["G"], "mesh": ["M"], "radiance_field": ["R"]}
'''

FAKE_POSTPROCESSING = '''
import numpy as np
import trimesh
from PIL import Image

CALLS = []

def to_glb(app_rep, mesh, simplify=0.95, fill_holes=True, fill_holes_max_size=0.04, texture_size=1024,
           debug=False, verbose=True):
    """Like TRELLIS: a textured mesh already in glTF's Y-up frame, at TRELLIS's scale (about unit cube)."""
    CALLS.append({"app_rep": app_rep, "mesh": mesh, "simplify": simplify, "texture_size": texture_size})
    box = trimesh.creation.box(extents=(0.3, 0.9, 0.2))
    box.apply_translation((0.05, -0.02, 0.1))
    uv = np.random.default_rng(0).random((len(box.vertices), 2))
    texture = Image.new("RGB", (texture_size, texture_size), (180, 120, 40))
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=texture, roughnessFactor=1.0)
    box.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return box
'''


def _forget_trellis() -> None:
    for name in [n for n in sys.modules if n == "trellis" or n.startswith("trellis.")]:
        del sys.modules[name]


@pytest.fixture
def fake_trellis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "site"
    (root / "trellis" / "pipelines").mkdir(parents=True)
    (root / "trellis" / "utils").mkdir()
    (root / "trellis" / "__init__.py").write_text("")
    (root / "trellis" / "pipelines" / "__init__.py").write_text(FAKE_PIPELINES)
    (root / "trellis" / "utils" / "__init__.py").write_text("")
    (root / "trellis" / "utils" / "postprocessing_utils.py").write_text(FAKE_POSTPROCESSING)
    _forget_trellis()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setattr(M, "_PIPELINES", {})
    yield root
    _forget_trellis()


def test_trellis_adapter_passes_params_loads_once_and_writes_a_canonical_textured_glb(
    fake_trellis: Path, tmp_path: Path
) -> None:
    params = {"model": "acme/trellis-test", "seed": 7, "ss_steps": 5, "ss_cfg": 6.5,
              "slat_steps": 4, "slat_cfg": 2.5, "simplify": 0.9, "texture_size": 64}
    src = tmp_path / "c.png"
    cutout(128).save(src)
    outs = [tmp_path / "a.glb", tmp_path / "b.glb"]
    for asset, out in zip(["a", "b"], outs):
        M.build_mesh(asset, src, out, "trellis", params)

    from trellis import pipelines
    from trellis.utils import postprocessing_utils

    assert pipelines.CALLS["from_pretrained"] == ["acme/trellis-test"]   # one load for two assets
    assert len(pipelines.CALLS["run"]) == 2
    run = pipelines.CALLS["run"][0]
    assert run == {"size": (128, 128), "mode": "RGBA", "seed": 7,
                   "ss": {"steps": 5, "cfg_strength": 6.5}, "slat": {"steps": 4, "cfg_strength": 2.5}}
    post = postprocessing_utils.CALLS[0]
    assert post == {"app_rep": "G", "mesh": "M", "simplify": 0.9, "texture_size": 64}

    for out in outs:
        got = trimesh.load(out, force="mesh", process=False)
        assert_canonical(got)
        assert np.allclose(got.extents, [1 / 3, 1.0, 2 / 9], atol=1e-6)   # Y-up kept, no extra rotation
        assert got.visual.kind == "texture"
        assert got.visual.material.baseColorTexture.size == (64, 64)


def test_trellis_available_checks_package_and_model_without_loading(fake_trellis: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    assert not M.trellis_available(str(model))          # folder without pipeline.json
    (model / "pipeline.json").write_text("{}")
    assert M.trellis_available(str(model))
    assert not M.trellis_available("nobody/no-such-trellis-model-in-cache")
    assert "trellis.pipelines" not in sys.modules        # a check, not an import


def test_trellis_missing_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _forget_trellis()
    monkeypatch.setattr(M, "_PIPELINES", {})
    if importlib.util.find_spec("trellis") is not None:
        pytest.skip("a real trellis package is installed")
    model = tmp_path / "model"
    model.mkdir()
    (model / "pipeline.json").write_text("{}")
    src = tmp_path / "c.png"
    cutout(64).save(src)
    with pytest.raises(M.BackendUnavailable, match=r"not installed.*docs/trellis\.md"):
        M.build_mesh("a", src, tmp_path / "a.glb", "trellis", {"model": str(model)})
    assert not (tmp_path / "a.glb").exists()


def test_a_white_material_is_a_colour_and_a_multi_part_scene_keeps_its_parts(tmp_path: Path) -> None:
    """A plain white product (white material, no texture) is accepted; a scene of two textured parts stays two
    parts in the GLB (concatenating them packs the textures into one atlas and breaks tiled UVs)."""
    white = trimesh.creation.box(extents=(1.0, 2.0, 0.5))
    white.visual = trimesh.visual.TextureVisuals(material=trimesh.visual.material.PBRMaterial(baseColorFactor=[255] * 4))
    src = tmp_path / "white.glb"
    white.export(src)
    M.build_mesh("w", tmp_path / "unused.png", tmp_path / "w.glb", "provided", {}, provided=src)
    assert np.allclose(reload(tmp_path / "w.glb").extents, [0.5, 1.0, 0.25], atol=1e-6)

    parts = []
    for i, colour in enumerate([(200, 40, 40), (40, 40, 200)]):
        part = trimesh.creation.box()
        part.apply_translation([3.0 * i, 0, 0])
        tiled = np.random.default_rng(i).random((len(part.vertices), 2)) * 4  # UVs past 1: a tiled texture
        material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.new("RGB", (8, 8), colour))
        part.visual = trimesh.visual.TextureVisuals(uv=tiled, material=material)
        parts.append(part)
    src = tmp_path / "two.glb"
    trimesh.Scene(parts).export(src)
    M.build_mesh("two", tmp_path / "unused.png", tmp_path / "two.glb", "provided", {}, provided=src)
    out = trimesh.load(tmp_path / "two.glb", force="scene")
    got = [g for g in out.dump() if len(g.faces)]
    assert len(got) == 2
    lo = np.min([g.bounds[0] for g in got], axis=0)
    hi = np.max([g.bounds[1] for g in got], axis=0)
    assert np.allclose((lo + hi) / 2, 0, atol=1e-6) and np.isclose((hi - lo).max(), 1.0)  # canonical together
    assert all(np.asarray(g.visual.uv).max() > 1.5 for g in got)  # tiled UVs kept as they were
