/* Experiment page: the variants of one experiment side by side (table, neuron grids of one layer, symmetry and
 * banding profiles, cluster proportions across variants and layers). The index page (/experiments) only needs
 * to say it is ready. View parameters live in the query string:
 *   layer=<conv layer of the grids>  k=4..19 (clusters)  clayers=<layer>,<layer> (layers of the cluster figure)
 * Controls push a history entry; back/forward restore the view (popstate). */
"use strict";
(() => {
  if (CS.boot.page !== "experiment") { document.body.dataset.ready = "1"; return; }
  const D = CS.boot.data;
  const el = (id) => document.getElementById(id);
  const colour = (i) => CS.palette[i % CS.palette.length];
  const stem = (s) => `${D.name}_${s}`;
  const V = D.variants;
  const DEFAULTS = { layer: D.default_layer || "", k: String(D.default_k || 8), clayers: (D.cluster_layers || []).join(",") };

  function read(q) {
    const s = Object.assign({}, DEFAULTS, q);
    if (!D.layers.includes(s.layer)) s.layer = DEFAULTS.layer;
    const k = parseInt(s.k, 10);
    s.k = String(isNaN(k) ? DEFAULTS.k : Math.max(4, Math.min(19, k)));
    const cl = String(s.clayers || "").split(",").filter((l) => D.layers.includes(l));
    s.clayers = (cl.length ? cl : DEFAULTS.clayers.split(",").filter(Boolean)).join(",");
    return { layer: s.layer, k: s.k, clayers: s.clayers };
  }
  let state = read(CS.query());
  function push(changes) {
    state = read(Object.assign({}, state, changes));
    const q = {};
    Object.keys(state).forEach((k) => { if (state[k] !== DEFAULTS[k]) q[k] = state[k]; });
    CS.setQuery(q);
    render();
  }
  CS.onPop((q) => { state = read(q); render(); });

  // ---- table export ------------------------------------------------------------------------
  const pctOrNull = (v) => (v === null || v === undefined ? null : v);
  CS.figure("table", stem("variants"), {
    csv: () => [["variant", "model", "test_accuracy", "banding_layer_1", "banding_1", "banding_layer_2", "banding_2",
      "gamma_below_0.01", "gamma_source", "clamp_change_points", "dead_relu_fraction", "strided_symmetry", "mean_symmetry", "epochs", "limit", "command"]].concat(
      V.map((r) => {
        const b = r.banding.length > 1 ? r.banding : [null].concat(r.banding);
        const g = r["gamma_below_0.01"];
        return [r.variant, r.model, r.accuracy, b[0] && b[0].layer, b[0] && b[0].value, b[1] && b[1].layer, b[1] && b[1].value,
          g ? g.value : null, g ? g.source : null, r.gamma_clamp ? r.gamma_clamp.change : null, pctOrNull(r.dead_relu && r.dead_relu.fraction),
          r.strided_symmetry.map((s) => `${s.layer}=${s.value}`).join(" "), r.mean_symmetry, r.epochs, r.limit, r.command];
      })),
  });

  // ---- controls ------------------------------------------------------------------------------
  function renderControls() {
    el("layer-select").value = state.layer;
    el("k-select").value = state.k;
    const chosen = state.clayers.split(",");
    CS.$$("#cluster-layers input").forEach((c) => { c.checked = chosen.includes(c.value); });
  }
  el("layer-select").onchange = (ev) => push({ layer: ev.target.value });
  el("k-select").onchange = (ev) => push({ k: ev.target.value });
  CS.$$("#cluster-layers input").forEach((c) => {
    c.onchange = () => {
      const chosen = CS.$$("#cluster-layers input").filter((x) => x.checked).map((x) => x.value);
      if (!chosen.length) { c.checked = true; CS.toast("choose at least one layer"); return; }
      push({ clayers: chosen.join(",") });
    };
  });

  // ---- neuron grids ------------------------------------------------------------------------------
  let nmfs = [];
  async function renderGrids() {
    const box = el("exp-grids");
    el("grids-layer").textContent = state.layer ? `· ${state.layer}` : "";
    if (!state.layer) { box.innerHTML = `<div class="loading">no layer with an NMF result is shared by the variants</div>`; return; }
    const layer = state.layer;
    nmfs = await Promise.all(V.map(async (r) => {
      try { return (await CS.api(CS.urls.result(r.model, layer, "nmf"))).data; } catch (e) { return { failed: e.message }; }
    }));
    if (layer !== state.layer) return;
    box.innerHTML = "";
    const drawn = [];
    V.forEach((r, i) => {
      const n = nmfs[i];
      const wrap = document.createElement("div");
      wrap.className = "compare-grid exp-grid";
      wrap.dataset.variant = r.variant;
      const acc = r.accuracy === null ? "" : ` · ${CS.fmt(r.accuracy, 1)} %`;
      wrap.innerHTML = `<h4><span class="swatch" style="background:${colour(i)}"></span><a href="${CS.urls.layerPage(r.model, layer)}">${CS.escapeHTML(r.variant)}</a>` +
        ` <span class="muted">${n.failed ? "" : `(${n.order.length} neurons, banding ${CS.fmt(n.banding_index, 2)}${acc})`}</span></h4>` +
        (n.failed ? `<div class="error-text">${CS.escapeHTML(n.failed)}</div>` : `<div class="grid-wrap"><canvas class="neuron-grid"></canvas></div>`);
      box.appendChild(wrap);
      if (!n.failed) drawn.push([r, n, wrap.querySelector("canvas")]);
    });
    // measure every column before drawing any canvas, so that all grids get the same width
    const widths = drawn.map(([, , canvas]) => canvas.parentElement.clientWidth - 20);
    drawn.forEach(([r, n, canvas], i) => {
      const g = CS.drawGrid(canvas, n.images, n.order, { cell: "m", width: widths[i] });
      CS.bindGrid(canvas, () => g, (h) => `${CS.escapeHTML(r.variant)} · ${CS.escapeHTML(layer)} · neuron <b>${h.neuron}</b>`,
        (h) => CS.urls.neuronPage(r.model, layer, h.neuron));
    });
    CS.figure("grids", stem(`grids_${layer}`), {
      png: async () => CS.composePNG(CS.$$("canvas", box), V.filter((_, i) => !nmfs[i].failed).map((r) => `${r.variant} · ${layer}`), { size: 300, cols: Math.min(3, V.length), bg: "#0b1020" }),
      csv: () => [["variant", "model", "layer", "position", "neuron", "error"]].concat(V.flatMap((r, i) => (nmfs[i].order || []).map((j, q) => [r.variant, r.model, layer, q, j, (nmfs[i].error || [])[j]]))),
      json: () => ({ experiment: D.name, layer, variants: V.map((r, i) => ({ variant: r.variant, model: r.model, order: nmfs[i].order, banding_index: nmfs[i].banding_index, images: nmfs[i].images })) }),
    });
  }

  // ---- depth profiles ----------------------------------------------------------------------------
  let profilesDone = false;
  async function renderProfiles() {
    if (profilesDone) return;
    profilesDone = true;
    const lines = (key) => V.map((r, i) => {
      const rows = r.profiles[key];
      return { type: "scatter", mode: "lines+markers", name: r.variant, x: rows.map((p) => p.label), y: rows.map((p) => p.value), customdata: rows.map((p) => p.layer),
        line: { color: colour(i), width: 2 }, marker: { size: 7 }, hovertemplate: `${CS.escapeHTML(r.variant)}<br>%{customdata}: %{y:.3f}<extra></extra>` };
    });
    const order = (key) => { const seen = []; V.forEach((r) => r.profiles[key].forEach((p) => { if (!seen.includes(p.label)) seen.push(p.label); })); return seen; };
    const xaxis = (labels) => ({ type: "category", categoryorder: "array", categoryarray: labels, tickangle: labels.length > 10 ? -50 : 0, tickfont: { size: 10, family: "ui-monospace, monospace" } });
    const click = (div) => { div.on("plotly_click", (ev) => { const p = ev.points[0]; location.href = CS.urls.layerPage(V[p.curveNumber].model, p.customdata); }); };
    const has = (key) => V.some((r) => r.profiles[key].length);
    if (has("symmetry")) {
      await CS.plot("plot-esymmetry", lines("symmetry"), { height: 340, xaxis: xaxis(order("symmetry")), yaxis: { range: [0, 1.02], title: { text: "symmetry S" } } }).then(click);
    } else el("plot-esymmetry").innerHTML = `<div class="loading">no symmetry result</div>`;
    if (has("banding")) {
      await CS.plot("plot-ebanding", lines("banding"), { height: 340, xaxis: xaxis(order("banding")), yaxis: { range: [-1.05, 1.05], title: { text: "banding index" } } }).then(click);
    } else el("plot-ebanding").innerHTML = `<div class="loading">no NMF result</div>`;
    const rowsOf = (key) => [["variant", "model", "layer", "value", "strided"]].concat(V.flatMap((r) => r.profiles[key].map((p) => [r.variant, r.model, p.layer, p.value, !!p.strided])));
    CS.figure("esymmetry", stem("symmetry_profiles"), { png: () => CS.plotPNG(el("plot-esymmetry")), csv: () => rowsOf("symmetry"), json: () => V.map((r) => ({ variant: r.variant, model: r.model, symmetry: r.profiles.symmetry })) });
    CS.figure("ebanding", stem("banding_profiles"), { png: () => CS.plotPNG(el("plot-ebanding")), csv: () => rowsOf("banding"), json: () => V.map((r) => ({ variant: r.variant, model: r.model, banding: r.profiles.banding })) });
  }

  // ---- cluster proportions (figure 12) -------------------------------------------------------------
  let clusters = null;
  async function renderClusters() {
    const div = el("plot-clusters"), cbox = el("centroids");
    const layers = state.clayers.split(",").filter(Boolean);
    const pairs = [];
    layers.forEach((l) => V.forEach((r) => { if (r.nmf_layers.includes(l)) pairs.push([r.variant, r.model, l]); }));
    const used = pairs.slice(0, D.max_pairs || 16);
    cbox.innerHTML = "";
    clusters = null;
    if (!used.length) { div.innerHTML = `<div class="loading">choose a layer with an NMF result</div>`; return; }
    const url = `/api/clusters?pairs=${used.map((p) => encodeURIComponent(p[1]) + ":" + encodeURIComponent(p[2])).join(",")}&k=${state.k}`;
    el("clusters-json").href = url;
    try { clusters = await CS.api(url); } catch (e) { CS.showError(div, e); return; }
    const labels = used.map((p) => `${p[0]} · ${p[2]}`);
    await CS.plot(div, Array.from({ length: clusters.k }, (_, c) => ({
      type: "bar", name: `cluster ${c + 1}`, x: labels, y: clusters.proportions.map((row) => row[c]), marker: { color: colour(c), line: { color: "#fff", width: 0.6 } },
      hovertemplate: `%{x}<br>cluster ${c + 1}: %{y:.1%}<extra></extra>`,
    })), { barmode: "stack", height: 380, yaxis: { tickformat: ".0%", range: [0, 1], title: { text: "share of neurons" } },
      xaxis: { type: "category", tickfont: { size: 10.5 }, tickangle: labels.length > 6 ? -30 : 0 }, legend: { orientation: "v", x: 1.02, y: 1 } });
    clusters.centroids.forEach((img, c) => {
      const d = document.createElement("div");
      const cv = document.createElement("canvas");
      CS.drawRGB(cv, img);
      cv.style.borderColor = colour(c);
      d.appendChild(cv);
      d.appendChild(document.createTextNode(`${c + 1} · ${clusters.sizes[c]}`));
      cbox.appendChild(d);
    });
    if (pairs.length > used.length) CS.toast(`clusters: the first ${used.length} of ${pairs.length} (variant, layer) pairs`);
    CS.figure("clusters", stem(`clusters_k${clusters.k}`), {
      png: () => CS.plotPNG(div),
      csv: () => [["variant", "model", "layer"].concat(Array.from({ length: clusters.k }, (_, c) => `cluster_${c + 1}`))].concat(used.map((p, i) => p.concat(clusters.proportions[i]))),
    });
  }

  let seq = 0;
  async function render() {
    const mine = ++seq;
    document.body.dataset.ready = "";
    renderControls();
    try {
      await renderGrids();
      if (mine !== seq) return;
      await Promise.all([renderProfiles(), renderClusters()]);
    } catch (e) { CS.toast(e.message); }
    if (mine === seq) document.body.dataset.ready = "1";
  }
  // a URL with a layer or k that does not exist here is normalised in place
  const q = CS.query();
  if ((q.layer && q.layer !== state.layer) || (q.k && q.k !== state.k) || (q.clayers && q.clayers !== state.clayers)) {
    const fixed = {};
    Object.keys(state).forEach((k) => { if (state[k] !== DEFAULTS[k]) fixed[k] = state[k]; });
    CS.setQuery(fixed, { replace: true });
  }
  render();
})();
