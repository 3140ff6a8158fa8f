

def test_the_update_benchmark_reads_one_embedding_for_one_added_sku(tmp_path: Path) -> None:
    from dam3d.benchmarks.scale import index_update

    t = index_update(tmp_path, 30, 2, 8)
    assert (t["full_read"], t["add_one_read"], t["unchanged_read"]) == (30, 1, 0)
    assert all(t[k] > 0 for k in ("full", "add_one", "unchanged", "write_npz"))
