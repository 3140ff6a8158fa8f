"""Render turntable views of GLB meshes with Blender.

Runs as `python blender/render_views.py -- ARGS` (the `bpy` module) or as
`blender -b -P blender/render_views.py -- ARGS`.  Only the arguments after `--`
are parsed.  One asset: `--mesh M.glb --out DIR`; many assets, paying Blender's
start-up once: `--jobs JOBS.json` (a list of {"mesh", "out"}). Each job's record
({"mesh", "out", "ok", "error", "seconds", ...}) is printed as one JSON line, behind
RECORD_PREFIX, the moment the job ends.
A job may also carry `"views"`, a list of {"name", "azimuth", "elevation"} (degrees;
optional "light_rotation", degrees, turning the key light about the object, and
"studio_light", Workbench's studio light, e.g. "rim.sl") that replaces the
turntable for that job, and `"rotation"`, a row-major 3x3 turning the file's own
frame into the convention below.  Wavefront OBJ files (+Y up, front +Z, MTL
colours read as sRGB) are accepted besides glTF.

Frame convention (glTF: +Y up, the product's front faces +Z): azimuth 0 puts
the camera on glTF +Z, azimuth grows toward glTF +X, elevation is above the
horizon.  Blender's importer turns glTF (x, y, z) into Blender (x, -z, y), so
azimuth 0 is Blender -Y.  Views are written as DIR/az000.png, DIR/az045.png, ...
(RGBA, transparent background), each one atomically.

Workbench and EEVEE need an OpenGL context; headless, Blender gets it through
EGL (Debian: libegl1 libegl-mesa0 libgl1-mesa-dri, software rendering by Mesa).
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from typing import Any  # noqa: E402

import bpy  # noqa: E402
import numpy as np  # noqa: E402  (bundled with Blender and with the bpy wheel)
from mathutils import Matrix, Vector  # noqa: E402

ENGINES = ("BLENDER_WORKBENCH", "BLENDER_EEVEE", "CYCLES")
# EEVEE/Cycles: a job's own key light (its "light_rotation") comes from this far above the horizon.
KEY_ELEVATION = 45.0
# Margin on each side of the frame, as a share of the frame: catalogue cutout look.
# Must match dam3d.stages.render.RECORD_PREFIX (this script cannot import the package inside Blender).
RECORD_PREFIX = "render_views: record "
MARGIN = 0.10
# Data-block collections an import can add to; cleared between jobs.
_DATA_KINDS = (
    "objects", "meshes", "materials", "images", "textures", "node_groups", "collections",
    "armatures", "actions", "cameras", "lights", "curves", "grease_pencils",
)


def view_names(views: int) -> list[str]:
    """`az000`, `az045`, ... for `views` evenly spaced azimuths."""
    return [f"az{round(i * 360 / views) % 360:03d}" for i in range(views)]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="render_views.py", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--mesh", help="one GLB/glTF file (with --out)")
    src.add_argument("--jobs", help='JSON list of {"mesh": ..., "out": ...}')
    p.add_argument("--out", help="output folder for --mesh")
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--elevation", type=float, default=15.0, help="degrees above the horizon")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--engine", choices=ENGINES, default="BLENDER_WORKBENCH")
    p.add_argument("--device", choices=("CPU", "GPU"), default="CPU", help="Cycles device")
    p.add_argument("--samples", type=int, default=16, help="Cycles samples per pixel")
    p.add_argument("--aa", type=int, default=4,
                   help="anti-aliasing samples for EEVEE; Workbench rounds up to 5/8/11/16/32 (1: off)")
    p.add_argument("--fov", type=float, default=30.0, help="camera field of view, degrees")
    p.add_argument("--vertex-colors", choices=("srgb", "linear"), default="srgb",
                   help="how to read COLOR_0: srgb (what trimesh writes) or linear (the glTF spec)")
    a = p.parse_args(argv)
    if a.mesh and not a.out:
        p.error("--mesh needs --out")
    if not 1 <= a.views <= 360 or a.resolution < 8 or a.samples < 1 or a.aa < 1 or not 1.0 <= a.fov <= 170.0:
        p.error("need 1 <= --views <= 360, --resolution >= 8, --samples >= 1, --aa >= 1, 1 <= --fov <= 170")
    if not -89.0 <= a.elevation <= 89.0:
        p.error("--elevation must lie in [-89, 89] degrees")
    return a


def _workbench_aa(samples: int) -> str:
    """Workbench offers a fixed set of sample counts; each sample costs ~10 ms at 256 px on llvmpipe."""
    if samples <= 1:
        return "OFF"
    return next((str(n) for n in (5, 8, 11, 16, 32) if n >= samples), "32")


def script_argv() -> list[str]:
    """The arguments meant for this script: those after `--`, else (plain python) argv[1:]."""
    argv = sys.argv
    if "--" in argv:
        return argv[argv.index("--") + 1:]
    return argv[1:] if bpy.app.module else []


def _warn(msg: str) -> None:
    print(f"render_views: warning: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- scene setup

class Renderer:
    """One Blender scene reused for every job: camera, lights and settings are built once."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.scene = bpy.context.scene
        self._clear_startup_scene()
        self._setup_render()
        self._setup_camera_and_lights()
        # Everything that exists now belongs to the rig; anything newer belongs to a job.
        self.keep = {kind: set(getattr(bpy.data, kind)) for kind in _DATA_KINDS if hasattr(bpy.data, kind)}
        self._warm_up()

    def _clear_startup_scene(self) -> None:
        # Deleting the default cube/camera/light is much cheaper than read_factory_settings,
        # which re-registers every add-on.
        ids = [ob for ob in bpy.data.objects]
        for kind in ("meshes", "materials", "cameras", "lights"):
            ids += list(getattr(bpy.data, kind))
        bpy.data.batch_remove(ids)

    def _setup_render(self) -> None:
        a, sc = self.a, self.scene
        r = sc.render
        r.engine = a.engine
        r.resolution_x = r.resolution_y = a.resolution
        r.resolution_percentage = 100
        r.pixel_aspect_x = r.pixel_aspect_y = 1.0
        r.film_transparent = True
        r.use_compositing = False
        r.use_sequencer = False
        # No date/time/render-time metadata in the PNGs: same mesh and settings, same bytes.
        for prop in r.bl_rna.properties:
            if prop.identifier.startswith("use_stamp") and not prop.is_readonly:
                setattr(r, prop.identifier, False)
        r.use_persistent_data = True  # Cycles keeps its BVH/shaders between the views of a job
        im = r.image_settings
        im.file_format = "PNG"
        im.color_mode = "RGBA"
        im.color_depth = "8"
        im.compression = 15  # small files, cheap to write
        # Colours as authored (no filmic/AgX tone curve): the views must match catalogue photos.
        sc.view_settings.view_transform = "Standard"
        sc.view_settings.look = "None"
        sc.view_settings.exposure = 0.0
        sc.view_settings.gamma = 1.0
        sc.frame_set(1)

        if a.engine == "BLENDER_WORKBENCH":
            d = sc.display
            d.render_aa = _workbench_aa(a.aa)
            sh = d.shading
            sh.light = "STUDIO"
            # "paint.sl" keeps lit faces close to their albedo (Default darkens them by ~35%)
            # while still shading faces apart; catalogue photos are bright and even.
            sh.studio_light = "paint.sl"
            sh.use_world_space_lighting = False  # lights follow the camera: every view lit alike
            sh.show_shadows = False
            sh.show_cavity = False
            sh.show_object_outline = False
            sh.show_backface_culling = False
            sh.show_specular_highlight = False  # highlights would paint white blobs on the colours
            sh.show_xray = False
            sh.color_type = "MATERIAL"  # set per job (TEXTURE / ATTRIBUTE)
        elif a.engine == "BLENDER_EEVEE":
            # On Mesa's software GL most of EEVEE's cost is fixed per render call, not per
            # pixel: shrink the world probe, light-probe atlases and shadow pool to the minimum
            # and skip shadows (a lone product under soft light barely self-shadows).
            e = sc.eevee
            e.taa_render_samples = a.aa
            e.use_raytracing = False
            e.use_fast_gi = False
            e.use_shadows = False
            e.shadow_pool_size = "16"
            e.gi_cubemap_resolution = "128"
            e.gi_visibility_resolution = "8"
            e.gi_irradiance_pool_size = "16"
            e.use_volumetric_shadows = False
            e.use_overscan = False
        else:
            c = sc.cycles
            c.samples = a.samples
            c.preview_samples = a.samples
            c.seed = 0
            c.use_animated_seed = False
            c.use_adaptive_sampling = False
            c.use_denoising = False
            c.max_bounces = 4
            c.diffuse_bounces = 2
            c.glossy_bounces = 2
            c.transmission_bounces = 4
            c.volume_bounces = 0
            c.transparent_max_bounces = 8
            c.caustics_reflective = False
            c.caustics_refractive = False
            c.device = self._cycles_device()
        # The CPU threads the job was granted (dam3d.runtime.jobenv sets DAM3D_THREADS); unset: all cores.
        threads = int(os.environ.get("DAM3D_THREADS") or 0)
        r.threads_mode = "FIXED" if threads > 0 else "AUTO"
        if threads > 0:
            r.threads = threads

    def _cycles_device(self) -> str:
        if self.a.device != "GPU":
            return "CPU"
        try:
            prefs = bpy.context.preferences.addons["cycles"].preferences
        except KeyError:
            _warn("Cycles add-on preferences not found; rendering on CPU")
            return "CPU"
        for kind in ("OPTIX", "CUDA", "HIP", "ONEAPI", "METAL"):
            try:
                prefs.compute_device_type = kind
            except TypeError:  # this build does not know the backend
                continue
            prefs.refresh_devices()
            gpus = [d for d in prefs.devices if d.type == kind]
            if gpus:
                for d in prefs.devices:
                    d.use = d.type == kind
                print(f"render_views: Cycles on {kind}: {', '.join(d.name for d in gpus)}", flush=True)
                return "GPU"
        prefs.compute_device_type = "NONE"
        _warn("--device GPU but no CUDA/OptiX/HIP/oneAPI/Metal device found; rendering on CPU")
        return "CPU"

    def _setup_camera_and_lights(self) -> None:
        sc = self.scene
        cam_data = bpy.data.cameras.new("dam3d_camera")
        cam_data.lens_unit = "FOV"
        cam_data.angle = math.radians(self.a.fov)
        cam_data.sensor_fit = "AUTO"
        cam_data.clip_start = 0.01
        cam_data.clip_end = 1000.0
        self.camera = bpy.data.objects.new("dam3d_camera", cam_data)
        sc.collection.objects.link(self.camera)
        sc.camera = self.camera
        if self.a.engine == "BLENDER_WORKBENCH":
            return  # Workbench's studio light is camera-relative already
        # Soft uniform world light keeps colours close to their albedo; two suns tied to the
        # camera add shape cues, and every view gets the same lighting.
        world = bpy.data.worlds.new("dam3d_world")
        if world.node_tree is None:  # Blender < 5 creates worlds without nodes
            world.use_nodes = True
        bg = world.node_tree.nodes.get("Background")
        if bg is not None:
            bg.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
            bg.inputs["Strength"].default_value = 0.5
        world.probe_resolution = "128"  # the world probe is re-baked at every EEVEE render call
        sc.world = world
        self.suns = []
        for name, strength, rot in (
            ("dam3d_key", 1.5, (math.radians(-35), math.radians(-30), 0.0)),
            ("dam3d_fill", 0.5, (math.radians(-10), math.radians(45), 0.0)),
        ):
            ld = bpy.data.lights.new(name, "SUN")
            ld.energy = strength
            ld.angle = math.radians(10)
            ob = bpy.data.objects.new(name, ld)
            sc.collection.objects.link(ob)
            self.suns.append((ob, rot))

    def _warm_up(self) -> None:
        """Render one tiny empty frame so that GPU context and engine start-up count as start-up."""
        r = self.scene.render
        res = r.resolution_x
        r.resolution_x = r.resolution_y = 16
        self.camera.matrix_world = Matrix.Translation((0.0, -3.0, 0.0)) @ Matrix.Rotation(math.pi / 2, 4, "X")
        bpy.ops.render.render(write_still=False)
        r.resolution_x = r.resolution_y = res

    # ----------------------------------------------------------------------- one job

    def run(self, mesh: str, out: str, job: dict[str, Any] | None = None) -> dict[str, float]:
        """Render all views of `mesh` into `out`; raise with a short reason on failure.

        `job` may name its own views and a rotation (see the module docstring).
        """
        job = job or {}
        times: dict[str, float] = {}
        t = time.perf_counter()
        try:
            self._import(mesh)
            times["import_seconds"] = time.perf_counter() - t
            new_meshes = [ob for ob in self._new("objects") if ob.type == "MESH"]
            if job.get("rotation") is not None:
                _rotate(self._new("objects"), job["rotation"])
            points = self._normalise(new_meshes)
            self._prepare_materials(new_meshes)
            views = job_views(job["views"]) if job.get("views") else None
            dirs = [view_dir(v["azimuth"], v["elevation"]) for v in views] if views else self.cameras_dirs()
            distance = camera_distance(points, dirs, self.a.fov)
            times["render_seconds"] = self._render_views(out, distance, views)
        finally:
            self._reset()
        return times

    def _import(self, mesh: str) -> None:
        if not os.path.isfile(mesh):
            raise RuntimeError("mesh file not found")
        if os.path.getsize(mesh) == 0:
            raise RuntimeError("mesh file is empty")
        if mesh.lower().endswith(".obj"):
            _import_obj(mesh)
            return
        try:
            res = bpy.ops.import_scene.gltf(filepath=os.path.abspath(mesh), import_select_created_objects=False)
        except Exception as exc:  # the importer reports failures as RuntimeError("Error: ...")
            raise RuntimeError(f"cannot import glTF: {_one_line(exc)}") from None
        if "FINISHED" not in res:
            raise RuntimeError(f"cannot import glTF: importer returned {sorted(res)}")

    def _new(self, kind: str) -> list[Any]:
        keep = self.keep.get(kind, set())
        return [x for x in getattr(bpy.data, kind) if x not in keep]

    def _reset(self) -> None:
        """Remove everything the job added; the rig stays (much faster than a factory reset)."""
        ids: list[Any] = []
        for kind in self.keep:
            ids += self._new(kind)
        if ids:
            bpy.data.batch_remove(ids)
        # Orphans left by the importer that are not in `keep`'s kinds (e.g. image users).
        bpy.data.orphans_purge(do_local_ids=True, do_linked_ids=False, do_recursive=True)

    def _normalise(self, objs: list[Any]) -> np.ndarray:
        """Centre the bounding box at the origin and scale the largest extent to 1.

        Returns the transformed vertices (N x 3), used to place the camera.
        """
        bpy.context.view_layer.update()
        chunks = []
        for ob in objs:
            n = len(ob.data.vertices)
            if n == 0:
                continue
            co = np.empty(n * 3, dtype=np.float64)
            ob.data.vertices.foreach_get("co", co)
            m = np.array(ob.matrix_world, dtype=np.float64)
            chunks.append(co.reshape(n, 3) @ m[:3, :3].T + m[:3, 3])
        if not chunks:
            raise RuntimeError("no mesh geometry in file")
        pts = np.concatenate(chunks)
        if not np.isfinite(pts).all():
            raise RuntimeError("mesh has non-finite vertex coordinates")
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        extent = float((hi - lo).max())
        if extent <= 1e-12:
            raise RuntimeError("mesh is degenerate (zero size)")
        centre = (lo + hi) / 2
        fix = Matrix.Scale(1.0 / extent, 4) @ Matrix.Translation(Vector(-centre))
        new = set(self._new("objects"))
        for ob in new:
            if ob.parent is None or ob.parent not in new:
                ob.matrix_world = fix @ ob.matrix_world
        return (pts - centre) / extent

    def _prepare_materials(self, objs: list[Any]) -> None:
        """Make the mesh's own colours (baseColor texture or COLOR_0) show in every engine."""
        textured = False
        coloured = False
        for ob in objs:
            me = ob.data
            has_attr = len(me.color_attributes) > 0
            if has_attr and me.color_attributes.active_color is None:
                me.color_attributes.active_color_index = 0
            if has_attr and self.a.vertex_colors == "srgb":
                _reinterpret_as_srgb(me)
            coloured |= has_attr
            mats = [m for m in me.materials if m is not None]
            for mat in mats:
                if mat.node_tree is None:
                    continue
                img = _base_colour_image(mat)
                if img is not None:
                    textured = True
                    # Workbench's texture mode shows the *active* image node; the importer may
                    # leave the normal or metal-rough map active instead of the base colour.
                    mat.node_tree.nodes.active = img
            if has_attr and self.a.engine != "BLENDER_WORKBENCH":
                _use_vertex_colour(ob, mats)
        if self.a.engine == "BLENDER_WORKBENCH":
            self.scene.display.shading.color_type = (
                "TEXTURE" if textured else "VERTEX" if coloured else "MATERIAL"
            )

    def cameras_dirs(self) -> list[Vector]:
        """Unit vectors from the origin toward each camera, in Blender coordinates."""
        el = math.radians(self.a.elevation)
        out = []
        for i in range(self.a.views):
            az = 2 * math.pi * i / self.a.views
            # glTF (sin az cos el, sin el, cos az cos el) -> Blender (x, -z, y)
            out.append(Vector((math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el))))
        return out

    def _set_light(self, light: tuple[str | None, float] | None) -> None:
        """A job's own light, fixed in the world and turned about +Z by light[1] degrees; else the default.

        Workbench: the studio light light[0]. EEVEE/Cycles: the key sun comes from that azimuth,
        KEY_ELEVATION above the horizon, the fill stays with the camera. Default: both suns in
        camera space, over the photographer's shoulders, so that every view is lit alike.
        """
        if self.a.engine != "BLENDER_WORKBENCH":
            for i, (ob, rot) in enumerate(self.suns):
                if i == 0 and light is not None:
                    # A sun shines along its local -Z: aim it from (azimuth, elevation) at the object.
                    ob.matrix_world = look_at(view_dir(light[1], KEY_ELEVATION)).to_3x3().to_4x4()
                else:
                    ob.matrix_world = self.camera.matrix_world.to_3x3().to_4x4() @ _euler_matrix(rot)
            return
        sh = self.scene.display.shading
        if light is None or not light[0]:
            sh.studio_light = "paint.sl"
            sh.use_world_space_lighting = False
            return
        sh.studio_light = light[0]
        sh.use_world_space_lighting = True
        sh.studiolight_rotate_z = math.radians(light[1])

    def _render_views(self, out: str, distance: float, views: list[dict[str, Any]] | None = None) -> float:
        os.makedirs(out, exist_ok=True)
        spent = 0.0
        result = None
        if views is None:
            names, dirs, lights = view_names(self.a.views), self.cameras_dirs(), [None] * self.a.views
        else:
            names = [v["name"] for v in views]
            dirs = [view_dir(v["azimuth"], v["elevation"]) for v in views]
            lights = [(v.get("studio_light"), float(v.get("light_rotation", 0.0)))
                      if v.get("studio_light") or "light_rotation" in v else None for v in views]
        for name, u, light in zip(names, dirs, lights):
            self.camera.matrix_world = look_at(u * distance)
            self._set_light(light)
            t = time.perf_counter()
            bpy.ops.render.render(write_still=False)
            spent += time.perf_counter() - t
            result = result or bpy.data.images.get("Render Result")
            if result is None:
                raise RuntimeError("Blender produced no render result")
            final = os.path.join(out, f"{name}.png")
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp.png", dir=out)
            os.close(fd)
            try:
                # save_render applies the scene's colour management and PNG/RGBA settings,
                # and, unlike write_still, never expands '#' in the path into frame numbers.
                result.save_render(filepath=tmp, scene=self.scene)
                _strip_png_text(tmp)
                os.replace(tmp, final)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return spent


def _strip_png_text(path: str) -> None:
    """Drop PNG text chunks: Cycles stamps its render times there, which breaks byte equality."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return
    out, pos = [data[:8]], 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        end = pos + 12 + length
        if data[pos + 4:pos + 8] not in (b"tEXt", b"zTXt", b"iTXt", b"tIME"):
            out.append(data[pos:end])
        pos = end
    with open(path, "wb") as f:
        f.write(b"".join(out))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text.removeprefix("Error: ").strip() or type(exc).__name__


def _base_colour_image(mat: Any) -> Any | None:
    """The image node feeding the Principled BSDF's Base Color, searched upstream."""
    nodes = mat.node_tree.nodes
    bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None)
    if bsdf is None:
        return next((n for n in nodes if n.type == "TEX_IMAGE" and n.image is not None), None)
    stack = [bsdf.inputs["Base Color"]]
    seen: set[str] = set()
    while stack:
        sock = stack.pop()
        for link in sock.links:
            n = link.from_node
            if n.name in seen:
                continue
            seen.add(n.name)
            if n.type == "TEX_IMAGE" and n.image is not None:
                return n
            stack.extend(i for i in n.inputs if i.is_linked)
    return None


def _reinterpret_as_srgb(me: Any) -> None:
    """Read the file's COLOR_0 values as sRGB instead of linear.

    glTF defines COLOR_0 as linear, and Blender's importer follows that; but trimesh
    (and with it our inflate mesh backend) stores the photo's 8-bit sRGB values there.
    Read as linear they come out washed out (sRGB 40 renders as 110).
    """
    for attr in me.color_attributes:
        n = len(attr.data)
        if n == 0:
            continue
        buf = np.empty(n * 4, dtype=np.float32)
        attr.data.foreach_get("color", buf)  # the value as written in the file
        attr.data.foreach_set("color_srgb", buf)  # ... now taken as sRGB


def _use_vertex_colour(ob: Any, mats: list[Any]) -> None:
    """Multiply COLOR_0 into the base colour if the imported material ignores it.

    glTF says COLOR_0 multiplies the base colour; a mesh without any material gets one.
    """
    attr = ob.data.color_attributes.active_color or ob.data.color_attributes[0]
    if not mats:
        mat = bpy.data.materials.new(f"{ob.name}_vcol")
        ob.data.materials.append(mat)
        mats = [mat]
    for mat in mats:
        if mat.node_tree is None:
            mat.use_nodes = True
        nt = mat.node_tree
        if any(n.type in ("VERTEX_COLOR", "ATTRIBUTE") for n in nt.nodes):
            continue
        bsdf = next((n for n in nt.nodes if n.type == "BSDF_PRINCIPLED"), None)
        if bsdf is None:
            continue
        base = bsdf.inputs["Base Color"]
        vc = nt.nodes.new("ShaderNodeVertexColor")
        vc.layer_name = attr.name
        if base.is_linked:
            mix = nt.nodes.new("ShaderNodeMix")
            mix.data_type = "RGBA"
            mix.blend_type = "MULTIPLY"
            mix.inputs["Factor"].default_value = 1.0
            nt.links.new(base.links[0].from_socket, mix.inputs[6])
            nt.links.new(vc.outputs["Color"], mix.inputs[7])
            nt.links.new(mix.outputs[2], base)
        else:
            colour = tuple(base.default_value)
            plain = all(abs(c - 1.0) < 1e-3 for c in colour[:3]) or all(abs(c - 0.8) < 1e-3 for c in colour[:3])
            if plain:  # white (glTF default) or Blender's default grey: the attribute is the colour
                nt.links.new(vc.outputs["Color"], base)
            else:
                mix = nt.nodes.new("ShaderNodeMix")
                mix.data_type = "RGBA"
                mix.blend_type = "MULTIPLY"
                mix.inputs["Factor"].default_value = 1.0
                mix.inputs[6].default_value = colour
                nt.links.new(vc.outputs["Color"], mix.inputs[7])
                nt.links.new(mix.outputs[2], base)


def _euler_matrix(rot: tuple[float, float, float]) -> Matrix:
    from mathutils import Euler

    return Euler(rot, "XYZ").to_matrix().to_4x4()


def view_dir(azimuth_deg: float, elevation_deg: float) -> Vector:
    """Unit vector toward a camera at (azimuth, elevation), Blender coordinates (see the frame convention)."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return Vector((math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)))


def job_views(views: Any) -> list[dict[str, Any]]:
    """Check a job's own view list: names usable as file stems, angles in range."""
    out = []
    for v in views:
        name = str(v["name"])
        if not name or "/" in name or name.startswith("."):
            raise RuntimeError(f"bad view name {name!r}")
        az, el = float(v["azimuth"]), float(v.get("elevation", 15.0))
        if not -89.0 <= el <= 89.0:
            raise RuntimeError(f"view {name}: elevation {el} outside [-89, 89]")
        out.append({**v, "name": name, "azimuth": az, "elevation": el})
    return out


def _rotate(objs: list[Any], rows: list[list[float]]) -> None:
    """Apply a 3x3 given in the file's frame (+Y up, front +Z) to the top-level imported objects."""
    r = Matrix([[float(x) for x in row] for row in rows])
    axes = Matrix(((1, 0, 0), (0, 0, -1), (0, 1, 0)))  # file (x, y, z) -> Blender (x, -z, y)
    turn = (axes @ r @ axes.inverted()).to_4x4()
    new = set(objs)
    for ob in objs:
        if ob.parent is None or ob.parent not in new:
            ob.matrix_world = turn @ ob.matrix_world


def _srgb_to_linear(c: float) -> float:
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def _import_obj(mesh: str) -> None:
    """Wavefront OBJ in the glTF frame (+Y up, front +Z), MTL colours read as sRGB.

    Blender's importer takes Kd as linear, which washes plain colours out; most
    OBJ exporters (and Sweet Home 3D) mean sRGB. Workbench shows a material's
    viewport colour, so that one is set too.
    """
    before = set(bpy.data.materials)
    try:
        res = bpy.ops.wm.obj_import(filepath=os.path.abspath(mesh), forward_axis="NEGATIVE_Z", up_axis="Y")
    except Exception as exc:
        raise RuntimeError(f"cannot import OBJ: {_one_line(exc)}") from None
    if "FINISHED" not in res:
        raise RuntimeError(f"cannot import OBJ: importer returned {sorted(res)}")
    for mat in set(bpy.data.materials) - before:
        if mat.node_tree is None:
            continue
        bsdf = next((n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED"), None)
        if bsdf is None or bsdf.inputs["Base Color"].is_linked:
            continue
        r, g, b, a = bsdf.inputs["Base Color"].default_value
        linear = (_srgb_to_linear(r), _srgb_to_linear(g), _srgb_to_linear(b), a)
        bsdf.inputs["Base Color"].default_value = linear
        mat.diffuse_color = linear


def look_at(position: Vector) -> Matrix:
    """Camera matrix at `position` looking at the origin, Blender +Z up."""
    forward = -position.normalized()
    rot = forward.to_track_quat("-Z", "Y")
    return Matrix.Translation(position) @ rot.to_matrix().to_4x4()


def camera_distance(points: np.ndarray, dirs: list[Vector], fov_deg: float) -> float:
    """Smallest distance at which every point fits every view with MARGIN on each side.

    One distance for all views, so that the object keeps its size from view to view.
    For a camera at d*u looking at the origin, a point p projects to
    (p.right, p.up) / (d - p.u); it stays inside the frame shrunk by the margin when
    d >= p.u + max(|p.right|, |p.up|) / t, with t = (1 - 2*MARGIN) * tan(fov/2).
    """
    t = (1.0 - 2.0 * MARGIN) * math.tan(math.radians(fov_deg) / 2)
    pts = points.astype(np.float32, copy=False)
    best = 0.0
    for u in dirs:
        uu = np.array(u, dtype=np.float64)
        right = np.cross(-uu, (0.0, 0.0, 1.0))
        if np.linalg.norm(right) < 1e-6:  # looking straight down: any right vector will do
            right = np.array((1.0, 0.0, 0.0))
        right /= np.linalg.norm(right)
        up = np.cross(right, -uu)
        proj = pts @ np.stack([uu, right, up]).T.astype(np.float32)
        need = proj[:, 0] + np.maximum(np.abs(proj[:, 1]), np.abs(proj[:, 2])) / t
        best = max(best, float(need.max()))
    return max(best, 0.05)


# --------------------------------------------------------------------------- main

def _print_record(rec: dict[str, Any]) -> None:
    # One line, flushed: the caller keeps this asset before Blender goes on (dam3d.stages.render.stream_batch).
    print(RECORD_PREFIX + json.dumps(rec), flush=True)


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    if a.jobs:
        try:
            with open(a.jobs) as f:
                specs = json.load(f)
                jobs = [(str(j["mesh"]), str(j["out"])) for j in specs]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"render_views: {a.jobs}: cannot read job list: {_one_line(exc)}", file=sys.stderr)
            return 2
    else:
        jobs = [(a.mesh, a.out)]
        specs = [{}]
        if not os.path.isfile(a.mesh):  # fail before paying for Blender's scene set-up
            print(f"render_views: {a.mesh}: mesh file not found", file=sys.stderr)
            return 1

    t = time.perf_counter()
    try:
        renderer = Renderer(a)
    except Exception as exc:  # e.g. no OpenGL/EGL for Workbench/EEVEE: every job fails alike
        reason = f"cannot set up {a.engine} renderer: {_one_line(exc)}"
        print(f"render_views: {reason}", file=sys.stderr, flush=True)
        for m, o in jobs:
            _print_record({"mesh": m, "out": o, "ok": False, "error": reason, "seconds": 0.0})
        return 1
    startup = time.perf_counter() - _T0
    print(f"render_views: startup_seconds={startup:.3f} (scene setup {time.perf_counter() - t:.3f}) "
          f"engine={a.engine} resolution={a.resolution} views={a.views}", flush=True)

    results: list[dict[str, Any]] = []
    for (mesh, out), spec in zip(jobs, specs):
        t = time.perf_counter()
        rec: dict[str, Any] = {"mesh": mesh, "out": out, "ok": True, "error": None}
        try:
            rec.update(renderer.run(mesh, out, spec))
        except Exception as exc:  # one bad asset must not stop the batch
            rec["ok"] = False
            rec["error"] = _one_line(exc)
        rec["seconds"] = round(time.perf_counter() - t, 4)
        for k in ("import_seconds", "render_seconds"):
            if k in rec:
                rec[k] = round(rec[k], 4)
        results.append(rec)
        status = "ok" if rec["ok"] else f"FAILED: {rec['error']}"
        print(f"render_views: {mesh}: {rec['seconds']:.3f} s "
              f"(render {rec.get('render_seconds', 0.0):.3f} s) {status}", flush=True)
        if not rec["ok"]:
            print(f"render_views: {mesh}: {rec['error']}", file=sys.stderr, flush=True)
        # After every asset: should Blender crash on a later one, these still count as done.
        _print_record(rec)

    print(f"render_views: total_seconds={time.perf_counter() - _T0:.3f}", flush=True)
    if not results:
        return 0
    return 0 if any(r["ok"] for r in results) else 1


if __name__ == "__main__":
    code = main(script_argv())
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip Blender's teardown (~0.15 s freeing the GPU context, data and add-ons): every
    # output is already written, closed and renamed into place.
    os._exit(code)
