// partita explorer: plain JavaScript, no library, nothing loaded from the network.
"use strict";

const $ = (id) => document.getElementById(id);
let INFO = null;
let INFO_READY = null; // the /api/info request: a piece shown before it answers waits for it
let CURRENT = null; // {piece, notes, view: [from, to] seconds}
const PIECES = new Map(); // id -> {piece, results: [pieces made from it]}, in the order they came
const PALETTE = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880",
  "#ff97ff", "#fecb52", "#1f77b4", "#8c564b", "#2ca02c", "#d62728", "#9467bd", "#7f7f7f", "#bcbd22", "#17becf"];
const NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"];
const pitchName = (p) => `${NAMES[p % 12]}${Math.floor(p / 12) - 1}`; // MIDI 60 is C4
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// A busy server answers 503 with Retry-After: wait that long (saying so through onWait) and ask again.
async function api(path, options, onWait) {
  for (let attempt = 0; ; attempt++) {
    const r = await fetch(path, options);
    const type = r.headers.get("content-type") || "";
    const body = type.includes("json") ? await r.json() : null;
    if (r.status === 503 && attempt < 30) {
      const wait = Math.max(1, Number(r.headers.get("Retry-After")) || (body && body.retry_after) || 2);
      for (let left = wait; left > 0; left--) {
        if (onWait) onWait(`The server is busy; asking again in ${left} s…`);
        await sleep(1000);
      }
      continue;
    }
    if (!r.ok) {
      const err = new Error(body && body.message ? body.message : `HTTP ${r.status}`);
      err.status = r.status;
      throw err;
    }
    return body;
  }
}

function setStatus(text, isError) {
  const s = $("status");
  s.textContent = text;
  s.className = isError ? "error" : "";
}

function make(tag, attrs, content) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (content !== undefined) el.textContent = content;
  return el;
}
function fmtTime(s) { const m = Math.floor(s / 60); return `${m}:${String(Math.floor(s % 60)).padStart(2, "0")}`; }
function indexParam(sep) { const v = $("index").value; return v && v !== "auto" ? `${sep}index=${encodeURIComponent(v)}` : ""; }

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
      { method: "POST", body: file, headers: { "Content-Type": "audio/midi" } }, (m) => setStatus(m));
    setStatus(`${piece.name}: ${piece.notes} notes, ${piece.bars} bars, ${fmtTime(piece.seconds)}.`);
    show(piece);
  } catch (e) {
    // The server's message names the file already when it is about the file.
    setStatus(e.message.startsWith(file.name) ? e.message : `${file.name}: ${e.message}`, true);
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
const M = { left: 44, top: 16, bottom: 18 }; // margins: pitch names, bar numbers, seconds

// Where the new notes are, in seconds: [first onset, last note-off], or null.
function newSpan(notes) {
  if (!notes || !notes.new) return null;
  let a = Infinity, b = -Infinity;
  notes.new.forEach((f, i) => { if (f) { a = Math.min(a, notes.onset[i]); b = Math.max(b, notes.onset[i] + notes.duration[i]); } });
  return a <= b ? [a, b] : null;
}
// A view that shows the new notes with a little of what comes before them.
function newView(notes) {
  const span = newSpan(notes), T = Math.max(notes.seconds, 0.001);
  if (!span) return [0, T];
  return [Math.max(0, span[0] - 4), Math.min(T, Math.max(span[1] + 1, span[0] + 8))];
}

function niceStep(seconds, px) { // seconds between time labels at least ~70 px apart
  for (const s of [0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800]) if ((s / seconds) * px >= 70) return s;
  return 3600;
}

function drawRoll(canvas, notes, view, position) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height;
  ctx.clearRect(0, 0, W, H);
  if (!notes || !notes.count) return;
  const T = Math.max(notes.seconds, 0.001);
  const [v0, v1] = view || [0, T];
  const PW = W - M.left, PH = H - M.top - M.bottom;
  const X = (t) => M.left + ((t - v0) / (v1 - v0)) * PW;
  let lo = 127, hi = 0;
  notes.pitch.forEach((p, i) => { if (!notes.drum[i]) { lo = Math.min(lo, p); hi = Math.max(hi, p); } });
  if (lo > hi) { lo = 35; hi = 81; }
  lo = Math.max(0, lo - 2); hi = Math.min(127, hi + 2);
  const rowH = PH / (hi - lo + 1);
  const Y = (p) => M.top + PH - (p - lo + 1) * rowH;
  ctx.font = "11px system-ui, sans-serif"; ctx.textBaseline = "middle";
  // Pitch names: every C (every note when the rows are tall enough), with a line at each C.
  ctx.fillStyle = "#5b6476"; ctx.textAlign = "right";
  for (let p = lo; p <= hi; p++) {
    const c = p % 12 === 0;
    if (c) { ctx.strokeStyle = "#e1e5ec"; ctx.lineWidth = 1; ctx.beginPath(); ctx.moveTo(M.left, Y(p) + rowH); ctx.lineTo(W, Y(p) + rowH); ctx.stroke(); }
    if (c || rowH >= 12) ctx.fillText(pitchName(p), M.left - 4, Y(p) + rowH / 2);
  }
  ctx.save();
  ctx.beginPath(); ctx.rect(M.left, 0, PW, H); ctx.clip();
  // Bar lines and numbers (thinned so that numbers stay apart).
  const bars = notes.bars || [];
  let every = 1;
  if (bars.length > 1) { const px = (PW * (bars[bars.length - 1] - bars[0])) / (bars.length - 1) / (v1 - v0); while (px * every < 26) every *= 2; }
  ctx.textAlign = "left";
  bars.forEach((t, k) => {
    if (t < v0 - 1e-9 || t > v1) return;
    const x = X(t);
    ctx.strokeStyle = k % every === 0 ? "#c9ced8" : "#eceef2"; ctx.beginPath(); ctx.moveTo(x, M.top); ctx.lineTo(x, M.top + PH); ctx.stroke();
    if (k % every === 0) { ctx.fillStyle = "#1d2330"; ctx.fillText(String(k + 1), x + 2, M.top / 2); }
  });
  // Seconds along the bottom.
  const step = niceStep(v1 - v0, PW);
  ctx.fillStyle = "#5b6476";
  for (let t = Math.ceil(v0 / step) * step; t <= v1; t += step) {
    const x = X(t);
    ctx.fillRect(x, M.top + PH, 1, 4);
    ctx.fillText(step < 1 ? `${t.toFixed(2)} s` : (t >= 60 ? fmtTime(t) : `${t.toFixed(0)} s`), x + 2, H - M.bottom / 2 + 2);
  }
  const isNew = notes.new || null;
  const anyNew = !!(isNew && isNew.some((f) => f));
  if (!anyNew && notes.new_music) { // what a model wrote, when the notes cannot say it
    ctx.fillStyle = "rgba(224,168,0,0.14)";
    ctx.fillRect(X(notes.new_music[0]), M.top, Math.max(2, X(notes.new_music[1]) - X(notes.new_music[0])), PH);
  }
  for (let i = 0; i < notes.count; i++) {
    const t = notes.onset[i], d = notes.duration[i];
    if (t > v1 || t + d < v0) continue;
    const x = X(t), w = Math.max(1.5, (d / (v1 - v0)) * PW);
    const y = Y(notes.drum[i] ? lo : notes.pitch[i]), h = Math.max(1.5, rowH - 0.5);
    if (anyNew && isNew[i]) {
      ctx.globalAlpha = 1; ctx.fillStyle = newColour(notes, notes.track[i]); ctx.fillRect(x, y, w, h);
      ctx.strokeStyle = "#4a3a10"; ctx.lineWidth = 1; ctx.strokeRect(x + 0.5, y + 0.5, Math.max(0.5, w - 1), Math.max(0.5, h - 1));
    } else {
      ctx.fillStyle = notes.drum[i] ? "rgba(120,120,120,0.5)" : (anyNew ? "#8d97ad" : PALETTE[notes.track[i] % PALETTE.length]);
      ctx.globalAlpha = anyNew ? 0.55 : 0.35 + 0.65 * (notes.velocity[i] / 127);
      ctx.fillRect(x, y, w, h);
    }
  }
  ctx.globalAlpha = 1;
  if (position !== undefined && position !== null && position >= v0 && position <= v1) {
    ctx.strokeStyle = "#d62728"; ctx.lineWidth = 2; ctx.beginPath(); ctx.moveTo(X(position), M.top); ctx.lineTo(X(position), M.top + PH); ctx.stroke();
  }
  ctx.restore();
}

// New notes are gold; the tracks an accompaniment added each have a colour of their own.
const NEW_TRACK_COLOURS = ["#e0a800", "#1f9e89", "#c2378a", "#3f6fd8"];
function newColour(notes, track) {
  const k = (notes.new_tracks || []).findIndex((t) => t.track === track);
  return k < 0 ? "#e0a800" : NEW_TRACK_COLOURS[k % NEW_TRACK_COLOURS.length];
}
function newLegend(notes) {
  const added = notes.new_tracks || [];
  if (!added.length) return "new notes in gold";
  const names = ["gold", "teal", "magenta", "blue"];
  return "new tracks: " + added.map((t, k) => `${t.name || "track " + (t.track + 1)} in ${names[k % names.length]}`).join(", ");
}

function barAt(notes, t) { let k = 0; (notes.bars || []).forEach((b, i) => { if (b <= t + 1e-9) k = i; }); return k + 1; }

function redraw(position) {
  if (!CURRENT || !CURRENT.notes) return;
  const n = CURRENT.notes, [v0, v1] = CURRENT.view, T = Math.max(n.seconds, 0.001);
  drawRoll($("roll"), n, CURRENT.view, position);
  const whole = v1 - v0 >= T - 1e-6;
  $("scroll").disabled = whole;
  $("scroll").value = whole ? 0 : Math.round((v0 / (T - (v1 - v0))) * 1000);
  const label = `${v0.toFixed(1)}–${v1.toFixed(1)} s of ${fmtTime(T)}, bars ${barAt(n, v0)}–${barAt(n, v1)}`;
  $("view-label").textContent = whole ? `The whole piece: ${fmtTime(T)}, ${n.bars.length - 1} bars` : `Showing ${label}`;
  const fresh = (n.new || []).reduce((a, f) => a + f, 0);
  $("roll").setAttribute("aria-label", `Pianoroll of ${CURRENT.piece.name}, ${whole ? "the whole piece" : label}` +
    (fresh ? `; ${fresh} new notes (${newLegend(n)})` : ""));
  $("roll-legend").textContent = fresh ? `${fresh} new notes: ${newLegend(n)}.` : "";
}

function setView(v0, v1) {
  if (!CURRENT || !CURRENT.notes) return;
  const T = Math.max(CURRENT.notes.seconds, 0.001);
  let w = Math.min(Math.max(v1 - v0, Math.min(1, T)), T);
  v0 = Math.min(Math.max(0, v0), T - w);
  CURRENT.view = [v0, v0 + w];
  redraw();
}
function zoom(factor, at) {
  if (!CURRENT || !CURRENT.notes) return;
  const [v0, v1] = CURRENT.view, c = at === undefined ? (v0 + v1) / 2 : at;
  setView(c - (c - v0) * factor, c + (v1 - c) * factor);
}
function pan(fraction) { if (CURRENT && CURRENT.notes) { const [v0, v1] = CURRENT.view; setView(v0 + (v1 - v0) * fraction, v1 + (v1 - v0) * fraction); } }

function setupRoll() {
  const roll = $("roll");
  $("zoom-in").addEventListener("click", () => zoom(0.5));
  $("zoom-out").addEventListener("click", () => zoom(2));
  $("zoom-all").addEventListener("click", () => CURRENT && CURRENT.notes && setView(0, CURRENT.notes.seconds));
  $("zoom-new").addEventListener("click", () => { if (CURRENT && CURRENT.notes) { const [a, b] = newView(CURRENT.notes); setView(a, b); } });
  $("scroll").addEventListener("input", (e) => {
    if (!CURRENT || !CURRENT.notes) return;
    const [v0, v1] = CURRENT.view, w = v1 - v0, T = CURRENT.notes.seconds;
    setView((Number(e.target.value) / 1000) * (T - w), (Number(e.target.value) / 1000) * (T - w) + w);
  });
  const timeAt = (e) => { const r = roll.getBoundingClientRect(), x = (e.clientX - r.left) * (roll.width / r.width);
    const [v0, v1] = CURRENT.view; return v0 + ((x - M.left) / (roll.width - M.left)) * (v1 - v0); };
  roll.addEventListener("wheel", (e) => { if (!CURRENT || !CURRENT.notes) return; e.preventDefault(); zoom(e.deltaY > 0 ? 1.25 : 0.8, timeAt(e)); }, { passive: false });
  let drag = null;
  roll.addEventListener("pointerdown", (e) => { if (CURRENT && CURRENT.notes) { drag = { x: e.clientX, view: CURRENT.view.slice() }; roll.setPointerCapture(e.pointerId); } });
  roll.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const r = roll.getBoundingClientRect(), w = drag.view[1] - drag.view[0];
    const dt = ((e.clientX - drag.x) * (roll.width / r.width) / (roll.width - M.left)) * w;
    setView(drag.view[0] - dt, drag.view[1] - dt);
  });
  roll.addEventListener("pointerup", () => { drag = null; });
  roll.addEventListener("keydown", (e) => {
    const keys = { ArrowLeft: () => pan(-0.2), ArrowRight: () => pan(0.2), "+": () => zoom(0.5), "=": () => zoom(0.5), "-": () => zoom(2),
      Home: () => $("zoom-all").click(), n: () => $("zoom-new").click() };
    if (keys[e.key]) { e.preventDefault(); keys[e.key](); }
  });
}

// ------------------------------------------------------------------ pieces list
function remember(piece, parent) {
  if (!PIECES.has(piece.id)) PIECES.set(piece.id, { piece, results: [] });
  if (parent && PIECES.has(parent)) { const r = PIECES.get(parent).results; if (!r.some((p) => p.id === piece.id)) r.push(piece); }
  drawPieceList();
}
function drawPieceList() {
  const list = $("piece-list");
  list.replaceChildren(...[...PIECES.values()].map(({ piece }) => {
    const li = make("li");
    const kind = { upload: "", infill: " (span regenerated)", accompaniment: " (accompanied)" }[piece.kind] ?? " (continued)";
    const b = make("button", { type: "button", "data-id": piece.id, "aria-current": CURRENT && CURRENT.piece.id === piece.id ? "true" : "false" },
      piece.name + kind);
    b.addEventListener("click", () => show(piece));
    li.append(b);
    return li;
  }));
  $("pieces").hidden = PIECES.size < 2;
}

// ------------------------------------------------------------------ the piece
async function show(piece) {
  if (!INFO && INFO_READY) await INFO_READY.catch(() => null);
  CURRENT = { piece, notes: null, view: [0, Math.max(piece.seconds, 0.001)] };
  remember(piece, piece.parent);
  drawPieceList();
  $("main").hidden = false;
  $("piece-title").textContent = piece.name;
  const instruments = [...new Set(piece.tracks.map((t) => t.instrument))].join(", ");
  $("piece-facts").textContent = `${piece.notes} notes, ${piece.bars} bars, ${fmtTime(piece.seconds)}, ${instruments || "no instrument"}` +
    (piece.kind !== "upload" ? ` (${{ infill: "a span regenerated", accompaniment: "accompanied: every note of its melody's file kept, new tracks added" }[piece.kind] ?? "a continuation"}; its audio starts ${piece.audio_from.toFixed(0)} s in)` : "");
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
  $("zoom-new").hidden = true;
  drawRoll($("roll"), null);
  api(piece.links.notes).then((n) => {
    if (CURRENT.piece.id !== piece.id) return;
    CURRENT.notes = n;
    const span = newSpan(n);
    $("zoom-new").hidden = !span;
    CURRENT.view = span ? newView(n) : [0, Math.max(n.seconds, 0.001)]; // the new notes, scrolled into view
    redraw();
    if (span) $("roll").scrollIntoView({ behavior: "smooth", block: "center" });
  }).catch((e) => { $("view-label").textContent = "Pianoroll: " + e.message; });
  analyse(piece);
  $("gen-status").textContent = ""; $("infill-status").textContent = ""; $("accompany-status").textContent = "";
  drawResults();
  if (piece.kind === "upload") $("main").scrollIntoView({ behavior: "smooth" });
}

function analyse(piece) { loadAttribution(piece); loadSimilar(piece); loadMap(piece); }

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
    if (!CURRENT || !CURRENT.notes) return;
    const t = CURRENT.piece.audio_from + player.currentTime, [v0, v1] = CURRENT.view;
    if (!player.paused && (t > v1 || t < v0)) setView(t - (v1 - v0) * 0.1, t + (v1 - v0) * 0.9); // follow the playhead
    redraw(t);
  });
  $("play").addEventListener("click", () => player.play().catch((e) => { $("audio-note").textContent = "Cannot play: " + e.message; }));
  $("stop").addEventListener("click", () => { player.pause(); player.currentTime = 0; setPlayerState("stopped"); });
}

function showChoice(choice) {
  if (!choice) return;
  $("index-note").textContent = choice.given ? `The ${choice.index} index (${choice.reason}).` : `The ${choice.index} index, chosen from the notes: ${choice.reason}.`;
}

// ------------------------------------------------------------------ attribution
async function loadAttribution(piece) {
  const sec = $("attribution"); sec.setAttribute("aria-busy", "true");
  $("bars").replaceChildren(); $("verdict").textContent = "working…"; $("verdict").className = ""; $("attr-note").textContent = "";
  $("attr-why").replaceChildren();
  try {
    const a = await api(`${piece.links.attribution}?k=5${indexParam("&")}`, undefined, (m) => { $("verdict").textContent = m; });
    if (CURRENT.piece.id !== piece.id) return;
    showChoice(a.choice);
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
    showWhy(a);
  } catch (e) {
    if (CURRENT.piece.id !== piece.id) return;
    $("verdict").textContent = "Attribution failed: " + e.message; $("verdict").className = "error";
  } finally { sec.setAttribute("aria-busy", "false"); }
}

// Why: the descriptor features that pulled the decision between the top two composers (the
// readout is linear, so this is exact) and the nearest pieces of each in the index.
function showWhy(a) {
  const box = $("attr-why");
  if (!a.why) return;
  const [top, second] = a.why.between;
  box.append(make("p", {}, `Why ${top} rather than ${second}:`));
  const ul = make("ul");
  a.why.features.slice(0, 5).forEach((f) => {
    const sd = (f.value_sd >= 0 ? "+" : "") + f.value_sd.toFixed(1);
    ul.append(make("li", {}, `${f.feature} (${sd} sd from the training pieces) pulls toward ${f.toward}`));
  });
  box.append(ul);
  Object.entries(a.nearest || {}).forEach(([label, hits]) => {
    if (hits.length) box.append(make("p", {}, `Nearest pieces by ${label}: ` + hits.map((h) => h.title || h.id).join("; ")));
  });
}

// ------------------------------------------------------------------ similar pieces, by work
let PREVIEW = null;
async function loadSimilar(piece) {
  const sec = $("similar"); sec.setAttribute("aria-busy", "true");
  $("hits").replaceChildren(); $("sim-note").textContent = "working…"; $("sim-note").className = "note";
  try {
    const s = await api(`${piece.links.similar}?k=30${indexParam("&")}`, undefined, (m) => { $("sim-note").textContent = m; });
    if (CURRENT.piece.id !== piece.id) return;
    const byRank = new Map(s.hits.map((h) => [h.rank, h]));
    s.works.slice(0, 8).forEach((w) => {
      const li = make("li", { class: "work" });
      li.append(make("strong", {}, w.title), make("span", { class: "meta" }, ` ${w.label || ""} · distance ${w.distance.toFixed(3)}` +
        (w.hits.length > 1 ? ` · ${w.hits.length} versions` : "")));
      const perf = make("ul", { class: "perf", "aria-label": `Versions of ${w.title}` });
      w.hits.forEach((rank) => {
        const h = byRank.get(rank);
        const who = h.score ? "the score" : h.performer ? `played by ${h.performer}` : (h.id || "");
        const item = make("li", {}, `${who}${h.year ? ` (${h.year})` : ""} · ${h.split || ""} · distance ${h.distance.toFixed(3)} `);
        if (h.links && INFO.audio.available) {
          const b = make("button", { type: "button", "aria-label": `Play ${w.title}, ${who}` }, "Play");
          b.addEventListener("click", () => playPreview(h.links.audio, `${w.title}, ${who}`));
          item.append(b);
        }
        if (h.links) item.append(" ", make("a", { href: h.links.midi, download: "" }, "MIDI"));
        perf.append(item);
      });
      li.append(perf);
      $("hits").append(li);
    });
    $("sim-note").textContent = `Index: ${s.index}; the ${Math.min(8, s.works.length)} nearest works among its ${s.hits.length} nearest pieces. ` + (s.note || "");
  } catch (e) {
    if (CURRENT.piece.id !== piece.id) return;
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
  $("map-note").textContent = "placing the piece on the map… (the first map of an index may take a while)"; $("map-note").className = "note";
  try {
    const place = await api(`${piece.links.map}${indexParam("?")}`, undefined, (m) => { $("map-note").textContent = m; });
    const points = MAPS[place.index] || (MAPS[place.index] = await api(place.points, undefined, (m) => { $("map-note").textContent = m; }));
    if (CURRENT.piece.id !== piece.id) return;
    drawMap(points, place, piece);
    $("map-note").textContent = `${points.count} pieces of the ${place.index} index (t-SNE); the star is ${piece.name}` +
      (place.verdict ? `, attributed: ${place.verdict}` : "") + ".";
  } catch (e) {
    if (CURRENT.piece.id !== piece.id) return;
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
const ordinal = (n) => (n === 1 ? "next" : `${n}${n === 2 ? "nd" : n === 3 ? "rd" : "th"} in line`);

async function runJob(link, body, button, cancel, bar, st, what, unit = "tokens") {
  const parent = CURRENT.piece.id;
  button.disabled = true; bar.hidden = false; bar.removeAttribute("value"); st.textContent = "queued…"; st.className = "";
  let job = null;
  const onCancel = () => { if (job) api(`${job.links.self}/cancel`, { method: "POST" }).catch(() => {}); cancel.disabled = true; st.textContent = "cancelling…"; };
  cancel.addEventListener("click", onCancel);
  try {
    job = await api(link, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) },
      (m) => { st.textContent = m; });
    cancel.hidden = false; cancel.disabled = false;
    while (job.state === "queued" || job.state === "running") {
      if (job.state === "queued" && job.queue && job.queue.position) {
        st.textContent = `queued: ${ordinal(job.queue.position)}` + (job.queue.running ? ` (${job.queue.running} running)` : "");
      } else if (job.progress.total > 0) {
        bar.max = job.progress.total; bar.value = job.progress.done; st.textContent = `sampling: ${job.progress.done} of ${job.progress.total} ${unit}`;
      } else if (job.state === "running") st.textContent = "reading the piece…";
      await sleep(400);
      job = await api(job.links.self, undefined, (m) => { st.textContent = m; });
    }
    if (job.state === "cancelled") { st.textContent = "Cancelled" + (job.pieces.length ? `; ${job.pieces.length} ${what} kept` : "."); }
    else if (job.state === "error") throw new Error(job.error.message);
    else st.textContent = `done: ${job.pieces.length} ${what}` + (job.empty_samples ? `, ${job.empty_samples} without notes` : "");
    job.pieces.forEach((p) => remember(p, parent));
    if (CURRENT.piece.id === parent) drawResults(job.pieces.map((p) => p.id));
  } catch (err) {
    st.textContent = `Failed: ${err.message}`; st.className = "error";
  } finally {
    button.disabled = false; bar.hidden = true; cancel.hidden = true; cancel.removeEventListener("click", onCancel);
  }
}

function setupGenerate() {
  const num = (f, k) => (f.get(k) === "" || f.get(k) === null ? null : Number(f.get(k)));
  $("continue-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if (!CURRENT) return;
    const f = new FormData(e.target);
    const body = { seconds: num(f, "seconds"), n: num(f, "n"), temperature: num(f, "temperature"), top_p: num(f, "top_p"),
      seed: num(f, "seed"), prompt_seconds: num(f, "prompt_seconds"), model: f.get("model") };
    runJob(CURRENT.piece.links.continue, body, $("continue"), $("continue-cancel"), $("progress"), $("gen-status"), "continuation(s)");
  });
  $("infill-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if (!CURRENT) return;
    const f = new FormData(e.target);
    const body = { bars: `${num(f, "from")}-${num(f, "to")}`, n: num(f, "n"), candidates: num(f, "candidates"),
      temperature: num(f, "temperature"), seed: num(f, "seed"), model: f.get("model") };
    runJob(CURRENT.piece.links.infill, body, $("infill"), $("infill-cancel"), $("infill-progress"), $("infill-status"), "version(s)");
  });
  $("accompany-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if (!CURRENT) return;
    const f = new FormData(e.target);
    const chords = (f.get("chords") || "").trim();
    const body = { style: f.get("style"), pattern: f.get("pattern") || null, chords: chords || null, melody_track: num(f, "melody_track"),
      density: num(f, "density"), n: num(f, "n"), temperature: num(f, "temperature"), seed: num(f, "seed") };
    const chosen = $("accompany-style").selectedOptions[0];
    body.model = (chosen && chosen.getAttribute("data-model")) || null;
    if (body.model) body.pattern = null;  // a model writes its own texture
    runJob(CURRENT.piece.links.accompany, body, $("accompany"), $("accompany-cancel"), $("accompany-progress"), $("accompany-status"),
      "version(s)", body.model ? "windows" : "versions");
  });
  $("index").addEventListener("change", () => { if (CURRENT) analyse(CURRENT.piece); });
}

// The results made from the piece shown (each piece keeps its own), newest first.
function drawResults(fresh) {
  const list = $("results");
  const entry = CURRENT && PIECES.get(CURRENT.piece.id);
  const results = entry ? entry.results.slice().reverse() : [];
  list.replaceChildren(...results.map((p) => resultItem(p, fresh && fresh.includes(p.id))));
  $("results-note").hidden = results.length > 0;
}

function resultItem(p, fresh) {
  const li = make("li", { class: "result" + (fresh ? " fresh" : "") });
  li.append(make("strong", {}, p.name), make("span", { class: "meta" }, ` ${p.notes} notes, ${fmtTime(p.seconds)}, ${p.settings.stop ? "stopped by " + p.settings.stop : ""} `));
  const canvas = make("canvas", { width: "900", height: "180", role: "img", "aria-label": `Pianoroll of ${p.name}; the new notes in colour` });
  api(p.links.notes).then((n) => {
    const span = newSpan(n);
    drawRoll(canvas, n, newView(n));
    if (span) canvas.setAttribute("aria-label", `Pianoroll of ${p.name} from ${newView(n)[0].toFixed(0)} s; ${n.new.reduce((a, f) => a + f, 0)} new notes (${newLegend(n)})`);
  }).catch(() => {});
  li.append(canvas);
  const row = make("div", { class: "player" });
  if (INFO.audio.available) row.append(make("audio", { controls: "", preload: "none", src: p.links.audio, "aria-label": `Audio of ${p.name}` }));
  row.append(make("a", { class: "button", href: p.links.midi, download: p.name }, "Download MIDI"));
  const open = make("button", { type: "button" }, "Explore this one");
  open.addEventListener("click", () => show(p));
  row.append(open);
  li.append(row);
  return li;
}

// ------------------------------------------------------------------ start
async function start() {
  setupDrop(); setupPlayer(); setupRoll(); setupGenerate();
  try {
    INFO_READY = api("/api/info", undefined, (m) => setStatus(m));
    INFO = await INFO_READY;
    const sel = $("model");
    INFO.models.forEach((m) => sel.append(make("option", { value: m }, m)));
    INFO.indexes.forEach((i) => $("index").append(make("option", { value: i }, i)));
    if (INFO.indexes.length < 2) $("index").disabled = true;
    if (!INFO.audio.available) setStatus("Audio is not available on this server: " + INFO.audio.reason);
    INFO.infill.forEach((m) => $("infill-model").append(make("option", { value: m }, m)));
    $("infill-form").hidden = INFO.infill.length === 0;
    $("infill-note").textContent = INFO.infill.length ? "" :
      "Infilling (regenerating a span inside the piece) needs a model trained for it (partita train gpt --fim 0.5); none is loaded here.";
    if (INFO.accompany && INFO.accompany.models.length) {  // an accompaniment model served: pop by it, its notes on the learnt chords
      const m = INFO.accompany.models[0];
      $("accompany-style").prepend(make("option", { value: "pop", "data-model": m }, `pop: a piano part by ${m}`));
    }
  } catch (e) { setStatus("The server does not answer: " + e.message, true); }
}
document.addEventListener("DOMContentLoaded", start);
