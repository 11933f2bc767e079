/* Job page: poll the job until it is done or failed. */
"use strict";
(() => {
  const el = (id) => document.getElementById(id);
  const id = CS.boot.job;
  function show(j) {
    el("job").dataset.state = j.state;
    const s = el("job-state");
    s.textContent = j.state;
    s.className = "badge state-" + j.state;
    el("job-message").textContent = j.message || "";
    el("job-bar").style.width = (100 * (j.progress || 0)).toFixed(1) + "%";
    el("job-error").hidden = !j.error;
    el("job-error").textContent = j.error || "";
    el("job-done").hidden = j.state !== "done";
    el("job-log").textContent = (j.log || []).join("\n");
  }
  async function poll() {
    try {
      const r = await fetch(`/api/jobs/${encodeURIComponent(id)}`, { cache: "no-store" });
      const j = await r.json();
      show(j);
      if (j.state === "done" || j.state === "failed") { document.body.dataset.ready = "1"; return; }
    } catch (e) { /* retry */ }
    setTimeout(poll, 700);
  }
  const st = el("job").dataset.state;
  if (st === "done" || st === "failed") document.body.dataset.ready = "1";
  else poll();
})();
