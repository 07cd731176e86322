// akd-edge browser check: run the export's ONNX models under onnxruntime-web
// 1. on the sample images in samples.json, comparing the logits with the ones onnxruntime computed in Python at
//    export time;
// 2. on the worst-case examples `akd-edge verify` kept (../replay.npz, once its SHA-256 matches report.json):
//    clean and robust accuracy in this browser beside Python onnxruntime's, argmax agreement, logit difference.
// The tolerances are the ones of akd_edge/core/ort.py (samples.json carries them): fp32 must match within
// 1e-3; int8 kernels round differently between runtimes, so int8 is within tolerance while its logits stay
// within 5% of the largest |logit|, >= 99% of argmaxes agree and robust accuracy is within 1 point.
// Every name from the export (run, classes, models) goes into the page as text, never as HTML.
// The results are also left in window.akdResults for automated checks (status: running, done or error).
"use strict";

const results = { status: "running", models: {}, replay: null, error: null };
window.akdResults = results;
const TIMING_MS = 200; // time each model for at least this long: one small batch runs faster than the clock ticks
const REPLAY_BATCH = 100;

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

function className(names, index) {
  return index >= 0 && index < names.length ? String(names[index]) : String(index);
}

function pct(value) {
  return value === null ? "-" : `${(100 * value).toFixed(2)}%`;
}

// How to open the page when it was opened from a file: browsers refuse fetch() and WebAssembly there.
function httpHint() {
  const folder = decodeURIComponent(location.pathname).replace(/\/web\/(index\.html)?$/, "") || "export/NAME";
  return (
    "serve the export folder over HTTP and open the page there: " +
    `python3 -m http.server --bind 127.0.0.1 --directory ${folder} 8000, then open http://127.0.0.1:8000/web/`
  );
}

async function fetchOrHint(url) {
  try {
    return await fetch(url);
  } catch (err) {
    throw new Error(`cannot fetch ${url} (${(err && err.message) || err}): ${httpHint()}`);
  }
}

// --------------------------------------------------------------------------- comparing with Python onnxruntime

function precisionOf(name) {
  return name.includes(".int8.") ? "int8" : "fp32";
}

function logitBound(name, tol, references) {
  if (precisionOf(name) === "fp32") return tol.fp32_logit;
  let largest = 0;
  for (const rows of references) for (const row of rows) for (const v of row) largest = Math.max(largest, Math.abs(v));
  return Math.max(tol.fp32_logit, tol.int8_logit_fraction * largest);
}

// Logits of this browser against the reference ones: [{logits, reference}] sets of rows [N][classes].
function compareLogits(name, tol, sets) {
  let maxAbsDiff = 0;
  let agree = 0;
  let total = 0;
  for (const { logits, reference } of sets) {
    logits.forEach((row, i) => {
      row.forEach((v, k) => (maxAbsDiff = Math.max(maxAbsDiff, Math.abs(v - reference[i][k]))));
      if (argmax(row) === argmax(reference[i])) agree++;
      total++;
    });
  }
  if (!Number.isFinite(maxAbsDiff)) maxAbsDiff = Infinity;
  const bound = logitBound(name, tol, sets.map((set) => set.reference));
  return { max_abs_diff: maxAbsDiff, same_argmax: agree, compared: total, argmax_agreement: agree / total, bound };
}

function verdict(res, tol) {
  if (res.max_abs_diff <= tol.fp32_logit && res.same_argmax === res.compared) return "matches";
  const gap = res.robust_acc == null ? 0 : Math.abs(res.robust_acc - res.reference_robust_acc);
  const close = res.max_abs_diff <= res.bound && res.argmax_agreement >= tol.min_agreement;
  return close && gap <= tol.max_accuracy_gap + 1e-9 ? "within tolerance" : "mismatch";
}

const RANK = { matches: 0, "within tolerance": 1, mismatch: 2 };
const STYLE = { matches: "ok", "within tolerance": "warn", mismatch: "bad" };

// --------------------------------------------------------------------------- running the models

function imageTensor(data, count, shape) {
  return new ort.Tensor("float32", data, [count, ...shape]);
}

// The samples as one float32 NCHW batch in [0, 1], exactly the values the Python reference saw.
function inputBatch(samples) {
  const size = samples.input_shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(samples.samples.length * size);
  samples.samples.forEach((sample, i) => {
    if (sample.pixels.length !== size) throw new Error(`sample ${i} has ${sample.pixels.length} values, not ${size}`);
    for (let k = 0; k < size; k++) data[i * size + k] = sample.pixels[k] / samples.pixel_scale;
  });
  return imageTensor(data, samples.samples.length, samples.input_shape);
}

function rows(flat, count) {
  const classes = flat.length / count;
  const out = [];
  for (let i = 0; i < count; i++) out.push(Array.from(flat.subarray(i * classes, (i + 1) * classes)));
  return out;
}

// Milliseconds per run of `feeds`, repeated for at least TIMING_MS (and 3 runs) after one warm-up run.
async function timeRuns(session, feeds) {
  await session.run(feeds);
  let runs = 0;
  const started = performance.now();
  while (runs < 3 || performance.now() - started < TIMING_MS) {
    await session.run(feeds);
    runs++;
  }
  return { ms: (performance.now() - started) / runs, runs };
}

async function runSamples(samples, name, session, input) {
  const output = await session.run({ [samples.input_name]: input });
  const logits = rows(output[samples.output_name].data, samples.samples.length);
  const timing = await timeRuns(session, { [samples.input_name]: input });
  const res = { logits, argmax: logits.map(argmax), ms: timing.ms, timing_runs: timing.runs };
  Object.assign(res, compareLogits(name, samples.tolerances, [{ logits, reference: samples.reference[name] }]));
  res.verdict = verdict(res, samples.tolerances);
  res.matches = res.verdict === "matches";
  return res;
}

// --------------------------------------------------------------------------- the replay of verify's examples

async function sha256Hex(buffer) {
  if (!(window.crypto && crypto.subtle)) return null; // not a secure context: the check is skipped, and said so
  const digest = await crypto.subtle.digest("SHA-256", buffer);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

// replay.npz as arrays, or {missing: why} when the export was not verified yet.
async function loadReplay() {
  const reportResponse = await fetchOrHint("../report.json");
  if (!reportResponse.ok) return { missing: `../report.json: HTTP ${reportResponse.status}` };
  const report = await reportResponse.json();
  const record = (report.files || {})["replay.npz"];
  if (!record) return { missing: "not verified yet: run `akd-edge verify` on the export folder, then reload" };
  const response = await fetchOrHint("../replay.npz");
  if (!response.ok) throw new Error(`../replay.npz: HTTP ${response.status} (report.json lists it)`);
  const buffer = await response.arrayBuffer();
  const digest = await sha256Hex(buffer);
  if (digest !== null && digest !== record.sha256) {
    throw new Error("replay.npz does not match the SHA-256 report.json recorded: run `akd-edge verify` again");
  }
  return { arrays: await readNpz(buffer), sha256_checked: digest !== null };
}

// Logits [N][classes] of `session` on `count` images of `data` (float32 in [0, 1], or uint8 / 255).
async function predictAll(samples, session, data, count, scale) {
  const size = samples.input_shape.reduce((a, b) => a * b, 1);
  const logits = [];
  for (let start = 0; start < count; start += REPLAY_BATCH) {
    const n = Math.min(REPLAY_BATCH, count - start);
    const chunk = Float32Array.from(data.subarray(start * size, (start + n) * size), (v) => v / scale);
    const output = await session.run({ [samples.input_name]: imageTensor(chunk, n, samples.input_shape) });
    logits.push(...rows(output[samples.output_name].data, n));
  }
  return logits;
}

function accuracy(flags) {
  return flags.filter(Boolean).length / flags.length;
}

async function replayModel(samples, arrays, index, session) {
  const name = arrays.models.data[index];
  const labels = arrays.labels.data;
  const n = labels.length;
  const classes = arrays.clean_logits.shape[2];
  const slice = (key) => rows(arrays[key].data.subarray(index * n * classes, (index + 1) * n * classes), n);
  const size = samples.input_shape.reduce((a, b) => a * b, 1);
  const examples = arrays.examples.data.subarray(index * n * size, (index + 1) * n * size);
  const scale = arrays.images.data instanceof Uint8Array ? 255 : 1;
  const clean = await predictAll(samples, session, arrays.images.data, n, scale);
  const worst = await predictAll(samples, session, examples, n, 1);
  const reference = { clean: slice("clean_logits"), worst: slice("example_logits") };
  const attacked = arrays.attacked.data[0] === 1;
  const robustOf = (c, w) => labels.map((y, i) => argmax(c[i]) === y && argmax(w[i]) === y);
  const res = compareLogits(name, samples.tolerances, [
    { logits: clean, reference: reference.clean },
    { logits: worst, reference: reference.worst },
  ]);
  res.n = n;
  res.clean_acc = accuracy(clean.map((row, i) => argmax(row) === labels[i]));
  res.reference_clean_acc = accuracy(reference.clean.map((row, i) => argmax(row) === labels[i]));
  res.robust_acc = attacked ? accuracy(robustOf(clean, worst)) : null;
  res.reference_robust_acc = attacked ? accuracy(robustOf(reference.clean, reference.worst)) : null;
  res.verdict = verdict(res, samples.tolerances);
  return res;
}

// --------------------------------------------------------------------------- showing it

function describe(name, res) {
  const robust =
    res.replay && res.replay.robust_acc !== null
      ? `; robust accuracy ${pct(res.replay.robust_acc)} here vs ${pct(res.replay.reference_robust_acc)} in Python`
      : "";
  const worst = res.replay && res.replay.max_abs_diff > res.max_abs_diff ? res.replay : res;
  const agree = res.replay || res;
  return (
    `${name} (${precisionOf(name)}): max |logit difference| ${worst.max_abs_diff.toExponential(2)} ` +
    `(bound ${worst.bound.toExponential(2)}), same argmax on ${agree.same_argmax}/${agree.compared}${robust}`
  );
}

function headline(samples, version) {
  const entries = Object.entries(results.models);
  const counts =
    `${samples.samples.length} images` +
    (results.replay && results.replay.models ? `, ${results.replay.n} replayed worst-case examples` : "");
  const of = (v) => entries.filter(([, res]) => res.verdict === v).map(([name, res]) => describe(name, res));
  const prefix = `onnxruntime-web ${version}: ${counts}, `;
  if (of("mismatch").length) {
    return ["bad", `${prefix}MISMATCH with onnxruntime (Python) beyond tolerance: ${of("mismatch").join("; ")}`];
  }
  if (of("within tolerance").length) {
    return [
      "warn",
      `${prefix}every model agrees with onnxruntime (Python) within tolerance; computes slightly differently: ` +
        `${of("within tolerance").join("; ")}. Within the int8 tolerance: the verified figures hold here.`,
    ];
  }
  return ["ok", `${prefix}every model matches onnxruntime (Python)`];
}

function showModels(samples) {
  const body = document.querySelector("#models tbody");
  for (const [name, res] of Object.entries(results.models)) {
    const row = body.insertRow();
    cell(row, name);
    cell(row, res.max_abs_diff.toExponential(2));
    cell(row, `${res.same_argmax}/${res.logits.length}`);
    cell(row, `${res.ms.toPrecision(3)} (${samples.samples.length} images, ${res.timing_runs} runs)`);
    cell(row, res.verdict === "mismatch" ? `MISMATCH (bound ${res.bound.toExponential(1)})` : res.verdict, STYLE[res.verdict]);
  }
  document.getElementById("models").hidden = false;
}

function showReplay() {
  const note = document.getElementById("replay-note");
  if (!results.replay || results.replay.missing) {
    note.textContent = `Worst-case examples: ${results.replay ? results.replay.missing : "-"}`;
    return;
  }
  const body = document.querySelector("#replay tbody");
  for (const [name, res] of Object.entries(results.replay.models)) {
    const row = body.insertRow();
    cell(row, name);
    cell(row, String(res.n));
    cell(row, `${pct(res.clean_acc)} / ${pct(res.reference_clean_acc)}`);
    cell(row, `${pct(res.robust_acc)} / ${pct(res.reference_robust_acc)}`);
    cell(row, `${res.same_argmax}/${res.compared}`);
    cell(row, res.max_abs_diff.toExponential(2));
    cell(row, `${res.bound.toExponential(2)} (${precisionOf(name)})`);
    cell(row, res.verdict, STYLE[res.verdict]);
  }
  note.textContent =
    "Worst-case examples verify kept (../replay.npz" +
    (results.replay.sha256_checked ? ", SHA-256 checked against report.json" : ", SHA-256 not checked: not a secure context") +
    "), replayed here: this browser / Python onnxruntime.";
  document.getElementById("replay").hidden = false;
}

function drawSample(samples, sample) {
  const [c, h, w] = samples.input_shape;
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const context = canvas.getContext("2d");
  const image = context.createImageData(w, h);
  const value = (ch, p) => Math.round((255 * sample.pixels[ch * h * w + p]) / samples.pixel_scale);
  for (let p = 0; p < h * w; p++) {
    const rgb = c >= 3 ? [value(0, p), value(1, p), value(2, p)] : [value(0, p), value(0, p), value(0, p)];
    image.data.set([...rgb, 255], 4 * p);
  }
  context.putImageData(image, 0, 0);
  return canvas;
}

function showSamples(samples) {
  const table = document.getElementById("samples");
  const names = samples.class_names;
  for (const name of Object.keys(results.models)) {
    const heading = document.createElement("th");
    heading.textContent = `${name} prediction`;
    table.tHead.rows[0].appendChild(heading);
  }
  samples.samples.forEach((sample, i) => {
    const row = table.tBodies[0].insertRow();
    cell(row, String(i));
    row.insertCell().appendChild(drawSample(samples, sample));
    cell(row, sample.label === null ? "-" : className(names, sample.label));
    for (const res of Object.values(results.models)) {
      const predicted = res.argmax[i];
      const right = sample.label === null ? "" : predicted === sample.label ? "ok" : "bad";
      cell(row, className(names, predicted), right);
    }
  });
  table.hidden = false;
}

// --------------------------------------------------------------------------- main

async function checkModel(samples, name, input, replay) {
  const session = await ort.InferenceSession.create(new URL("../" + name, document.baseURI).href, {
    executionProviders: ["wasm"],
  });
  const res = await runSamples(samples, name, session, input);
  const index = replay && replay.arrays ? replay.arrays.models.data.indexOf(name) : -1;
  if (index >= 0) {
    res.replay = await replayModel(samples, replay.arrays, index, session);
    if (RANK[res.replay.verdict] > RANK[res.verdict]) res.verdict = res.replay.verdict;
  }
  res.matches = res.verdict === "matches";
  return res;
}

async function main() {
  const status = document.getElementById("status");
  try {
    if (location.protocol === "file:") throw new Error(`this page was opened from a file (file://); ${httpHint()}`);
    if (typeof ort === "undefined") {
      throw new Error("onnxruntime-web is not in web/ort/ (ort.wasm.min.js): see README.md in this folder");
    }
    ort.env.wasm.numThreads = 1;
    ort.env.wasm.wasmPaths = new URL("ort/", document.baseURI).href;
    const response = await fetchOrHint("samples.json");
    if (!response.ok) throw new Error(`samples.json: HTTP ${response.status}`);
    const samples = await response.json();
    document.title = `akd-edge browser check: ${samples.title}`;
    document.getElementById("title").textContent = document.title;
    const replay = await loadReplay();
    results.replay = replay.missing ? { missing: replay.missing } : { models: {}, sha256_checked: replay.sha256_checked };
    const input = inputBatch(samples);
    for (const name of samples.models) {
      status.textContent = `running ${name} under onnxruntime-web ${ort.env.versions.web}`;
      results.models[name] = await checkModel(samples, name, input, replay);
      if (results.models[name].replay) {
        results.replay.models[name] = results.models[name].replay;
        results.replay.n = results.models[name].replay.n;
      }
    }
    showModels(samples);
    showReplay();
    showSamples(samples);
    results.matches = Object.values(results.models).every((res) => res.matches);
    results.within_tolerance = Object.values(results.models).every((res) => res.verdict !== "mismatch");
    const [style, text] = headline(samples, ort.env.versions.web);
    status.textContent = text;
    status.className = style;
    results.status = "done";
  } catch (err) {
    results.error = String((err && err.message) || err);
    results.status = "error";
    status.textContent = `error: ${results.error}`;
    status.className = "bad";
  }
}

main();
