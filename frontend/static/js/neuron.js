/* Neuron page: reduced form, neighbours in the sorted order, raw kernels of the strongest input channels,
 * gamma/beta against the layer's distribution, position in the SVD plots. */
"use strict";
(() => {
  const d = JSON.parse(document.getElementById("neuron-data").textContent);
  const model = d.model, layer = d.layer, i = d.neuron;
  const stem = (s) => `${model}_${layer}_n${i}_${s}`;
  const el = (id) => document.getElementById(id);
  const jobs = [];

  if (d.nmf) {
    const c = el("reduced");
    CS.drawRGB(c, d.nmf.image);
    const nb = el("neighbours");
    nb.innerHTML = "";
    d.nmf.neighbours.forEach((n) => {
      const a = document.createElement("a");
      a.href = CS.urls.neuronPage(model, layer, n.neuron);
      a.title = `neuron ${n.neuron} (#${n.position + 1})`;
      if (n.neuron === i) a.className = "current";
      const cv = document.createElement("canvas");
      CS.drawRGB(cv, n.image);
      a.appendChild(cv);
      a.appendChild(document.createTextNode(String(n.neuron)));
      nb.appendChild(a);
    });
    CS.figure("reduced", stem("reduced"), {
      png: async () => CS.composePNG([c], null, { size: 280, cols: 1 }),
      csv: () => [["row", "col", "r", "g", "b"]].concat(d.nmf.image.flatMap((r, y) => r.map((p, x) => [y, x].concat(p)))),
    });
  }

  if (d.kernels) {
    const K = d.kernels.kernels;
    const rgb = d.row.in_channels === 3 && !(CS.boot.context || {}).feeds_from;  // the first layer sees R, G, B
    const chName = (c) => (rgb ? ["R", "G", "B"][c] + " (" + c + ")" : String(c));
    const vmax = Math.max(...K.flat(2).map(Math.abs)) || 1;
    const box = el("kernel-grid");
    const canvases = [], labels = [];
    K.forEach((k, t) => {
      const div = document.createElement("div");
      div.className = "kernel";
      const cv = document.createElement("canvas");
      CS.drawHeat(cv, k, vmax);
      cv.title = k.map((r) => r.map((v) => v.toPrecision(3)).join("  ")).join("\n");
      div.appendChild(cv);
      div.insertAdjacentHTML("beforeend", `<div>in ${chName(d.kernels.top_channels[t])}</div><small>‖w‖ ${CS.fmt(d.kernels.norms[t], 3)}</small>`);
      box.appendChild(div);
      canvases.push(cv);
      labels.push(`in ${chName(d.kernels.top_channels[t])}`);
    });
    el("kernel-min").textContent = (-vmax).toPrecision(3);
    el("kernel-max").textContent = vmax.toPrecision(3);
    CS.figure("kernels", stem("kernels"), {
      png: async () => CS.composePNG(canvases, labels, { size: 96, cols: 8 }),
      csv: () => [["channel", "norm", "row", "col", "w"]].concat(K.flatMap((k, t) => k.flatMap((r, y) => r.map((v, x) => [d.kernels.top_channels[t], d.kernels.norms[t], y, x, v])))),
    });
  }

  if (d.batchnorm) {
    const b = d.batchnorm;
    const mark = (x, ax) => ({ type: "line", xref: ax, yref: "paper", x0: x, x1: x, y0: 0, y1: 1, line: { color: "#e11d48", width: 2 } });
    jobs.push(CS.plot("plot-gamma", [
      { type: "histogram", x: b.gammas, nbinsx: 40, marker: { color: "#c7d2fe" }, xaxis: "x", yaxis: "y", hovertemplate: "γ %{x}<br>%{y} channels<extra></extra>" },
      { type: "histogram", x: b.betas, nbinsx: 40, marker: { color: "#bbf7d0" }, xaxis: "x2", yaxis: "y2", hovertemplate: "β %{x}<br>%{y} channels<extra></extra>" },
    ], {
      height: 280, showlegend: false, shapes: [mark(b.gamma, "x"), mark(b.beta, "x2")], margin: { l: 46, r: 12, t: 30, b: 44 },
      xaxis: { domain: [0, 0.47], title: { text: `γ (${b.layer})` } }, yaxis: { title: { text: "channels" } },
      xaxis2: { domain: [0.55, 1], title: { text: "β" } }, yaxis2: { anchor: "x2" },
      annotations: [{ xref: "paper", yref: "paper", x: 0, y: 1.12, xanchor: "left", showarrow: false, text: `this channel: γ = <b>${b.gamma.toFixed(4)}</b>, β = <b>${b.beta.toFixed(4)}</b>` }],
    }));
    CS.figure("gamma", stem("gamma_beta"), {
      png: (t) => CS.plotPNG(el("plot-gamma"), t),
      csv: () => [["channel", "gamma", "beta", "this"]].concat(b.gammas.map((g, c) => [c, g, b.betas[c], c === i ? 1 : 0])),
    });
  }

  function scatter(id, pts, hl, title, colour, colourName, pageLayer) {
    const others = pts.map((_, j) => j).filter((j) => j !== hl);
    const traces = [
      { type: "scatter", mode: "markers", x: others.map((j) => pts[j][0]), y: others.map((j) => pts[j][1]), customdata: others,
        marker: colour ? { size: 8, color: others.map((j) => colour[j]), colorscale: "Viridis", showscale: true, colorbar: { title: { text: colourName || "" }, thickness: 10 } } : { size: 8, color: "#a5b4fc" },
        hovertemplate: "neuron %{customdata}<extra></extra>", name: "others" },
      { type: "scatter", mode: "markers+text", x: [pts[hl][0]], y: [pts[hl][1]], text: [`neuron ${hl}`], textposition: "top center",
        marker: { size: 16, color: "#e11d48", symbol: "star", line: { color: "#fff", width: 1.5 } }, hovertemplate: `neuron ${hl} (this)<extra></extra>`, name: "this neuron" },
    ];
    return CS.plot(id, traces, { height: 340, showlegend: false, xaxis: { title: { text: `${title} 0` } }, yaxis: { title: { text: `${title} 1` } } }).then((div) => {
      div.on("plotly_click", (ev) => { const p = ev.points && ev.points[0]; if (p && p.customdata !== undefined) location.href = CS.urls.neuronPage(model, pageLayer, p.customdata); });
      return div;
    });
  }

  if (d.svd) {
    jobs.push(CS.api(CS.urls.result(model, layer, "svd")).then(({ data: s }) => {
      CS.figure("svd", stem("svd"), { png: (t) => CS.plotPNG(el("plot-svd"), t), csv: () => [["neuron", "u0", "u1"]].concat(s.u.map((r, j) => [j, r[0], r[1]])) });
      return scatter("plot-svd", s.u.map((r) => [r[0], r[1] === undefined ? 0 : r[1]]), i, "left singular vector", null, null, layer);
    }).catch((e) => CS.showError("plot-svd", e)));
  }
  d.svd_as_feeder.forEach((f, n) => {
    jobs.push(CS.api(CS.urls.result(model, f.layer, "svd")).then(({ data: s }) => {
      const prop = s.feeder_property || {};
      CS.figure("svdf" + n, stem("svd_feeder_" + f.layer), { png: (t) => CS.plotPNG(el("plot-svdf" + n), t), csv: () => [["neuron", "v0", "v1", prop.name || "property"]].concat(s.v.map((r, j) => [j, r[0], r[1], (prop.values || [])[j]])) });
      return scatter("plot-svdf" + n, s.v.map((r) => [r[0], r[1] === undefined ? 0 : r[1]]), i, "right singular vector", prop.values, prop.name, layer);
    }).catch((e) => CS.showError("plot-svdf" + n, e)));
  });

  if (el("connections-json")) el("connections-json").onclick = () => CS.downloadText(JSON.stringify(d.connections, null, 1), stem("connections") + ".json", "application/json");

  document.addEventListener("keydown", (ev) => {
    if (ev.target.tagName === "INPUT" || ev.target.tagName === "SELECT") return;
    if (ev.key === "ArrowLeft" && el("prev-neuron")) location.href = el("prev-neuron").href;
    if (ev.key === "ArrowRight" && el("next-neuron")) location.href = el("next-neuron").href;
  });
  Promise.allSettled(jobs).then(() => { document.body.dataset.ready = "1"; });
})();
