// A clip's job on the page: its manifest, the first frame's scene, the frame slider (and the arrow keys) that
// loads the other frames' scenes on demand (the last few kept, never the whole clip), the frame's number and
// time, the server's preview video (each frame's render beside the frame) and the clip's downloads.
//
// Test contract: body.dataset.clipFrames is the clip's frame count once its manifest is read, and
// body.dataset.clipFrame the index (0-based) of the frame whose scene is shown.

import { $, ApiError, Superseded, body, mb, page, setState, showError } from "./state.js";
import { apiKey, download, whenMade } from "./http.js";
import { shownFormat } from "./server.js";
import { showScene } from "./viewer.js";
import { plyForSpark } from "./ply.js";
import { openPlayer, seekPlayer, stopPlayer, wirePlayer } from "./player.js";

const CACHED_FRAMES = 4; // scene files kept in memory: the frames just shown and the next one
// What the page can show of a frame, in order of preference when the one it would choose is missing (a job
// made with curl has PLY frames only).
const FRAME_FORMATS = ["spz", "sog", "ply", "splat"];

let clip = null; // the clip shown: see showClip

/**
 * Shows a finished clip's job (`result`: `{ clip: job, jobUrl, fileStem? }` from the transport): reads its
 * manifest, shows frame 0 and sets up the slider and the preview. Returns what `showResult` displays.
 */
export async function showClip(result, run) {
  setState("loading-scene", "Reading the clip's manifest…", { progress: null });
  const manifestUrl = new URL(result.results["manifest.json"], location.href);
  const { bytes, headers } = await download(manifestUrl, run);
  const manifest = JSON.parse(new TextDecoder().decode(bytes));
  const first = manifest.frames[0];
  const has = (name) => Boolean(first?.files?.[name]);
  const format = [shownFormat(has), ...FRAME_FORMATS].find(has);
  if (!format) {
    throw new ApiError(0, "no_scene_format", `This clip's job made no scene file the page can show (its frames are ${Object.keys(first?.files || {}).join(", ") || "missing"}); make one with outputs=spz.`);
  }
  const stem = result.fileStem || (/filename="([^"]+)\.manifest\.json"/.exec(headers.get("Content-Disposition") || "")?.[1] ?? "clip");
  clip = {
    run,
    manifest,
    format,
    stem,
    results: result.results,
    camera: { fPx: manifest.f_px, width: manifest.image_width, height: manifest.image_height },
    cache: new Map(), // frame index -> Promise of its scene file's bytes, least recently used first
    shown: null,
    wanted: 0,
    busy: false,
  };
  body.dataset.clipFrames = String(manifest.num_frames);
  delete body.dataset.clipFrame;
  const slider = $("frame-slider");
  slider.max = String(manifest.num_frames - 1);
  slider.value = "0";
  showFrameLabel(0);
  $("clip-bar").hidden = manifest.num_frames < 2;
  await showWanted(true);
  page.retry = () => showWanted(false); // a frame that failed to load: load it again
  showPreviewVideo(result.results["preview.mp4"], run);
  if (result.results["sequence.sogv"]) playSequence(new URL(result.results["sequence.sogv"], location.href));
  return clipResult(result, manifest, format);
}

/** Hides the slider and the preview video: another action's scene is about to be shown. */
export function hideClip() {
  clip = null;
  stopPlayer();
  $("clip-bar").hidden = true;
  $("clip-preview").hidden = true;
  const video = $("clip-video");
  if (video.src.startsWith("blob:")) URL.revokeObjectURL(video.src);
  video.removeAttribute("src");
  video.load();
  delete body.dataset.clipFrames;
  delete body.dataset.clipFrame;
}

/** Wires the slider, its buttons and the arrow keys (once, at start-up). */
export function wireClip() {
  const slider = $("frame-slider");
  slider.addEventListener("input", () => goTo(Number(slider.value)));
  wirePlayer();
  $("frame-prev").addEventListener("click", () => step(-1));
  $("frame-next").addEventListener("click", () => step(1));
  document.addEventListener("keydown", (event) => {
    if (!clip || event.altKey || event.ctrlKey || event.metaKey) return;
    if (event.target.closest?.("input, textarea, select, video, [contenteditable]")) return; // their own keys
    const delta = { ArrowLeft: -1, ArrowRight: 1 }[event.key];
    if (!delta) return;
    event.preventDefault();
    step(delta);
  });
}

function step(delta) {
  if (!clip) return;
  const index = Math.max(0, Math.min(clip.manifest.num_frames - 1, clip.wanted + delta));
  $("frame-slider").value = String(index);
  goTo(index);
}

function goTo(index) {
  if (!clip || index === clip.wanted) return;
  clip.wanted = index;
  showFrameLabel(index);
  if (seekPlayer(index)) return; // the clip's sequence, when it is loaded, shows it
  showWanted(false);
}

/** The clip's `.sogv` played in place of its frames' scene files (player.js), once it is loaded. */
function playSequence(url) {
  const current = clip;
  openPlayer(url, { manifest: current.manifest, camera: current.camera, run: current.run, name: `${current.stem} · sequence` }, (index) => {
    if (current !== clip) return;
    current.wanted = index;
    current.shown = index;
    $("frame-slider").value = String(index);
    showFrameLabel(index);
  });
}

function showFrameLabel(index) {
  const { frames, num_frames: count } = clip.manifest;
  $("frame-label").textContent = `Frame ${index + 1} of ${count} · ${Number(frames[index].time_s).toFixed(2)} s`;
}

/** Loads and shows `clip.wanted` until the frame shown is the one wanted (the slider may move meanwhile:
 * one frame loads at a time, and a frame passed over while it loaded is not shown). */
async function showWanted(first) {
  const current = clip;
  if (!current || current.busy) return;
  current.busy = true;
  try {
    while (current === clip && current.wanted !== current.shown) {
      const index = current.wanted;
      const count = current.manifest.num_frames;
      setState("loading-scene", `Loading frame ${index + 1} of ${count}…`, { progress: null });
      const bytes = await frameBytes(current, index, first);
      current.run.check();
      if (current !== clip || index !== current.wanted) continue;
      let sceneBytes = bytes;
      if (current.format === "ply") sceneBytes = plyForSpark(bytes).bytes; // Spark reads the splats alone
      const name = `${current.stem} · frame ${index + 1} of ${count}`;
      await showScene(sceneBytes, current.format, current.camera, current.run, name, { keepView: current.shown !== null, source: "frame" });
      current.shown = index;
      body.dataset.clipFrame = String(index);
      if (index + 1 < count) frameBytes(current, index + 1, false).catch(() => {}); // the likely next one
    }
  } catch (error) {
    if (first) throw error; // the caller shows it
    if (!(error instanceof Superseded) && current.run.current()) showError(error);
  } finally {
    current.busy = false;
  }
}

/** Frame `index`'s scene file, from the cache or the server (`progress`: in the status line). */
function frameBytes(current, index, progress) {
  const { cache } = current;
  let bytes = cache.get(index);
  if (bytes) {
    cache.delete(index); // most recently used last
  } else {
    const url = new URL(current.results[current.manifest.frames[index].files[current.format]], location.href);
    const what = current.format.toUpperCase();
    const onProgress = progress
      ? (loaded, total) => setState("loading-scene", `Loading frame ${index + 1}: ${mb(total || loaded)} (${what})…`, {
        progress: total ? loaded / total : null,
      })
      : undefined;
    bytes = download(url, current.run, onProgress).then((answer) => answer.bytes);
    bytes.catch(() => cache.get(index) === bytes && cache.delete(index)); // a failure is not kept
  }
  cache.set(index, bytes);
  while (cache.size > CACHED_FRAMES) cache.delete(cache.keys().next().value);
  return bytes;
}

/** The preview video, once the server has made it (after the job succeeded: docs/jobs.md "Lazy outputs"): its
 * URL as is, or with an API key (which a <video> cannot send) a blob of it. */
async function showPreviewVideo(path, run) {
  if (!path) return;
  const video = $("clip-video");
  const url = new URL(path, location.href);
  try {
    await whenMade(url, run);
    if (!run.current()) return;
    if (apiKey()) {
      const { bytes } = await download(url, run);
      if (!run.current()) return;
      video.src = URL.createObjectURL(new Blob([bytes], { type: "video/mp4" }));
    } else {
      video.src = url.href;
    }
    $("clip-preview").hidden = false;
  } catch {
    // The preview is a courtesy: the frames' scenes are shown without it.
  }
}

/** What the result panel shows of a clip: its metadata and its files to download. */
function clipResult(result, manifest, format) {
  const first = manifest.frames[0];
  const fileOf = (path, filename) => ({ url: () => new URL(result.results[path], location.href), filename: () => filename });
  const files = [
    ["All frames (.zip)", "sequence.zip", `${clip.stem}.zip`],
    ["Manifest (JSON)", "manifest.json", `${clip.stem}.manifest.json`],
    ["Preview video (MP4)", "preview.mp4", `${clip.stem}.preview.mp4`],
  ].filter(([, path]) => result.results[path]).map(([label, path, filename]) => ({ label, path, ...fileOf(path, filename) }));
  const current = clip;
  files.push({
    label: `This frame (${format.toUpperCase()})`,
    path: "frame",
    url: () => new URL(current.results[current.manifest.frames[current.wanted].files[format]], location.href),
    filename: () => `${current.stem}.${current.manifest.frames[current.wanted].files[format].split("/").pop()}`,
  });
  return {
    ...result,
    format,
    files,
    meta: {
      frames: manifest.num_frames,
      align: manifest.align,
      gaussians: first.num_gaussians,
      fPx: manifest.f_px,
      fPxSource: manifest.f_px_source,
      width: manifest.image_width,
      height: manifest.image_height,
      model: manifest.model || {},
      timings: result.clip.timings_ms || {},
    },
  };
}
