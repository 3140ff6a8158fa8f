"""Evaluation (dam3d.evaluation.evaluate, `dam3d evaluate`), its report files, and the benchmark generator (`dam3d bench make`)."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, product_photo
from dam3d import cli
from dam3d.catalogue import Asset
from dam3d.evaluation.evaluate import LabelledQuery, bootstrap_interval, evaluate_vectors, read_queries
from dam3d.search.index import FUSIONS, Index, build_index


def unit(v) -> np.ndarray:  # noqa: ANN001
    v = np.asarray(v, dtype=np.float32)
    return (v / np.linalg.norm(v)).astype(np.float32)


def write_npz(path: Path, vec2d: np.ndarray, views: list[np.ndarray]) -> Path:
    np.savez(path, vec2d=vec2d, vec3d=np.stack(views), view_ok=np.ones(len(views), bool),
             views=np.array([f"az{i:03d}" for i in range(len(views))]))
    return path


# --------------------------------------------------------------------------- maths on a hand-built index

E = np.eye(4, dtype=np.float32)


@pytest.fixture
def hand_index(tmp_path: Path) -> Index:
    """A: front e0, views e1. B: front e1, views e2. C: front ~e2, views 0.8 e0 + 0.6 e3."""
    assets = [Asset("A", "SKU A", Path("a.jpg")), Asset("B", "SKU B", Path("b.jpg")), Asset("C", "SKU C", Path("c.jpg"))]
    paths = [
        write_npz(tmp_path / "A.npz", E[0], [E[1], E[1]]),
        write_npz(tmp_path / "B.npz", E[1], [E[2], E[2]]),
        write_npz(tmp_path / "C.npz", unit(E[2] + 0.1 * E[3]), [unit(0.8 * E[0] + 0.6 * E[3])] * 2),
    ]
    build_index(assets, paths, tmp_path / "index", {"model": {"name": "m"}})
    return Index.load(tmp_path / "index")


# Queries and the rank of their SKU per fusion, worked out by hand from the cosines:
# q1 (SKU A) 0.9 e0 + 0.4 e1 + 0.1 e2: 2d A .91 > B .40 -> 1; 3d C .73 > A .40 -> 2; max A .91 -> 1; mean A .93 -> 1
# q2 (asset id B) .3 e0 + .5 e1 + .8 e2 + .1 e3: 2d C .81 > B .50 -> 2; 3d B .80 -> 1; max C .81 > B .80 -> 2; mean B .92 -> 1
# q3 (GHOST, not in the index): a miss everywhere
# q4 (SKU C) e3: C is the only SKU with any e3 -> 1 everywhere
HAND_QUERIES = [
    (LabelledQuery("q1.jpg", Path("q1.jpg"), "SKU A"), unit([0.9, 0.4, 0.1, 0.0])),
    (LabelledQuery("q2.jpg", Path("q2.jpg"), "B"), unit([0.3, 0.5, 0.8, 0.1])),
    (LabelledQuery("q3.jpg", Path("q3.jpg"), "GHOST"), E[0]),
    (LabelledQuery("q4.jpg", Path("q4.jpg"), "SKU C"), E[3]),
]
HAND_RANKS = {"2d": [1, 2, None, 1], "3d": [2, 1, None, 1], "max": [1, 2, None, 1], "mean": [1, 1, None, 1]}


def test_topk_per_fusion_on_hand_built_index(hand_index: Index) -> None:
    queries = [q for q, _ in HAND_QUERIES]
    vectors = np.stack([v for _, v in HAND_QUERIES])
    report = evaluate_vectors(hand_index, queries, vectors)
    assert list(report) == list(FUSIONS)
    for fusion, ranks in HAND_RANKS.items():
        r = report[fusion]
        assert r["n"] == 4
        for k in (1, 3, 5):
            assert r[f"top{k}"] == pytest.approx(sum(1 for x in ranks if x is not None and x <= k) / 4), (fusion, k)
        assert r["absent"] == ["GHOST"]
        lo, hi = r["top1_ci95"]
        assert 0.0 <= lo <= r["top1"] <= hi <= 1.0
    assert report["2d"]["top1"] == 0.5 and report["mean"]["top1"] == 0.75 and report["3d"]["top3"] == 0.75
    # Paired difference with 2D: mean wins q2 where 2d does not, loses nothing.
    assert "top1_vs_2d" not in report["2d"]
    assert report["mean"]["top1_vs_2d"]["delta"] == pytest.approx(0.25)
    lo, hi = report["mean"]["top1_vs_2d"]["ci95"]
    assert 0.0 <= lo <= 0.25 <= hi <= 1.0
    assert report["max"]["top1_vs_2d"]["delta"] == 0.0
    # Worst confusions: what came first instead of the expected SKU.
    pairs = {(c["expected"], c["predicted"]) for c in report["2d"]["confusions"]}
    assert pairs == {("B", "SKU C"), ("GHOST", "SKU A")}
    assert {(c["expected"], c["predicted"]) for c in report["3d"]["confusions"]} == {("SKU A", "SKU C"), ("GHOST", "SKU C")}
    assert report["2d"]["worst"][0] == {"query": "q3.jpg", "expected": "GHOST", "rank": None, "predicted": "SKU A",
                                        "score": pytest.approx(1.0)}


def test_ranks_agree_with_search(hand_index: Index) -> None:
    """The batched scoring must rank exactly as `dam3d search` does, query by query."""
    rng = np.random.default_rng(3)
    vectors = np.stack([unit(v) for v in rng.normal(size=(12, 4))])
    labels = [hand_index.assets[i % 3]["sku"] for i in range(12)]
    queries = [LabelledQuery(f"r{i}", Path(f"r{i}"), s) for i, s in enumerate(labels)]
    report = evaluate_vectors(hand_index, queries, vectors)
    for fusion in FUSIONS:
        ranks = [[h["sku"] for h in hand_index.search(v, k=3, fusion=fusion)].index(s) + 1 for v, s in zip(vectors, labels)]
        assert report[fusion]["top1"] == pytest.approx(sum(r == 1 for r in ranks) / 12), fusion
        assert report[fusion]["top3"] == 1.0


def test_bootstrap_interval_is_fixed_and_sensible() -> None:
    hits = np.array([1.0] * 30 + [0.0] * 70)
    lo, hi = bootstrap_interval(hits)
    assert (lo, hi) == bootstrap_interval(hits)  # fixed seed
    assert 0.2 < lo < 0.3 < hi < 0.4
    assert bootstrap_interval(np.ones(5)) == (1.0, 1.0)


def test_read_queries_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("image,label\na.jpg,X\n")
    with pytest.raises(ValueError, match="query,sku"):
        read_queries(tmp_path / "bad.csv")
    (tmp_path / "missing.csv").write_text("query,sku\nnope.jpg,X\n")
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        read_queries(tmp_path / "missing.csv")


# --------------------------------------------------------------------------- real photos through the CLI


def real_index(root: Path, kinds: list[str]) -> Path:
    """An index of product photos built with the real u2netp cutout and MobileNetV2 (views: flipped/rotated cutouts)."""
    from dam3d.stages.cutout import cut_out, mask_fn
    from dam3d.stages.embed import ModelSpec, embed_images
    from dam3d.stages.images import flatten

    spec = ModelSpec("mobilenetv2", "mobilenetv2")
    mask = mask_fn("u2netp", model="u2netp")
    (root / "catalogue").mkdir(parents=True, exist_ok=True)
    assets, paths = [], []
    for kind in kinds:
        image = product_photo(kind)
        flat = flatten(cut_out(image, kind, mask=mask, size=256, margin=0.08), (255, 255, 255))
        vec2d = embed_images(spec, [flat], device="cpu")[0]
        views = embed_images(spec, [flat.transpose(Image.Transpose.FLIP_LEFT_RIGHT), flat.rotate(8, fillcolor="white")],
                             device="cpu")
        assets.append(Asset(kind, kind.upper(), root / "catalogue" / f"{kind}.jpg"))
        paths.append(write_npz(root / f"{kind}.npz", vec2d, list(views)))
    config = {"cutout": {"backend": "u2netp", "model": "briaai/RMBG-2.0", "size": 256, "margin": 0.08,
                         "max_pixels": 50_000_000}, "background": [255, 255, 255], "device": "cpu", "embed": {"batch_size": 4}}
    out = root / "results" / "index" / "mobilenetv2"
    build_index(assets, paths, out, {"model": asdict(spec), "backends": {"cutout": "u2netp"}, "config": config})
    return out


def query_set(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, kind in enumerate(("red-vase", "blue-box", "green-lamp")):
        product_photo(kind, size=(420, 360), background=(190, 180, 160)).save(folder / f"IMG_{i}.jpg", quality=85)
        rows.append((f"IMG_{i}.jpg", kind.upper()))
    product_photo("stripes", size=(380, 380), background=(120, 140, 170)).save(folder / "IMG_3.jpg", quality=85)
    rows.append(("IMG_3.jpg", "GHOST-SKU"))  # not in the index
    with (folder / "queries.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([("query", "sku"), *rows])
    return folder / "queries.csv"


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[dict, str]:
    assert cli.main(["evaluate", *args, "--json"]) == 0
    out, err = capsys.readouterr()
    return json.loads(out), err


def test_cli_json_cache_and_missing_sku(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import dam3d.stages.cutout
    import dam3d.stages.embed

    index_dir = real_index(tmp_path, ["red-vase", "blue-box", "green-lamp"])
    queries = query_set(tmp_path / "q")
    calls = {"embed": 0, "images": 0, "mask": 0}
    real_embed, real_mask = dam3d.stages.embed.embed_images, dam3d.stages.cutout.mask_fn

    def counting_embed(spec, images, **kw):  # noqa: ANN001, ANN202
        calls["embed"] += 1
        calls["images"] += len(images)
        return real_embed(spec, images, **kw)

    def counting_mask(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        calls["mask"] += 1
        return real_mask(*a, **kw)

    monkeypatch.setattr(dam3d.stages.embed, "embed_images", counting_embed)
    monkeypatch.setattr(dam3d.stages.cutout, "mask_fn", counting_mask)

    first, err = run_cli(capsys, str(queries), "--index", str(index_dir))
    assert set(first) == set(FUSIONS)
    for r in first.values():
        assert {"top1", "top3", "top5", "n", "top1_ci95", "absent", "confusions", "worst"} <= set(r)
        assert r["n"] == 4 and r["absent"] == ["GHOST-SKU"]
        assert r["top1"] <= 0.75  # the GHOST query is a miss whatever the model does
        assert r["top5"] == 0.75  # 3 SKUs in the index: the other three are always within 5
    assert "GHOST-SKU" in err and "miss" in err
    # Batched: the 4 photos went to the model in one call; vectors cached under results/cache/queries/{model}.
    assert calls == {"embed": 1, "images": 4, "mask": 1}
    cache = tmp_path / "results" / "cache" / "queries" / "mobilenetv2"
    assert len(list(cache.glob("*.npy"))) == 4

    # Second run: every vector from the cache, no model loaded, same numbers.
    calls.update(embed=0, images=0, mask=0)
    second, _ = run_cli(capsys, str(queries), "--index", str(index_dir))
    assert second == first
    assert calls == {"embed": 0, "images": 0, "mask": 0}

    # The index changes (a new SKU): queries are not recomputed, the new SKU takes part.
    real_index(tmp_path, ["red-vase", "blue-box", "green-lamp", "stripes"])
    assert len(Index.load(index_dir).assets) == 4
    calls.update(embed=0, images=0, mask=0)
    third, _ = run_cli(capsys, str(queries), "--index", str(index_dir))
    assert calls["images"] == 0 and third["max"]["n"] == 4

    # One photo changes: only that one is computed (the key is the file's content, not its name).
    product_photo("blue-box", size=(300, 300), background=(90, 90, 90)).save(tmp_path / "q" / "IMG_1.jpg", quality=80)
    run_cli(capsys, str(queries), "--index", str(index_dir))
    assert calls["images"] == 1

    # Text output: the table with the interval and the confusions.
    assert cli.main(["evaluate", str(queries), "--index", str(index_dir)]) == 0
    out = capsys.readouterr().out
    assert "top-1 95% CI" in out and "| max |" in out and "worst confusions (max)" in out and "GHOST-SKU" in out


def test_report_files(tmp_path: Path, hand_index: Index) -> None:
    from dam3d.evaluation.report import accuracy_html, bar_plot, write_timings

    report = evaluate_vectors(hand_index, [q for q, _ in HAND_QUERIES], np.stack([v for _, v in HAND_QUERIES]))
    bar_plot(report, tmp_path / "plot.png", title="m")
    with Image.open(tmp_path / "plot.png") as im:
        assert im.format == "PNG" and im.width > 400
        colours = {c for _, c in im.convert("RGB").getcolors(1 << 20)}
    assert (31, 119, 180) in colours and (44, 160, 44) in colours  # top-1 and top-5 bars drawn
    page = accuracy_html(report, title="t", notes=["n1"])
    assert page.count("<tr>") >= 5 and "50.0%" in page and "GHOST" in page
    bench = tmp_path / "benchmarks"
    for stage, secs in (("cutout", [1.0, 3.0]), ("render", [2.0])):
        (bench / stage).mkdir(parents=True)
        for i, s in enumerate(secs):
            (bench / stage / f"a{i}.tsv").write_text(f"s\th:m:s\tmax_rss\tcpu_time\n{s}\t0:00:01\t100.5\t0.9\n")
    write_timings([*bench.glob("*/*.tsv"), bench / "mesh" / "missing.tsv"], tmp_path / "t.tsv", tmp_path / "t.html")
    rows = list(csv.DictReader((tmp_path / "t.tsv").open(), delimiter="\t"))
    assert {r["stage"]: (r["jobs"], r["mean_s"], r["total_s"]) for r in rows} == {
        "cutout": ("2", "2.000", "4.000"), "render": ("1", "2.000", "2.000")}


def test_timings_read_only_the_newest_jobs_of_each_stage(tmp_path: Path) -> None:
    import os

    from dam3d.evaluation.report import recent_benchmarks, write_timings

    bench = tmp_path / "benchmarks"
    (bench / "cutout").mkdir(parents=True)
    for i, s in enumerate([10.0, 1.0, 2.0, 3.0]):   # a0 the oldest
        tsv = bench / "cutout" / f"a{i}.tsv"
        tsv.write_text(f"s\th:m:s\tmax_rss\tcpu_time\n{s}\t0:00:01\t100.5\t0.9\n")
        os.utime(tsv, ns=(1_000_000_000 * (i + 1), 1_000_000_000 * (i + 1)))
    (bench / "cutout" / "notes.txt").write_text("not a benchmark")
    chosen = recent_benchmarks([bench / "cutout", bench / "missing"], max_jobs=3)
    assert [p.name for p in chosen] == ["a1.tsv", "a2.tsv", "a3.tsv"]
    write_timings(chosen, tmp_path / "t.tsv", tmp_path / "t.html", max_jobs=3)
    rows = list(csv.DictReader((tmp_path / "t.tsv").open(), delimiter="\t"))
    assert [(r["jobs"], r["mean_s"], r["max_s"]) for r in rows] == [("3", "2.000", "3.000")]   # a0's 10 s left out
    assert "newest 3 of each stage" in (tmp_path / "t.html").read_text()


# --------------------------------------------------------------------------- the benchmark generator


def bench_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_bench_make_tiny(tmp_path: Path) -> None:
    from dam3d.benchmarks.make import make_benchmark

    make_benchmark(tmp_path / "a", objects=3, queries_per_object=2, seed=7, resolution=96, log=lambda m: None)
    out = tmp_path / "a"
    objects = list(csv.DictReader((out / "objects.csv").open()))
    queries = list(csv.DictReader((out / "queries.csv").open()))
    skus = [o["sku"] for o in objects]
    assert len(skus) == len(set(skus)) == 3
    assert sorted(p.stem for p in (out / "catalogue").glob("*.jpg")) == sorted(skus)
    assert len(queries) == 6 and all(sum(q["sku"] == s for q in queries) == 2 for s in skus)
    for q in queries:
        with Image.open(out / q["query"]) as im:
            assert im.format == "JPEG" and im.size == (120, 90)
    for s in skus:
        with Image.open(out / "catalogue" / f"{s}.jpg") as im:
            assert im.size == (96, 96) and min(im.convert("RGB").getpixel((1, 1))) >= 240  # studio white
            # The object is there: a good share of the shot is not white.
            assert (np.asarray(im.convert("L")) < 200).mean() > 0.05
    # Ids reveal nothing about the object: random-looking hex, no part of its name or model folder.
    for o in objects:
        assert re.fullmatch(r"SKU-[0-9a-f]{6,}", o["sku"])
        words = {w for w in re.split(r"[^a-z0-9]+", f"{o['model']} {o['name']}".lower()) if len(w) >= 3}
        names = [o["sku"].lower()] + [Path(q["query"]).stem for q in queries if q["sku"] == o["sku"]]
        assert not any(w in n for w in words for n in names), (o, names)
    assert all(re.fullmatch(r"queries/q-[0-9a-f]{10}\.jpg", q["query"]) for q in queries)
    licence = (out / "LICENSE.md").read_text()
    assert all(o["sku"] in licence and o["creator"] in licence for o in objects)
    assert all(o["licence"].startswith(("CC0", "CC BY")) for o in objects)
    meta = json.loads((out / "bench.json").read_text())
    assert meta["seed"] == 7 and len(meta["queries"]) == 6
    # Its photos are not rendered by the engine of the pipeline's default views (no tuning to it).
    import yaml

    pipeline_engine = yaml.safe_load((REPO / "config.yaml").read_text())["render"]["engine"]
    assert "BLENDER_EEVEE" in meta["renderer"] and pipeline_engine not in meta["renderer"]
    cat_az = meta["catalogue_view"]["azimuth"]
    for q in meta["queries"]:  # other angles than the catalogue's
        assert 45 <= abs((q["azimuth"] - cat_az + 180) % 360 - 180) <= 150

    # Deterministic: the same seed gives the same benchmark, byte for byte; another seed another one.
    make_benchmark(tmp_path / "b", objects=3, queries_per_object=2, seed=7, resolution=96, log=lambda m: None)
    assert bench_files(tmp_path / "a") == bench_files(tmp_path / "b")
    make_benchmark(tmp_path / "c", objects=3, queries_per_object=2, seed=8, resolution=96, log=lambda m: None)
    other = [o["sku"] for o in csv.DictReader((tmp_path / "c" / "objects.csv").open())]
    assert not set(other) & set(skus)

    # The evaluate CSV reads back: paths relative to the CSV, SKUs in the catalogue.
    assert {q.sku for q in read_queries(out / "queries.csv")} == set(skus)

    # The true meshes, for the `provided` backend's upper bound: one GLB per SKU, and a manifest
    # the workflow reads (the frame is checked by eye on the contact sheet: README, Results).
    import trimesh

    from dam3d.catalogue import load_catalogue

    with_meshes = load_catalogue(out / "catalogue_meshes.csv")
    assert sorted(a.sku for a in with_meshes) == sorted(skus)
    for asset in with_meshes:
        assert asset.mesh == out / "meshes" / f"{asset.sku}.glb" and asset.image == out / "catalogue" / f"{asset.sku}.jpg"
        mesh = trimesh.load(asset.mesh, force="mesh")
        assert len(mesh.faces) > 0 and np.isfinite(mesh.vertices).all()


def test_bench_cli_arguments(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["bench", "make", str(tmp_path / "x"), "--sources", "cc-nc"]) == 2
    assert "--sources" in capsys.readouterr().err
    assert cli.main(["bench", "make", str(tmp_path / "x"), "--objects", "0"]) == 2
    assert not (tmp_path / "x").exists()


def test_true_meshes_of_a_benchmark_run_with_the_provided_backend(tmp_path: Path) -> None:
    """The README's upper-bound run: a benchmark's catalogue_meshes.csv through the workflow with `provided`."""
    import subprocess
    import sys

    from dam3d.benchmarks.make import make_benchmark

    make_benchmark(tmp_path / "b", objects=3, queries_per_object=1, seed=7, resolution=96, log=lambda m: None)
    (tmp_path / "small.yaml").write_text("render: {views: 8, resolution: 64}\n")  # small views: quicker
    run = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                          str(tmp_path), "--configfile", str(REPO / "config.yaml"), str(tmp_path / "small.yaml"),
                          "--cores", "2", "--config", f"catalogue={tmp_path / 'b' / 'catalogue_meshes.csv'}",
                          "results=results-provided", "mesh={backend: provided}"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    index = Index.load(tmp_path / "results-provided" / "index" / "mobilenetv2")
    assert index.manifest["backends"]["mesh"] == "provided"
    assert index.manifest["counts"] == {**index.manifest["counts"], "indexed": 3, "with_views": 3, "failed": 0}
