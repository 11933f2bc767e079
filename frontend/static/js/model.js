/* Model page: depth profiles (symmetry, banding, small |gamma|, sparsity) and the layer table. */
"use strict";
(() => {
  const model = CS.boot.model;
  const stem = (s) => `${model}_${s}`;
  const openLayer = (ev) => {
    const p = ev.points && ev.points[0];
    if (p && p.customdata) location.href = CS.urls.layerPage(model, Array.isArray(p.customdata) ? p.customdata[0] : p.customdata);
  };
  // at most ~26 tick labels (52 BatchNorm layers of MobileNetV2 would overlap); every point keeps its hover
  const labelAxis = (n, labels) => {
    const step = Math.max(1, Math.ceil(n / 26));
    const ax = { type: "category", tickangle: n > 14 ? -55 : 0, tickfont: { size: n > 40 ? 9 : 10.5, family: "ui-monospace, monospace" } };
    if (labels && step > 1) { ax.tickvals = labels.filter((_, i) => i % step === 0); ax.ticktext = ax.tickvals; }
    return ax;
  };
  function empty(id, msg) { document.getElementById(id).innerHTML = `<div class="loading">${msg}</div>`; }
  const recompute = document.getElementById("recompute");
  if (recompute) recompute.onclick = async () => {  // POST /api/models/{model}/precompute, then the job page
    recompute.disabled = true;
    const r = await fetch(`${CS.urls.model(model)}/precompute`, { method: "POST" });
    const body = await r.json().catch(() => ({}));
    if (r.status === 202 && body.page) { location.href = body.page; return; }
    document.getElementById("recompute-note").textContent = body.detail || `could not queue it (${r.status})`;
    recompute.disabled = false;
  };

  // ---- the layer table: sorts by any column, filters by text and type; both in the URL (?lq=&ltype=&lsort=)
  const table = document.getElementById("layer-table");
  const lq = document.getElementById("layer-filter"), lt = document.getElementById("layer-type");
  const q0 = CS.query();
  lq.value = q0.lq || "";
  lt.value = ["conv", "batchnorm", "linear"].includes(q0.ltype) ? q0.ltype : "";
  let lsort = q0.lsort || "";
  function filterLayers() {
    const words = lq.value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    Array.from(table.tBodies[0].rows).forEach((r) => {
      r.hidden = !((!lt.value || r.dataset.type === lt.value) && words.every((w) => r.dataset.search.includes(w)));
      if (!r.hidden) shown++;
    });
    document.getElementById("layer-count").textContent = shown === table.tBodies[0].rows.length ? String(shown) : `${shown} of ${table.tBodies[0].rows.length}`;
    document.getElementById("layer-none").hidden = shown > 0;
  }
  function saveTable() { CS.setQuery(Object.assign(CS.query(), { lq: lq.value.trim(), ltype: lt.value, lsort }), { replace: true }); }
  const sorter = CS.sortableTable(table, (col, dir) => { lsort = `${col}${dir === "ascending" ? "a" : "d"}`; saveTable(); });
  const ms = /^(\d+)([ad])$/.exec(lsort);
  if (ms && Number(ms[1]) < table.tHead.rows[0].cells.length) sorter.sort(Number(ms[1]), ms[2] === "a" ? "ascending" : "descending");
  lq.addEventListener("input", CS.debounce(() => { filterLayers(); saveTable(); }, 120));
  lt.onchange = () => { filterLayers(); saveTable(); };
  filterLayers();

  CS.api(CS.urls.model(model)).then(async (m) => {
    const P = m.profiles;
    // symmetry profile: bars, strided layers with '*', uneven padding in orange
    if (P.symmetry.length) {
      const labels = P.symmetry.map((p) => p.label);
      const mk = (rows, name, color) => ({
        type: "bar", name, x: rows.map((p) => p.label), y: rows.map((p) => p.value), marker: { color },
        customdata: rows.map((p) => [p.layer, p.strided ? "yes" : "no", p.uneven ? "uneven (" + JSON.stringify(p.uneven_detail) + ")" : "even", (p.kernel || []).join("×")]),
        hovertemplate: "<b>%{customdata[0]}</b><br>S = %{y:.3f}<br>kernel %{customdata[3]}, strided: %{customdata[1]}<br>padding: %{customdata[2]}<extra></extra>",
      });
      const even = P.symmetry.filter((p) => !p.uneven), uneven = P.symmetry.filter((p) => p.uneven);
      const traces = [mk(even, "even padding", "#6366f1")];
      if (uneven.length) traces.push(mk(uneven, "uneven padding", "#f97316"));
      await CS.plot("plot-symmetry", traces, {
        barmode: "overlay", height: 340, showlegend: uneven.length > 0,
        xaxis: Object.assign(labelAxis(labels.length, labels), { categoryorder: "array", categoryarray: labels }),
        yaxis: { range: [0, 1.02], title: { text: "symmetry S" } },
      });
      document.getElementById("plot-symmetry").on("plotly_click", openLayer);
    } else empty("plot-symmetry", "no symmetry result (no conv layer with a kernel larger than 1×1)");
    CS.figure("symmetry", stem("symmetry_profile"), {
      png: (t) => CS.plotPNG(document.getElementById("plot-symmetry"), t),
      csv: () => [["layer", "symmetry", "strided", "uneven_padding", "relative_depth"]].concat(P.symmetry.map((p) => [p.layer, p.value, p.strided, p.uneven, p.depth])),
      json: () => ({ model, figure: "symmetry_profile", human_names: m.human_names, rows: P.symmetry }),
    });

    if (P.banding.length) {
      const labels = P.banding.map((p) => p.label);
      await CS.plot("plot-banding", [{
        type: "scatter", mode: "lines+markers", x: labels, y: P.banding.map((p) => p.value), customdata: P.banding.map((p) => [p.layer, p.nmf_error]),
        line: { color: "#94a3b8", width: 1.5 }, marker: { size: 9, color: P.banding.map((p) => p.value), colorscale: CS.rdbu, cmin: -1, cmax: 1, line: { color: "#334155", width: 0.5 } },
        hovertemplate: "<b>%{customdata[0]}</b><br>banding index %{y:+.3f}<br>NMF error %{customdata[1]:.3f}<extra></extra>",
      }], {
        height: 340, showlegend: false, xaxis: Object.assign(labelAxis(labels.length, labels), { categoryorder: "array", categoryarray: labels }),
        yaxis: { range: [-1.05, 1.05], title: { text: "banding index" }, zeroline: true },
        annotations: [{ xref: "paper", yref: "y", x: 1, y: 0.95, text: "horizontal bands", showarrow: false, xanchor: "right", font: { size: 10.5, color: "#b2182b" } },
          { xref: "paper", yref: "y", x: 1, y: -0.95, text: "vertical bands", showarrow: false, xanchor: "right", font: { size: 10.5, color: "#2166ac" } }],
      });
      document.getElementById("plot-banding").on("plotly_click", openLayer);
    } else empty("plot-banding", "no NMF result");
    CS.figure("banding", stem("banding_profile"), {
      png: (t) => CS.plotPNG(document.getElementById("plot-banding"), t),
      csv: () => [["layer", "banding_index", "nmf_error", "relative_depth"]].concat(P.banding.map((p) => [p.layer, p.value, p.nmf_error, p.depth])),
      json: () => ({ model, figure: "banding_profile", human_names: m.human_names, rows: P.banding }),
    });

    if (P.gamma.length) {
      const labels = P.gamma.map((p) => p.layer);
      const ticks = P.gamma.map((p) => p.follows ? p.follows : p.layer);
      const colors = ["#e11d48", "#f97316", "#eab308"];  // strictest threshold first (limits.gamma_thresholds' order)
      await CS.plot("plot-gamma", CS.limits.gamma_thresholds.map((t, j) => ({
        type: "scatter", mode: "lines+markers", name: `|γ| < ${t}`, x: labels, y: P.gamma.map((p) => p.values[t]),
        customdata: P.gamma.map((p) => [p.layer, p.follows || "—"]), line: { color: colors[j % colors.length], width: 2 }, marker: { size: 6 },
        hovertemplate: `<b>%{customdata[0]}</b> (after %{customdata[1]})<br>|γ| < ${t}: %{y:.1%}<extra></extra>`,
      })), {
        height: 340, xaxis: (() => { const step = Math.max(1, Math.ceil(labels.length / 26)); return Object.assign(labelAxis(labels.length), { tickvals: labels.filter((_, i) => i % step === 0), ticktext: ticks.filter((_, i) => i % step === 0) }); })(),
        yaxis: { rangemode: "tozero", tickformat: ".0%", title: { text: "share of channels" } },
      });
      document.getElementById("plot-gamma").on("plotly_click", openLayer);
    } else empty("plot-gamma", "no BatchNorm layers");
    CS.figure("gamma", stem("small_gamma"), {
      png: (t) => CS.plotPNG(document.getElementById("plot-gamma"), t),
      csv: () => [["batchnorm", "follows", ...CS.limits.gamma_thresholds.map((t) => `below_${t}`)]].concat(P.gamma.map((p) => [p.layer, p.follows, ...CS.limits.gamma_thresholds.map((t) => p.values[t])])),
      json: () => ({ model, figure: "small_gamma", thresholds: CS.limits.gamma_thresholds.map(Number), rows: P.gamma }),
    });

    if (P.sparsity.length) {
      const labels = P.sparsity.map((p) => p.label);
      await CS.plot("plot-sparsity", [{
        type: "bar", x: labels, y: P.sparsity.map((p) => p.value), customdata: P.sparsity.map((p) => [p.layer, p.type, p.kurtosis]),
        marker: { color: P.sparsity.map((p) => (p.type === "linear" ? "#10b981" : "#0ea5e9")) },
        hovertemplate: "<b>%{customdata[0]}</b> (%{customdata[1]})<br>near zero: %{y:.2%}<br>kurtosis %{customdata[2]:.2f}<extra></extra>",
      }], {
        height: 340, showlegend: false, xaxis: Object.assign(labelAxis(labels.length, labels), { categoryorder: "array", categoryarray: labels }),
        yaxis: { rangemode: "tozero", tickformat: ".1%", title: { text: "share near zero" } },
      });
      document.getElementById("plot-sparsity").on("plotly_click", openLayer);
    } else empty("plot-sparsity", "no histogram result");
    CS.figure("sparsity", stem("sparsity"), {
      png: (t) => CS.plotPNG(document.getElementById("plot-sparsity"), t),
      csv: () => [["layer", "type", "near_zero", "kurtosis"]].concat(P.sparsity.map((p) => [p.layer, p.type, p.value, p.kurtosis])),
      json: () => ({ model, figure: "sparsity", rule: "share of |w| below 1 % of the layer's largest |w|", rows: P.sparsity }),
    });

    const cols = ["index", "name", "type", "class", "weight_shape", "kernel", "stride", "padding", "groups", "input_size", "output_size", "params", "uneven_padding", "follows", "feeds_from"];
    document.getElementById("layers-csv").onclick = () => CS.downloadText(CS.csv([cols.concat(["symmetry", "banding_index", "sparsity"])].concat(
      m.inventory.map((r) => cols.map((c) => (Array.isArray(r[c]) ? r[c].join("x") : r[c])).concat([
        (m.scalars[r.name] || {}).symmetry, (m.scalars[r.name] || {}).banding_index, (m.scalars[r.name] || {}).sparsity])))), stem("layers") + ".csv", "text/csv");
    document.body.dataset.ready = "1";
  }).catch((e) => { ["plot-symmetry", "plot-banding", "plot-gamma", "plot-sparsity"].forEach((id) => CS.showError(id, e)); });
})();
