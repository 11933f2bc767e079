/* Experiment page: the variants of one experiment side by side (table, neuron grids of one layer, symmetry and
 * banding profiles, cluster proportions across variants and layers). The index page (/experiments) only needs
 * to say it is ready. View parameters live in the query string:
 *   layer=<conv layer of the grids>  k=4..19 (clusters)  clayers=<layer>,<layer> (layers of the cluster figure)
 *   hlayer=<conv layer of the training-history charts>  hgamma=0.01|0.05|0.1 (threshold of the gamma chart)
 * Controls push a history entry; back/forward restore the view (popstate). */
"use strict";
(() => {
  if (CS.boot.page !== "experiment") { document.body.dataset.ready = "1"; return; }
  const D = CS.boot.data;
  const el = (id) => document.getElementById(id);
  const colour = CS.colour;
  const stem = (s) => `${D.name}_${s}`;
  const V = D.variants;
  // conv layers with a training history (the union over variants, in execution order of the first that has them)
  const HLAYERS = [];
  V.forEach((r) => ((r.history && r.history.layers) || []).forEach((l) => { if (!HLAYERS.includes(l)) HLAYERS.push(l); }));
  const DEFAULTS = { layer: D.default_layer || "", k: String(D.default_k || 8), clayers: (D.cluster_layers || []).join(","),
    hlayer: HLAYERS.length ? HLAYERS[HLAYERS.length - 1] : "", hgamma: CS.limits.gamma_off };

  function read(q) {
    const s = Object.assign({}, DEFAULTS, q);
    if (!D.layers.includes(s.layer)) s.layer = DEFAULTS.layer;
    s.k = CS.clampK(s.k, DEFAULTS.k);
    const cl = String(s.clayers || "").split(",").filter((l) => D.layers.includes(l));
    s.clayers = (cl.length ? cl : DEFAULTS.clayers.split(",").filter(Boolean)).join(",");
    if (!HLAYERS.includes(s.hlayer)) s.hlayer = DEFAULTS.hlayer;
    if (!CS.limits.gamma_thresholds.includes(s.hgamma)) s.hgamma = DEFAULTS.hgamma;
    return { layer: s.layer, k: s.k, clayers: s.clayers, hlayer: s.hlayer, hgamma: s.hgamma };
  }
  let state = read(CS.query());
  function push(changes) {
    state = read(Object.assign({}, state, changes));
    CS.viewURL(state, DEFAULTS);
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
    el("hlayer-select").value = state.hlayer;
    el("hgamma-select").value = state.hgamma;
    const chosen = state.clayers.split(",");
    CS.$$("#cluster-layers input").forEach((c) => { c.checked = chosen.includes(c.value); });
  }
  el("hlayer-select").innerHTML = HLAYERS.map((l) => `<option value="${CS.escapeHTML(l)}">${CS.escapeHTML(l)}</option>`).join("");
  el("hlayer-select").onchange = (ev) => push({ hlayer: ev.target.value });
  el("hgamma-select").onchange = (ev) => push({ hgamma: ev.target.value });
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
  /* One colour alignment for all variants: the NMF colours are aligned within a layer only (which factor is
   * red is arbitrary per model), so each variant's three factors are permuted, one permutation per variant,
   * to best match the first variant's energy-weighted mean factor images (cosine similarity summed over the
   * three colours, best of the 6 permutations). Equal colours then mean matching factors across the grids. */
  const PERMS = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
  function meanFactors(n) {
    const m = [[], [], []];
    n.images.forEach((img, j) => {
      const e = n.energy ? n.energy[j] : 1;
      let p = 0;
      img.forEach((row) => row.forEach((px) => { for (let c = 0; c < 3; c++) m[c][p] = (m[c][p] || 0) + e * (px[c] || 0); p++; }));
    });
    return m;
  }
  function cosine(a, b) {
    let ab = 0, aa = 0, bb = 0;
    a.forEach((x, i) => { ab += x * b[i]; aa += x * x; bb += b[i] * b[i]; });
    return aa && bb ? ab / Math.sqrt(aa * bb) : 0;
  }
  function alignAcross(list) {
    const ok = list.filter((n) => !n.failed && n.images && n.images.length && (n.rank || 3) === 3);
    if (!ok.length) return;
    const ref = meanFactors(ok[0]);
    ok.forEach((n, k) => {
      const m = meanFactors(n);
      let best = PERMS[0], score = -Infinity;
      if (k > 0) PERMS.forEach((p) => { const sc = p.reduce((a, src, c) => a + cosine(ref[c], m[src]), 0); if (sc > score + 1e-12) { score = sc; best = p; } });
      n.permutation = best;  // colour c of the grid shows this variant's factor best[c]
      if (best !== PERMS[0]) n.images = n.images.map((img) => img.map((row) => row.map((px) => best.map((src) => px[src]))));
    });
  }
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
    alignAcross(nmfs);
    box.innerHTML = "";
    const drawn = [];
    V.forEach((r, i) => {
      const n = nmfs[i];
      const wrap = document.createElement("div");
      wrap.className = "compare-grid exp-grid";
      wrap.dataset.variant = r.variant;
      if (n.permutation) wrap.dataset.permutation = n.permutation.join(",");
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
      png: async () => CS.gridsPNG(V.map((r, i) => [r, nmfs[i]]).filter(([, n]) => !n.failed).map(([r, n]) => ({
        title: `${r.variant} · ${layer}`, subtitle: `${r.model}: ${n.order.length} neurons, banding index ${CS.fmt(n.banding_index, 3)}`,
        images: n.images, order: n.order })), { title: `${D.title}: neuron grids of ${layer}` }),
      csv: () => [["variant", "model", "layer", "position", "neuron", "error"]].concat(V.flatMap((r, i) => (nmfs[i].order || []).map((j, q) => [r.variant, r.model, layer, q, j, (nmfs[i].error || [])[j]]))),
      json: () => ({ experiment: D.name, layer, colour_alignment: "per variant, one permutation of the 3 factors matching the first variant's energy-weighted mean factor images",
        variants: V.map((r, i) => ({ variant: r.variant, model: r.model, permutation: nmfs[i].permutation, order: nmfs[i].order, banding_index: nmfs[i].banding_index, images: nmfs[i].images })) }),
    });
  }

  // ---- depth profiles ----------------------------------------------------------------------------
  let profilesDone = false;
  async function renderProfiles() {
    if (profilesDone) return;
    profilesDone = true;
    const lines = (key) => CS.profileLines(V.map((r, i) => ({ name: r.variant, rows: r.profiles[key], colour: colour(i) })),
      (p) => p.label, (p) => p.value, 7);
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

  // ---- during training: one small chart per measured quantity, one line per variant ----------------------
  const HCHARTS = [
    { id: "acc", title: "test accuracy (%)", get: (h) => h.test_accuracy },
    { id: "loss", title: "training loss", get: (h) => h.train_loss, log: true },
    { id: "banding", title: () => `banding index · ${state.hlayer}`, get: (h) => (h.banding || {})[state.hlayer], range: [-1.05, 1.05] },
    { id: "symmetry", title: () => `symmetry S · ${state.hlayer}`, get: (h) => (h.symmetry || {})[state.hlayer], range: [0, 1.02] },
    { id: "gamma", title: () => `share of |γ| < ${state.hgamma}`, get: (h) => (h.gamma || {})[state.hgamma], pct: true },
    { id: "dead", title: "dead ReLU channels (share)", get: (h) => h.dead_relu, pct: true },
  ];
  const hv = V.map((r, i) => [r, i]).filter(([r]) => r.history && r.history.epoch.length);
  const plateauTag = (r) => (r.plateau && r.plateau.reached === false ? " (not at plateau)" : "");
  async function renderHistory() {
    const box = el("history-charts");
    if (!hv.length) { box.innerHTML = `<div class="loading">no run here recorded a training history</div>`; return; }
    const shown = HCHARTS.filter((c) => hv.some(([r]) => (c.get(r.history) || []).some((v) => v !== null && v !== undefined)));
    if (!box.querySelector("[data-chart]")) {
      // one key for every chart (a Plotly legend per chart would crowd the small multiples)
      box.innerHTML = `<div class="history-legend">${hv.map(([r, i]) => `<span><span class="swatch" style="background:${colour(i)}"></span>${CS.escapeHTML(r.variant)}${plateauTag(r)}</span>`).join("")}</div>`;
    }
    CS.$$("[data-chart]", box).forEach((d) => { if (!shown.some((c) => c.id === d.dataset.chart)) d.remove(); });
    for (const c of shown) {
      let div = box.querySelector(`[data-chart="${c.id}"]`);
      if (!div) { div = document.createElement("div"); div.dataset.chart = c.id; box.appendChild(div); }
      const traces = hv.map(([r, i]) => ({ type: "scatter", mode: "lines+markers", name: r.variant + plateauTag(r), x: r.history.epoch,
        y: c.get(r.history) || [], line: { color: colour(i), width: 2, dash: r.plateau && r.plateau.reached === false ? "dot" : "solid" },
        marker: { size: 5 }, connectgaps: true,
        hovertemplate: `${CS.escapeHTML(r.variant)} · epoch %{x}<br>%{y${c.pct ? ":.1%" : ":.4g"}}<extra></extra>` }));
      const title = typeof c.title === "function" ? c.title() : c.title;
      await CS.plot(div, traces, { height: 260, title: { text: CS.escapeHTML(title), font: { size: 13 }, x: 0.02, xanchor: "left" },
        margin: { t: 34, r: 10, b: 40, l: 52 }, showlegend: false,
        xaxis: { title: { text: "epochs of training" }, rangemode: "tozero" },
        yaxis: Object.assign({ automargin: true }, c.range ? { range: c.range } : {}, c.pct ? { tickformat: ".0%", rangemode: "tozero" } : {},
          c.log ? { type: "log" } : {}) });
    }
    const rows = () => [["variant", "model", "epoch", "test_accuracy", "train_loss", "dead_relu", `gamma_below_${state.hgamma}`,
      `banding_${state.hlayer}`, `symmetry_${state.hlayer}`]].concat(hv.flatMap(([r]) => r.history.epoch.map((e, j) => {
      const h = r.history, at = (a) => (a ? a[j] : null);
      return [r.variant, r.model, e, at(h.test_accuracy), at(h.train_loss), at(h.dead_relu), at((h.gamma || {})[state.hgamma]),
        at((h.banding || {})[state.hlayer]), at((h.symmetry || {})[state.hlayer])];
    })));
    CS.figure("history", stem("training_history"), {
      png: () => chartsPNG(CS.$$("[data-chart]", box), `${D.title}: during training (layer ${state.hlayer})`,
        hv.map(([r, i]) => ({ name: r.variant + plateauTag(r), colour: colour(i) }))),
      csv: rows,
      json: () => ({ experiment: D.name, variants: hv.map(([r]) => ({ variant: r.variant, model: r.model, plateau: r.plateau, resumed: r.resumed, history: r.history })) }),
    });
  }
  /** Several Plotly charts as one PNG: two columns, each chart at 900 px wide, a title and the key on top. */
  async function chartsPNG(divs, title, key) {
    const urls = await Promise.all(divs.map((d) => CS.plotPNG(d)));
    const imgs = await Promise.all(urls.map((u) => new Promise((ok) => { const im = new Image(); im.onload = () => ok(im); im.src = u; })));
    const cols = 2, w = Math.max(...imgs.map((i) => i.width)), h = Math.max(...imgs.map((i) => i.height)), head = 150;
    const out = document.createElement("canvas");
    out.width = cols * w;
    out.height = head + Math.ceil(imgs.length / cols) * h;
    const ctx = out.getContext("2d");
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, out.width, out.height);
    ctx.fillStyle = "#101828";
    ctx.font = "600 40px system-ui, sans-serif";
    ctx.fillText(title, 40, 60);
    ctx.font = "28px system-ui, sans-serif";
    let x = 40;
    (key || []).forEach((k) => {
      ctx.fillStyle = k.colour;
      ctx.fillRect(x, 100, 26, 26);
      ctx.fillStyle = "#344054";
      ctx.fillText(k.name, x + 36, 123);
      x += 36 + ctx.measureText(k.name).width + 40;
    });
    imgs.forEach((im, k) => ctx.drawImage(im, (k % cols) * w, head + Math.floor(k / cols) * h));
    return out.toDataURL("image/png");
  }

  // ---- cluster proportions (figure 12) -------------------------------------------------------------
  let clusters = null;
  async function renderClusters() {
    const div = el("plot-clusters"), cbox = el("centroids");
    const layers = state.clayers.split(",").filter(Boolean);
    const pairs = [];
    layers.forEach((l) => V.forEach((r) => { if (r.nmf_layers.includes(l)) pairs.push([r.variant, r.model, l]); }));
    const used = pairs.slice(0, D.max_pairs);
    cbox.innerHTML = "";
    clusters = null;
    if (!used.length) { div.innerHTML = `<div class="loading">choose a layer with an NMF result</div>`; return; }
    const url = `/api/clusters?pairs=${used.map((p) => encodeURIComponent(p[1]) + ":" + encodeURIComponent(p[2])).join(",")}&k=${state.k}`;
    el("clusters-json").href = url;
    try { clusters = await CS.api(url); } catch (e) { CS.showError(div, e); return; }
    const labels = used.map((p) => `${p[0]} · ${p[2]}`);
    await CS.clustersChart(div, cbox, clusters, labels, { height: 380, xaxis: { tickangle: labels.length > 6 ? -30 : 0 } });
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
      await Promise.all([renderHistory(), renderProfiles(), renderClusters()]);
    } catch (e) { CS.toast(e.message); }
    if (mine === seq) document.body.dataset.ready = "1";
  }
  // a URL with a layer or k that does not exist here is normalised in place
  const q = CS.query();
  if ((q.layer && q.layer !== state.layer) || (q.k && q.k !== state.k) || (q.clayers && q.clayers !== state.clayers) ||
      (q.hlayer && q.hlayer !== state.hlayer) || (q.hgamma && q.hgamma !== state.hgamma)) {
    CS.viewURL(state, DEFAULTS, { replace: true });
  }
  render();
})();
