/* Upload: the architecture searched as the user types (convscope's own and torchvision/timm by name, with
   the expected parameter count), the checkpoint sent with progress, then the job page. */
"use strict";
(() => {
  const el = (id) => document.getElementById(id);
  const form = el("upload-form"), arch = el("arch"), err = el("upload-error"), bar = CS.$("#upload-progress .bar");
  const list = el("arch-list"), info = el("arch-info");
  const maxBytes = CS.boot.max_bytes;
  const exts = CS.limits.upload_extensions || [], graphExts = CS.limits.graph_extensions || [];
  if (exts.length) el("file").accept = exts.join(",");
  // a .onnx / .h5 / .keras file carries its graph: the architecture is read from it, the field may stay empty
  const archHint = arch.placeholder;
  el("file").addEventListener("change", () => {
    const f = el("file").files[0], carries = !!f && graphExts.some((e) => f.name.toLowerCase().endsWith(e));
    arch.required = !carries;
    arch.placeholder = carries ? "read from the file: leave empty" : archHint;
    el("file-types").textContent = carries ? `${f.name}: its layers and weights are read from the file (never run)`
      : ".safetensors or a PyTorch state dict (.pt/.pth/.th, loaded with weights_only), .onnx, or Keras .h5/.keras";
  });

  // name -> match row ({name, task, params, input_size}) of every search answer seen, for the info line
  const seen = new Map();
  const fmtParams = (n) => n >= 1e9 ? `${(n / 1e9).toFixed(2)} billion` : n >= 1e6 ? `${(n / 1e6).toFixed(1)} million` : n.toLocaleString();
  const describe = (m) => {
    if (m.note) return m.note;
    const parts = [];
    if (m.params != null) parts.push(`${fmtParams(m.params)} parameters`);
    if (m.task) parts.push(m.task);
    parts.push(m.input_size ? `input ${m.input_size.join("×")}` : "any input size (224×224 is used)");
    return parts.join(" · ");
  };
  const showInfo = () => {
    const m = seen.get(arch.value.trim());
    info.textContent = m ? `${m.name}: ${describe(m)}` : "";
    info.classList.toggle("muted", !m);
  };
  let timer = 0, asked = "";
  const search = () => {
    const q = arch.value.trim();
    if (!q || q === asked || (seen.get(q) || {}).note) { showInfo(); return; }
    asked = q;
    fetch(`/api/architectures/search?q=${encodeURIComponent(q)}&limit=20`).then((r) => r.ok ? r.json() : null).then((d) => {
      if (!d || d.query !== arch.value.trim()) return;  // an older answer, overtaken by typing
      d.matches.forEach((m) => seen.set(m.name, m));
      list.innerHTML = d.matches.map((m) => `<option value="${CS.escapeHTML(m.name)}">${CS.escapeHTML(describe(m))}</option>`).join("");
      if (!d.matches.length) info.textContent = `no architecture matches “${q}”`;
      else showInfo();
    }).catch(() => { /* the field still takes any name; the server checks it */ });
  };
  arch.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(search, 150); });
  arch.addEventListener("change", search);
  seen.set("auto", { name: "auto", note: "the architecture is found from the checkpoint's keys and shapes" });
  seen.set("none", { name: "none", note: "weights alone: every 4-d tensor a conv; the analyses that need the graph are skipped" });
  // convscope's own architectures are the first suggestions, before anything is typed
  fetch("/api/architectures").then((r) => r.json()).then((d) => {
    (d.architectures || []).forEach((a) => seen.set(a, { name: a, input_size: (d.input_sizes || {})[a] }));
    if (!arch.value) list.innerHTML = ["auto", ...(d.architectures || []), "none"].map((a) => `<option value="${CS.escapeHTML(a)}">`).join("");
    document.body.dataset.ready = "1";
  }).catch(() => { document.body.dataset.ready = "1"; });

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    err.hidden = true;
    const file = el("file").files[0];
    if (!file) return;
    if (file.size > maxBytes) {
      err.textContent = `${file.name} has ${file.size.toLocaleString()} bytes, more than the limit of ${maxBytes.toLocaleString()} bytes.`;
      err.hidden = false;
      return;
    }
    const data = new FormData(form);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/uploads");
    el("upload-progress").hidden = false;
    el("upload-submit").disabled = true;
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.style.width = (100 * e.loaded / e.total).toFixed(1) + "%"; };
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (e) { /* keep empty */ }
      if (xhr.status === 202 && body.page) { location.href = body.page; return; }
      err.textContent = body.detail || `upload failed (${xhr.status})`;
      err.hidden = false;
      el("upload-submit").disabled = false;
      el("upload-progress").hidden = true;
    };
    xhr.onerror = () => { err.textContent = "the upload was interrupted"; err.hidden = false; el("upload-submit").disabled = false; };
    xhr.send(data);
  });
})();
