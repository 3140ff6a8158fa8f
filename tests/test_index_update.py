"""Incremental index updates (dam3d.search.update): same results as a full rebuild, unchanged SKUs' .npz
left closed, a failed update leaves the previous index searchable, settings changes rebuild in full."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from dam3d.catalogue import Asset
from dam3d.search.index import FUSIONS, Index, build_index

VIEWS, DIM = 3, 16


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def write_embedding(folder: Path, i: int, seed: int, *, failed_view: bool = False) -> Path:
    """S{i}.npz written as the embed stage writes it (temporary name, then renamed into place)."""
    rng = np.random.default_rng([i, seed])
    centre = np.random.default_rng(i % 5).normal(size=DIM)   # clusters of look-alikes
    base = centre + 0.6 * rng.normal(size=DIM)
    ok = np.array([True] * VIEWS)
    ok[-1] = not failed_view
    path = folder / f"S{i}.npz"
    tmp = folder / f".S{i}.tmp.npz"
    np.savez(tmp, vec2d=unit(base + 0.3 * rng.normal(size=DIM)), vec3d=unit(base + 0.5 * rng.normal(size=(VIEWS, DIM))),
             view_ok=ok, views=np.array([f"v{j}" for j in range(VIEWS)]), model=np.array("m"))
    os.replace(tmp, path)
    return path


def catalogue(folder: Path, ids: list[int]) -> tuple[list[Asset], list[Path]]:
    return ([Asset(f"S{i}", f"SKU {i}", Path(f"{i}.jpg"), metadata={"brand": f"b{i % 3}"}) for i in ids],
            [folder / f"S{i}.npz" for i in ids])


@pytest.fixture
def embed(tmp_path: Path) -> Path:
    folder = tmp_path / "embed"
    folder.mkdir()
    for i in range(40):
        write_embedding(folder, i, seed=0, failed_view=i % 9 == 0)
    return folder


def queries(n: int = 12) -> np.ndarray:
    rng = np.random.default_rng(7)
    return unit(np.random.default_rng(3).normal(size=(n, DIM)) + 0.2 * rng.normal(size=(n, DIM)))


def results(index: Index) -> dict[str, list]:
    return {f: [index.search(q, k=6, fusion=f) for q in queries()] for f in FUSIONS}


def change(embed: Path) -> list[int]:
    """Add S40 and S41, recompute S5 (new vectors), delete S7, fail S12 (empty placeholder): the new catalogue's ids."""
    write_embedding(embed, 40, seed=0)
    write_embedding(embed, 41, seed=0)
    write_embedding(embed, 5, seed=1)
    (embed / "S7.npz").unlink()
    (embed / "S12.npz").write_bytes(b"")
    return [i for i in range(42) if i != 7]


@pytest.mark.parametrize("block", [4096, 7])   # one block, and blocks mixing copied and read rows
def test_add_change_delete_gives_what_a_full_rebuild_gives(tmp_path: Path, embed: Path, block: int,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import dam3d.search.index as index_module

    monkeypatch.setattr(index_module, "COPY_BLOCK", block)
    out = tmp_path / "index" / "m"
    first = build_index(*catalogue(embed, list(range(40))), out, {"model": {"name": "m"}})
    assert first["update"]["mode"] == "full" and first["update"]["read"] == 40
    ids = change(embed)
    manifest = build_index(*catalogue(embed, ids), out, {"model": {"name": "m"}})
    assert manifest["update"] == {"mode": "incremental", "reason": f"previous index {first['data']}",
                                  "reused": 37, "read": 3, "dropped": 2,   # S5 read again; S7, S12 dropped
                                  "store": "appended"}
    # 3 rows appended to the 40 of the first build; S5's old row, S7's and S12's stay unreferenced (tombstones)
    assert manifest["vectors"]["store"] == {**first["vectors"]["store"], "rows": 43}
    full = build_index(*catalogue(embed, ids), tmp_path / "full", {"model": {"name": "m"}}, incremental=False)
    assert full["update"]["mode"] == "full" and full["update"]["read"] == 40
    inc, ref = Index.load(out), Index.load(tmp_path / "full")
    assert inc.assets == ref.assets and [a["asset_id"] for a in inc.assets][-2:] == ["S40", "S41"]
    for name in ("vec2d", "vec3d", "vecmean"):
        np.testing.assert_array_equal(getattr(inc, name), getattr(ref, name))   # bit for bit
    assert results(inc) == results(ref)
    assert {k: manifest[k] for k in ("counts", "views", "dim", "failed_assets")} == \
        {k: full[k] for k in ("counts", "views", "dim", "failed_assets")}
    assert {**manifest["vectors"], "store": None} == {**full["vectors"], "store": None}
    assert manifest["failed_assets"] == ["S12"]


def test_an_update_opens_only_new_and_changed_embeddings(tmp_path: Path, embed: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "index" / "m"
    build_index(*catalogue(embed, list(range(40))), out, {"model": {"name": "m"}})
    ids = change(embed)
    opened: list[str] = []
    real_load = np.load

    def counting_load(file, *args, **kwargs):  # noqa: ANN001, ANN202
        opened.append(Path(file).name)
        return real_load(file, *args, **kwargs)

    monkeypatch.setattr(np, "load", counting_load)
    build_index(*catalogue(embed, ids), out, {"model": {"name": "m"}})
    assert sorted(n for n in opened if n.endswith(".npz")) == ["S40.npz", "S41.npz", "S5.npz"]
    opened.clear()
    manifest = build_index(*catalogue(embed, ids), out, {"model": {"name": "m"}})   # nothing changed
    assert not [n for n in opened if n.endswith(".npz")] and manifest["update"]["read"] == 0
    assert manifest["update"]["store"] == "unchanged"
    monkeypatch.undo()
    assert results(Index.load(out)) == results(Index.load(out))


@pytest.mark.parametrize("fail_at", ["vectors", "switch"])
def test_a_failed_update_leaves_the_previous_index_searchable(tmp_path: Path, embed: Path,
                                                              monkeypatch: pytest.MonkeyPatch, fail_at: str) -> None:
    import dam3d.search.index as index_module

    out = tmp_path / "index" / "m"
    build_index(*catalogue(embed, list(range(40))), out, {"model": {"name": "m"}})
    before, manifest_bytes = results(Index.load(out)), (out / "manifest.json").read_bytes()
    reader = Index.load(out)   # a search process that loaded the index before the update
    ids = change(embed)
    calls = {"n": 0}
    if fail_at == "vectors":   # killed after appending rows to the store, before the new data folder is complete
        real = index_module.StoreWriter.append

        def failing(self, *args):  # noqa: ANN001, ANN002, ANN202
            real(self, *args)
            raise OSError("disk full")

        monkeypatch.setattr(index_module.StoreWriter, "append", failing)
    else:   # killed after the new data folder is complete, before manifest.json is replaced
        real_write = index_module.write_text

        def failing_write(path, text):  # noqa: ANN001, ANN202
            if Path(path) == out / "manifest.json":
                raise OSError("killed")
            real_write(path, text)

        monkeypatch.setattr(index_module, "write_text", failing_write)
    with pytest.raises(OSError):
        build_index(*catalogue(embed, ids), out, {"model": {"name": "m"}})
    monkeypatch.undo()
    assert (out / "manifest.json").read_bytes() == manifest_bytes
    assert results(Index.load(out)) == before and results(reader) == before
    after = build_index(*catalogue(embed, ids), out, {"model": {"name": "m"}})   # the next run completes it
    assert after["update"]["mode"] == "incremental" and after["update"]["read"] == 3
    assert after["vectors"]["store"]["rows"] == 43   # what the failed append left past row 40 was dropped first
    store = out / after["vectors"]["store"]["folder"]
    assert (store / "vectors_3d.bin").stat().st_size == 43 * VIEWS * DIM * 2
    assert results(reader) == before   # the previous data folder is kept one update for such readers
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", reader.files.name, after["data"], store.name])


def test_settings_that_change_every_row_rebuild_in_full(tmp_path: Path, embed: Path) -> None:
    out = tmp_path / "index" / "m"
    assets, paths = catalogue(embed, list(range(40)))
    build_index(assets, paths, out, {"model": {"name": "m"}})
    m = build_index(assets, paths, out, {"model": {"name": "m"}}, dtype="float32")
    assert m["update"]["mode"] == "full" and "dtype" in m["update"]["reason"] and m["update"]["read"] == 40
    assert Index.load(out).vec2d.dtype == np.float32
    m = build_index(assets, paths, out, {"model": {"name": "m"}}, dtype="float32", pca=4)
    assert m["update"]["mode"] == "full" and "PCA" in m["update"]["reason"] and m["vectors"]["pca"]["dim"] == 4
    m = build_index(assets, paths, out, {"model": {"name": "m"}}, dtype="float32")   # PCA off again: all rows change
    assert m["update"]["mode"] == "full" and "PCA" in m["update"]["reason"]
    m = build_index(assets, paths, out, {"model": {"name": "other"}}, dtype="float32")
    assert m["update"]["mode"] == "full" and "model" in m["update"]["reason"]
    m = build_index(assets, paths, out, {"model": {"name": "other"}}, dtype="float32")
    assert m["update"]["mode"] == "incremental" and m["update"]["reused"] == 40


def test_a_vector_store_removed_by_hand_gives_a_full_rebuild(tmp_path: Path, embed: Path) -> None:
    import shutil

    out = tmp_path / "index" / "m"
    first = build_index(*catalogue(embed, list(range(40))), out, {"model": {"name": "m"}})
    shutil.rmtree(out / first["vectors"]["store"]["folder"])
    ids = change(embed)
    m = build_index(*catalogue(embed, ids), out, {"model": {"name": "m"}})
    assert m["update"]["mode"] == "full" and "cannot be read" in m["update"]["reason"] and m["update"]["read"] == 40
    assert m["update"]["store"] == "written"
    build_index(*catalogue(embed, ids), tmp_path / "full", {"model": {"name": "m"}}, incremental=False)
    assert results(Index.load(out)) == results(Index.load(tmp_path / "full"))


def test_an_update_finds_the_previous_rows_when_snakemake_removed_the_manifest(tmp_path: Path, embed: Path) -> None:
    """A manifest.json removed (by hand, or by Snakemake when it was the index rule's output) loses no rows."""
    out = tmp_path / "index" / "m"
    build_index(*catalogue(embed, list(range(40))), out, {"model": {"name": "m"}})
    (out / "manifest.json").unlink()
    m = build_index(*catalogue(embed, change(embed)), out, {"model": {"name": "m"}})
    assert m["update"]["mode"] == "incremental" and m["update"]["read"] == 3
    assert json.loads((out / "manifest.json").read_text())["data"] == m["data"]


def test_an_embedding_with_other_views_rebuilds_in_full(tmp_path: Path, embed: Path) -> None:
    out = tmp_path / "index" / "m"
    assets, paths = catalogue(embed, list(range(40)))
    build_index(assets, paths, out, {"model": {"name": "m"}})
    for i in range(40):   # render.views changed: every embedding is recomputed with 2 views
        np.savez(embed / f".S{i}.tmp.npz", vec2d=unit(np.ones(DIM)), vec3d=unit(np.ones((2, DIM))), view_ok=np.ones(2, bool),
                 views=np.array(["a", "b"]), model=np.array("m"))
        os.replace(embed / f".S{i}.tmp.npz", embed / f"S{i}.npz")
    m = build_index(assets, paths, out, {"model": {"name": "m"}})
    assert m["update"]["mode"] == "full" and "views" in m["update"]["reason"] and m["update"]["read"] == 40
    assert m["views"] == ["a", "b"] and m["counts"]["views_per_asset"] == 2
    assert Index.load(out).vec3d.shape == (40, 2, DIM)


def test_the_update_benchmark_reads_one_embedding_for_one_added_sku(tmp_path: Path) -> None:
    from dam3d.benchmarks.scale import index_update

    t = index_update(tmp_path, 30, 2, 8)
    assert (t["full_read"], t["add_one_read"], t["unchanged_read"]) == (30, 1, 0)
    assert all(t[k] > 0 for k in ("full", "add_one", "unchanged", "write_npz"))


def same_hits(index: Index, query: np.ndarray, fusion: str) -> bool:
    """The graphs' top 5 are exact search's (scores equal to float rounding: scored over other blocks)."""
    ann, exact = index.search(query, k=5, fusion=fusion), index.search(query, k=5, fusion=fusion, exact=True)
    return [(h["asset_id"], h["matched"]) for h in ann] == [(h["asset_id"], h["matched"]) for h in exact] and \
        np.allclose([h["score"] for h in ann], [h["score"] for h in exact], atol=1e-6)


@pytest.mark.parametrize("delta_max", [1024, 4])   # the delta kept beside the graphs; past the threshold: put into them
def test_ann_graphs_take_updates_and_are_compacted_when_removals_pile_up(tmp_path: Path, delta_max: int,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import dam3d.search.index as index_module

    monkeypatch.setattr(index_module, "ANN_DELTA_MAX", delta_max)
    embed = tmp_path / "embed"
    embed.mkdir()
    for i in range(300):
        write_embedding(embed, i, seed=0)
    out = tmp_path / "index" / "m"
    first = build_index(*catalogue(embed, list(range(300))), out, {"model": {"name": "m"}}, ann_min_skus=100)
    graph = out / first["data"] / "ann_views.usearch"
    for i in range(300, 305):
        write_embedding(embed, i, seed=0)
    for i in range(10, 15):   # changed: a new key; the old one a tombstone, or removed from the graphs
        write_embedding(embed, i, seed=1)
    ids = [i for i in range(305) if not 20 <= i < 25]
    m = build_index(*catalogue(embed, ids), out, {"model": {"name": "m"}}, ann_min_skus=100)
    assert m["update"]["read"] == 10 and m["update"]["store"] == "appended"
    if delta_max == 1024:   # 10 new rows and 10 tombstones: the graphs are the same files, linked
        assert {k: m["ann"][k] for k in ("built", "removed", "delta", "tombstones")} == \
            {"built": "kept", "removed": 0, "delta": 10, "tombstones": 10}
        assert (out / m["data"] / "ann_views.usearch").stat().st_ino == graph.stat().st_ino
    else:
        assert {k: m["ann"][k] for k in ("built", "removed", "delta", "tombstones")} == \
            {"built": "updated", "removed": 10, "delta": 0, "tombstones": 0}
    index = Index.load(out)
    assert index.ann() is not None and len(index.ann().delta) == m["ann"]["delta"]
    rng = np.random.default_rng(5)
    picks = rng.choice(len(index.assets), 15, replace=False)
    for q in unit(np.asarray(index.vec2d, dtype=np.float32)[picks] + 0.05 * rng.normal(size=(15, DIM))):
        for fusion in FUSIONS:
            assert same_hits(index, q, fusion), fusion
    changed = Index.load(out).search(np.asarray(index.vec2d, dtype=np.float32)[ids.index(12)], k=1, fusion="2d")
    assert changed[0]["asset_id"] == "S12"   # found by its new vector, through the graphs or the delta
    # Deleting a fifth more of the catalogue: more than ANN_COMPACT_SHARE removed since the last full build,
    # and more than COMPACT_SHARE of the store unreferenced: a new store and new graphs.
    m = build_index(*catalogue(embed, ids[:230]), out, {"model": {"name": "m"}}, ann_min_skus=100)
    assert m["ann"]["built"] == "full" and m["ann"]["removed"] == 0 and m["update"]["mode"] == "incremental"
    assert m["update"]["store"] == "written" and m["vectors"]["store"]["rows"] == 230
    index = Index.load(out)
    for q in unit(np.asarray(index.vec2d, dtype=np.float32)[:10] + 0.05):
        for fusion in FUSIONS:
            assert same_hits(index, q, fusion), fusion


def test_a_tombstone_in_the_graphs_is_never_a_hit(tmp_path: Path) -> None:
    """A changed SKU's old vector stays in the graphs (a tombstone) until the delta is put in: a query right on it
    finds the SKU's new row or another SKU, never a row that is not in the index."""
    embed = tmp_path / "embed"
    embed.mkdir()
    for i in range(200):
        write_embedding(embed, i, seed=0)
    out = tmp_path / "index" / "m"
    build_index(*catalogue(embed, list(range(200))), out, {"model": {"name": "m"}}, ann_min_skus=100)
    old = Index.load(out)
    on_old = np.asarray(old.vec2d[7], dtype=np.float32)
    write_embedding(embed, 7, seed=3)
    m = build_index(*catalogue(embed, list(range(200))), out, {"model": {"name": "m"}}, ann_min_skus=100)
    assert m["ann"]["built"] == "kept" and m["ann"]["tombstones"] == 1
    index = Index.load(out)
    for fusion in FUSIONS:
        assert same_hits(index, on_old, fusion), fusion
        assert [h["asset_id"] for h in index.search(on_old, k=20, fusion=fusion)] == \
            [h["asset_id"] for h in index.search(on_old, k=20, fusion=fusion, exact=True)]


def test_embeddings_moved_into_shard_folders_by_migrate_layout_are_reused(tmp_path: Path) -> None:
    """`dam3d migrate-layout` renames each .npz into its shard folder: same inode, size and mtime, so an update
    after it reads no embedding again and gives the same index."""
    from dam3d.runtime import layout
    from dam3d.runtime.migrate import migrate

    folder = tmp_path / "results"
    flat = folder / "embed" / "m"   # where an older dam3d wrote them
    flat.mkdir(parents=True)
    for i in range(40):
        write_embedding(flat, i, seed=0)
    assets, paths = catalogue(flat, list(range(40)))
    out = tmp_path / "index" / "m"
    build_index(assets, paths, out, {"model": {"name": "m"}})
    before = results(Index.load(out))
    assert sum(migrate(folder).moved.values()) == 40
    moved = [layout.embedding(folder, "m", a.asset_id) for a in assets]
    assert all(p.exists() for p in moved) and not any(p.exists() for p in paths)
    manifest = build_index(assets, moved, out, {"model": {"name": "m"}})
    assert manifest["update"]["mode"] == "incremental" and manifest["update"]["read"] == 0, manifest["update"]
    assert results(Index.load(out)) == before


def test_an_index_written_before_stores_loads_and_its_next_update_writes_one(tmp_path: Path, embed: Path) -> None:
    """The layout of earlier versions: vectors_{2d,3d,mean}.npy in the data folder, no `vectors.store`, no `store_row`."""
    import pyarrow.parquet as pq

    out = tmp_path / "index" / "m"
    m = build_index(*catalogue(embed, list(range(40))), out, {"model": {"name": "m"}})
    before = results(Index.load(out))
    folder, store = out / m["data"], out / m["vectors"]["store"]["folder"]
    index = Index.load(out)
    for name, vectors in (("2d", index.vec2d), ("3d", index.vec3d), ("mean", index.vecmean)):
        np.save(folder / f"vectors_{name}.npy", np.asarray(vectors))
    del index
    import shutil

    shutil.rmtree(store)
    pq.write_table(pq.read_table(folder / "rows.parquet").drop(["store_row"]), folder / "rows.parquet")
    old = {**m, "vectors": {k: v for k, v in m["vectors"].items() if k != "store"}}
    for path in (folder / "manifest.json", out / "manifest.json"):
        path.write_text(json.dumps(old))
    assert results(Index.load(out)) == before
    ids = change(embed)
    after = build_index(*catalogue(embed, ids), out, {"model": {"name": "m"}})
    assert after["update"]["mode"] == "incremental" and after["update"]["read"] == 3 and after["update"]["store"] == "written"
    full = build_index(*catalogue(embed, ids), tmp_path / "full", {"model": {"name": "m"}}, incremental=False)
    assert results(Index.load(out)) == results(Index.load(tmp_path / "full"))
    assert after["vectors"]["store"]["rows"] == full["vectors"]["store"]["rows"] == 40


def test_stored_rows_read_the_rows_asked_for() -> None:
    from dam3d.search.store import StoredRows, rows_of

    array = np.arange(6 * 2 * 3, dtype=np.float16).reshape(6, 2, 3)
    order = np.array([4, 0, 1, 2])
    rows = StoredRows(array, order)
    assert rows.shape == (4, 2, 3) and len(rows) == 4 and rows.dtype == np.float16
    np.testing.assert_array_equal(np.asarray(rows), array[order])
    np.testing.assert_array_equal(rows[1:4], array[0:3])           # a run of store rows: one slice
    np.testing.assert_array_equal(rows[np.array([3, 0])], array[[2, 4]])
    np.testing.assert_array_equal(rows[0], array[4])
    np.testing.assert_array_equal(rows[np.array([True, False, True, False])], array[[4, 1]])
    np.testing.assert_array_equal(rows[1:3, 1], array[0:2, 1])
    np.testing.assert_array_equal(rows[2, 1], array[1, 1])
    assert rows_of(array, np.arange(4)).shape == (4, 2, 3) and rows_of(array, None) is array


def test_an_embedding_of_another_width_is_refused_and_the_store_is_untouched(tmp_path: Path, embed: Path) -> None:
    """The store is shared with the index being searched: rows that do not fit it are refused before anything is cut."""
    out = tmp_path / "index" / "m"
    first = build_index(*catalogue(embed, list(range(40))), out, {"model": {"name": "m"}})
    reader = Index.load(out)
    before = results(reader)
    store = out / first["vectors"]["store"]["folder"]
    sizes = {p.name: p.stat().st_size for p in store.iterdir()}
    np.savez(embed / "S40.npz", vec2d=unit(np.ones(DIM // 2)), vec3d=unit(np.ones((VIEWS, DIM // 2))),
             view_ok=np.ones(VIEWS, bool), views=np.array([f"v{j}" for j in range(VIEWS)]), model=np.array("m"))
    with pytest.raises(ValueError, match="do not fit the vector store"):
        build_index(*catalogue(embed, list(range(41))), out, {"model": {"name": "m"}})
    assert {p.name: p.stat().st_size for p in store.iterdir()} == sizes
    assert results(reader) == before and results(Index.load(out)) == before


def test_an_index_whose_rows_file_is_gone_is_refused(tmp_path: Path, embed: Path) -> None:
    """Which store row is which SKU's is in rows.parquet only: without it the index does not load (no silent mix-up)."""
    out = tmp_path / "index" / "m"
    m = build_index(*catalogue(embed, list(range(40))), out, {"model": {"name": "m"}})
    (out / m["data"] / "rows.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="rows.parquet"):
        Index.load(out)


def test_stored_rows_refuse_what_they_would_index_otherwise_than_numpy() -> None:
    from dam3d.search.store import StoredRows

    rows = StoredRows(np.zeros((5, 3, 4), np.float16), np.array([3, 1, 0]))
    for key in (Ellipsis, None, (Ellipsis, 0), (np.array([0, 1]), np.array([0, 2])), np.array([[0, 1]])):
        with pytest.raises(IndexError):
            rows[key]
