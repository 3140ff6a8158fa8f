"""Colour descriptors (dam3d.search.colour) and the colour re-ranking of Index.search / evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dam3d.catalogue import Asset
from dam3d.evaluation.evaluate import LabelledQuery, evaluate_vectors
from dam3d.search.colour import (DEFAULT_BINS, colour_descriptor, rerank_keys, similarity,
                                 srgb_to_lab)
from dam3d.search.index import COLOUR_FILE, FUSIONS, Index, build_index


def cutout(rgb: tuple[int, int, int], size: int = 64, *, alpha: bool = True) -> Image.Image:
    """An RGBA cutout: a disc of one colour on a transparent (black) background."""
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    pixels = np.zeros((size, size, 4), dtype=np.uint8)
    pixels[inside, :3] = rgb
    pixels[inside, 3] = 255
    return Image.fromarray(pixels, "RGBA") if alpha else Image.fromarray(pixels[..., :3], "RGB")


RED, BLUE, WHITE, GREY, BLACK = (200, 30, 30), (30, 40, 200), (245, 245, 245), (128, 128, 128), (15, 15, 15)


def test_descriptor_shape_dtype_and_normalisation() -> None:
    d = colour_descriptor(cutout(RED))
    assert d.shape == (int(np.prod(DEFAULT_BINS)),) and d.dtype == np.float32
    assert d.sum() == pytest.approx(1.0, abs=1e-5) and (d >= 0).all()
    assert colour_descriptor(cutout(RED), bins=(2, 3, 3)).shape == (18,)
    # the transparent background does not count: the same colour on a bigger canvas, same descriptor
    np.testing.assert_allclose(colour_descriptor(cutout(RED, 96)), d, atol=0.02)
    # nothing opaque: no colour evidence, all zeros, and similarity 0 with anything
    assert colour_descriptor(cutout(RED), bins=(4, 8, 8)).shape == (256,)
    empty = colour_descriptor(Image.new("RGBA", (32, 32)))
    assert not empty.any() and similarity(empty, d[None])[0] == 0.0
    with pytest.raises(ValueError, match="bins"):
        colour_descriptor(cutout(RED), bins=(0, 8, 8))


def test_grey_and_white_objects_get_a_meaningful_descriptor() -> None:
    grey, white, red, blue = (colour_descriptor(cutout(c)) for c in (GREY, WHITE, RED, BLUE))
    middle = slice(DEFAULT_BINS[1] // 2 - 1, DEFAULT_BINS[1] // 2 + 1)
    for d in (grey, white):
        # achromatic: all the mass in the a*, b* bins around 0 (the middle two each way)
        assert d.sum() == pytest.approx(1.0, abs=1e-5)
        assert d.reshape(DEFAULT_BINS).sum(axis=0)[middle, middle].sum() > 0.99
        # ... so it matches an achromatic SKU, not a coloured one
        assert similarity(d, np.stack([red, blue, grey])).argmax() == 2
        assert similarity(d, np.stack([red, blue])).max() < 0.1


def test_with_lightness_bins_grey_white_and_black_are_told_apart() -> None:
    bins = (4, 8, 8)
    white, grey, black, red = (colour_descriptor(cutout(c), bins=bins) for c in (WHITE, GREY, BLACK, RED))
    for d in (white, grey, black):
        assert d.sum() == pytest.approx(1.0, abs=1e-5)
        mass_ab = d.reshape(bins).sum(axis=0)
        assert mass_ab[3:5, 3:5].sum() > 0.99
    # told apart by lightness: each is most like itself
    assert similarity(white, np.stack([white, grey, black])).argmax() == 0
    assert similarity(black, np.stack([white, grey, black])).argmax() == 2
    assert similarity(white, black[None])[0] < 0.1 and similarity(white, red[None])[0] < 0.1
    # a photo without alpha (the query where no object was found) counts every pixel
    assert colour_descriptor(Image.new("RGB", (16, 16), WHITE)).sum() == pytest.approx(1.0, abs=1e-5)


def test_srgb_to_lab_reference_values() -> None:
    lab = srgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0], [128, 128, 128]], dtype=np.uint8))
    # CIE L*a*b* (D65) of sRGB white, black, red (53.24, 80.09, 67.20) and mid grey (L* 53.59)
    np.testing.assert_allclose(lab[0], [100, 0, 0], atol=0.05)
    np.testing.assert_allclose(lab[1], [0, 0, 0], atol=0.05)
    np.testing.assert_allclose(lab[2], [53.24, 80.09, 67.20], atol=0.1)
    np.testing.assert_allclose(lab[3], [53.59, 0, 0], atol=0.05)
    skimage = pytest.importorskip("skimage.color")
    rgb = np.random.default_rng(0).integers(0, 256, size=(500, 3), dtype=np.uint8)
    np.testing.assert_allclose(srgb_to_lab(rgb), skimage.rgb2lab(rgb[None].astype(np.float64) / 255)[0], atol=0.05)


def two_equal_skus(tmp_path: Path, *, with_colours: bool = True) -> Index:
    """Three SKUs: A (red cutout) and B (blue cutout) with the same embedding, C elsewhere."""
    e = np.eye(4, dtype=np.float32)
    vectors = {"A": e[0], "B": e[0], "C": e[1]}
    assets, paths, cutouts = [], [], []
    for name, colour in (("A", RED), ("B", BLUE), ("C", WHITE)):
        np.savez(tmp_path / f"{name}.npz", vec2d=vectors[name], vec3d=np.stack([vectors[name]] * 2),
                 view_ok=np.array([True, True]), views=np.array(["az000", "az180"]), model=np.array("m"))
        cutout(colour).save(tmp_path / f"{name}.png")
        assets.append(Asset(name, f"SKU {name}", Path(f"{name}.jpg")))
        paths.append(tmp_path / f"{name}.npz")
        cutouts.append(tmp_path / f"{name}.png")
    out = tmp_path / "results" / "index" / "m"
    build_index(assets, paths, out, {"model": {"name": "m"}, "config": {"search": {"k": 5}}},
                cutouts=cutouts if with_colours else None)
    return Index.load(out)


def test_rerank_puts_the_sku_whose_colour_matches_first_and_weight_0_keeps_the_order(tmp_path: Path) -> None:
    index = two_equal_skus(tmp_path)
    assert index.colours is not None and index.colours.shape == (3, int(np.prod(DEFAULT_BINS)))
    assert index.manifest["colour"]["bins"] == list(DEFAULT_BINS) and (index.files / COLOUR_FILE).is_file()
    query = np.eye(4, dtype=np.float32)[0]
    blue = index.query_colour(cutout(BLUE, 80))
    red = index.query_colour(cutout(RED, 80))
    for fusion in FUSIONS:
        # equal scores: index order, A first, without colour or with weight 0
        assert [h["sku"] for h in index.search(query, k=3, fusion=fusion)] == ["SKU A", "SKU B", "SKU C"]
        assert [h["sku"] for h in index.search(query, k=3, fusion=fusion, colour=blue, colour_weight=0)] == \
            ["SKU A", "SKU B", "SKU C"]
        hits = index.search(query, k=2, fusion=fusion, colour=blue, colour_weight=0.2)
        assert [h["sku"] for h in hits] == ["SKU B", "SKU A"], fusion
        assert hits[0]["colour"] > 0.5 > hits[1]["colour"] and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
        assert index.search(query, k=1, fusion=fusion, colour=red, colour_weight=0.2)[0]["sku"] == "SKU A"
    # a small weight cannot lift a far worse embedding score: C (white, cosine 0) stays last for a white query
    white = index.query_colour(cutout(WHITE, 80))
    assert index.search(query, k=3, fusion="2d", colour=white, colour_weight=0.2)[-1]["sku"] == "SKU C"
    # the weight in the index's config is the default
    index.manifest.setdefault("config", {}).setdefault("search", {})["colour_weight"] = 0.2
    assert index.search(query, k=1, fusion="2d", colour=blue)[0]["sku"] == "SKU B"


def test_rerank_keys_agree_with_search_and_evaluation_counts_the_change(tmp_path: Path) -> None:
    index = two_equal_skus(tmp_path)
    query = np.eye(4, dtype=np.float32)[0][None]
    blue = index.query_colour(cutout(BLUE, 80))[None]
    scores = index.scores(query, "2d")
    np.testing.assert_array_equal(rerank_keys(scores, blue, index.colours, 0.0, 3), scores)
    assert rerank_keys(scores, blue, index.colours, 0.2, 3)[0].argmax() == 1
    queries = [LabelledQuery("q.jpg", tmp_path / "q.jpg", "SKU B")]
    off = evaluate_vectors(index, queries, query, fusions=["2d"])
    on = evaluate_vectors(index, queries, query, fusions=["2d"], colours=blue, colour_weight=0.2)
    assert off["2d"]["top1"] == 0.0 and "colour" not in off["2d"]
    assert on["2d"]["top1"] == 1.0 and on["2d"]["colour"]["delta"] == 1.0 and on["2d"]["colour"]["top1_off"] == 0.0


def test_an_index_without_colours_searches_as_before_and_says_so_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    index = two_equal_skus(tmp_path, with_colours=False)
    assert index.colours is None and index.manifest["colour"] is None and index.query_colour(cutout(RED)) is None
    query = np.eye(4, dtype=np.float32)[0]
    blue = colour_descriptor(cutout(BLUE))
    for _ in range(2):
        hits = index.search(query, k=2, fusion="max", colour=blue, colour_weight=0.5)
        assert [h["sku"] for h in hits] == ["SKU A", "SKU B"] and "colour" not in hits[0]
    assert capsys.readouterr().err.count("no colour descriptors") == 1
    # an index written before colour descriptors: no `colour` in its manifest at all
    manifest = json.loads((index.directory / "manifest.json").read_text())
    del manifest["colour"]
    (index.directory / "manifest.json").write_text(json.dumps(manifest))
    old = Index.load(index.directory)
    assert old.colours is None
    assert [h["sku"] for h in old.search(query, k=2, colour=blue, colour_weight=0.5)] == ["SKU A", "SKU B"]


def test_a_negative_weight_is_refused(tmp_path: Path) -> None:
    index = two_equal_skus(tmp_path)
    with pytest.raises(ValueError, match="colour weight"):
        index.search(np.eye(4, dtype=np.float32)[0], colour=colour_descriptor(cutout(RED)), colour_weight=-1)


def test_cli_evaluate_and_search_with_colour_weight(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--colour-weight` on `dam3d evaluate` and `dam3d search`, with the real cutout and model, on an index with colours."""
    from dataclasses import asdict

    from conftest import product_photo
    from dam3d import cli
    from dam3d.stages.cutout import cut_out, mask_fn
    from dam3d.stages.embed import ModelSpec, embed_images
    from dam3d.stages.images import flatten

    spec, mask = ModelSpec("mobilenetv2", "mobilenetv2"), mask_fn("u2netp", model="u2netp")
    assets, paths, cutouts, rows = [], [], [], [("query", "sku")]
    for i, kind in enumerate(("red-vase", "blue-box", "green-lamp")):
        cut = cut_out(product_photo(kind), kind, mask=mask, size=256, margin=0.08)
        cut.save(tmp_path / f"{kind}.png")
        flat = flatten(cut, (255, 255, 255))
        vecs = embed_images(spec, [flat, flat.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], device="cpu")
        np.savez(tmp_path / f"{kind}.npz", vec2d=vecs[0], vec3d=vecs[1:], view_ok=np.ones(1, bool), views=np.array(["az000"]))
        assets.append(Asset(kind, kind.upper(), tmp_path / f"{kind}.jpg"))
        paths.append(tmp_path / f"{kind}.npz")
        cutouts.append(tmp_path / f"{kind}.png")
        product_photo(kind, size=(420, 360), background=(190, 180, 160)).save(tmp_path / f"IMG_{i}.jpg", quality=85)
        rows.append((f"IMG_{i}.jpg", kind.upper()))
    (tmp_path / "queries.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
    config = {"cutout": {"backend": "u2netp", "model": "briaai/RMBG-2.0", "size": 256, "margin": 0.08, "max_pixels": 50_000_000},
              "background": [255, 255, 255], "device": "cpu", "embed": {"batch_size": 4}, "search": {"k": 5}}
    out = tmp_path / "results" / "index" / "mobilenetv2"
    build_index(assets, paths, out, {"model": asdict(spec), "backends": {"cutout": "u2netp"}, "config": config}, cutouts=cutouts)

    assert cli.main(["evaluate", str(tmp_path / "queries.csv"), "--index", str(out), "--json", "--colour-weight", "0.15"]) == 0
    report = json.loads(capsys.readouterr().out)
    for fusion in FUSIONS:
        assert report[fusion]["colour"]["weight"] == 0.15 and report[fusion]["top1"] == 1.0
    assert list((tmp_path / "results" / "cache" / "queries" / "mobilenetv2").glob("*.colour1-1x12x12.npy"))
    assert cli.main(["evaluate", str(tmp_path / "queries.csv"), "--index", str(out), "--json", "--colour-weight", "0"]) == 0
    assert "colour" not in json.loads(capsys.readouterr().out)["2d"]

    assert cli.main(["search", str(tmp_path / "IMG_1.jpg"), "--index", str(out), "--json", "--colour-weight", "0.15"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert hits[0]["sku"] == "BLUE-BOX" and hits[0]["colour"] > max(h["colour"] for h in hits[1:])

    # The human table shows what the order follows: score + weight x colour, in its `ranked` column.
    assert cli.main(["search", str(tmp_path / "IMG_1.jpg"), "--index", str(out), "--colour-weight", "0.15"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[1].split()
    assert header[:5] == ["rank", "score", "colour", "ranked", "sku"]
    table = [line.split() for line in lines[2:]]
    for row, hit in zip(table, hits, strict=True):
        assert row[4] == hit["sku"] and float(row[3]) == pytest.approx(hit["score"] + 0.15 * hit["colour"], abs=1e-3)
    ranked = [float(row[3]) for row in table]
    assert ranked == sorted(ranked, reverse=True)
    assert cli.main(["search", str(tmp_path / "IMG_1.jpg"), "--index", str(out), "--colour-weight", "0"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == ["rank", "score", "sku"]


def random_index(tmp_path: Path, n: int, *, ann_min_skus: int = 20_000) -> Index:
    """n SKUs of random 8-d vectors (2 views) and random one-colour cutouts."""
    rng = np.random.default_rng(0)
    assets, paths, cutouts = [], [], []
    for i in range(n):
        vec = rng.normal(size=8).astype(np.float32)
        np.savez(tmp_path / f"{i}.npz", vec2d=vec, vec3d=rng.normal(size=(2, 8)).astype(np.float32),
                 view_ok=np.array([True, True]), views=np.array(["az000", "az180"]))
        cutout(tuple(int(c) for c in rng.integers(0, 256, 3)), 32).save(tmp_path / f"{i}.png")
        assets.append(Asset(str(i), f"SKU{i}", Path(f"{i}.jpg")))
        paths.append(tmp_path / f"{i}.npz")
        cutouts.append(tmp_path / f"{i}.png")
    build_index(assets, paths, tmp_path / "i", {}, cutouts=cutouts, ann_min_skus=ann_min_skus)
    return Index.load(tmp_path / "i")


def test_rerank_keys_order_equals_the_searched_order(tmp_path: Path) -> None:
    """What evaluation ranks (rerank_keys) is what search returns, on random SKUs and colours."""
    index = random_index(tmp_path, 60)
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(10, 8)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    colours = index.colours[rng.integers(0, 60, 10)]
    for fusion in FUSIONS:
        keys = rerank_keys(index.scores(queries, fusion), colours, index.colours, 0.3, 50)
        for q in range(10):
            expected = [f"SKU{i}" for i in np.lexsort((np.arange(60), -keys[q]))[:5]]
            found = [h["sku"] for h in index.search(queries[q], k=5, fusion=fusion, colour=colours[q], colour_weight=0.3)]
            assert found == expected, (fusion, q)


def test_an_index_with_ann_graphs_re_ranks_as_exact_search(tmp_path: Path) -> None:
    """Through the graphs, colour re-ranking asks for as many candidates as it re-orders."""
    index = random_index(tmp_path, 400, ann_min_skus=100)
    assert index.ann() is not None
    rng = np.random.default_rng(2)
    for q in range(5):
        query = rng.normal(size=8).astype(np.float32)
        query /= np.linalg.norm(query)
        colour = index.colours[int(rng.integers(0, 400))]
        for fusion in FUSIONS:
            through = index.search(query, k=3, fusion=fusion, colour=colour, colour_weight=0.3)
            exact = index.search(query, k=3, fusion=fusion, colour=colour, colour_weight=0.3, exact=True)
            assert [h["sku"] for h in through] == [h["sku"] for h in exact], (fusion, q)


def test_cli_search_on_an_index_without_colours_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from dam3d import cli
    from dam3d.search.query import Choice, QueryObject

    index = two_equal_skus(tmp_path, with_colours=False)

    class FakeEncoder:   # no model: the query is A's (and B's) vector
        def __init__(self, index: Index) -> None:
            pass

        def encode_objects(self, photo: str, *, max_objects: int = 4) -> list[QueryObject]:
            return [QueryObject(None, None, Choice("cutout", "stand-in encoder"), (0, 0, 1, 1),  # type: ignore[arg-type]
                                np.eye(4, dtype=np.float32)[0])]

    monkeypatch.setattr(cli, "QueryEncoder", FakeEncoder)
    assert cli.main(["search", "photo.jpg", "--index", str(index.directory), "--json", "--colour-weight", "0.5"]) == 0
    out, err = capsys.readouterr()
    assert [h["sku"] for h in json.loads(out)["results"]][:2] == ["SKU A", "SKU B"]
    assert err.count("no colour descriptors") == 1
    assert cli.main(["search", "photo.jpg", "--index", str(index.directory), "--colour-weight", "0"]) == 0
    assert "colour" not in capsys.readouterr().err
