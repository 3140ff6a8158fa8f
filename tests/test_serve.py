"""`dam3d serve` end to end: a real index, the app on loopback, driven in headless Chromium.

Needs Debian's chromium (/usr/bin/chromium, installed by setup.sh) and the Python
`playwright` package (the test extra); the test fails, it does not skip, without them.
Set DAM3D_SCREENSHOT=path to keep the screenshot of the page with results (docs/serve.png).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from test_workflow import snakemake

CHROMIUM = os.environ.get("DAM3D_CHROMIUM", "/usr/bin/chromium")
QUERY = REPO / "sample" / "queries" / "IMG_2041.jpg"
EXPECTED = "CHAIR-0002"
# The query's SKU, the other chairs (the hard negatives) and one SKU whose id needs the safe mapping,
# with catalogue metadata (every manifest column but asset_id and image).
SKUS = {"CHAIR-0001": "green armchair", "CHAIR-0002": "blue shell chair", "CHAIR-0003": "red banquet chair",
        "LAMP 0007": "floor lamp"}
UPLOAD_CAP_MB = 1
TWIN = "CHAIR-0002-B"   # a duplicate of CHAIR-0002 that slipped into the DAM (twin_index_dir)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _pipeline(work: Path, rows: list[tuple[str, Image.Image | Path, str]]) -> Path:
    """The real pipeline (u2netp, inflate, 8 Blender views at 64 px, MobileNetV2) on (sku, photo, title) rows."""
    images = work / "images"
    images.mkdir()
    lines = ["asset_id,image,title,supplier"]
    for sku, photo, title in rows:
        if isinstance(photo, Path):
            shutil.copy(photo, images / f"{sku}.jpg")
        else:
            photo.save(images / f"{sku}.jpg", quality=85)
        lines.append(f"{sku},images/{sku}.jpg,{title},ACME")
    (work / "catalogue.csv").write_text("\n".join(lines) + "\n")
    config = {"catalogue": str(work / "catalogue.csv"), "render": {"resolution": 64, "aa": 1}}
    # Only the index (and what it needs): contact sheets and reports are not used here.
    result = snakemake(work, "--cores", "2", "--until", "index", config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "results" / "index" / "mobilenetv2"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real pipeline on 4 sample SKUs."""
    catalogue = REPO / "sample" / "catalogue"
    return _pipeline(tmp_path_factory.mktemp("serve"), [(sku, catalogue / f"{sku}.jpg", title) for sku, title in SKUS.items()])


@pytest.fixture(scope="module")
def twin_index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real pipeline on 3 SKUs: CHAIR-0002, TWIN (its photo re-exported: 90 % the size, JPEG 85) and LAMP 0007."""
    catalogue = REPO / "sample" / "catalogue"
    photo = Image.open(catalogue / "CHAIR-0002.jpg").convert("RGB")
    again = photo.resize((photo.width * 9 // 10, photo.height * 9 // 10), Image.Resampling.LANCZOS)
    rows = [("CHAIR-0002", catalogue / "CHAIR-0002.jpg", "blue shell chair"), (TWIN, again, "blue shell chair (copy)"),
            ("LAMP 0007", catalogue / "LAMP 0007.jpg", "floor lamp")]
    return _pipeline(tmp_path_factory.mktemp("serve-twin"), rows)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


@contextmanager
def _serving(index_dir: Path, log: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """`dam3d serve` on `index_dir` in its own process, with the default host; (url, process) once it answers."""
    port = _free_port()
    cmd = [sys.executable, "-m", "dam3d.cli", "serve", "--index", str(index_dir), "--port", str(port),
           "--max-upload-mb", str(UPLOAD_CAP_MB)]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dam3d serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"dam3d serve did not answer on {url} within 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(log.read_text()[-2000:])


@pytest.fixture(scope="module")
def server(index_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen]]:
    """`dam3d serve` in its own process, with the default host."""
    with _serving(index_dir, tmp_path_factory.mktemp("serve-log") / "serve.log") as served:
        yield served


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (setup.sh does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _open(browser, url: str) -> Iterator[object]:  # noqa: ANN001
    """A page of the app at `url`; on leaving, checks that it loaded nothing from outside the app."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(url)
    page.wait_for_selector("#photo input[type=file]", state="attached")
    yield page
    context.close()
    # Everything the page loaded came from the app itself: no fonts, scripts or analytics from the internet.
    outside = [u for u in requested if not u.startswith((url, "data:", "blob:"))]
    assert requested and not outside, outside


@pytest.fixture
def page(browser, server):  # noqa: ANN001, ANN201
    yield from _open(browser, server[0])


def _upload(page, path: Path) -> None:  # noqa: ANN001
    page.locator("#photo input[type=file]").set_input_files(str(path))


def _hits(page) -> list[str]:  # noqa: ANN001
    """The result captions in page order."""
    return page.locator("[id^='hit-']").all_inner_texts()


def _wait_for_top(page, sku: str, count: int | None = None, timeout: float = 60) -> list[str]:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hits = _hits(page)
        if hits and hits[0].startswith(f"1. {sku}") and (count is None or len(hits) == count):
            return hits
        page.wait_for_timeout(200)
    raise AssertionError(f"expected {sku} first ({count} hits); the page shows {_hits(page)}")


def _loaded_images(locator) -> list[tuple[int, int]]:  # noqa: ANN001
    """(naturalWidth, naturalHeight) of each <img> under the locator, once all have loaded."""
    locator.locator("img").first.wait_for()
    sizes = locator.locator("img").evaluate_all(
        "imgs => Promise.all(imgs.map(i => i.decode().then(() => [i.naturalWidth, i.naturalHeight], () => [0, 0])))")
    return [tuple(size) for size in sizes]


def test_default_host_is_loopback(server) -> None:  # noqa: ANN001
    url, _ = server
    port = int(url.rsplit(":", 1)[1].strip("/"))
    # 0100007F is 127.0.0.1 in /proc's byte order; 0.0.0.0 or :: would mean every interface.
    assert _listening_addresses(port) == {"0100007F"}


def test_upload_shows_the_right_sku_first_with_views(page, server, index_dir: Path) -> None:  # noqa: ANN001
    _upload(page, QUERY)
    hits = _wait_for_top(page, EXPECTED, count=len(SKUS))  # k defaults to config search.k (5), at most the index size
    assert "score" in hits[0] and "CHAIR-0002.jpg" in hits[0] and "title: blue shell chair · supplier: ACME" in hits[0]
    # Re-ranked by colour (the default weight): each hit shows its colour similarity beside its score.
    assert all(re.search(r"score \d\.\d{3} · colour \d\.\d{3} · matched", h) for h in hits), hits
    assert [h.split(".")[0] for h in hits] == ["1", "2", "3", "4"]
    assert f"Top match {EXPECTED}" in page.locator("#status").inner_text()

    # The cutout of the photo: a transparent square image, shown in the page.
    cutout = _loaded_images(page.locator("#cutout"))
    assert cutout and cutout[0][0] == cutout[0][1] > 100

    # The first result's strip: its catalogue image, then its 8 rendered views (64 px in this index).
    strip = page.locator(".dam3d-views").first
    strip.locator(".caption-label").nth(8).wait_for()
    assert strip.locator(".caption-label").all_inner_texts() == ["catalogue"] + [f"az{a:03d}" for a in range(0, 360, 45)]
    sizes = _loaded_images(strip)
    assert len(sizes) == 9 and all(w > 0 for w, _ in sizes)
    assert sizes[1:] == [(64, 64)] * 8
    assert sizes[0][0] > 64  # the catalogue thumbnail, not a view

    # A click on a view shows it larger.
    thumb = strip.locator("button.thumbnail-item").nth(3)
    small = thumb.bounding_box()
    thumb.click()
    preview = strip.locator("[data-testid=detailed-image]")
    preview.wait_for(state="visible", timeout=10_000)
    large = preview.bounding_box()
    assert large["height"] > 1.5 * small["height"], (small, large)

    screenshot = os.environ.get("DAM3D_SCREENSHOT")
    page.keyboard.press("Escape")
    if screenshot:
        page.wait_for_timeout(500)
        page.screenshot(path=screenshot, full_page=True)


def test_k_and_fusion_change_the_results(page) -> None:  # noqa: ANN001
    _upload(page, QUERY)
    _wait_for_top(page, EXPECTED, count=len(SKUS))
    page.locator("#fusion").get_by_label("2d").check()
    _wait_for_top(page, EXPECTED)
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('fusion 2d')", timeout=60_000)
    k = page.locator("#k input[type=number]")
    k.fill("2")
    k.press("Enter")
    _wait_for_top(page, EXPECTED, count=2)
    assert "fusion 2d" in page.locator("#status").inner_text()


def _strip_outlines(strip) -> list[tuple[str, bool]]:  # noqa: ANN001
    """(caption, outlined?) of each image of a result's strip."""
    return [tuple(x) for x in strip.locator("button.thumbnail-item").evaluate_all(
        "bs => bs.map(b => [b.querySelector('.caption-label')?.innerText ?? '', "
        "getComputedStyle(b).outlineStyle === 'solid' && getComputedStyle(b).outlineWidth === '4px'])")]


def test_the_view_that_matched_is_outlined_in_the_strip(page, index_dir: Path) -> None:  # noqa: ANN001
    from dam3d.search.serve import SearchApp

    expected = {h["sku"]: h["matched"] for h in SearchApp(index_dir, warm_up=False).query(QUERY, k=len(SKUS), fusion="3d")["hits"]}
    assert set(expected.values()) <= {f"az{a:03d}" for a in range(0, 360, 45)}   # 3d: always a view here
    page.locator("#fusion").get_by_label("3d").check()
    _upload(page, QUERY)
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('fusion 3d')", timeout=60_000)
    hits = _wait_for_top(page, next(iter(expected)), count=len(SKUS))
    strips = page.locator(".dam3d-views")
    for i, caption in enumerate(hits):
        sku = caption.split("\n")[0].split(". ", 1)[1]
        assert f"matched: view {expected[sku]}" in caption, caption
        strip = strips.nth(i)
        strip.locator(".caption-label").nth(8).wait_for()
        outlined = [name for name, on in _strip_outlines(strip) if on]
        assert outlined == [expected[sku]], (sku, _strip_outlines(strip))
    # mean has no single view: nothing is outlined
    page.locator("#fusion").get_by_label("mean").check()
    page.wait_for_function("() => document.querySelector('#hit-1')?.innerText.includes('matched: the fused vector')",
                           timeout=60_000)
    page.locator(".dam3d-views").first.locator(".caption-label").nth(8).wait_for()
    assert not any(on for _, on in _strip_outlines(page.locator(".dam3d-views").first))


def test_the_filter_box_restricts_the_results_and_shows_errors(page) -> None:  # noqa: ANN001
    _upload(page, QUERY)
    _wait_for_top(page, EXPECTED, count=len(SKUS))
    where = page.locator("#where").locator("textarea, input").first
    where.fill('title != "blue shell chair" and supplier == "ACME"')
    where.press("Enter")
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('3 of 4 SKUs match the filter')",
                           timeout=60_000)
    deadline = time.monotonic() + 30    # the results are rendered just after the status line
    while len(_hits(page)) != 3 and time.monotonic() < deadline:
        page.wait_for_timeout(200)
    hits = _hits(page)
    assert len(hits) == 3 and not any(EXPECTED in h for h in hits), hits
    where.fill('brand == "x"')
    where.press("Enter")
    message = _toast(page, "brand")
    assert "unknown column 'brand' at character 1" in message and "title" in message, message
    where.fill('title == "sofa"')
    where.press("Enter")
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('No SKU matches the filter')",
                           timeout=60_000)
    page.wait_for_function("() => document.querySelector('#no-results')?.innerText === 'No SKU matches the filter.'",
                           timeout=30_000)
    assert _hits(page) == []
    where.fill("")
    where.press("Enter")
    _wait_for_top(page, EXPECTED, count=len(SKUS))


def _toast(page, text: str) -> str:  # noqa: ANN001
    toast = page.locator(".toast-body", has_text=text).first
    toast.wait_for(state="visible", timeout=60_000)
    return toast.inner_text()


BOUNDARY = "dam3d-test-boundary"


def _multipart(path: Path) -> bytes:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{path.name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + path.read_bytes() + f"\r\n--{BOUNDARY}--\r\n".encode()


def test_refuses_bad_files_and_stays_up(page, server, tmp_path: Path) -> None:  # noqa: ANN001
    url, proc = server
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("this is a text file, not a photo\n")
    _upload(page, not_image)
    message = _toast(page, "notes.jpg")
    assert "not an image" in message, message

    huge = tmp_path / "huge.png"
    Image.new("1", (12000, 12000), 1).save(huge)  # 144 MP in a few KB: over cutout.max_pixels (50 MP)
    assert huge.stat().st_size < UPLOAD_CAP_MB * 1024 * 1024
    _upload(page, huge)
    message = _toast(page, "huge.png")
    assert "12000x12000" in message and "over the limit" in message, message

    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (700, 700, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > UPLOAD_CAP_MB * 1024 * 1024
    _upload(page, big)
    message = _toast(page, "big.png")
    assert "exceed the maximum allowed size of 1.0 Mb" in message, message
    # A client that skips the page's check is refused by the server.
    request = urllib.request.Request(f"{url}gradio_api/upload", data=_multipart(big), method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 413
    assert proc.poll() is None

    # Still up and still answering.
    _upload(page, QUERY)
    _wait_for_top(page, EXPECTED, count=len(SKUS))
    assert proc.poll() is None


def test_search_app_in_process(index_dir: Path, tmp_path: Path) -> None:
    """The query path without the page: cutout returned for display, refusals as QueryError."""
    from dam3d.search.serve import QueryError, SearchApp

    app = SearchApp(index_dir, max_upload_mb=0.01, warm_up=False)
    with pytest.raises(QueryError, match=r"^IMG_2041.jpg is too large: 0.0181 MB, over the limit of 0.01 MB"):
        app.query(QUERY)
    app.max_upload_bytes = 25 * 1024 * 1024
    result = app.query(QUERY, k=3, fusion="mean")
    assert [h["rank"] for h in result["hits"]] == [1, 2, 3] and result["hits"][0]["sku"] == EXPECTED
    assert result["cutout"].mode == "RGBA" and result["cutout"].size == (512, 512) and result["note"] is None
    top = result["hits"][0]
    assert [name for _, name in top["views"]] == [f"az{a:03d}" for a in range(0, 360, 45)]
    assert Image.open(top["thumbnail"]).size == (384, 384)
    lamp = next(h for h in app.query(QUERY, k=5)["hits"] if h["sku"] == "LAMP 0007")
    assert len(lamp["views"]) == 8 and "LAMP_0007" in lamp["views"][0][0]  # the safe id names the folder
    with pytest.raises(QueryError, match="fusion must be one of"):
        app.query(QUERY, fusion="best")
    filtered = app.query(QUERY, k=5, where='title != "blue shell chair"')
    assert filtered["matching"] == 3 and EXPECTED not in [h["sku"] for h in filtered["hits"]] and len(filtered["hits"]) == 3
    with pytest.raises(QueryError, match=r"^Filter: unknown column 'brand' at character 1"):
        app.query(QUERY, where='brand == "x"')
    assert app.query(QUERY, where='title == "sofa"')["hits"] == []
    for fusion in ("3d", "max"):
        for hit in app.query(QUERY, k=5, fusion=fusion)["hits"]:
            names = ["catalogue"] + [name for _, name in hit["views"]]
            shown = "catalogue" if hit["matched"] == "cutout" else hit["matched"]
            assert names[hit["highlight"] - 1] == shown, hit
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(QueryError, match=r"^empty.jpg: image file is empty \(0 bytes\): empty.jpg$"):
        app.query(empty)


@pytest.fixture(scope="module")
def twin_server(twin_index_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen]]:
    with _serving(twin_index_dir, tmp_path_factory.mktemp("serve-twin-log") / "serve.log") as served:
        yield served


def _audit_status(page, text: str) -> str:  # noqa: ANN001
    page.wait_for_function(f"() => document.querySelector('#audit-status')?.innerText.includes({text!r})", timeout=60_000)
    return page.locator("#audit-status").inner_text()


def test_look_alikes_tab_lists_the_duplicate_pair(browser, twin_server) -> None:  # noqa: ANN001
    for page in _open(browser, twin_server[0]):
        page.get_by_role("tab", name="Look-alikes").click()
        # Nothing is computed at page load: the button does it.
        assert "Press Find look-alikes" in _audit_status(page, "Press")
        assert page.locator("#audit-pairs tr.dam3d-pair").count() == 0
        page.locator("#audit-run").click()
        status = _audit_status(page, "look-alike pair")
        assert status.startswith("1 look-alike pair (fusion") and "3 SKUs" in status and "all shown" in status, status
        rows = page.locator("#audit-pairs tr.dam3d-pair")
        assert rows.count() == 1
        pair = rows.first.inner_text()
        assert "CHAIR-0002" in pair and TWIN in pair and "LAMP" not in pair, pair
        assert float(rows.first.locator("td.score").inner_text()) >= 0.9
        sizes = _loaded_images(rows.first)   # the two catalogue photos side by side
        assert len(sizes) == 2 and all(w > 0 for w, _ in sizes), sizes
        assert "1 pairs found; all shown." in page.locator("#audit-pairs").inner_text()

        # No pair reaches 1.0 (a re-exported photo is not bit-identical): the page says so.
        page.locator("#audit-fusion").get_by_label("2d").check()
        threshold = page.locator("#audit-threshold input")
        threshold.fill("1")
        page.locator("#audit-run").click()
        status = _audit_status(page, "No pair")
        assert "No pair of SKUs reaches a 2d similarity of 1 among the 3 SKUs" in status, status
        assert page.locator("#audit-pairs tr.dam3d-pair").count() == 0
        assert "No pair reaches the threshold." in page.locator("#audit-pairs").inner_text()


def test_look_alikes_in_process(twin_index_dir: Path) -> None:
    """The Look-alikes tab's function: dam3d.search.audit on the loaded index, capped, refusals as QueryError."""
    from dam3d.search.serve import QueryError, SearchApp

    app = SearchApp(twin_index_dir, warm_up=False)
    found = app.look_alikes()
    result = found["audit"]
    assert [{p.sku_a, p.sku_b} for p in result.pairs] == [{"CHAIR-0002", TWIN}] and found["shown"] == 1
    assert result.fusion == app.index.fusion() and result.threshold == 0.9 and result.pairs[0].score >= 0.9
    assert found["html"].count("<tr class='dam3d-pair'>") == 1 and found["html"].count("data:image/jpeg;base64,") == 2
    assert "LAMP" not in found["html"]
    every = app.look_alikes("2d", -1, max_pairs=2)   # 3 SKUs: 3 pairs, 2 shown
    assert len(every["audit"].pairs) == 3 and every["shown"] == 2
    assert "3 pairs found; the 2 most similar shown, every pair in the CSV `dam3d audit` writes." in every["html"]
    assert {every["audit"].pairs[0].sku_a, every["audit"].pairs[0].sku_b} == {"CHAIR-0002", TWIN}
    none = app.look_alikes("2d", 1.0)
    assert none["audit"].pairs == [] and none["shown"] == 0 and "No pair reaches the threshold." in none["html"]
    with pytest.raises(QueryError, match=r"^Look-alikes: threshold is a cosine, between -1 and 1, not 1.5"):
        app.look_alikes("2d", 1.5)
    with pytest.raises(QueryError, match=r"^Look-alikes: fusion must be one of"):
        app.look_alikes("best")


def test_search_latency_bench(tmp_path: Path) -> None:
    """`python -m dam3d.benchmarks.speed --search N` runs: a synthetic index with the real model's dimension and 8 views."""
    import yaml

    from dam3d.search.serve import search_latency

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    r = search_latency([QUERY], skus=300, queries=3, config=config)
    assert (r["skus"], r["queries"], r["dim"], r["views"], r["model"]) == (300, 3, 1280, 8, "mobilenetv2")
    assert set(r["parts_median"]) == {"cutout", "embed", "search"}
    assert 0 < r["parts_median"]["search"] < r["median"] <= r["p95"]
