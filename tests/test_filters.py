"""Metadata filters: the parser (dam3d.search.filters), Index.search(where=...) and `dam3d search --where`."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from dam3d import cli
from dam3d.catalogue import Asset
from dam3d.search.filters import FilterError, parse_filter
from dam3d.search.index import FUSIONS, Index, build_index
from dam3d.search.query import Choice, QueryObject
from conftest import REPO
from test_index import clustered_index, unit

# Metadata as a CSV manifest gives it: text (a decimal comma, a missing price, a price that is no number).
CATALOGUE = {
    "CH-1": {"category": "chairs", "price": "49,90", "colour": "red"},
    "CH-2": {"category": "chairs", "price": "150", "colour": "blue"},
    "CH-3": {"category": "chairs", "price": "99.5", "colour": "green"},
    "LA-1": {"category": "lamps", "price": "20", "colour": "red"},
    "LA-2": {"category": "lamps", "price": "", "colour": "blue"},
    "TA-1": {"category": "tables", "price": "on request", "colour": "white"},
}
README_WHERE = 'dam3d search photo.jpg --where \'category == "chairs" and price < 100\''


@pytest.fixture
def index(tmp_path: Path) -> Index:
    rng = np.random.default_rng(0)
    assets, paths = [], []
    for sku, metadata in CATALOGUE.items():
        path = tmp_path / f"{sku}.npz"
        base = rng.normal(size=8)     # one product: its photo and its views look alike
        np.savez(path, vec2d=unit(base + 0.2 * rng.normal(size=8)), vec3d=unit(base + 0.4 * rng.normal(size=(2, 8))),
                 view_ok=np.array([True, True]),
                 views=np.array(["az000", "az180"]), model=np.array("m"))
        assets.append(Asset(sku, sku, Path(f"{sku}.jpg"), metadata=metadata))
        paths.append(path)
    manifest = {"model": {"name": "m"}, "config": {"search": {"k": 5, "fusion": "max"}}}
    build_index(assets, paths, tmp_path / "results" / "index" / "m", manifest)
    return Index.load(tmp_path / "results" / "index" / "m")


def skus(index: Index, where: str) -> set[str]:
    return {index.assets[i]["sku"] for i in index.select(where)}


@pytest.mark.parametrize(("where", "expected"), [
    ('category == "chairs"', {"CH-1", "CH-2", "CH-3"}),
    ('category != "chairs"', {"LA-1", "LA-2", "TA-1"}),
    ("price < 100", {"CH-1", "CH-3", "LA-1"}),               # 49,90 reads as 49.9; "" and "on request" match no <
    ("price > 49.9", {"CH-2", "CH-3"}),
    ("price == 150", {"CH-2"}),
    ("price != 150", {"CH-1", "CH-3", "LA-1", "LA-2", "TA-1"}),   # a missing or non-numeric value is != anything
    ('colour in ("red", "blue")', {"CH-1", "CH-2", "LA-1", "LA-2"}),
    ("price in (20, 150)", {"CH-2", "LA-1"}),
    ('category == "chairs" and price < 100 and colour != "red"', {"CH-3"}),
    ('sku == "LA-2" and asset_id == "LA-2"', {"LA-2"}),
    ('sku < "CH-3"', {"CH-1", "CH-2"}),                       # strings compare in text order
    ('colour == "purple"', set()),
])
def test_each_operator(index: Index, where: str, expected: set[str]) -> None:
    assert skus(index, where) == expected


@pytest.mark.parametrize(("where", "message", "position"), [
    ('brand == "x"', "unknown column 'brand' at character 1; the index has: asset_id, sku, image, views_ok, category", 0),
    ("category == 'chairs'", "unexpected character \"'\" at character 13 (strings take double quotes)", 12),
    ('category = "chairs"', "unexpected character '=' at character 10 (use == to compare)", 9),
    ('category == "chairs" or price < 3', "expected \"and\" or the end of the filter at character 22, found 'or'", 21),
    ("price <", "expected a string in double quotes or a number at character 8, found the end of the filter", 7),
    ('colour in "red"', "expected \"(\" after in at character 11, found '\"red\"'", 10),
    ('colour in ("red" "blue")', "expected \",\" or \")\" at character 18, found '\"blue\"'", 17),
    ("price <= 3", "operator '<=' at character 7 is not supported; the filter has == != < > in", 6),
    ('"chairs" == category', "expected a column name at character 1, found '\"chairs\"'", 0),
    ("price 3", "expected one of == != < > in after 'price' at character 7, found '3'", 6),
    ("  ", "empty filter", 0),
])
def test_bad_filters_name_the_token_and_its_position(index: Index, where: str, message: str, position: int) -> None:
    with pytest.raises(FilterError) as error:
        index.select(where)
    assert str(error.value).startswith(message) and error.value.position == position


def test_no_eval() -> None:
    with pytest.raises(FilterError, match="unexpected character"):
        parse_filter('sku == __import__("os").system("true")', ["sku"])


def test_the_filter_excludes_before_ranking(index: Index) -> None:
    rows = {a["sku"]: i for i, a in enumerate(index.assets)}
    for fusion in FUSIONS:
        q = np.asarray(index.vec2d[rows["CH-2"]])          # CH-2's own photo: it ranks first unfiltered
        assert index.search(q, k=1, fusion=fusion)[0]["sku"] == "CH-2"
        hits = index.search(q, k=10, fusion=fusion, where="price < 100")
        assert [h["sku"] for h in hits if h["sku"] == "CH-2"] == []
        # k past the matches returns the matches, ranked as they rank among all SKUs, scores unchanged
        everything = {h["sku"]: h for h in index.search(q, k=10, fusion=fusion)}
        assert [h["sku"] for h in hits] == [s for s in everything if s in {"CH-1", "CH-3", "LA-1"}]
        assert [h["rank"] for h in hits] == [1, 2, 3]
        for hit in hits:   # scores to float32 rounding: BLAS may sum a subset's dot products in another order
            assert hit["score"] == pytest.approx(everything[hit["sku"]]["score"], abs=1e-6)
            assert hit["matched"] == everything[hit["sku"]]["matched"]
    assert index.search(q, where='colour == "purple"') == []
    # A bool mask or an array of rows restricts the same way.
    mask = np.array([a["sku"] in ("CH-1", "LA-2") for a in index.assets])
    assert {h["sku"] for h in index.search(q, k=5, where=mask)} == {"CH-1", "LA-2"}
    assert [h["sku"] for h in index.search(q, k=5, where=np.flatnonzero(mask))] == [h["sku"] for h in index.search(q, k=5, where=mask)]
    with pytest.raises(ValueError, match="shape"):
        index.search(q, where=mask[:3])


def test_filtered_search_on_an_index_with_ann_graphs_is_exact_among_the_matches(tmp_path: Path) -> None:
    index = clustered_index(tmp_path, 200, 2, 16, ann_min_skus=100)
    q = np.asarray(index.vec3d)[7, 1]
    even = np.array([int(a["asset_id"][1:]) % 2 == 0 for a in index.assets])
    for fusion in FUSIONS:
        hits = index.search(q, k=8, fusion=fusion, where=even)
        scores = index.scores(q, fusion)
        order = sorted(np.flatnonzero(even), key=lambda r: (-scores[r], r))[:8]
        assert [h["asset_id"] for h in hits] == [index.assets[r]["asset_id"] for r in order], fusion
        assert [h["score"] for h in hits] == pytest.approx([float(scores[r]) for r in order], abs=1e-6)


class FakeEncoder:
    """The CLI's query encoder, replaced: the query is CH-2's own catalogue vector (no model is loaded)."""

    calls = 0

    def __init__(self, index: Index) -> None:
        self.index = index

    def encode(self, photo: str) -> tuple[None, np.ndarray, Choice]:
        FakeEncoder.calls += 1
        row = [a["sku"] for a in self.index.assets].index("CH-2")
        return None, np.asarray(self.index.vec2d[row], dtype=np.float32), Choice("cutout", "stand-in encoder")

    def encode_objects(self, photo: str, *, max_objects: int = 4) -> list[QueryObject]:
        """One object, the photo (what `dam3d search` asks for since it searches each object of a photo)."""
        _, vector, choice = self.encode(photo)
        return [QueryObject(None, None, choice, (0, 0, 1, 1), vector)]  # type: ignore[arg-type]


@pytest.fixture
def run(index: Index, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # noqa: ANN201
    monkeypatch.setattr(cli, "QueryEncoder", FakeEncoder)
    FakeEncoder.calls = 0

    def run(argv: list[str]) -> tuple[int, str, str]:
        code = cli.main([*argv, "--index", str(index.directory)])
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


def test_cli_where_as_the_readme_writes_it(run) -> None:  # noqa: ANN001
    assert f"    {README_WHERE}  " in (REPO / "README.md").read_text()    # the command as the README shows it
    argv = shlex.split(README_WHERE)[1:]
    code, out, _ = run(argv)
    assert code == 0 and "2 of 6 SKUs match --where" in out and "matched" in out.splitlines()[1]
    listed = [line.split()[2] for line in out.splitlines()[2:]]
    assert sorted(listed) == ["CH-1", "CH-3"]
    code, out, _ = run([*argv, "--json"])
    result = json.loads(out)
    assert code == 0 and result["where"] == 'category == "chairs" and price < 100' and result["matching"] == 2
    assert {h["sku"] for h in result["results"]} == {"CH-1", "CH-3"}
    assert all(h["matched"] in ("cutout", "az000", "az180") for h in result["results"])   # the index's fusion: max
    code, out, _ = run(["search", "photo.jpg", "--json"])
    unfiltered = json.loads(out)
    assert unfiltered["results"][0]["sku"] == "CH-2" and unfiltered["where"] is None and unfiltered["matching"] == 6


def test_cli_where_errors_and_no_match(run) -> None:  # noqa: ANN001
    code, out, err = run(["search", "photo.jpg", "--where", 'brand == "x"'])
    assert code == 2 and out == "" and err.startswith("dam3d: --where: unknown column 'brand' at character 1")
    code, _, err = run(["search", "photo.jpg", "--where", "price < 100 or"])
    assert code == 2 and "found 'or'" in err and "character 13" in err
    assert FakeEncoder.calls == 0          # a bad filter is refused before the photo is encoded
    code, out, err = run(["search", "photo.jpg", "--where", 'colour == "purple"', "--json"])
    assert code == 0 and json.loads(out)["results"] == [] and "no SKU of the index matches --where colour" in err
    code, out, err = run(["search", "photo.jpg", "--where", 'colour == "purple"'])
    assert code == 0 and "0 of 6 SKUs match" in out and "no SKU of the index matches" in err
