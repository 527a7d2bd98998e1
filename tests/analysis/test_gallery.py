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


def test_feature_pages_show_their_images(gallery, tiny_run, browser):
    from frobnolab.analysis.gallery import load_run, shown_features

    pages = [gallery / f"feature_{j}.html" for j in shown_features(load_run(tiny_run))]
    assert pages and all(p.exists() for p in pages)
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
    for f in [site / "index.html"] + sorted(site.glob("feature_*.html"))[:8]:  # pages with and without PNGs
        page, errors = open_page(browser, f.as_uri())
        assert page.evaluate("window.pwned") is None, f.name
        assert evil in page.inner_text("body")  # shown as text
        assert [e for e in errors if not e.startswith("network")] == []


# ------------------------------------------------------------------------------------- counterfactual responses

def _ladder(factor: str, channel: int, rng, d: int, bases: int = 6, rungs: int = 4, hw: int = 8):
    """A ladder of d channels over bases x rungs images of hw x hw tokens: ``channel`` follows the factor's value
    inside a patch (where the ground truth changes); every other channel is a fixed function of (base, position)."""
    from frobnolab.analysis.counterfactual import Ladder

    images = np.arange(bases * rungs)
    base, rung = images // rungs, images % rungs
    value = rng.uniform(0, 1, bases)[base] + 0.5 * rung
    rows, cols = np.meshgrid(np.arange(hw), np.arange(hw), indexing="ij")
    where = np.stack([np.repeat(images, hw * hw), np.tile(rows.ravel(), len(images)),
                      np.tile(cols.ravel(), len(images))], 1)
    img = where[:, 0]
    acts = 2.0 * rng.normal(size=(bases, hw * hw, d))[base[img], np.tile(np.arange(hw * hw), len(images))]
    patch = (where[:, 1] < hw // 2) & (where[:, 2] < hw // 2)
    acts[:, channel] = np.where(patch, 1.0 + 2.0 * value[img], acts[:, channel])
    gt = np.where(patch, value[img], 0.0)[:, None]
    return Ladder(factor, acts, gt, where, base, rung, value)


EVIL_FACTOR = "size<script>window.pwned=3</script>"


@pytest.fixture(scope="module")
def responses_sites(tiny_run, tmp_path_factory):
    """Two galleries of one copy of the tiny run's scores: without counterfactual responses, then with a realistic
    responses table (from synthetic ladders) where the first shown feature answers to "hue" alone and the second is
    marked a frobnoloid candidate that no factor moves."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from frobnolab.analysis.counterfactual import ResponseConfig, responses, write_responses
    from frobnolab.analysis.gallery import load_run, shown_features

    root = tmp_path_factory.mktemp("cf")
    scores = root / "run" / "scores"
    shutil.copytree(tiny_run / "scores", scores)
    for f in (scores / "responses.parquet", scores / "responses.json", scores / "figures" / "responses.png"):
        f.unlink(missing_ok=True)
    shown = shown_features(load_run(root / "run"), 3)
    assert len(shown) >= 2
    t = pq.read_table(scores / "features.parquet")
    cand = np.asarray(t.column("candidate").to_pylist(), bool)
    cand[shown[1]] = True
    t = t.set_column(t.column_names.index("candidate"), "candidate", pa.array(cand))
    pq.write_table(t, scores / "features.parquet")
    plain = build_gallery(root / "run", root / "plain", n_pages=3, progress=False)

    F = t.num_rows
    other = next(j for j in range(F) if j not in shown)
    rng = np.random.default_rng(0)
    ladders = [_ladder("hue", shown[0], rng, F), _ladder(EVIL_FACTOR, other, rng, F)]
    table, summary = responses(ladders, lambda a: a, F, ResponseConfig(n_null=1024))
    exp = dict(zip(table["feature"], table["explained_by"]))
    assert exp[shown[0]] == "hue" and exp[shown[1]] == ""  # the synthetic answer the pages must show
    assert summary["factors"][0]["responding"] >= 1
    write_responses(table, summary, scores)
    site = build_gallery(root / "run", root / "site", n_pages=3, progress=False)
    return plain, site, shown, summary


def test_gallery_shows_counterfactual_responses(responses_sites, browser):
    import html

    plain, site, shown, summary = responses_sites
    index = (site / "index.html").read_text()
    assert "<h2>Counterfactual responses</h2>" in index
    assert (site / "img" / "responses.png").stat().st_size > 0
    hue = summary["factors"][0]
    assert (f"<code>hue</code>: {hue['responding']} of {summary['alive']} features responding, "
            f"{hue['explained']} explained by it") in index
    assert EVIL_FACTOR not in index and html.escape(EVIL_FACTOR) in index
    page, errors = open_page(browser, (site / "index.html").as_uri())
    assert page.evaluate("window.pwned") is None
    width = page.eval_on_selector("img[src='img/responses.png']", "e => e.naturalWidth")
    assert width > 0 and errors == []

    first = (site / f"feature_{shown[0]}.html").read_text()
    assert "<h2>Responds to</h2>" in first
    block = first.split("<h2>Responds to</h2>")[1].split("</table>")[0]
    assert block.index("<code>hue</code>") < block.index(html.escape(EVIL_FACTOR))  # strongest factor first
    assert "explained by <code>hue</code>" in first
    second = (site / f"feature_{shown[1]}.html").read_text()
    assert "<h2>Responds to</h2>" in second and "no single factor explains it" in second
    assert "explained by" not in second
    for f in site.glob("feature_*.html"):
        page, errors = open_page(browser, f.as_uri())
        assert page.evaluate("window.pwned") is None and errors == [], f.name

    # the same scores without responses: no section, no block, no heatmap
    assert "Counterfactual responses" not in (plain / "index.html").read_text()
    assert not (plain / "img" / "responses.png").exists()
    for f in plain.glob("feature_*.html"):
        assert "Responds to" not in f.read_text()


# ------------------------------------------------------------------------ every alive feature, quantiles, nearby

def _alive(scores):
    import pyarrow.parquet as pq

    t = pq.read_table(scores / "features.parquet")
    return [int(j) for j, f in zip(t.column("feature").to_pylist(), t.column("freq").to_pylist()) if f > 0]


def test_every_alive_feature_gets_a_page(gallery, tiny_run, browser):
    from frobnolab.analysis.gallery import load_run, shown_features

    alive = _alive(tiny_run / "scores")
    assert len(alive) > len(shown_features(load_run(tiny_run), 24)) or len(alive) >= 2
    assert {int(f.stem.split("_")[1]) for f in gallery.glob("feature_*.html")} == set(alive)
    index = (gallery / "index.html").read_text()
    for j in alive:
        text = (gallery / f"feature_{j}.html").read_text()
        for part in ("<h2>What it computes</h2>", "<h3>histogram</h3>", "<h3>concepts</h3>", "<h2>Nearby features</h2>",
                     "href='index.html'"):
            assert part in text, (j, part)
        assert f'"page": "feature_{j}.html"' in index
    light = [j for j in alive if "<svg class='hist'" in (gallery / f"feature_{j}.html").read_text()]
    if light:  # a page without PNGs still draws its histogram and concept bars
        page, errors = open_page(browser, (gallery / f"feature_{light[0]}.html").as_uri())
        assert page.locator("svg.hist rect").count() == 40 and page.locator("svg.concepts rect").count() >= 1
        assert errors == []


def test_crops_across_activation_quantiles(gallery, tiny_run, browser):
    from frobnolab.analysis.gallery import load_run, quantile_examples, shown_features

    run = load_run(tiny_run)
    if "crops" not in run.store.domain.figures:
        pytest.skip("no crops in this domain")
    j = shown_features(run)[0]
    text = (gallery / f"feature_{j}.html").read_text()
    for band in ("top", "middle", "low"):
        assert f"<h3>crops, {band} activations" in text, band
    for band in ("middle", "low"):
        assert (gallery / "img" / f"f{j}_crops_{band}.png").stat().st_size > 0
    # the middle examples fire near the median of the nonzero activations, the low ones below it, all nonzero
    codes = run.held_out_codes[:, j].toarray()[:, 0]
    mid, at_mid = quantile_examples(run, j, 0.5)
    low, at_low = quantile_examples(run, j, 0.1)
    assert 0 < at_low <= at_mid <= codes.max()
    assert np.isclose(at_mid, np.median(codes[codes > 0]))
    page, errors = open_page(browser, (gallery / f"feature_{j}.html").as_uri())
    widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
    assert len(widths) >= 5 and min(widths) > 0 and errors == []


def test_nearby_features_by_decoder_cosine(gallery, tiny_run):
    import re

    from frobnolab.analysis.gallery import load_run
    from frobnolab.analysis.sae import load_sae

    run = load_run(tiny_run)
    w = load_sae(run.summary["sae"]).W_dec.detach().numpy()
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    j = _alive(tiny_run / "scores")[0]
    cos = w @ w[j]
    cos[j] = -np.inf
    want = list(np.argsort(-cos, kind="stable")[:5])
    block = (gallery / f"feature_{j}.html").read_text().split("<h2>Nearby features</h2>")[1].split("</table>")[0]
    got = [int(x) for x in re.findall(r"<tr><td>(?:<a href='feature_\d+.html'>)?(\d+)", block)]
    assert got == want
    for k in want:
        if (gallery / f"feature_{k}.html").exists():
            assert f"<a href='feature_{k}.html'>{k}</a>" in block
        assert str(run.table["named_concept"][k]) in block


# ------------------------------------------------------------------------------------- verdicts and cross-model

EVIL = "<script>window.pwned=4</script>"


@pytest.fixture(scope="module")
def judged_site(tiny_run, tmp_path_factory):
    """A copy of the tiny run's scores with a small verdicts.json and a compare/compare.json that names it side a."""
    import json

    root = tmp_path_factory.mktemp("judged")
    scores = root / "run" / "scores"
    shutil.copytree(tiny_run / "scores", scores)
    alive = _alive(scores)
    cand, other = alive[0], alive[1]
    verdicts = {"candidates": [
        {"feature": cand, "gap": 0.31, "q_value": 0.004, "frob": 0.27, "verdict": "frobnoloid",
         "checks": {"random model": True, "baseline units": True, "counterfactuals": True},
         "counterfactual": "frobnoloid"},
        {"feature": other, "gap": 0.12, "q_value": 0.03, "frob": 0.08, "verdict": "refuted by baseline " + EVIL,
         "checks": {"random model": True, "baseline " + EVIL: False}, "counterfactual": None}],
        "frobnoloids": [cand], "bars": {"random model gap": 0.2}}
    (scores / "verdicts.json").write_text(json.dumps(verdicts))
    (root / "run" / "compare").mkdir()
    fa = [{"feature": j, "match": 7, "corr": 0.8 if j == cand else 0.05, "p": 0.01, "null95": 0.2,
           "shared": j == cand, "concept": "hue", "match_concept": "albedo" + EVIL} for j in alive]
    fb = [{"feature": 7, "match": cand, "corr": 0.8, "p": 0.01, "null95": 0.2, "shared": True,
           "concept": "albedo", "match_concept": "hue"}]
    compare = {"a": {"scores": "runs/x/scores", "hook": "enc1"}, "b": {"scores": "runs/x/taesd-scores", "hook": "enc7"},
               "features_a": fa, "features_b": fb}
    (root / "run" / "compare" / "compare.json").write_text(json.dumps(compare))
    site = build_gallery(root / "run", root / "site", n_pages=2, progress=False)
    return site, cand, other


def test_gallery_shows_verdicts(judged_site, gallery, browser):
    import html

    site, cand, other = judged_site
    index = (site / "index.html").read_text()
    assert "<h2>Frobnoloid verdicts</h2>" in index
    table = index.split("<table id='verdicts'>")[1].split("</table>")[0]
    assert f"<a href='feature_{cand}.html'>{cand}</a>" in table and "frobnoloid" in table
    assert EVIL not in index and html.escape(EVIL) in table
    page = (site / f"feature_{cand}.html").read_text()
    assert "<h2>Verdict</h2><p class='verdict'>frobnoloid</p>" in page
    assert "<li>random model: ok</li>" in page and "<li>baseline units: ok</li>" in page
    second = (site / f"feature_{other}.html").read_text()
    assert f"<li>baseline {html.escape(EVIL)}: FAIL</li>" in second and EVIL not in second
    for f in (site / "index.html", site / f"feature_{other}.html"):
        p, errors = open_page(browser, f.as_uri())
        assert p.evaluate("window.pwned") is None and errors == []
    # a feature that is no candidate shows no verdict
    rest = _alive(site.parent / "run" / "scores")[2:]
    assert all("<h2>Verdict</h2>" not in (site / f"feature_{j}.html").read_text() for j in rest)


def test_gallery_shows_the_cross_model_match(judged_site, gallery, browser):
    import html

    site, cand, other = judged_site
    index = (site / "index.html").read_text()
    assert "<a href='compare.html'>shared and model-specific features</a>" in index
    cmp = (site / "compare.html").read_text()
    assert f"<a href='feature_{cand}.html'>{cand}</a>" in cmp and "runs/x/taesd-scores" in cmp
    assert EVIL not in cmp and "1 of " in cmp
    page = (site / f"feature_{cand}.html").read_text()
    assert "<h2>On the other model</h2>" in page
    match = page.split("<p class='match'>")[1].split("</p>")[0]
    assert "feature 7" in match and "r = 0.800" in match and "<b>shared</b>" in match
    assert html.escape("albedo" + EVIL) in match
    assert "<b>model-specific</b>" in (site / f"feature_{other}.html").read_text()
    for f in (site / "compare.html", site / f"feature_{cand}.html"):
        p, errors = open_page(browser, f.as_uri())
        assert p.evaluate("window.pwned") is None and errors == []
    # the tiny run has no compare folder: no link, no page, no block
    assert not (gallery / "compare.html").exists()
    assert "compare.html" not in (gallery / "index.html").read_text()
    assert all("On the other model" not in f.read_text() for f in gallery.glob("feature_*.html"))


def test_shown_features_get_a_painting_panel(gallery, tiny_run):
    """The painting panel: the feature set to 0 and turned up on its strongest example's image, each edit's output
    decoded through the model with the SAE spliced in (analysis/paint.py)."""
    from frobnolab.analysis.gallery import PAINT_STRENGTHS, load_run, shown_features
    from frobnolab.analysis.paint import Painter
    from frobnolab.analysis.report import first_images

    run = load_run(tiny_run)
    j = shown_features(run)[0]
    assert "<h3>painting (set to 0" in (gallery / f"feature_{j}.html").read_text()
    assert (gallery / "img" / f"f{j}_paint.png").stat().st_size > 0
    # what the panel shows moves the output, more the harder the feature is pushed
    p = Painter(tiny_run / "scores", int(first_images(run.table["top_where"][j], 1)[0][0]), "all", 2000)
    changes = [p.edit([j], op, v)["mean_abs_change"]["inside"] for op, v in PAINT_STRENGTHS[1:]]
    assert 0 < changes[0] < changes[1], changes


# ------------------------------------------------------------------------------- feature map, full maps, the gap

def test_full_activation_maps_agree_with_the_store_and_fill_its_gaps(tiny_run, tmp_path):
    """The crops' heatmaps come from running the model on the image. On a store that kept a sample of each image's
    tokens they equal its encoded activations at the kept cells, and the cells it never kept equal those of a store
    that kept every token."""
    import torch

    from frobnolab.analysis.gallery import load_run
    from frobnolab.analysis.report import model_feature_maps
    from frobnolab.analysis.store import ActivationStore, ExtractConfig, extract

    run = load_run(tiny_run)
    full = run.store[run.hook]  # the tiny store keeps every token of every image
    cfg = dict(run.store.manifest["key"]["config"])
    sampled = ActivationStore(extract(ExtractConfig(model=cfg["model"], dataset=cfg["dataset"], hooks=(run.hook,),
                                                    tokens_per_image=24, seed=0), tmp_path / "sampled",
                                      progress=False))
    chunk = sampled[run.hook].chunk(0, "all", parts=("acts", "where"))
    im = int(chunk.where[0, 0])
    kept = chunk.where[chunk.where[:, 0] == im]
    with torch.no_grad():
        f_kept = run.sae.encode(torch.from_numpy(chunk.acts[chunk.where[:, 0] == im])).numpy()
    j = int(np.argmax((f_kept > 0).sum(0)))  # the feature firing most often on the kept tokens
    m = model_feature_maps(sampled, run.hook, run.sae, [im], [j], model=run.model)[im][j]
    H, W = run.dataset.size
    s = max(full.stride, 1)
    assert m.shape == (H // s, W // s) and len(kept) < m.size // 4
    np.testing.assert_allclose(m[kept[:, 1], kept[:, 2]], f_kept[:, j], rtol=1e-4, atol=1e-5)
    every = [c for c in full.chunks("all", parts=("acts", "where"))]
    where = np.concatenate([c.where for c in every])
    acts = np.concatenate([c.acts for c in every])[where[:, 0] == im]
    where = where[where[:, 0] == im]
    with torch.no_grad():
        want = np.zeros_like(m)
        want[where[:, 1], where[:, 2]] = run.sae.encode(torch.from_numpy(acts)).numpy()[:, j]
    gap = np.ones(m.shape, bool)
    gap[kept[:, 1], kept[:, 2]] = False
    assert (want[gap] > 0).sum() > 0  # the sampled store would have left these firing cells blank
    np.testing.assert_allclose(m[gap], want[gap], rtol=1e-4, atol=1e-5)


def test_feature_map_links_every_alive_feature_and_recolours(gallery, tiny_run, browser):
    index = (gallery / "index.html").read_text()
    assert "<h2>Feature map</h2>" in index
    alive = set(_alive(tiny_run / "scores"))
    page, errors = open_page(browser, (gallery / "index.html").as_uri())
    hrefs = page.eval_on_selector_all("#fmap a", "els => els.map(e => e.getAttribute('href'))")
    assert {int(h.split("_")[1].split(".")[0]) for h in hrefs} == alive
    assert all((gallery / h).exists() for h in hrefs)  # no link to a missing page
    first = page.locator("#fmap circle").first
    by_concept = first.get_attribute("fill")
    page.check("input[name=fmapby][value=frob]")
    assert first.get_attribute("fill") == first.get_attribute("data-frob")
    assert page.locator("#fmap-frob").is_visible() and not page.locator("#fmap-legend").is_visible()
    page.check("input[name=fmapby][value=concept]")
    assert first.get_attribute("fill") == by_concept
    assert errors == []


def test_concept_agreement_beats_its_null_only_when_geometry_follows_concepts():
    from frobnolab.analysis.feature_map import concept_agreement, embed

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    labels = np.repeat(np.array(["depth", "hue", "shadow", "albedo"]), 25)
    w = centres[np.repeat(np.arange(4), 25)] + 0.3 * rng.normal(size=(100, 16))
    clustered = concept_agreement(w, labels)
    assert clustered["share"] > 0.9 and clustered["p"] < 0.01
    shuffled = concept_agreement(w, rng.permutation(labels))
    assert shuffled["share"] < shuffled["null95"] + 0.05 and shuffled["p"] > 0.01
    xy = embed(w)
    assert xy.shape == (100, 2) and xy.min() >= 0 and xy.max() <= 1
    # t-SNE keeps the clusters apart: each point's nearest map neighbour is of its own cluster
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(1)] == labels).mean() > 0.95


def test_feature_map_small_and_hostile_inputs():
    from frobnolab.analysis.feature_map import concept_agreement, map_section

    rng = np.random.default_rng(1)
    few = concept_agreement(rng.normal(size=(6, 8)), ["a", "b", "a", "b", "a", "b"])
    assert np.isnan(few["p"])  # too few features to test: said, not a p of 1
    evil = "<script>window.pwned=1</script>'\"&"
    html_ = map_section([0, 1, 2], rng.normal(size=(3, 8)), [evil, "depth", evil], [0.5, 0.2, 0.1], [0.0, 0.3, 0.1],
                        [False, True, False], {1: "feature_1.html"})
    assert evil not in html_ and "&lt;script&gt;" in html_ and "PCA" in html_ and "Too few" in html_
    assert html_.count("<a href='feature_1.html'>") == 1 and html_.count("<circle") == 3


def test_feature_pages_show_the_gap_and_ablate_their_own_image(gallery, tiny_run):
    from frobnolab.analysis.gallery import load_run, shown_features
    from frobnolab.analysis.report import first_images

    run = load_run(tiny_run)
    for j in _alive(tiny_run / "scores"):
        text = (gallery / f"feature_{j}.html").read_text()
        assert "<h2>What the verdict is about</h2>" in text and "random directions (pooled) 95%" in text, j
        assert "candidate threshold" in text and ("It is a frobnoloid candidate" in text) == bool(
            run.table["candidate"][j]), j
        gap = run.table["gap"][j]
        if np.isfinite(gap):
            assert f">{round(float(gap), 4):.3f}</text>" in text  # the gap bar's label is the table's gap
    j = shown_features(run)[0]
    if "ablation" in run.store.domain.figures:
        own = int(first_images(run.table["top_where"][j], 1)[0][0])
        from frobnolab.analysis.gallery import ablation_figure, example_painter

        p = example_painter(run, j)
        assert p.image == own
        import torch

        with torch.no_grad():
            after = p.probe.ablated_output(j)
        # ablating a feature that fires on this image changes the output; one that never fires on it, nothing
        assert float(np.abs(after.clamp(0, 1)[0].numpy() - p.before).max()) > 0
        silent = np.flatnonzero(p.f.abs().sum(0).numpy() == 0)
        if len(silent):
            with torch.no_grad():
                same = p.probe.ablated_output(int(silent[0])).clamp(0, 1)[0].numpy()
            np.testing.assert_array_equal(same, p.before)
        assert ablation_figure(run, j, gallery.parent / "abl.png", p).stat().st_size > 0


def test_every_link_and_image_of_the_site_resolves(gallery):
    """No 404 anywhere: every href and src of every page names a file of the site (nothing off the site), and no
    picture is blank."""
    import re

    from PIL import Image

    pages = sorted(gallery.glob("*.html"))
    assert len(pages) >= 3
    for f in pages:
        text = f.read_text()
        for ref in re.findall(r"""(?:href|src)=['"]([^'"#]+)""", text):
            assert not re.match(r"^[a-z]+:", ref), (f.name, ref)  # no http:, no file:
            assert (gallery / ref).is_file(), (f.name, ref)
    for png in gallery.glob("img/*.png"):
        px = np.asarray(Image.open(png).convert("L"), float)
        assert px.std() > 1, png.name
