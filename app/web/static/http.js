// HTTP to this server: the API key, the API's JSON errors, a form POST with upload progress, a download with
// progress, and the jobs API's server-sent events. Every request of an action carries its `run` (state.js).

import { $, ApiError, Superseded, mb, setState } from "./state.js";

const KEY_STORAGE = "sharp-serve.api-key";

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

/** Keeps `key` for this tab only (sessionStorage): sent as `Authorization: Bearer` from now on. */
export function setApiKey(key) {
  sessionStorage.setItem(KEY_STORAGE, key);
}

export function authHeaders() {
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

export async function errorFromResponse(response) {
  return errorFromBody(response.status, await response.text(), response.headers.get("X-Request-ID"));
}

/** POST a form with XMLHttpRequest: upload progress, then (optionally) download progress. */
export function postForm(url, form, run, { onUploaded, onHeaders, onDownload, responseType = "arraybuffer", noun = "photo" } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    run.track(xhr);
    xhr.open("POST", url);
    xhr.responseType = responseType;
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (event) => {
      if (run.current() && event.lengthComputable) {
        setState("uploading", `Uploading the ${noun}…`, {
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
    if (run.current()) setState("uploading", `Uploading the ${noun}…`, { progress: 0 });
    xhr.send(form);
  });
}

/** GET with fetch, reading the body as a stream to report progress against Content-Length. */
export async function download(url, run, onProgress) {
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

/** Resolves once the job file at `url` is made: the server holds a request for a file it is still making
 * (SHARP_JOB_FILE_WAIT_S) and then answers 503 with Retry-After, so this asks again (HEAD) after that delay,
 * for as long as `run` is current; any other error is thrown. */
export async function whenMade(url, run) {
  for (;;) {
    const response = await fetch(url, { method: "HEAD", headers: authHeaders(), signal: run.signal });
    if (response.ok) return;
    if (response.status !== 503) throw await errorFromResponse(response);
    const seconds = Number(response.headers.get("Retry-After")) || 1;
    await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
    run.check();
  }
}

/** The `event: job` messages of a server-sent event stream, read with fetch (so it can send a key). */
export async function* jobEvents(url, run) {
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

/** The form a prediction sends: the photo, its `f_px` when given, and `extra` fields. */
export function formFor(file, fPx, extra = {}) {
  const form = new FormData();
  form.append("file", file, file.name || "photo");
  if (fPx) form.append("f_px", fPx);
  // The splat budget: every output of the request (the server checks it and names the accepted range).
  const maxGaussians = $("max-gaussians").value.trim();
  if (maxGaussians) form.append("max_gaussians", maxGaussians);
  for (const [name, value] of Object.entries(extra)) form.append(name, value);
  return form;
}
