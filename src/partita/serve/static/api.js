// The API page: lists the operations of /openapi.json (no library, nothing from the network).
"use strict";
document.addEventListener("DOMContentLoaded", () => fetch("/openapi.json").then((r) => r.json()).then((spec) => {
  const box = document.getElementById("ops");
  box.replaceChildren();
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const div = document.createElement("section");
      div.className = "op";
      const h = document.createElement("h2");
      const m = document.createElement("span"); m.className = "method"; m.textContent = method.toUpperCase();
      const c = document.createElement("code"); c.textContent = path;
      h.append(m, " ", c);
      const p = document.createElement("p"); p.textContent = op.summary || "";
      div.append(h, p);
      if (op.description) { const d = document.createElement("p"); d.className = "note"; d.textContent = op.description; div.append(d); }
      const params = op.parameters || [];
      const body = op.requestBody && op.requestBody.content;
      if (params.length || body) {
        const t = document.createElement("table");
        t.innerHTML = "<tr><th>parameter</th><th>in</th><th>about</th></tr>";
        params.forEach((x) => { const tr = t.insertRow(); [x.name, x.in, x.description || ""].forEach((v) => { tr.insertCell().textContent = v; }); });
        if (body) { const tr = t.insertRow(); ["body", Object.keys(body).join(", "), "the request body"].forEach((v) => { tr.insertCell().textContent = v; }); }
        div.append(t);
      }
      box.append(div);
    }
  }
}).catch((e) => { document.getElementById("ops").textContent = "cannot read /openapi.json: " + e; }));
