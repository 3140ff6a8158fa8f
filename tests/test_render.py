"""Render stage (real Blender renders through the bpy module) and contact sheets.

Workbench renders headless through Mesa's EGL (Debian: libegl1 libegl-mesa0
libgl1-mesa-dri); the `egl` fixture fails, never skips, with that message when
they are missing, so CI cannot pass without really rendering.
"""

from __future__ import annotations

import ctypes.util
import glob
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from dam3d.stages.contact import FAILED_GREY, GAP, LABEL_HEIGHT, asset_sheet, run_sheet
from dam3d.stages.render import SCRIPT, render_stream, view_names

def render_assets(jobs: list, **settings: object) -> dict:
    """Each job's out_dir mapped to None (rendered) or its error, once Blender is done."""
    return dict(render_stream(jobs, **settings))


RES = 96
# Face colours of the test box, by outward normal in the glTF frame (+Y up, front +Z).
# Mid-tones, not 0/255: a renderer that read COLOR_0's sRGB bytes as linear would wash
# the 40s out to ~110 and fail the colour checks.
FACES = {
    (1, 0, 0): (200, 40, 40),  # +X red
    (-1, 0, 0): (40, 200, 200),  # -X cyan
    (0, 1, 0): (40, 200, 40),  # +Y (top) green
    (0, -1, 0): (200, 40, 200),  # -Y magenta
    (0, 0, 1): (40, 40, 200),  # +Z (front) blue
    (0, 0, -1): (200, 200, 40),  # -Z (back) yellow
}


def colour_box(path: Path) -> Path:
    """A box with one flat colour per side, as COLOR_0 (unmerged vertices keep faces crisp)."""
    box = trimesh.creation.box(extents=(1.0, 0.8, 0.9))
    box.unmerge_vertices()
    colours = [FACES[tuple(int(v) for v in np.round(n))] + (255,) for n in box.face_normals]
    box.visual.face_colors = np.array(colours, dtype=np.uint8)
    box.export(path)
    return path


@pytest.fixture(scope="module")
def egl() -> None:
    """Workbench needs an OpenGL context; headless that means EGL with Mesa's driver."""
    missing = []
    if ctypes.util.find_library("EGL") is None:
        missing.append("libEGL (libegl1)")
    if not glob.glob("/usr/share/glvnd/egl_vendor.d/*mesa*.json"):
        missing.append("Mesa's EGL vendor (libegl-mesa0)")
    if not glob.glob("/usr/lib/*/dri/swrast_dri.so") and not glob.glob("/usr/lib/*/dri/*llvmpipe*"):
        missing.append("Mesa's software driver (libgl1-mesa-dri)")
    if missing:
        pytest.fail("EGL MISSING: Workbench cannot render headless without " + ", ".join(missing)
                    + ": apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri", pytrace=False)


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory, egl: None) -> dict:
    """One Blender process: a good box, a missing mesh, a corrupt one, the box again."""
    tmp = tmp_path_factory.mktemp("render")
    box = colour_box(tmp / "box.glb")
    corrupt = tmp / "corrupt.glb"
    corrupt.write_bytes(box.read_bytes()[: 60])  # a truncated GLB: header fine, JSON cut off
    jobs = [
        (box, tmp / "out" / "box"),
        (tmp / "nowhere.glb", tmp / "out" / "missing"),
        (corrupt, tmp / "out" / "corrupt"),
        (box, tmp / "out" / "box2"),
    ]
    errors = render_assets(jobs, resolution=RES, engine="BLENDER_WORKBENCH")
    return {"tmp": tmp, "box": box, "jobs": jobs, "errors": errors}


def rgba(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "RGBA"
        return np.asarray(im)


def test_view_names() -> None:
    assert view_names(8) == ["az000", "az045", "az090", "az135", "az180", "az225", "az270", "az315"]
    assert view_names(4) == ["az000", "az090", "az180", "az270"]
    assert SCRIPT.is_file()


def test_views_are_rgba_cutouts(batch: dict) -> None:
    out = batch["tmp"] / "out" / "box"
    assert batch["errors"][out] is None
    assert sorted(p.name for p in out.iterdir()) == [f"{n}.png" for n in view_names(8)]  # no temp files left
    for name in view_names(8):
        px = rgba(out / f"{name}.png")
        assert px.shape == (RES, RES, 4)
        assert all(px[y, x, 3] == 0 for y in (0, -1) for x in (0, -1)), f"{name}: corners not transparent"
        assert px[RES // 2, RES // 2, 3] == 255, f"{name}: centre not opaque"
        # Framed like a catalogue cutout: the object neither clipped nor tiny.
        ys, xs = np.nonzero(px[..., 3])
        assert ys.min() > 0 and xs.min() > 0 and ys.max() < RES - 1 and xs.max() < RES - 1
        assert max(ys.max() - ys.min(), xs.max() - xs.min()) > 0.5 * RES


@pytest.mark.parametrize(
    ("view", "face"),
    [("az000", (0, 0, 1)), ("az090", (1, 0, 0)), ("az180", (0, 0, -1)), ("az270", (-1, 0, 0))],
)
def test_frame_convention(batch: dict, view: str, face: tuple[int, int, int]) -> None:
    """az000 looks at the glTF +Z (front) face, az090 at +X: azimuth turns toward +X."""
    px = rgba(batch["tmp"] / "out" / "box" / f"{view}.png")
    c = RES // 2
    patch = px[c - 3 : c + 4, c - 3 : c + 4, :3].reshape(-1, 3).astype(float)
    seen = np.median(patch, axis=0)
    want = np.array(FACES[face], dtype=float)
    # Even studio light: a face seen head-on keeps close to its own colour.
    assert np.abs(seen - want).max() < 40, f"{view}: saw {seen}, want {want}"
    # The top (+Y, green) shows above the front at 15 degrees elevation.
    col = px[:, c, :]
    top = col[col[:, 3] == 255][:3, :3].astype(float).mean(axis=0)
    assert top[1] > 120 and top[0] < 70 and top[2] < 70, f"{view}: top face {top}"


def test_deterministic(batch: dict, tmp_path: Path) -> None:
    again = tmp_path / "again"
    assert render_assets([(batch["box"], again)], resolution=RES) == {again: None}
    for name in view_names(8):
        a = rgba(batch["tmp"] / "out" / "box" / f"{name}.png")
        assert np.array_equal(a, rgba(again / f"{name}.png")), f"{name} differs between runs"
        # Byte-identical files too: no time stamps in the PNG.
        assert (again / f"{name}.png").read_bytes() == (batch["tmp"] / "out" / "box" / f"{name}.png").read_bytes()
        # Same within one process too (state reset between jobs).
        assert np.array_equal(a, rgba(batch["tmp"] / "out" / "box2" / f"{name}.png")), f"{name} differs in batch"


def test_bad_mesh_fails_alone(batch: dict) -> None:
    errors = batch["errors"]
    out = batch["tmp"] / "out"
    assert errors[out / "box"] is None and errors[out / "box2"] is None
    assert "not found" in errors[out / "missing"]
    assert errors[out / "corrupt"] and "import" in errors[out / "corrupt"]
    assert not (out / "missing").exists() or not any((out / "missing").iterdir())
    assert not any((out / "corrupt").glob("*.png"))


def test_cli_missing_mesh_exits_nonzero(tmp_path: Path) -> None:
    mesh = tmp_path / "gone.glb"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--", "--mesh", str(mesh), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if str(mesh) in ln]
    assert len(lines) == 1 and "not found" in lines[0], proc.stderr


# --------------------------------------------------------------------------- contact sheets

def _png(path: Path, colour: tuple[int, int, int, int], size: tuple[int, int] = (64, 64)) -> Path:
    Image.new("RGBA", size, colour).save(path)
    return path


def test_asset_sheet_marks_missing_views(tmp_path: Path) -> None:
    cutout = _png(tmp_path / "cutout.png", (200, 0, 0, 255), (80, 60))
    views = [_png(tmp_path / f"{n}.png", (0, 0, 200, 0)) for n in view_names(8)]  # fully transparent
    views[3].unlink()  # missing
    views[5].write_bytes(b"")  # failed asset's placeholder
    out = tmp_path / "sheet.png"
    asset_sheet(cutout, views, out, background=(250, 250, 240), label="SKU-1")
    with Image.open(out) as im:
        assert im.mode == "RGB"
        tile = (im.width - 10 * GAP) // 9
        assert im.size == (9 * tile + 10 * GAP, LABEL_HEIGHT + tile + GAP)
        px = np.asarray(im)

    def at(i: int, fx: float, fy: float) -> tuple[int, ...]:
        return tuple(px[LABEL_HEIGHT + int(fy * tile), GAP + i * (tile + GAP) + int(fx * tile)])

    assert at(0, 0.5, 0.5) == (200, 0, 0)  # cutout
    assert at(1, 0.5, 0.5) == (250, 250, 240)  # transparent view shows the background
    assert at(4, 0.5, 0.15) == FAILED_GREY  # view 3: missing
    assert at(6, 0.5, 0.15) == FAILED_GREY  # view 5: 0 bytes
    assert at(4, 0.5, 0.5) != FAILED_GREY or at(4, 0.02, 0.02) != FAILED_GREY  # the X / text is drawn


def test_run_sheet_stacks_and_caps(tmp_path: Path) -> None:
    sheets = [_png(tmp_path / f"s{i}.png", (i * 40, 100, 100, 255), (300, 40)) for i in range(3)]
    missing = tmp_path / "gone.png"
    out = tmp_path / "run.png"
    run_sheet([*sheets, missing], out)
    with Image.open(out) as im:
        assert im.size == (300, 160)
        assert im.getpixel((150, 60)) == (40, 100, 100)
        assert im.getpixel((150, 125)) == FAILED_GREY
    many = [sheets[i % 3] for i in range(250)]
    run_sheet(many, out, max_pixels=400_000)
    with Image.open(out) as im:
        assert im.width * im.height <= 400_000
        assert im.width > 300 and im.height < 250 * 40  # a grid of thumbnails, not a 10,000 px strip


def test_no_egl_is_reported_per_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an EGL vendor Blender aborts at start-up; every job says why, nothing is raised."""
    monkeypatch.setenv("__EGL_VENDOR_LIBRARY_FILENAMES", str(tmp_path / "no-such-vendor.json"))
    box = colour_box(tmp_path / "box.glb")
    errors = render_assets([(box, tmp_path / "a"), (box, tmp_path / "b")], resolution=32)
    assert set(errors) == {tmp_path / "a", tmp_path / "b"}
    assert all(e and "EGL" in e for e in errors.values()), errors


def test_each_asset_is_yielded_as_blender_writes_it_and_stopping_early_stops_blender(tmp_path: Path, egl: None) -> None:
    """A chunk stamps each asset the moment its views exist: records stream, they do not wait for the batch."""
    import time

    from dam3d.stages.render import render_stream

    box = colour_box(tmp_path / "box.glb")
    jobs = [(box, tmp_path / f"v{i}") for i in range(8)]
    stream = render_stream(jobs, resolution=RES)
    out, error = next(stream)
    assert (out, error) == (tmp_path / "v0", None)
    assert all((out / f"{n}.png").is_file() for n in view_names(8))
    stream.close()  # the caller failed: Blender must not go on writing unowned files
    time.sleep(1.0)
    assert not (tmp_path / "v7").exists()


def test_a_batch_past_its_time_limit_is_killed_and_its_assets_say_so(tmp_path: Path, egl: None) -> None:
    from dam3d.stages.render import RENDERER_EXITED

    box = colour_box(tmp_path / "box.glb")
    errors = render_assets([(box, tmp_path / "a"), (box, tmp_path / "b")], resolution=RES, timeout=0.2)
    assert set(errors) == {tmp_path / "a", tmp_path / "b"}
    assert all(e.startswith(RENDERER_EXITED) and "no asset finished within 0.2 s" in e for e in errors.values()), errors


def test_run_sheet_layout_switch_is_a_threshold(tmp_path: Path) -> None:
    sheets = [_png(tmp_path / f"s{i}.png", (i * 40, 100, 100, 255), (64, 64)) for i in range(4)]
    out = tmp_path / "run.png"
    run_sheet(sheets, out, max_full=4)
    with Image.open(out) as im:
        assert im.size == (64, 256)  # at the threshold: one column, full size
    run_sheet([*sheets, sheets[0]], out, max_full=4)
    with Image.open(out) as im:
        assert im.size == (128, 192)  # one past: a near-square grid, 2 columns x 3 rows


FAKE_BLENDER = """#!{python}
# Stands in for a blender binary: one record per job, `pause` seconds apart, then exits 0.
import json, sys, time
argv = sys.argv[sys.argv.index("--") + 1:]
jobs = json.load(open(argv[argv.index("--jobs") + 1]))
for pause, job in zip({pauses}, jobs):
    time.sleep(pause)
    print("render_views: EGL noise " + "render_views: record " + json.dumps({{"mesh": job["mesh"], "out": job["out"],
          "ok": False, "error": "fake", "seconds": pause}}), flush=True)
"""


@pytest.mark.parametrize(("pauses", "finished"), [([0.6, 0.6, 0.6, 0.6], 4), ([0.2, 2.5, 0.2], 1)])
def test_the_render_time_limit_counts_from_the_last_finished_asset(tmp_path: Path, pauses: list, finished: int) -> None:
    """`timeout` is per asset: a slow but steady batch runs past it in total; a stall is killed."""
    from dam3d.stages.render import RENDERER_EXITED

    fake = tmp_path / "blender"
    fake.write_text(FAKE_BLENDER.format(python=sys.executable, pauses=pauses))
    fake.chmod(0o755)
    jobs = [(tmp_path / "m.glb", tmp_path / f"v{i}") for i in range(len(pauses))]
    errors = render_assets(jobs, blender=str(fake), timeout=1.5)
    # Records come through even behind a partial line of other output on the same line.
    assert [e for e in errors.values() if e == "fake"] == ["fake"] * finished
    stalled = [e for e in errors.values() if e != "fake"]
    assert all(e.startswith(RENDERER_EXITED) and "no asset finished within 1.5 s" in e for e in stalled), stalled


HANGING_BLENDER = """#!{python}
# A blender stand-in that hangs on the mesh stall.glb and records every other job.
import json, os, sys, time
argv = sys.argv[sys.argv.index("--") + 1:]
for job in json.load(open(argv[argv.index("--jobs") + 1])):
    if os.path.basename(job["mesh"]) == "stall.glb":
        time.sleep(60)
    print("render_views: record " + json.dumps({{"mesh": job["mesh"], "out": job["out"], "ok": False,
          "error": "fake", "seconds": 0.0}}), flush=True)
"""


@pytest.mark.parametrize("order", [["a", "stall", "b", "c"], ["stall", "a", "b"]])
def test_an_asset_that_hangs_blender_costs_only_itself(tmp_path: Path, order: list) -> None:
    """The chunk's process: the hung asset is a RuntimeError (retried alone); a new Blender renders the rest."""
    from dam3d.errors import AssetError
    from dam3d.stages.render import RENDERER_EXITED, render_members

    fake = tmp_path / "blender"
    fake.write_text(HANGING_BLENDER.format(python=sys.executable))
    fake.chmod(0o755)
    members = [{"asset": n, "mesh": str(tmp_path / f"{n}.glb"), "outputs": [str(tmp_path / n / "az000.png")]}
               for n in order]
    results = dict(render_members(members, blender=str(fake), timeout=1.0))
    assert set(results) == set(order)
    hung = results.pop("stall")
    assert isinstance(hung, RuntimeError) and str(hung).startswith(RENDERER_EXITED)
    assert all(isinstance(e, AssetError) and e.reason == "fake" for e in results.values()), results


def test_a_blender_that_cannot_start_fails_the_rest_without_restarting_per_asset(tmp_path: Path) -> None:
    from dam3d.stages.render import RENDERER_EXITED, render_members

    broken, calls = tmp_path / "blender", tmp_path / "calls"
    broken.write_text(f"#!{sys.executable}\nimport sys; open({str(calls)!r}, 'a').write('x'); sys.exit(1)\n")
    broken.chmod(0o755)
    members = [{"asset": n, "mesh": str(tmp_path / f"{n}.glb"), "outputs": [str(tmp_path / n / "az000.png")]}
               for n in "abcde"]
    results = dict(render_members(members, blender=str(broken)))
    assert all(isinstance(e, RuntimeError) and str(e).startswith(RENDERER_EXITED) for e in results.values())
    assert calls.read_text() == "xx"  # two Blenders, not one per asset


def test_eevee_key_light_follows_each_views_light_rotation(tmp_path: Path, egl: None) -> None:
    """The benchmark lights each customer photo from its own side (`light_rotation`): in EEVEE the key
    sun moves with it. Seen from the front, a key light from the front lights the front face more than
    one from behind; a view without a light of its own is lit from over the camera, as from the front."""
    from dam3d.stages.render import run_batch

    box = colour_box(tmp_path / "box.glb")
    front = {"azimuth": 0.0, "elevation": 10.0}
    views = [{"name": "front_lit", **front, "light_rotation": 0.0},
             {"name": "back_lit", **front, "light_rotation": 180.0},
             {"name": "default", **front}]
    run = run_batch([{"mesh": box, "out": tmp_path / "out", "views": views}], resolution=RES,
                    engine="BLENDER_EEVEE", aa=1, timeout=300)
    assert [r["ok"] for r in run.records] == [True], run.records

    def front_face(name: str) -> float:
        im = rgba(tmp_path / "out" / f"{name}.png")
        centre = im[RES // 2 - 8 : RES // 2 + 8, RES // 2 - 8 : RES // 2 + 8]
        assert (centre[..., 3] == 255).all()
        return float(centre[..., 2].mean())  # the front face is blue

    lit, unlit, default = front_face("front_lit"), front_face("back_lit"), front_face("default")
    assert lit > unlit + 20, (lit, unlit)
    assert default > unlit + 20, (default, unlit)


def test_the_run_sheet_shows_the_newest_assets_up_to_its_cap() -> None:
    from dam3d.stages.contact import sheet_assets

    assets = ["a", "b", "c", "d", "e"]
    made_at = {"a": 300.0, "b": 100.0, "c": 200.0, "d": 100.0}   # e: no finished job (its sheet's job died)
    assert sheet_assets(assets, set(), made_at, limit=5) == assets
    # The newest finished, in catalogue order; ties (b, d) by catalogue order.
    assert sheet_assets(assets, set(), made_at, limit=2) == ["a", "c"]
    assert sheet_assets(assets, set(), made_at, limit=3) == ["a", "b", "c"]
    # What this run computes comes first, however old its last sheet.
    assert sheet_assets(assets, {"e", "b"}, made_at, limit=3) == ["a", "b", "e"]
    assert sheet_assets(assets, {"e", "b", "d"}, made_at, limit=2) == ["b", "d"]
