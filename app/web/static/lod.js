// Levels of detail: a photo's job also makes the `coarse` output (SPZ of 1/64 to 1/32 of the Gaussians, merged
// on the grid: app.budget.coarse_level) and makes it first, so the job succeeds as soon as it exists; the page
// shows it while it downloads the full scene (asked at once, so the server makes it next) and swaps that in
// once Spark has decoded it (the coarse one stays on screen until then: no blank frame).
//
// Test contract: document.body.dataset.lod is "coarse" while the coarse level is shown, "full" once the full
// scene replaced it; absent when the server has no coarse output (or for a clip, a local file).

import { body, setState } from "./state.js";
import { download } from "./http.js";
import { offers } from "./server.js";
import { showScene } from "./viewer.js";

const COARSE = "coarse";

/** A photo job's `outputs` and `first` with the coarse level added and made first, when the server makes it. */
export function withCoarse(fields) {
  delete body.dataset.lod;
  if (!offers(COARSE)) return fields;
  return { ...fields, outputs: `${fields.outputs},${COARSE}`, first: COARSE };
}

/** Shows a finished job's coarse level (`results`: its files' URLs, `camera`: { fPx, width, height }) while the
 * full scene downloads; a failure leaves the page as it was (the full scene still comes). */
export async function showCoarse(results, camera, run) {
  if (!results[COARSE]) return;
  try {
    const { bytes } = await download(new URL(results[COARSE], location.href), run, () => {});
    run.check();
    // Not `ready`: that is the full scene's, which the transport is downloading.
    await showScene(bytes, "spz", camera, run, "coarse preview", { ready: false });
    body.dataset.lod = "coarse";
    setState("loading-scene", "Coarse preview shown; loading the full scene…", { progress: null });
  } catch (error) {
    if (!run.current()) throw error;
  }
}

/** The full scene is shown: called after `showScene` of the full file. */
export function shownFull() {
  if (body.dataset.lod === "coarse") body.dataset.lod = "full";
}
