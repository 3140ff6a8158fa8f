"""The `clip` embedding backend and search by text (`dam3d search --text`), with a tiny random CLIP.

The tiny CLIP (tiny_models.make_tiny_clip) has openai/clip-vit-base-patch32's classes and files
but random weights: these tests check the plumbing (the text tower's vector, in the index's
space, ranks SKUs exactly as the model's own cosine does), not retrieval quality.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, only, product_photo
from dam3d import cli
from dam3d.catalogue import Asset
from dam3d.search.index import FUSIONS, Index, build_index
from dam3d.stages.embed import ModelSpec, NoTextTower, embed_assets, embed_images, embed_texts, has_text_tower
from test_serve import _free_port, _hits, _toast, browser  # noqa: F401 - browser: the headless Chromium fixture
from tiny_models import make_tiny_clip

KINDS = ("red-vase", "blue-box", "green-lamp", "stripes")
TEXT = "red ceramic mug"
CONFIG = {"cutout": {"backend": "u2netp", "model": "briaai/RMBG-2.0", "size": 256, "margin": 0.08, "max_pixels": 50_000_000},
          "background": [255, 255, 255], "device": "cpu", "embed": {"batch_size": 4}, "search": {"k": 5, "fusion": "mean"}}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


def build(root: Path, spec: ModelSpec, *, pca: int = 0) -> Path:
    """An index of the KINDS (catalogue cutout + 3 'views': flipped, rotated, smaller) through the real embed stage."""
    assets, paths = [], []
    for kind in KINDS:
        folder = root / "assets" / kind
        folder.mkdir(parents=True, exist_ok=True)
        image = product_photo(kind)
        image.save(folder / "catalogue.png")
        views = [folder / f"az{a:03d}.png" for a in (0, 120, 240)]
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(views[0])
        image.rotate(10, fillcolor="white").save(views[1])
        product_photo(kind, size=(300, 260)).save(views[2])
        npz = root / "embed" / f"{kind}.npz"
        npz.parent.mkdir(parents=True, exist_ok=True)
        only(embed_assets([(kind, folder / "catalogue.png", views, npz)], spec, device="cpu"))
        assets.append(Asset(kind, kind.upper(), folder / "catalogue.png"))
        paths.append(npz)
    out = root / "results" / "index" / spec.name
    build_index(assets, paths, out, {"model": asdict(spec), "backends": {"cutout": "u2netp"}, "config": CONFIG}, pca=pca)
    return out


@pytest.fixture(scope="module")
def clip_index(clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("clip-index"), ModelSpec("tiny-clip", "clip", str(clip_dir)))


def own_text_vector(clip_dir: Path, text: str) -> np.ndarray:
    """The model's text features computed straight through transformers, L2-normalised: (D,) float64."""
    import torch
    from transformers import AutoTokenizer, CLIPModel

    model, tokenizer = CLIPModel.from_pretrained(clip_dir).eval(), AutoTokenizer.from_pretrained(clip_dir)
    with torch.no_grad():
        out = model.get_text_features(**tokenizer([text], padding=True, return_tensors="pt"))
    vector = (out if isinstance(out, torch.Tensor) else out.pooler_output)[0].double().numpy()
    return vector / np.linalg.norm(vector)


def own_scores(index_dir: Path, query: np.ndarray, fusion: str) -> np.ndarray:
    """Each SKU's score for `query` from the stored vectors, as README's fusions define it: (N,) float64."""
    index = Index.load(index_dir)   # the current build's vectors, as stored
    v2, v3, vm = (np.asarray(v).astype(np.float64) for v in (index.vec2d, index.vec3d, index.vecmean))
    s2, s3 = v2 @ query, np.einsum("nvd,d->nv", v3, query).max(axis=1)
    return {"2d": s2, "3d": s3, "mean": vm @ query, "max": np.maximum(s2, s3)}[fusion]


def test_image_tower_is_the_models_own(clip_dir: Path) -> None:
    import torch
    from transformers import AutoProcessor, CLIPModel

    images = [product_photo("red-vase"), product_photo("stripes")]
    vectors = embed_images(ModelSpec("t", "clip", str(clip_dir)), images, device="cpu")
    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), AutoProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        out = model.get_image_features(**processor(images=images, return_tensors="pt"))
    own = (out if isinstance(out, torch.Tensor) else out.pooler_output).numpy()
    assert vectors.shape == (2, 16) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, own / np.linalg.norm(own, axis=1, keepdims=True), atol=1e-5)


def test_text_vectors_are_normalised_and_tell_texts_apart(clip_dir: Path) -> None:
    spec = ModelSpec("t", "clip", str(clip_dir))
    assert has_text_tower(spec) and not has_text_tower(ModelSpec("m", "mobilenetv2"))
    vectors = embed_texts(spec, [TEXT, "blue box", TEXT], device="cpu")
    assert vectors.shape == (3, 16) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])
    np.testing.assert_allclose(vectors[0], own_text_vector(clip_dir, TEXT), atol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        embed_texts(spec, ["  "])


@pytest.mark.parametrize("fusion", FUSIONS)
def test_cli_text_search_ranks_by_the_models_own_cosine(clip_index: Path, clip_dir: Path, fusion: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["search", "--text", TEXT, "--fusion", fusion, "-k", str(len(KINDS)), "--json", "--index", str(clip_index)])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out)
    assert (result["query"], result["query_type"], result["fusion"]) == (TEXT, "text", fusion)
    scores = own_scores(clip_index, own_text_vector(clip_dir, TEXT), fusion)
    order = np.argsort(-scores, kind="stable")
    assert [h["sku"] for h in result["results"]] == [KINDS[i].upper() for i in order]
    assert [h["score"] for h in result["results"]] == pytest.approx(scores[order].tolist(), abs=1e-4)


def test_cli_text_search_plain_output_and_pca_index(clip_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    index_dir = build(tmp_path, ModelSpec("tiny-clip", "clip", str(clip_dir)), pca=8)
    assert cli.main(["search", "--text", TEXT, "--fusion", "2d", "--index", str(index_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f'query text "{TEXT}"  (index {index_dir}, model tiny-clip, fusion 2d')
    # the query is projected onto the index's PCA axes, as a photo's vector would be
    index = Index.load(index_dir)
    expected = index.search(embed_texts(ModelSpec("tiny-clip", "clip", str(clip_dir)), [TEXT])[0], k=4, fusion="2d")
    listed = [line.split()[2] for line in out.splitlines()[2:]]
    assert listed == [h["sku"] for h in expected]


def random_index(root: Path, spec: ModelSpec, *, dim: int = 8) -> Path:
    """An index of 3 SKUs with random vectors, recorded as built with `spec` (no model runs)."""
    rng = np.random.default_rng(0)
    assets, paths = [], []
    for i in range(3):
        vectors = rng.standard_normal((3, dim)).astype(np.float32)
        paths.append(root / f"{i}.npz")
        np.savez(paths[-1], vec2d=vectors[0], vec3d=vectors[1:], view_ok=np.ones(2, bool), views=np.array(["az000", "az180"]))
        assets.append(Asset(f"A{i}", f"SKU-{i}", root / f"{i}.jpg"))
    out = root / "results" / "index" / spec.name
    build_index(assets, paths, out, {"model": asdict(spec), "backends": {"cutout": "u2netp"}, "config": CONFIG})
    return out


def test_text_search_of_an_index_without_a_text_tower_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = random_index(tmp_path, ModelSpec("mobilenetv2", "mobilenetv2"))
    code = cli.main(["search", "--text", TEXT, "--index", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("dam3d: --text: model 'mobilenetv2' (backend mobilenetv2) has no text tower, so it cannot "
                          "search by text"), err
    with pytest.raises(NoTextTower, match="backend vit"):
        embed_texts(ModelSpec("vit-large", "vit", "google/vit-large-patch16-224"), [TEXT])
    assert cli.main(["search", "--text", " ", "--index", str(out)]) == 2   # (no tower comes first)


def test_photo_and_text_are_mutually_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as both:
        cli.main(["search", "photo.jpg", "--text", TEXT])
    assert both.value.code == 2 and "not allowed with" in capsys.readouterr().err
    with pytest.raises(SystemExit) as neither:
        cli.main(["search"])
    assert neither.value.code == 2 and "one of the arguments photo --text is required" in capsys.readouterr().err


# --------------------------------------------------------------------------- the web page's text box


@contextmanager
def serving(index_dir: Path, log: Path) -> Iterator[str]:
    """`dam3d serve` on `index_dir` in its own process; yields its URL once it answers."""
    port = _free_port()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dam3d.cli", "serve", "--index", str(index_dir), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    try:
        while True:
            assert proc.poll() is None, f"dam3d serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"dam3d serve did not answer on {url}:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _search_text(page, url: str, text: str) -> None:  # noqa: ANN001
    page.goto(url)
    box = page.locator("#text").locator("textarea, input").first
    box.wait_for()
    box.fill(text)
    box.press("Enter")


def test_page_text_box_searches_by_text(browser, clip_index: Path, clip_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    order = np.argsort(-own_scores(clip_index, own_text_vector(clip_dir, TEXT), "mean"), kind="stable")
    expected = [KINDS[i].upper() for i in order]
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    with serving(clip_index, tmp_path / "serve.log") as url:
        _search_text(page, url, TEXT)
        page.wait_for_function("() => document.querySelector('#status').innerText.includes('text embedding + search')",
                               timeout=60_000)
        deadline = time.monotonic() + 30
        while len(_hits(page)) != len(KINDS) and time.monotonic() < deadline:
            page.wait_for_timeout(200)
        hits = _hits(page)
        assert [h.splitlines()[0] for h in hits] == [f"{rank}. {sku}" for rank, sku in enumerate(expected, 1)], hits
        assert f"Top match {expected[0]}" in page.locator("#status").inner_text()
        assert "text tower of tiny-clip" in page.locator("#text").inner_text()
        # k searches the text again (the last query was the text, not a photo)
        page.locator("#k input[type=number]").fill("2")
        page.locator("#k input[type=number]").press("Enter")
        deadline = time.monotonic() + 30
        while len(_hits(page)) != 2 and time.monotonic() < deadline:
            page.wait_for_timeout(200)
        assert [h.splitlines()[0] for h in _hits(page)] == [f"1. {expected[0]}", f"2. {expected[1]}"]
    context.close()


def test_page_text_box_of_an_index_without_a_text_tower(browser, tmp_path: Path) -> None:  # noqa: ANN001
    index_dir = random_index(tmp_path, ModelSpec("mobilenetv2", "mobilenetv2"), dim=1280)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    with serving(index_dir, tmp_path / "serve.log") as url:
        _search_text(page, url, TEXT)
        message = _toast(page, "text tower")
        assert "model 'mobilenetv2' (backend mobilenetv2) has no text tower" in message, message
        assert "has no text tower" in page.locator("#text").inner_text()   # the box says so before any search
        assert _hits(page) == []
    context.close()


def test_search_app_text_query_in_process(clip_index: Path, clip_dir: Path, tmp_path: Path) -> None:
    from dam3d.search.serve import QueryError, SearchApp

    app = SearchApp(clip_index, warm_up=False)
    result = app.query_text(TEXT, k=2, fusion="max", where='sku != "RED-VASE"')
    scores = own_scores(clip_index, own_text_vector(clip_dir, TEXT), "max")
    order = [KINDS[i].upper() for i in np.argsort(-scores, kind="stable") if KINDS[i] != "red-vase"]
    assert result["cutout"] is None and result["matching"] == 3 and [h["sku"] for h in result["hits"]] == order[:2]
    with pytest.raises(QueryError, match="^Text: the text to search for is empty"):
        app.query_text("   ")
    with pytest.raises(QueryError, match="^Filter: unknown column 'brand'"):
        app.query_text(TEXT, where='brand == "x"')
    other = SearchApp(random_index(tmp_path, ModelSpec("vit-large", "vit", "google/vit-large-patch16-224")), warm_up=False)
    with pytest.raises(QueryError, match=r"^Text: model 'vit-large' \(backend vit\) has no text tower"):
        other.query_text(TEXT)
