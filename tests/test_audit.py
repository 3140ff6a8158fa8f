"""`dam3d audit`: the catalogue's look-alike SKU pairs, per fusion, exact in blocks or through the ANN graphs."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dam3d.catalogue import Asset
from dam3d.cli import main as dam3d
from dam3d.runtime import layout
from dam3d.search.audit import Audit, audit, similarity
from dam3d.search.audit_page import page_html, write_audit
from dam3d.search.index import DEFAULT_FUSION, FUSIONS, Index, build_index

VIEWS, DIM = 4, 64


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def make_index(tmp_path: Path, vec2d: np.ndarray, vec3d: np.ndarray, *, ann_min_skus: int = 20_000,
               failed_views: dict[int, list[int]] | None = None) -> Index:
    """An index of SKUs `SKU-000`... with these vectors, laid out as a run's (RESULTS/index/m)."""
    assets, paths = [], []
    for i, (v2, v3) in enumerate(zip(vec2d, vec3d, strict=True)):
        ok = [j not in (failed_views or {}).get(i, []) for j in range(len(v3))]
        path = tmp_path / "embed" / f"S{i:03d}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, vec2d=v2, vec3d=v3, view_ok=np.array(ok), views=np.array([f"az{j:03d}" for j in range(len(v3))]),
                 model=np.array("m"))
        assets.append(Asset(f"S{i:03d}", f"SKU-{i:03d}", tmp_path / f"S{i:03d}.jpg"))
        paths.append(path)
    out = tmp_path / "results" / "index" / "m"
    build_index(assets, paths, out, {"model": {"name": "m"}}, ann_min_skus=ann_min_skus)
    return Index.load(out)


@pytest.fixture
def planted(tmp_path: Path) -> Index:
    """40 unrelated SKUs (random 64-d vectors: cosines ~0 +- 0.13) but SKU-007 and SKU-023, near-identical in every vector."""
    rng = np.random.default_rng(0)
    vec2d, vec3d = unit(rng.normal(size=(40, DIM))), unit(rng.normal(size=(40, VIEWS, DIM)))
    vec2d[23] = unit(vec2d[7] + 0.01 * rng.normal(size=DIM))
    vec3d[23] = unit(vec3d[7] + 0.01 * rng.normal(size=(VIEWS, DIM)))
    return make_index(tmp_path, vec2d, vec3d, failed_views={30: [1]})


def brute_force(index: Index, fusion: str) -> np.ndarray:
    """Every pair's similarity as the audit defines it, N x N, from the index's vectors (small indexes only)."""
    v2, vm, v3 = (np.asarray(v, dtype=np.float64) for v in (index.vec2d, index.vecmean, index.vec3d))
    by_view = np.einsum("avd,bvd->abv", v3, v3).mean(axis=2)   # same azimuth, averaged over the views
    return {"2d": v2 @ v2.T, "mean": vm @ vm.T, "3d": by_view, "max": np.maximum(v2 @ v2.T, by_view)}[fusion]


@pytest.mark.parametrize("fusion", FUSIONS)
def test_a_planted_duplicate_is_found_and_unrelated_skus_are_not(planted: Index, fusion: str) -> None:
    result = audit(planted, fusion)
    assert [(p.sku_a, p.sku_b) for p in result.pairs] == [("SKU-007", "SKU-023")]
    assert result.pairs[0].score > 0.99 and result.pairs[0].asset_a == "S007"
    assert result.fusion == fusion and result.method == "exact" and result.skus == 40
    unrelated = float(similarity(planted, fusion, np.array([3]), np.array([11]))[0, 0])
    assert unrelated < 0.5


@pytest.mark.parametrize("fusion", FUSIONS)
def test_scores_follow_the_documented_definition_in_any_block_size(planted: Index, fusion: str) -> None:
    expected = brute_force(planted, fusion)
    a, b = np.triu_indices(len(expected), 1)
    want = {(i, j): expected[i, j] for i, j in zip(a.tolist(), b.tolist()) if expected[i, j] >= 0.1}
    for block in (7, 40, 4096):   # partial blocks, one block, a block larger than the index
        got = audit(planted, fusion, threshold=0.1, k=40, block=block)
        assert {(p.a, p.b) for p in got.pairs} == set(want), block
        assert [p.score for p in got.pairs] == pytest.approx([want[(p.a, p.b)] for p in got.pairs], abs=1e-5)
        assert [p.score for p in got.pairs] == sorted((p.score for p in got.pairs), reverse=True)
        assert all(p.a < p.b for p in got.pairs)


def test_threshold_is_respected(tmp_path: Path) -> None:
    """Pairs at cosines 0.95, 0.85 and 0.75 in 2D: each threshold keeps exactly those at or above it."""
    rng = np.random.default_rng(1)
    base = np.linalg.qr(rng.normal(size=(DIM, DIM)))[0].T.astype(np.float32)   # orthonormal rows
    vec2d = list(base[:12])
    for i, cos in ((0, 0.95), (2, 0.85), (4, 0.75)):   # SKU 6+i/2 is SKU i turned by arccos(cos)
        vec2d[6 + i // 2] = unit(cos * base[i] + np.sqrt(1 - cos**2) * base[i + 1])
    index = make_index(tmp_path, np.stack(vec2d), np.zeros((12, 0, DIM), dtype=np.float32))   # 2D-only index
    for threshold, skus in ((0.9, ["SKU-006"]), (0.8, ["SKU-006", "SKU-007"]), (0.7, ["SKU-006", "SKU-007", "SKU-008"])):
        for fusion in FUSIONS:   # 2D-only: every fusion is the 2D one (mean: the same vector)
            pairs = audit(index, fusion, threshold=threshold).pairs
            assert [p.sku_b for p in pairs] == skus, (fusion, threshold)
            assert all(p.score >= threshold for p in pairs)
    # at or above: a pair just over the threshold is in, just under it is out
    assert [p.sku_b for p in audit(index, "2d", threshold=0.8499).pairs] == ["SKU-006", "SKU-007"]
    assert [p.sku_b for p in audit(index, "2d", threshold=0.8501).pairs] == ["SKU-006"]
    with pytest.raises(ValueError, match="between -1 and 1"):
        audit(index, "2d", threshold=1.5)
    with pytest.raises(ValueError, match="fusion"):
        audit(index, "median")


def test_k_caps_the_neighbours_each_sku_lists(tmp_path: Path) -> None:
    """Six near-copies of one product: with k=2 each SKU lists its 2 best, a pair once even if both list it."""
    rng = np.random.default_rng(2)
    centre = rng.normal(size=DIM)
    vec2d = unit(np.concatenate([centre + 0.05 * rng.normal(size=(6, DIM)), rng.normal(size=(10, DIM))]))
    index = make_index(tmp_path, vec2d, np.zeros((16, 0, DIM), dtype=np.float32))
    assert len(audit(index, "2d", k=10).pairs) == 15   # every pair of the six
    capped = audit(index, "2d", k=2).pairs
    scores = brute_force(index, "2d")[:6, :6]
    np.fill_diagonal(scores, -1)
    best2 = {(min(i, j), max(i, j)) for i in range(6) for j in np.argsort(-scores[i])[:2].tolist()}
    assert {(p.a, p.b) for p in capped} == best2 and len(capped) < 15


def test_views_alike_only_from_another_side_are_not_look_alikes_in_3d(tmp_path: Path) -> None:
    """Two SKUs whose side views match each other's back views (slivers) but not view for view: not a 3D pair."""
    rng = np.random.default_rng(3)
    vec2d, vec3d = unit(rng.normal(size=(8, DIM))), unit(rng.normal(size=(8, VIEWS, DIM)))
    vec3d[5, 1] = vec3d[2, 3]   # SKU 5's view 1 is SKU 2's view 3
    vec3d[5, 3] = vec3d[2, 1]
    index = make_index(tmp_path, vec2d, vec3d)
    assert audit(index, "3d", threshold=0.6).pairs == []
    vec3d[5] = unit(vec3d[2] + 0.05 * rng.normal(size=(VIEWS, DIM)))   # alike view for view: a pair
    index = make_index(tmp_path / "again", vec2d, vec3d)
    assert [(p.sku_a, p.sku_b) for p in audit(index, "3d", threshold=0.6).pairs] == [("SKU-002", "SKU-005")]
    assert audit(index, "2d", threshold=0.6).pairs == []   # their catalogue photos differ


def test_above_the_ann_threshold_the_graphs_give_the_candidates_and_the_same_pairs(tmp_path: Path) -> None:
    from dam3d.search.ann import AnnCandidates

    rng = np.random.default_rng(4)
    n, centres = 300, rng.normal(size=(15, DIM))   # clusters of look-alike products, as real catalogues have
    base = centres[np.arange(n) % 15] + 0.6 * rng.normal(size=(n, DIM))
    vec2d, vec3d = unit(base + 0.3 * rng.normal(size=(n, DIM))), unit(base[:, None] + 0.3 * rng.normal(size=(n, VIEWS, DIM)))
    vec2d[200], vec3d[200] = unit(vec2d[17] + 0.01 * rng.normal(size=DIM)), unit(vec3d[17] + 0.01 * rng.normal(size=(VIEWS, DIM)))
    index = make_index(tmp_path, vec2d, vec3d, ann_min_skus=100)
    assert AnnCandidates.available(index.files)
    for fusion in FUSIONS:
        ann, exact = audit(index, fusion, threshold=0.8, k=5), audit(index, fusion, threshold=0.8, k=5, exact=True)
        assert ann.method == "ann" and exact.method == "exact"
        assert ("SKU-017", "SKU-200") == (ann.pairs[0].sku_a, ann.pairs[0].sku_b), fusion
        assert len(exact.pairs) > 20, fusion   # the clusters give many pairs to compare
        assert [(p.a, p.b) for p in ann.pairs] == [(p.a, p.b) for p in exact.pairs], fusion
        assert [p.score for p in ann.pairs] == pytest.approx([p.score for p in exact.pairs], abs=1e-5)


def test_default_fusion_is_the_index_fusion(planted: Index) -> None:
    assert audit(planted).fusion == DEFAULT_FUSION == planted.fusion()


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_csv_and_page_are_written_atomically_and_name_every_pair(planted: Index, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (300, 200), (200, 30, 30)).save(tmp_path / "S007.jpg")   # one real catalogue photo
    result = audit(planted, "max", threshold=0.1, k=40)
    folder = tmp_path / "out"
    table, page = write_audit(result, planted, folder, max_pairs=3)
    assert (table, page) == (folder / "m.csv", folder / "m.html")
    rows = read_csv(table)
    assert list(rows[0]) == ["sku_a", "sku_b", "fusion", "score"] and len(rows) == len(result.pairs) > 3
    assert rows[0] == {"sku_a": "SKU-007", "sku_b": "SKU-023", "fusion": "max", "score": f"{result.pairs[0].score:.6f}"}
    assert len({(r["sku_a"], r["sku_b"]) for r in rows}) == len(rows)
    text = page.read_text()
    assert f"{len(result.pairs)} pairs found; the 3 most similar shown, every pair in m.csv." in text
    thumbs = re.findall(r"src='data:image/jpeg;base64,[^']+'", text)
    assert len(thumbs) == 6 and len(set(thumbs)) > 1   # the red photo of S007 beside grey tiles for missing photos
    assert not list(folder.glob(".*tmp*"))

    # A writer that dies before its rename leaves the previous files whole, and no temporary behind.
    import dam3d.runtime.atomic as atomic

    def crash(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_audit(audit(planted, "2d"), planted, folder)
    assert read_csv(table) == rows and page.read_text() == text
    assert not list(folder.glob(".*tmp*"))


def test_page_without_pairs_says_so(planted: Index) -> None:
    empty = Audit("2d", 0.999, 10, "exact", 40, [])
    assert "0 pairs found; all shown." in page_html(empty, planted, table="m.csv")
    assert "No pair reaches the threshold." in page_html(empty, planted, table="m.csv")


def test_cli_writes_the_audit_beside_the_index_and_prints_a_summary(planted: Index, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The README's `dam3d audit [--index DIR] [--fusion F] [--threshold 0.9] [--k 10] [--out DIR] [--json]`."""
    results = tmp_path / "results"
    assert dam3d(["audit", "--results", str(results), "--fusion", "3d", "--threshold", "0.9", "--k", "10", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pairs_found"] == 1 and report["fusion"] == "3d" and report["method"] == "exact"
    assert report["top_pairs"][0]["sku_a"] == "SKU-007" and report["top_pairs"][0]["sku_b"] == "SKU-023"
    assert report["csv"] == str(layout.audit_table(layout.audits(results), "m"))
    assert read_csv(Path(report["csv"]))[0]["fusion"] == "3d" and Path(report["html"]).is_file()

    assert dam3d(["audit", "--index", str(planted.directory), "--out", str(tmp_path / "elsewhere")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"1 look-alike pair(s) among 40 SKUs (index {planted.directory}, fusion mean: auto: default")
    assert re.search(r"^ *0\.99\d  SKU-007 +SKU-023$", out, re.M), out
    assert (tmp_path / "elsewhere" / "m.csv").is_file() and (tmp_path / "elsewhere" / "m.html").is_file()

    with pytest.raises(SystemExit):
        dam3d(["audit", "--index", str(planted.directory), "--threshold", "2"])
    assert "between -1 and 1" in capsys.readouterr().err
