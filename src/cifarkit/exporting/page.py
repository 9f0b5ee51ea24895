"""The web page of a site that :func:`~cifarkit.exporting.programs.export` writes with
``format="web"``: one HTML file, its script inline, that classifies pictures with onnxruntime-web.

What the page does, in order: refuses to run from ``file://`` (and says how to serve the folder);
reads ``model.json``; fetches ``model.onnx`` and checks its sha256 against ``model.json``; loads
the runtime (the bundled files, or the pinned release from a CDN with Subresource Integrity);
runs with as many threads as cross-origin isolation allows (one without it, and it says so).
``window.cifarkit.ready`` is a promise that settles when all that is done (rejecting with the
reason, which the page shows too), and ``await window.cifarkit.classify(sources)`` takes picture
URLs, ``File`` or ``Blob`` objects and returns one ``{label, probabilities, unknown, ms}`` per
picture, the probabilities in the order of ``model.json``'s ``classes``. The pictures are decoded
by the browser without colour conversion and handed to the program as raw uint8 RGB pixels at
their own size: the program resizes and normalizes them itself, as in Python.
"""

from __future__ import annotations

import html
import json
from typing import Any

__all__ = ["render"]


def render(config: dict[str, Any], title: str) -> str:
    """The page, with ``config`` (what the script needs before ``model.json``: the runtime's files
    and their hashes) inlined as JSON."""
    data = json.dumps(config, sort_keys=True).replace("</", "<\\/")  # never ends the script element
    return _PAGE.replace("__TITLE__", html.escape(title)).replace("__CONFIG__", data)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
  body { font: 16px/1.45 system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; color: #1b1b1b; }
  h1 { font-size: 1.5rem; }
  #drop { display: block; border: 2px dashed #6b7280; border-radius: .5rem; padding: 1.5rem; text-align: center; cursor: pointer; }
  #drop:focus-within, #drop.over { border-color: #1d4ed8; background: #eff6ff; }
  #status { margin: 1rem 0; padding: .5rem .75rem; border-radius: .4rem; background: #f3f4f6; }
  #status.error { background: #fee2e2; color: #7f1d1d; }
  .result { display: flex; gap: 1rem; align-items: flex-start; border-top: 1px solid #e5e7eb; padding: .75rem 0; }
  .result img { width: 96px; height: 96px; object-fit: contain; background: #f9fafb; image-rendering: pixelated; }
  .result ol { margin: 0; padding-left: 1.25rem; }
  .unknown { color: #92400e; font-weight: 600; }
  button { font: inherit; padding: .35rem .8rem; }
  video { max-width: 100%; display: none; }
</style>
</head>
<body>
<h1>__TITLE__</h1>
<p id="status" role="status" aria-live="polite">Loading the model…</p>
<label id="drop" for="files">Choose pictures, or drop them here
  <input id="files" type="file" accept="image/*" multiple>
</label>
<p><button id="camera" type="button" hidden>Use the camera</button> <button id="snap" type="button" hidden>Classify this frame</button></p>
<video id="video" playsinline muted></video>
<section id="results" aria-live="polite"></section>
<script type="application/json" id="cifarkit-config">__CONFIG__</script>
<script type="module">
const config = JSON.parse(document.getElementById("cifarkit-config").textContent);
const status = document.getElementById("status");
const say = (text, error = false) => { status.textContent = text; status.classList.toggle("error", error); };
const hex = (buffer) => Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");

async function fetchChecked(url, integrity) {
  const response = await fetch(url, integrity ? { integrity, mode: "cors" } : {});
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status} (is the whole folder served?)`);
  return response;
}

async function load() {
  if (location.protocol === "file:") {
    throw new Error("This page was opened as a file, and browsers do not let a file's page load a model. "
      + "Serve the folder instead: run `cifarkit serve " + config.folder + "` (or `python -m http.server` in it) "
      + "and open the address it prints, such as http://127.0.0.1:8000/.");
  }
  const meta = await (await fetchChecked("model.json")).json();
  const bytes = await (await fetchChecked("model.onnx")).arrayBuffer();
  const digest = hex(await crypto.subtle.digest("SHA-256", bytes));
  if (digest !== meta.sha256) {
    throw new Error(`model.onnx does not match model.json (sha256 ${digest}, expected ${meta.sha256}): `
      + "the file was changed or damaged; export the model again.");
  }
  const runtime = config.runtime;
  for (const file of [runtime.module, runtime.glue]) {  // Subresource Integrity for the modules (CDN)
    const link = Object.assign(document.createElement("link"), { rel: "modulepreload", href: file.url });
    if (file.integrity) { link.integrity = file.integrity; link.crossOrigin = "anonymous"; }
    document.head.append(link);
  }
  const ort = await import(runtime.module.url);
  const wasm = await (await fetchChecked(runtime.wasm.url, runtime.wasm.integrity)).arrayBuffer();
  ort.env.wasm.wasmBinary = wasm;
  ort.env.wasm.wasmPaths = { mjs: new URL(runtime.glue.url, location.href).href };
  const threads = self.crossOriginIsolated ? Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1)) : 1;
  ort.env.wasm.numThreads = threads;
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  const where = runtime.bundled ? "bundled" : "from " + new URL(runtime.module.url).host;
  say(`Ready: ${meta.classes ? meta.classes.length + " classes" : "unnamed classes"}, onnxruntime-web ${meta.onnxruntime_web} (${where}), `
    + `${threads} thread${threads === 1 ? "" : "s"}${self.crossOriginIsolated ? "" : " (the server sends no cross-origin isolation headers)"}.`);
  return { ort, session, meta, threads };
}

async function pixelsOf(source) {
  const blob = typeof source === "string" ? await (await fetchChecked(source)).blob() : source;
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d", { colorSpace: "srgb", willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  const rgba = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const rgb = new Uint8Array(bitmap.width * bitmap.height * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) { rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2]; }
  return { rgb, height: bitmap.height, width: bitmap.width, blob };
}

const ready = load();
ready.catch((error) => say(String(error.message || error), true));

async function classify(sources) {
  const { ort, session, meta } = await ready;
  const answers = [];
  for (const source of Array.from(sources)) {
    const picture = await pixelsOf(source);
    const start = performance.now();
    const input = new ort.Tensor("uint8", picture.rgb, [1, picture.height, picture.width, 3]);
    const output = await session.run({ pixels: input });
    const probabilities = Array.from(output.probabilities.data);
    const ms = performance.now() - start;
    const best = probabilities.indexOf(Math.max(...probabilities));
    const unknown = meta.reject_below != null && probabilities[best] < meta.reject_below;
    const label = unknown ? null : (meta.classes ? meta.classes[best] : String(best));
    answers.push({ label, index: best, probabilities, unknown, ms, blob: picture.blob });
  }
  return answers;
}

function show(answer, name) {
  const { meta } = window.cifarkit;
  const row = document.createElement("article");
  row.className = "result";
  const image = Object.assign(document.createElement("img"), { src: URL.createObjectURL(answer.blob), alt: name });
  const text = document.createElement("div");
  const head = document.createElement("p");
  head.textContent = answer.unknown ? `unknown (below ${meta.reject_below})` : answer.label;
  if (answer.unknown) head.className = "unknown";
  const list = document.createElement("ol");
  const order = answer.probabilities.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]).slice(0, 3);
  for (const [p, i] of order) {
    const item = document.createElement("li");
    item.textContent = `${meta.classes ? meta.classes[i] : i}: ${(100 * p).toFixed(1)}%`;
    list.append(item);
  }
  const time = document.createElement("p");
  time.textContent = `${name}: ${answer.ms.toFixed(1)} ms`;
  text.append(head, list, time);
  row.append(image, text);
  document.getElementById("results").prepend(row);
}

async function classifyAndShow(files) {
  try {
    const answers = await classify(files);
    answers.forEach((answer, i) => show(answer, files[i].name || "camera"));
  } catch (error) { say(String(error.message || error), true); }
}

window.cifarkit = {
  ready: ready.then((loaded) => { window.cifarkit.meta = loaded.meta; window.cifarkit.threads = loaded.threads; return loaded.meta; }),
  classify: async (sources) => (await classify(sources)).map(({ blob, ...answer }) => answer),
};
const input = document.getElementById("files");
input.addEventListener("change", () => classifyAndShow(Array.from(input.files)));
const drop = document.getElementById("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault(); drop.classList.remove("over");
  classifyAndShow(Array.from(event.dataTransfer.files).filter((f) => f.type.startsWith("image/")));
});
const camera = document.getElementById("camera"), snap = document.getElementById("snap"), video = document.getElementById("video");
if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) camera.hidden = false;
camera.addEventListener("click", async () => {
  try {
    video.srcObject = await navigator.mediaDevices.getUserMedia({ video: true });
    video.style.display = "block"; await video.play(); snap.hidden = false;
  } catch (error) { say("The camera is not available: " + (error.message || error), true); }
});
snap.addEventListener("click", async () => {
  const canvas = new OffscreenCanvas(video.videoWidth, video.videoHeight);
  canvas.getContext("2d").drawImage(video, 0, 0);
  const blob = await canvas.convertToBlob({ type: "image/png" });
  classifyAndShow([Object.assign(blob, { name: "camera" })]);
});
</script>
</body>
</html>
"""
