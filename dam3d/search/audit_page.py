"""The HTML page of `dam3d audit`: the best look-alike pairs, the two catalogue images side by side.

Thumbnails are embedded (JPEG, base64 `data:` URIs), so the page reads the same opened from disk,
moved elsewhere, or inside Snakemake's `--report`. Pillow only.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image

from dam3d.errors import AssetError
from dam3d.runtime import layout
from dam3d.runtime.atomic import write_text
from dam3d.search.audit import Audit
from dam3d.search.index import Index
from dam3d.stages.contact import failed_tile
from dam3d.stages.images import load_image

THUMBNAIL = 160          # px, longest side of each image in the page
MAX_PAIRS = 200          # pairs shown (400 thumbnails, ~2-3 MB of page); every pair is in the CSV
_STYLE = ("<style>body{font-family:sans-serif;font-size:14px}table{border-collapse:collapse}"
          "td,th{border:1px solid #bbb;padding:4px 8px;vertical-align:middle}th{background:#eee}"
          "td.score{text-align:right}figure{margin:0;text-align:center}figcaption{font-size:12px}</style>")


def catalogue_image(index: Index, row: int) -> Path:
    """The catalogue photo of index row `row`: its path as indexed, else relative to where the pipeline ran."""
    path = Path(index.assets[row]["image"])
    if not path.is_absolute() and not path.exists():
        path = index.results.parent / path
    return path


def thumbnail(index: Index, row: int, *, size: int = THUMBNAIL) -> str:
    """A `data:image/jpeg;base64,...` URI of the SKU's catalogue photo (else its cutout, else a grey tile), <= size px."""
    asset = index.assets[row]["asset_id"]
    image: Image.Image | None = None
    for path, stage in ((catalogue_image(index, row), "audit"), (layout.cutout(index.results, asset), "audit")):
        try:
            image = load_image(path, asset, stage=stage)
            break
        except AssetError:
            continue
    if image is None:
        image = failed_tile(size, size, "no image")
    image.thumbnail((size, size))
    if image.mode == "RGBA":   # a cutout: flattened on white
        flat = Image.new("RGB", image.size, (255, 255, 255))
        flat.paste(image, mask=image.getchannel("A"))
        image = flat
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _cell(index: Index, row: int, sku: str) -> str:
    return (f"<td><figure><img src='{thumbnail(index, row)}' alt='{html.escape(sku, quote=True)}'>"
            f"<figcaption>{html.escape(sku)}</figcaption></figure></td>")


def pairs_html(result: Audit, index: Index, *, everything: str, max_pairs: int = MAX_PAIRS) -> str:
    """An HTML fragment (no <html>, no style): what was run, how many pairs were found and shown, then
    a table of one row per pair (best first: rank, score, the two catalogue photos with their SKUs).

    everything: where every pair is, named when not all are shown ("every pair in {everything}.").
    Used by the page (page_html) and by `dam3d serve`'s Look-alikes tab.
    """
    shown = result.pairs[:max_pairs]
    model = index.manifest.get("model", {}).get("name", index.directory.name)
    count = (f"{len(result.pairs)} pairs found; all shown." if len(shown) == len(result.pairs) else
             f"{len(result.pairs)} pairs found; the {len(shown)} most similar shown, every pair in {everything}.")
    parts = [f"<h3>Look-alike SKUs ({html.escape(model)}, fusion {html.escape(result.fusion)})</h3>",
             f"<p class='dam3d-audit-count'>{result.skus} SKUs; pairs with a {html.escape(result.fusion)} similarity of "
             f"at least {result.threshold:g}, at most {result.k} neighbours per SKU ({result.method} search). "
             f"{html.escape(count)}</p>"]
    if not shown:
        parts.append("<p class='dam3d-audit-none'>No pair reaches the threshold. A lower threshold lists less "
                     "similar SKUs.</p>")
    else:
        parts.append("<table><tr><th>#</th><th>score</th><th>SKU a</th><th>SKU b</th></tr>")
        for rank, pair in enumerate(shown, 1):
            parts.append(f"<tr class='dam3d-pair'><td>{rank}</td><td class='score'>{pair.score:.3f}</td>"
                         f"{_cell(index, pair.a, pair.sku_a)}{_cell(index, pair.b, pair.sku_b)}</tr>")
        parts.append("</table>")
    return "\n".join(parts)


def page_html(result: Audit, index: Index, *, table: str, max_pairs: int = MAX_PAIRS) -> str:
    """The page: what was run, how many pairs were found and shown, then one row per pair (best first).

    table: the CSV's name or path, named in the page as holding every pair.
    """
    return "\n".join([f"<html><head><meta charset='utf-8'>{_STYLE}</head><body>",
                      pairs_html(result, index, everything=table, max_pairs=max_pairs),
                      "</body></html>\n"])


def write_page(result: Audit, index: Index, path: str | Path, *, table: str, max_pairs: int = MAX_PAIRS) -> Path:
    """Write page_html atomically at `path`; return it."""
    write_text(path, page_html(result, index, table=table, max_pairs=max_pairs))
    return Path(path)


def write_audit(result: Audit, index: Index, folder: str | Path, *, max_pairs: int = MAX_PAIRS) -> tuple[Path, Path]:
    """Write the CSV and the page of `result` into `folder` (layout.audit_table/audit_page), each atomically.

    Returns (csv path, html path); the page names the CSV relative to itself.
    """
    from dam3d.search.audit import write_table

    model = index.directory.name
    table = write_table(result, layout.audit_table(folder, model))
    page = write_page(result, index, layout.audit_page(folder, model), table=table.name, max_pairs=max_pairs)
    return table, page
