"""Contact sheets: eyeball the cutout and the rendered views of each asset, and of a whole run.

Pillow only.  A missing or 0-byte image (a failed asset's placeholder) is drawn
as a grey tile with an X, so failures stand out instead of breaking the sheet.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from dam3d.runtime.atomic import atomic_path
from dam3d.runtime.chunk import has_result
from dam3d.stages.shapes import shape_record

TILE = 160  # px, one cutout or view in an asset sheet
LABEL_HEIGHT = 22
GAP = 4
FAILED_GREY = (150, 150, 150)
# The whole-run sheet stays below this many pixels (RGB: 3 bytes each) however many assets.
MAX_RUN_PIXELS = 48_000_000


def label_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at `size` px (scalable when Pillow has FreeType), for sheets and plots."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _load(path: Path) -> Image.Image | None:
    """The image at `path` as RGBA, or None if it is missing, empty or unreadable."""
    try:
        if not has_result(path):
            return None
        with Image.open(path) as im:
            return im.convert("RGBA")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def failed_tile(width: int, height: int, text: str = "failed") -> Image.Image:
    """A grey tile crossed out, standing in for an image that is not there."""
    tile = Image.new("RGB", (width, height), FAILED_GREY)
    draw = ImageDraw.Draw(tile)
    w = max(1, min(width, height) // 40)
    draw.line((0, 0, width - 1, height - 1), fill=(90, 90, 90), width=w)
    draw.line((0, height - 1, width - 1, 0), fill=(90, 90, 90), width=w)
    if min(width, height) >= 32:
        font = label_font(max(8, min(width, height) // 8))
        box = draw.textbbox((0, 0), text, font=font)
        x, y = (width - (box[2] - box[0])) // 2, (height - (box[3] - box[1])) // 2
        draw.rectangle((x - 3, y - 2, x + box[2] - box[0] + 3, y + box[3] - box[1] + 4), fill=FAILED_GREY)
        draw.text((x - box[0], y - box[1]), text, fill=(40, 40, 40), font=font)
    return tile


def _fit(img: Image.Image, width: int, height: int, background: tuple[int, int, int]) -> Image.Image:
    """`img` scaled to fit a width x height tile, centred and flattened onto `background`."""
    scale = min(width / img.width, height / img.height)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    img = img.resize(size, Image.LANCZOS) if size != img.size else img
    tile = Image.new("RGBA", (width, height), (*background, 255))
    tile.alpha_composite(img, ((width - size[0]) // 2, (height - size[1]) // 2))
    return tile.convert("RGB")


def asset_label(sku: str, mesh: Path) -> str:
    """An asset sheet's label: the SKU and, for a `prior` mesh, the shape it was given and how well it fit."""
    record = shape_record(mesh)
    if not record:
        return sku
    return f"{sku}   mesh: {record['shape']} (silhouette IoU {record['iou']:.2f})"


def asset_sheet(
    cutout: Path,
    views: Sequence[Path],
    out: Path,
    *,
    background: tuple[int, int, int] = (255, 255, 255),
    label: str,
    tile: int = TILE,
) -> None:
    """One row: the cutout, then every view, on `background`, with `label` above."""
    paths = [Path(cutout), *map(Path, views)]
    width = len(paths) * tile + (len(paths) + 1) * GAP
    height = LABEL_HEIGHT + tile + GAP
    sheet = Image.new("RGB", (width, height), tuple(background))
    draw = ImageDraw.Draw(sheet)
    # Dark or light text, whichever reads on this background.
    ink = (20, 20, 20) if sum(background) > 3 * 128 else (235, 235, 235)
    draw.text((GAP, 3), label, fill=ink, font=label_font(LABEL_HEIGHT - 7))
    for i, path in enumerate(paths):
        img = _load(path)
        cell = failed_tile(tile, tile) if img is None else _fit(img, tile, tile, tuple(background))
        sheet.paste(cell, (GAP + i * (tile + GAP), LABEL_HEIGHT))
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")


def sheet_assets(
    assets: Sequence[str], computing: Collection[str], made_at: Mapping[str, float], limit: int
) -> list[str]:
    """The assets the run-wide contact sheet shows: at most `limit`, the newest, in catalogue order.

    Newest first: the assets this run computes (`computing`), then the others by when the
    job that made their sheet finished (`made_at`: seconds since the epoch, e.g. the chunk
    manifest's mtime; an asset without one counts as oldest), ties in catalogue order.
    Every asset keeps its own sheet (dam3d.runtime.layout.contact); the cap keeps the run's
    sheet, and the time to build it, the same for a million SKUs as for a thousand: it reads
    `limit` sheets, not one per SKU. The choice is the same run after run while nothing is
    computed, so a refresh with nothing new does not rebuild it.
    """
    if len(assets) <= limit:
        return list(assets)
    position = {asset: i for i, asset in enumerate(assets)}
    newest = heapq.nsmallest(
        limit, assets, key=lambda a: (a not in computing, -made_at.get(a, float("-inf")), position[a])
    )
    return sorted(newest, key=position.__getitem__)


def run_sheet(
    sheets: Sequence[Path],
    out: Path,
    *,
    columns: int | None = None,
    max_full: int = 200,
    max_pixels: int = MAX_RUN_PIXELS,
) -> None:
    """Stack asset sheets into one PNG.

    Up to `max_full` assets: one column (unless `columns`) at full size.  More: a
    near-square grid of thumbnails.  Either way the result is scaled down to stay
    under `max_pixels`, so a million-asset run still gives a file one can open.
    Unreadable sheets become crossed-out grey cells.
    """
    paths = [Path(p) for p in sheets]
    cell_w, cell_h = 8 * TILE, LABEL_HEIGHT + TILE + GAP  # used only when no sheet is readable
    for p in paths:
        try:
            if has_result(p):
                with Image.open(p) as im:
                    cell_w, cell_h = im.size
                break
        except OSError:
            continue
    n = max(1, len(paths))
    if columns is None:
        # Near-square canvas for big runs: rows * cell_h ~ cols * cell_w.
        columns = 1 if n <= max_full else max(1, round(math.sqrt(n * cell_h / cell_w)))
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    scale = min(1.0, math.sqrt(max_pixels / (columns * cell_w * rows * cell_h)))
    tw, th = max(1, int(cell_w * scale)), max(1, int(cell_h * scale))
    canvas = Image.new("RGB", (columns * tw, rows * th), (255, 255, 255))
    if not paths:
        ImageDraw.Draw(canvas).text((GAP, 3), "no assets", fill=(20, 20, 20), font=label_font(14))
    for i, p in enumerate(paths):
        img = _load(p)
        if img is None:
            cell = failed_tile(tw, th)
        else:
            cell = img.convert("RGB")
            # Keep aspect; a sheet of another size (other view count) is letterboxed. A big run
            # shrinks each sheet several times: box-reduce first, then filter (3,000: 23 s -> 13 s).
            cell.thumbnail((tw, th), Image.LANCZOS, reducing_gap=1.5)
        x, y = (i % columns) * tw + (tw - cell.width) // 2, (i // columns) * th + (th - cell.height) // 2
        canvas.paste(cell, (x, y))
    with atomic_path(out) as tmp:
        # Rewritten by every refresh that computes an asset: zlib level 3 halves the seconds of the default 6 for
        # ~10 % more bytes (200 sheets, 1381 x 34600 px: 2.1 s -> 1.2 s, 9.0 -> 9.9 MiB).
        canvas.save(tmp, format="PNG", compress_level=3)
