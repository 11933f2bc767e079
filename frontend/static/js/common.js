/* convscope: helpers shared by every page (no framework, no CDN). */
"use strict";

const CS = (() => {
  const boot = JSON.parse(document.getElementById("boot").textContent || "{}");
  // the server's limits (precompute/declarations/limits.py: k range, pair count, gamma thresholds), not copies
  const limitsEl = document.getElementById("limits");
  const limits = JSON.parse((limitsEl && limitsEl.textContent) || "{}");
  const CS_CONTEXT = { model: boot.model, layer: boot.layer, human: (boot.context || {}).human };
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const enc = encodeURIComponent;

  // ---- API ---------------------------------------------------------------------------------
  const inflight = new Map();
  function api(url) {
    if (!inflight.has(url)) {
      inflight.set(url, fetch(url, { headers: { Accept: "application/json" } }).then(async (r) => {
        if (!r.ok) {
          let msg = r.status + " " + r.statusText;
          try { msg = (await r.json()).detail || msg; } catch (e) { /* not JSON */ }
          inflight.delete(url);
          throw new Error(msg);
        }
        return r.json();
      }));
    }
    return inflight.get(url);
  }
  const urls = {
    model: (m) => `/api/models/${enc(m)}`,
    layer: (m, l) => `/api/models/${enc(m)}/layers/${enc(l)}`,
    result: (m, l, a) => `/api/models/${enc(m)}/layers/${enc(l)}/${enc(a)}`,
    neuron: (m, l, i) => `/api/models/${enc(m)}/layers/${enc(l)}/neurons/${i}`,
    modelPage: (m) => `/models/${enc(m)}`,
    layerPage: (m, l) => `/models/${enc(m)}/layers/${enc(l)}`,
    neuronPage: (m, l, i) => `/models/${enc(m)}/layers/${enc(l)}/neurons/${i}`,
  };

  // ---- toast, copy link --------------------------------------------------------------------
  let toastTimer = null;
  function toast(msg) {
    const t = $("#toast");
    if (!t) return;
    t.textContent = msg;
    t.classList.add("show");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => t.classList.remove("show"), 1800);
  }
  async function copyLink() {
    const href = location.href;
    document.body.dataset.copiedUrl = href;
    try {
      await navigator.clipboard.writeText(href);
    } catch (e) {
      const ta = document.createElement("textarea");
      ta.value = href;
      ta.style.position = "fixed";
      ta.style.opacity = "0";
      document.body.appendChild(ta);
      ta.select();
      try { document.execCommand("copy"); } catch (e2) { /* nothing more to try */ }
      ta.remove();
    }
    toast("Link to this view copied");
  }

  // ---- URL state ---------------------------------------------------------------------------
  function query() {
    const out = {};
    new URLSearchParams(location.search).forEach((v, k) => { out[k] = v; });
    return out;
  }
  /** Put `params` in the query string (empty values dropped); push a history entry unless replace. */
  function setQuery(params, opts) {
    const sp = new URLSearchParams();
    Object.keys(params).forEach((k) => {
      const v = params[k];
      if (v !== undefined && v !== null && v !== "" && v !== false) sp.set(k, v === true ? "1" : String(v));
    });
    const qs = sp.toString().replace(/%2C/g, ",").replace(/%3A/g, ":");
    const url = location.pathname + (qs ? "?" + qs : "") + location.hash;
    if (url === location.pathname + location.search + location.hash) return false;
    if (opts && opts.replace) history.replaceState(params, "", url);
    else history.pushState(params, "", url);
    return true;
  }
  function onPop(fn) { window.addEventListener("popstate", () => fn(query())); }
  /** Put a page's view `state` in the query string: the values that differ from `defaults` (and the keys in
   *  `opts.keep`, always); a history entry unless `opts.replace`. Back/forward: `onPop`. */
  function viewURL(state, defaults, opts) {
    const o = opts || {}, keep = o.keep || [];
    const q = {};
    Object.keys(state).forEach((k) => { if (state[k] !== defaults[k] || keep.includes(k)) q[k] = state[k]; });
    return setQuery(q, { replace: !!o.replace });
  }
  /** A cluster count from a URL as the string the k selects use: clamped to the server's k range
   *  (limits.k_min..k_max), `fallback` when it is not a number. */
  function clampK(value, fallback) {
    const k = parseInt(value, 10);
    return String(isNaN(k) ? fallback : Math.max(limits.k_min, Math.min(limits.k_max, k)));
  }

  // ---- downloads and figure exports ---------------------------------------------------------
  function safe(s) { return String(s).replace(/[^A-Za-z0-9._-]+/g, "_"); }
  function download(href, filename) {
    const a = document.createElement("a");
    a.href = href;
    a.download = filename;
    document.body.appendChild(a);
    a.click();
    a.remove();
  }
  function downloadText(text, filename, type) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    download(url, filename);
    setTimeout(() => URL.revokeObjectURL(url), 4000);
  }
  function csv(rows) {
    return rows.map((r) => r.map((v) => {
      if (v === null || v === undefined) return "";
      const s = typeof v === "number" ? String(v) : String(v);
      return /[",\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
    }).join(",")).join("\n") + "\n";
  }
  /** The Plotly figure as a PNG: at least 900 px wide (a phone's 360 px plot is redrawn wider), scale 2,
   *  with `title` on top; the figure's own traces, axes and keys (what the user sees, not a copy). */
  function plotPNG(div, title) {
    const width = Math.max(div.clientWidth || 0, 900), height = Math.max(div.clientHeight || 0, 380) + (title ? 44 : 0);
    const lay = Object.assign({}, div.layout, { width, height, paper_bgcolor: "#ffffff" });
    if (title) {
      const m = Object.assign({}, div.layout.margin || {});
      m.t = (m.t || 12) + 44;
      lay.margin = m;
      lay.title = { text: escapeHTML(title), x: 0.01, xanchor: "left", y: 0.985, yanchor: "top", font: { size: 15, color: "#101828" } };
    }
    return Plotly.toImage({ data: div.data, layout: lay }, { format: "png", scale: 2, width, height });
  }
  /** The title an export carries: the figure's heading and what it shows (model, layer). */
  function figureTitle(root, name) {
    const h = root.querySelector(".figure-head h3");
    const what = (CS_CONTEXT.model ? CS_CONTEXT.model + (CS_CONTEXT.layer ? " · " + CS_CONTEXT.layer + (CS_CONTEXT.human ? " (" + CS_CONTEXT.human + ")" : "") : "") : "");
    return [h ? h.textContent.trim() : name, what].filter(Boolean).join(" — ");
  }
  /** Wire the PNG / CSV / JSON buttons of figure `#fig-<id>`. handlers: {png(): Promise<dataURL>,
   *  csv(): rows, json(): object}; `name` is the file stem. A JSON <a> keeps its API href. */
  function figure(id, name, handlers) {
    const root = document.getElementById("fig-" + id);
    if (!root) return;
    root.dataset.ready = "1";
    $$("[data-export]", root).forEach((el) => {
      const kind = el.dataset.export;
      if (kind === "json" && el.tagName === "A" && !handlers.json) {
        el.setAttribute("download", safe(name) + ".json");
        return;
      }
      el.onclick = async (ev) => {
        ev.preventDefault();
        try {
          if (kind === "png") download(await handlers.png(figureTitle(root, name)), safe(name) + ".png");
          else if (kind === "csv") downloadText(csv(handlers.csv()), safe(name) + ".csv", "text/csv");
          else if (kind === "json") downloadText(JSON.stringify(handlers.json(), null, 1), safe(name) + ".json", "application/json");
        } catch (e) { toast("Export failed: " + e.message); }
      };
    });
  }
  function showError(container, err) {
    const el = typeof container === "string" ? document.getElementById(container) : container;
    if (el) el.innerHTML = `<div class="error-text">${escapeHTML(err.message || String(err))}</div>`;
  }
  function escapeHTML(s) {
    return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }

  // ---- Plotly ------------------------------------------------------------------------------
  const palette = ["#4f46e5", "#f97316", "#10b981", "#e11d48", "#0ea5e9", "#a855f7", "#eab308", "#14b8a6",
    "#f43f5e", "#64748b", "#84cc16", "#ec4899", "#6366f1", "#fb923c", "#22c55e", "#06b6d4", "#8b5cf6", "#facc15", "#475569"];
  const axis = { gridcolor: "#eef0f4", zerolinecolor: "#d0d5dd", linecolor: "#d0d5dd", tickfont: { size: 11 }, automargin: true };
  function layout(extra) {
    const base = {
      font: { family: getComputedStyle(document.body).fontFamily, size: 12, color: "#344054" },
      margin: { l: 56, r: 18, t: 12, b: 48 }, paper_bgcolor: "#ffffff", plot_bgcolor: "#ffffff",
      hoverlabel: { bgcolor: "#0f172a", bordercolor: "#0f172a", font: { color: "#f8fafc", size: 12 } },
      colorway: palette, legend: { orientation: "h", y: 1.12, x: 0, font: { size: 11.5 } },
      xaxis: Object.assign({}, axis), yaxis: Object.assign({}, axis),
    };
    const out = Object.assign(base, extra || {});
    Object.keys(out).forEach((k) => {
      if (/^[xy]axis\d*$/.test(k)) out[k] = Object.assign({}, axis, out[k]);
    });
    return out;
  }
  /** the i-th colour of the palette (wrapping around) */
  const colour = (i) => palette[i % palette.length];
  /** the diverging scale of the canvases (blue negative, white zero, red positive) for Plotly */
  const rdbu = [[0, "#2166ac"], [0.25, "#92c5de"], [0.5, "#f7f7f7"], [0.75, "#f4a582"], [1, "#b2182b"]];
  // on a phone the toolbar would sit on the chart's title: no toolbar there (the PNG button exports)
  const narrow = window.matchMedia && window.matchMedia("(max-width: 700px)").matches;
  const config = { displaylogo: false, responsive: true, displayModeBar: narrow ? false : "hover",
    modeBarButtonsToRemove: ["lasso2d", "select2d", "toImage"] };
  // Plotly (4.8 MB) is loaded on demand, after `gate` (the layer page draws its neuron grid first).
  let plotlyPromise = null, gate = Promise.resolve();
  function plotly() {
    if (window.Plotly) return Promise.resolve(window.Plotly);
    if (!plotlyPromise) {
      plotlyPromise = gate.catch(() => null).then(() => new Promise((resolve, reject) => {
        const s = document.createElement("script");
        // the versioned URL (long-lived caching) from the page head, else the plain one
        const meta = document.querySelector('meta[name="convscope-plotly"]');
        s.src = (meta && meta.content) || "/vendor/plotly.min.js";
        s.onload = () => resolve(window.Plotly);
        s.onerror = () => reject(new Error("could not load " + s.src));
        document.head.appendChild(s);
      }));
    }
    return plotlyPromise;
  }
  function plotAfter(promise) { gate = promise; }
  async function plot(id, traces, lay) {
    const div = typeof id === "string" ? document.getElementById(id) : id;
    await plotly();
    div.classList.add("plot");
    const l = div.querySelector(".loading");
    if (l) l.remove();
    await Plotly.react(div, traces, layout(lay), config);
    div.dataset.rendered = "1";
    return div;
  }

  // ---- charts more than one page draws ------------------------------------------------------------
  /** Depth profiles, one line per series: `series` [{name, rows: profile points ({layer, value, ...}), colour}],
   *  `x(point, i)` and `y(point)` the coordinates. The layer is each point's customdata (a click opens it). */
  function profileLines(series, x, y, markerSize) {
    return series.map((s) => ({ type: "scatter", mode: "lines+markers", name: s.name, x: s.rows.map(x), y: s.rows.map(y),
      customdata: s.rows.map((p) => p.layer), line: { color: s.colour, width: 2 }, marker: { size: markerSize },
      hovertemplate: `${escapeHTML(s.name)}<br>%{customdata}: %{y:.3f}<extra></extra>` }));
  }
  /** A weight histogram as a step line: bin centres of `edges` (N + 1) against each bin's share of all the
   *  `counts` (N). `style`: {colour, width} of the line; `extra`: more trace properties (hovertemplate, fill). */
  function histTrace(edges, counts, name, style, extra) {
    const total = counts.reduce((a, b) => a + b, 0) || 1;
    return Object.assign({ type: "scatter", mode: "lines", name, x: counts.map((_, i) => (edges[i] + edges[i + 1]) / 2),
      y: counts.map((c) => c / total), line: { shape: "hvh", color: style.colour, width: style.width } }, extra || {});
  }
  /** CSV rows of histograms over the same bins: bin_left, bin_right, then the counts of each of `names`. */
  function histCSV(edges, names, counts) {
    return [["bin_left", "bin_right"].concat(names)].concat(edges.slice(0, -1).map((e, j) => [e, edges[j + 1]].concat(counts.map((c) => c[j]))));
  }
  /** The clusters figure (the weight-banding article's figure 12): for each pair (its label in `labels`) a
   *  stacked bar of the share of its neurons in each of the k clusters of `clusters` (GET /api/clusters),
   *  and each cluster's centroid image in `cbox`. `lay`: the chart's height, and x-axis settings to add. */
  async function clustersChart(div, cbox, clusters, labels, lay) {
    await plot(div, Array.from({ length: clusters.k }, (_, c) => ({
      type: "bar", name: `cluster ${c + 1}`, x: labels, y: clusters.proportions.map((row) => row[c]), marker: { color: colour(c), line: { color: "#fff", width: 0.6 } },
      hovertemplate: `%{x}<br>cluster ${c + 1}: %{y:.1%}<extra></extra>`,
    })), { barmode: "stack", height: lay.height, yaxis: { tickformat: ".0%", range: [0, 1], title: { text: "share of neurons" } },
      xaxis: Object.assign({ type: "category", tickfont: { size: 10.5 } }, lay.xaxis || {}), legend: { orientation: "v", x: 1.02, y: 1 } });
    clusters.centroids.forEach((img, c) => {
      const d = document.createElement("div");
      const cv = document.createElement("canvas");
      drawRGB(cv, img);
      cv.style.borderColor = colour(c);
      d.appendChild(cv);
      d.appendChild(document.createTextNode(`${c + 1} · ${clusters.sizes[c]}`));
      cbox.appendChild(d);
    });
  }

  // ---- canvases: neuron images, heatmaps ---------------------------------------------------------
  const GRID_BG = [11, 16, 32];
  const CELL_TARGET = { s: 20, m: 32, l: 52 };
  /** Draw every neuron's reduced form (images[N][kh][kw][3] in [0,1]) into ONE canvas, in `order`.
   *  Returns {cols, cell, gap, scale, hit(x, y) -> {neuron, position} | null}. */
  function drawGrid(canvas, images, order, opts) {
    opts = opts || {};
    const n = order.length;
    const kh = images[0].length, kw = images[0][0].length;
    const scale = Math.max(1, Math.round((CELL_TARGET[opts.cell || "m"] || 32) / Math.max(kh, kw)));
    const cw = kw * scale, ch = kh * scale, gap = opts.gap == null ? 2 : opts.gap;
    const avail = Math.max(cw, (opts.width || canvas.parentElement.clientWidth - 20));
    const cols = Math.max(1, Math.min(n, Math.floor((avail + gap) / (cw + gap))));
    const rows = Math.ceil(n / cols);
    const W = cols * (cw + gap) - gap, H = rows * (ch + gap) - gap;
    canvas.width = W;
    canvas.height = H;
    canvas.style.width = W + "px";
    canvas.style.height = H + "px";
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(W, H);
    const px = img.data;
    for (let i = 0; i < px.length; i += 4) { px[i] = GRID_BG[0]; px[i + 1] = GRID_BG[1]; px[i + 2] = GRID_BG[2]; px[i + 3] = 255; }
    for (let p = 0; p < n; p++) {
      const im = images[order[p]];
      const x0 = (p % cols) * (cw + gap), y0 = Math.floor(p / cols) * (ch + gap);
      for (let y = 0; y < kh; y++) {
        const rowv = im[y];
        for (let x = 0; x < kw; x++) {
          const c = rowv[x];
          const r = Math.round(255 * c[0]), g = Math.round(255 * c[1]), b = Math.round(255 * c[2]);
          for (let dy = 0; dy < scale; dy++) {
            let o = ((y0 + y * scale + dy) * W + x0 + x * scale) * 4;
            for (let dx = 0; dx < scale; dx++, o += 4) { px[o] = r; px[o + 1] = g; px[o + 2] = b; }
          }
        }
      }
    }
    ctx.putImageData(img, 0, 0);
    canvas.dataset.count = String(n);
    canvas.dataset.cols = String(cols);
    canvas.dataset.cell = String(cw);
    canvas.dataset.gap = String(gap);
    const hit = (x, y) => {
      const sx = canvas.width / canvas.clientWidth, sy = canvas.height / canvas.clientHeight;
      x *= sx; y *= sy;
      const c = Math.floor(x / (cw + gap)), r = Math.floor(y / (ch + gap));
      if (c < 0 || c >= cols || x - c * (cw + gap) >= cw || y - r * (ch + gap) >= ch) return null;
      const p = r * cols + c;
      return p >= 0 && p < n ? { neuron: order[p], position: p } : null;
    };
    return { cols, cell: cw, cellH: ch, gap, scale, hit, order };
  }
  /** Hover tooltip and click navigation for a grid drawn by drawGrid; keyboard access: the canvas is
   *  focusable, arrow keys (and Home/End, PageUp/PageDown) move a cursor over the cells in the drawn
   *  order, Enter opens the neuron under it; the cursor's neuron is announced (aria-live). */
  function bindGrid(canvas, getGrid, describe, href) {
    const tip = $("#tooltip");
    canvas.tabIndex = 0;
    canvas.setAttribute("role", "application");
    canvas.setAttribute("aria-roledescription", "neuron grid");
    if (!canvas.getAttribute("aria-label")) canvas.setAttribute("aria-label", "neuron grid: arrow keys move between neurons, Enter opens one");
    const host = canvas.parentElement;
    host.classList.add("grid-host");
    const cursor = document.createElement("div");
    cursor.className = "grid-cursor";
    cursor.hidden = true;
    host.appendChild(cursor);
    const live = document.createElement("div");
    live.className = "sr-only";
    live.setAttribute("aria-live", "polite");
    host.appendChild(live);
    let at = -1;
    function show(p) {
      const g = getGrid();
      if (!g) return;
      const n = Number(canvas.dataset.count);
      at = Math.max(0, Math.min(n - 1, p));
      const sx = canvas.clientWidth / canvas.width, sy = canvas.clientHeight / canvas.height;
      const x = (at % g.cols) * (g.cell + g.gap) * sx, y = Math.floor(at / g.cols) * (g.cellH + g.gap) * sy;
      cursor.style.left = canvas.offsetLeft + x - 2 + "px";
      cursor.style.top = canvas.offsetTop + y - 2 + "px";
      cursor.style.width = g.cell * sx + 4 + "px";
      cursor.style.height = g.cellH * sy + 4 + "px";
      cursor.hidden = false;
      canvas.dataset.cursor = String(at);
      const h = { neuron: g.order[at], position: at };
      canvas.dataset.cursorNeuron = String(h.neuron);
      const text = describe(h);
      live.innerHTML = text;
      const box = cursor.getBoundingClientRect();
      tip.innerHTML = text;
      tip.hidden = false;
      tip.style.left = Math.min(box.right + 8, window.innerWidth - tip.offsetWidth - 8) + "px";
      tip.style.top = box.top + "px";
      // keep the cursor in view inside a scrolled grid
      const top = canvas.offsetTop + y, bottom = top + g.cellH * sy;
      if (top < host.scrollTop) host.scrollTop = top - 8;
      else if (bottom > host.scrollTop + host.clientHeight) host.scrollTop = bottom - host.clientHeight + 8;
    }
    canvas.addEventListener("focus", () => { if (getGrid()) show(at < 0 ? 0 : at); });
    canvas.addEventListener("blur", () => { cursor.hidden = true; tip.hidden = true; });
    canvas.addEventListener("keydown", (ev) => {
      const g = getGrid();
      if (!g) return;
      const n = Number(canvas.dataset.count), rows = Math.ceil(n / g.cols);
      const page = g.cols * Math.max(1, Math.floor(host.clientHeight / (g.cellH + g.gap)) - 1);
      const moves = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: g.cols, ArrowUp: -g.cols, PageDown: page, PageUp: -page };
      if (ev.key in moves) {
        ev.preventDefault();
        const next = at + moves[ev.key];
        if ((ev.key === "ArrowDown" || ev.key === "ArrowUp") && (next < 0 || next >= n)) return void rows;
        show(next);
      } else if (ev.key === "Home") { ev.preventDefault(); show(0); }
      else if (ev.key === "End") { ev.preventDefault(); show(n - 1); }
      else if (ev.key === "Enter" && at >= 0) {
        ev.preventDefault();
        tip.hidden = true;
        location.href = href({ neuron: g.order[at], position: at });
      }
    });
    canvas.onmousemove = (ev) => {
      const g = getGrid();
      const h = g && g.hit(ev.offsetX, ev.offsetY);
      if (!h) { tip.hidden = true; canvas.style.cursor = "default"; return; }
      canvas.style.cursor = "pointer";
      tip.innerHTML = describe(h);
      tip.hidden = false;
      tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 8) + "px";
      tip.style.top = ev.clientY + 14 + "px";
    };
    canvas.onmouseleave = () => { tip.hidden = true; };
    canvas.onclick = (ev) => {
      const g = getGrid();
      const h = g && g.hit(ev.offsetX, ev.offsetY);
      if (h) { tip.hidden = true; location.href = href(h); }
    };
  }
  function drawRGB(canvas, image) {
    const kh = image.length, kw = image[0].length;
    canvas.width = kw;
    canvas.height = kh;
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(kw, kh);
    for (let y = 0; y < kh; y++) for (let x = 0; x < kw; x++) {
      const o = (y * kw + x) * 4, c = image[y][x];
      img.data[o] = Math.round(255 * c[0]); img.data[o + 1] = Math.round(255 * c[1]); img.data[o + 2] = Math.round(255 * c[2]); img.data[o + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }
  const RDBU = [[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130], [178, 24, 43]];
  function diverging(t) { // t in [-1, 1]
    const u = (Math.max(-1, Math.min(1, t)) + 1) / 2 * (RDBU.length - 1);
    const i = Math.min(RDBU.length - 2, Math.floor(u)), f = u - i;
    return RDBU[i].map((a, k) => Math.round(a + f * (RDBU[i + 1][k] - a)));
  }
  function drawHeat(canvas, matrix, vmax) {
    const kh = matrix.length, kw = matrix[0].length;
    canvas.width = kw;
    canvas.height = kh;
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(kw, kh);
    for (let y = 0; y < kh; y++) for (let x = 0; x < kw; x++) {
      const o = (y * kw + x) * 4, c = diverging(vmax ? matrix[y][x] / vmax : 0);
      img.data[o] = c[0]; img.data[o + 1] = c[1]; img.data[o + 2] = c[2]; img.data[o + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }
  /** A PNG of several canvases laid out in a row-major grid (for figures made of small canvases). */
  function composePNG(canvases, labels, opts) {
    opts = opts || {};
    const size = opts.size || 96, pad = 14, lab = labels ? 16 : 0;
    const cols = Math.min(canvases.length, opts.cols || 8), rows = Math.ceil(canvases.length / cols);
    const out = document.createElement("canvas");
    out.width = cols * (size + pad) + pad;
    out.height = rows * (size + pad + lab) + pad;
    const ctx = out.getContext("2d");
    ctx.fillStyle = opts.bg || "#ffffff";
    ctx.fillRect(0, 0, out.width, out.height);
    ctx.imageSmoothingEnabled = false;
    ctx.font = "11px sans-serif";
    ctx.fillStyle = "#344054";
    canvases.forEach((c, i) => {
      const x = pad + (i % cols) * (size + pad), y = pad + Math.floor(i / cols) * (size + pad + lab);
      ctx.drawImage(c, x, y, size, size);
      if (labels) { ctx.fillStyle = "#344054"; ctx.fillText(labels[i], x, y + size + 12); }
    });
    return out.toDataURL("image/png");
  }
  /** A PNG of one or more neuron grids at a resolution where every kernel position is visible (at least
   *  4 px per position, cells of at least 28 px), each neuron numbered under its cell, with a title, a
   *  heading per grid and a key that says what a cell is. panels: [{title, subtitle, images, order}]. */
  function gridsPNG(panels, opts) {
    opts = opts || {};
    const W = opts.width || 1600, pad = 28, gap = 3, lab = 12, head = 44;
    const ink = "#101828", grey = "#475467", font = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
    const geo = panels.map((p) => {
      const kh = p.images[0].length, kw = p.images[0][0].length;
      const scale = Math.max(4, Math.ceil(28 / Math.max(kh, kw)));
      const cw = kw * scale, ch = kh * scale, n = p.order.length;
      const cols = Math.max(1, Math.min(n, Math.floor((W - 2 * pad - 20 + gap) / (cw + gap))));
      const rows = Math.ceil(n / cols);
      return { kh, kw, scale, cw, ch, n, cols, rows, h: head + 20 + rows * (ch + lab + gap) + 16 };
    });
    const keyH = 70, titleH = opts.title ? 46 : 16;
    const out = document.createElement("canvas");
    out.width = W;
    out.height = titleH + geo.reduce((a, g) => a + g.h + 12, 0) + keyH;
    const ctx = out.getContext("2d");
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, out.width, out.height);
    ctx.imageSmoothingEnabled = false;
    if (opts.title) { ctx.fillStyle = ink; ctx.font = `600 20px ${font}`; ctx.fillText(opts.title, pad, 32); }
    let y0 = titleH;
    panels.forEach((p, k) => {
      const g = geo[k];
      ctx.fillStyle = ink; ctx.font = `600 15px ${font}`; ctx.fillText(p.title || "", pad, y0 + 20);
      ctx.fillStyle = grey; ctx.font = `13px ${font}`; ctx.fillText(p.subtitle || "", pad, y0 + 38);
      const bx = pad, by = y0 + head, bw = g.cols * (g.cw + gap) - gap + 20, bh = g.rows * (g.ch + lab + gap) + 14;
      ctx.fillStyle = "#0b1020"; ctx.fillRect(bx, by, bw, bh);
      ctx.font = `10px ${font}`; ctx.textAlign = "center";
      const img = document.createElement("canvas");
      img.width = g.kw; img.height = g.kh;
      p.order.forEach((j, q) => {
        const x = bx + 10 + (q % g.cols) * (g.cw + gap), y = by + 8 + Math.floor(q / g.cols) * (g.ch + lab + gap);
        drawRGB(img, p.images[j]);
        ctx.drawImage(img, x, y, g.cw, g.ch);
        ctx.fillStyle = "#cbd5e1";
        ctx.fillText(String(j), x + g.cw / 2, y + g.ch + 10);
      });
      ctx.textAlign = "left";
      y0 += g.h + 12;
    });
    // the key
    ctx.fillStyle = ink; ctx.font = `600 13px ${font}`; ctx.fillText("Key", pad, y0 + 18);
    ctx.font = `12.5px ${font}`; ctx.fillStyle = grey;
    const g0 = geo[0] || { kh: 3, kw: 3 };
    if (opts.rgbKey) {
      ctx.fillText(`Each cell is one first-layer filter, ${g0.kh}×${g0.kw}, in colour: its weights on input channels 0, 1, 2 shown as red, green, blue,`, pad, y0 + 38);
      ctx.fillText("each filter scaled by its own largest |w| (mid grey = 0); in sorted order; the number under a cell is the neuron's index.", pad, y0 + 56);
    } else {
      ctx.fillText(`Each cell is one neuron's reduced form: its ${g0.kh}×${g0.kw} kernel positions coloured by the 3 NMF factors of [max(W,0), max(−W,0)] over input channels`, pad, y0 + 38);
      ctx.fillText("(factor 1 red, 2 green, 3 blue; colours aligned across the layer), in sorted order; the number under a cell is the neuron's index.", pad, y0 + 56);
    }
    return out.toDataURL("image/png");
  }
  /** x range covering the non-empty bins of step traces (shared bins are wide; the weights are not). */
  function occupiedRange(traces) {
    let lo = Infinity, hi = -Infinity;
    traces.forEach((t) => t.y.forEach((v, i) => { if (v > 0) { lo = Math.min(lo, t.x[i]); hi = Math.max(hi, t.x[i]); } }));
    if (!isFinite(lo)) return undefined;
    const pad = 0.06 * (hi - lo || 1);
    return [lo - pad, hi + pad];
  }
  /** Sort a table by clicking its headers (th[data-sort=num|text]; a cell's data-value, else its text);
   *  a second click reverses. aria-sort marks the sorted column. Returns {sort(col, dir)}. */
  function sortableTable(table, onSort) {
    const ths = $$("thead th", table);
    const key = (td, kind) => {
      const v = td ? (td.dataset.value !== undefined ? td.dataset.value : td.textContent.trim()) : "";
      if (kind !== "num") return v.toLowerCase();
      return v === "" || isNaN(Number(v)) ? null : Number(v);
    };
    function sort(col, dir) {
      const kind = ths[col].dataset.sort;
      const body = table.tBodies[0];
      const rows = Array.from(body.rows);
      rows.sort((a, b) => {
        const x = key(a.cells[col], kind), y = key(b.cells[col], kind);
        if (x === null && y === null) return 0;
        if (x === null) return 1;  // blanks last either way
        if (y === null) return -1;
        return (x < y ? -1 : x > y ? 1 : 0) * (dir === "ascending" ? 1 : -1);
      });
      rows.forEach((r) => body.appendChild(r));
      ths.forEach((t, i) => { if (i === col) t.setAttribute("aria-sort", dir); else t.removeAttribute("aria-sort"); });
      if (onSort) onSort(col, dir);
    }
    ths.forEach((th, i) => {
      if (!th.dataset.sort) return;
      th.tabIndex = 0;
      th.classList.add("sort-head");
      const go = () => sort(i, th.getAttribute("aria-sort") === "descending" ? "ascending" : "descending");
      th.addEventListener("click", go);
      th.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); go(); } });
    });
    return { sort };
  }
  /** The visible rows of a table as CSV rows (header first; a cell's data-value where it has one). */
  function tableRows(table) {
    const head = $$("thead th", table).map((t) => t.textContent.trim());
    const rows = Array.from(table.tBodies[0].rows).filter((r) => !r.hidden)
      .map((r) => Array.from(r.cells).map((c) => (c.dataset.value !== undefined ? c.dataset.value : c.textContent.trim().replace(/\s+/g, " "))));
    return [head].concat(rows);
  }
  function fmt(v, d) { return v === null || v === undefined || Number.isNaN(v) ? "—" : Number(v).toFixed(d === undefined ? 3 : d); }
  function debounce(fn, ms) { let t; return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); }; }

  // ---- figure anchors (#fig-svd): land on them once the page has drawn ------------------------------
  // The browser scrolls to the anchor at load, before the grid and the charts above it have their
  // height; once the page says it is ready (body[data-ready=1]) scroll there again, unless the reader
  // has scrolled by then.
  let userScrolled = false;
  ["wheel", "touchmove", "keydown", "mousedown"].forEach((t) => window.addEventListener(t, () => { userScrolled = true; }, { once: true, passive: true }));
  function landOnAnchor() {
    const id = decodeURIComponent(location.hash.slice(1));
    const target = id && document.getElementById(id);
    if (!target || userScrolled) return;
    target.scrollIntoView({ block: "start" });
    document.body.dataset.landed = id;
  }
  new MutationObserver(() => {
    if (document.body.dataset.ready === "1" && !document.body.dataset.landed) requestAnimationFrame(landOnAnchor);
  }).observe(document.documentElement, { attributes: true, subtree: true, attributeFilter: ["data-ready"] });

  document.addEventListener("DOMContentLoaded", () => {
    const b = document.getElementById("copy-link");
    if (b) b.addEventListener("click", copyLink);
    if (!boot.page || ["apidocs", "jobs", "error"].includes(boot.page)) document.body.dataset.ready = "1";
  });

  return { boot, limits, $, $$, api, urls, enc, toast, copyLink, query, setQuery, onPop, viewURL, clampK, download, downloadText, csv, safe,
    plotPNG, figure, showError, escapeHTML, palette, colour, rdbu, layout, config, plot, plotly, plotAfter,
    profileLines, histTrace, histCSV, clustersChart, drawGrid, bindGrid, drawRGB, drawHeat,
    diverging, composePNG, gridsPNG, sortableTable, tableRows, occupiedRange, fmt, debounce };
})();
