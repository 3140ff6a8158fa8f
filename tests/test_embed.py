from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import only, product_photo
from dam3d.stages.embed import ModelSpec, embed_assets, embed_images, resolve_models
from tiny_models import make_tiny_vit

PRESETS = {
    "vit-large": {"backend": "vit", "model": "google/vit-large-patch16-224-not-cached", "pooling": "cls"},
    "mobilenetv2": {"backend": "mobilenetv2"},
}
MOBILENET = ModelSpec("mobilenetv2", "mobilenetv2")


def test_mobilenetv2_offline_weights_are_real() -> None:
    # Same product, shifted and rescaled, must be closer than a different product:
    # an untrained network would not separate them reliably.
    a = product_photo("red-vase")
    a_moved = product_photo("red-vase", size=(420, 380), background=(235, 235, 235))
    b = product_photo("stripes")
    vectors = embed_images(MOBILENET, [a, a_moved, b])
    assert vectors.shape == (3, 1280) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.1


def test_batching_does_not_change_vectors() -> None:
    images = [product_photo(k) for k in ("red-vase", "blue-box", "green-lamp")]
    np.testing.assert_allclose(embed_images(MOBILENET, images, batch_size=1), embed_images(MOBILENET, images), atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "mean", "max"])
def test_vit_backend_loads_with_automodel_and_pools(tmp_path: Path, pooling: str) -> None:
    folder = make_tiny_vit(tmp_path / "tiny-vit")
    spec = ModelSpec("tiny", "vit", str(folder), pooling)
    vectors = embed_images(spec, [product_photo("red-vase"), product_photo("blue-box")], batch_size=1)
    assert vectors.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_vit_poolings_differ(tmp_path: Path) -> None:
    folder = str(make_tiny_vit(tmp_path / "tiny-vit"))
    image = [product_photo("green-lamp")]
    cls, mean, mx = (embed_images(ModelSpec("t", "vit", folder, p), image)[0] for p in ("cls", "mean", "max"))
    assert not np.allclose(cls, mean) and not np.allclose(mean, mx)


def test_auto_resolves_to_the_target_when_available_else_offline(tmp_path: Path) -> None:
    assert [s.name for s in resolve_models(["auto"], PRESETS)] == ["mobilenetv2"]
    with pytest.raises(RuntimeError, match="strict"):
        resolve_models(["auto"], PRESETS, strict=True)
    local = dict(PRESETS, **{"vit-large": {"backend": "vit", "model": str(make_tiny_vit(tmp_path / "v")), "pooling": "cls"}})
    assert [s.name for s in resolve_models(["auto", "mobilenetv2"], local)] == ["vit-large", "mobilenetv2"]
    with pytest.raises(ValueError, match="unknown model 'clip'"):
        resolve_models(["clip"], PRESETS)


def test_embed_asset_marks_failed_views(tmp_path: Path) -> None:
    cutout = tmp_path / "cut.png"
    product_photo("blue-box").convert("RGBA").save(cutout)
    views = [tmp_path / f"az{a:03d}.png" for a in (0, 45, 90)]
    product_photo("blue-box", size=(256, 256)).save(views[0])
    views[1].write_bytes(b"")  # placeholder of a failed render
    product_photo("blue-box", size=(200, 256)).save(views[2])
    only(embed_assets([("BOX", cutout, views, tmp_path / "box.npz")], MOBILENET))
    data = np.load(tmp_path / "box.npz")
    assert data["vec2d"].shape == (1280,) and data["vec3d"].shape == (3, 1280)
    assert data["view_ok"].tolist() == [True, False, True]
    assert not data["vec3d"][1].any() and data["views"].tolist() == ["az000", "az045", "az090"]
