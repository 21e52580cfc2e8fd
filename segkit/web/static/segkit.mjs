// segkit in the browser, the parts without a DOM or a runtime: read a model file's own metadata, and
// prepare pixels / map masks back exactly as segkit's Python Predictor does, so that the page and
// `Predictor.predict` give the same mask for the same image. Plain ES module: the page and Node both import it.

/** A model file that the page cannot use; the message is meant for the person who picked the file. */
export class SegkitModelError extends Error {
  constructor(message) {
    super(message);
    this.name = 'SegkitModelError';
  }
}

// ------------------------------------------------------------------------------------------------
// ONNX metadata: a tiny protobuf reader for the top level of ModelProto. Only what is needed is decoded:
// ir_version (1, varint), graph (7, bytes: skipped) and metadata_props (14, repeated StringStringEntryProto
// {key = 1, value = 2}). The graph's megabytes are stepped over, never parsed.

class ProtobufError extends Error {}

function readVarint(buf, pos) {
  let value = 0;
  let scale = 1;
  for (let i = 0; i < 10; i++) {
    if (pos >= buf.length) throw new ProtobufError('truncated varint');
    const b = buf[pos++];
    value += (b & 0x7f) * scale;
    if (b < 0x80) return [value, pos];
    scale *= 128;
  }
  throw new ProtobufError('varint longer than 10 bytes');
}

/** Calls visit(field, wireType, value) for every field of one message; value is a number or a Uint8Array. */
function readFields(buf, visit) {
  let pos = 0;
  while (pos < buf.length) {
    let tag;
    [tag, pos] = readVarint(buf, pos);
    const field = Math.floor(tag / 8);
    const wire = tag % 8;
    if (field === 0) throw new ProtobufError('field number 0');
    let value;
    if (wire === 0) {
      [value, pos] = readVarint(buf, pos);
    } else if (wire === 1 || wire === 5) {
      const n = wire === 1 ? 8 : 4;
      if (pos + n > buf.length) throw new ProtobufError('truncated fixed-size field');
      value = buf.subarray(pos, pos + n);
      pos += n;
    } else if (wire === 2) {
      let len;
      [len, pos] = readVarint(buf, pos);
      if (pos + len > buf.length) throw new ProtobufError(`field ${field} runs past the end of the file`);
      value = buf.subarray(pos, pos + len);
      pos += len;
    } else {
      throw new ProtobufError(`wire type ${wire} (not used by ONNX)`);
    }
    visit(field, wire, value);
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * The metadata_props of an ONNX file as {key: string value}, plus what tells a model from other bytes.
 * Throws SegkitModelError naming `fileName` when the bytes are not an ONNX model.
 */
export function readOnnxProps(bytes, fileName = 'the model file') {
  const buf = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const props = {};
  let irVersion = null;
  let hasGraph = false;
  try {
    readFields(buf, (field, wire, value) => {
      if (field === 1 && wire === 0) irVersion = value;
      else if (field === 7 && wire === 2) hasGraph = true;
      else if (field === 14 && wire === 2) {
        let key = null;
        let val = '';
        readFields(value, (f, w, v) => {
          if (f === 1 && w === 2) key = utf8.decode(v);
          else if (f === 2 && w === 2) val = utf8.decode(v);
        });
        if (key !== null) props[key] = val;
      }
    });
  } catch (err) {
    if (err instanceof ProtobufError || err instanceof TypeError) {
      throw new SegkitModelError(`${fileName} is not an ONNX model: its bytes are not a protobuf message (${err.message}).`);
    }
    throw err;
  }
  if (buf.length === 0) throw new SegkitModelError(`${fileName} is not an ONNX model: the file is empty.`);
  if (irVersion === null || !hasGraph) {
    throw new SegkitModelError(`${fileName} is not an ONNX model: it has no ${irVersion === null ? 'ir_version' : 'graph'}.`);
  }
  return { props, irVersion };
}

const EXPORT_HINT = 'python -m segkit.export checkpoint=<best.pt> output=<model.onnx> preprocess=true argmax=true';

/** JSON-decode every value, as segkit.export.metadata.decode_metadata does (non-JSON stays a string). */
function decodeProps(props) {
  const out = {};
  for (const [k, v] of Object.entries(props)) {
    try {
      out[k] = JSON.parse(v);
    } catch {
      out[k] = v;
    }
  }
  return out;
}

function isIntPair(x, min) {
  return Array.isArray(x) && x.length === 2 && x.every((v) => Number.isInteger(v) && v >= min);
}

/**
 * The segkit metadata of an ONNX file's bytes, checked for what the page needs: uint8 RGB in, uint8 mask out,
 * a fixed input size, one colour per class. Every problem is a SegkitModelError naming the file and the key.
 */
export function readSegkitMetadata(bytes, fileName = 'the model file') {
  const { props } = readOnnxProps(bytes, fileName);
  const meta = decodeProps(props);
  if (meta.format !== 'segkit-onnx') {
    const what = Object.keys(props).length ? `its metadata has no format "segkit-onnx"` : 'it has no metadata at all';
    throw new SegkitModelError(`${fileName} is an ONNX model but not a segkit export (${what}). Export one with: ${EXPORT_HINT}`);
  }
  const bad = (key, why) => new SegkitModelError(`${fileName}: metadata ${key}=${JSON.stringify(meta[key])} ${why}.`);
  if (meta.input_kind !== 'uint8' || meta.output_kind !== 'mask') {
    throw new SegkitModelError(
      `${fileName} takes ${meta.input_kind} input and returns ${meta.output_kind}: the web page needs an export ` +
        `that takes RGB pixels and returns the class mask. Export it again with preprocess=true argmax=true.`,
    );
  }
  if (meta.input_layout !== undefined && meta.input_layout !== 'NHWC') throw bad('input_layout', 'must be "NHWC"');
  if (!isIntPair(meta.input_size, 1)) throw bad('input_size', 'must be [height, width]');
  const names = meta.class_names;
  if (!Array.isArray(names) || names.length === 0 || names.length > 256) throw bad('class_names', 'must list 1 to 256 names');
  const pal = meta.palette;
  if (!Array.isArray(pal) || pal.length !== names.length || !pal.every((c) => Array.isArray(c) && c.length === 3 && c.every((v) => Number.isInteger(v) && v >= 0 && v <= 255))) {
    throw bad('palette', `must hold one [r, g, b] colour (0-255) for each of the ${names.length} classes`);
  }
  for (const key of ['mean', 'std']) {
    if (!Array.isArray(meta[key]) || meta[key].length !== 3 || !meta[key].every((v) => typeof v === 'number')) {
      throw bad(key, 'must be three numbers');
    }
  }
  if (meta.batch !== undefined && meta.batch !== null && !(Number.isInteger(meta.batch) && meta.batch >= 1)) {
    throw bad('batch', 'must be null or a positive integer');
  }
  return {
    ...meta,
    class_names: names.map(String),
    batch: meta.batch ?? null,
    model_name: String(meta.model_name ?? ''),
    precision: String(meta.precision ?? 'fp32'),
  };
}

// ------------------------------------------------------------------------------------------------
// Geometry, as segkit.inference.predictor: fit the image inside input_size with its aspect kept, scale it
// with OpenCV's INTER_LINEAR (reproduced to the bit for uint8), pad bottom/right with the mean colour;
// the mask's valid part is scaled back to the image with OpenCV's INTER_NEAREST.

/** Python's round(): halves go to the even neighbour. */
export function roundHalfEven(x) {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** The largest [h, w] with the image's aspect ratio that fits inside target [th, tw] (Predictor's fit_size). */
export function fitSize(h, w, th, tw) {
  const scale = Math.min(th / h, tw / w);
  return [Math.max(1, Math.min(th, roundHalfEven(h * scale))), Math.max(1, Math.min(tw, roundHalfEven(w * scale)))];
}

/** The padding colour: the mean in 0-255, rounded as numpy does. */
export function meanFill(mean) {
  return mean.map((m) => Math.min(255, Math.max(0, roundHalfEven(m * 255))));
}

// OpenCV's fixed-point bilinear coefficients (11 bits); positions in float32 as OpenCV computes them. Along x
// the border samples collapse to one pixel; along y OpenCV keeps the fraction and clamps the row index.
function linearTaps(dst, src, collapseBorder) {
  const scale = 1 / (dst / src);
  const i0 = new Int32Array(dst);
  const i1 = new Int32Array(dst);
  const c0 = new Int32Array(dst);
  const c1 = new Int32Array(dst);
  for (let d = 0; d < dst; d++) {
    let f = Math.fround((d + 0.5) * scale - 0.5);
    let s = Math.floor(f);
    f = Math.fround(f - s);
    if (collapseBorder) {
      if (s < 0) {
        f = 0;
        s = 0;
      }
      if (s >= src - 1) {
        f = 0;
        s = src - 1;
      }
      i0[d] = s;
      i1[d] = Math.min(s + 1, src - 1);
    } else {
      i0[d] = Math.min(Math.max(s, 0), src - 1);
      i1[d] = Math.min(Math.max(s + 1, 0), src - 1);
    }
    c0[d] = roundHalfEven(Math.fround(Math.fround(1 - f) * 2048));
    c1[d] = roundHalfEven(Math.fround(f * 2048));
  }
  return { i0, i1, c0, c1 };
}

/**
 * Bilinear resize of 8-bit pixels, equal to cv2.resize(..., INTER_LINEAR) bit for bit.
 * src: sh x sw pixels of `srcChannels` bytes each (RGBA from a canvas: 4); the first `channels` are used.
 * Writes dh x dw x channels into dst starting at dstOffset with a row stride of dstStride bytes.
 */
export function resizeBilinear(src, sh, sw, srcChannels, dst, dh, dw, channels = 3, dstStride = dw * channels, dstOffset = 0) {
  const xt = linearTaps(dw, sw, true);
  const yt = linearTaps(dh, sh, false);
  const rowLen = dw * channels;
  const rows = new Map(); // source row -> horizontally resized row (Int32, coefficients x 2048)
  const hrow = (sy) => {
    let r = rows.get(sy);
    if (r) return r;
    r = new Int32Array(rowLen);
    const base = sy * sw * srcChannels;
    for (let x = 0; x < dw; x++) {
      const p0 = base + xt.i0[x] * srcChannels;
      const p1 = base + xt.i1[x] * srcChannels;
      const a0 = xt.c0[x];
      const a1 = xt.c1[x];
      for (let c = 0; c < channels; c++) r[x * channels + c] = src[p0 + c] * a0 + src[p1 + c] * a1;
    }
    if (rows.size > 4) rows.clear();
    rows.set(sy, r);
    return r;
  };
  for (let y = 0; y < dh; y++) {
    const h0 = hrow(yt.i0[y]);
    const h1 = hrow(yt.i1[y]);
    const b0 = yt.c0[y];
    const b1 = yt.c1[y];
    const o = dstOffset + y * dstStride;
    for (let i = 0; i < rowLen; i++) {
      // OpenCV's SIMD vertical pass: 16-bit high products of (row >> 4), then (+2) >> 2
      const v = (((b0 * (h0[i] >> 4)) >> 16) + ((b1 * (h1[i] >> 4)) >> 16) + 2) >> 2;
      dst[o + i] = v < 0 ? 0 : v > 255 ? 255 : v;
    }
  }
  return dst;
}

/**
 * The model input of one picture: uint8 H x W x 3 (input_size), the picture fitted inside with its aspect kept
 * and the rest the mean colour. rgba: height x width x 4 bytes (ImageData.data). Returns {data, valid: [vh, vw]}.
 */
export function prepareInput(rgba, height, width, meta, channelsIn = 4) {
  const [H, W] = meta.input_size;
  const [vh, vw] = fitSize(height, width, H, W);
  const data = new Uint8Array(H * W * 3);
  if (vh !== H || vw !== W) {
    const fill = meanFill(meta.mean);
    for (let i = 0; i < H * W; i++) {
      data[3 * i] = fill[0];
      data[3 * i + 1] = fill[1];
      data[3 * i + 2] = fill[2];
    }
  }
  if (vh === height && vw === width) {
    for (let y = 0; y < vh; y++) {
      for (let x = 0; x < vw; x++) {
        const s = (y * width + x) * channelsIn;
        const d = (y * W + x) * 3;
        data[d] = rgba[s];
        data[d + 1] = rgba[s + 1];
        data[d + 2] = rgba[s + 2];
      }
    }
  } else {
    resizeBilinear(rgba, height, width, channelsIn, data, vh, vw, 3, W * 3, 0);
  }
  return { data, valid: [vh, vw] };
}

/**
 * The mask of the picture: the valid vh x vw corner of the model's H x W mask (row stride W), scaled to
 * height x width with cv2.resize's INTER_NEAREST rule.
 */
export function maskToImage(mask, W, valid, height, width) {
  const [vh, vw] = valid;
  const out = new Uint8Array(height * width);
  const xs = new Int32Array(width);
  const fx = 1 / (width / vw);
  for (let x = 0; x < width; x++) xs[x] = Math.min(Math.floor(x * fx), vw - 1);
  const fy = 1 / (height / vh);
  for (let y = 0; y < height; y++) {
    const sy = vh === height ? y : Math.min(Math.floor(y * fy), vh - 1);
    const row = sy * W;
    const o = y * width;
    if (vw === width) out.set(mask.subarray(row, row + width), o);
    else for (let x = 0; x < width; x++) out[o + x] = mask[row + xs[x]];
  }
  return out;
}

/** RGBA pixels of a mask in the palette (ids without a colour: black), alpha 255. */
export function colorize(mask, palette, out = new Uint8ClampedArray(mask.length * 4)) {
  const lut = new Uint8Array(256 * 3);
  palette.forEach((c, i) => lut.set(c, 3 * i));
  for (let i = 0; i < mask.length; i++) {
    const k = 3 * mask[i];
    out[4 * i] = lut[k];
    out[4 * i + 1] = lut[k + 1];
    out[4 * i + 2] = lut[k + 2];
    out[4 * i + 3] = 255;
  }
  return out;
}

/** Pixel count of each class id in a mask. */
export function histogram(mask, numClasses) {
  const counts = new Array(Math.max(numClasses, 1)).fill(0);
  for (let i = 0; i < mask.length; i++) if (mask[i] < counts.length) counts[mask[i]]++;
  return counts;
}
