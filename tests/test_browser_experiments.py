"""The experiment pages in a real browser (Debian's Chromium, Playwright) against uvicorn over tiny reference runs
made by ``convscope train`` and precomputed (tests/experiment_fixtures.py): the index and each experiment page
render with no console error and no failed request, with one table row and one neuron grid per variant; the view
(layer, k, cluster layers) is in the URL, a copied link restores it, back/forward walk it; exports download.
Screenshots go to test-output/screenshots/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["server_fixtures", "experiment_fixtures"]
pytest.register_assert_rewrite("experiment_fixtures")

from experiment_fixtures import TRAINED, needs_fashion  # noqa: E402
from test_browser import CHROMIUM, SHOTS, Watch, browser, ready, shot  # noqa: E402,F401  (browser: the shared fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow, needs_fashion,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing: apt-get install chromium")]


@pytest.fixture
def page(browser, exp_live):
    ctx = browser.new_context(viewport={"width": 1400, "height": 900}, base_url=exp_live, accept_downloads=True)
    pg = ctx.new_page()
    pg.watch = Watch(pg)
    yield pg
    try:
        pg.watch.check()
    finally:
        ctx.close()


def _grids_drawn(page, n):
    page.wait_for_function(f"document.querySelectorAll('#exp-grids canvas.neuron-grid[data-count]').length === {n}")


def test_index_lists_the_experiments_and_the_nav_leads_there(page):
    page.goto("/")
    ready(page)
    page.click("nav.mainnav a[href='/experiments']")
    page.wait_for_url(re.compile(r"/experiments$"))
    ready(page)
    cards = page.locator(".exp-card")
    assert [cards.nth(i).get_attribute("data-experiment") for i in range(cards.count())] == list(TRAINED)
    assert page.locator("nav.mainnav a.active").inner_text() == "Experiments"
    shot(page, "experiments-index")
    page.locator(".exp-card[data-experiment='banding']").click()
    page.wait_for_url(re.compile(r"/experiments/banding$"))
    ready(page, 60000)


@pytest.mark.parametrize("exp", list(TRAINED))
def test_experiment_page_renders(page, exp):
    api = page.request.get(f"/api/experiments/{exp}").json()
    n = len(TRAINED[exp])
    page.goto(f"/experiments/{exp}")
    ready(page, 60000)
    rows = page.locator("#variant-table tbody tr")
    assert rows.count() == n
    assert [rows.nth(i).get_attribute("data-variant") for i in range(n)] == TRAINED[exp]
    _grids_drawn(page, n)
    grids = page.locator("#exp-grids .exp-grid")
    assert grids.count() == n
    for i, v in enumerate(api["variants"]):
        canvas = grids.nth(i).locator("canvas")
        nmf = page.request.get(f"/api/models/{v['model']}/layers/{api['default_layer']}/nmf").json()["data"]
        assert int(canvas.get_attribute("data-count")) == len(nmf["order"])
    page.wait_for_selector("#plot-esymmetry[data-rendered='1']")
    page.wait_for_selector("#plot-ebanding[data-rendered='1']")
    page.wait_for_selector("#plot-clusters[data-rendered='1']")
    assert page.evaluate("document.getElementById('plot-esymmetry').data.length") == n
    assert page.evaluate("document.getElementById('plot-ebanding').data.length") == n
    assert page.evaluate("document.getElementById('plot-clusters').data.length") == api["default_k"]
    # one bar per (variant, cluster layer)
    assert len(page.evaluate("document.getElementById('plot-clusters').data[0].x")) == n * len(api["cluster_layers"])
    assert page.locator("#centroids canvas").count() == api["default_k"]
    assert page.input_value("#layer-select") == api["default_layer"]
    shot(page, f"experiment-{exp}")
    # each variant links to its model page
    page.locator(f"#variant-table tr[data-variant='{TRAINED[exp][0]}'] a.variant-link").click()
    page.wait_for_url(re.compile(f"/models/{exp}-{TRAINED[exp][0]}$"))
    ready(page)


def test_the_view_is_in_the_url(page):
    exp = "banding"
    n = len(TRAINED[exp])
    page.goto(f"/experiments/{exp}")
    ready(page, 60000)
    start = page.url
    page.select_option("#layer-select", "features.conv3")
    page.wait_for_function("location.search.includes('layer=features.conv3')")
    ready(page, 60000)
    _grids_drawn(page, n)
    page.select_option("#k-select", "5")
    page.wait_for_function("location.search.includes('k=5')")
    page.wait_for_function("document.getElementById('plot-clusters').data.length === 5")
    page.check("#cluster-layers input[value='features.conv4']")
    page.wait_for_function("location.search.includes('features.conv4')")
    page.wait_for_function(f"document.getElementById('plot-clusters').data[0].x.length === {3 * n}")
    ready(page, 60000)
    page.click("#copy-link")
    page.wait_for_function("document.body.dataset.copiedUrl")
    copied = page.evaluate("document.body.dataset.copiedUrl")
    assert copied == page.url and "layer=features.conv3" in copied and "k=5" in copied

    def state(p):
        return {"layer": p.input_value("#layer-select"), "k": p.input_value("#k-select"),
                "clayers": [x.get_attribute("value") for x in p.locator("#cluster-layers input:checked").all()],
                "title": p.inner_text("#grids-layer"),
                "bars": p.evaluate("document.getElementById('plot-clusters').data.length"),
                "pairs": p.evaluate("document.getElementById('plot-clusters').data[0].x.length")}

    before = state(page)
    assert before["layer"] == "features.conv3" and before["k"] == "5" and before["bars"] == 5
    assert before["clayers"] == ["features.conv4", "features.conv5", "features.conv6"]
    other = page.context.new_page()
    other.watch = Watch(other)
    other.goto(copied)
    ready(other, 60000)
    _grids_drawn(other, n)
    other.wait_for_selector("#plot-clusters[data-rendered='1']")
    assert state(other) == before
    shot(other, "experiment-restored-from-link")
    other.watch.check()
    other.close()
    # back/forward walk the changes in place
    page.go_back()
    page.wait_for_function("!location.search.includes('features.conv4')")
    page.wait_for_function("document.getElementById('plot-clusters').data[0].x.length === " + str(2 * n))
    page.go_back()
    page.wait_for_function("!location.search.includes('k=5')")
    assert page.input_value("#k-select") == "8"
    page.go_forward()
    page.wait_for_function("location.search.includes('k=5')")
    assert page.input_value("#k-select") == "5"
    page.go_back()
    page.go_back()
    page.wait_for_function(f"location.href === {start!r}")
    ready(page, 60000)
    assert page.input_value("#layer-select") == "features.conv6"


def test_a_bad_layer_in_the_url_falls_back_to_the_default(page):
    page.goto("/experiments/banding?layer=nope&k=99")
    ready(page, 60000)
    assert page.input_value("#layer-select") == "features.conv6" and page.input_value("#k-select") == "19"
    assert "layer=nope" not in page.url


def test_exports(page):
    page.goto("/experiments/bnonly")
    ready(page, 60000)
    with page.expect_download() as d:
        page.click("#fig-table [data-export=csv]")
    text = Path(d.value.path()).read_text()
    assert text.startswith("variant,model,test_accuracy") and len(text.strip().splitlines()) == 1 + len(TRAINED["bnonly"])
    assert page.get_attribute("#fig-table [data-export=json]", "href") == "/api/experiments/bnonly"
    for fig in ("grids", "esymmetry", "ebanding", "clusters"):
        with page.expect_download() as d:
            page.click(f"#fig-{fig} [data-export=png]")
        assert Path(d.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", fig
    with page.expect_download() as d:
        page.click("#fig-grids [data-export=csv]")
    assert Path(d.value.path()).read_text().startswith("variant,model,layer,position,neuron,error")
    with page.expect_download() as d:
        page.click("#fig-clusters [data-export=csv]")
    assert Path(d.value.path()).read_text().startswith("variant,model,layer,cluster_1")


def test_unknown_experiment_page(page):
    page.watch.allow_status = {404}
    page.goto("/experiments/nope")
    ready(page)
    assert "nope" in page.inner_text("#error-message")
    assert page.locator(".known a[href='/experiments/banding']").count() == 1
    shot(page, "experiment-404")


def test_training_history_charts_from_the_real_runs(page, exp_runs):
    """The 'During training' charts: one line per variant of each quantity the runs measured as they trained,
    equal to the run records' histories; the layer and the gamma threshold are in the URL; the PNG export has
    every chart at full size, the CSV every point."""
    exp = "banding"
    api = page.request.get(f"/api/experiments/{exp}").json()
    page.goto(f"/experiments/{exp}")
    ready(page, 60000)
    charts = page.locator("#history-charts [data-chart]")
    assert [charts.nth(i).get_attribute("data-chart") for i in range(charts.count())] == [
        "acc", "loss", "banding", "symmetry", "gamma", "dead"]
    n = len(TRAINED[exp])
    for i in range(charts.count()):
        assert charts.nth(i).evaluate("d => d.data.length") == n
    trained = [v for v in api["variants"] if v["variant"] != "random"]
    for v in trained:  # the plotted points are the record's history, x = epochs of training done
        rec = exp_runs[exp][v["variant"]]
        trace = page.evaluate(f"[...document.querySelectorAll('#history-charts [data-chart=acc]')][0].data"
                              f".find(t => t.name.startsWith({v['variant']!r}))")
        assert trace["x"] == [r["epoch"] for r in rec["history"]] == [0, 0.5, 1]
        assert trace["y"] == [r["test_accuracy"] for r in rec["history"]]
        band = page.evaluate(f"document.querySelector('#history-charts [data-chart=banding]').data"
                             f".find(t => t.name.startsWith({v['variant']!r})).y")
        assert band == [r["metrics"]["banding"]["features.conv6"] for r in rec["history"]]
    assert page.input_value("#hlayer-select") == "features.conv6"
    shot(page, "experiment-history")
    page.select_option("#hlayer-select", "features.conv2")
    page.wait_for_function("location.search.includes('hlayer=features.conv2')")
    page.wait_for_function("document.querySelector('#history-charts [data-chart=banding]').layout.title.text"
                           ".includes('features.conv2')")
    page.select_option("#hgamma-select", "0.1")
    page.wait_for_function("location.search.includes('hgamma=0.1')")
    rec = exp_runs[exp]["baseline"]
    gam = page.evaluate("document.querySelector('#history-charts [data-chart=gamma]').data"
                        ".find(t => t.name.startsWith('baseline')).y")
    assert gam == [r["metrics"]["gamma"]["0.1"] for r in rec["history"]]
    with page.expect_download() as d:
        page.click("#fig-history [data-export=png]")
    png = Path(d.value.path()).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width = int.from_bytes(png[16:20], "big")
    assert width >= 2 * 1800  # two columns of charts exported at 900 px, scale 2
    with page.expect_download() as d:
        page.click("#fig-history [data-export=csv]")
    lines = Path(d.value.path()).read_text().strip().splitlines()
    assert lines[0].startswith("variant,model,epoch,test_accuracy,train_loss,dead_relu,gamma_below_0.1,"
                               "banding_features.conv2")
    assert len(lines) == 1 + sum(len(exp_runs[exp][v]["history"]) for v in TRAINED[exp])


def test_grids_share_one_colour_alignment(page):
    """Each variant's grid permutes its three NMF factors to match the first variant's energy-weighted mean
    factor images; the permutation the page chose is the best one computed here independently."""
    import itertools

    import numpy as np

    exp = "banding"
    api = page.request.get(f"/api/experiments/{exp}").json()
    page.goto(f"/experiments/{exp}")
    ready(page, 60000)
    _grids_drawn(page, len(TRAINED[exp]))
    layer = api["default_layer"]

    def mean_factors(model):
        d = page.request.get(f"/api/models/{model}/layers/{layer}/nmf").json()["data"]
        imgs, e = np.asarray(d["images"], dtype=float), np.asarray(d["energy"], dtype=float)
        return np.einsum("n,nhwc->chw", e, imgs).reshape(3, -1)

    def cos(a, b):
        return float(a @ b / np.sqrt((a @ a) * (b @ b))) if (a @ a) and (b @ b) else 0.0

    ref = mean_factors(api["variants"][0]["model"])
    grids = page.locator("#exp-grids .exp-grid")
    assert grids.nth(0).get_attribute("data-permutation") == "0,1,2"
    for i, v in enumerate(api["variants"][1:], start=1):
        m = mean_factors(v["model"])
        scores = {p: sum(cos(ref[c], m[p[c]]) for c in range(3)) for p in itertools.permutations(range(3))}
        best = max(scores.values())
        chosen = tuple(int(x) for x in grids.nth(i).get_attribute("data-permutation").split(","))
        assert scores[chosen] == pytest.approx(best, abs=1e-9), (v["variant"], chosen, scores)


@pytest.mark.parametrize("layer, test", [("layer3.0.conv1", "separation"), ("layer1.0.conv1", "frequency")])
def test_layer_page_says_the_branch_tests(page, layer, test):
    """Under the SVD chart of a layer whose feeder is split into branches: the branch tests' numbers, the same as
    the API's (separation where the branches merge; the frequency of the image filters each branch reads)."""
    svd = page.request.get(f"/api/models/branches-4/layers/{layer}/svd").json()["data"]
    bt = svd["branch_tests"]
    t = bt["separation"] if test == "separation" else bt["properties"]["frequency"]
    page.goto(f"/models/branches-4/layers/{layer}")
    ready(page, 60000)
    note = page.locator("#svd-branches")
    note.wait_for(state="visible")
    text = note.inner_text()
    assert text.startswith(f"Branches of {svd['feeder']}")
    assert f"η² {t['eta2_best']:.2f} (chance ≈ {t['chance']:.2f}), p = {t['p']:.3f}" in text
    assert "1,000 shuffles" in text
    if test == "frequency":
        assert "block-diagonal" in text  # a grouped layer: no separation test, and the page says why
    shot(page, f"branch-tests-{layer}")
