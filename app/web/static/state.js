// The page's state: what it is doing (`document.body.dataset.state`, the status line, the error box) and the
// current action (`newRun`), whose requests a newer action cancels. Imports nothing.

export const $ = (id) => document.getElementById(id);
export const body = document.body;

export const NARROW_SCREEN = "(max-width: 760px)"; // = the narrow layout's media query in style.css
export const PHONE = `${NARROW_SCREEN}, (pointer: coarse)`;

// The page's state besides the DOM; `body.dataset` holds what the tests read.
export const page = {
  info: null, // the server's JSON info (GET / with Accept: application/json)
  infoLoaded: null, // Promise: settles once `info` and `jobs` are known (or the request failed)
  jobs: false, // the server offers POST /jobs
  run: 0, // id of the current action; callbacks of older ones are ignored
  abort: null, // cancels the current action's requests
  retry: null, // repeats the last action (after an API key is entered, or "Try again")
  startedAt: 0,
  ticker: 0,
};

export class ApiError extends Error {
  constructor(status, code, message, requestId = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
  }
}

export class Superseded extends Error {}

export function setState(state, text, { progress = undefined, detail = "" } = {}) {
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

export function showError(error) {
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

export function startTicker(render) {
  stopTicker();
  const t0 = performance.now();
  render(0);
  page.ticker = setInterval(() => render((performance.now() - t0) / 1000), 250);
}

export function stopTicker() {
  clearInterval(page.ticker);
  page.ticker = 0;
}

export function newRun() {
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
    sceneShown: false, // set by viewer.showScene: the server's preview image must not come back after it
    signal: controller.signal,
    track: (xhr) => xhrs.add(xhr),
    check: () => {
      if (run !== page.run) throw new Superseded();
    },
    current: () => run === page.run,
  };
}

/** "1.23 MB" (decimal megabytes). */
export function mb(bytes) {
  return `${(bytes / 1e6).toFixed(bytes < 1e7 ? 2 : 1)} MB`;
}
