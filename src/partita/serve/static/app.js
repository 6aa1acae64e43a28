// partita explorer: plain JavaScript, no library, nothing loaded from the network.
"use strict";

const $ = (id) => document.getElementById(id);
let INFO = null;
let INFO_READY = null; // the /api/info request: a piece shown before it answers waits for it
let CURRENT = null;
const PALETTE = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880",
  "#ff97ff", "#fecb52", "#1f77b4", "#8c564b", "#2ca02c", "#d62728", "#9467bd", "#7f7f7f", "#bcbd22", "#17becf"];

async function api(path, options) {
  const r = await fetch(path, options);
  const type = r.headers.get("content-type") || "";
  const body = type.includes("json") ? await r.json() : null;
  if (!r.ok) {
    const msg = body && body.message ? body.message : `HTTP ${r.status}`;
    const err = new Error(msg);
    err.status = r.status;
    throw err;
  }
  return body;
}

function setStatus(text, isError) {
  const s = $("status");
  s.textContent = text;
  s.className = isError ? "error" : "";
}

function text(el, value) { el.textContent = value; return el; }
function make(tag, attrs, content) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (content !== undefined) el.textContent = content;
  return el;
}
function fmtTime(s) { const m = Math.floor(s / 60); return `${m}:${String(Math.floor(s % 60)).padStart(2, "0")}`; }

// ------------------------------------------------------------------ upload
async function upload(file) {
  if (!file) return;
  const limit = INFO ? INFO.limits.max_upload_mb : 20;
  if (file.size > limit * 1048576) {
    setStatus(`${file.name} is ${(file.size / 1048576).toFixed(1)} MiB, over the ${limit} MiB limit of this server.`, true);
    return;
  }
  setStatus(`Reading ${file.name}…`);
  try {
    const piece = await api(`/api/pieces?name=${encodeURIComponent(file.name)}`,
      { method: "POST", body: file, headers: { "Content-Type": "audio/midi" } });
    setStatus(`${piece.name}: ${piece.notes} notes, ${fmtTime(piece.seconds)}.`);
    show(piece);
  } catch (e) {
    setStatus(`${file.name}: ${e.message}`, true);
  }
}

function setupDrop() {
  const zone = $("drop");
  ["dragenter", "dragover"].forEach((t) => zone.addEventListener(t, (e) => { e.preventDefault(); zone.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => zone.addEventListener(t, (e) => { e.preventDefault(); zone.classList.remove("over"); }));
  zone.addEventListener("drop", (e) => upload(e.dataTransfer.files[0]));
  // A file dropped outside the zone should not make the browser leave the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => { e.preventDefault(); if (e.target === document.body) upload(e.dataTransfer.files[0]); });
  $("file").addEventListener("change", (e) => upload(e.target.files[0]));
}

// ------------------------------------------------------------------ pianoroll
function drawRoll(canvas, notes, position) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height;
  ctx.clearRect(0, 0, W, H);
  if (!notes || !notes.count) return;
  let lo = 127, hi = 0;
  notes.pitch.forEach((p, i) => { if (!notes.drum[i]) { lo = Math.min(lo, p); hi = Math.max(hi, p); } });
  if (lo > hi) { lo = 35; hi = 81; }
  lo = Math.max(0, lo - 2); hi = Math.min(127, hi + 2);
  const T = Math.max(notes.seconds, 0.001);
  const rowH = H / (hi - lo + 1);
  // Octave lines at each C.
  ctx.strokeStyle = "#e6e9ef"; ctx.lineWidth = 1;
  for (let p = lo; p <= hi; p++) if (p % 12 === 0) { const y = H - (p - lo + 1) * rowH; ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(W, y); ctx.stroke(); }
  if (notes.new_music) {  // what a model wrote: a continuation's end, an infilled span
    const a = (notes.new_music[0] / T) * W, b = (notes.new_music[1] / T) * W;
    ctx.fillStyle = "rgba(224,168,0,0.14)"; ctx.fillRect(a, 0, Math.max(2, b - a), H);
  }
  for (let i = 0; i < notes.count; i++) {
    const x = (notes.onset[i] / T) * W;
    const w = Math.max(1, (notes.duration[i] / T) * W);
    const p = notes.drum[i] ? lo : notes.pitch[i];
    const y = H - (p - lo + 1) * rowH;
    const v = notes.velocity[i] / 127;
    ctx.fillStyle = notes.drum[i] ? "rgba(120,120,120,0.5)" : PALETTE[notes.track[i] % PALETTE.length];
    ctx.globalAlpha = 0.35 + 0.65 * v;
    ctx.fillRect(x, y, w, Math.max(1, rowH - 0.5));
  }
  ctx.globalAlpha = 1;
  if (position !== undefined && position !== null) {
    const x = (position / T) * W;
    ctx.strokeStyle = "#d62728"; ctx.lineWidth = 2; ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, H); ctx.stroke();
  }
}

// ------------------------------------------------------------------ the piece
async function show(piece) {
  if (!INFO && INFO_READY) await INFO_READY.catch(() => null);
  CURRENT = { piece, notes: null };
  $("main").hidden = false;
  $("piece-title").textContent = piece.name;
  const instruments = [...new Set(piece.tracks.map((t) => t.instrument))].join(", ");
  $("piece-facts").textContent = `${piece.notes} notes, ${fmtTime(piece.seconds)}, ${instruments || "no instrument"}` +
    (piece.kind !== "upload" ? ` (${piece.kind === "infill" ? "a span regenerated" : "a continuation"}; its audio starts ${piece.audio_from.toFixed(0)} s in)` : "");
  const dl = $("download");
  dl.href = piece.links.midi; dl.setAttribute("download", piece.name);
  const player = $("player");
  player.pause();
  setPlayerState("stopped");
  if (INFO && INFO.audio.available) {
    player.src = piece.links.audio;
    const span = INFO.limits.audio_seconds ? `${INFO.limits.audio_seconds} s` : "all of it";
    $("audio-note").textContent = `Audio: rendered on the server with the SoundFont (${span}` +
      (piece.kind === "upload" ? " from the start)." : ` from ${piece.audio_from.toFixed(0)} s, 5 s before the new music).`);
    $("play").disabled = false; $("stop").disabled = false;
  } else {
    player.removeAttribute("src");
    $("audio-note").textContent = "Audio is not available on this server: " + (INFO ? INFO.audio.reason : "");
    $("play").disabled = true; $("stop").disabled = true;
  }
  const roll = $("roll");
  roll.setAttribute("aria-label", `Pianoroll of ${piece.name}: ${piece.notes} notes over ${fmtTime(piece.seconds)}`);
  api(piece.links.notes).then((n) => { if (CURRENT.piece.id === piece.id) { CURRENT.notes = n; drawRoll(roll, n); } })
    .catch((e) => { $("audio-note").textContent = "Pianoroll: " + e.message; });
  loadAttribution(piece);
  loadSimilar(piece);
  loadMap(piece);
  $("gen-status").textContent = "";
  $("main").scrollIntoView({ behavior: "smooth" });
}

function setPlayerState(state) {
  $("player-state").textContent = state;
  $("player").dataset.state = state;
}

function setupPlayer() {
  const player = $("player");
  player.addEventListener("play", () => setPlayerState("playing"));
  player.addEventListener("pause", () => setPlayerState(player.currentTime > 0 && !player.ended ? "paused" : "stopped"));
  player.addEventListener("ended", () => setPlayerState("stopped"));
  player.addEventListener("error", () => { if (player.getAttribute("src")) $("audio-note").textContent = "The audio could not be loaded."; });
  player.addEventListener("timeupdate", () => {
    if (CURRENT && CURRENT.notes) drawRoll($("roll"), CURRENT.notes, CURRENT.piece.audio_from + player.currentTime);
  });
  $("play").addEventListener("click", () => player.play().catch((e) => { $("audio-note").textContent = "Cannot play: " + e.message; }));
  $("stop").addEventListener("click", () => { player.pause(); player.currentTime = 0; setPlayerState("stopped"); });
}

// ------------------------------------------------------------------ attribution
async function loadAttribution(piece) {
  const sec = $("attribution"); sec.setAttribute("aria-busy", "true");
  $("bars").replaceChildren(); $("verdict").textContent = "working…"; $("attr-note").textContent = "";
  try {
    const a = await api(`${piece.links.attribution}?k=5`);
    if (CURRENT.piece.id !== piece.id) return;
    const v = $("verdict");
    if (a.known) { v.textContent = `Most likely: ${a.verdict} (${(a.top[0].probability * 100).toFixed(0)}%)`; v.className = ""; }
    else { v.textContent = "Unknown composer: farther from every composer of the index than its threshold"; v.className = "verdict-unknown"; }
    a.top.forEach((t, i) => {
      const li = make("li", { class: i === 0 && a.known ? "top" : "" });
      const pct = (t.probability * 100).toFixed(1);
      li.append(make("span", {}, t.label));
      const bar = make("div", { class: "bar", role: "meter", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": pct, "aria-label": `${t.label}: ${pct} percent` });
      const fill = make("span"); fill.style.width = `${pct}%`; bar.append(fill);
      li.append(bar, make("span", {}, `${pct}%`));
      $("bars").append(li);
    });
    $("attr-note").textContent = `Index: ${a.index} (${a.labels} composers); calibrated probabilities; novelty ${a.novelty.toFixed(2)}` +
      (a.threshold !== null ? ` (unknown above ${a.threshold.toFixed(2)})` : "");
  } catch (e) {
    $("verdict").textContent = "Attribution failed: " + e.message; $("verdict").className = "error";
  } finally { sec.setAttribute("aria-busy", "false"); }
}

// ------------------------------------------------------------------ similar
let PREVIEW = null;
async function loadSimilar(piece) {
  const sec = $("similar"); sec.setAttribute("aria-busy", "true");
  $("hits").replaceChildren(); $("sim-note").textContent = "working…";
  try {
    const s = await api(`${piece.links.similar}?k=8`);
    if (CURRENT.piece.id !== piece.id) return;
    s.hits.forEach((h) => {
      const li = make("li");
      li.append(make("strong", {}, h.title || h.id));
      li.append(make("span", { class: "meta" }, ` ${h.label || ""} · ${h.split || ""} · distance ${h.distance.toFixed(3)}`));
      if (h.links && INFO.audio.available) {
        const b = make("button", { type: "button", "aria-label": `Play ${h.title || h.id}` }, "Play");
        b.addEventListener("click", () => playPreview(h.links.audio, h.title || h.id));
        li.append(b);
      }
      if (h.links) li.append(" ", make("a", { href: h.links.midi, download: "" }, "MIDI"));
      $("hits").append(li);
    });
    $("sim-note").textContent = `Index: ${s.index}. ` + (s.note || "");
  } catch (e) {
    $("sim-note").textContent = "Search failed: " + e.message; $("sim-note").className = "note error";
  } finally { sec.setAttribute("aria-busy", "false"); }
}

function playPreview(src, title) {
  if (!PREVIEW) {
    PREVIEW = make("audio", { controls: "", id: "preview", "aria-label": "Audio of a similar piece" });
    $("similar").append(PREVIEW);
  }
  $("player").pause();
  PREVIEW.src = src; PREVIEW.setAttribute("aria-label", `Audio of ${title}`);
  PREVIEW.play().catch(() => {});
}

// ------------------------------------------------------------------ map
const MAPS = {};
async function loadMap(piece) {
  const sec = $("map"); sec.setAttribute("aria-busy", "true");
  $("map-note").textContent = "placing the piece on the map… (the first map of an index may take a while)";
  try {
    const place = await api(piece.links.map);
    const points = MAPS[place.index] || (MAPS[place.index] = await api(place.points));
    if (CURRENT.piece.id !== piece.id) return;
    drawMap(points, place, piece);
    $("map-note").textContent = `${points.count} pieces of the ${place.index} index (t-SNE); the star is ${piece.name}` +
      (place.verdict ? `, attributed: ${place.verdict}` : "") + ".";
  } catch (e) {
    $("map-note").textContent = "Map failed: " + e.message; $("map-note").className = "note error";
  } finally { sec.setAttribute("aria-busy", "false"); }
}

function drawMap(m, place, piece) {
  const c = $("mapcanvas"), ctx = c.getContext("2d"), W = c.width, H = c.height, pad = 24;
  const xs = m.x.concat([place.x]), ys = m.y.concat([place.y]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const s = Math.min((W - 2 * pad) / (x1 - x0 || 1), (H - 2 * pad) / (y1 - y0 || 1));
  const X = (x) => pad + (x - x0) * s, Y = (y) => H - pad - (y - y0) * s;
  const labels = [...new Set(m.label)].sort();
  const colour = Object.fromEntries(labels.map((l, i) => [l, PALETTE[i % PALETTE.length]]));
  ctx.clearRect(0, 0, W, H);
  ctx.globalAlpha = 0.7;
  m.x.forEach((x, i) => { ctx.fillStyle = colour[m.label[i]]; ctx.beginPath(); ctx.arc(X(x), Y(m.y[i]), 2.6, 0, 2 * Math.PI); ctx.fill(); });
  ctx.globalAlpha = 1;
  star(ctx, X(place.x), Y(place.y), 13, 5.5);
  ctx.font = "bold 13px system-ui"; ctx.fillStyle = "#1d2330"; ctx.fillText(piece.name, X(place.x) + 15, Y(place.y) + 4);
  $("legend").replaceChildren(...labels.map((l) => { const li = make("li"); const dot = make("i"); dot.style.background = colour[l]; li.append(dot, l); return li; }));
  c.setAttribute("aria-label", `Map of ${m.count} pieces of the ${place.index} index; ${piece.name} is the star` + (place.verdict ? `, attributed to ${place.verdict}` : ""));
  c.onmousemove = (e) => {
    const r = c.getBoundingClientRect(), mx = (e.clientX - r.left) * (W / r.width), my = (e.clientY - r.top) * (H / r.height);
    let best = -1, bd = 64;
    m.x.forEach((x, i) => { const d = (X(x) - mx) ** 2 + (Y(m.y[i]) - my) ** 2; if (d < bd) { bd = d; best = i; } });
    const tip = $("tip");
    if (best < 0) { tip.hidden = true; return; }
    tip.hidden = false; tip.textContent = `${m.title[best]} (${m.label[best]})`;
    tip.style.left = `${e.clientX + 12}px`; tip.style.top = `${e.clientY + 12}px`;
  };
  c.onmouseleave = () => { $("tip").hidden = true; };
}

function star(ctx, x, y, R, r) {
  ctx.beginPath();
  for (let i = 0; i < 10; i++) {
    const a = -Math.PI / 2 + (i * Math.PI) / 5, d = i % 2 ? r : R;
    ctx.lineTo(x + d * Math.cos(a), y + d * Math.sin(a));
  }
  ctx.closePath(); ctx.fillStyle = "#e0a800"; ctx.fill(); ctx.lineWidth = 2; ctx.strokeStyle = "#000"; ctx.stroke();
}

// ------------------------------------------------------------------ continue and infill
async function runJob(link, body, button, bar, st, what) {
  button.disabled = true; bar.hidden = false; bar.removeAttribute("value"); st.textContent = "queued…"; st.className = "";
  try {
    let job = await api(link, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    while (job.state === "queued" || job.state === "running") {
      await new Promise((r) => setTimeout(r, 400));
      job = await api(job.links.self);
      if (job.progress.total > 0) { bar.max = job.progress.total; bar.value = job.progress.done; st.textContent = `sampling: ${job.progress.done} of ${job.progress.total} tokens`; }
      else if (job.state === "running") st.textContent = "reading the piece…";
    }
    if (job.state === "error") throw new Error(job.error.message);
    st.textContent = `done: ${job.pieces.length} ${what}` + (job.empty_samples ? `, ${job.empty_samples} without notes` : "");
    job.pieces.forEach(addResult);
  } catch (err) {
    st.textContent = `Failed: ${err.message}`; st.className = "error";
  } finally { button.disabled = false; bar.hidden = true; }
}

function setupGenerate() {
  const num = (f, k) => (f.get(k) === "" || f.get(k) === null ? null : Number(f.get(k)));
  $("continue-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if (!CURRENT) return;
    const f = new FormData(e.target);
    const body = { seconds: num(f, "seconds"), n: num(f, "n"), temperature: num(f, "temperature"), top_p: num(f, "top_p"),
      seed: num(f, "seed"), prompt_seconds: num(f, "prompt_seconds"), model: f.get("model") };
    runJob(CURRENT.piece.links.continue, body, $("continue"), $("progress"), $("gen-status"), "continuation(s)");
  });
  $("infill-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if (!CURRENT) return;
    const f = new FormData(e.target);
    const body = { bars: `${num(f, "from")}-${num(f, "to")}`, n: num(f, "n"), candidates: num(f, "candidates"),
      temperature: num(f, "temperature"), seed: num(f, "seed"), model: f.get("model") };
    runJob(CURRENT.piece.links.infill, body, $("infill"), $("infill-progress"), $("infill-status"), "version(s)");
  });
}

function addResult(p) {
  const li = make("li", { class: "result" });
  li.append(make("strong", {}, p.name), make("span", { class: "meta" }, ` ${p.notes} notes, ${fmtTime(p.seconds)}, ${p.settings.stop ? "stopped by " + p.settings.stop : ""} `));
  const canvas = make("canvas", { width: "900", height: "160", role: "img", "aria-label": `Pianoroll of ${p.name}; the new music is shaded` });
  api(p.links.notes).then((n) => drawRoll(canvas, n));
  li.append(canvas);
  const row = make("div", { class: "player" });
  if (INFO.audio.available) row.append(make("audio", { controls: "", preload: "none", src: p.links.audio, "aria-label": `Audio of ${p.name}` }));
  row.append(make("a", { class: "button", href: p.links.midi, download: p.name }, "Download MIDI"));
  const open = make("button", { type: "button" }, "Explore this one");
  open.addEventListener("click", () => show(p));
  row.append(open);
  li.append(row);
  $("results").prepend(li);
}

// ------------------------------------------------------------------ start
async function start() {
  setupDrop(); setupPlayer(); setupGenerate();
  try {
    INFO_READY = api("/api/info");
    INFO = await INFO_READY;
    const sel = $("model");
    INFO.models.forEach((m) => sel.append(make("option", { value: m }, m)));
    if (!INFO.audio.available) setStatus("Audio is not available on this server: " + INFO.audio.reason);
    INFO.infill.forEach((m) => $("infill-model").append(make("option", { value: m }, m)));
    $("infill-form").hidden = INFO.infill.length === 0;
    $("infill-note").textContent = INFO.infill.length ? "" :
      "Infilling (regenerating a span inside the piece) needs a model trained for it (partita train gpt --fim 0.5); none is loaded here.";
  } catch (e) { setStatus("The server does not answer: " + e.message, true); }
}
document.addEventListener("DOMContentLoaded", start);
