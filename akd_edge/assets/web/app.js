// akd-edge browser check: run the export's ONNX models under onnxruntime-web on the images in samples.json,
// show the predictions, and compare the logits with the ones onnxruntime computed in Python at export time.
// Every name from the export (run, classes, models) goes into the page as text, never as HTML.
// The results are also left in window.akdResults for automated checks (status: running, done or error).
"use strict";

const results = { status: "running", models: {}, error: null };
window.akdResults = results;

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

// The samples as one float32 NCHW batch in [0, 1], exactly the values the Python reference saw.
function inputBatch(samples) {
  const [c, h, w] = samples.input_shape;
  const size = c * h * w;
  const data = new Float32Array(samples.samples.length * size);
  samples.samples.forEach((sample, i) => {
    if (sample.pixels.length !== size) throw new Error(`sample ${i} has ${sample.pixels.length} values, not ${size}`);
    for (let k = 0; k < size; k++) data[i * size + k] = sample.pixels[k] / samples.pixel_scale;
  });
  return new ort.Tensor("float32", data, [samples.samples.length, c, h, w]);
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

async function runModel(samples, name, input) {
  const session = await ort.InferenceSession.create(new URL("../" + name, document.baseURI).href, {
    executionProviders: ["wasm"],
  });
  const started = performance.now();
  const output = await session.run({ [samples.input_name]: input });
  const ms = performance.now() - started;
  const flat = output[samples.output_name].data;
  const classes = flat.length / samples.samples.length;
  const logits = [];
  for (let i = 0; i < samples.samples.length; i++) logits.push(Array.from(flat.subarray(i * classes, (i + 1) * classes)));
  const reference = samples.reference[name];
  let maxAbsDiff = 0;
  let sameArgmax = 0;
  logits.forEach((row, i) => {
    row.forEach((v, k) => (maxAbsDiff = Math.max(maxAbsDiff, Math.abs(v - reference[i][k]))));
    if (argmax(row) === argmax(reference[i])) sameArgmax++;
  });
  if (!Number.isFinite(maxAbsDiff)) maxAbsDiff = Infinity;
  const matches = maxAbsDiff < samples.tolerance && sameArgmax === logits.length;
  return { logits, argmax: logits.map(argmax), max_abs_diff: maxAbsDiff, same_argmax: sameArgmax, matches, ms };
}

function showModels(samples) {
  const body = document.querySelector("#models tbody");
  for (const [name, res] of Object.entries(results.models)) {
    const row = body.insertRow();
    cell(row, name);
    cell(row, res.max_abs_diff.toExponential(2));
    cell(row, `${res.same_argmax}/${res.logits.length}`);
    cell(row, res.ms.toFixed(1));
    cell(row, res.matches ? "matches" : `MISMATCH (tolerance ${samples.tolerance})`, res.matches ? "ok" : "bad");
  }
  document.getElementById("models").hidden = false;
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

async function main() {
  const status = document.getElementById("status");
  try {
    if (typeof ort === "undefined") {
      throw new Error("onnxruntime-web is not in web/ort/ (ort.wasm.min.js): see README.md in this folder");
    }
    ort.env.wasm.numThreads = 1;
    ort.env.wasm.wasmPaths = new URL("ort/", document.baseURI).href;
    const response = await fetch("samples.json");
    if (!response.ok) throw new Error(`samples.json: HTTP ${response.status}`);
    const samples = await response.json();
    document.title = `akd-edge browser check: ${samples.title}`;
    document.getElementById("title").textContent = document.title;
    const input = inputBatch(samples);
    for (const name of samples.models) {
      status.textContent = `running ${name} under onnxruntime-web ${ort.env.versions.web}`;
      results.models[name] = await runModel(samples, name, input);
    }
    showModels(samples);
    showSamples(samples);
    results.matches = Object.values(results.models).every((res) => res.matches);
    status.textContent =
      `onnxruntime-web ${ort.env.versions.web}: ${samples.samples.length} images, ` +
      (results.matches ? "every model matches onnxruntime (Python)" : "MISMATCH with onnxruntime (Python)");
    status.className = results.matches ? "ok" : "bad";
    results.status = "done";
  } catch (err) {
    results.error = String((err && err.message) || err);
    results.status = "error";
    status.textContent = `error: ${results.error}`;
    status.className = "bad";
  }
}

main();
