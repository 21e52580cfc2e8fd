// The page: load a segkit ONNX export with ONNX Runtime Web, segment a picture, a video file or the webcam,
// draw the mask over it in the model's palette. Everything the model needs to know (classes, colours,
// input size, mean) comes from the model file's own metadata (segkit.mjs).
import * as sk from './segkit.mjs';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

// Read by people (the page) and by tests and benchmarks (window.segkit).
const api = {
  state: 'starting', // starting | loading | ready | error
  error: null, // the readable message on the page, or null
  loads: 0, // model loads finished, successful or not
  frames: 0, // frames segmented since the page opened
  info: {}, // backend, threads, crossOriginIsolated, runtime version
  model: null, // the loaded model's metadata
  last: null, // {seq, width, height, modelMs, totalMs, source, classes}
};
window.segkit = api;

let ort = null;
let config = { models: [], webgpu: false, sample: null, ort_version: '' };
let session = null;
let meta = null;
let ep = 'wasm';
let lastMask = null;
let queue = Promise.resolve(); // one session.run at a time
let loopToken = 0; // bumped to stop the running video/webcam loop
let stream = null;
let currentPicture = null; // {bitmap, name} of the last still picture, re-run when the model changes
let mode = null; // 'picture' | 'video' | 'webcam' while one is shown

const work = document.createElement('canvas');
const workCtx = work.getContext('2d', { willReadFrequently: true });
const colours = document.createElement('canvas');
const coloursCtx = colours.getContext('2d');
const view = $('view');
const viewCtx = view.getContext('2d');
const video = $('video');

// ------------------------------------------------------------------------------------------- errors
function showError(message) {
  api.error = message;
  $('error').textContent = message;
  $('error').hidden = false;
}

function clearError() {
  api.error = null;
  $('error').hidden = true;
  $('error').textContent = '';
}

function firstLine(text) {
  return String(text ?? '').split('\n').find((l) => l.trim()) ?? '';
}

/** One readable sentence for an error thrown while doing `what`. */
function readable(err, what) {
  if (err instanceof sk.SegkitModelError) return err.message;
  const msg = firstLine(err && err.message ? err.message : err);
  return `${what}: ${msg || 'unknown error'}`;
}

window.addEventListener('unhandledrejection', (ev) => showError(readable(ev.reason, 'unexpected error')));
window.addEventListener('error', (ev) => showError(readable(ev.error ?? ev.message, 'unexpected error')));

function serialise(task) {
  const next = queue.then(task, task);
  queue = next.catch(() => {});
  return next;
}

// ------------------------------------------------------------------------------------------ runtime
async function chooseBackend() {
  const want = params.get('backend') ?? 'auto';
  if (want !== 'wasm' && config.webgpu && navigator.gpu) {
    try {
      if (await navigator.gpu.requestAdapter()) return 'webgpu';
    } catch {
      // no adapter: plain WASM below
    }
  }
  return 'wasm';
}

function threadCount() {
  if (!globalThis.crossOriginIsolated) return 1; // SharedArrayBuffer, and so threads, need isolation
  const asked = Number.parseInt(params.get('threads') ?? '', 10);
  if (Number.isInteger(asked) && asked >= 1) return Math.min(asked, 16);
  return Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1));
}

function backendLabel(threads) {
  if (ep === 'webgpu') return 'WebGPU (operators it lacks on WASM)';
  if (threads > 1) return `WASM SIMD, ${threads} threads (cross-origin isolated)`;
  return globalThis.crossOriginIsolated ? 'WASM SIMD, 1 thread' : 'WASM SIMD, 1 thread (not cross-origin isolated: no threads)';
}

async function loadRuntime() {
  ep = await chooseBackend();
  const file = ep === 'webgpu' ? 'ort.webgpu.min.mjs' : 'ort.wasm.min.mjs';
  try {
    ort = await import(`./ort/${file}`);
  } catch (err) {
    throw new sk.SegkitModelError(
      `ONNX Runtime Web did not load from ort/${file} (${firstLine(err.message)}). Build the app again with python -m segkit.web build.`,
    );
  }
  const threads = threadCount();
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.wasmPaths = new URL('ort/', location.href).href;
  api.info = {
    backend: backendLabel(threads),
    executionProvider: ep,
    threads,
    crossOriginIsolated: globalThis.crossOriginIsolated === true,
    webgpuAvailable: Boolean(navigator.gpu),
    runtime: `onnxruntime-web ${config.ort_version || ''}`.trim(),
  };
  $('backend').textContent = api.info.backend;
}

async function createSession(bytes) {
  try {
    return await ort.InferenceSession.create(bytes, { executionProviders: [ep], graphOptimizationLevel: 'all' });
  } catch (err) {
    if (ep !== 'webgpu') throw err;
    ep = 'wasm'; // a graph WebGPU cannot take still runs on the CPU
    api.info.executionProvider = ep;
    api.info.backend = `${backendLabel(api.info.threads)}, WebGPU failed`;
    $('backend').textContent = api.info.backend;
    return ort.InferenceSession.create(bytes, { executionProviders: ['wasm'], graphOptimizationLevel: 'all' });
  }
}

// ------------------------------------------------------------------------------------------- models
async function fetchBytes(url) {
  const res = await fetch(url);
  if (!res.ok) throw new sk.SegkitModelError(`${url} could not be fetched (HTTP ${res.status}).`);
  return new Uint8Array(await res.arrayBuffer());
}

function baseName(path) {
  return String(path).split(/[\\/]/).pop();
}

/** Load a model from a URL of the app or from a File the user picked; errors end up on the page. */
async function loadModel(source) {
  const name = source instanceof Blob ? source.name : baseName(source);
  api.state = 'loading';
  $('model-info').textContent = `loading ${name}…`;
  try {
    const bytes = source instanceof Blob ? new Uint8Array(await source.arrayBuffer()) : await fetchBytes(source);
    const m = sk.readSegkitMetadata(bytes, name);
    let s;
    try {
      s = await createSession(bytes);
    } catch (err) {
      throw new sk.SegkitModelError(`${name}: ONNX Runtime Web could not load it (${firstLine(err.message)}).`);
    }
    await serialise(async () => {
      if (session) await session.release();
      session = s;
      meta = { ...m, file: name, bytes: bytes.length };
    });
    api.model = meta;
    clearError();
    renderModel();
    api.state = 'ready';
    if (mode === 'picture' && currentPicture) await segmentPicture(currentPicture);
  } catch (err) {
    api.state = session ? 'ready' : 'error';
    showError(readable(err, `${name} could not be loaded`));
    renderModel();
  } finally {
    api.loads += 1;
  }
}

function renderModel() {
  if (!meta) {
    $('model-info').textContent = 'no model loaded';
    return;
  }
  const [h, w] = meta.input_size;
  $('model-info').textContent = `${meta.model_name || meta.file} · ${meta.precision} · input ${h}×${w} · ${(meta.bytes / 1e6).toFixed(1)} MB · ${meta.file}`;
  $('input-size').textContent = `${h} × ${w}`;
  const legend = $('legend');
  legend.replaceChildren(
    ...meta.class_names.map((name, i) => {
      const li = document.createElement('li');
      li.dataset.id = String(i);
      const sw = document.createElement('span');
      sw.className = 'swatch';
      sw.style.background = `rgb(${meta.palette[i].join(',')})`;
      const label = document.createElement('span');
      label.className = 'name';
      label.textContent = name;
      const share = document.createElement('span');
      share.className = 'share';
      li.append(sw, label, share);
      return li;
    }),
  );
}

function renderLegendShares(mask) {
  const counts = sk.histogram(mask, meta.class_names.length);
  const present = [];
  for (const li of $('legend').children) {
    const id = Number(li.dataset.id);
    const share = counts[id] / mask.length;
    li.classList.toggle('absent', counts[id] === 0);
    li.querySelector('.share').textContent = counts[id] ? `${(100 * share).toFixed(share < 0.001 ? 2 : 1)}%` : '';
    if (counts[id]) present.push(meta.class_names[id]);
  }
  return present;
}

// -------------------------------------------------------------------------------------- segmenting
async function segment(rgba, height, width) {
  return serialise(async () => {
    if (!session) throw new sk.SegkitModelError('No model is loaded: pick one above.');
    const t0 = performance.now();
    const { data, valid } = sk.prepareInput(rgba, height, width, meta);
    const [H, W] = meta.input_size;
    const n = meta.batch ?? 1; // a fixed-batch graph gets copies of the picture, as the Predictor fills batches
    let feed = data;
    if (n > 1) {
      feed = new Uint8Array(n * data.length);
      for (let i = 0; i < n; i++) feed.set(data, i * data.length);
    }
    const input = new ort.Tensor('uint8', feed, [n, H, W, 3]);
    const t1 = performance.now();
    const outputs = await session.run({ [session.inputNames[0]]: input });
    const t2 = performance.now();
    const out = outputs[session.outputNames[0]];
    if (out.type !== 'uint8' || out.data.length < H * W) {
      throw new sk.SegkitModelError(`${meta.file} returned ${out.type} ${JSON.stringify(out.dims)}, not a uint8 ${H}×${W} mask.`);
    }
    const mask = sk.maskToImage(out.data.subarray(0, H * W), W, valid, height, width);
    return { mask, modelMs: t2 - t1, totalMs: performance.now() - t0 };
  });
}

function composite() {
  if (!lastMask) return;
  viewCtx.globalAlpha = 1;
  viewCtx.drawImage(work, 0, 0);
  viewCtx.globalAlpha = Number($('opacity').value) / 100;
  viewCtx.drawImage(colours, 0, 0);
  viewCtx.globalAlpha = 1;
}

/** Segment what `drawable` shows (width x height pixels) and draw the overlay; returns the timings. */
async function processFrame(drawable, width, height, sourceName) {
  if (work.width !== width || work.height !== height) {
    work.width = width;
    work.height = height;
  }
  workCtx.drawImage(drawable, 0, 0, width, height);
  const pixels = workCtx.getImageData(0, 0, width, height);
  const r = await segment(pixels.data, height, width);
  if (colours.width !== width || colours.height !== height) {
    colours.width = width;
    colours.height = height;
  }
  coloursCtx.putImageData(new ImageData(sk.colorize(r.mask, meta.palette), width, height), 0, 0);
  if (view.width !== width || view.height !== height) {
    view.width = width;
    view.height = height;
  }
  lastMask = r.mask;
  composite();
  $('placeholder').hidden = true;
  const classes = renderLegendShares(r.mask);
  api.frames += 1;
  api.last = { seq: api.frames, width, height, modelMs: r.modelMs, totalMs: r.totalMs, source: sourceName, classes, model: meta.file };
  $('model-ms').textContent = `${r.modelMs.toFixed(1)} ms`;
  $('total-ms').textContent = `${r.totalMs.toFixed(1)} ms`;
  $('image-size').textContent = `${height} × ${width}`;
  return r;
}

/** The last mask as base64 (H x W uint8 trainIds, row-major), for tests. */
api.maskBase64 = () => {
  if (!lastMask) return null;
  let s = '';
  for (let i = 0; i < lastMask.length; i += 0x8000) s += String.fromCharCode.apply(null, lastMask.subarray(i, i + 0x8000));
  return btoa(s);
};

// ----------------------------------------------------------------------------------------- sources
function stopLoop() {
  loopToken += 1;
  if (stream) {
    for (const t of stream.getTracks()) t.stop();
    stream = null;
  }
  video.pause();
  video.removeAttribute('src');
  video.srcObject = null;
  mode = null;
  $('stop').disabled = true;
  $('fps').textContent = '–';
}

async function segmentPicture(picture) {
  try {
    await processFrame(picture.bitmap, picture.bitmap.width, picture.bitmap.height, picture.name);
    $('fps').textContent = '– (still picture)';
  } catch (err) {
    showError(readable(err, `${picture.name} could not be segmented`));
  }
}

async function openPicture(blob, name) {
  stopLoop();
  let bitmap;
  try {
    // raw pixel values as OpenCV reads them: no colour-profile conversion
    bitmap = await createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  } catch {
    showError(`${name} is not a picture this browser can decode.`);
    return;
  }
  clearError();
  currentPicture = { bitmap, name };
  mode = 'picture';
  await segmentPicture(currentPicture);
}

async function runVideo(sourceName) {
  const token = ++loopToken;
  $('stop').disabled = false;
  let previous = null;
  let fps = null;
  while (token === loopToken) {
    if (video.readyState >= 2 && video.videoWidth > 0) {
      try {
        await processFrame(video, video.videoWidth, video.videoHeight, sourceName);
      } catch (err) {
        showError(readable(err, `${sourceName} could not be segmented`));
        stopLoop();
        return;
      }
      const now = performance.now();
      if (previous !== null) {
        const inst = 1000 / (now - previous);
        fps = fps === null ? inst : 0.8 * fps + 0.2 * inst;
        $('fps').textContent = fps.toFixed(1);
        api.last.fps = fps;
      }
      previous = now;
    }
    await new Promise((resolve) => requestAnimationFrame(resolve));
  }
}

async function openVideo(file) {
  stopLoop();
  clearError();
  currentPicture = null;
  mode = 'video';
  video.src = URL.createObjectURL(file);
  video.loop = true;
  video.muted = true;
  try {
    await video.play();
  } catch {
    showError(`${file.name} cannot be played in this browser (its format or codec is not supported).`);
    stopLoop();
    return;
  }
  await runVideo(file.name);
}

async function openWebcam() {
  stopLoop();
  clearError();
  currentPicture = null;
  if (!navigator.mediaDevices?.getUserMedia) {
    showError('This browser gives no camera access here (the page must be served from localhost or over https).');
    return;
  }
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 1280 }, height: { ideal: 720 } }, audio: false });
  } catch (err) {
    showError(`The webcam is not available (${err.name}: ${firstLine(err.message)}).`);
    return;
  }
  mode = 'webcam';
  video.srcObject = stream;
  await video.play();
  await runVideo('webcam');
}

// ------------------------------------------------------------------------------------- benchmarking
/** Timings of session.run alone on one fixed random picture: {median, min, mean, times} in ms. */
api.benchmark = async ({ runs = 10, warmup = 3 } = {}) =>
  serialise(async () => {
    const [H, W] = meta.input_size;
    const n = meta.batch ?? 1;
    const data = new Uint8Array(n * H * W * 3);
    let x = 12345;
    for (let i = 0; i < data.length; i++) {
      x = (1103515245 * x + 12345) >>> 0;
      data[i] = x >>> 24;
    }
    const feeds = { [session.inputNames[0]]: new ort.Tensor('uint8', data, [n, H, W, 3]) };
    for (let i = 0; i < warmup; i++) await session.run(feeds);
    const times = [];
    for (let i = 0; i < runs; i++) {
      const t = performance.now();
      await session.run(feeds);
      times.push(performance.now() - t);
    }
    const sorted = [...times].sort((a, b) => a - b);
    const mid = sorted.length >> 1;
    const median = sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
    return { median, min: sorted[0], mean: times.reduce((a, b) => a + b, 0) / times.length, times, ...api.info };
  });

// ------------------------------------------------------------------------------------------- wiring
function wire() {
  $('opacity').addEventListener('input', () => {
    $('opacity-value').textContent = `${$('opacity').value}%`;
    composite();
  });
  $('model-select').addEventListener('change', (ev) => loadModel(ev.target.value));
  $('model-file').addEventListener('change', (ev) => {
    const file = ev.target.files[0];
    ev.target.value = '';
    if (file) loadModel(file);
  });
  $('media-file').addEventListener('change', (ev) => {
    const file = ev.target.files[0];
    ev.target.value = '';
    if (!file) return;
    if (file.type.startsWith('video/')) openVideo(file);
    else openPicture(file, file.name);
  });
  $('webcam').addEventListener('click', () => openWebcam());
  $('stop').addEventListener('click', () => stopLoop());
}

async function main() {
  wire();
  try {
    const res = await fetch('app.json');
    if (!res.ok) throw new Error(`app.json: HTTP ${res.status}`);
    config = await res.json();
  } catch (err) {
    showError(`This folder is not a segkit web app (${firstLine(err.message)}). Build one with python -m segkit.web build.`);
    api.state = 'error';
    return;
  }
  if (config.title) document.title = config.title;
  for (const m of config.models) {
    const opt = document.createElement('option');
    opt.value = m.file;
    opt.textContent = m.label;
    $('model-select').append(opt);
  }
  try {
    await loadRuntime();
  } catch (err) {
    showError(readable(err, 'ONNX Runtime Web could not start'));
    api.state = 'error';
    return;
  }
  const first = params.get('model') ?? config.models[0]?.file;
  if (!first) {
    api.state = 'error';
    showError('This app holds no model: open a segkit .onnx export with "Open model…".');
    return;
  }
  $('model-select').value = first;
  await loadModel(first);
  if (config.sample && session && !currentPicture) {
    try {
      await openPicture(new Blob([await fetchBytes(config.sample)]), baseName(config.sample));
    } catch (err) {
      showError(readable(err, `${config.sample} could not be shown`));
    }
  }
}

main();
