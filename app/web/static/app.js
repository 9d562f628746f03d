// sharp-serve web page: a photo in, a 3D Gaussian splat scene out, rendered with Spark on three.js.
//
// Flow: the photo is uploaded at once (XMLHttpRequest, for upload progress); the server predicts; the
// scene comes back (SPZ, or on a phone the smallest format the server offers: SOG when it has it) and is
// rendered from the photo's own viewpoint, then the user can orbit.
// Two transports: the jobs API (POST /jobs, then server-sent events, then GET the result) when the
// server's JSON info lists `POST /jobs`, else one `POST /predict/<format>` request.
// A job's scene can be reopened from its link (`?job=<id>`, put in the address bar once the job exists)
// on any device while the job's results exist.
//
// Test contract: document.body.dataset.state is one of idle, uploading, queued, running,
// loading-scene, ready, error; dataset.frames counts frames rendered of the current scene and
// dataset.visible is "1" once a frame shows splats (dataset.firstFrameMs: from the drop to that frame);
// dataset.preview is "shown" once the server's preview render was displayed while the scene loaded;
// dataset.rendering is "1" while frames are still to be drawn (a drag easing out, a sort just finished);
// dataset.viewDegrees: the angle between the camera's view and the photo's, in the last frame.

const $ = (id) => document.getElementById(id);
const body = document.body;
const KEY_STORAGE = "sharp-serve.api-key";
const SCENE_EXTENSIONS = ["ply", "spz", "splat", "sog"];
const DOWNLOADS = [
  // [name in the server's formats and job results, label, sync endpoint, extra form fields, file extension]
  ["spz", "SPZ (compact)", "predict/spz", {}, ".spz"],
  ["ply", "PLY (reference)", "predict/ply", {}, ".ply"],
  ["ply_vertex", "PLY (vertex only, for viewers)", "predict/ply", { vertex_only: "true" }, ".vertex.ply"], // = /predict/ply_vertex
  ["splat", ".splat", "predict/splat", {}, ".splat"],
  ["sog", "SOG (smallest)", "predict/sog", {}, ".sog"],
];
// The scene formats the renderer reads from the server, smallest file first: a phone takes the first one
// the server offers, a wide screen SPZ (finer positions than SOG's).
const SHOWN_FORMATS_SMALLEST_FIRST = ["sog", "spz"];
// Whether a job has reached a status after which nothing changes (the server's JSON info lists them; the page
// uses jobs only when it has that info).
const isFinal = (job) => page.info.job_final_statuses.includes(job.status);
// A drag of one pixel turns the scene by this many degrees (200 px: 60 degrees), whatever the canvas size.
const DRAG_DEGREES_PER_PX = 0.3;
// Motion below this per frame is not drawn: a drag's easing-out stops there (its rest is under 0.2 degrees).
const STILL_DEGREES_PER_FRAME = 0.05;
const NARROW_SCREEN = "(max-width: 760px)"; // = the narrow layout's media query in style.css
const PHONE = `${NARROW_SCREEN}, (pointer: coarse)`;

const page = {
  info: null, // the server's JSON info (GET / with Accept: application/json)
  infoLoaded: null, // Promise: settles once `info` and `jobs` are known (or the request failed)
  jobs: false, // the server offers POST /jobs
  run: 0, // id of the current action; callbacks of older ones are ignored
  abort: null, // cancels the current action's requests
  retry: null, // repeats the last action (after an API key is entered, or "Try again")
  startedAt: 0,
  ticker: 0,
};

// ------------------------------------------------------------------------------------------ state

class ApiError extends Error {
  constructor(status, code, message, requestId = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
  }
}

class Superseded extends Error {}

function setState(state, text, { progress = undefined, detail = "" } = {}) {
  body.dataset.state = state;
  $("status-text").textContent = text;
  $("status-detail").textContent = detail;
  const bar = $("progress");
  if (progress === undefined) {
    bar.hidden = true;
  } else {
    bar.hidden = false;
    if (progress === null) bar.removeAttribute("value"); // indeterminate
    else bar.value = Math.max(0, Math.min(1, progress));
  }
  if (state !== "error") {
    $("error").hidden = true;
    $("auth-form").hidden = true;
    delete body.dataset.errorCode;
  }
}

function showError(error) {
  stopTicker();
  const api = error instanceof ApiError;
  body.dataset.errorCode = api ? error.code : "client_error";
  setState("error", api && error.status === 401 ? "An API key is needed." : "Something went wrong.");
  body.dataset.state = "error";
  $("error").hidden = false;
  $("error-message").textContent = error.message || String(error);
  $("error-request").textContent = api && error.requestId ? `Request id: ${error.requestId}` : "";
  // Retrying helps when the server or the network failed, not when the request itself was refused.
  const retryable = !api || error.status === 0 || error.status >= 500 || error.status === 429;
  $("retry").hidden = !page.retry || !retryable || error.code === "renderer_missing";
  if (!retryable && error.status !== 401) {
    $("error-request").textContent += `${$("error-request").textContent ? " · " : ""}Choose another file to try again.`;
  }
  $("auth-form").hidden = !(api && error.status === 401);
  if (!$("auth-form").hidden) $("api-key").focus();
}

function startTicker(render) {
  stopTicker();
  const t0 = performance.now();
  render(0);
  page.ticker = setInterval(() => render((performance.now() - t0) / 1000), 250);
}

function stopTicker() {
  clearInterval(page.ticker);
  page.ticker = 0;
}

function newRun() {
  page.abort?.();
  stopTicker();
  $("preview").hidden = true;
  delete body.dataset.preview;
  page.run += 1;
  const run = page.run;
  const controller = new AbortController();
  const xhrs = new Set();
  page.abort = () => {
    controller.abort();
    for (const xhr of xhrs) xhr.abort();
  };
  return {
    signal: controller.signal,
    track: (xhr) => xhrs.add(xhr),
    check: () => {
      if (run !== page.run) throw new Superseded();
    },
    current: () => run === page.run,
  };
}

// ------------------------------------------------------------------------------------------ HTTP

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function errorFromBody(status, text, fallbackRequestId = null) {
  try {
    const error = JSON.parse(text).error;
    if (error?.message) return new ApiError(status, error.code || `http_${status}`, error.message, error.request_id);
  } catch {
    // not JSON: fall through
  }
  const message = status ? `The server answered ${status}${text ? `: ${text.slice(0, 200)}` : "."}` : "The server could not be reached.";
  return new ApiError(status, `http_${status}`, message, fallbackRequestId);
}

async function errorFromResponse(response) {
  return errorFromBody(response.status, await response.text(), response.headers.get("X-Request-ID"));
}

function mb(bytes) {
  return `${(bytes / 1e6).toFixed(bytes < 1e7 ? 2 : 1)} MB`;
}

/** POST a form with XMLHttpRequest: upload progress, then (optionally) download progress. */
function postForm(url, form, run, { onUploaded, onHeaders, onDownload, responseType = "arraybuffer" } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    run.track(xhr);
    xhr.open("POST", url);
    xhr.responseType = responseType;
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (event) => {
      if (run.current() && event.lengthComputable) {
        setState("uploading", "Uploading the photo…", {
          progress: event.loaded / event.total,
          detail: `${Math.round((100 * event.loaded) / event.total)} % of ${mb(event.total)}`,
        });
      }
    };
    xhr.upload.onload = () => run.current() && onUploaded?.();
    xhr.onreadystatechange = () => {
      if (xhr.readyState === XMLHttpRequest.HEADERS_RECEIVED && run.current() && xhr.status < 300) onHeaders?.(xhr);
    };
    xhr.onprogress = (event) => run.current() && xhr.status < 300 && onDownload?.(event.loaded, event.lengthComputable ? event.total : 0);
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(xhr);
        return;
      }
      const text = xhr.response instanceof ArrayBuffer ? new TextDecoder().decode(xhr.response) : String(xhr.response ?? "");
      const error = errorFromBody(xhr.status, text, xhr.getResponseHeader("X-Request-ID"));
      error.retryAfter = Number(xhr.getResponseHeader("Retry-After")) || 0;
      reject(error);
    };
    xhr.onerror = () => reject(new ApiError(0, "network_error", "The server could not be reached (network error)."));
    xhr.onabort = () => reject(new Superseded());
    if (run.current()) setState("uploading", "Uploading the photo…", { progress: 0 });
    xhr.send(form);
  });
}

/** GET with fetch, reading the body as a stream to report progress against Content-Length. */
async function download(url, run, onProgress) {
  const response = await fetch(url, { headers: authHeaders(), signal: run.signal });
  if (!response.ok) throw await errorFromResponse(response);
  const total = Number(response.headers.get("Content-Length")) || 0;
  const reader = response.body.getReader();
  const chunks = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.length;
    run.check();
    onProgress?.(loaded, total);
  }
  const bytes = new Uint8Array(loaded);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.length;
  }
  return { bytes, headers: response.headers };
}

/** Progress of the scene's download: "Loading the scene: 1.23 MB (SOG)…". */
function downloadProgress(format) {
  const what = format.toUpperCase();
  return (loaded, total) =>
    setState("loading-scene", total ? `Loading the scene: ${mb(total)} (${what})…` : `Loading the scene (${what})…`, {
      progress: total ? loaded / total : null,
      detail: total ? `${Math.round((100 * loaded) / total)} % of ${mb(total)}` : mb(loaded),
    });
}

/** The `event: job` messages of a server-sent event stream, read with fetch (so it can send a key). */
async function* jobEvents(url, run) {
  const response = await fetch(url, { headers: { Accept: "text/event-stream", ...authHeaders() }, signal: run.signal });
  if (!response.ok) throw await errorFromResponse(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end = buffer.indexOf("\n\n");
    while (end >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      end = buffer.indexOf("\n\n");
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (event === "job" && data.length) yield JSON.parse(data.join("\n"));
    }
  }
}

// ------------------------------------------------------------------------------------ server info

async function loadInfo() {
  try {
    const response = await fetch("./", { headers: { Accept: "application/json" } });
    if (!response.ok) return;
    page.info = await response.json();
    page.jobs = (page.info.endpoints || []).some((e) => e.method === "POST" && e.path === "/jobs");
    if (page.info.model) showModel(page.info.model);
    else $("model").textContent = `model ${page.info.status || "loading"}`;
    if (page.info.status === "error") showModelError();
    $("model").hidden = false;
    if (page.info.auth_required && !apiKey()) $("auth-form").hidden = false;
  } catch {
    // The page still works: the transport falls back to POST /predict/spz.
  }
}

/** Whether the server makes this format (its JSON info lists it); without the info, today's four. */
function offers(format) {
  const formats = page.info?.formats;
  return Array.isArray(formats) ? formats.includes(format) : format !== "sog";
}

/** What a job makes: the scene files offered for download, plus the server's preview render. */
function jobOutputs() {
  return [...DOWNLOADS.map(([name]) => name).filter(offers), ...(offers("preview") ? ["preview"] : [])].join(",");
}

/** The scene format to download and show, of those `available`: the smallest on a phone, else SPZ. */
function shownFormat(available) {
  const wanted = matchMedia(PHONE).matches ? SHOWN_FORMATS_SMALLEST_FIRST : ["spz"];
  return wanted.find((format) => available(format)) || "spz";
}

function showModel({ preset, weights, device, dtype }) {
  $("model").textContent = `model: ${preset} · weights: ${weights}${device ? ` · ${device}` : ""}${dtype ? ` ${dtype}` : ""}`;
  $("model").hidden = false;
  const banner = $("model-banner");
  banner.classList.remove("error"); // a model answered: no load failure to show any more
  if (preset === "tiny" || (weights && weights !== "official")) {
    const what = preset === "tiny" ? "the tiny test network" : `the ${preset} network`;
    banner.textContent =
      weights === "official"
        ? `This server runs ${what}: its scenes are not real SHARP predictions.`
        : `This server runs ${what} with ${weights} weights, not the official SHARP checkpoint: ` +
          (weights === "synthetic" ? "its scenes are not real SHARP predictions (colours follow the photo, depth is meaningless)." : "results depend on that checkpoint.");
    banner.hidden = false;
  } else {
    banner.hidden = true;
  }
}

/** The model failed to load: the server's own words (with the fix, when known) in the banner. */
async function showModelError() {
  try {
    const health = await (await fetch("./health", { headers: { Accept: "application/json" } })).json();
    if (!health.message) return;
    const banner = $("model-banner");
    banner.textContent = health.message;
    banner.classList.add("error");
    banner.hidden = false;
  } catch {
    // No banner: predictions still answer with the same message.
  }
}

// ------------------------------------------------------------------------------------- prediction

async function predict(file) {
  const run = newRun();
  const fPx = $("f-px").value.trim();
  page.retry = () => predict(file);
  page.startedAt = performance.now();
  body.dataset.source = "upload";
  showJobLink(null);
  if (matchMedia(NARROW_SCREEN).matches) window.scrollTo(0, 0); // the stage, with the status over it
  try {
    await page.infoLoaded; // the transport depends on it: a photo may be chosen before it arrived
    run.check();
    const result = page.jobs ? await predictWithJob(file, fPx, run) : await predictSync(file, fPx, run);
    run.check();
    stopTicker();
    setState("loading-scene", "Preparing the 3D scene…", { progress: null });
    await showScene(result.bytes, result.format, result.camera, run, file.name || "photo");
    run.check();
    showResult(result, file);
  } catch (error) {
    if (error instanceof Superseded || !run.current()) return;
    if (error instanceof ApiError && error.code === "model_loading" && error.retryAfter) {
      setState("queued", "The model is still loading…", { progress: null, detail: `Trying again in ${error.retryAfter} s.` });
      setTimeout(() => run.current() && predict(file), error.retryAfter * 1000);
      return;
    }
    showError(error);
  }
}

function formFor(file, fPx, extra = {}) {
  const form = new FormData();
  form.append("file", file, file.name || "photo");
  if (fPx) form.append("f_px", fPx);
  // The splat budget: every output of the request (the server checks it and names the accepted range).
  const maxGaussians = $("max-gaussians").value.trim();
  if (maxGaussians) form.append("max_gaussians", maxGaussians);
  for (const [name, value] of Object.entries(extra)) form.append(name, value);
  return form;
}

/** Transport (b): one POST /predict/<format>; the X-Sharp-* headers describe the camera and the model. */
async function predictSync(file, fPx, run) {
  const t0 = performance.now();
  let uploadedAt = 0;
  let headersAt = 0;
  const format = shownFormat(offers);
  const xhr = await postForm(`predict/${format}`, formFor(file, fPx), run, {
    onUploaded: () => {
      uploadedAt = performance.now();
      startTicker((s) =>
        setState("running", "Predicting the 3D scene…", {
          progress: null,
          detail: `${s.toFixed(0)} s (a single request: the server reports no progress until it is done)`,
        }),
      );
    },
    onHeaders: () => {
      headersAt = performance.now();
      stopTicker();
      downloadProgress(format)(0, 0);
    },
    onDownload: (loaded, total) => downloadProgress(format)(loaded, total),
  });
  const end = performance.now();
  const header = (name) => xhr.getResponseHeader(name);
  const [width, height] = (header("X-Sharp-Image-Size") || "0x0").split("x").map(Number);
  const model = { preset: header("X-Sharp-Preset"), weights: header("X-Sharp-Weights") };
  if (model.preset) showModel({ ...(page.info?.model || {}), ...model });
  const bytes = new Uint8Array(xhr.response);
  return {
    bytes,
    format,
    camera: { fPx: Number(header("X-Sharp-F-Px")) || 0, width, height },
    meta: {
      gaussians: Number(header("X-Sharp-Num-Gaussians")) || 0,
      predicted: Number(header("X-Sharp-Num-Gaussians-Predicted")) || 0,
      fPx: Number(header("X-Sharp-F-Px")) || 0,
      fPxSource: header("X-Sharp-F-Px-Source"),
      width,
      height,
      model,
      timings: parseServerTiming(header("Server-Timing")),
      transfer: {
        upload: ((uploadedAt || headersAt || end) - t0) / 1000,
        wait: uploadedAt && headersAt ? (headersAt - uploadedAt) / 1000 : null,
        download: headersAt ? (end - headersAt) / 1000 : null,
        bytes: bytes.length,
      },
    },
    sources: { [format]: bytes },
    fileStem: filenameStem(header("Content-Disposition"), file),
  };
}

/** Transport (a): POST /jobs, follow GET /jobs/{id}/events, then GET the scene file. */
async function predictWithJob(file, fPx, run) {
  const t0 = performance.now();
  let uploadedAt = 0;
  const xhr = await postForm("jobs", formFor(file, fPx, { outputs: jobOutputs() }), run, {
    responseType: "text",
    onUploaded: () => {
      uploadedAt = performance.now();
      setState("queued", "Waiting for the server…", { progress: null });
    },
  });
  const job = JSON.parse(xhr.response);
  showJobLink(job.id);
  const result = await jobScene(job, new URL(xhr.getResponseHeader("Location") || `jobs/${job.id}`, location.href), run);
  const { transfer } = result.meta;
  transfer.upload = ((uploadedAt || transfer.waitedAt) - t0) / 1000;
  transfer.wait = uploadedAt ? (transfer.waitedAt - uploadedAt) / 1000 : null;
  result.fileStem = (file.name || "scene").replace(/\.[^.]*$/, "");
  return result;
}

/** Follows a job (its events, else polling) to its end, then downloads the scene file it made. */
async function jobScene(job, jobUrl, run) {
  showJob(job);
  try {
    if (!isFinal(job)) {
      for await (const event of jobEvents(new URL(`${jobUrl.pathname.replace(/\/$/, "")}/events`, location.href), run)) {
        run.check();
        job = event;
        showJob(job);
        if (isFinal(job)) break;
      }
    }
  } catch (error) {
    if (error instanceof Superseded || run.signal.aborted) throw new Superseded();
    // The event stream broke: poll the job instead.
  }
  while (!isFinal(job)) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    run.check();
    const response = await fetch(jobUrl, { headers: { Accept: "application/json", ...authHeaders() }, signal: run.signal });
    if (!response.ok) throw await errorFromResponse(response);
    job = await response.json();
    showJob(job);
  }
  if (job.status !== "succeeded") {
    throw new ApiError(0, job.error?.code || job.status, job.error?.message || `The job was ${job.status}.`, job.error?.request_id);
  }
  const waitedAt = performance.now();
  const results = job.results || {};
  if (results.preview) showPreview(new URL(results.preview, location.href), run);
  const format = shownFormat((name) => Boolean(results[name]));
  const { bytes, headers } = await download(new URL(results[format], location.href), run, downloadProgress(format));
  const end = performance.now();
  const m = job.metadata || {};
  if (job.model) showModel(job.model);
  return {
    bytes,
    format,
    camera: { fPx: m.f_px, width: m.image_width, height: m.image_height },
    meta: {
      gaussians: m.num_gaussians,
      predicted: m.total_gaussians,
      fPx: m.f_px,
      fPxSource: m.f_px_source,
      width: m.image_width,
      height: m.image_height,
      model: job.model || {},
      timings: job.timings_ms || {},
      transfer: { upload: null, wait: null, download: (end - waitedAt) / 1000, bytes: bytes.length, waitedAt },
    },
    sources: { [format]: bytes },
    results,
    jobId: job.id,
    fileStem: filenameStem(headers.get("Content-Disposition"), null),
  };
}

/** A job's scene from its link (`?job=<id>`): on another device, or after a reload, while its results exist. */
async function openSharedJob(id) {
  const run = newRun();
  page.retry = () => openSharedJob(id);
  page.startedAt = performance.now();
  body.dataset.source = "link";
  try {
    setState("queued", "Opening the shared scene…", { progress: null });
    await page.infoLoaded;
    run.check();
    const jobUrl = new URL(`jobs/${encodeURIComponent(id)}`, location.href);
    const response = await fetch(jobUrl, { headers: { Accept: "application/json", ...authHeaders() }, signal: run.signal });
    if (!response.ok) throw await errorFromResponse(response);
    const result = await jobScene(await response.json(), jobUrl, run);
    run.check();
    setState("loading-scene", "Preparing the 3D scene…", { progress: null });
    await showScene(result.bytes, result.format, result.camera, run, result.fileStem);
    run.check();
    showResult(result, null);
  } catch (error) {
    if (error instanceof Superseded || !run.current()) return;
    showError(error);
  }
}

/** The job's link in the address bar (`?job=<id>`), or none (`null`: a local file, a one-request prediction). */
function showJobLink(id) {
  const url = new URL(location.href);
  url.hash = "";
  if (id) url.searchParams.set("job", id);
  else url.searchParams.delete("job");
  if (url.href !== location.href) history.replaceState(null, "", url);
}

/** The server's render of the input view (PNG), shown until the 3D scene is ready; failures are harmless. */
async function showPreview(url, run) {
  try {
    const response = await fetch(url, { headers: authHeaders(), signal: run.signal });
    if (!response.ok || !run.current()) return;
    const image = $("preview");
    if (image.src) URL.revokeObjectURL(image.src);
    image.src = URL.createObjectURL(await response.blob());
    if (!run.current() || body.dataset.state === "ready") return;
    image.hidden = false;
    $("placeholder").hidden = true;
    body.dataset.preview = "shown";
  } catch {
    // The preview is a courtesy: the scene still loads without it.
  }
}

function showJob(job) {
  if (job.status === "queued") {
    const position = job.queue_position;
    setState("queued", "Queued…", {
      progress: null,
      detail: position === null || position === undefined ? "" : position === 0 ? "Next in line." : `${position} ahead in the queue.`,
    });
  } else if (job.status === "running") {
    const progress = Number.isFinite(job.progress) ? job.progress : null;
    setState("running", "Predicting the 3D scene…", {
      progress,
      detail: `${job.stage || "running"}${progress === null ? "" : ` · ${Math.round(100 * progress)} %`}`,
    });
  }
}

function parseServerTiming(value) {
  const timings = {};
  for (const item of (value || "").split(",")) {
    const match = /^\s*([\w-]+)\s*;\s*dur=([\d.]+)/.exec(item);
    if (match) timings[match[1]] = Number(match[2]);
  }
  return timings;
}

function filenameStem(disposition, file) {
  const match = /filename="([^"]+)"/.exec(disposition || "");
  const name = match ? match[1] : file?.name || "scene";
  return name.replace(/\.[^.]*$/, "");
}

// ------------------------------------------------------------------------------------ result panel

function showResult(result, file) {
  const { meta } = result;
  const rows = [];
  const fmt = (n, digits = 0) => Number(n).toLocaleString("en-US", { maximumFractionDigits: digits });
  if (meta.gaussians) {
    const kept = meta.predicted && meta.predicted !== meta.gaussians ? ` of ${fmt(meta.predicted)} predicted` : "";
    rows.push(["Gaussians", `${fmt(meta.gaussians)}${kept}`]);
  }
  if (meta.width) rows.push(["Image", `${meta.width} × ${meta.height} px`]);
  if (meta.fPx) rows.push(["f_px", `${fmt(meta.fPx, 1)}${meta.fPxSource ? ` (${meta.fPxSource})` : ""}`]);
  if (meta.model?.preset) rows.push(["Model", `${meta.model.preset}, ${meta.model.weights} weights`]);
  const stages = Object.entries(meta.timings || {}).filter(([, ms]) => Number.isFinite(ms));
  if (stages.length) rows.push(["Server", stages.map(([stage, ms]) => `${stage} ${fmt(ms)} ms`).join(", ")]);
  const t = meta.transfer;
  if (t) {
    const parts = [];
    if (t.upload !== null) parts.push(`upload ${t.upload.toFixed(2)} s`);
    if (t.wait !== null) parts.push(`prediction ${t.wait.toFixed(2)} s`);
    if (t.download !== null) parts.push(`download ${t.download.toFixed(2)} s (${mb(t.bytes)} ${result.format.toUpperCase()})`);
    rows.push(["This page", parts.join(", ")]);
  }
  if (file) rows.unshift(["Photo", file.name || "photo"]);
  else if (result.jobId) rows.unshift(["Job", `${result.jobId} (opened from its link)`]);
  if (result.local) rows.push(["File", `${result.local} (opened locally, not uploaded)`]);
  const dl = $("meta");
  dl.replaceChildren();
  for (const [name, value] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    dl.append(dt, dd);
  }
  showDownloads(result, file);
  showSharing(result);
  $("result").hidden = false;
}

/** "Share link" (a job's scene, reopened from its URL) and "Share scene file" (Web Share API, where the
 * browser can share files). */
function showSharing(result) {
  const link = result.jobId ? location.href : null;
  const extension = DOWNLOADS.find(([name]) => name === result.format)?.[4] || `.${result.format}`;
  const file = result.bytes && !result.local
    ? new File([result.bytes], `${result.fileStem}${extension}`, { type: "application/octet-stream" })
    : null;
  page.share = { link, file };
  $("share-link").hidden = !link;
  $("share-file").hidden = !(file && navigator.canShare?.({ files: [file] }));
  $("share-note").textContent = "";
}

async function shareLink() {
  const { link } = page.share;
  try {
    if (navigator.share) {
      await navigator.share({ title: document.title, url: link });
    } else {
      await navigator.clipboard.writeText(link);
      $("share-note").textContent = "Link copied: it opens this scene while the job's results are kept.";
    }
  } catch (error) {
    // Cancelled by the user, or no clipboard (plain http): the link is shown to copy by hand.
    if (error.name !== "AbortError") $("share-note").textContent = `Link: ${link}`;
  }
}

async function shareFile() {
  const { file } = page.share;
  try {
    await navigator.share({ files: [file], title: file.name });
  } catch (error) {
    if (error.name !== "AbortError") $("share-note").textContent = `Could not share the file: ${error.message}`;
  }
}

function showDownloads(result, file) {
  const box = $("downloads");
  box.replaceChildren();
  $("downloads-note").textContent = "";
  if (!file && !result.results) return; // a local file: nothing to download
  // A job's files are those it made; a one-request prediction can make any format the server offers.
  const available = result.results ? (name) => Boolean(result.results[name]) : offers;
  for (const [name, label, endpoint, extra, extension] of DOWNLOADS.filter(([name]) => available(name))) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    button.dataset.format = name;
    const filename = `${result.fileStem}${extension}`;
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        let bytes = result.sources[name];
        if (!bytes) {
          const run = { signal: undefined, track: () => {}, check: () => {}, current: () => false };
          if (result.results?.[name]) {
            ({ bytes } = await download(new URL(result.results[name], location.href), run, (loaded, total) => {
              button.textContent = `${label}: ${total ? `${Math.round((100 * loaded) / total)} %` : mb(loaded)}`;
            }));
          } else {
            button.textContent = `${label}: predicting…`;
            const xhr = await postForm(endpoint, formFor(file, $("f-px").value.trim(), extra), run, {
              onDownload: (loaded, total) => {
                button.textContent = `${label}: ${total ? `${Math.round((100 * loaded) / total)} %` : mb(loaded)}`;
              },
            });
            bytes = new Uint8Array(xhr.response);
          }
          result.sources[name] = bytes;
        }
        saveBytes(bytes, filename);
        button.textContent = label;
      } catch (error) {
        button.textContent = `${label}: failed`;
        $("downloads-note").textContent = error.message || String(error);
      } finally {
        button.disabled = false;
      }
    });
    box.append(button);
  }
  $("downloads-note").textContent = result.results
    ? "All formats were made by the same job."
    : `${result.format.toUpperCase()} is the scene shown here. The other formats run the model again on the same photo (same result).`;
}

function saveBytes(bytes, filename) {
  const url = URL.createObjectURL(new Blob([bytes], { type: "application/octet-stream" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// ------------------------------------------------------------------------------------ local files

async function openLocal(file) {
  const run = newRun();
  page.retry = () => openLocal(file);
  page.startedAt = performance.now();
  body.dataset.source = "local";
  showJobLink(null);
  const extension = (file.name.split(".").pop() || "").toLowerCase();
  try {
    setState("loading-scene", `Reading ${file.name}…`, { progress: null });
    let bytes = new Uint8Array(await file.arrayBuffer());
    let camera = null;
    if (extension === "ply") ({ bytes, camera } = plyForSpark(bytes));
    await showScene(bytes, extension, camera, run, file.name);
    run.check();
    const meta = camera ? { width: camera.width, height: camera.height, fPx: camera.fPx, fPxSource: "file" } : {};
    meta.gaussians = numSplats(viewer.mesh);
    showResult({ meta, local: file.name, format: extension }, null);
  } catch (error) {
    if (error instanceof Superseded || !run.current()) return;
    showError(error);
  }
}

/**
 * A PLY for Spark: the vertex element alone (SHARP's PLY adds camera elements after it), plus the
 * camera from its `intrinsic` and `image_size` elements when present.
 */
function plyForSpark(bytes) {
  const head = new TextDecoder("latin1").decode(bytes.subarray(0, Math.min(bytes.length, 16384)));
  const end = head.indexOf("end_header\n");
  if (!head.startsWith("ply") || end < 0) return { bytes, camera: null };
  const dataStart = end + "end_header\n".length;
  const sizes = { char: 1, uchar: 1, int8: 1, uint8: 1, short: 2, ushort: 2, int16: 2, uint16: 2, int: 4, uint: 4, int32: 4, uint32: 4, float: 4, float32: 4, double: 8, float64: 8 };
  const elements = [];
  const lines = head.slice(0, end).split("\n");
  let vertexHeaderEnd = -1;
  for (const [index, line] of lines.entries()) {
    const words = line.trim().split(/\s+/);
    if (words[0] === "format" && words[1] !== "binary_little_endian") return { bytes, camera: null };
    if (words[0] === "element") elements.push({ name: words[1], count: Number(words[2]), props: [] });
    else if (words[0] === "property" && elements.length) {
      if (words[1] === "list") return { bytes, camera: null };
      elements.at(-1).props.push({ name: words[2], type: words[1], size: sizes[words[1]] || 0 });
    }
    if (elements.length === 1) vertexHeaderEnd = index;
  }
  if (elements[0]?.name !== "vertex" || elements.length === 1) return { bytes, camera: null };
  let offset = dataStart;
  const where = {};
  for (const element of elements) {
    const stride = element.props.reduce((sum, p) => sum + p.size, 0);
    where[element.name] = { offset, element };
    offset += stride * element.count;
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let camera = null;
  if (where.intrinsic && where.image_size && offset <= bytes.length) {
    const f = view.getFloat32(where.intrinsic.offset, true);
    const read = where.image_size.element.props[0].type.startsWith("u") ? "getUint32" : "getInt32";
    const width = view[read](where.image_size.offset, true);
    const height = view[read](where.image_size.offset + 4, true);
    if (f > 0 && width > 0 && height > 0) camera = { fPx: f, width, height };
  }
  const vertexBytes = where.vertex.element.props.reduce((sum, p) => sum + p.size, 0) * where.vertex.element.count;
  const header = new TextEncoder().encode(`${lines.slice(0, vertexHeaderEnd + 1).join("\n")}\nend_header\n`);
  const trimmed = new Uint8Array(header.length + vertexBytes);
  trimmed.set(header, 0);
  trimmed.set(bytes.subarray(dataStart, dataStart + vertexBytes), header.length);
  return { bytes: trimmed, camera };
}

// ---------------------------------------------------------------------------------------- viewer

const viewer = {
  ready: null, // Promise of the loaded modules
  THREE: null,
  renderer: null,
  scene: null,
  camera: null,
  controls: null,
  mesh: null,
  view: null, // the photo's half field of view as tangents { x, y } (W / 2f, H / 2f); null: no camera known
  home: { depth: 2 },
  pending: false,
  frames: 0,
  visible: false,
  last: null, // the camera's { quaternion, position } at the last frame
};

/** Spark's SPZ reader keeps the file's coordinates. SPZ stores RUB axes (x right, y up, z back), the
 * axes of a three.js camera; PLY and .splat from SHARP keep OpenCV axes (x right, y down, z forward)
 * and are turned 180 degrees about x. Either way the camera at the origin looking down -z sees the photo.
 * SOG (PlayCanvas) keeps the coordinates of the PLY it was made from. */
const OPENCV_TO_THREE = { ply: true, splat: true, spz: false, sog: true };
// Spark's name for each file type it reads (SOG is its "pcsogszip": a zip of WebP textures and meta.json).
const SPARK_FILE_TYPES = { ply: "ply", spz: "spz", splat: "splat", sog: "pcsogszip" };

async function loadRenderer() {
  if (body.dataset.vendor === "missing") {
    throw new ApiError(0, "renderer_missing", $("vendor-banner").textContent.replace(/\s+/g, " ").trim());
  }
  viewer.ready ??= (async () => {
    const [THREE, { OrbitControls }, Spark] = await Promise.all([
      import("three"),
      import("three/addons/controls/OrbitControls.js"),
      import("@sparkjsdev/spark"),
    ]);
    viewer.THREE = THREE;
    viewer.Spark = Spark;
    const canvas = $("canvas");
    const renderer = new THREE.WebGLRenderer({ canvas, antialias: false });
    renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
    renderer.setClearColor(0x101114, 1);
    const scene = new THREE.Scene();
    const camera = new THREE.PerspectiveCamera(50, 4 / 3, 0.01, 1000);
    scene.add(new Spark.SparkRenderer({ renderer, onDirty: requestRender }));
    const controls = new OrbitControls(camera, canvas);
    controls.enableDamping = true;
    controls.dampingFactor = 0.25;
    controls.screenSpacePanning = true;
    controls.touches = { ONE: THREE.TOUCH.ROTATE, TWO: THREE.TOUCH.DOLLY_PAN }; // one finger orbits, two pinch and pan
    controls.addEventListener("change", requestRender);
    const reset = () => viewer.mesh && resetView();
    canvas.addEventListener("dblclick", reset);
    onDoubleTap(canvas, reset);
    Object.assign(viewer, { renderer, scene, camera, controls });
    new ResizeObserver(layout).observe($("stage"));
    layout();
  })().catch((error) => {
    viewer.ready = null;
    throw new ApiError(0, "renderer_missing", `The 3D renderer could not be loaded (${error.message}). Run \`make web\` on the server.`);
  });
  return viewer.ready;
}

/**
 * The canvas. Wide screens: the largest rectangle of the photo's aspect ratio that fits the stage
 * (letterboxed). Narrow screens: the whole stage, the photo fitted inside it, so that the scene can be
 * orbited and zoomed on most of the screen. A scene without a camera fills the stage with a 50 degree view.
 */
function layout() {
  if (!viewer.renderer) return;
  const stage = $("stage").getBoundingClientRect();
  const { THREE, camera, controls, view } = viewer;
  const aspect = view && !matchMedia(NARROW_SCREEN).matches ? view.x / view.y : stage.width / Math.max(1, stage.height);
  let width = stage.width;
  let height = width / aspect;
  if (height > stage.height) {
    height = stage.height;
    width = height * aspect;
  }
  width = Math.max(1, Math.floor(width));
  height = Math.max(1, Math.floor(height));
  viewer.renderer.setSize(width, height, true);
  camera.aspect = width / height;
  // The vertical field of view that shows the whole photo: its own, or wider where the canvas is narrower.
  camera.fov = view ? THREE.MathUtils.radToDeg(2 * Math.atan(Math.max(view.y, view.x / camera.aspect))) : 50;
  camera.updateProjectionMatrix();
  // OrbitControls turns by 2 pi * rotateSpeed per canvas height dragged; this makes it a fixed angle per pixel.
  controls.rotateSpeed = (THREE.MathUtils.degToRad(DRAG_DEGREES_PER_PX) * height) / (2 * Math.PI);
  requestRender();
}

/** Calls `callback` on a double tap (two short touches close in time and place, one finger). */
function onDoubleTap(element, callback) {
  const fingers = new Set();
  let down = null; // the current touch, while it may still be a tap
  let lastTap = null;
  element.addEventListener("pointerdown", (event) => {
    if (event.pointerType !== "touch") return;
    fingers.add(event.pointerId);
    down = fingers.size === 1 ? { x: event.clientX, y: event.clientY, t: event.timeStamp } : null;
    if (!down) lastTap = null; // a pinch is no tap
  });
  const lift = (event) => {
    if (!fingers.delete(event.pointerId) || !down) return;
    const tap = event.type === "pointerup" && event.timeStamp - down.t < 300 &&
      Math.hypot(event.clientX - down.x, event.clientY - down.y) < 15;
    if (tap && lastTap && down.t - lastTap.t < 450 && Math.hypot(down.x - lastTap.x, down.y - lastTap.y) < 40) {
      lastTap = null;
      callback();
    } else {
      lastTap = tap ? down : null;
    }
    down = null;
  };
  element.addEventListener("pointerup", lift);
  element.addEventListener("pointercancel", lift);
}

function requestRender() {
  if (viewer.pending || !viewer.renderer) return;
  viewer.pending = true;
  body.dataset.rendering = "1";
  requestAnimationFrame(renderFrame);
}

function renderFrame() {
  viewer.pending = false;
  const moving = viewer.controls.update() && !cameraStill();
  viewer.renderer.render(viewer.scene, viewer.camera);
  if (viewer.mesh) {
    viewer.frames += 1;
    body.dataset.frames = String(viewer.frames);
    const forward = viewer.camera.getWorldDirection(new viewer.THREE.Vector3());
    body.dataset.viewDegrees = viewer.THREE.MathUtils.radToDeg(Math.acos(Math.min(1, -forward.z))).toFixed(1);
    if (!viewer.visible && frameHasSplats()) {
      viewer.visible = true;
      body.dataset.visible = "1";
      body.dataset.firstFrameMs = String(Math.round(performance.now() - page.startedAt));
    }
  }
  // Damping eases out over several frames; until the splats first show, keep drawing (Spark sorts
  // asynchronously and says so through onDirty, but a few extra frames are cheap and certain).
  if (moving || (viewer.mesh && !viewer.visible && viewer.frames < 600)) requestRender();
  if (!viewer.pending) delete body.dataset.rendering;
}

/** Whether the camera moved less than `STILL_DEGREES_PER_FRAME` since the last frame (OrbitControls' own
 * threshold is in scene units, which for a scene hundreds of metres deep means hundreds of frames). */
function cameraStill() {
  const { THREE, camera, controls } = viewer;
  const last = viewer.last ?? { quaternion: new THREE.Quaternion(), position: new THREE.Vector3(1e9, 0, 0) };
  const still = THREE.MathUtils.radToDeg(camera.quaternion.angleTo(last.quaternion)) < STILL_DEGREES_PER_FRAME &&
    camera.position.distanceTo(last.position) < 1e-3 * controls.getDistance();
  last.quaternion.copy(camera.quaternion);
  last.position.copy(camera.position);
  viewer.last = last;
  return still;
}

/** Whether the frame just drawn differs from the clear colour in more than 0.5 % of its pixels. */
function frameHasSplats() {
  const gl = viewer.renderer.getContext();
  const width = gl.drawingBufferWidth;
  const height = gl.drawingBufferHeight;
  const pixels = new Uint8Array(width * height * 4);
  // Spark may leave its readback buffer bound; reading into client memory needs none bound.
  const packBuffer = gl.getParameter(gl.PIXEL_PACK_BUFFER_BINDING);
  gl.bindBuffer(gl.PIXEL_PACK_BUFFER, null);
  gl.readPixels(0, 0, width, height, gl.RGBA, gl.UNSIGNED_BYTE, pixels);
  gl.bindBuffer(gl.PIXEL_PACK_BUFFER, packBuffer);
  if (gl.getError() !== gl.NO_ERROR) return false;
  let differing = 0;
  for (let i = 0; i < pixels.length; i += 4 * 7) {
    if (Math.abs(pixels[i] - 0x10) + Math.abs(pixels[i + 1] - 0x11) + Math.abs(pixels[i + 2] - 0x14) > 12) differing += 1;
  }
  return differing > (0.005 * pixels.length) / (4 * 7);
}

/** Shows a scene file (`fileType`: ply, spz, splat or sog) from `camera` ({ fPx, width, height }, or null),
 * named `name` over the stage. */
async function showScene(bytes, fileType, camera, run, name) {
  await loadRenderer();
  run.check();
  const { Spark } = viewer;
  const mesh = new Spark.SplatMesh({ fileBytes: bytes, fileType: SPARK_FILE_TYPES[fileType], fileName: `scene.${fileType}` });
  await mesh.initialized;
  if (!run.current()) {
    mesh.dispose();
    throw new Superseded();
  }
  if (viewer.mesh) {
    viewer.scene.remove(viewer.mesh);
    viewer.mesh.dispose();
  }
  if (OPENCV_TO_THREE[fileType]) mesh.quaternion.set(1, 0, 0, 0); // 180 degrees about x
  $("preview").hidden = true;
  $("canvas").hidden = false;
  $("placeholder").hidden = true;
  viewer.mesh = mesh;
  viewer.scene.add(mesh);
  viewer.frames = 0;
  viewer.visible = false;
  body.dataset.frames = "0";
  delete body.dataset.visible;
  delete body.dataset.firstFrameMs;

  // The photo's camera: at the origin, looking down -z, y up, with the photo's field of view (see layout()).
  viewer.view = camera?.fPx > 0 && camera.height > 0
    ? { x: camera.width / (2 * camera.fPx), y: camera.height / (2 * camera.fPx) }
    : null;
  viewer.home.depth = medianDepth(mesh, OPENCV_TO_THREE[fileType]);
  const depth = viewer.home.depth;
  viewer.controls.minDistance = depth * 0.02;
  viewer.controls.maxDistance = depth * 20;
  viewer.camera.near = 0.01;
  viewer.camera.far = Math.max(1000, depth * 200);
  resetView();
  layout();
  $("reset-view").disabled = false;
  $("scene-name").textContent = name;
  $("scene-name").hidden = false;
  document.title = `${name} · sharp-serve`;
  setState("ready", `Ready: ${name}`, {
    detail: `Shown from the photo's viewpoint; the orbit centre is ${depth.toFixed(2)} m in front (median depth).`,
  });
  requestRender();
}

function numSplats(mesh) {
  try {
    return mesh?.splats?.getNumSplats?.() ?? mesh?.packedSplats?.numSplats ?? 0;
  } catch {
    return 0;
  }
}

/** Median distance in front of the camera of (a sample of) the splat centres; 2 m if there are none. */
function medianDepth(mesh, opencv) {
  const count = numSplats(mesh);
  const step = Math.max(1, Math.floor(count / 20000));
  const depths = [];
  let index = 0;
  try {
    mesh.forEachSplat((i, center) => {
      if (index++ % step === 0) {
        const depth = opencv ? center.z : -center.z;
        if (depth > 0 && Number.isFinite(depth)) depths.push(depth);
      }
    });
  } catch {
    return 2;
  }
  if (!depths.length) return 2;
  depths.sort((a, b) => a - b);
  return depths[Math.floor(depths.length / 2)];
}

/** Back to the photo's viewpoint: camera at the origin looking at the orbit centre straight ahead. */
function resetView() {
  const { camera, controls } = viewer;
  // An undamped update spends the motion still pending from a drag, so nothing drifts afterwards.
  const damping = controls.enableDamping;
  controls.enableDamping = false;
  controls.update();
  camera.position.set(0, 0, 0);
  camera.up.set(0, 1, 0);
  camera.updateProjectionMatrix();
  controls.target.set(0, 0, -viewer.home.depth);
  controls.update();
  controls.enableDamping = damping;
  requestRender();
}

// ------------------------------------------------------------------------------------------ input

function take(file) {
  if (!file) return;
  const extension = (file.name || "").split(".").pop().toLowerCase();
  if (SCENE_EXTENSIONS.includes(extension)) openLocal(file);
  else predict(file);
}

function wire() {
  for (const input of [$("photo"), $("camera")]) {
    input.addEventListener("change", (event) => {
      take(event.target.files[0]);
      event.target.value = ""; // choosing the same file again starts again
    });
  }
  $("scene-file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) openLocal(file);
    event.target.value = "";
  });
  $("upload-form").addEventListener("submit", (event) => event.preventDefault());
  $("retry").addEventListener("click", () => page.retry?.());
  $("reset-view").addEventListener("click", () => viewer.controls && resetView());
  $("share-link").addEventListener("click", shareLink);
  $("share-file").addEventListener("click", shareFile);
  $("auth-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORAGE, key);
    $("api-key").value = "";
    $("auth-form").hidden = true;
    if (body.dataset.state === "error" && page.retry) page.retry();
  });
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    body.classList.add("dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) body.classList.remove("dragging");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    body.classList.remove("dragging");
    take(event.dataTransfer?.files?.[0]);
  });
  document.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData?.files || [])][0];
    if (file) {
      event.preventDefault();
      take(file);
    }
  });
}

async function showVersions() {
  try {
    const response = await fetch("static/vendor/versions.json");
    if (!response.ok) throw new Error();
    const { packages } = await response.json(); // written by web/copy-vendor.mjs
    $("versions").textContent = Object.entries(packages).map(([name, version]) => `${name} ${version}`).join(" · ");
  } catch {
    $("versions").textContent = "renderer not installed";
  }
}

wire();
if (body.dataset.vendor === "missing") $("vendor-banner").hidden = false;
else loadRenderer().catch(() => {}); // fetch and set up the renderer while the user picks a photo
setState("idle", "Waiting for a photo.");
showVersions();
page.infoLoaded = loadInfo();
const sharedJob = new URLSearchParams(location.search).get("job") || new URLSearchParams(location.hash.slice(1)).get("job");
if (sharedJob) openSharedJob(sharedJob);
