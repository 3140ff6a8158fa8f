"""`dam3d serve`: a Gradio page where a merchandiser drops a photo and sees the matching SKUs.

The page shows the cutout that was searched with, then the top-k SKUs, each with its
rank, score, catalogue metadata and a strip of its catalogue image and rendered views
(a click on any image shows it larger); in the strip, the view (or the catalogue image)
that gave the SKU its score is outlined (fusions `3d` and `max`). A filter on the
catalogue metadata (dam3d.search.filters) restricts the SKUs searched. The cutout and
embedding models are loaded once when the server starts; a query only cuts out, embeds
and searches. A text box searches by text when the index's model has a text tower
(backend `clip`); for any other index it answers why it cannot. A photo of several
products side by side (dam3d.search.query.split_objects) is searched once per object: the
page shows each object's crop, its box, and its own top-k. The Look-alikes tab lists the
catalogue's look-alike SKU pairs (`dam3d audit`: dam3d.search.audit on the loaded index, the
table of dam3d.search.audit_page), computed when its button is pressed, never at page load.

A file that is not an image, is larger than the upload cap, or has more pixels than
`cutout.max_pixels` is refused with a message in the page; the server stays up.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import Any

# Gradio otherwise reports usage to its servers at start; this app runs offline.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from dam3d.search.query import QueryEncoder  # noqa: E402
from dam3d.errors import AssetError  # noqa: E402
from dam3d.runtime import layout  # noqa: E402
from dam3d.search.filters import FilterError  # noqa: E402
from dam3d.search.index import DEFAULT_DTYPE, FUSIONS, MATCHED_CUTOUT, MATCHED_FUSED, Index, write_vectors  # noqa: E402
from dam3d.runtime.chunk import has_result  # noqa: E402

DEFAULT_MAX_UPLOAD_MB = 25.0
THUMBNAIL = 384  # px, longest side of the catalogue image shown beside the views
MAX_K = 20
MAX_LOOK_ALIKES = 50  # pairs shown in the Look-alikes tab (100 embedded thumbnails); `dam3d audit` writes them all
# Columns of an index row that are not catalogue metadata.
INTERNAL_COLUMNS = ("asset_id", "sku", "image", "views_ok")


class QueryError(ValueError):
    """A query photo the app refuses: the message is shown to the user as it is."""


def set_threads(threads: int) -> None:
    """CPU threads of both models (0: the libraries' defaults, one per core); call before they load."""
    if threads > 0:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(threads)  # rembg reads it when it creates its ONNX session
        torch.set_num_threads(threads)


class SearchApp:
    """Everything a query needs, loaded once: the index, the cutout and embedding models, result images."""

    def __init__(self, index_dir: str | Path, *, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, warm_up: bool = True) -> None:
        self.index = Index.load(index_dir)
        self.encoder = QueryEncoder(self.index)
        self.max_upload_bytes = int(max_upload_mb * 1024 * 1024)
        self.max_pixels = int(self.encoder.cutout_cfg["max_pixels"])
        # Renders are {results}/render/{asset_id}/{view}.png.
        self.results = self.index.results
        self.views = list(self.index.manifest.get("views", []))
        self.rows = {row["asset_id"]: row for row in self.index.assets}
        self._thumbs = Path(tempfile.mkdtemp(prefix="dam3d-serve-"))
        atexit.register(shutil.rmtree, self._thumbs, ignore_errors=True)
        if warm_up:
            self._warm_up()

    def _warm_up(self) -> None:
        """Load the embedding model and run both models once, so the first visitor does not wait for it."""
        photo = self._thumbs / "warm-up.png"
        image = Image.new("RGB", (256, 256), (235, 235, 235))
        image.paste((40, 60, 160), (80, 60, 180, 200))
        image.save(photo)
        self.encoder.encode(photo)
        photo.unlink()
        if self.encoder.has_text:
            self.encoder.encode_text("warm up")

    # -- the query ---------------------------------------------------------------------------

    def check_upload(self, photo: str | Path) -> None:
        """Refuse a file over the upload cap before decoding it (the pixel cap is load_image's)."""
        size = Path(photo).stat().st_size
        if size > self.max_upload_bytes:
            raise QueryError(
                f"{Path(photo).name} is too large: {size / 1024 / 1024:.3g} MB, over the limit of "
                f"{self.max_upload_bytes / 1024 / 1024:.3g} MB (dam3d serve --max-upload-mb)"
            )

    def _scope(self, fusion: str | None, where: str | None) -> tuple[str, np.ndarray | None]:
        """The fusion to search with and the rows the filter lets through (None: all); QueryError if refused."""
        try:
            fusion = self.index.fusion(fusion)
        except ValueError as exc:
            raise QueryError(str(exc)) from None
        if not (where and where.strip()):
            return fusion, None
        try:
            return fusion, self.index.select(where)
        except FilterError as exc:
            raise QueryError(f"Filter: {exc}") from None

    def query(self, photo: str | Path, *, k: int = 5, fusion: str | None = None, where: str | None = None) -> dict[str, Any]:
        """Cut out, embed and search one photo (fusion: Index.fusion's rule); QueryError with a readable reason.

        `where`: a metadata filter (dam3d.search.filters; blank: none), checked before the photo is.
        Each sizeable separate object of the photo is searched on its own (QueryEncoder.encode_objects,
        one embedding batch). Returns {"cutout": PIL image, "vector": (D,) float32, "note": str | None,
        "choice": the query's object choice (dam3d.search.query), "hits": [hit + "metadata", "thumbnail",
        "views", "highlight"] (all of the first, most salient object), "objects": [{"cutout", "box":
        [x0, y0, x1, y1] px, "choice", "note", "hits"}] (one entry for a photo of one object),
        "matching": SKUs the filter let through, "seconds": float}.
        """
        fusion, rows = self._scope(fusion, where)
        self.check_upload(photo)
        start = time.perf_counter()
        try:
            objects = self.encoder.encode_objects(photo)
        except AssetError as exc:
            # The reason names the server's temporary copy; the user knows the file by its name.
            raise QueryError(f"{Path(photo).name}: {exc.reason.replace(str(photo), Path(photo).name)}") from None
        weight = self.index.colour_weight()
        found = [{"cutout": o.cutout, "box": list(o.box), "choice": o.choice.as_dict(), "note": o.choice.note,
                  "hits": [self._describe(h) for h in self.index.search(
                      o.vector, k=int(k), fusion=fusion, where=rows,
                      colour=self.index.query_colour(o.cutout) if weight > 0 else None)]}
                 for o in objects]
        seconds = time.perf_counter() - start
        first = objects[0]
        return {"cutout": first.cutout, "vector": first.vector, "note": found[0]["note"] if len(found) == 1 else None,
                "choice": found[0]["choice"], "hits": found[0]["hits"], "objects": found,
                "matching": len(self.index.assets) if rows is None else len(rows), "seconds": seconds}

    def query_text(self, text: str, *, k: int = 5, fusion: str | None = None, where: str | None = None) -> dict[str, Any]:
        """Search by text with the index's model's text tower; QueryError with a readable reason.

        QueryError when the model has no text tower (the message of NoTextTower), the text is empty,
        or the fusion or filter is refused. Returns `query`'s dict, with "cutout", "note" and "choice" None
        and one entry in "objects".
        """
        fusion, rows = self._scope(fusion, where)
        start = time.perf_counter()
        try:
            vector = self.encoder.encode_text(text)
        except ValueError as exc:  # NoTextTower, or an empty text
            raise QueryError(f"Text: {exc}") from None
        hits = self.index.search(vector, k=int(k), fusion=fusion, where=rows)
        described = [self._describe(h) for h in hits]
        return {"cutout": None, "vector": vector, "note": None, "choice": None, "hits": described,
                "objects": [{"cutout": None, "box": None, "choice": None, "note": None, "hits": described}],
                "matching": len(self.index.assets) if rows is None else len(rows), "seconds": time.perf_counter() - start}

    def look_alikes(self, fusion: str | None = None, threshold: float | None = None, *,
                    max_pairs: int = MAX_LOOK_ALIKES) -> dict[str, Any]:
        """The index's look-alike pairs (dam3d.search.audit.audit, its default k), as the Look-alikes tab shows them.

        fusion: Index.fusion's rule; threshold: a cosine (None: the audit's default). QueryError for a bad
        fusion or threshold. Returns {"audit": the Audit, "shown": pairs shown (at most max_pairs),
        "html": the pairs' table (dam3d.search.audit_page.pairs_html, thumbnails embedded)}.
        """
        from dam3d.search.audit import DEFAULT_THRESHOLD, audit
        from dam3d.search.audit_page import pairs_html

        threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
        try:
            result = audit(self.index, self.index.fusion(fusion), threshold=threshold)
        except ValueError as exc:
            raise QueryError(f"Look-alikes: {exc}") from None
        shown = min(len(result.pairs), max_pairs)
        html = pairs_html(result, self.index, everything="the CSV `dam3d audit` writes", max_pairs=max_pairs)
        return {"audit": result, "shown": shown, "html": html}

    def _describe(self, hit: dict) -> dict:
        row = self.rows[hit["asset_id"]]
        metadata = {k: v for k, v in row.items() if k not in INTERNAL_COLUMNS and v not in (None, "")}
        thumbnail, views = self.thumbnail(hit["asset_id"]), self.view_paths(hit["asset_id"])
        return {**hit, "metadata": metadata, "thumbnail": thumbnail, "views": views,
                "highlight": _highlight(hit["matched"], thumbnail is not None, [name for _, name in views])}

    def view_paths(self, asset_id: str) -> list[tuple[str, str]]:
        """(path, view name) of the asset's rendered views that exist (a failed render leaves an empty file)."""
        found = []
        for view in self.views:
            path = layout.view(self.results, asset_id, view)
            if has_result(path):
                found.append((str(path), view))
        return found

    @cache  # noqa: B019 - one app per process; the cache lives as long as the app
    def thumbnail(self, asset_id: str) -> str | None:
        """A PNG of the catalogue image small enough for the page (DAM originals may be huge TIFFs)."""
        from dam3d.stages.images import load_image

        path = Path(self.rows[asset_id]["image"])
        if not path.is_absolute() and not path.exists():
            path = self.results.parent / path  # relative to the directory the pipeline ran in
        try:
            image = load_image(path, asset_id, stage="serve", max_pixels=self.max_pixels)
        except AssetError:
            return None
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        out = self._thumbs / f"{asset_id}.png"  # asset ids are file-name safe
        image.save(out)
        return str(out)

    @property
    def allowed_paths(self) -> list[str]:
        return [str(layout.renders(self.results)), str(self._thumbs)]

    def summary(self) -> str:
        m = self.index.manifest
        return (f"Index `{self.index.directory}`: {len(self.index.assets)} SKUs, model {m['model']['name']}, "
                f"cutout {m['backends']['cutout']}, {len(self.views)} views per SKU.")


def _highlight(matched: str, has_thumbnail: bool, views: list[str]) -> int | None:
    """1-based position in a result's strip (catalogue image, then the views shown) of what gave its score."""
    if matched == MATCHED_CUTOUT:
        return 1 if has_thumbnail else None
    if matched in views:
        return views.index(matched) + 1 + has_thumbnail
    return None


def _matched_text(matched: str) -> str:
    if matched == MATCHED_CUTOUT:
        return "matched: the catalogue photo"
    if matched == MATCHED_FUSED:
        return "matched: the fused vector (photo + views)"
    return f"matched: view `{matched}`"


def _caption(hit: dict) -> str:
    # Re-ranked by colour, the colour similarity says why a lower score can rank higher.
    colour = f" · colour {hit['colour']:.3f}" if "colour" in hit else ""
    lines = [f"### {hit['rank']}. {hit['sku']}",
             f"score **{hit['score']:.3f}**{colour} · {_matched_text(hit['matched'])} · image `{Path(hit['image']).name}`"]
    if hit["metadata"]:
        lines.append(" · ".join(f"{k}: {v}" for k, v in hit["metadata"].items()))
    return "\n\n".join(lines)


def build_ui(app: SearchApp):  # noqa: ANN201 - gr.Blocks, imported lazily
    import gradio as gr

    def photo_input(**kwargs: Any) -> gr.Image:
        """An image upload whose file goes to the handler unopened, so that a non-image gets dam3d's message.

        gr.Image would open it with Pillow first and fail with Pillow's error about a temporary file.
        (The method is replaced on the instance: a subclass would make Gradio write a .pyi stub
        next to this module.)
        """
        component = gr.Image(**kwargs)
        opening = component.preprocess

        def preprocess(payload):  # noqa: ANN001, ANN202
            if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
                return str(payload.path)
            return opening(payload)

        component.preprocess = preprocess
        return component

    defaults = app.index.manifest["config"].get("search", {})

    def search(photo: str | None, text: str | None, mode: str, k: int, fusion: str, where: str | None):  # noqa: ANN202
        """The results of the photo (mode "photo") or of the text (mode "text"), with the filter."""
        where = where or ""
        query = photo if mode == "photo" else (text or "").strip()
        if not query:
            return None, None, "", mode
        try:
            if mode == "photo":
                result = app.query(photo, k=int(k), fusion=fusion, where=where)
            else:
                result = app.query_text(query, k=int(k), fusion=fusion, where=where)
        except QueryError as exc:
            print(f"dam3d serve: refused: {exc}", file=sys.stderr)
            title = next((f"{word} refused" for word in ("Filter", "Text") if str(exc).startswith(f"{word}:")), "Photo refused")
            raise gr.Error(str(exc), title=title, print_exception=False) from None
        if result["note"]:
            gr.Warning(result["note"])
        scope = f", {result['matching']} of {len(app.index.assets)} SKUs match the filter" if where.strip() else ""
        groups = _groups(result["objects"])
        if not result["hits"]:
            return result["cutout"], [], f"No SKU matches the filter `{where.strip()}`.", mode
        what = "cutout + embedding + search" if mode == "photo" else f"text “{query}”: text embedding + search"
        if len(groups) > 1:
            tops = ", ".join(f"**{g['hits'][0]['sku']}** (object {i})" for i, g in enumerate(groups, start=1) if g["hits"])
            status = (f"{len(groups)} objects in the photo, each searched on its own: top matches {tops}; "
                      f"{len(result['hits'])} SKUs shown per object{scope}, fusion `{fusion}`, {what} in "
                      f"{result['seconds']:.2f} s.")
            return result["cutout"], groups, status, mode
        top = result["hits"][0]
        status = (f"Top match **{top['sku']}** (score {top['score']:.3f}); {len(result['hits'])} SKUs shown{scope}, "
                  f"fusion `{fusion}`, {what} in {result['seconds']:.2f} s.")
        return result["cutout"], groups, status, mode

    def look_alikes(fusion: str, threshold: float | None):  # noqa: ANN202
        """The Look-alikes tab's status line and table."""
        try:
            found = app.look_alikes(fusion, threshold)
        except QueryError as exc:
            print(f"dam3d serve: refused: {exc}", file=sys.stderr)
            raise gr.Error(str(exc), title="Look-alikes refused", print_exception=False) from None
        result = found["audit"]
        if not result.pairs:
            status = (f"No pair of SKUs reaches a {result.fusion} similarity of {result.threshold:g} among the "
                      f"{result.skus} SKUs; a lower threshold lists less similar ones.")
        else:
            shown = "all shown" if found["shown"] == len(result.pairs) else f"the {found['shown']} most similar shown"
            pairs = f"{len(result.pairs)} look-alike pair" + ("s" if len(result.pairs) > 1 else "")
            status = (f"**{pairs}** (fusion `{result.fusion}`, similarity ≥ "
                      f"{result.threshold:g}, {result.skus} SKUs, {result.method} in {result.seconds:.2f} s); {shown}.")
        return status, found["html"]

    def by_photo(photo: str | None, text: str | None, mode: str, k: int, fusion: str, where: str | None):  # noqa: ANN202
        return search(photo, text, "photo", k, fusion, where)

    def by_text(photo: str | None, text: str | None, mode: str, k: int, fusion: str, where: str | None):  # noqa: ANN202
        return search(photo, text, "text", k, fusion, where)

    # Gradio keeps every upload and every image it sent in its cache: files older than an hour go.
    with gr.Blocks(title="dam3d search", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# dam3d visual search\nDrop a customer photo: the catalogue SKUs that look most like it come first, "
                    "with their catalogue image and 3D views. " + app.summary())
        hits = gr.State(None)
        with gr.Tab("Search", id="search-tab"), gr.Row():
            with gr.Column(scale=1, min_width=280):
                photo = photo_input(label="Photo", type="filepath", sources=["upload", "clipboard"], height=280, elem_id="photo")
                text = gr.Textbox(label="Or describe it (Enter searches by text)", placeholder="red ceramic mug", max_lines=1,
                                  elem_id="text", info=text_info(app))
                mode = gr.State("photo")  # what k, fusion and the filter search again: the last photo or text
                k = gr.Slider(1, min(MAX_K, len(app.index.assets)), value=min(int(defaults.get("k", 5)), len(app.index.assets)),
                              step=1, label="k (SKUs shown)", elem_id="k")
                fusion = gr.Radio(list(FUSIONS), value=app.index.fusion(), label="Fusion",
                                  info="2d: cutout only · 3d: best view · mean: averaged · max: best of all", elem_id="fusion")
                where = gr.Textbox(label="Filter (Enter searches)", placeholder='category == "chairs" and price < 100',
                                   info=f"columns: {', '.join(app.index.columns)}; ==, !=, <, >, in (\"a\", \"b\"), and",
                                   max_lines=1, elem_id="where")
                button = gr.Button("Search", variant="primary", elem_id="search")
                cutout = gr.Image(label="Your photo, cut out", type="pil", image_mode="RGBA", height=220,
                                  interactive=False, elem_id="cutout")
            with gr.Column(scale=3):
                status = gr.Markdown("", elem_id="status")

                @gr.render(inputs=hits)
                def show(groups: list[dict] | None) -> None:
                    if groups is None:
                        gr.Markdown("No search yet: drop a photo (or describe the product) on the left.", elem_id="no-results")
                        return
                    if not any(group["hits"] for group in groups):
                        gr.Markdown("No SKU matches the filter.", elem_id="no-results")
                        return
                    several = len(groups) > 1
                    for i, group in enumerate(groups, start=1):
                        prefix = f"object-{i}-" if several else ""
                        if several:
                            with gr.Row(elem_classes=["dam3d-object"], elem_id=f"object-{i}"):
                                gr.Image(group["cutout"], type="pil", image_mode="RGBA", height=160, width=160,
                                         interactive=False, show_label=False, elem_id=f"object-{i}-crop",
                                         key=f"object-crop-{i}", scale=0, min_width=160)
                                gr.Markdown(f"### Object {i} of {len(groups)}\n\nbox {group['box']} (x0, y0, x1, y1 "
                                            f"in the photo's pixels)", elem_id=f"object-{i}-title")
                        for hit in group["hits"]:
                            with gr.Group(elem_classes=["dam3d-hit"]):
                                gr.Markdown(_caption(hit), elem_id=f"{prefix}hit-{hit['rank']}",
                                            elem_classes=["dam3d-hit-caption"])
                                strip = ([(hit["thumbnail"], "catalogue")] if hit["thumbnail"] else []) + hit["views"]
                                gr.Gallery(strip, columns=max(len(strip), 1), rows=1, height="auto", object_fit="contain",
                                           allow_preview=True, show_label=False, elem_classes=_strip_classes(hit),
                                           key=f"gallery-{prefix}{hit['rank']}")

        with gr.Tab("Look-alikes", id="look-alikes-tab"):
            gr.Markdown("The catalogue's look-alike SKU pairs, as `dam3d audit` lists them: pairs whose similarity "
                        "reaches the threshold (a cosine), best first, each with its two catalogue photos. Computed "
                        "on the whole index when the button is pressed (seconds for thousands of SKUs).")
            with gr.Row():
                audit_fusion = gr.Radio(list(FUSIONS), value=app.index.fusion(), label="Fusion", elem_id="audit-fusion",
                                        info="2d: cutouts · mean: fused vectors · 3d: views at the same azimuth · max: 2d or 3d")
                threshold = gr.Number(value=audit_threshold(), minimum=-1, maximum=1, step=0.01, label="Threshold",
                                      info="cosine, -1 to 1", elem_id="audit-threshold")
                audit_button = gr.Button("Find look-alikes", variant="primary", elem_id="audit-run", scale=0)
            audit_status = gr.Markdown("Press **Find look-alikes** to list the pairs.", elem_id="audit-status")
            audit_table = gr.HTML("", elem_id="audit-pairs", elem_classes=["dam3d-audit"])
        # Its own queue: a long audit does not hold up the searches.
        gr.on([audit_button.click], look_alikes, [audit_fusion, threshold], [audit_status, audit_table],
              concurrency_limit=1, concurrency_id="audit", trigger_mode="once")

        # A new photo or text (Enter) searches at once, and k, fusion or the filter (Enter) search the last of them
        # again; while one search runs, only the latest change waits.
        inputs, outputs = [photo, text, mode, k, fusion, where], [cutout, hits, status, mode]
        gr.on([button.click, photo.change], by_photo, inputs, outputs, trigger_mode="always_last")
        gr.on([text.submit], by_text, inputs, outputs, trigger_mode="always_last")
        gr.on([k.change, fusion.change, where.submit], search, inputs, outputs, trigger_mode="always_last")
    return demo


def _groups(objects: list[dict]) -> list[dict]:
    """The page's result groups, one per object searched: {"cutout" (PIL or None), "box", "hits"}."""
    return [{"cutout": o["cutout"], "box": o["box"], "hits": o["hits"]} for o in objects]


def audit_threshold() -> float:
    """The Look-alikes tab's default threshold: `dam3d audit`'s."""
    from dam3d.search.audit import DEFAULT_THRESHOLD

    return DEFAULT_THRESHOLD


def text_info(app: SearchApp) -> str:
    """The text box's help line: what the text searches with, or why this index cannot search by text."""
    model = app.index.manifest["model"]
    if app.encoder.has_text:
        return f"embedded by the text tower of {model['name']}, compared with the catalogue's image vectors"
    return (f"this index's model ({model['name']}, backend {model['backend']}) has no text tower: "
            "search by text needs an index built with a CLIP-family model (backend clip)")


# A result's strip is one row as wide as the page (catalogue image + every view side by side, no
# scrolling); a click on an image opens Gradio's preview, which gets the room to show it large.
CSS = """
.dam3d-views .grid-container { grid-template-columns: repeat(var(--grid-cols), minmax(0, 1fr)) !important; }
.dam3d-views .grid-wrap.fixed-height { min-height: 0 !important; max-height: none !important; overflow-y: hidden !important; }
.dam3d-views:has(.preview) { height: 480px !important; }
.dam3d-views .caption-label { max-width: 100% !important; }
.dam3d-audit table { border-collapse: collapse; }
.dam3d-audit td, .dam3d-audit th { border: 1px solid #bbb; padding: 4px 8px; vertical-align: middle; }
.dam3d-audit td.score { text-align: right; }
.dam3d-audit figure { margin: 0; text-align: center; }
.dam3d-audit figcaption { font-size: 12px; }
"""


def _strip_classes(hit: dict) -> list[str]:
    """The strip's classes: `dam3d-match-N` outlines its N-th image (what gave the score; see css)."""
    return ["dam3d-views"] + ([f"dam3d-match-{hit['highlight']}"] if hit.get("highlight") else [])


def css(strip_length: int) -> str:
    """The page's CSS, with an outline rule for each position of a strip of `strip_length` images."""
    rules = [f'.dam3d-match-{n} button.thumbnail-item[aria-label^="Thumbnail {n} of "]'
             for n in range(1, strip_length + 1)]
    outline = " { outline: 4px solid var(--color-accent) !important; outline-offset: -4px; }\n"
    return CSS + ",\n".join(rules) + outline if rules else CSS


def theme():  # noqa: ANN201
    """The default theme with system fonts: the page loads nothing from the internet."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def serve(index_dir: str | Path, *, host: str = "127.0.0.1", port: int = 7860, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB) -> None:
    start = time.perf_counter()
    app = SearchApp(index_dir, max_upload_mb=max_upload_mb)
    print(f"dam3d serve: {app.summary()} Models loaded in {time.perf_counter() - start:.1f} s.", file=sys.stderr)
    demo = build_ui(app)
    demo.queue(default_concurrency_limit=1)
    # `kill` (SIGTERM) exits like Ctrl-C, so the thumbnails' folder is removed (atexit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"dam3d serve: http://{host}:{port}/ (Ctrl-C stops it)", file=sys.stderr, flush=True)
    demo.launch(server_name=host, server_port=port, max_file_size=app.max_upload_bytes, allowed_paths=app.allowed_paths,
                show_error=True, theme=theme(), css=css(len(app.views) + 1), ssr_mode=False, inbrowser=False, share=False, quiet=True)


# -- latency benchmark (python -m dam3d.benchmarks.speed --search N) -------------------------------------

def synthetic_index(out_dir: Path, *, skus: int, config: dict, seed: int = 0) -> Path:
    """An index of `skus` random unit vectors with the real model's dimension and views, for timing search."""
    import dataclasses
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from dam3d.stages.cutout import resolve_backend
    from dam3d.stages.embed import embed_images, resolve_models

    backend = resolve_backend(config["cutout"]["backend"], config["cutout"]["model"])
    (spec,) = resolve_models(config["embed"]["models"][:1], config["embed"]["presets"])
    dim = embed_images(spec, [Image.new("RGB", (32, 32))]).shape[1]
    from dam3d.stages.render import view_names

    views = view_names(config["render"]["views"])
    rng = np.random.default_rng(seed)

    def unit(*shape: int) -> np.ndarray:
        v = rng.standard_normal((*shape, dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"asset_id": f"SKU-{i:07d}", "sku": f"SKU-{i:07d}", "image": f"SKU-{i:07d}.jpg", "views_ok": len(views)} for i in range(skus)]
    pq.write_table(pa.Table.from_pylist(rows), out_dir / "assets.parquet")
    # stored as the configured index stores them (index.dtype; PCA is left out: random vectors have no principal axes)
    stored = write_vectors(out_dir / "store-000001", unit(skus), unit(skus, max(len(views), 1)), unit(skus),
                           dtype=config.get("index", {}).get("dtype", DEFAULT_DTYPE))
    manifest = {"config": config, "backends": {"cutout": backend}, "model": dataclasses.asdict(spec), "views": views, "dim": dim,
                "vectors": stored, "counts": {"indexed": skus}, "synthetic": True}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out_dir


def search_latency(photos: list[Path], *, skus: int = 3000, queries: int = 30, config: dict, k: int = 5, fusion: str | None = None,
                   threads: int = 0) -> dict:
    """Seconds per query end to end (cutout + embed + search) on a synthetic `skus` index, models loaded once."""
    set_threads(threads)
    with tempfile.TemporaryDirectory(prefix="dam3d-bench-search-") as tmp:
        index_dir = synthetic_index(Path(tmp) / "index", skus=skus, config=config)
        start = time.perf_counter()
        app = SearchApp(index_dir, warm_up=True)
        load = time.perf_counter() - start
        times, cpu = [], []
        for i in range(queries):
            photo = photos[i % len(photos)]
            start, start_cpu = time.perf_counter(), time.process_time()
            result = app.query(photo, k=k, fusion=fusion)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)  # all threads of this process
            assert len(result["hits"]) == k
        # Where the time goes: the cutout (load + segment + crop), the embedding, the search.
        parts: dict[str, list[float]] = {"cutout": [], "embed": [], "search": []}
        for i in range(queries):
            start = time.perf_counter()
            _, flat, _ = app.encoder.prepare(photos[i % len(photos)])
            parts["cutout"].append(time.perf_counter() - start)
            start = time.perf_counter()
            vector = app.encoder.embed([flat])[0]
            parts["embed"].append(time.perf_counter() - start)
            start = time.perf_counter()
            app.index.search(vector, k=k, fusion=fusion)
            parts["search"].append(time.perf_counter() - start)
    return {"skus": skus, "queries": queries, "dim": int(app.index.vec2d.shape[1]), "views": len(app.views),
            "model": app.index.manifest["model"]["name"], "cutout": app.index.manifest["backends"]["cutout"],
            "load_seconds": load, "median": float(np.median(times)), "p95": float(np.percentile(times, 95)),
            "parts_median": {name: float(np.median(t)) for name, t in parts.items()}, "cpu_median": float(np.median(cpu)),
            "load_average": os.getloadavg()[0], "threads": threads}
