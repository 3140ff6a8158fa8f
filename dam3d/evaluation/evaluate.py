"""Evaluation: top-1/3/5 of each fusion on labelled query photos, with a cache of query vectors.

A query set is a CSV with the columns `query` (an image path, relative to the
CSV's folder) and `sku` (the expected SKU as search prints it, or its asset id).
Each photo goes through the same cutout and model as the index (dam3d.search.query.QueryEncoder).

Query vectors are cached by content: the key is the sha256 of the image bytes,
the model spec, the cutout backend and settings and the background, so
re-evaluating after the index changed (new SKUs, other renders, other fusion)
reuses them, while another model or cutout computes new ones. The cache is a
folder of .npy files (default RESULTS/cache/queries/{model}/), written atomically.

Metrics per fusion: top-k = share of queries whose SKU ranks within the first
k (ties broken as `dam3d search` does: by index order); a SKU absent from the
index is a miss. The 95 % interval of top-1 is a percentile bootstrap over
queries with a fixed seed.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dam3d.search.colour import rerank_depth, rerank_keys
from dam3d.search.index import FUSIONS, Index
from dam3d.search.query import QueryEncoder

TOPK = (1, 3, 5)
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0


# --------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class LabelledQuery:
    query: str  # as written in the CSV
    path: Path  # resolved
    sku: str  # as written in the CSV


def read_queries(csv_path: str | Path) -> list[LabelledQuery]:
    """The rows of a query CSV (columns query, sku); paths relative to the CSV's folder."""
    csv_path = Path(csv_path)
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"query", "sku"} <= set(reader.fieldnames):
            raise ValueError(f"{csv_path} needs the columns query,sku (has {', '.join(reader.fieldnames or [])})")
        rows = [r for r in reader if (r.get("query") or "").strip()]
    if not rows:
        raise ValueError(f"{csv_path} lists no queries")
    out = [LabelledQuery(r["query"], csv_path.parent / r["query"].strip(), (r["sku"] or "").strip()) for r in rows]
    missing = [q.query for q in out if not q.path.is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise FileNotFoundError(f"{csv_path}: query image {missing[0]} not found (relative to {csv_path.parent}){more}")
    return out


# --------------------------------------------------------------------------- metrics


def ranks_of(scores: np.ndarray, targets: Sequence[int | None]) -> list[int | None]:
    """1-based rank of each query's target row (None: absent), ties broken by row order as in Index.search."""
    ranks: list[int | None] = []
    n = scores.shape[1]
    for row, t in zip(scores, targets, strict=True):
        if t is None:
            ranks.append(None)
            continue
        s = row[t]
        ahead = int((row > s).sum()) + int((row[:t] == s).sum())
        ranks.append(min(ahead + 1, n))
    return ranks


def bootstrap_interval(hits: np.ndarray, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap 95 % interval of the mean of 0/1 `hits` (resampling queries)."""
    n = len(hits)
    if n == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    for b in range(0, samples, 500):
        idx = rng.integers(0, n, size=(min(500, samples - b), n))
        means[b : b + len(idx)] = hits[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def evaluate_vectors(
    index: Index,
    queries: Sequence[LabelledQuery],
    vectors: np.ndarray,
    *,
    fusions: Sequence[str] = FUSIONS,
    confusions: int = 5,
    bootstrap_seed: int = BOOTSTRAP_SEED,
    colours: np.ndarray | None = None,
    colour_weight: float = 0.0,
    k: int = 5,
) -> dict[str, dict]:
    """Per fusion: top1/top3/top5, n, the top-1 95 % interval, absent SKUs, worst confusions and queries.

    With the queries' colour descriptors `colours` (Q, B) float32, an index with descriptors and
    `colour_weight` > 0, the ranks are those of a search re-ranked by colour (dam3d.search.colour,
    the first max(50, 4k) candidates), and each fusion also gets `colour`: {"weight", "top1_off",
    "delta", "ci95"}: top-1 with minus without re-ranking, paired bootstrap 95 % interval.

    Each fusion other than `2d` also gets `top1_vs_2d`: its top-1 minus the 2D top-1, with a paired
    bootstrap 95 % interval (the same resampled queries for both): does the 3D augmentation pay off?
    """
    by_sku: dict[str, int] = {}
    for i, a in enumerate(index.assets):
        by_sku.setdefault(str(a["asset_id"]), i)
    for i, a in enumerate(index.assets):
        by_sku[str(a["sku"])] = i  # the brand SKU wins over an asset id that happens to look the same
    targets = [by_sku.get(q.sku) for q in queries]
    absent = sorted({q.sku for q, t in zip(queries, targets, strict=True) if t is None})
    skus = [str(a["sku"]) for a in index.assets]
    report: dict[str, dict] = {}
    hits: dict[str, np.ndarray] = {}
    rerank = colours is not None and colour_weight > 0 and index.colours is not None
    for fusion in fusions:
        scores = index.scores(vectors, fusion)
        result: dict = {}
        if rerank:
            off = np.array([1.0 if r == 1 else 0.0 for r in ranks_of(scores, targets)])
            scores = rerank_keys(scores, colours, index.colours, colour_weight, rerank_depth(k, len(index.assets)))
        ranks = ranks_of(scores, targets)
        top1 = scores.argmax(axis=1)  # first maximum: the SKU search prints first
        for k in TOPK:
            result[f"top{k}"] = sum(1 for r in ranks if r is not None and r <= k) / len(queries)
        result["n"] = len(queries)
        hits1 = hits[fusion] = np.array([1.0 if r == 1 else 0.0 for r in ranks])
        result["top1_ci95"] = list(bootstrap_interval(hits1, seed=bootstrap_seed))
        if rerank:
            result["colour"] = {"weight": colour_weight, "top1_off": float(off.mean()), "delta": float((hits1 - off).mean()),
                                "ci95": list(bootstrap_interval(hits1 - off, seed=bootstrap_seed))}
        result["absent"] = absent
        pairs: Counter[tuple[str, str]] = Counter()
        examples: dict[tuple[str, str], list[str]] = {}
        for q, r, best in zip(queries, ranks, top1, strict=True):
            if r != 1:
                pair = (q.sku, skus[int(best)])
                pairs[pair] += 1
                examples.setdefault(pair, []).append(q.query)
        result["confusions"] = [
            {"expected": e, "predicted": p, "count": c, "queries": examples[(e, p)]}
            for (e, p), c in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:confusions]
        ]
        plain = index.scores(vectors, fusion) if rerank else scores   # the fusion's score, not a re-ranking key
        order = sorted(range(len(queries)), key=lambda i: (-(ranks[i] or len(skus) + 1), queries[i].query))
        result["worst"] = [
            {"query": queries[i].query, "expected": queries[i].sku, "rank": ranks[i],
             "predicted": skus[int(top1[i])], "score": float(plain[i, top1[i]])}
            for i in order[:confusions] if ranks[i] != 1
        ]
        report[fusion] = result
    if "2d" in hits:
        for fusion in report:
            if fusion != "2d":
                diff = hits[fusion] - hits["2d"]
                report[fusion]["top1_vs_2d"] = {"delta": float(diff.mean()),
                                                "ci95": list(bootstrap_interval(diff, seed=bootstrap_seed))}
    return report


def evaluate(
    index: Index,
    queries_csv: str | Path,
    *,
    cache_dir: str | Path | None = None,
    encoder: QueryEncoder | None = None,
    log: Callable[[str], None] | None = None,
    colour_weight: float | None = None,
) -> tuple[dict[str, dict], QueryEncoder]:
    """Read the query CSV, encode (through the cache), score every fusion. Returns (report, encoder).

    `colour_weight` (default: the index's search.colour_weight, Index.colour_weight): > 0 with an
    index that has colour descriptors ranks as a colour re-ranking search does (evaluate_vectors).
    """
    queries = read_queries(queries_csv)
    if log:
        for sku in sorted({q.sku for q in queries} - {str(a["sku"]) for a in index.assets} - {str(a["asset_id"]) for a in index.assets}):
            log(f"SKU {sku!r} is not in the index {index.directory}; its queries count as misses")
    encoder = encoder or QueryEncoder(index, cache_dir=cache_dir)
    vectors = encoder.encode_many([q.path for q in queries], log=log)
    weight = index.colour_weight(colour_weight)
    colours = None
    if weight > 0 and index.colour_bins is not None:
        colours = encoder.colours_many([q.path for q in queries], index.colour_bins, log=log)
    elif weight > 0 and log:
        log(f"the index {index.directory} has no colour descriptors (built before them): evaluating without colour re-ranking")
    k = int(index.manifest.get("config", {}).get("search", {}).get("k", 5))
    return evaluate_vectors(index, queries, vectors, colours=colours, colour_weight=weight, k=k), encoder


# --------------------------------------------------------------------------- output


def format_table(report: dict[str, dict]) -> str:
    """The accuracy table as plain text (also valid Markdown)."""
    lines = ["| fusion | top-1 | top-1 95% CI | top-3 | top-5 | n | top-1 vs 2d (95% CI) |",
             "|---|---|---|---|---|---|---|"]
    for fusion, r in report.items():
        lo, hi = r["top1_ci95"]
        lines.append(f"| {fusion} | {r['top1']:.1%} | {lo:.1%}-{hi:.1%} | {r['top3']:.1%} | {r['top5']:.1%} | {r['n']} "
                     f"| {format_delta(r)} |")
    return "\n".join(lines)


def format_delta(r: dict) -> str:
    """`+3.3 pts (-0.8 to +7.5)` for a fusion's top-1 minus the 2D top-1; `-` for 2d itself."""
    d = r.get("top1_vs_2d")
    if d is None:
        return "-"
    lo, hi = d["ci95"]
    return f"{d['delta'] * 100:+.1f} pts ({lo * 100:+.1f} to {hi * 100:+.1f})"


def format_confusions(report: dict[str, dict], fusion: str, limit: int = 5) -> str:
    r = report[fusion]
    if not r["confusions"]:
        return f"worst confusions ({fusion}): none, every query's SKU came first"
    lines = [f"worst confusions ({fusion}): expected -> predicted at top-1"]
    for c in r["confusions"][:limit]:
        lines.append(f"  {c['expected']} -> {c['predicted']}  x{c['count']}  ({', '.join(c['queries'][:3])})")
    return "\n".join(lines)
