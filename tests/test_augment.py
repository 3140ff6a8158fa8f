"""Catalogue-side 2D augmentations (embed.augment): extra views embedded from the transformed cutout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageOps

from conftest import only, product_photo
from dam3d.catalogue import Asset
from dam3d.runtime import layout
from dam3d.runtime.backends import backend
from dam3d.search.index import Index, build_index
from dam3d.stages.embed import AUGMENTS, ModelSpec, augment_image, embed_assets, embed_images, embed_key

REPO = Path(__file__).resolve().parent.parent
MOBILENET = ModelSpec("mobilenetv2", "mobilenetv2")
WHITE = (255, 255, 255)


def cutout(tmp_path: Path) -> Path:
    """An RGBA cutout, object off-centre and asymmetric so every transform changes it, transparent around."""
    photo = product_photo("red-vase", size=(256, 256)).convert("RGBA")
    alpha = Image.new("L", photo.size, 0)
    alpha.paste(255, (30, 20, 200, 240))
    photo.putalpha(alpha)
    path = tmp_path / "cut.png"
    photo.save(path)
    return path


def by_hand(image: Image.Image, name: str) -> Image.Image:
    """The transform done independently of augment_image, flattened on white."""
    rgba = image.convert("RGBA")
    if name == "mirror":
        out = ImageOps.mirror(rgba)
    elif name == "crop90":
        w, h = rgba.size   # 256 x 256: the centre 230 x 230 (90 %, rounded)
        out = rgba.crop(((w - 230) // 2, (h - 230) // 2, (w - 230) // 2 + 230, (h - 230) // 2 + 230))
    else:
        out = rgba.rotate(10 if name == "rot+10" else -10, resample=Image.BICUBIC, fillcolor=(0, 0, 0, 0))
    flat = Image.new("RGB", out.size, WHITE)
    flat.paste(out, mask=out.getchannel("A"))
    return flat


def embed_one(tmp_path: Path, views: list[Path], augment: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    out = tmp_path / "a.npz"
    only(embed_assets([("A", cutout(tmp_path), views, out)], MOBILENET, augment=augment))
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


def render_views(tmp_path: Path) -> list[Path]:
    views = [tmp_path / f"az{a:03d}.png" for a in (0, 90)]
    product_photo("red-vase", size=(256, 256)).save(views[0])
    views[1].write_bytes(b"")  # a failed render stays marked
    return views


def test_augmentation_views_are_the_embeddings_of_the_transformed_cutout(tmp_path: Path) -> None:
    data = embed_one(tmp_path, render_views(tmp_path), AUGMENTS)
    assert data["views"].tolist() == ["az000", "az090", "mirror", "crop90", "rot+10", "rot-10"]
    assert data["vec3d"].shape == (6, 1280) and data["view_ok"].tolist() == [True, False, True, True, True, True]
    image = Image.open(tmp_path / "cut.png")
    expected = embed_images(MOBILENET, [by_hand(image, n) for n in AUGMENTS])
    np.testing.assert_allclose(data["vec3d"][2:], expected, atol=1e-4)
    # each differs from the cutout's own vector, and from the others: they are real transforms
    plain = embed_images(MOBILENET, [by_hand(image, "mirror").transpose(Image.Transpose.FLIP_LEFT_RIGHT)])[0]
    np.testing.assert_allclose(data["vec2d"], plain, atol=1e-4)
    assert all(not np.allclose(v, data["vec2d"], atol=1e-3) for v in data["vec3d"][2:])
    assert augment_image(image, "crop90").size == (230, 230) and augment_image(image, "rot-10").mode == "RGBA"


def test_off_by_default_in_the_stage_config_and_schema(tmp_path: Path) -> None:
    data = embed_one(tmp_path, render_views(tmp_path))
    assert data["views"].tolist() == ["az000", "az090"] and data["vec3d"].shape == (2, 1280)
    assert yaml.safe_load((REPO / "config.yaml").read_text())["embed"]["augment"] == []
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    assert schema["properties"]["embed"]["properties"]["augment"]["default"] == []


def test_unknown_augmentation_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown augmentation 'blur'"):
        embed_one(tmp_path, [], ("blur",))
    with pytest.raises(ValueError, match="repeated"):
        embed_key(MOBILENET, ["mirror", "mirror"])


def test_stage_key_changes_with_the_setting_and_not_when_off() -> None:
    plain = backend("embed", "mobilenetv2").key({"name": "mobilenetv2", "backend": "mobilenetv2", "model": "", "pooling": "cls"})
    assert embed_key(MOBILENET) == embed_key(MOBILENET, []) == plain   # off: the key of a build without it
    keys = [embed_key(MOBILENET, a) for a in ([], ["mirror"], ["mirror", "crop90"], ["crop90", "mirror"])]
    assert len({repr(k) for k in keys}) == 4
    rule = (REPO / "workflow/rules/embed.smk").read_text()
    assert "embed_key(spec, AUGMENT)" in rule and "augment=AUGMENT" in rule


def test_index_names_and_counts_the_augmentation_views(tmp_path: Path) -> None:
    data = embed_one(tmp_path, render_views(tmp_path), ("mirror", "rot+10"))
    manifest = build_index([Asset("A", "SKU-A", Path("a.jpg"))], [tmp_path / "a.npz"], tmp_path / "index", {}, dtype="float32")
    assert manifest["views"] == ["az000", "az090", "mirror", "rot+10"] and manifest["counts"]["views_per_asset"] == 4
    index = Index.load(tmp_path / "index")
    assert index.vec3d.shape == (1, 4, 1280)
    assert index.matched(data["vec3d"][3], "3d", np.array([0])) == ["rot+10"]


def test_2d_only_index_uses_the_augmentations_for_3d_and_max(tmp_path: Path) -> None:
    data = embed_one(tmp_path, [], ("mirror", "crop90"))
    assert data["views"].tolist() == ["mirror", "crop90"] and data["view_ok"].tolist() == [True, True]
    build_index([Asset("A", "SKU-A", Path("a.jpg"))], [tmp_path / "a.npz"], tmp_path / "index", {}, dtype="float32")
    index = Index.load(tmp_path / "index")
    assert index.vec3d.shape == (1, 2, 1280)
    query = data["vec3d"][0]   # the mirror's vector: it, not the cutout, gives the best score
    assert index.scores(query, "3d")[0] == pytest.approx(1.0, abs=1e-5)
    assert index.scores(query, "max")[0] == pytest.approx(1.0, abs=1e-5)
    assert index.scores(query, "2d")[0] < 1.0 - 1e-3
    assert index.matched(query, "max", np.array([0])) == ["mirror"]
    assert index.matched(data["vec3d"][1], "3d", np.array([0])) == ["crop90"]


@pytest.mark.parametrize(("augment", "ok"), [(["mirror", "rot-10"], True), (["blur"], False), (["rot+90"], False)])
def test_workflow_config_accepts_known_augmentations_only(tmp_path: Path, augment: list[str], ok: bool) -> None:
    from test_workflow import snakemake

    (tmp_path / "cat").mkdir()
    product_photo("red-vase").save(tmp_path / "cat" / "A.jpg")
    result = snakemake(tmp_path, "-n", config={"catalogue": str(tmp_path / "cat"), "render": {"views": 0},
                                                "embed": {"augment": augment}})
    assert (result.returncode == 0) is ok, result.stdout[-2000:] + result.stderr[-2000:]
    if not ok:
        assert "augment" in result.stdout + result.stderr


def test_pipeline_2d_only_with_augmentation_and_a_changed_setting_recomputes(tmp_path: Path) -> None:
    """End to end (render.views: 0): the views are the augmentations; changing the list re-embeds, off again too."""
    from test_refresh import job_counts
    from test_workflow import snakemake

    (tmp_path / "cat").mkdir()
    product_photo("red-vase").save(tmp_path / "cat" / "A.jpg")
    base = {"catalogue": str(tmp_path / "cat"), "render": {"views": 0}}
    first = snakemake(tmp_path, "--cores", "1", config={**base, "embed": {"augment": ["mirror", "rot+10"]}})
    assert first.returncode == 0, first.stderr[-3000:]
    with np.load(layout.embedding(tmp_path / "results", "mobilenetv2", "A")) as data:
        assert data["views"].tolist() == ["mirror", "rot+10"] and data["vec3d"].shape == (2, 1280)
    index = Index.load(tmp_path / "results" / "index" / "mobilenetv2")
    assert index.manifest["views"] == ["mirror", "rot+10"] and index.vec3d.shape[:2] == (1, 2)
    same = snakemake(tmp_path, "-n", config={**base, "embed": {"augment": ["mirror", "rot+10"]}})
    assert "embed-mobilenetv2" not in job_counts(same)
    for augment in (["mirror"], []):
        dry = snakemake(tmp_path, "-n", config={**base, "embed": {"augment": augment}})
        assert job_counts(dry).get("embed-mobilenetv2") == 1 and "cutout" not in job_counts(dry), augment
