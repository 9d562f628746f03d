// sharp-serve web page: a photo in, a 3D Gaussian splat scene out, rendered with Spark on three.js.
//
// Flow: the photo (or clip) is uploaded at once (XMLHttpRequest, for upload progress); the server predicts; the
// scene comes back (SPZ, or on a phone the smallest format the server offers: SOG when it has it) and is
// rendered from the photo's own viewpoint, then the user can orbit.
// Two transports: the jobs API (POST /jobs, then server-sent events, then GET the result) when the
// server's JSON info lists `POST /jobs`, else one `POST /predict/<format>` request.
// A clip always takes the jobs API; its job predicts a scene per frame, then clip.js shows them one at a time.
// A job's scene can be reopened from its link (`?job=<id>`, put in the address bar once the job exists)
// on any device while the job's results exist.
//
// Test contract: document.body.dataset.state is one of idle, uploading, queued, running,
// loading-scene, ready, error; dataset.frames counts frames rendered of the current scene and
// dataset.visible is "1" once a frame shows splats (dataset.firstFrameMs: from the drop to that frame);
// dataset.preview is "shown" once the server's preview render was displayed while the scene loaded;
// dataset.rendering is "1" while frames are still to be drawn (a drag easing out, Spark sorting for the view);
// dataset.viewDegrees: the angle between the camera's view and the photo's, in the last frame.
//
// This entry module holds what the page does (a photo or a clip, a shared link, a local file) and wires the page up;
// docs/page.md ("Code") lists the modules it imports and what each holds.

import { $, ApiError, NARROW_SCREEN, Superseded, body, newRun, page, setState, showError, stopTicker } from "./state.js";
import { setApiKey } from "./http.js";
import { loadInfo, offers, shownFormat } from "./server.js";
import { shareFile, shareLink, showJobLink } from "./share.js";
import { predictSync, predictWithJob, sharedJobScene } from "./transport.js";
import { showResult } from "./result.js";
import { backToPhoto, loadRenderer, showScene, shownSplats } from "./viewer.js";
import { plyForSpark } from "./ply.js";
import { hideClip, showClip, wireClip } from "./clip.js";
import { shownFull } from "./lod.js";

const SCENE_EXTENSIONS = ["ply", "spz", "splat", "sog"];
// Clips by name, when the browser gives no video/* type (the server recognises them by their bytes).
const VIDEO_EXTENSIONS = ["mp4", "m4v", "mov", "qt", "webm", "mkv", "3gp", "3g2", "avi"];

// ------------------------------------------------------------------------------------- prediction

/** A photo: predicted on the server, then shown from its own viewpoint. A clip: a job that predicts each
 * frame, then its first frame's scene with the frame slider (clip.js). */
async function predict(file) {
  const run = newRun();
  const fPx = $("f-px").value.trim();
  const clip = isClip(file);
  page.retry = () => predict(file);
  page.startedAt = performance.now();
  body.dataset.source = "upload";
  showJobLink(null);
  hideClip();
  if (matchMedia(NARROW_SCREEN).matches) window.scrollTo(0, 0); // the stage, with the status over it
  try {
    await page.infoLoaded; // the transport depends on it: a photo may be chosen before it arrived
    run.check();
    if (clip && !page.jobs) {
      throw new ApiError(0, "clips_need_jobs", "This server does not offer its jobs API (POST /jobs) here, and only a job takes a video.");
    }
    const result = page.jobs ? await predictWithJob(file, fPx, run, clip ? clipFields() : null) : await predictSync(file, fPx, run);
    run.check();
    stopTicker();
    if (result.clip) {
      showResult(await showClip(result, run), file);
      return;
    }
    setState("loading-scene", "Preparing the 3D scene…", { progress: null });
    await showScene(result.bytes, result.format, result.camera, run, file.name || "photo");
    run.check();
    shownFull();
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

/** A job's scene from its link (`?job=<id>`): on another device, or after a reload, while its results exist. */
async function openSharedJob(id) {
  const run = newRun();
  page.retry = () => openSharedJob(id);
  page.startedAt = performance.now();
  body.dataset.source = "link";
  hideClip();
  try {
    setState("queued", "Opening the shared scene…", { progress: null });
    await page.infoLoaded;
    run.check();
    const result = await sharedJobScene(id, run);
    run.check();
    if (result.clip) {
      showResult(await showClip(result, run), null);
      return;
    }
    setState("loading-scene", "Preparing the 3D scene…", { progress: null });
    await showScene(result.bytes, result.format, result.camera, run, result.fileStem);
    run.check();
    shownFull();
    showResult(result, null);
  } catch (error) {
    if (error instanceof Superseded || !run.current()) return;
    showError(error);
  }
}

// ------------------------------------------------------------------------------------ local files

async function openLocal(file) {
  const run = newRun();
  page.retry = () => openLocal(file);
  page.startedAt = performance.now();
  body.dataset.source = "local";
  showJobLink(null);
  hideClip();
  const extension = (file.name.split(".").pop() || "").toLowerCase();
  try {
    setState("loading-scene", `Reading ${file.name}…`, { progress: null });
    let bytes = new Uint8Array(await file.arrayBuffer());
    let camera = null;
    if (extension === "ply") ({ bytes, camera } = plyForSpark(bytes));
    await showScene(bytes, extension, camera, run, file.name);
    run.check();
    const meta = camera ? { width: camera.width, height: camera.height, fPx: camera.fPx, fPxSource: "file" } : {};
    meta.gaussians = shownSplats();
    showResult({ meta, local: file.name, format: extension }, null);
  } catch (error) {
    if (error instanceof Superseded || !run.current()) return;
    showError(error);
  }
}

// ------------------------------------------------------------------------------------------ input

/** Whether a chosen file is a video (by its type, else its name; the server checks its bytes). */
function isClip(file) {
  const extension = (file.name || "").split(".").pop().toLowerCase();
  return (file.type || "").startsWith("video/") || VIDEO_EXTENSIONS.includes(extension);
}

/** A clip's job fields: its frames in the scene format the page shows, and the options that were filled in. */
function clipFields() {
  // Each frame's scene file, and the clip as one .sogv that the page plays (player.js) where the server makes it
  // (a .sogv holds SHARP's whole grid: not with a splat budget, which the server refuses for it).
  const playable = offers("sequence") && !$("max-gaussians").value.trim();
  const fields = { outputs: playable ? `${shownFormat(offers)},sequence` : shownFormat(offers) };
  for (const [id, name] of [["clip-fps", "fps"], ["clip-max-frames", "max_frames"]]) {
    const value = $(id).value.trim();
    if (value) fields[name] = value;
  }
  if ($("clip-align").checked) fields.align = "scale";
  return fields;
}

/** A chosen, dropped or pasted file: a scene file opens locally, anything else is a photo or a clip. */
function take(file) {
  if (!file) return;
  const extension = (file.name || "").split(".").pop().toLowerCase();
  if (SCENE_EXTENSIONS.includes(extension)) openLocal(file);
  else predict(file);
}

function wire() {
  wireClip();
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
  $("reset-view").addEventListener("click", backToPhoto);
  $("share-link").addEventListener("click", shareLink);
  $("share-file").addEventListener("click", shareFile);
  $("auth-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) return;
    setApiKey(key);
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
