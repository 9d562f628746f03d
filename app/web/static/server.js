// The server as the page sees it: its JSON info (model, formats, endpoints, whether a key is needed), the
// formats it makes and the one the page shows, and the model line with its banner.

import { $, PHONE, page } from "./state.js";
import { apiKey } from "./http.js";

export const DOWNLOADS = [
  // [name in the server's formats and job results, label, sync endpoint, extra form fields, file extension]
  ["spz", "SPZ (compact)", "predict/spz", {}, ".spz"],
  ["ply", "PLY (reference)", "predict/ply", {}, ".ply"],
  ["ply_vertex", "PLY (vertex only, for viewers)", "predict/ply", { vertex_only: "true" }, ".vertex.ply"], // = /predict/ply_vertex
  ["splat", ".splat", "predict/splat", {}, ".splat"],
  ["sog", "SOG (smallest)", "predict/sog", {}, ".sog"],
  ["glb", "glTF (.glb)", "predict/glb", {}, ".glb"],
];
// The scene formats the renderer reads from the server, smallest file first: a phone takes the first one
// the server offers, a wide screen SPZ (finer positions than SOG's).
const SHOWN_FORMATS_SMALLEST_FIRST = ["sog", "spz"];
// Whether a job has reached a status after which nothing changes (the server's JSON info lists them; the page
// uses jobs only when it has that info).
export const isFinal = (job) => page.info.job_final_statuses.includes(job.status);

/** Reads the server's JSON info into `page.info` and `page.jobs`, and shows the model. */
export async function loadInfo() {
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

/** Whether the server makes this format (its JSON info lists it); without the info, the first four. */
export function offers(format) {
  const formats = page.info?.formats;
  return Array.isArray(formats) ? formats.includes(format) : !["sog", "glb"].includes(format);
}

/** What a job makes: the scene files offered for download, plus the server's preview render. */
export function jobOutputs() {
  return [...DOWNLOADS.map(([name]) => name).filter(offers), ...(offers("preview") ? ["preview"] : [])].join(",");
}

/** The scene format to download and show, of those `available`: the smallest on a phone, else SPZ. */
export function shownFormat(available) {
  const wanted = matchMedia(PHONE).matches ? SHOWN_FORMATS_SMALLEST_FIRST : ["spz"];
  return wanted.find((format) => available(format)) || "spz";
}

/** The model line, and a banner when the server runs the tiny network or weights other than the official ones. */
export function showModel({ preset, weights, device, dtype }) {
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
