"""The procedural packaged goods of `dam3d bench make --sources products` (dam3d.benchmarks.products)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import trimesh

from dam3d import cli
from dam3d.benchmarks import make, products


def closed(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """The mesh with its UV seams' repeated vertices merged: what watertightness is judged on."""
    merged = mesh.copy()
    merged.merge_vertices(merge_tex=True, merge_norm=True)
    return merged


def texture(mesh: trimesh.Trimesh) -> np.ndarray:
    return np.asarray(mesh.visual.material.baseColorTexture)


@pytest.fixture(scope="module")
def catalogue() -> list[products.Product]:
    return products.generate(5, 40)


def test_every_kind_is_a_closed_outward_textured_mesh(catalogue: list[products.Product]) -> None:
    assert {p.kind for p in catalogue} == set(products.KINDS)
    for p in catalogue:
        m = p.mesh
        assert closed(m).is_watertight, p.params
        assert m.volume > 0, p.params  # faces point outward
        assert m.visual.uv.shape == (len(m.vertices), 2) and 0 <= m.visual.uv.min() and m.visual.uv.max() <= 1
        assert texture(m).shape == (products.TEXTURE_SIDE, products.TEXTURE_SIDE, 3)
        # Standing on y = 0, in metres, its recorded dimensions its bounding box's.
        lo, hi = m.bounds
        assert lo[1] == pytest.approx(0, abs=1e-9)
        assert hi - lo == pytest.approx(p.params["dimensions_m"], abs=1e-3)


def test_box_and_can_volumes(catalogue: list[products.Product]) -> None:
    box = next(p for p in catalogue if p.kind == "box")
    w, h, d = (box.params[k] for k in ("width", "height", "depth"))
    assert box.mesh.volume == pytest.approx(w * h * d, rel=1e-6)
    assert len(box.mesh.faces) == 12
    can = next(p for p in catalogue if p.kind == "can")
    r, h = can.params["radius"], can.params["height"]
    # The rims are bevelled inward: a little under the cylinder, well over its inscribed polygon's 0.9.
    assert 0.9 * math.pi * r * r * h < can.mesh.volume < math.pi * r * r * h


def test_a_box_back_and_sides_are_not_its_front(catalogue: list[products.Product]) -> None:
    """The front carries the brand band and window, the back a text table and barcode: other views differ."""
    box = next(p for p in catalogue if p.kind == "box")
    w, h, d = (box.params[k] for k in ("width", "height", "depth"))
    px = products.TEXTURE_SIDE / max(2 * (w + d), h + d)
    atlas = texture(box.mesh).astype(float)
    front = atlas[: round(h * px), : round(w * px)]
    back = atlas[: round(h * px), round((w + d) * px) : round((w + d) * px) + front.shape[1]]
    assert np.abs(front - back).mean() > 20


def test_same_seed_same_products_other_seed_others() -> None:
    a, b, c = products.generate(9, 8), products.generate(9, 8), products.generate(10, 8)
    for x, y in zip(a, b, strict=True):
        assert x.params == y.params
        assert np.array_equal(x.mesh.vertices, y.mesh.vertices) and np.array_equal(x.mesh.faces, y.mesh.faces)
        assert np.array_equal(texture(x.mesh), texture(y.mesh))
    assert [x.params for x in a] != [z.params for z in c]
    assert not np.array_equal(texture(a[0].mesh), texture(c[0].mesh))


def test_lookalikes_share_shape_and_brand_not_colours() -> None:
    made = products.generate(2, 60)
    pairs = [(made[i - 1], made[i]) for i in range(1, len(made)) if made[i].params["lookalike"]]
    assert 0.1 * len(made) <= len(pairs) <= 0.45 * len(made)
    for before, after in pairs:
        assert after.params["brand"] == before.params["brand"]
        assert np.array_equal(after.mesh.vertices, before.mesh.vertices)
        assert after.params["colours"] != before.params["colours"]
    # No family is longer than FAMILY_MAX products.
    run = longest = 1
    for p in made[1:]:
        run = run + 1 if p.params["lookalike"] else 1
        longest = max(longest, run)
    assert longest <= products.FAMILY_MAX


def test_the_glb_keeps_uvs_and_texture(tmp_path: Path, catalogue: list[products.Product]) -> None:
    bottle = next(p for p in catalogue if p.kind == "bottle")
    products.write_glb(bottle, tmp_path / "b.glb")
    back = trimesh.load(tmp_path / "b.glb", force="mesh")
    assert len(back.vertices) == len(bottle.mesh.vertices)
    assert back.visual.uv.shape == (len(back.vertices), 2)
    assert back.visual.material.baseColorTexture.size == (products.TEXTURE_SIDE, products.TEXTURE_SIDE)
    assert back.vertex_normals.shape == back.vertices.shape


def test_the_cli_takes_products_and_refuses_an_unknown_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    calls = []
    monkeypatch.setattr(make, "make_benchmark", lambda out, **kw: calls.append(kw["sources"]))
    assert cli.main(["bench", "make", str(tmp_path / "x"), "--sources", "products"]) == 0
    assert cli.main(["bench", "make", str(tmp_path / "x"), "--sources", "cc0,products"]) == 0
    assert calls == [("products",), ("cc0", "products")]
    assert cli.main(["bench", "make", str(tmp_path / "x"), "--sources", "boxes"]) == 2
    err = capsys.readouterr().err
    assert "'boxes'" in err and "products" in err


def test_a_tiny_products_benchmark(tmp_path: Path) -> None:
    """Two products rendered small (EEVEE, 64 px): the answer key, the parameters and the true meshes."""
    out = tmp_path / "b"
    make.make_benchmark(out, objects=2, queries_per_object=1, seed=3, resolution=64, sources=("products",),
                        log=lambda m: None)
    rows = list(csv.DictReader(io.StringIO((out / "objects.csv").read_text())))
    assert len(rows) == 2 and all(r["licence"] == products.LICENCE for r in rows)
    meta = json.loads((out / "bench.json").read_text())
    made = {f"p{i:04d}": p for i, p in enumerate(products.generate(3, 2))}
    for r in rows:
        assert meta["products"][r["sku"]] == json.loads(json.dumps(made[r["model"]].params))
        assert r["category"] == made[r["model"]].kind
        mesh = trimesh.load(out / "meshes" / f"{r['sku']}.glb", force="mesh")
        assert np.allclose(mesh.vertices, made[r["model"]].mesh.vertices, atol=1e-6)
    assert "CC0" in (out / "LICENSE.md").read_text() and "Blend Swap" not in (out / "LICENSE.md").read_text()
