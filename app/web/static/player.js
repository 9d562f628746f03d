// A clip's `.sogv` ("SOG video", docs/formats.md) played on the page: downloaded once (the bytes loaded shown),
// decoded frame by frame in the browser (sequence.js: WebCodecs, in a worker) and written in place into one Spark
// PackedSplats (no scene file parsed per frame), played at the clip's frame rate, paused, or moved to a frame
// by the clip's slider. While frame k is shown, frame k + 1 is being decoded; the frame rate reached is shown.
//
// Test contract: body.dataset.player is "loading", "ready" or "error"; body.dataset.playing is "1" while
// playing; body.dataset.clipFrame the frame shown; body.dataset.playedFrames the frames shown since the
// sequence opened; body.dataset.playbackFps the frame rate reached over the last frames played;
// body.dataset.sequenceBytes the bytes of the .sogv loaded; body.dataset.sequenceDecoder "worker" (decoded in
// sequence_worker.js) or "page" (where no worker starts); body.dataset.decodeMs and fillMs the mean
// milliseconds a frame took to decode (its five streams and its Gaussians) and to write into Spark's splats,
// over the last frames: the player's own work, apart from Spark's drawing.

import { $, body, mb, Superseded } from "./state.js";
import { download } from "./http.js";
import { openSequence, openSequenceInWorker } from "./sequence.js";
import { showScene, sparkModule, splatsChanged } from "./viewer.js";

const FPS_WINDOW = 30; // frames over which the frame rate reached is measured

let player = null; // the sequence being played: see openPlayer

/**
 * Opens the clip's sequence at `url` (in the background: the clip's first frame is already shown from its
 * own scene file) and takes over the slider: `onFrame(index)` is called for each frame shown. `clip`:
 * `{ manifest, camera, run, name }` (the clip's manifest, its camera for `showScene`, the page's run).
 */
export function openPlayer(url, clip, onFrame) {
  stopPlayer();
  const current = { ...clip, onFrame, sequence: null, packed: null, shown: -1, playing: false, seekTo: null,
                    queue: Promise.resolve(), ahead: null, busy: false, times: [], played: 0, bytes: 0,
                    work: { decodeMs: [], fillMs: [] } };
  player = current;
  body.dataset.player = "loading";
  $("play").hidden = false;
  $("play").disabled = true;
  load(current, url).catch((error) => {
    if (player !== current || error instanceof Superseded) return;
    player = null; // the slider goes back to the per-frame scenes
    body.dataset.player = "error";
    $("play").hidden = true;
    status(`The clip's sequence cannot be played here (${error.message}); the slider shows each frame's scene.`);
  });
}

/** Stops playing and forgets the sequence (another scene is about to be shown). */
export function stopPlayer() {
  if (player) {
    player.playing = false;
    player.sequence?.close?.();
  }
  player = null;
  for (const key of ["player", "playing", "playedFrames", "playbackFps", "sequenceBytes", "sequenceDecoder", "decodeMs",
                     "fillMs"]) {
    delete body.dataset[key];
  }
  $("play").hidden = true;
  $("playback").hidden = true;
}

/** The slider moved to `index`: the player shows it (true), or there is no sequence ready (false). */
export function seekPlayer(index) {
  const current = player;
  if (!current?.packed) return false;
  current.seekTo = index;
  if (!current.playing) showSought(current);
  return true;
}

/** Play / pause (the button, once at start-up). */
export function wirePlayer() {
  $("play").addEventListener("click", () => {
    const current = player;
    if (!current?.packed) return;
    if (current.playing) {
      current.playing = false;
    } else {
      current.playing = true;
      current.times = [];
      play(current);
    }
    showPlaying(current);
  });
}

async function load(current, url) {
  const { bytes } = await download(url, current.run, (loaded, total) => {
    if (player === current) status(`Loading the clip's sequence: ${mb(loaded)}${total ? ` of ${mb(total)}` : ""}…`);
  });
  current.run.check();
  current.bytes = bytes.byteLength;
  body.dataset.sequenceBytes = String(bytes.byteLength);
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  try {
    current.sequence = await openSequenceInWorker(buffer); // decoded off this thread, which fills the splats
    body.dataset.sequenceDecoder = "worker";
  } catch {
    current.sequence = await openSequence(buffer); // no worker: here (a bad file throws the same again)
    body.dataset.sequenceDecoder = "page";
  }
  if (player !== current) {
    current.sequence.close?.();
    return;
  }
  const Spark = await sparkModule();
  current.setPackedSplat = Spark.setPackedSplat;
  const start = Math.max(0, Number(body.dataset.clipFrame) || 0); // where the slider is
  const gaussians = await decode(current, start);
  const packed = new Spark.PackedSplats({ maxSplats: gaussians.count });
  packed.ensureSplats(gaussians.count);
  packed.numSplats = gaussians.count;
  fill(current, packed.packedArray, gaussians);
  if (player !== current) return;
  // The sequence's positions are in the PLY's axes (OpenCV: x right, y down, z forward).
  await showScene(null, "ply", current.camera, current.run, current.name, { keepView: true, source: "frame", packedSplats: packed });
  current.packed = packed;
  shown(current, start);
  body.dataset.player = "ready";
  $("play").disabled = false;
  showPlaying(current);
  if (current.seekTo !== null) showSought(current);
}

/** Frame `index`'s Gaussians, decoded one frame at a time (the decoders keep state between calls). */
function decode(current, index) {
  const gaussians = current.queue.then(async () => {
    const start = performance.now();
    const frame = await current.sequence.frame(index);
    measured(current, "decodeMs", performance.now() - start);
    return frame;
  });
  current.queue = gaussians.catch(() => {});
  return gaussians;
}

/** The decode of frame `index`, started earlier (while the frame before was shown) or now. */
function ahead(current, index) {
  if (current.ahead?.index !== index) current.ahead = { index, gaussians: decode(current, index) };
  return current.ahead.gaussians;
}

async function play(current) {
  const count = current.sequence.numFrames;
  const interval = 1000 / (current.manifest.fps || current.sequence.manifest.fps || 10);
  let due = performance.now();
  try {
    while (player === current && current.playing) {
      const index = current.seekTo ?? (current.shown + 1) % count;
      current.seekTo = null;
      const gaussians = await ahead(current, index);
      if (player !== current || !current.playing) break;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      if (player !== current || !current.playing) break;
      update(current, index, gaussians);
      ahead(current, (index + 1) % count); // decoded while this one is drawn
      await new Promise((resolve) => requestAnimationFrame(resolve)); // drawn
      due = Math.max(due + interval, performance.now() - interval); // late frames are not caught up in a burst
    }
  } catch (error) {
    if (player === current) status(`Playback stopped: ${error.message}`);
    current.playing = false;
    showPlaying(current);
  }
}

/** Paused: shows the frame the slider asks for (the last one asked for, one decode at a time). */
async function showSought(current) {
  if (current.busy) return;
  current.busy = true;
  try {
    while (player === current && !current.playing && current.seekTo !== null) {
      const index = current.seekTo;
      current.seekTo = null;
      const gaussians = await ahead(current, index);
      if (player === current && !current.playing && current.seekTo === null) update(current, index, gaussians);
    }
  } catch (error) {
    if (player === current) status(`Frame not decoded: ${error.message}`);
  } finally {
    current.busy = false;
  }
}

function update(current, index, gaussians) {
  const start = performance.now();
  fill(current, current.packed.packedArray, gaussians);
  measured(current, "fillMs", performance.now() - start);
  splatsChanged();
  shown(current, index);
}

function shown(current, index) {
  current.shown = index;
  current.played += 1;
  body.dataset.clipFrame = String(index);
  body.dataset.playedFrames = String(current.played);
  if (current.playing) {
    current.times.push(performance.now());
    if (current.times.length > FPS_WINDOW) current.times.shift();
    const { times } = current;
    if (times.length > 1) body.dataset.playbackFps = ((1000 * (times.length - 1)) / (times[times.length - 1] - times[0])).toFixed(2);
  }
  current.onFrame(index);
  showPlaying(current);
}

/** Records one frame's `name` (decodeMs, fillMs) and shows the mean over the last `FPS_WINDOW` frames. */
function measured(current, name, ms) {
  const times = current.work[name];
  times.push(ms);
  if (times.length > FPS_WINDOW) times.shift();
  if (player === current) body.dataset[name] = (times.reduce((a, b) => a + b, 0) / times.length).toFixed(1);
}

function showPlaying(current) {
  body.dataset.playing = current.playing ? "1" : "";
  if (!current.playing) delete body.dataset.playing;
  $("play").textContent = current.playing ? "Pause" : "Play";
  $("play").setAttribute("aria-pressed", String(current.playing));
  const fps = body.dataset.playbackFps;
  const rate = current.manifest.fps || current.sequence?.manifest.fps;
  const { decodeMs, fillMs } = body.dataset;
  const work = decodeMs && fillMs ? ` · a frame: decode ${Math.round(decodeMs)} ms, fill ${Math.round(fillMs)} ms` : "";
  status(`Sequence: ${mb(current.bytes)} loaded · ${fps ? `played at ${fps} frames/s` : "not played yet"}${rate ? ` (clip: ${Number(rate).toFixed(3).replace(/\.?0+$/, "")})` : ""}${work}`);
}

function status(text) {
  $("playback").textContent = text;
  $("playback").hidden = false;
}

/** Writes a frame's Gaussians (sequence.js: positions in metres, rotations w x y z, sRGB colours as stored)
 * into Spark's packed array (16 B a splat; Spark's colour is the sRGB one a PLY's f_dc holds). */
function fill(current, packedArray, { count, positions: p, scales: s, rotations: r, colorsSrgb: c, opacities: o }) {
  const set = current.setPackedSplat;
  for (let i = 0; i < count; i++) {
    const i3 = 3 * i;
    const i4 = 4 * i;
    set(packedArray, i, p[i3], p[i3 + 1], p[i3 + 2], s[i3], s[i3 + 1], s[i3 + 2],
        r[i4 + 1], r[i4 + 2], r[i4 + 3], r[i4], o[i], c[i3], c[i3 + 1], c[i3 + 2]);
  }
}

/** The centres Spark holds for the frame shown, every `step`-th splat (flat x y z; for tests): `null` before
 * the sequence is shown. */
export function shownCentres(step) {
  const packed = player?.packed;
  if (!packed) return null;
  const centres = [];
  for (let i = 0; i < packed.numSplats; i += step) {
    const { center } = packed.getSplat(i);
    centres.push(center.x, center.y, center.z);
  }
  return centres;
}
