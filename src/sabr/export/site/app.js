// sabr's web app: the recogniser and the elevator on the camera, with onnxruntime-web.
// Everything it needs comes from app.json (written by `sabr export --format web` from the run's metadata).
//
// Hooks for tests and tools, on window.sabr:
//   ready / error / backend / camera     state of the page
//   classify(data, n) -> {logits, probs} the model on n input tensors (flat float array, n x C x S x S)
//   preprocess(rgba, width, roi) -> array the training preprocessing of the crop roi of an RGBA frame
//   frameIndex = (ImageData) => number   optional: names each camera frame (default: its arrival number)
//   frames                               per-frame results {n, index, top1, probs, known, label, confidence,
//                                        latency_ms}
//   elevator                             the car (its .log holds the events)

import { centeredRoi, clampRoi, preprocess } from "./preprocess.js";
import { StableGesture, TemporalSmoother, argmax, judge, softmax, top3 } from "./decision.js";
import { Elevator } from "./elevator.js";

const $ = (id) => document.getElementById(id);
const MAX_FRAMES_KEPT = 20000;
const hooks = (window.sabr = { ready: false, error: null, backend: null, camera: "off", frames: [], frameIndex: null });

function notice(text) {
  $("notice").textContent = text;
  $("notice").hidden = !text;
}

async function loadModel(config) {
  const base = new URL(config.runtime.path, location.href).href;
  let ort;
  try {
    ort = await import(base + config.runtime.module);
  } catch (e) {
    throw new Error(`the runtime onnxruntime-web ${config.runtime.version} is missing ` +
      `(${base}${config.runtime.module}): ` +
      "run `npm install` in the site folder, or export again with npm installed.");
  }
  ort.env.wasm.wasmPaths = base;
  ort.env.wasm.numThreads = 1; // one small frame at a time, as `sabr recognize --threads 1`
  let backend = "wasm";
  try {
    if (navigator.gpu && (await navigator.gpu.requestAdapter())) backend = "webgpu";
  } catch (e) { /* no WebGPU: WebAssembly */ }
  let session;
  try {
    session = await ort.InferenceSession.create(config.model, { executionProviders: [backend] });
  } catch (e) {
    if (backend === "wasm") throw e;
    backend = "wasm";
    session = await ort.InferenceSession.create(config.model, { executionProviders: ["wasm"] });
  }
  const { channels: c, image_size: s } = config.preprocess;
  const run = async (data, n) => {
    const input = new ort.Tensor("float32", Float32Array.from(data), [n, c, s, s]);
    const out = await session.run({ [session.inputNames[0]]: input });
    return (out.logits ?? out[session.outputNames[0]]).data; // raw logits: the OOD score needs them
  };
  return { run, backend };
}

// The recogniser + elevator state, fed one camera frame at a time.
class App {
  constructor(config, model) {
    const d = config.decision, st = config.settings;
    this.config = config;
    this.model = model;
    this.smoother = new TemporalSmoother(st.window, d.threshold);
    this.stable = new StableGesture(st.stable_frames, st.min_confidence ?? d.threshold);
    this.car = new Elevator(config.classes.length, st.floors_per_second, st.door_seconds);
    this.roi = null;
    this.count = 0;
    this.latencies = [];
    hooks.elevator = this.car;
  }

  async frame(image) {
    const { width: w, height: h } = image;
    if (!this.roi || this.size !== `${w}x${h}`) {
      this.roi = centeredRoi(w, h, this.config.settings.roi_fraction);
      this.size = `${w}x${h}`;
    }
    const t0 = performance.now();
    const x = preprocess(image.data, w, this.roi, this.config.preprocess);
    const logits = await this.model.run(x, 1);
    const latency = performance.now() - t0;
    const { probs, evidence, known } = judge(logits, this.config.decision);
    const smoothed = this.smoother.update(evidence);
    const floor = this.stable.update(smoothed);
    if (floor !== null) this.car.request(floor);
    const index = hooks.frameIndex ? hooks.frameIndex(image) : this.count;
    hooks.frames.push({ n: this.count++, index, top1: argmax(probs), probs: Array.from(probs), known,
                        label: smoothed.label, confidence: smoothed.confidence, latency_ms: latency });
    if (hooks.frames.length > MAX_FRAMES_KEPT) hooks.frames.shift();
    this.latencies = [...this.latencies.slice(-99), latency];
    this.show(probs, smoothed, latency);
  }

  show(probs, smoothed, latency) {
    const names = this.config.classes;
    $("top3").replaceChildren(...top3(probs).map(([k, p]) => {
      const li = document.createElement("li");
      li.textContent = `${names[k]}  ${(100 * p).toFixed(1)}%`;
      return li;
    }));
    const conf = `${(100 * smoothed.confidence).toFixed(0)}%`;
    $("claimed").textContent = smoothed.label === null ? `none (${conf})` : `${names[smoothed.label]} (${conf})`;
    const sorted = [...this.latencies].sort((a, b) => a - b);
    const median = sorted[Math.floor(sorted.length / 2)];
    $("latency").textContent =
      `${latency.toFixed(2)} ms (median of the last ${sorted.length}: ${median.toFixed(2)} ms)`;
  }
}

function drawView(canvas, source, roi) {
  const ctx = canvas.getContext("2d");
  ctx.drawImage(source, 0, 0, canvas.width, canvas.height);
  if (!roi) return;
  ctx.strokeStyle = "#6c6";
  ctx.lineWidth = Math.max(2, canvas.width / 200);
  ctx.strokeRect(roi.x, roi.y, roi.width, roi.height);
}

// Drag the ROI with the pointer (sabr.apps.RoiDragger): press inside the box, move, release.
function enableDrag(canvas, app) {
  let grab = null;
  const at = (e) => {
    const r = canvas.getBoundingClientRect();
    return [Math.round(((e.clientX - r.left) * canvas.width) / r.width),
            Math.round(((e.clientY - r.top) * canvas.height) / r.height)];
  };
  canvas.addEventListener("pointerdown", (e) => {
    const [px, py] = at(e), b = app.roi;
    if (b && px >= b.x && px < b.x + b.width && py >= b.y && py < b.y + b.height) grab = [px - b.x, py - b.y];
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!grab) return;
    const [px, py] = at(e);
    app.roi = clampRoi({ ...app.roi, x: px - grab[0], y: py - grab[1] }, canvas.width, canvas.height);
  });
  for (const end of ["pointerup", "pointerleave"]) canvas.addEventListener(end, () => { grab = null; });
}

function cameraMessage(e) {
  const where = "The camera needs this page to be served from localhost (`sabr serve` in the site folder) " +
    "or over HTTPS";
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
    return `No camera: this page was opened from ${location.origin}, which is neither localhost nor HTTPS. ${where}.`;
  }
  if (e?.name === "NotAllowedError" || e?.name === "SecurityError") {
    return `No camera permission: allow the camera for this page and reload. ${where}.`;
  }
  if (e?.name === "NotFoundError" || e?.name === "OverconstrainedError") {
    return `No camera was found: connect one and reload. ${where}.`;
  }
  return `The camera could not be opened (${e?.name}: ${e?.message}). ${where}.`;
}

async function startCamera(app) {
  const video = $("video"), view = $("view");
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) throw new Error(cameraMessage(null));
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  } catch (e) {
    hooks.camera = e.name;
    throw new Error(cameraMessage(e));
  }
  video.srcObject = stream;
  await video.play();
  hooks.camera = "on";
  const grab = document.createElement("canvas");
  const ctx = grab.getContext("2d", { willReadFrequently: true });
  enableDrag(view, app);
  let busy = false;
  const next = () => (video.requestVideoFrameCallback
    ? video.requestVideoFrameCallback(onFrame) : requestAnimationFrame(onFrame));
  async function onFrame() {
    next();
    const w = video.videoWidth, h = video.videoHeight;
    if (busy || !w || !h) return;
    busy = true;
    try {
      if (grab.width !== w || grab.height !== h) [grab.width, grab.height, view.width, view.height] = [w, h, w, h];
      ctx.drawImage(video, 0, 0);
      await app.frame(ctx.getImageData(0, 0, w, h));
      drawView(view, grab, app.roi);
    } catch (e) {
      hooks.error = String(e);
      notice(`The model failed on a frame: ${e}`);
    } finally {
      busy = false;
    }
  }
  next();
}

// The elevator panel, advanced on the wall clock.
function runElevator(car, classes) {
  const shaft = $("shaft"), carDiv = $("car"), n = car.floors;
  const rows = classes.map((name, f) => {
    const row = document.createElement("div");
    row.className = "floor";
    row.style.height = `${100 / n}%`;
    row.style.bottom = `${(100 * f) / n}%`;
    row.textContent = String(name) === String(f) ? `floor ${f}` : `${f} ${name}`;
    shaft.appendChild(row);
    return row;
  });
  carDiv.style.height = `${100 / n}%`;
  let last = performance.now();
  setInterval(() => {
    const now = performance.now();
    car.step(Math.min((now - last) / 1000, 1));
    last = now;
    carDiv.style.bottom = `${(100 * car.position) / n}%`;
    carDiv.className = (car.moving ? "moving " : "") + (car.doorsOpen ? "open" : "");
    rows.forEach((row, f) => row.classList.toggle("pending", car.pending.includes(f)));
    const state = car.doorsOpen ? "doors open" : car.moving ? `moving ${car.direction > 0 ? "up" : "down"}` : "idle";
    $("state").textContent = `t=${car.t.toFixed(1)} s, floor ${car.currentFloor}, ${state}`;
    $("queue").textContent = car.pending.join(" ") || "-";
    $("events").replaceChildren(...car.log.slice(-8).reverse().map((e) => {
      const li = document.createElement("li");
      li.textContent = `${e.t.toFixed(1)} s ${e.event} ${e.floor}`;
      return li;
    }));
  }, 50);
}

async function main() {
  const config = await (await fetch("app.json")).json();
  const model = await loadModel(config);
  const app = new App(config, model);
  const c = config.preprocess, info = config.model_info;
  hooks.backend = model.backend;
  hooks.classify = async (data, n) => {
    const logits = await model.run(data, n), k = logits.length / n;
    const rows = Array.from({ length: n }, (_, i) => Array.from(logits.slice(i * k, (i + 1) * k)));
    return { logits: rows, probs: rows.map((r) => Array.from(softmax(r, config.decision.temperature))) };
  };
  hooks.preprocess = (rgba, width, roi) => Array.from(preprocess(Uint8Array.from(rgba), width, roi, c));
  $("model").textContent = `${config.name}${info.shrunk ? " (shrunk)" : ""}: ${config.classes.length} classes, ` +
    `${info.params.toLocaleString("en")} parameters, ${(info.onnx_bytes / 1024).toFixed(0)} KiB ONNX, input ` +
    `${c.channels}x${c.image_size}x${c.image_size}; claims at ${(100 * config.decision.threshold).toFixed(0)}% ` +
    `(temperature ${config.decision.temperature.toPrecision(3)}` +
    `${config.decision.ood.score ? `, OOD check ${config.decision.ood.score}` : ""}); ` +
    `onnxruntime-web ${config.runtime.version} on ${model.backend}`;
  runElevator(app.car, config.classes);
  hooks.ready = true;
  try {
    await startCamera(app);
  } catch (e) {
    if (hooks.camera === "off" || hooks.camera === "on") hooks.camera = "unavailable";
    notice(e.message || String(e));
  }
}

main().catch((e) => {
  hooks.error = hooks.error || String(e.message || e);
  notice(e.message || String(e));
});
