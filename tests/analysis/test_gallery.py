import shutil
from pathlib import Path

import numpy as np
import pytest

from frobnolab.analysis.gallery import build_gallery

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def gallery(tiny_run, tmp_path_factory):
    return build_gallery(tiny_run, tmp_path_factory.mktemp("g") / "site", progress=False)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: run `bash setup.sh --dev`"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: errors.append(f"network: {r.url}") if not r.url.startswith(("file:", "data:"))
            else None)
    page.goto(url)
    page.wait_for_load_state("load")
    return page, errors


def test_index_loads_sorts_and_filters(gallery, browser, tmp_path):
    page, errors = open_page(browser, (gallery / "index.html").as_uri())
    rows = page.locator("#features tbody tr")
    n = rows.count()
    assert n >= 2
    shot = tmp_path / "index.png"
    page.screenshot(path=str(shot))
    from PIL import Image

    px = np.asarray(Image.open(shot).convert("L"), float)
    assert px.std() > 5  # not a blank page
    ids = [int(x) for x in page.locator("#features tbody tr td:first-child").all_inner_texts()]
    page.click("th[data-k='feature']")  # descending
    assert int(page.locator("#features tbody tr td").first.inner_text()) == max(ids)
    page.click("th[data-k='feature']")  # ascending
    assert int(page.locator("#features tbody tr td").first.inner_text()) == min(ids)
    concept = page.locator("#features tbody tr").first.locator("td").nth(2).inner_text()
    page.fill("#concept", "no-such-concept")
    assert rows.count() == 0
    page.fill("#concept", concept)
    assert 1 <= rows.count() <= n
    assert errors == []


def test_feature_pages_show_their_images(gallery, browser):
    pages = sorted(gallery.glob("feature_*.html"))
    assert pages
    page, errors = open_page(browser, pages[0].as_uri())
    imgs = page.locator("img")
    assert imgs.count() >= 3
    widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
    assert min(widths) > 0
    assert errors == []


def test_user_strings_are_escaped(tiny_run, browser, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = tmp_path / "run"
    shutil.copytree(tiny_run / "scores", run / "scores")
    t = pq.read_table(run / "scores" / "features.parquet")
    evil = "<img src=x onerror=\"window.pwned=1\"></script><script>window.pwned=2</script>"
    names = [evil] * t.num_rows
    t = t.set_column(t.column_names.index("named_concept"), "named_concept", pa.array(names))
    pq.write_table(t, run / "scores" / "features.parquet")
    site = build_gallery(run, tmp_path / "site", n_pages=2, progress=False)
    for f in [site / "index.html"] + list(site.glob("feature_*.html")):
        page, errors = open_page(browser, f.as_uri())
        assert page.evaluate("window.pwned") is None, f.name
        assert evil in page.inner_text("body")  # shown as text
        assert [e for e in errors if not e.startswith("network")] == []
