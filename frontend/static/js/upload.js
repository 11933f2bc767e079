/* Upload: architectures from the API, the checkpoint sent with progress, then the job page. */
"use strict";
(() => {
  const el = (id) => document.getElementById(id);
  const form = el("upload-form"), arch = el("arch"), err = el("upload-error"), bar = CS.$("#upload-progress .bar");
  const maxBytes = CS.boot.max_bytes;

  fetch("/api/architectures").then((r) => r.json()).then((d) => {
    const list = d.architectures || [];
    if (list.length) {
      arch.innerHTML = `<option value="">choose…</option>` + list.map((a) => `<option>${CS.escapeHTML(a)}</option>`).join("");
    } else {
      const input = document.createElement("input");
      input.type = "text"; input.name = "arch"; input.id = "arch"; input.required = true; input.placeholder = "resnet20";
      arch.replaceWith(input);
      el("arch-note").textContent = d.error ? `${d.error}; type the architecture name` : "type the architecture name";
    }
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
