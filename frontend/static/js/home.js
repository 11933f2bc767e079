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
  document.body.dataset.ready = "1";
})();
