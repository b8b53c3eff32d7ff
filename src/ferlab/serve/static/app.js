// ferlab web page: photos and a webcam sent to POST /v1/predict; no libraries, no build step.
"use strict";

const COLORS = {  // the same colours as ferlab.annotate.COLORS
  angry: "rgb(220,50,47)", disgust: "rgb(133,153,0)", fear: "rgb(108,113,196)",
  happy: "rgb(255,193,7)", sad: "rgb(38,139,210)", surprise: "rgb(211,54,130)",
  neutral: "rgb(160,160,160)",
};
let classes = Object.keys(COLORS);  // replaced by the model's classes from /v1/models
const KEY_STORE = "ferlab.apiKey";
const CHART_SECONDS = 30;  // the timeline chart shows the last 30 s; the CSV keeps everything

const $ = (id) => document.getElementById(id);
const els = {
  key: $("api-key"), status: $("status"), faces: $("faces"), detector: $("detector"),
  file: $("file"), photo: $("photo-canvas"), video: $("video"), overlay: $("overlay"),
  timeline: $("timeline"), count: $("timeline-count"), csv: $("download-csv"),
  start: $("webcam-start"), stop: $("webcam-stop"), fps: $("fps"),
};

// ---- talking to the server ----

function authHeaders() {
  const key = els.key.value.trim();
  return key ? { "X-API-Key": key } : {};
}

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...authHeaders(), ...options.headers } });
  const body = await res.json().catch(() => ({ error: res.statusText }));
  if (res.status === 401) {
    els.key.focus();
    throw new Error("This server needs an API key: enter it at the top of the page.");
  }
  if (!res.ok) {
    const error = new Error(`${res.status}: ${body.error || res.statusText}`);
    error.retryAfter = Number(res.headers.get("Retry-After")) || 0;  // the model is loading
    throw error;
  }
  return body;
}

function predict(blob, name) {
  const form = new FormData();
  form.append("file", blob, name);
  const query = new URLSearchParams({ detector: els.detector.value });
  return api(`v1/predict?${query}`, { method: "POST", body: form });
}

async function loadModelInfo() {
  try {
    const info = await api("v1/models");
    classes = info.classes;
    const views = info.tta && info.tta !== "none" ? `, ${info.tta} TTA` : "";
    $("model-name").textContent = `model ${info.name} (${info.runtime}${views})`;
    els.detector.replaceChildren(...info.detectors.filter((d) => d !== "none").map((d) => {
      const opt = new Option(d, d);
      opt.selected = d === info.default_detector;
      return opt;
    }));
    drawLegend();
  } catch (e) {
    // a loading model's 503 carries Retry-After: ask again then; a failed load stays failed
    if (e.retryAfter) setTimeout(loadModelInfo, e.retryAfter * 1000);
    else setStatus(e.message, "error");
  }
}

function setStatus(text, state = "idle") {
  els.status.textContent = text;
  els.status.className = state === "error" ? "error" : "";
  document.body.dataset.state = state;
}

// ---- drawing results ----

function topLabel(face) {
  return classes.reduce((a, b) => (face.emotions[b] > face.emotions[a] ? b : a), classes[0]);
}

function drawBoxes(ctx, faces, scale) {
  // canvas pixels per screen pixel: lines and labels keep their size on screen
  const k = Math.max(0.5, ctx.canvas.width / (ctx.canvas.clientWidth || ctx.canvas.width));
  const line = 2 * k;
  const fontSize = Math.round(14 * k);
  ctx.lineWidth = line;
  ctx.font = `${fontSize}px system-ui, sans-serif`;
  ctx.textBaseline = "bottom";
  for (const face of faces) {
    const [x, y, w, h] = face.box.map((v) => v * scale);
    const label = topLabel(face);
    const text = `${label} ${Math.round(face.emotions[label] * 100)}%`;
    ctx.strokeStyle = ctx.fillStyle = COLORS[label] || "#fff";
    ctx.strokeRect(x, y, w, h);
    const tw = ctx.measureText(text).width + 8 * k;
    const th = fontSize + 6 * k;
    // above the box, else below it, else inside it at its top: a box the canvas's height
    // (every no_detect crop) would put the label off the canvas (as annotate.py draws it)
    const below = y + h + th <= ctx.canvas.height;
    const ty = y - th > 0 ? y - th : below ? y + h : Math.max(y, 0);
    ctx.fillRect(x - line / 2, ty, tw, th);
    ctx.fillStyle = "#000";
    ctx.fillText(text, x + 4 * k, ty + th - 2 * k);
  }
  ctx.canvas.dataset.boxes = String(faces.length);
}

function listFaces(faces) {
  els.faces.replaceChildren(...faces.map((face, i) => {
    const label = topLabel(face);
    const li = document.createElement("li");
    li.dataset.label = label;
    li.dataset.confidence = face.emotions[label].toFixed(4);
    li.dataset.box = face.box.join(",");
    const title = document.createElement("h3");
    title.textContent = `Face ${i + 1}: ${label} ${Math.round(face.emotions[label] * 100)}%`;
    li.append(title);
    for (const name of classes) {  // a bar per emotion, in the model's class order
      const p = face.emotions[name];
      const row = document.createElement("div");
      row.className = "bar";
      row.dataset.emotion = name;
      row.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="value"></span>';
      row.querySelector(".name").textContent = name;
      row.querySelector(".fill").style.cssText = `width:${(p * 100).toFixed(1)}%;background:${COLORS[name] || "#888"}`;
      row.querySelector(".value").textContent = p.toFixed(2);
      li.append(row);
    }
    return li;
  }));
}

// ---- photo mode ----

let photoId = 0;  // the latest photo: a slower reply to an earlier one must not draw over it

async function handlePhoto(file) {
  if (!file) return;
  const id = ++photoId;
  showMode("photo");
  setStatus(`Recognising ${file.name}…`, "busy");
  els.faces.replaceChildren();
  try {
    const bitmap = await createImageBitmap(file);  // honours EXIF orientation, as the server does
    if (id !== photoId) return;
    const canvas = els.photo;
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    canvas.dataset.boxes = "0";
    const ctx = canvas.getContext("2d");
    ctx.drawImage(bitmap, 0, 0);
    const result = await predict(file, file.name);
    if (id !== photoId) return;
    drawBoxes(ctx, result.faces, bitmap.width / result.size[0]);
    listFaces(result.faces);
    const n = result.faces.length;
    setStatus(`${n === 0 ? "No face" : n === 1 ? "1 face" : `${n} faces`} found in ${file.name} ` +
      `(${Math.round(result.timing_ms.total)} ms)`, "done");
  } catch (e) {
    if (id === photoId) setStatus(`Could not recognise ${file.name}: ${e.message}`, "error");
  }
}

els.file.addEventListener("change", () => handlePhoto(els.file.files[0]));
document.addEventListener("dragover", (e) => { e.preventDefault(); document.body.classList.add("dragging"); });
document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
document.addEventListener("drop", (e) => {
  e.preventDefault();
  document.body.classList.remove("dragging");
  handlePhoto(e.dataTransfer.files[0]);
});

// ---- webcam mode ----

// session: bumped by Start and Stop, so a frame still in flight from an earlier session
// neither adds to the timeline nor keeps its capture loop going
const cam = { stream: null, running: false, session: 0, t0: 0, grab: document.createElement("canvas") };
const timeline = [];  // {t: seconds since start, probs: [...classes]} for the first face

async function startWebcam() {
  try {
    cam.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (e) {
    setStatus(`No webcam: ${e.message}`, "error");
    return;
  }
  els.video.srcObject = cam.stream;
  await els.video.play();
  const id = ++cam.session;
  cam.running = true;
  cam.t0 = performance.now();
  clearTimeline();  // times restart at 0: kept points would put the chart and CSV back in time
  els.start.disabled = true;
  els.stop.disabled = false;
  setStatus("Webcam running", "live");
  tick(id);
}

function stopWebcam() {
  cam.running = false;
  cam.session++;
  if (cam.stream) cam.stream.getTracks().forEach((t) => t.stop());
  cam.stream = null;
  els.start.disabled = false;
  els.stop.disabled = true;
  setStatus(`Webcam stopped; ${timeline.length} points in the timeline`, "done");
}

async function tick(id) {  // one frame in flight at a time, at most `fps` a second
  if (id !== cam.session) return;
  const started = performance.now();
  try {
    await sendFrame(id);
  } catch (e) {
    if (id === cam.session) setStatus(e.message, "error");
  }
  const wait = 1000 / Number(els.fps.value) - (performance.now() - started);
  setTimeout(() => tick(id), Math.max(0, wait));
}

async function sendFrame(id) {
  const { videoWidth: w, videoHeight: h } = els.video;
  if (!w || !h) return;
  cam.grab.width = w;
  cam.grab.height = h;
  cam.grab.getContext("2d").drawImage(els.video, 0, 0, w, h);
  const t = (performance.now() - cam.t0) / 1000;
  const blob = await new Promise((resolve) => cam.grab.toBlob(resolve, "image/jpeg", 0.85));
  const result = await predict(blob, "frame.jpg");
  if (id !== cam.session) return;
  els.overlay.width = w;
  els.overlay.height = h;
  const ctx = els.overlay.getContext("2d");
  ctx.clearRect(0, 0, w, h);
  drawBoxes(ctx, result.faces, w / result.size[0]);
  listFaces(result.faces);
  if (result.faces.length) {
    timeline.push({ t, probs: classes.map((c) => result.faces[0].emotions[c]) });
    els.count.textContent = String(timeline.length);
    els.csv.disabled = false;
    drawTimeline();
  }
  setStatus(`Webcam: ${result.faces.length} face(s), ${Math.round(result.timing_ms.total)} ms`, "live");
}

function drawLegend() {
  $("legend").replaceChildren(...classes.map((c) => {
    const span = document.createElement("span");
    span.innerHTML = "<i></i>";
    span.firstChild.style.background = COLORS[c] || "#888";
    span.append(c);
    return span;
  }));
}

function drawTimeline() {
  const canvas = els.timeline;
  const ctx = canvas.getContext("2d");
  const { width: W, height: H } = canvas;
  const pad = { l: 34, r: 8, t: 8, b: 20 };
  ctx.clearRect(0, 0, W, H);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#666";
  ctx.strokeStyle = "#ddd";
  ctx.lineWidth = 1;
  for (const v of [0, 0.5, 1]) {  // horizontal grid and probability axis
    const y = pad.t + (1 - v) * (H - pad.t - pad.b);
    ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(W - pad.r, y); ctx.stroke();
    ctx.fillText(v.toFixed(1), 4, y + 4);
  }
  const end = timeline.length ? timeline[timeline.length - 1].t : 0;
  const start = Math.max(0, end - CHART_SECONDS);
  const span = Math.max(end - start, 1);
  const X = (t) => pad.l + ((t - start) / span) * (W - pad.l - pad.r);
  const Y = (p) => pad.t + (1 - p) * (H - pad.t - pad.b);
  ctx.fillText(`${start.toFixed(0)} s`, pad.l, H - 4);
  ctx.fillText(`${end.toFixed(0)} s`, W - pad.r - 30, H - 4);
  const shown = timeline.filter((p) => p.t >= start);
  classes.forEach((c, i) => {
    ctx.strokeStyle = COLORS[c] || "#888";
    ctx.lineWidth = 2;
    ctx.beginPath();
    shown.forEach((p, j) => (j ? ctx.lineTo(X(p.t), Y(p.probs[i])) : ctx.moveTo(X(p.t), Y(p.probs[i]))));
    ctx.stroke();
  });
  canvas.dataset.points = String(timeline.length);
}

function clearTimeline() {
  timeline.length = 0;
  els.count.textContent = "0";
  els.csv.disabled = true;
  drawTimeline();
}

function timelineCsv() {
  const rows = [["time_s", ...classes].join(",")];
  for (const p of timeline) rows.push([p.t.toFixed(3), ...p.probs.map((v) => v.toFixed(4))].join(","));
  return rows.join("\n") + "\n";
}

function downloadCsv() {
  const url = URL.createObjectURL(new Blob([timelineCsv()], { type: "text/csv" }));
  const a = Object.assign(document.createElement("a"), { href: url, download: "ferlab-timeline.csv" });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

els.start.addEventListener("click", startWebcam);
els.stop.addEventListener("click", stopWebcam);
els.csv.addEventListener("click", downloadCsv);
$("timeline-clear").addEventListener("click", clearTimeline);

// ---- modes, API key, start-up ----

function showMode(mode) {
  document.body.dataset.mode = mode;
  $("photo-panel").hidden = mode !== "photo";
  $("webcam-panel").hidden = mode !== "webcam";
  $("mode-photo").classList.toggle("active", mode === "photo");
  $("mode-webcam").classList.toggle("active", mode === "webcam");
  if (mode === "photo" && cam.running) stopWebcam();
}

$("mode-photo").addEventListener("click", () => showMode("photo"));
$("mode-webcam").addEventListener("click", () => showMode("webcam"));
els.key.value = localStorage.getItem(KEY_STORE) || "";
els.key.addEventListener("change", () => {
  localStorage.setItem(KEY_STORE, els.key.value.trim());
  loadModelInfo();
});
drawLegend();
drawTimeline();
loadModelInfo();
