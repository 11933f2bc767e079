/* Compare: (model, layer) pairs side by side. URL: /compare?pairs=m:l,m:l&k=8&x=depth|index */
"use strict";
(() => {
  const el = (id) => document.getElementById(id);
  const allModels = CS.boot.models || [];
  const L = CS.limits;
  const DEFAULTS = { pairs: "", k: String(L.k_default), x: "depth" };
  let kNote = "";
  function read(q) {
    const s = Object.assign({}, DEFAULTS, q);
    s.k = CS.clampK(s.k, L.k_default);
    kNote = q.k !== undefined && String(q.k) !== s.k ? `k=${String(q.k).slice(0, 20)} is not a cluster count this page offers (${L.k_min} to ${L.k_max}); showing k = ${s.k}.` : "";
    if (!["depth", "index"].includes(s.x)) s.x = "depth";
    return { pairs: s.pairs, k: s.k, x: s.x };
  }
  let state = read(CS.query());
  const pairList = () => (state.pairs ? state.pairs.split(",").filter((p) => p.includes(":")) : []);
  const split = (p) => { const i = p.indexOf(":"); return [p.slice(0, i), p.slice(i + 1)]; };
  const colour = CS.colour;

  function push(changes, replace) {
    state = Object.assign({}, state, changes);
    CS.viewURL(state, DEFAULTS, { replace, keep: ["pairs"] });
    render();
  }
  CS.onPop((q) => { state = read(q); render(); });

  const nmfLayers = async (m) => ((await CS.api(CS.urls.model(m))).analyses.nmf || {}).layers || [];

  async function defaults() {
    const out = [];
    for (const m of allModels.slice(0, 2)) {
      try { const ls = await nmfLayers(m); if (ls.length) out.push(`${m}:${ls[Math.min(1, ls.length - 1)]}`); } catch (e) { /* skip */ }
    }
    return out.join(",");
  }

  // ---- editor ----------------------------------------------------------------------------------
  function renderEditor() {
    const pairs = pairList();
    el("pairs").innerHTML = pairs.length ? pairs.map((p, i) => {
      const [m, l] = split(p);
      return `<div class="pair"><span class="idx" style="background:${colour(i)}">${i + 1}</span><span class="name"><a href="${CS.urls.layerPage(m, l)}">${CS.escapeHTML(m)} · ${CS.escapeHTML(l)}</a></span>` +
        `<button type="button" class="btn btn-small" data-remove="${i}">Remove</button></div>`;
    }).join("") : `<p class="muted">No pairs yet: choose a model and a layer below.</p>`;
    CS.$$("[data-remove]", el("pairs")).forEach((b) => {
      b.onclick = () => push({ pairs: pairs.filter((_, j) => j !== Number(b.dataset.remove)).join(",") });
    });
    el("k-select").value = state.k;
    el("x-select").value = state.x;
  }
  async function setupEditor() {
    const ms = el("add-model"), ls = el("add-layer");
    ms.innerHTML = allModels.map((m) => `<option>${CS.escapeHTML(m)}</option>`).join("");
    const fill = async () => {
      try { ls.innerHTML = (await nmfLayers(ms.value)).map((l) => `<option>${CS.escapeHTML(l)}</option>`).join(""); } catch (e) { ls.innerHTML = ""; }
    };
    ms.onchange = fill;
    await fill();
    el("add-pair").onclick = () => {
      if (!ms.value || !ls.value) return;
      const p = `${ms.value}:${ls.value}`;
      if (!pairList().includes(p)) push({ pairs: pairList().concat([p]).join(",") });
    };
    el("k-select").onchange = (ev) => push({ k: ev.target.value });
    el("x-select").onchange = (ev) => push({ x: ev.target.value });
  }

  // ---- figures ---------------------------------------------------------------------------------
  let nmfs = [], hists = [], clusters = null;
  async function renderGrids(pairs) {
    const box = el("compare-grids");
    box.innerHTML = "";
    const got = await Promise.allSettled(pairs.map(async (p) => { const [m, l] = split(p); return (await CS.api(CS.urls.result(m, l, "nmf"))).data; }));
    nmfs = got.map((g) => (g.status === "fulfilled" ? g.value : null));
    const width = pairs.length > 1 ? Math.max(260, Math.floor((box.clientWidth - 16 * (Math.min(pairs.length, 3) - 1)) / Math.min(pairs.length, 3)) - 24) : box.clientWidth - 24;
    pairs.forEach((p, i) => {
      const [m, l] = split(p);
      const wrap = document.createElement("div");
      wrap.className = "compare-grid";
      if (!nmfs[i]) {
        wrap.innerHTML = `<h4><span class="swatch" style="background:${colour(i)}"></span>${CS.escapeHTML(m)} · ${CS.escapeHTML(l)}</h4><div class="error-text">${CS.escapeHTML(got[i].reason.message.split(". Known")[0])}</div>`;
        box.appendChild(wrap);
        return;
      }
      wrap.innerHTML = `<h4><span class="swatch" style="background:${colour(i)}"></span>${CS.escapeHTML(m)} · ${CS.escapeHTML(l)} <span class="muted">(${nmfs[i].order.length}, banding ${CS.fmt(nmfs[i].banding_index, 2)})</span></h4><div class="grid-wrap"><canvas class="neuron-grid"></canvas></div>`;
      box.appendChild(wrap);
      const canvas = wrap.querySelector("canvas");
      const g = CS.drawGrid(canvas, nmfs[i].images, nmfs[i].order, { cell: "m", width });
      CS.bindGrid(canvas, () => g, (h) => `${CS.escapeHTML(m)} · ${CS.escapeHTML(l)} · neuron <b>${h.neuron}</b>`, (h) => CS.urls.neuronPage(m, l, h.neuron));
    });
    const lp = pairs.filter((_, i) => nmfs[i]), ln = nmfs.filter(Boolean);
    CS.figure("grids", "compare_grids", {
      png: async () => CS.gridsPNG(ln.map((n, i) => ({ title: `${i + 1}. ${lp[i]}`, subtitle: `${n.order.length} neurons · banding index ${CS.fmt(n.banding_index, 3)}`, images: n.images, order: n.order })), { title: "Neuron grids (NMF reduced forms)" }),
      csv: () => [["pair", "position", "neuron", "error"]].concat(lp.flatMap((p, i) => ln[i].order.map((j, q) => [p, q, j, (ln[i].error || [])[j]]))),
      json: () => ({ pairs: lp, nmf: ln.map((n) => ({ order: n.order, banding_index: n.banding_index, kernel: n.kernel, error: n.error })) }),
    });
  }

  /** The cluster JSON link: a download of `url` once the clusters loaded; before that (and when
   *  there are none) no href, so a click downloads nothing (never this page). */
  function clustersLink(url) {
    const a = el("clusters-json");
    if (url) {
      a.href = url;
      a.setAttribute("download", "");
      a.removeAttribute("aria-disabled");
      a.title = "the clusters as JSON (GET " + url + ")";
      a.style.opacity = ""; a.style.cursor = "";
    } else {
      a.removeAttribute("href");
      a.removeAttribute("download");
      a.setAttribute("aria-disabled", "true");
      a.title = "available once the clusters are computed";
      a.style.opacity = ".45"; a.style.cursor = "default";
    }
  }

  async function renderClusters(pairs) {
    const div = el("plot-clusters");
    const seq = renderSeq;
    el("centroids").innerHTML = "";
    const kernels = new Set(nmfs.map((n) => (n.kernel || [n.images[0].length, n.images[0][0].length]).join("x")));
    if (kernels.size > 1) {
      div.innerHTML = `<div class="loading">These layers have different kernel sizes (${[...kernels].join(", ")}); choose layers with the same kernel size to cluster them together.</div>`;
      return;
    }
    const total = nmfs.reduce((a, n) => a + n.order.length, 0);
    if (Number(state.k) > total) { div.innerHTML = `<div class="loading">k = ${state.k} is more than the ${total} neurons chosen.</div>`; return; }
    const url = `/api/clusters?pairs=${pairs.map(encodeURIComponent).join(",")}&k=${state.k}`;
    let got;
    try { got = await CS.api(url); } catch (e) { if (seq === renderSeq) CS.showError(div, e); return; }
    if (seq !== renderSeq) return;  // a newer render owns the figure (and the link) now
    clusters = got;
    clustersLink(url);
    await CS.clustersChart(div, el("centroids"), clusters, pairs.map((p, i) => `${i + 1}. ${p}`), { height: 360 });
  }

  async function renderProfiles(pairs) {
    const models = [...new Set(pairs.map((p) => split(p)[0]))];
    const details = await Promise.all(models.map((m) => CS.api(CS.urls.model(m))));
    const xOf = (p, i) => (state.x === "depth" ? p.depth : i);
    const xTitle = state.x === "depth" ? "relative depth (conv layers)" : "conv layer index";
    const lines = (key, val) => CS.profileLines(details.map((d, j) => ({ name: models[j], colour: colour(j),
      rows: d.profiles[key].filter((p) => val(p) !== null && val(p) !== undefined && (key !== "gamma" || p.depth !== null)) })), xOf, val, 6);
    const click = (div) => { if (!div.dataset.bound) { div.dataset.bound = "1"; div.on("plotly_click", (ev) => { const p = ev.points[0]; location.href = CS.urls.layerPage(models[p.curveNumber], p.customdata); }); } };
    await CS.plot("plot-csymmetry", lines("symmetry", (p) => p.value), { height: 320, xaxis: { title: { text: xTitle } }, yaxis: { range: [0, 1.02], title: { text: "symmetry S" } } }).then(click);
    await CS.plot("plot-cbanding", lines("banding", (p) => p.value), { height: 320, xaxis: { title: { text: xTitle } }, yaxis: { range: [-1.05, 1.05], title: { text: "banding index" } } }).then(click);
    const gt = CS.limits.gamma_compare;  // the threshold drawn: the server's (limits.py GAMMA_COMPARE)
    const gammaLines = lines("gamma", (p) => p.values[gt]);
    if (gammaLines.some((t) => t.x.length)) {
      await CS.plot("plot-cgamma", gammaLines, { height: 320, xaxis: { title: { text: xTitle } }, yaxis: { rangemode: "tozero", tickformat: ".0%", title: { text: `|γ| < ${gt}` } } }).then(click);
    } else {  // an empty axis would look like "no small gammas"; there are no gammas at all
      const div = el("plot-cgamma");
      if (div.dataset.rendered) { Plotly.purge(div); delete div.dataset.rendered; }
      div.innerHTML = `<div class="empty muted" id="cgamma-none">No BatchNorm layer in ${models.length > 1 ? "these models" : "this model"}: no γ to compare.</div>`;
    }
    const rowsOf = (key, val) => [["model", "layer", "x", key]].concat(details.flatMap((d, j) => d.profiles[key].map((p, i) => [models[j], p.layer, xOf(p, i), val(p)])));
    CS.figure("csymmetry", "compare_symmetry", { png: () => CS.plotPNG(el("plot-csymmetry")), csv: () => rowsOf("symmetry", (p) => p.value), json: () => details.map((d) => ({ model: d.name, symmetry: d.profiles.symmetry })) });
    CS.figure("cbanding", "compare_banding", { png: () => CS.plotPNG(el("plot-cbanding")), csv: () => rowsOf("banding", (p) => p.value), json: () => details.map((d) => ({ model: d.name, banding: d.profiles.banding })) });
    CS.figure("cgamma", "compare_small_gamma", { png: () => CS.plotPNG(el("plot-cgamma")), csv: () => rowsOf("gamma", (p) => p.values[CS.limits.gamma_compare]), json: () => details.map((d) => ({ model: d.name, gamma: d.profiles.gamma })) });
  }

  async function renderHistograms(pairs) {
    hists = await Promise.all(pairs.map(async (p) => { const [m, l] = split(p); return (await CS.api(CS.urls.result(m, l, "histogram"))).data; }));
    const htraces = hists.map((h, i) => CS.histTrace(h.edges, h.counts, pairs[i], { colour: colour(i), width: 1.8 },
      { hovertemplate: `${CS.escapeHTML(pairs[i])}<br>w ≈ %{x:.3g}: %{y:.2%}<extra></extra>` }));
    await CS.plot("plot-chistogram", htraces, { height: 320, xaxis: { title: { text: "weight w (shared bins)" }, range: CS.occupiedRange(htraces) }, yaxis: { tickformat: ".1%", title: { text: "share of weights" } } });
    CS.figure("chistogram", "compare_histograms", {
      png: () => CS.plotPNG(el("plot-chistogram")),
      csv: () => CS.histCSV(hists[0].edges, pairs, hists.map((h) => h.counts)),
      json: () => pairs.map((p, i) => ({ pair: p, histogram: hists[i] })),
    });
  }

  let renderSeq = 0;
  async function render() {
    const seq = ++renderSeq;
    document.body.dataset.ready = "";
    renderEditor();
    clusters = null;
    clustersLink(null);  // until this render's clusters have loaded
    const pairs = pairList();
    if (!pairs.length) {
      ["plot-clusters", "plot-csymmetry", "plot-cbanding", "plot-chistogram", "plot-cgamma"].forEach((id) => { el(id).innerHTML = `<div class="loading">add a (model, layer) pair</div>`; });
      el("compare-grids").innerHTML = "";
      document.body.dataset.ready = "1";
      return;
    }
    try {
      await renderGrids(pairs);
      if (seq !== renderSeq) return;
      const live = pairs.filter((_, i) => nmfs[i]);  // a pair whose data did not load is said in its cell
      nmfs = nmfs.filter(Boolean);
      if (live.length) await Promise.all([renderClusters(live), renderProfiles(live), renderHistograms(live)]);
    } catch (e) { CS.toast(e.message); }
    CS.figure("clusters", "compare_clusters", {
      png: () => CS.plotPNG(el("plot-clusters")),
      csv: () => clusters ? [["pair"].concat(Array.from({ length: clusters.k }, (_, c) => `cluster_${c + 1}`))].concat(clusters.pairs.map((p, i) => [p.join(":")].concat(clusters.proportions[i]))) : [],
    });
    if (seq === renderSeq) document.body.dataset.ready = "1";
  }

  /** A shared link whose pairs partly no longer exist: show the ones that do, say which are gone. */
  function sayGone() {
    const gone = CS.boot.pairs_gone || [];
    const box = el("pairs-gone");
    const notes = [];
    if (gone.length) {
      const ok = CS.boot.pairs_ok || [];
      notes.push(`<b>Part of this link is gone.</b> ${ok.length ? `Showing the ${ok.length === 1 ? "pair that still exists" : ok.length + " pairs that still exist"}; left out:` : "None of its pairs exist here now:"}<ul>` +
        gone.map((g) => `<li><code>${CS.escapeHTML(g.pair)}</code>: ${CS.escapeHTML(g.reason)}</li>`).join("") + "</ul>");
      state.pairs = ok.join(",");
    }
    if (kNote) notes.push(CS.escapeHTML(kNote));
    box.innerHTML = notes.join("<br>");
    box.hidden = !notes.length;
    return gone.length > 0 || !!kNote;
  }

  (async () => {
    await setupEditor();
    const fixed = sayGone();
    if (fixed) push({}, true);  // the URL now names only what is shown
    else if (!state.pairs && !CS.boot.pairs_given && allModels.length) {
      state.pairs = await defaults();
      push({}, true);
    } else render();
  })();
})();
