from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dam3d.catalogue import Asset
from dam3d.search.index import FUSIONS, Index, build_index


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def write_npz(path: Path, vec2d: np.ndarray, vec3d: np.ndarray, ok: list[bool]) -> Path:
    np.savez(path, vec2d=vec2d, vec3d=vec3d, view_ok=np.array(ok), views=np.array(["az000", "az180"]), model=np.array("m"))
    return path


@pytest.fixture
def index(tmp_path: Path) -> Index:
    e = np.eye(4, dtype=np.float32)
    assets = [Asset("A", "SKU A", Path("a.jpg"), metadata={"brand": "x"}), Asset("B", "SKU B", Path("b.jpg"), metadata={"brand": "y"}),
              Asset("C", "SKU C", Path("c.jpg"), metadata={"brand": "z"}), Asset("D", "SKU D", Path("d.jpg"), metadata={"brand": "w"})]
    paths = [
        write_npz(tmp_path / "A.npz", e[0], np.stack([e[1], unit(e[0] + e[2])]), [True, True]),  # back view looks like axis 1
        write_npz(tmp_path / "B.npz", e[2], np.stack([unit(e[2] + 0.2 * e[1]), e[2]]), [True, True]),
        write_npz(tmp_path / "C.npz", unit(e[3] + 0.5 * e[1]), np.zeros((2, 4)), [False, False]),  # renders failed
        tmp_path / "D.npz",
    ]
    paths[3].write_bytes(b"")  # embedding failed
    # laid out as a run's: RESULTS/index/{model}/ (auto fusion looks beside it, in RESULTS/evaluate/)
    build_index(assets, paths, tmp_path / "results" / "index" / "m", {"model": {"name": "m"}})
    return Index.load(tmp_path / "results" / "index" / "m")


def test_manifest_and_assets(index: Index) -> None:
    m = index.manifest
    assert m["counts"] == {"assets": 4, "indexed": 3, "failed": 1, "with_views": 2, "views_per_asset": 2}
    assert m["failed_assets"] == ["D"] and m["dam3d_version"] and m["created"] and m["model"] == {"name": "m"}
    assert [a["sku"] for a in index.assets] == ["SKU A", "SKU B", "SKU C"]
    assert index.assets[0]["brand"] == "x"
    assert not list(index.directory.glob(".*tmp*"))


def test_fusions_rank_as_defined(index: Index) -> None:
    q = np.eye(4, dtype=np.float32)[1]  # looks like A's back view only
    assert index.search(q, k=1, fusion="max")[0]["sku"] == "SKU A"
    assert index.search(q, k=1, fusion="3d")[0]["sku"] == "SKU A"
    # From the front only, C (2D vector has some axis-1) wins.
    assert index.search(q, k=1, fusion="2d")[0]["sku"] == "SKU C"
    scores = {f: index.scores(q, f) for f in FUSIONS}
    np.testing.assert_allclose(scores["max"], np.maximum(scores["2d"], scores["3d"]), atol=1e-6)
    # mean: A's fused vector = normalise(e0 + normalise(mean(e1, (e0+e2)/√2)))
    mean3d = unit((np.eye(4)[1] + unit(np.eye(4)[0] + np.eye(4)[2])) / 2)
    expected = unit(np.eye(4)[0] + mean3d)
    assert scores["mean"][0] == pytest.approx(float(expected @ q), abs=1e-3)   # stored float16


def test_failed_renders_fall_back_to_2d(index: Index) -> None:
    q = unit(np.eye(4, dtype=np.float32)[3] + 0.5 * np.eye(4, dtype=np.float32)[1])
    for fusion in FUSIONS:
        assert index.search(q, k=1, fusion=fusion)[0]["sku"] == "SKU C", fusion
        assert index.search(q, k=1, fusion=fusion)[0]["score"] == pytest.approx(1.0, abs=1e-3)   # float16


def test_search_orders_and_limits(index: Index) -> None:
    hits = index.search(np.eye(4, dtype=np.float32)[2], k=10, fusion="max")
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    with pytest.raises(ValueError, match="fusion"):
        index.scores(np.eye(4, dtype=np.float32)[0], "median")


def test_all_failed_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "A.npz").write_bytes(b"")
    with pytest.raises(RuntimeError, match="every asset failed"):
        build_index([Asset("A", "A", Path("a.jpg"))], [tmp_path / "A.npz"], tmp_path / "i", {})
    assert not (tmp_path / "i" / "manifest.json").exists()


def test_missing_index_message(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="snakemake"):
        Index.load(tmp_path)


def test_choose_fusion_takes_the_best_top1_and_ties_go_to_2d() -> None:
    from dam3d.search.index import choose_fusion

    report = {"2d": {"top1": 0.7}, "3d": {"top1": 0.6}, "mean": {"top1": 0.7}, "max": {"top1": 0.65}}
    assert choose_fusion(report) == "2d"
    report["max"]["top1"] = 0.72
    assert choose_fusion(report) == "max"


def test_auto_fusion_follows_the_evaluation_of_this_very_build(index: Index, tmp_path: Path) -> None:
    import json

    from dam3d.runtime import layout
    from dam3d.search.index import DEFAULT_FUSION, manifest_digest

    assert index.fusion_source() == (DEFAULT_FUSION, "auto: default, no evaluation on labelled photos for this index")
    choice = layout.fusion_choice(index.results, index.directory.name)
    choice.parent.mkdir(parents=True)
    record = {"fusion": "max", "queries": 40, "index_manifest_sha1": manifest_digest(index.directory)}
    choice.write_text(json.dumps(record))
    fusion, source = index.fusion_source()
    assert fusion == "max" and "40 labelled photos" in source
    assert index.fusion("2d") == "2d"                        # the command's flag wins
    # an evaluation of an earlier build of the index is not this index's
    choice.write_text(json.dumps({**record, "index_manifest_sha1": "0" * 40}))
    assert index.fusion() == DEFAULT_FUSION
    # a fusion set in the index's config wins over auto
    manifest = json.loads((index.directory / "manifest.json").read_text())
    manifest["config"] = {"search": {"fusion": "3d"}}
    (index.directory / "manifest.json").write_text(json.dumps(manifest))
    assert Index.load(index.directory).fusion_source() == ("3d", "the index's config")


def clustered_index(tmp_path: Path, n: int, views: int, dim: int, *, ann_min_skus: int, seed: int = 0) -> Index:
    """An index of `n` SKUs whose vectors come in clusters (look-alike products), as real embeddings do."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(n // 20, 1), dim))
    assets, paths = [], []
    for i in range(n):
        base = centres[i % len(centres)] + 0.6 * rng.normal(size=dim)
        vec2d = unit(base + 0.3 * rng.normal(size=dim))
        vec3d = unit(base + 0.5 * rng.normal(size=(views, dim)))
        ok = [True] * views
        if i % 50 == 0:
            ok[-1] = False   # a failed view: 3d and max fall back to the 2D vector there
        path = tmp_path / f"S{i}.npz"
        np.savez(path, vec2d=vec2d, vec3d=vec3d, view_ok=np.array(ok), views=np.array([f"v{j}" for j in range(views)]),
                 model=np.array("m"))
        assets.append(Asset(f"S{i}", f"SKU {i}", Path(f"{i}.jpg")))
        paths.append(path)
    build_index(assets, paths, tmp_path / "results" / "index" / "m", {"model": {"name": "m"}}, ann_min_skus=ann_min_skus)
    return Index.load(tmp_path / "results" / "index" / "m")


def test_ann_search_returns_what_exact_search_returns_for_every_fusion(tmp_path: Path) -> None:
    from dam3d.search.ann import AnnCandidates

    index = clustered_index(tmp_path, 1500, 4, 48, ann_min_skus=1000)   # past the threshold: graphs are built
    assert AnnCandidates.available(index.files) and index.manifest["ann"]["vectors"] == "float16"
    rng = np.random.default_rng(1)
    # a customer photo of a catalogued product: one of its views plus noise of norm ~0.7 (cosine ~0.8)
    queries = unit(np.asarray(index.vec3d)[rng.integers(0, 1500, 40), 1] + 0.1 * rng.normal(size=(40, 48)))
    for fusion in FUSIONS:
        for q in queries:
            ann, exact = index.search(q, k=5, fusion=fusion), index.search(q, k=5, fusion=fusion, exact=True)
            assert [h["sku"] for h in ann] == [h["sku"] for h in exact], fusion
            assert [h["score"] for h in ann] == pytest.approx([h["score"] for h in exact], abs=1e-6)


def test_small_indexes_are_searched_exactly_and_a_rebuild_drops_stale_graphs(tmp_path: Path) -> None:
    from dam3d.search.ann import AnnCandidates

    big = clustered_index(tmp_path, 120, 2, 16, ann_min_skus=100)
    assert AnnCandidates.available(big.files)
    small = clustered_index(tmp_path, 120, 2, 16, ann_min_skus=120)   # at the threshold: exact only
    assert not AnnCandidates.available(small.files) and small.manifest["ann"] is None


def test_ann_index_with_k_near_or_past_its_size_is_exact_and_bad_k_is_refused(tmp_path: Path) -> None:
    index = clustered_index(tmp_path, 60, 2, 16, ann_min_skus=10)
    q = np.asarray(index.vec2d)[3]
    for fusion in FUSIONS:
        for k in (15, 60, 10**7):   # 4 k candidates would be all SKUs or more: scored exactly, capped at N
            assert index.search(q, k=k, fusion=fusion) == index.search(q, k=k, fusion=fusion, exact=True)
    assert len(index.search(q, k=10**7)) == 60
    with pytest.raises(ValueError, match="at least 1"):
        index.search(q, k=0)


@pytest.mark.parametrize("content", ['[1]', '"mean"', '{"fusion": "bogus", "index_manifest_sha1": "DIGEST"}',
                                     '{"index_manifest_sha1": "DIGEST"}', "{not json"])
def test_an_unusable_fusion_choice_falls_back_to_the_default_and_says_so(index: Index, content: str) -> None:
    from dam3d.runtime import layout
    from dam3d.search.index import DEFAULT_FUSION, manifest_digest

    choice = layout.fusion_choice(index.results, index.directory.name)
    choice.parent.mkdir(parents=True)
    choice.write_text(content.replace("DIGEST", manifest_digest(index.directory)))
    fusion, source = index.fusion_source()
    assert fusion == DEFAULT_FUSION and source.startswith("auto: default"), source


VIEWS = ["az000", "az120", "az240"]


def crafted_index(tmp_path: Path) -> Index:
    """Three SKUs in 6-d whose vectors are known: P's az120 view points along axis 1, Q's 2D vector along
    axis 2 and its views away from it, R's renders all failed (its views hold its 2D vector)."""
    e = np.eye(6, dtype=np.float32)
    specs = {
        "P": (unit(e[0] + 0.1 * e[5]), np.stack([unit(e[3] + e[4]), unit(e[1] + 0.05 * e[5]), unit(e[4] + 0.3 * e[1])]), [True] * 3),
        "Q": (unit(e[2] + 0.1 * e[4]), np.stack([unit(e[3] + 0.5 * e[2]), unit(e[5]), unit(e[2] + e[3])]), [True] * 3),
        "R": (unit(e[1] + e[2] + 0.2 * e[0]), np.zeros((3, 6), dtype=np.float32), [False] * 3),
    }
    assets, paths = [], []
    for name, (vec2d, vec3d, ok) in specs.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, vec2d=vec2d, vec3d=vec3d, view_ok=np.array(ok), views=np.array(VIEWS), model=np.array("m"))
        assets.append(Asset(name, f"SKU {name}", Path(f"{name}.jpg")))
        paths.append(path)
    build_index(assets, paths, tmp_path / "crafted", {"model": {"name": "m"}})
    return Index.load(tmp_path / "crafted")


def expected_matched(index: Index, query: np.ndarray, row: int, fusion: str) -> str:
    """What the test computes on its own: the argmax over the cutout (index 0) and the views of one SKU."""
    if fusion in ("2d", "mean"):
        return {"2d": "cutout", "mean": "fused"}[fusion]
    vec2d, vec3d = np.asarray(index.vec2d[row]), np.asarray(index.vec3d[row])
    if int(index.assets[row]["views_ok"]) == 0:
        return "cutout"
    candidates = np.concatenate([[vec2d @ query if fusion == "max" else -np.inf], vec3d @ query])
    best = int(np.argmax(candidates))
    return "cutout" if best == 0 else index.manifest["views"][best - 1]


def test_matched_names_the_view_or_cutout_that_gave_the_score(tmp_path: Path) -> None:
    index = crafted_index(tmp_path)
    assert index.manifest["views"] == VIEWS
    e = np.eye(6, dtype=np.float32)
    along1 = e[1]                                  # P's az120 view; R's 2D vector comes second
    by_sku = {h["sku"]: h["matched"] for h in index.search(along1, k=3, fusion="3d")}
    assert by_sku == {"SKU P": "az120", "SKU Q": expected_matched(index, along1, 1, "3d"), "SKU R": "cutout"}
    top = index.search(along1, k=1, fusion="max")[0]
    assert (top["sku"], top["matched"]) == ("SKU P", "az120")
    # Q's 2D vector beats its views for a query along axis 2: `max` says cutout, `3d` names its best view.
    along2 = unit(e[2] + 0.1 * e[4])
    q_max = next(h for h in index.search(along2, k=3, fusion="max") if h["sku"] == "SKU Q")
    q_3d = next(h for h in index.search(along2, k=3, fusion="3d") if h["sku"] == "SKU Q")
    assert q_max["matched"] == "cutout" and q_max["score"] == pytest.approx(1.0, abs=1e-3)
    assert q_3d["matched"] == "az240" and q_3d["score"] == pytest.approx(float(index.vec3d[1, 2] @ along2), abs=1e-6)
    assert {h["matched"] for h in index.search(along2, k=3, fusion="2d")} == {"cutout"}
    assert {h["matched"] for h in index.search(along2, k=3, fusion="mean")} == {"fused"}
    # Any query: every hit names the argmax the test computes from the vectors.
    rng = np.random.default_rng(3)
    for q in unit(rng.normal(size=(30, 6)).astype(np.float32)):
        for fusion in FUSIONS:
            for hit in index.search(q, k=3, fusion=fusion):
                row = [a["sku"] for a in index.assets].index(hit["sku"])
                assert hit["matched"] == expected_matched(index, q, row, fusion), (fusion, hit)


def test_matched_on_the_ann_path_is_the_exact_argmax(tmp_path: Path) -> None:
    index = clustered_index(tmp_path, 300, 4, 16, ann_min_skus=100)
    rng = np.random.default_rng(5)
    queries = unit(np.asarray(index.vec3d)[rng.integers(0, 300, 15), 2] + 0.1 * rng.normal(size=(15, 16)))
    names = set(index.manifest["views"])
    for fusion in ("3d", "max"):
        seen = set()
        for q in queries:
            ann = index.search(q, k=5, fusion=fusion)
            exact = index.search(q, k=5, fusion=fusion, exact=True)
            # The same hits; scores equal up to float32 summation order (blocks vs candidate rows).
            assert [(h["sku"], h["matched"]) for h in ann] == [(h["sku"], h["matched"]) for h in exact]
            assert [h["score"] for h in ann] == pytest.approx([h["score"] for h in exact], abs=1e-6)
            for hit in ann:
                row = int(hit["asset_id"][1:])
                assert hit["matched"] == expected_matched(index, q, row, fusion)
                seen.add(hit["matched"])
        assert seen & names, fusion          # the views do win somewhere


def clustered_embeddings(tmp_path: Path, n: int, views: int, dim: int, *, seed: int = 0,
                         rank: int | None = None) -> tuple[list[Asset], list[Path]]:
    """Per-asset .npz embeddings of `n` SKUs in clusters; with `rank`, every vector lies in one rank-`rank` subspace."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, rank or dim)))[0].T   # (rank, dim), orthonormal rows
    centres = rng.normal(size=(max(n // 10, 1), len(basis)))
    assets, paths = [], []
    for i in range(n):
        base = centres[i % len(centres)] + 0.6 * rng.normal(size=len(basis))
        vec2d = unit((base + 0.3 * rng.normal(size=len(basis))) @ basis)
        vec3d = unit((base + 0.5 * rng.normal(size=(views, len(basis)))) @ basis)
        path = tmp_path / "embed" / f"S{i}.npz"
        path.parent.mkdir(exist_ok=True)
        np.savez(path, vec2d=vec2d, vec3d=vec3d, view_ok=np.array([True] * views),
                 views=np.array([f"v{j}" for j in range(views)]), model=np.array("m"))
        assets.append(Asset(f"S{i}", f"SKU {i}", Path(f"{i}.jpg")))
        paths.append(path)
    return assets, paths


def test_float16_is_the_default_and_ranks_as_float32_for_every_fusion(tmp_path: Path) -> None:
    """float16 storage moves a unit vector's cosine by at most ~5e-4 (half a float16 ulp, relative): every
    ranking whose float32 scores are 2e-3 apart or more comes out the same."""
    assets, paths = clustered_embeddings(tmp_path, 300, 4, 64)
    build_index(assets, paths, tmp_path / "f32", {}, dtype="float32")
    build_index(assets, paths, tmp_path / "f16", {})
    f32, f16 = Index.load(tmp_path / "f32"), Index.load(tmp_path / "f16")
    assert f16.manifest["vectors"]["dtype"] == "float16" and f32.manifest["vectors"]["dtype"] == "float32"
    assert {v.dtype for v in (f16.vec2d, f16.vec3d, f16.vecmean)} == {np.dtype(np.float16)}
    assert isinstance(f16.vec3d, np.memmap)
    from dam3d.search.store import vector_file

    def stored(index: Index, name: str) -> int:
        return vector_file(index.directory / index.manifest["vectors"]["store"]["folder"], name).stat().st_size

    for name in ("2d", "3d", "mean"):
        assert stored(f16, name) == 300 * f16.manifest["vectors"]["bytes_per_sku"][name]
        assert stored(f16, name) == 0.5 * stored(f32, name)
    assert f16.manifest["vectors"]["bytes_per_sku"] == {"2d": 64 * 2, "3d": 4 * 64 * 2, "mean": 64 * 2}
    rng = np.random.default_rng(3)
    queries = unit(np.asarray(f32.vec3d)[rng.integers(0, 300, 60), 1] + 0.1 * rng.normal(size=(60, 64)))
    for fusion in FUSIONS:
        s32, s16 = f32.scores(queries, fusion), f16.scores(queries, fusion)
        assert s16.dtype == np.float32
        np.testing.assert_allclose(s16, s32, atol=1e-3)
        compared = 0
        for q, row in zip(queries, s32, strict=True):
            top = np.sort(row)[::-1][:11]
            if np.all(np.diff(-top) > 2e-3):   # no near-tie in the top 10 (nor at its edge)
                compared += 1
                assert [h["sku"] for h in f16.search(q, k=10, fusion=fusion)] == [h["sku"] for h in f32.search(q, k=10, fusion=fusion)]
        assert compared >= 20, (fusion, compared)   # the data leaves enough unambiguous rankings to compare


def test_pca_index_projects_the_queries_and_scores_as_brute_force_in_the_reduced_space(tmp_path: Path) -> None:
    assets, paths = clustered_embeddings(tmp_path, 150, 3, 32, rank=6)   # the vectors span 6 of 32 dimensions
    build_index(assets, paths, tmp_path / "pca", {}, pca=6, ann_min_skus=100)   # with ANN graphs, in the reduced space
    build_index(assets, paths, tmp_path / "full", {}, dtype="float32")
    index, full = Index.load(tmp_path / "pca"), Index.load(tmp_path / "full")
    record = index.manifest["vectors"]
    assert record["dim"] == 6 and record["input_dim"] == 32 and record["pca"]["dim"] == 6
    assert record["pca"]["explained_variance"] == pytest.approx(1.0, abs=1e-5) and record["pca"]["fitted_on"] == 150 * 4
    components = np.load(index.directory / index.manifest["vectors"]["store"]["folder"] / "pca_components.npy")
    np.testing.assert_array_equal(components, index.pca_components)
    assert components.shape == (6, 32)
    np.testing.assert_allclose(components @ components.T, np.eye(6), atol=1e-5)
    assert index.vec2d.shape == (150, 6) and index.vec3d.shape == (150, 3, 6) and index.vecmean.shape == (150, 6)
    rng = np.random.default_rng(4)
    queries = unit(np.asarray(full.vec3d)[rng.integers(0, 150, 20), 0] + 0.05 * rng.normal(size=(20, 32)))
    projected = unit(queries @ components.T)
    v2, v3, vm = (np.asarray(v, dtype=np.float32) for v in (index.vec2d, index.vec3d, index.vecmean))
    brute = {"2d": projected @ v2.T, "3d": np.einsum("qd,nvd->qnv", projected, v3).max(axis=2), "mean": projected @ vm.T}
    brute["max"] = np.maximum(brute["2d"], brute["3d"])
    for fusion in FUSIONS:
        np.testing.assert_allclose(index.scores(queries, fusion), brute[fusion], atol=1e-5)
        for q, row in zip(queries, brute[fusion], strict=True):
            want = sorted(range(150), key=lambda i: (-row[i], i))[:5]
            assert [h["asset_id"] for h in index.search(q, k=5, fusion=fusion, exact=True)] == [f"S{i}" for i in want]
            # through the graphs: the same hits; scores to float32 rounding (BLAS kernels sum a subset's dot
            # products in another order on some CPUs, e.g. AVX-512, than the whole catalogue's)
            graphs, exact = index.search(q, k=5, fusion=fusion), index.search(q, k=5, fusion=fusion, exact=True)
            assert [{**h, "score": None} for h in graphs] == [{**h, "score": None} for h in exact]
            assert [h["score"] for h in graphs] == pytest.approx([h["score"] for h in exact], abs=1e-6)
        # nothing is lost when the vectors (and the query) span no more dimensions than are kept
        within = unit(queries @ components.T @ components)
        np.testing.assert_allclose(index.scores(within, fusion), full.scores(within, fusion), atol=2e-3)
    with pytest.raises(ValueError, match="32"):
        index.scores(projected, "2d")   # queries come at the model's dimension


def test_pca_off_by_default_and_a_bad_setting_is_refused(tmp_path: Path) -> None:
    assets, paths = clustered_embeddings(tmp_path, 20, 2, 8)
    manifest = build_index(assets, paths, tmp_path / "i", {})
    assert manifest["vectors"]["pca"] is None and not (tmp_path / "i" / manifest["vectors"]["store"]["folder"] / "pca_components.npy").exists()
    assert Index.load(tmp_path / "i").pca_components is None
    with pytest.raises(ValueError, match="index.pca"):
        build_index(assets, paths, tmp_path / "i", {}, pca=8)
    with pytest.raises(ValueError, match="index.dtype"):
        build_index(assets, paths, tmp_path / "i", {}, dtype="int4")


def test_an_index_built_before_compact_vectors_loads_and_searches(tmp_path: Path) -> None:
    """An older index: float32 .npy files, no `vectors` in its manifest."""
    import json

    assets, paths = clustered_embeddings(tmp_path, 40, 2, 16)
    build_index(assets, paths, tmp_path / "new", {}, dtype="float32")
    old = tmp_path / "old"
    old.mkdir()
    (old / "assets.parquet").write_bytes((Index.load(tmp_path / "new").files / "assets.parquet").read_bytes())
    written = Index.load(tmp_path / "new")
    for name, vectors in (("2d", written.vec2d), ("3d", written.vec3d), ("mean", written.vecmean)):
        np.save(old / f"vectors_{name}.npy", np.asarray(vectors))   # as the versions before stores wrote them
    manifest = json.loads((tmp_path / "new" / "manifest.json").read_text())
    del manifest["vectors"], manifest["data"]   # files at the top of the folder, as before data folders
    (old / "manifest.json").write_text(json.dumps(manifest))
    index, new = Index.load(old), Index.load(tmp_path / "new")
    assert index.vec3d.dtype == np.float32 and index.pca_components is None
    q = unit(np.asarray(new.vec2d)[7] + 0.1)
    for fusion in FUSIONS:
        assert index.search(q, k=5, fusion=fusion) == new.search(q, k=5, fusion=fusion)
        assert index.search(q, k=1, fusion=fusion)[0]["sku"] == "SKU 7"


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_scores_in_blocks_of_skus_equal_scores_in_one(tmp_path: Path, dtype: str) -> None:
    assets, paths = clustered_embeddings(tmp_path, 103, 3, 16)
    build_index(assets, paths, tmp_path / "i", {}, dtype=dtype)
    index = Index.load(tmp_path / "i")
    rng = np.random.default_rng(5)
    queries = unit(rng.normal(size=(9, 16)))
    rows = rng.permutation(103)[:50]
    for fusion in FUSIONS:
        whole = index.scores(queries, fusion, block=10**6)
        for block, chunk in ((1, 256), (7, 2), (50, 4)):
            np.testing.assert_allclose(index.scores(queries, fusion, block=block, chunk=chunk), whole, atol=1e-6)   # BLAS rounding
            np.testing.assert_allclose(index.scores(queries, fusion, block=block, chunk=chunk, rows=rows), whole[:, rows], atol=1e-6)


def test_scores_never_convert_more_than_a_block_of_skus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A million-SKU index never needs its (N, V, D) vectors in memory at once: scores read a block at a time."""
    import dam3d.search.index as module

    assets, paths = clustered_embeddings(tmp_path, 64, 4, 32)
    build_index(assets, paths, tmp_path / "i", {})
    index = Index.load(tmp_path / "i")
    monkeypatch.setattr(module, "SCORE_BLOCK_BYTES", 4 * 32 * 4 * 10)   # 10 SKUs' views in float32
    read: list[int] = []

    class Spy(np.ndarray):
        def __getitem__(self, key):  # noqa: ANN001, ANN204
            part = np.asarray(self)[key]
            read.append(len(part))
            return part

    index.vec3d = np.asarray(index.vec3d).view(Spy)
    q = unit(np.ones(32, dtype=np.float32))
    np.testing.assert_allclose(index.scores(q, "3d"), index.scores(q, "3d", block=64), atol=0)
    assert read[: len(read) - 1] and max(read[:7]) == 10 and sum(read[:7]) == 64


def test_float16_is_read_as_the_same_float32_values() -> None:
    from dam3d.search.index import as_float32

    every = np.arange(2**16, dtype=np.uint16).view(np.float16).reshape(256, 16, 16)
    got = as_float32(every[::3])   # not contiguous, as a block of rows picked from an index may be
    assert got.dtype == np.float32 and got.shape == (86, 16, 16)
    np.testing.assert_array_equal(got, every[::3].astype(np.float32))   # NaNs included (equal_nan)
