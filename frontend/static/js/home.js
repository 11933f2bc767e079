/* Home: model cards filtered by text and family; the filter lives in the URL (?q=&family=). */
"use strict";
(() => {
  const text = CS.$("#filter-text");
  const chips = CS.$$("#family-chips .chip");
  const cards = CS.$$(".model-card");
  const count = CS.$("#filter-count");
  let state = read(CS.query());

  function read(q) { return { q: q.q || "", family: q.family || "" }; }
  function apply() {
    if (text.value !== state.q) text.value = state.q;
    chips.forEach((c) => c.classList.toggle("active", c.dataset.family === state.family));
    const words = state.q.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    cards.forEach((card) => {
      const ok = (!state.family || card.dataset.family === state.family) &&
        words.every((w) => card.dataset.search.includes(w));
      card.hidden = !ok;
      if (ok) shown++;
    });
    CS.$$(".model-group").forEach((g) => { g.hidden = !CS.$$(".model-card", g).some((c) => !c.hidden); });
    count.textContent = cards.length ? `${shown} of ${cards.length} models` : "";
    CS.$("#no-match").hidden = shown > 0 || !cards.length;
  }
  text.addEventListener("input", CS.debounce(() => {
    state = { q: text.value.trim(), family: state.family };
    CS.setQuery(state, { replace: true });
    apply();
  }, 120));
  chips.forEach((c) => c.addEventListener("click", () => {
    state = { q: state.q, family: c.dataset.family };
    CS.setQuery(state);
    apply();
  }));
  CS.onPop((q) => { state = read(q); apply(); });
  apply();

  // ---- the findings strip: one small live figure per finding, drawn from the same API as its view ----
  const T = CS.boot.findings || {};
  function sized(id) {
    const c = document.getElementById(id);
    if (!c) return null;
    const w = c.clientWidth || 260, h = c.clientHeight || 110, r = window.devicePixelRatio || 1;
    c.width = w * r; c.height = h * r;
    const ctx = c.getContext("2d");
    ctx.scale(r, r);
    return { c, ctx, w, h };
  }
  function bars(id, values, colours) {
    const s = sized(id);
    if (!s || !values.length) return;
    const bw = s.w / values.length, max = Math.max(...values, 1e-9);
    values.forEach((v, i) => {
      s.ctx.fillStyle = colours[i];
      const h = (s.h - 6) * v / max;
      s.ctx.fillRect(i * bw + bw * 0.12, s.h - h, Math.max(1, bw * 0.76), h);
    });
  }
  const jobs = [];
  if (T.banding) jobs.push(CS.api(CS.urls.result(T.banding.model, T.banding.layer, "nmf")).then(({ data }) => {
    const c = document.getElementById("mini-banding");
    const wrap = c.parentElement.clientWidth - 36;
    const g = CS.drawGrid(c, data.images, data.order.slice(0, 96), { cell: "s", gap: 1, width: wrap });
    c.dataset.count = String(g.order.length);
  }).catch(() => null));
  if (T.symmetry) jobs.push(CS.api(CS.urls.model(T.symmetry.model)).then((m) => {
    const P = m.profiles.symmetry;
    bars("mini-symmetry", P.map((p) => p.value), P.map((p) => (p.layer === T.symmetry.layer ? "#e11d48" : p.strided ? "#f97316" : "#818cf8")));
  }).catch(() => null));
  if (T.gamma) jobs.push(CS.api(CS.urls.model(T.gamma.model)).then((m) => {
    const P = m.profiles.gamma;
    bars("mini-gamma", P.map((p) => p.values[CS.limits.gamma_off] || 0), P.map(() => "#f97316"));
  }).catch(() => null));
  if (T.colour) jobs.push(CS.api(CS.urls.result(T.colour.model, T.colour.layer, "svd")).then(({ data }) => {
    const s = sized("mini-colour");
    const V = T.colour.best_basis === "pca" ? data.pca.v : data.v;
    const cx = T.colour.best_component, cy = cx === 0 ? 1 : 0;
    const col = (data.feeder_properties || {}).colourfulness || [];
    const xs = V.map((r) => r[cx]), ys = V.map((r) => r[cy]);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    V.forEach((_, i) => {
      const t = Math.max(0, Math.min(1, col[i] || 0));
      s.ctx.fillStyle = `rgb(${Math.round(148 + 101 * t)},${Math.round(163 - 48 * t)},${Math.round(184 - 162 * t)})`;
      s.ctx.beginPath();
      s.ctx.arc(8 + (s.w - 16) * (xs[i] - x0) / ((x1 - x0) || 1), s.h - 8 - (s.h - 16) * (ys[i] - y0) / ((y1 - y0) || 1), 3.2, 0, 2 * Math.PI);
      s.ctx.fill();
    });
  }).catch(() => null));
  Promise.allSettled(jobs).then(() => { document.body.dataset.ready = "1"; });
})();
