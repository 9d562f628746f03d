// The two transports of a prediction, each ending with the scene's bytes, its camera and its metadata:
// (a) the jobs API: POST /jobs, its event stream (else polling) to the end, then GET the scene file (a
//     clip's job ends with the job itself: clip.js shows its frames);
// (b) one POST /predict/<format>, whose X-Sharp-* headers describe the camera and the model.

import { $, ApiError, Superseded, body, mb, page, setState, startTicker, stopTicker } from "./state.js";
import { authHeaders, download, errorFromResponse, formFor, jobEvents, postForm } from "./http.js";
import { isFinal, jobOutputs, offers, shownFormat, showModel } from "./server.js";
import { showJobLink } from "./share.js";
import { showCoarse, withCoarse } from "./lod.js";

/** Progress of the scene's download: "Loading the scene: 1.23 MB (SOG)…". */
function downloadProgress(format) {
  const what = format.toUpperCase();
  return (loaded, total) =>
    setState("loading-scene", total ? `Loading the scene: ${mb(total)} (${what})…` : `Loading the scene (${what})…`, {
      progress: total ? loaded / total : null,
      detail: total ? `${Math.round((100 * loaded) / total)} % of ${mb(total)}` : mb(loaded),
    });
}

/** Transport (b): one POST /predict/<format>; the X-Sharp-* headers describe the camera and the model. */
export async function predictSync(file, fPx, run) {
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

/** Transport (a): POST /jobs, follow GET /jobs/{id}/events, then GET the scene file. A clip (`clip`: its
 * form fields, `outputs` included) ends with its finished job instead (`clip.js` shows its frames). */
export async function predictWithJob(file, fPx, run, clip = null) {
  const t0 = performance.now();
  let uploadedAt = 0;
  // `first`: the format the page shows; the job succeeds as soon as that one is made (the others follow).
  // A photo's job makes its coarse level first, when the server has it (lod.js).
  const fields = clip || withCoarse({ outputs: jobOutputs(), first: shownFormat(offers) });
  const xhr = await postForm("jobs", formFor(file, fPx, fields), run, {
    responseType: "text",
    noun: clip ? "clip" : "photo",
    onUploaded: () => {
      uploadedAt = performance.now();
      setState("queued", "Waiting for the server…", { progress: null });
    },
  });
  const job = JSON.parse(xhr.response);
  showJobLink(job.id);
  const result = await jobScene(job, new URL(xhr.getResponseHeader("Location") || `jobs/${job.id}`, location.href), run);
  result.fileStem = (file.name || "scene").replace(/\.[^.]*$/, "");
  if (result.clip) return result;
  const { transfer } = result.meta;
  transfer.upload = ((uploadedAt || transfer.waitedAt) - t0) / 1000;
  transfer.wait = uploadedAt ? (transfer.waitedAt - uploadedAt) / 1000 : null;
  return result;
}

/** What a job id of this server looks like (`app.jobs.base.JOB_ID_PATTERN`). */
const JOB_ID = /^[A-Za-z0-9_-]{32}$/;

/** A job's scene from its id (a shared link, `?job=<id>`): the job as it is now, followed to its end. An id
 * that cannot be a job's is refused before any request (`..` would make the job's URL the API's own). */
export async function sharedJobScene(id, run) {
  if (!JOB_ID.test(id)) {
    throw new ApiError(0, "bad_job_link", `This link's job id (“${id.slice(0, 40)}”) is not one of this server's: ` +
      "a job id is 32 letters, digits, “-” or “_”. Check that the whole link was copied.");
  }
  const jobUrl = new URL(`jobs/${id}`, location.href);
  const response = await fetch(jobUrl, { headers: { Accept: "application/json", ...authHeaders() }, signal: run.signal });
  if (!response.ok) throw await errorFromResponse(response);
  return jobScene(asJob(await response.json(), id), jobUrl, run);
}

/** `value` if it is the job `id` as the server describes jobs, else an error (never followed or polled). */
function asJob(value, id) {
  const known = ["queued", "running", ...page.info.job_final_statuses];
  if (!value || typeof value !== "object" || value.id !== id || !known.includes(value.status)) {
    throw new ApiError(0, "not_a_job", `The server's answer for job ${id} is not a job; the page stopped following it.`);
  }
  return value;
}

/** Follows a job to its end, then downloads the scene file it made; a clip's job: `{ clip: job, jobUrl }`. */
async function jobScene(job, jobUrl, run) {
  job = await followJob(job, jobUrl, run);
  if (job.model) showModel(job.model);
  if (job.results?.["manifest.json"]) return { clip: job, jobUrl, jobId: job.id, results: job.results };
  const waitedAt = performance.now();
  const results = job.results || {};
  if (results.preview) showPreview(new URL(results.preview, location.href), run);
  const m = job.metadata || {};
  const format = shownFormat((name) => Boolean(results[name]));
  // Asked at once (the server makes a file asked for before the others), while the coarse level shows (lod.js).
  const full = download(new URL(results[format], location.href), run, downloadProgress(format));
  await showCoarse(results, { fPx: m.f_px, width: m.image_width, height: m.image_height }, run);
  const { bytes, headers } = await full;
  const end = performance.now();
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

/** A job followed (its events, else polling) to a final status, its progress in the status line; the
 * succeeded job, else its error. */
async function followJob(job, jobUrl, run) {
  showJob(job);
  try {
    if (!isFinal(job)) {
      for await (const event of jobEvents(new URL(`${jobUrl.pathname.replace(/\/$/, "")}/events`, location.href), run)) {
        run.check();
        job = asJob(event, job.id);
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
    job = asJob(await response.json(), job.id);
    showJob(job);
  }
  if (job.status !== "succeeded") {
    throw new ApiError(0, job.error?.code || job.status, job.error?.message || `The job was ${job.status}.`, job.error?.request_id);
  }
  return job;
}

/** The server's render of the input view (PNG), shown until the 3D scene is ready; failures are harmless. */
async function showPreview(url, run) {
  try {
    const response = await fetch(url, { headers: authHeaders(), signal: run.signal });
    if (!response.ok || !run.current()) return;
    const image = $("preview");
    if (image.src) URL.revokeObjectURL(image.src);
    image.src = URL.createObjectURL(await response.blob());
    if (!run.current() || run.sceneShown) return; // a scene (or its coarse level) is on the canvas already
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
    const frame = job.frames ? `frame ${job.frame} of ${job.frames} · ` : ""; // a clip's job
    setState("running", job.frames ? "Predicting a scene per frame…" : "Predicting the 3D scene…", {
      progress,
      detail: `${frame}${job.stage || "running"}${progress === null ? "" : ` · ${Math.round(100 * progress)} %`}`,
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
