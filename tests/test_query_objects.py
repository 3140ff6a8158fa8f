"""Several products in one photo: each sizeable separate object of the query's mask is searched on its own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import product_photo
from dam3d import cli
from dam3d.search.query import MAX_OBJECTS, select_object, split_objects
from test_query_choice import dark_pixels, mask_with


def test_two_separate_objects_are_split_the_most_salient_first() -> None:
    mask = mask_with((640, 480), (0.05, 0.2, 0.4, 0.8), (0.55, 0.3, 0.9, 0.7))  # a large and a smaller object
    found = split_objects(mask)
    assert [choice.kind for _, _, choice in found] == ["object", "object"]
    (first, box1, c1), (second, box2, c2) = found
    assert box1 == (32, 96, 257, 385) and box2 == (352, 144, 577, 337), (box1, box2)  # PIL ellipses include their end
    assert "object 1 of 2" in c1.reason and "most salient" in c1.reason and "object 2 of 2" in c2.reason
    # Each mask holds its object only.
    assert first.getbbox() == box1 and second.getbbox() == box2


def test_specks_and_small_objects_do_not_become_objects() -> None:
    mask = mask_with((640, 480), (0.3, 0.2, 0.7, 0.8))
    for x, y in ((5, 5), (620, 460), (600, 20)):
        mask.putpixel((x, y), 255)   # specks far from the object
    ImageDraw.Draw(mask).rectangle((560, 380, 600, 420), fill=255)  # a small thing, under SECOND_SHARE of the product
    assert split_objects(mask) == []   # one object: the single-object path (select_object) decides
    kept, choice = select_object(mask)
    assert choice.kind == "largest object"


def test_a_chair_with_separate_legs_stays_one_object() -> None:
    chair = Image.new("L", (640, 480), 0)
    draw = ImageDraw.Draw(chair)
    draw.rectangle((220, 60, 420, 200), fill=255)    # back
    draw.rectangle((200, 206, 440, 260), fill=255)   # seat, 5 px under the back
    for x in (205, 300, 420):                        # legs, 5 px under the seat
        draw.rectangle((x, 266, x + 14, 440), fill=255)
    assert split_objects(chair) == []
    # ... while the same chair next to a lamp is two objects, the chair whole.
    draw.rectangle((520, 80, 600, 440), fill=255)
    found = split_objects(chair)
    assert len(found) == 2 and found[0][1] == (200, 60, 441, 441) and found[1][1] == (520, 80, 601, 441)


def test_at_most_max_objects_are_searched() -> None:
    boxes = [(0.02 + 0.16 * i, 0.3, 0.14 + 0.16 * i, 0.7) for i in range(6)]
    found = split_objects(mask_with((800, 400), *boxes))
    assert len(found) == MAX_OBJECTS and "2 more sizeable object(s) not searched" in found[0][2].reason
    assert split_objects(mask_with((800, 400), *boxes), max_objects=1) == []


def two_products(size: tuple[int, int] = (960, 400)) -> Image.Image:
    """A red vase on the left and a blue box on the right, on studio white, well apart."""
    w, h = size
    photo = Image.new("RGB", size, (245, 245, 245))
    photo.paste(product_photo("red-vase", size=(w // 2, h)), (0, 0))
    photo.paste(product_photo("blue-box", size=(w // 2, h)), (w // 2, 0))
    return photo


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_evaluate import real_index

    return real_index(tmp_path_factory.mktemp("objects"), ["red-vase", "blue-box", "green-lamp"])


def search(capsys: pytest.CaptureFixture[str], photo: Path, index_dir: Path, *extra: str) -> tuple[str, str]:
    assert cli.main(["search", str(photo), "--index", str(index_dir), "-k", "3", *extra]) == 0
    return capsys.readouterr()


def test_cli_searches_each_object(index_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Two products side by side: two result lists, each with its own product first; `--single`: one."""
    import dam3d.stages.cutout

    monkeypatch.setattr(dam3d.stages.cutout, "mask_fn", lambda *a, **k: dark_pixels)  # finds both objects
    photo = tmp_path / "two.png"
    two_products().save(photo)
    out, err = search(capsys, photo, index_dir, "--json")
    result = json.loads(out)
    objects = result["objects"]
    # The blue box is the larger, so the most salient: first. Each object ranks its own product first.
    assert [o["results"][0]["sku"] for o in objects] == ["BLUE-BOX", "RED-VASE"], objects
    assert all(len(o["results"]) == 3 and o["cutout"]["choice"] == "object" for o in objects)
    (u0, _, u1, _), (x0, y0, x1, y1) = objects[0]["box"], objects[1]["box"]
    assert 0 < x0 < x1 < 480 <= u0 < u1 < 960 and 0 < y0 < y1 <= 400   # the vase's box on the left, the box's right
    assert result["results"] == objects[0]["results"] and result["cutout"] == objects[0]["cutout"]
    assert "2 objects in the photo" in err

    human, _ = search(capsys, photo, index_dir)
    assert human.count(f"object 1 of 2, box {objects[0]['box']}") == 1 and f"object 2 of 2, box {objects[1]['box']}" in human
    assert human.count("rank  ") == 2

    single = json.loads(search(capsys, photo, index_dir, "--json", "--single")[0])
    assert "objects" not in single and single["cutout"]["choice"] == "largest object"


def test_one_object_prints_what_it_printed_before(index_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path: one object (specks aside) gives one list, the same output as `--single`, no `objects`."""
    import dam3d.stages.cutout

    monkeypatch.setattr(dam3d.stages.cutout, "mask_fn", lambda *a, **k: dark_pixels)
    photo = product_photo("blue-box", size=(640, 480))
    ImageDraw.Draw(photo).point([(5, 5), (630, 470)], fill=(0, 0, 0))  # specks
    photo.save(tmp_path / "one.png")
    for extra in (("--json",), ()):
        default, err = search(capsys, tmp_path / "one.png", index_dir, *extra)
        assert (default, err) == search(capsys, tmp_path / "one.png", index_dir, "--single", *extra)
    result = json.loads(search(capsys, tmp_path / "one.png", index_dir, "--json")[0])
    assert "objects" not in result and result["results"][0]["sku"] == "BLUE-BOX"
    assert result["cutout"]["choice"] == "cutout" and "2 speck(s) dropped" in result["cutout"]["reason"]


def test_encode_objects_embeds_in_one_batch(index_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dam3d.stages.cutout
    from dam3d.search.index import Index
    from dam3d.search.query import QueryEncoder

    monkeypatch.setattr(dam3d.stages.cutout, "mask_fn", lambda *a, **k: dark_pixels)
    encoder = QueryEncoder(Index.load(index_dir))
    batches: list[int] = []
    embed = encoder.embed
    monkeypatch.setattr(encoder, "embed", lambda images: (batches.append(len(images)), embed(images))[1])
    two_products().save(tmp_path / "two.png")
    objects = encoder.encode_objects(tmp_path / "two.png")
    assert batches == [2] and all(o.vector is not None and o.vector.dtype == np.float32 for o in objects)
    assert all(o.cutout.mode == "RGBA" and o.cutout.size == (256, 256) for o in objects)
    # The single path is prepare()'s, unchanged.
    one = encoder.encode_objects(tmp_path / "two.png", max_objects=1)
    cutout, _, choice = encoder.prepare(tmp_path / "two.png")
    assert len(one) == 1 and one[0].choice == choice and np.array_equal(np.asarray(one[0].cutout), np.asarray(cutout))


def test_page_shows_each_objects_crop_with_its_own_results(index_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`dam3d serve`'s page in headless Chromium: two products give two crops, each with its own top-k.

    The app runs in this process (so the stand-in segmenter that finds both objects is used),
    on loopback; the browser is test_serve's (Debian's chromium through playwright).
    """
    import time

    import dam3d.stages.cutout
    from dam3d.search.serve import SearchApp, build_ui, css, theme
    from test_serve import CHROMIUM, CHROMIUM_ARGS, _free_port

    monkeypatch.setattr(dam3d.stages.cutout, "mask_fn", lambda *a, **k: dark_pixels)
    app = SearchApp(index_dir, warm_up=False)
    result = app.query(_save(two_products(), tmp_path / "two.png"), k=3)
    assert [o["hits"][0]["sku"] for o in result["objects"]] == ["BLUE-BOX", "RED-VASE"]
    assert result["hits"] == result["objects"][0]["hits"] and result["note"] is None
    one = app.query(_save(product_photo("red-vase", size=(640, 480)), tmp_path / "one.png"), k=3)
    assert len(one["objects"]) == 1 and one["objects"][0]["hits"] == one["hits"]

    from playwright.sync_api import sync_playwright

    demo = build_ui(app)
    demo.queue(default_concurrency_limit=1)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, allowed_paths=app.allowed_paths,
                theme=theme(), css=css(1), ssr_mode=False, inbrowser=False, share=False, quiet=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#photo input[type=file]", state="attached")
            page.locator("#photo input[type=file]").set_input_files(str(tmp_path / "two.png"))
            page.wait_for_selector("#object-2-hit-3", timeout=60_000)
            for i, sku in ((1, "BLUE-BOX"), (2, "RED-VASE")):
                captions = page.locator(f"[id^='object-{i}-hit-']").all_inner_texts()
                assert len(captions) == 3 and captions[0].startswith(f"1. {sku}"), (i, captions)
                crop = page.locator(f"#object-{i}-crop img")
                crop.wait_for()
                size = crop.evaluate("i => i.decode().then(() => [i.naturalWidth, i.naturalHeight])")
                assert size == [256, 256], size
                assert str(result["objects"][i - 1]["box"]) in page.locator(f"#object-{i}-title").inner_text()
            assert "2 objects in the photo" in page.locator("#status").inner_text()
            assert page.locator("[id^='hit-']").count() == 0
            # One object: the page as before, no object headings.
            page.locator("#photo input[type=file]").set_input_files(str(tmp_path / "one.png"))
            deadline = time.monotonic() + 60
            while page.locator("[id^='hit-']").count() != 3 and time.monotonic() < deadline:
                page.wait_for_timeout(200)
            assert page.locator("[id^='hit-']").all_inner_texts()[0].startswith("1. RED-VASE")
            assert page.locator("[id^='object-']").count() == 0
            browser.close()
    finally:
        demo.close()


def _save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path
