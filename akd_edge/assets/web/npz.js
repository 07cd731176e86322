// akd-edge browser check: read the arrays of a NumPy .npz archive (what numpy.savez and savez_compressed write)
// into typed arrays: a zip of .npy files, stored or deflated. Little-endian numbers and unicode strings only;
// anything else is refused with an error, never guessed.
"use strict";

const NPY_TYPES = {
  "|u1": Uint8Array,
  "|i1": Int8Array,
  "|b1": Uint8Array,
  "<i4": Int32Array,
  "<u4": Uint32Array,
  "<f4": Float32Array,
  "<f8": Float64Array,
  "<i8": BigInt64Array,
};

// The zip's entries from its central directory: name, compression method, sizes and local header offset.
function zipEntries(view) {
  let end = -1;
  for (let i = view.byteLength - 22; i >= Math.max(0, view.byteLength - 65557); i--) {
    if (view.getUint32(i, true) === 0x06054b50) {
      end = i;
      break;
    }
  }
  if (end < 0) throw new Error("not a zip archive (no end of central directory)");
  const count = view.getUint16(end + 10, true);
  let at = view.getUint32(end + 16, true);
  const entries = [];
  for (let k = 0; k < count; k++) {
    if (view.getUint32(at, true) !== 0x02014b50) throw new Error("corrupt zip central directory");
    const nameLength = view.getUint16(at + 28, true);
    const extraLength = view.getUint16(at + 30, true);
    const commentLength = view.getUint16(at + 32, true);
    const name = new TextDecoder().decode(new Uint8Array(view.buffer, at + 46, nameLength));
    const sizes = [view.getUint32(at + 20, true), view.getUint32(at + 24, true), view.getUint32(at + 42, true)];
    if (sizes.includes(0xffffffff)) throw new Error(`${name}: zip64 sizes are not supported here`);
    entries.push({ name, method: view.getUint16(at + 10, true), compressed: sizes[0], offset: sizes[2] });
    at += 46 + nameLength + extraLength + commentLength;
  }
  return entries;
}

async function entryBytes(view, entry) {
  const at = entry.offset;
  if (view.getUint32(at, true) !== 0x04034b50) throw new Error(`${entry.name}: corrupt zip local header`);
  const start = at + 30 + view.getUint16(at + 26, true) + view.getUint16(at + 28, true);
  const raw = new Uint8Array(view.buffer, start, entry.compressed);
  if (entry.method === 0) return raw.slice();
  if (entry.method !== 8) throw new Error(`${entry.name}: zip compression method ${entry.method} is not supported`);
  const stream = new Blob([raw]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function unicodeStrings(bytes, width, count) {
  const codes = new Uint32Array(bytes.buffer, bytes.byteOffset, width * count);
  const strings = [];
  for (let i = 0; i < count; i++) {
    let text = "";
    for (let c = 0; c < width && codes[i * width + c] !== 0; c++) text += String.fromCodePoint(codes[i * width + c]);
    strings.push(text);
  }
  return strings;
}

// One .npy file: {shape, data} with data a typed array (BigInt64 converted to Numbers) or an array of strings.
function parseNpy(name, bytes) {
  const magic = String.fromCharCode(...bytes.subarray(1, 6));
  if (bytes[0] !== 0x93 || magic !== "NUMPY") throw new Error(`${name}: not a .npy array`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerStart = bytes[6] === 1 ? 10 : 12;
  const headerLength = bytes[6] === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const header = new TextDecoder("latin1").decode(bytes.subarray(headerStart, headerStart + headerLength));
  const descr = (/'descr':\s*'([^']+)'/.exec(header) || [])[1];
  const shapeText = (/'shape':\s*\(([^)]*)\)/.exec(header) || [])[1];
  if (descr === undefined || shapeText === undefined || /'fortran_order':\s*True/.test(header)) {
    throw new Error(`${name}: unsupported .npy header ${header.trim()}`);
  }
  const shape = shapeText.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  const body = bytes.slice(headerStart + headerLength);
  const unicode = /^<U(\d+)$/.exec(descr);
  if (unicode) return { shape, data: unicodeStrings(body, Number(unicode[1]), count) };
  const Type = NPY_TYPES[descr];
  if (!Type) throw new Error(`${name}: dtype ${descr} is not supported`);
  const data = new Type(body.buffer, 0, count);
  return { shape, data: Type === BigInt64Array ? Array.from(data, Number) : data };
}

// Every array of the .npz in `buffer` (an ArrayBuffer), by name (without ".npy").
async function readNpz(buffer) {
  const view = new DataView(buffer);
  const arrays = {};
  for (const entry of zipEntries(view)) {
    if (!entry.name.endsWith(".npy")) continue;
    arrays[entry.name.slice(0, -4)] = parseNpy(entry.name, await entryBytes(view, entry));
  }
  return arrays;
}
