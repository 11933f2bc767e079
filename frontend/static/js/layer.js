/* Layer page: neuron grid (one canvas), mean kernel, histogram with overlays, gamma/beta, SVD scatter,
 * fc-spatial. View parameters live in the query string:
 *   cell=s|m|l  ylog=1  abslog=1  overlay=model:layer,...  svd=svd|pca  cx=0  cy=1
 *   colour=<feeder property of the SVD scatter: norm|colourfulness|branch; absent: the result's default>
 *   view=rgb|nmf (the grid of an RGB first layer: its filters in colour, the default, or the NMF forms)
 * A value the page cannot show (an overlay that is gone, cx=99 of 8 components) is dropped from the URL
 * (replaced, no history entry) and said in a short note beside its figure.
 * Controls push a history entry; back/forward restore the view (popstate). */
"use strict";
(() => {
  const C = CS.boot.context;
  const model = CS.boot.model, layer = CS.boot.layer;
  const has = (a) => C.analyses.includes(a);
  const stem = (s) => `${model}_${layer}_${s}`;
  const el = (id) => document.getElementById(id);

  // an RGB first layer (3 input channels, fed by the image) is shown as its filters in colour first
  const RGB = C.row.type === "conv" && C.row.in_channels === 3 && !C.feeds_from && has("kernels");
  const DEFAULTS = { cell: "m", ylog: "", abslog: "", overlay: "", svd: "svd", cx: "0", cy: "1", colour: "", view: RGB ? "rgb" : "nmf" };
  function read(q) {
    const s = Object.assign({}, DEFAULTS);
    Object.keys(DEFAULTS).forEach((k) => { if (q[k] !== undefined) s[k] = q[k]; });
    if (!["s", "m", "l"].includes(s.cell)) s.cell = "m";
    if (!["svd", "pca"].includes(s.svd)) s.svd = "svd";
    if (!["rgb", "nmf"].includes(s.view) || !RGB) s.view = DEFAULTS.view;
    s.ylog = s.ylog === "1" ? "1" : "";
    s.abslog = s.abslog === "1" ? "1" : "";
    return s;
  }
  let state = read(CS.query());
  // overlays of a shared link that no longer exist: dropped from the URL, said beside the histogram
  const overlayGone = CS.boot.overlay_gone || [];
  if (overlayGone.length) {
    const goneSet = new Set(overlayGone.map((g) => g.pair));
    state.overlay = state.overlay.split(",").filter((p) => p && !goneSet.has(p)).join(",");
    replaceURL();
  }
  function replaceURL() { CS.viewURL(state, DEFAULTS, { replace: true }); }
  function note(id, html) {
    const n = el(id);
    if (!n) return;
    n.innerHTML = html || "";
    n.hidden = !html;
  }
  function push(changes) {
    state = Object.assign({}, state, changes);
    CS.viewURL(state, DEFAULTS);
    render();
  }
  CS.onPop((q) => { state = read(q); render(); });

  // ---- neuron grid -------------------------------------------------------------------------
  let grid = null, nmf = null, rgb = null;
  /** The RGB first layer's filters as images [N][kh][kw][3]: each filter scaled by its own largest |w|,
   *  0.5 grey for zero (channel c of the input shown as colour c). From the kernels result, which keeps
   *  every input channel of a 3-channel layer. */
  async function rgbImages() {
    if (rgb) return rgb;
    const k = (await CS.api(CS.urls.result(model, layer, "kernels"))).data;
    rgb = k.kernels.map((ks, n) => {
      const byCh = [0, 1, 2].map((c) => ks[k.top_channels[n].indexOf(c)]);
      const m = Math.max(...byCh.flat(2).map(Math.abs)) || 1;
      return byCh[0].map((row, y) => row.map((_, x) => byCh.map((kc) => 0.5 + 0.5 * kc[y][x] / m)));
    });
    return rgb;
  }
  function gridImages() { return state.view === "rgb" && rgb ? rgb : nmf.images; }
  function drawNeuronGrid() {
    if (!nmf) return;
    const canvas = el("neuron-grid");
    const t0 = performance.now();
    grid = CS.drawGrid(canvas, gridImages(), nmf.order, { cell: state.cell, width: el("plot-grid").clientWidth - 20 });
    canvas.dataset.view = state.view === "rgb" && rgb ? "rgb" : "nmf";
    canvas.dataset.drawMs = String(Math.round(performance.now() - t0));
    canvas.dataset.shownAt = String(Math.round(performance.now()));
  }
  async function setupGrid() {
    const canvas = el("neuron-grid");
    try {
      nmf = (await CS.api(CS.urls.result(model, layer, "nmf"))).data;
      if (RGB) await rgbImages().catch(() => null);
    } catch (e) { CS.showError("plot-grid", e); return; }
    drawNeuronGrid();
    showView();
    const errs = nmf.error || [];
    const median = errs.length ? errs.slice().sort((a, b) => a - b)[Math.floor(errs.length / 2)] : null;
    el("grid-stats").innerHTML = `<span><b>${nmf.order.length}</b> neurons</span><span>banding index <b>${CS.fmt(nmf.banding_index, 3)}</b></span>` +
      `<span>median NMF error <b>${CS.fmt(median, 3)}</b></span>`;
    el("colour-rule").textContent = nmf.colour_rule || "";
    const pos = new Map(nmf.order.map((j, p) => [j, p]));
    CS.bindGrid(canvas, () => grid, (h) => `neuron <b>${h.neuron}</b> · #${h.position + 1} in order · error ${CS.fmt((nmf.error || [])[h.neuron])}`,
      (h) => CS.urls.neuronPage(model, layer, h.neuron));
    window.addEventListener("resize", CS.debounce(drawNeuronGrid, 150));
    el("grid-cell").onchange = (ev) => push({ cell: ev.target.value });
    if (el("grid-view")) el("grid-view").onchange = (ev) => push({ view: ev.target.value });
    setupGoTo();
    setupGridList();
    CS.figure("grid", stem(state.view === "rgb" ? "filters_rgb" : "neuron_grid"), {
      png: async (title) => CS.gridsPNG([{ title: (state.view === "rgb" && rgb ? "RGB filters" : "NMF reduced forms") + ` of ${model} · ${layer}${C.human ? " (" + C.human + ")" : ""}`,
        subtitle: `${nmf.order.length} neurons, sorted by similarity · banding index ${CS.fmt(nmf.banding_index, 3)}`, images: gridImages(), order: nmf.order }],
        { title, rgbKey: state.view === "rgb" && !!rgb }),
      csv: () => [["position", "neuron", "error", "energy"]].concat(nmf.order.map((j, p) => [p, j, (nmf.error || [])[j], (nmf.energy || [])[j]])),
    });
    void pos;
  }
  function showView() {
    if (!el("grid-view")) return;
    el("grid-view").value = state.view;
    CS.$$("[data-view-caption]").forEach((c) => { c.hidden = c.dataset.viewCaption !== (state.view === "rgb" && rgb ? "rgb" : "nmf"); });
  }
  /** "Go to neuron": a number in 0..N-1 opens that neuron's page; anything else says what is valid. */
  function setupGoTo() {
    const f = el("goto-form");
    if (!f) return;
    f.onsubmit = (ev) => {
      ev.preventDefault();
      const v = el("goto-neuron").value.trim(), n = C.neurons;
      if (!/^[0-9]+$/.test(v) || Number(v) >= n) { note("goto-note", `neurons are numbered 0 to ${n - 1}`); return; }
      location.href = CS.urls.neuronPage(model, layer, Number(v));
    };
  }
  /** The text alternative of the grid: every neuron as a link, in the grid's order (built when opened). */
  function setupGridList() {
    const d = el("grid-list");
    if (!d) return;
    d.addEventListener("toggle", () => {
      if (!d.open || d.dataset.built) return;
      d.dataset.built = "1";
      const err = nmf.error || [];
      el("grid-list-items").innerHTML = nmf.order.map((j, p) => `<li><a href="${CS.urls.neuronPage(model, layer, j)}">neuron ${j}</a> <span class="muted">#${p + 1}, NMF error ${CS.fmt(err[j])}</span></li>`).join("");
    });
  }

  // ---- mean kernel -------------------------------------------------------------------------
  async function setupSymmetry() {
    let d;
    try { d = (await CS.api(CS.urls.result(model, layer, "symmetry"))).data; } catch (e) { CS.showError("plot-symmetry", e); return; }
    const K = d.mean_kernel, vmax = Math.max(...K.flat().map(Math.abs)) || 1;
    const names = Object.keys(d.distances);
    await CS.plot("plot-symmetry", [
      { type: "heatmap", z: K, zmin: -vmax, zmax: vmax, colorscale: CS.rdbu, showscale: true, xaxis: "x", yaxis: "y",
        colorbar: { thickness: 10, len: 0.85, x: 0.4, xpad: 4, tickfont: { size: 10 } }, hovertemplate: "row %{y}, col %{x}<br>%{z:.4g}<extra></extra>",
        text: K.map((r) => r.map((v) => v.toPrecision(2))), texttemplate: K.length <= 7 ? "%{text}" : "", textfont: { size: 10 } },
      { type: "bar", orientation: "h", x: names.map((n) => d.distances[n]), y: names, xaxis: "x2", yaxis: "y2", marker: { color: "#a5b4fc" },
        hovertemplate: "%{y}: %{x:.3f}<extra></extra>" },
    ], {
      height: 300, showlegend: false, margin: { l: 30, r: 10, t: 30, b: 40 },
      xaxis: { domain: [0, 0.36], showgrid: false, zeroline: false, constrain: "domain", dtick: 1, title: { text: "x" } },
      yaxis: { autorange: "reversed", showgrid: false, zeroline: false, scaleanchor: "x", dtick: 1, title: { text: "y" } },
      xaxis2: { domain: [0.68, 1], title: { text: "‖T(K̂) − K̂‖" }, rangemode: "tozero" }, yaxis2: { anchor: "x2", automargin: true, tickfont: { size: 10.5 } },
      annotations: [{ xref: "paper", yref: "paper", x: 0, y: 1.1, xanchor: "left", showarrow: false,
        text: `<b>S = ${d.score.toFixed(3)}</b>${d.strided ? " · strided*" : ""}${d.uneven_padding ? " · <span style='color:#f97316'>uneven padding</span>" : ""}`, font: { size: 13 } }],
    });
    CS.figure("symmetry", stem("mean_kernel"), {
      png: (t) => CS.plotPNG(el("plot-symmetry"), t),
      csv: () => [["row"].concat(K[0].map((_, j) => "col" + j))].concat(K.map((r, i) => [i].concat(r))).concat([[], ["score", d.score]]).concat(names.map((n) => [n, d.distances[n]])),
    });
  }

  // ---- histogram with overlays ----------------------------------------------------------------
  let histMain = null;
  const overlayData = new Map();
  function overlays() { return state.overlay ? state.overlay.split(",").filter(Boolean) : []; }
  async function histOf(pair) {
    const i = pair.indexOf(":");
    const m = pair.slice(0, i), l = pair.slice(i + 1);
    return (await CS.api(CS.urls.result(m, l, "histogram"))).data;
  }
  function histTrace(h, name, color, main) {
    const log = state.abslog === "1";
    return CS.histTrace(log ? h.log_edges : h.edges, log ? h.log_counts : h.counts, name, { colour: color, width: main ? 2 : 1.6 },
      { fill: main ? "tozeroy" : "none", fillcolor: "rgba(79,70,229,0.12)",
        hovertemplate: `${CS.escapeHTML(name)}<br>${log ? "log₁₀|w|" : "w"} ≈ %{x:.3g}<br>share %{y:.3%}<extra></extra>` });
  }
  async function renderHistogram() {
    if (!has("histogram")) return;
    el("hist-ylog").checked = state.ylog === "1";
    el("hist-abslog").checked = state.abslog === "1";
    try { histMain = histMain || (await CS.api(CS.urls.result(model, layer, "histogram"))).data; } catch (e) { CS.showError("plot-histogram", e); return; }
    const ov = overlays();
    const datas = [];
    for (const p of ov) {
      try { if (!overlayData.has(p)) overlayData.set(p, await histOf(p)); datas.push([p, overlayData.get(p)]); } catch (e) { CS.toast(`overlay ${p}: ${e.message.split(". Known")[0]}`); }
    }
    note("ov-note", overlayGone.length ? `Left out of this link's overlays (gone): ` + overlayGone.map((g) => `<code>${CS.escapeHTML(g.pair)}</code> (${CS.escapeHTML(g.reason)})`).join("; ") : "");
    const traces = [histTrace(histMain, `${model}:${layer}`, CS.colour(0), true)].concat(datas.map(([p, h], i) => histTrace(h, p, CS.colour(i + 1), false)));
    await CS.plot("plot-histogram", traces, {
      height: 330, showlegend: ov.length > 0,
      xaxis: { title: { text: state.abslog === "1" ? "log₁₀ |w|" : "weight w" }, range: CS.occupiedRange(traces) },
      yaxis: state.ylog === "1" ? { type: "log", title: { text: "share of weights" }, dtick: 1, exponentformat: "power" }
        : { type: "linear", title: { text: "share of weights" }, tickformat: ".1%" },
    });
    const rows = [[`${model}:${layer}`, histMain]].concat(datas);
    el("hist-stats").innerHTML = `<table><thead><tr><th>layer</th><th>mean</th><th>std</th><th>kurtosis</th><th>near zero</th><th>top-10% L1 share</th></tr></thead><tbody>` +
      rows.map(([n, h], i) => `<tr><td><span class="swatch" style="background:${CS.colour(i)}"></span>${CS.escapeHTML(n)}</td><td>${CS.fmt(h.mean, 4)}</td><td>${CS.fmt(h.std, 4)}</td><td>${CS.fmt(h.kurtosis, 2)}</td><td>${(100 * h.near_zero).toFixed(2)} %</td><td>${(100 * h.top10_l1_share).toFixed(1)} %</td></tr>`).join("") + "</tbody></table>";
    el("ov-chips").innerHTML = ov.map((p, i) => `<button type="button" class="chip" data-pair="${CS.escapeHTML(p)}" title="remove"><span class="swatch" style="background:${CS.colour(i + 1)}"></span>${CS.escapeHTML(p)}<span class="x">×</span></button>`).join("");
    CS.$$("#ov-chips .chip").forEach((b) => { b.onclick = () => push({ overlay: ov.filter((p) => p !== b.dataset.pair).join(",") }); });
  }
  async function setupHistogram() {
    if (!has("histogram")) return;
    el("hist-ylog").onchange = (ev) => push({ ylog: ev.target.checked ? "1" : "" });
    el("hist-abslog").onchange = (ev) => push({ abslog: ev.target.checked ? "1" : "" });
    const msel = el("ov-model"), lsel = el("ov-layer");
    const fillLayers = async () => {
      const m = msel.value;
      try {
        const d = await CS.api(CS.urls.model(m));
        const ls = (d.analyses.histogram || {}).layers || [];
        lsel.innerHTML = ls.filter((l) => !(m === model && l === layer)).map((l) => `<option>${CS.escapeHTML(l)}</option>`).join("");
      } catch (e) { lsel.innerHTML = ""; }
    };
    try {
      const list = (await CS.api("/api/models")).models;
      msel.innerHTML = list.map((m) => `<option ${m.name === model ? "selected" : ""}>${CS.escapeHTML(m.name)}</option>`).join("");
    } catch (e) { msel.innerHTML = `<option>${CS.escapeHTML(model)}</option>`; }
    msel.onchange = fillLayers;
    await fillLayers();
    el("ov-add").onclick = () => {
      const p = `${msel.value}:${lsel.value}`;
      if (!lsel.value || overlays().includes(p)) return;
      push({ overlay: overlays().concat([p]).join(",") });
    };
    CS.figure("histogram", stem("histogram"), {
      png: (t) => CS.plotPNG(el("plot-histogram"), t),
      csv: () => {
        const log = state.abslog === "1";
        const hs = [[`${model}:${layer}`, histMain]].concat(overlays().filter((p) => overlayData.has(p)).map((p) => [p, overlayData.get(p)]));
        return CS.histCSV(log ? histMain.log_edges : histMain.edges, hs.map(([n]) => n), hs.map(([, h]) => (log ? h.log_counts : h.counts)));
      },
    });
  }

  // ---- batchnorm -----------------------------------------------------------------------------
  async function setupBatchnorm() {
    const bnLayer = C.row.type === "batchnorm" ? layer : C.bn;
    if (!el("fig-batchnorm") || !bnLayer) return;
    let d;
    try { d = (await CS.api(CS.urls.result(model, bnLayer, "batchnorm"))).data; } catch (e) { CS.showError("plot-batchnorm", e); return; }
    const lines = [];
    CS.limits.gamma_thresholds.map(Number).forEach((t) => [t, -t].forEach((v) => lines.push({ type: "line", xref: "x", yref: "paper", x0: v, x1: v, y0: 0, y1: 1, line: { color: "#e11d48", width: 1, dash: "dot" } })));
    await CS.plot("plot-batchnorm", [
      { type: "histogram", x: d.gamma, name: "γ", nbinsx: 40, marker: { color: "#4f46e5", line: { color: "#fff", width: 0.5 } }, xaxis: "x", yaxis: "y", hovertemplate: "γ %{x}<br>%{y} channels<extra></extra>" },
      { type: "histogram", x: d.beta, name: "β", nbinsx: 40, marker: { color: "#10b981", line: { color: "#fff", width: 0.5 } }, xaxis: "x2", yaxis: "y2", hovertemplate: "β %{x}<br>%{y} channels<extra></extra>" },
    ], {
      height: 300, showlegend: false, shapes: lines, margin: { l: 46, r: 12, t: 34, b: 44 },
      xaxis: { domain: [0, 0.47], title: { text: "γ (scale)" } }, yaxis: { title: { text: "channels" } },
      xaxis2: { domain: [0.55, 1], title: { text: "β (shift)" } }, yaxis2: { anchor: "x2" },
      annotations: [{ xref: "paper", yref: "paper", x: 0, y: 1.13, xanchor: "left", showarrow: false, font: { size: 12 },
        text: CS.limits.gamma_thresholds.map((t, i) => `${i ? "" : "|γ| "}< ${t}: <b>${(100 * d.frac_below[t]).toFixed(1)} %</b>`).join(" · ") }],
    });
    CS.figure("batchnorm", `${model}_${bnLayer}_batchnorm`, {
      png: (t) => CS.plotPNG(el("plot-batchnorm"), t),
      csv: () => [["channel", "gamma", "beta"]].concat(d.gamma.map((g, i) => [i, g, d.beta[i]])),
    });
  }

  // ---- fc spatial ---------------------------------------------------------------------------
  async function setupFcSpatial() {
    if (!has("fc-spatial")) return;
    let d;
    try { d = (await CS.api(CS.urls.result(model, layer, "fc-spatial"))).data; } catch (e) { CS.showError("plot-fcspatial", e); return; }
    // wide: map | by y | by x side by side, the colour bar in its own gap; narrow (a phone): the map on top,
    // the two profiles below it, the colour bar to the map's right (nothing overlaps at either width)
    const narrow = el("plot-fcspatial").clientWidth < 600;
    const lay = narrow ? {
      height: 560, xaxis: { domain: [0, 0.84], title: { text: "x" } }, yaxis: { domain: [0.5, 1], autorange: "reversed", title: { text: "y" } },
      xaxis2: { domain: [0, 0.42], anchor: "y2", title: { text: "mean |w| by y" } }, yaxis2: { domain: [0, 0.34], anchor: "x2", autorange: "reversed", title: { text: "y" } },
      xaxis3: { domain: [0.58, 1], anchor: "y3", title: { text: "x (mean |w| by x)" } }, yaxis3: { domain: [0, 0.34], anchor: "x3" },
    } : {
      height: 320, xaxis: { domain: [0, 0.4], title: { text: "x" } }, yaxis: { autorange: "reversed", title: { text: "y" } },
      xaxis2: { domain: [0.56, 0.74], title: { text: "mean |w| by y" } }, yaxis2: { anchor: "x2", autorange: "reversed" },
      xaxis3: { domain: [0.84, 1], title: { text: "x (mean |w| by x)" } }, yaxis3: { anchor: "x3" },
    };
    const bar = narrow ? { thickness: 10, x: 0.88, y: 0.75, len: 0.5 } : { thickness: 10, x: 0.42, len: 0.9 };
    await CS.plot("plot-fcspatial", [
      { type: "heatmap", z: d.map, colorscale: "Viridis", xaxis: "x", yaxis: "y", colorbar: bar, hovertemplate: "y %{y}, x %{x}<br>mean |w| %{z:.4g}<extra></extra>" },
      { type: "scatter", mode: "lines+markers", x: d.by_y, y: d.by_y.map((_, i) => i), xaxis: "x2", yaxis: "y2", name: "by y", line: { color: "#4f46e5" } },
      { type: "scatter", mode: "lines+markers", x: d.by_x.map((_, i) => i), y: d.by_x, xaxis: "x3", yaxis: "y3", name: "by x", line: { color: "#f97316" } },
    ], {
      ...lay, showlegend: false, margin: { l: 40, r: 10, t: 26, b: 44 },
      annotations: [{ xref: "paper", yref: "paper", x: 0, y: 1.1, xanchor: "left", showarrow: false, text: `input reshaped to C×H×W = ${d.shape.join("×")}` }],
    });
    CS.figure("fcspatial", stem("fc_spatial"), {
      png: (t) => CS.plotPNG(el("plot-fcspatial"), t),
      csv: () => [["y"].concat(d.map[0].map((_, j) => "x" + j))].concat(d.map.map((r, i) => [i].concat(r))),
    });
  }

  // ---- SVD ------------------------------------------------------------------------------------
  let svd = null;
  /** The feeder colourings of the SVD result, {name: values}, the default first: feeder_properties
   *  (version 2), else the single feeder_property of an older result (with its branches, if any). */
  function svdProperties() {
    if (svd.feeder_properties && Object.keys(svd.feeder_properties).length) return svd.feeder_properties;
    const fp = svd.feeder_property || {}, out = {};
    if (fp.name) out[fp.name] = fp.values || [];
    if (fp.branch && !out.branch) out.branch = fp.branch;
    return out;
  }
  function svdDefaultColour(props) {
    const fp = (svd.feeder_property || {}).name;
    return fp && props[fp] ? fp : Object.keys(props)[0] || "";
  }
  /** {name, values} of the colouring chosen in the URL, the default when it names none of the result's. */
  function svdColour() {
    const props = svdProperties();
    const name = props[state.colour] ? state.colour : svdDefaultColour(props);
    return { name, values: props[name] || [] };
  }
  async function renderSvd() {
    if (!has("svd")) return;
    try { svd = svd || (await CS.api(CS.urls.result(model, layer, "svd"))).data; } catch (e) { CS.showError("plot-svd", e); return; }
    const k = svd.u[0].length;
    const cx = Math.min(k - 1, Math.max(0, parseInt(state.cx, 10) || 0));
    const cy = Math.min(k - 1, Math.max(0, isNaN(parseInt(state.cy, 10)) ? 1 : parseInt(state.cy, 10)));
    // a component the result does not have is said, and the URL names what is shown
    const said = [];
    if (String(cx) !== String(state.cx)) said.push(`cx=${CS.escapeHTML(String(state.cx).slice(0, 20))}`);
    if (String(cy) !== String(state.cy)) said.push(`cy=${CS.escapeHTML(String(state.cy).slice(0, 20))}`);
    if (said.length) {
      note("svd-note", `${said.join(" and ")} ${said.length > 1 ? "are" : "is"} not a component of this result: it has ${k} (0 to ${k - 1}); showing x = ${cx}, y = ${cy}.`);
      state = Object.assign({}, state, { cx: String(cx), cy: String(cy) });
      replaceURL();
    } else if (el("svd-note") && !el("svd-note").dataset.keep) note("svd-note", "");
    if (said.length) el("svd-note").dataset.keep = "1";
    ["svd-cx", "svd-cy"].forEach((id, w) => {
      const s = el(id);
      if (s.options.length !== k) s.innerHTML = Array.from({ length: k }, (_, i) => `<option value="${i}">${i}</option>`).join("");
      s.value = String(w ? cy : cx);
    });
    el("svd-mode").value = state.svd;
    const props = svdProperties(), names = Object.keys(props);
    const csel = el("svd-colour");
    if (csel.dataset.names !== names.join(",")) {
      csel.innerHTML = names.map((n) => `<option value="${CS.escapeHTML(n)}">${CS.escapeHTML(n)}</option>`).join("");
      csel.dataset.names = names.join(",");
      csel.disabled = names.length < 2;
    }
    const prop = svdColour();
    csel.value = prop.name;
    const pca = state.svd === "pca" && svd.pca;
    const U = pca ? svd.pca.u : svd.u, V = pca ? svd.pca.v : svd.v;
    const tag = pca ? "PC" : "singular vector ";
    // wide: feeder | this layer side by side, the colour bar between them; narrow (a phone): one above the
    // other, the colour bar at the right of the feeder's panel, so it covers no point
    const narrowSvd = el("plot-svd").clientWidth < 600;
    const svdBar = narrowSvd ? { title: { text: prop.name, side: "right" }, thickness: 10, x: 1.0, y: 0.79, len: 0.42 }
      : { title: { text: prop.name, side: "right" }, thickness: 10, x: 0.46, len: 0.9 };
    const svdAxes = narrowSvd ? {
      height: 640, xaxis: { domain: [0, 0.86], anchor: "y", title: { text: `${tag}${cx}` } }, yaxis: { domain: [0.58, 1], title: { text: `${tag}${cy}` } },
      xaxis2: { domain: [0, 0.86], anchor: "y2", title: { text: `${tag}${cx}` } }, yaxis2: { domain: [0, 0.4], anchor: "x2", title: { text: `${tag}${cy}` } },
    } : {
      height: 420, xaxis: { domain: [0, 0.42], title: { text: `${tag}${cx}` } }, yaxis: { title: { text: `${tag}${cy}` } },
      xaxis2: { domain: [0.56, 1], title: { text: `${tag}${cx}` } }, yaxis2: { anchor: "x2", title: { text: `${tag}${cy}` } },
    };
    await CS.plot("plot-svd", [
      { type: "scatter", mode: "markers", x: V.map((r) => r[cx]), y: V.map((r) => r[cy]), customdata: V.map((_, i) => i), xaxis: "x", yaxis: "y",
        marker: { size: 8, color: prop.values, colorscale: "Viridis", showscale: true, colorbar: svdBar, line: { color: "#fff", width: 0.5 } },
        hovertemplate: `${CS.escapeHTML(svd.feeder)} neuron %{customdata}<br>${CS.escapeHTML(prop.name)} %{marker.color:.3g}<extra></extra>` },
      { type: "scatter", mode: "markers", x: U.map((r) => r[cx]), y: U.map((r) => r[cy]), customdata: U.map((_, i) => i), xaxis: "x2", yaxis: "y2",
        marker: { size: 8, color: "#4f46e5", opacity: 0.8, symbol: "diamond", line: { color: "#fff", width: 0.5 } },
        hovertemplate: `${CS.escapeHTML(layer)} neuron %{customdata}<extra></extra>` },
    ], {
      ...svdAxes, showlegend: false, margin: { l: 50, r: 14, t: 34, b: 50 },
      annotations: [
        { xref: "paper", yref: "paper", x: 0, y: narrowSvd ? 1.05 : 1.08, xanchor: "left", showarrow: false, text: `<b>${CS.escapeHTML(svd.feeder)}</b> (feeder, right vectors)` },
        { xref: "paper", yref: "paper", x: narrowSvd ? 0 : 0.56, y: narrowSvd ? 0.47 : 1.08, xanchor: "left", showarrow: false, text: `<b>${CS.escapeHTML(layer)}</b> (this layer, left vectors)` },
      ],
    });
    note("svd-branches", branchTestsText(svd.branch_tests));
    const div = el("plot-svd");
    if (!div.dataset.bound) {
      div.dataset.bound = "1";
      div.on("plotly_click", (ev) => {
        const p = ev.points && ev.points[0];
        if (!p) return;
        location.href = p.curveNumber === 0 ? CS.urls.neuronPage(model, svd.feeder, p.customdata) : CS.urls.neuronPage(model, layer, p.customdata);
      });
    }
  }
  /** The branch tests of an SVD result (version 3) in words, with their numbers; "" where there are none. */
  function branchTestsText(bt) {
    if (!bt) return "";
    const fmt = (t) => `η² ${t.eta2_best.toFixed(2)} (chance ≈ ${t.chance.toFixed(2)}), p = ${t.p.toFixed(3)}`;
    const parts = [];
    if (bt.separation) {
      parts.push(`separate most on singular vector ${bt.separation.best}: ${fmt(bt.separation)}`);
    } else {
      parts.push("this layer is grouped, so its |W| is block-diagonal and its singular vectors separate the branches by construction (no test)");
    }
    const props = bt.properties || {};
    for (const name of Object.keys(props)) {
      const t = props[name];
      const means = (t.means || []).map((m) => Number(m[0]).toPrecision(3)).join(" / ");
      parts.push(`${CS.escapeHTML(name)}: ${fmt(t)}, branch means ${means}`);
    }
    const n = Number(((props.norm || bt.separation || {}).permutations) || 0).toLocaleString("en-US");
    return `<b>Branches of ${CS.escapeHTML(svd.feeder)}</b>: ${parts.join("; ")}. η² is the share of the variance between the branches' means; p from ${n} shuffles of the branch labels.`;
  }
  function setupSvd() {
    if (!has("svd")) return;
    el("svd-mode").onchange = (ev) => push({ svd: ev.target.value });
    el("svd-cx").onchange = (ev) => push({ cx: ev.target.value });
    el("svd-cy").onchange = (ev) => push({ cy: ev.target.value });
    el("svd-colour").onchange = (ev) => push({ colour: ev.target.value === svdDefaultColour(svdProperties()) ? "" : ev.target.value });
    CS.figure("svd", stem("svd"), {
      png: (t) => CS.plotPNG(el("plot-svd"), t),
      csv: () => {
        const pca = state.svd === "pca" && svd.pca;
        const U = pca ? svd.pca.u : svd.u, V = pca ? svd.pca.v : svd.v, prop = svdColour(), pv = prop.values;
        return [["layer", "neuron"].concat(U[0].map((_, i) => (pca ? "pc" : "sv") + i)).concat([prop.name || "property"])]
          .concat(V.map((r, i) => [svd.feeder, i].concat(r).concat([pv[i]]))).concat(U.map((r, i) => [layer, i].concat(r).concat([""])));
      },
    });
  }

  // ---- render from state -----------------------------------------------------------------------
  let lastCell = state.cell, lastView = state.view;
  function render() {
    if (el("grid-cell")) {
      el("grid-cell").value = state.cell;
      if (state.cell !== lastCell || state.view !== lastView) { lastCell = state.cell; lastView = state.view; drawNeuronGrid(); showView(); }
    }
    renderHistogram();
    renderSvd();
  }

  const jobs = [];
  if (has("nmf")) {
    const g = setupGrid();
    CS.plotAfter(g); // the grid first: Plotly loads once it is drawn
    jobs.push(g);
  }
  if (has("symmetry")) jobs.push(setupSymmetry());
  if (has("histogram")) jobs.push(setupHistogram().then(renderHistogram));
  jobs.push(setupBatchnorm());
  if (has("fc-spatial")) jobs.push(setupFcSpatial());
  if (has("svd")) { setupSvd(); jobs.push(renderSvd()); }
  if (el("grid-cell")) el("grid-cell").value = state.cell;
  Promise.allSettled(jobs).then(() => { document.body.dataset.ready = "1"; });
})();
