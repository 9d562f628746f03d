// The result panel: the scene's metadata, the download buttons (the job's files, else a new one-request
// prediction in that format; a clip's: its zip, manifest, preview and the frame shown) and the share buttons.

import { $, mb } from "./state.js";
import { download, formFor, postForm } from "./http.js";
import { DOWNLOADS, offers } from "./server.js";
import { showSharing } from "./share.js";

/** Shows `result` (from a transport, or a local file's `{ meta, local, format }`); `file`: the photo, if any. */
export function showResult(result, file) {
  const { meta } = result;
  const rows = [];
  const fmt = (n, digits = 0) => Number(n).toLocaleString("en-US", { maximumFractionDigits: digits });
  if (meta.gaussians) {
    const kept = meta.predicted && meta.predicted !== meta.gaussians ? ` of ${fmt(meta.predicted)} predicted` : "";
    rows.push(["Gaussians", `${fmt(meta.gaussians)}${kept}`]);
  }
  if (meta.frames) rows.push(["Frames", `${meta.frames}, ${meta.align === "scale" ? "scales aligned" : "each as its own photo"}`]);
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
  if (file) rows.unshift([result.clip ? "Clip" : "Photo", file.name || (result.clip ? "clip" : "photo")]);
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

function showDownloads(result, file) {
  const box = $("downloads");
  box.replaceChildren();
  $("downloads-note").textContent = "";
  if (result.files) {
    showFiles(result.files);
    return;
  }
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

/** A clip's files (`{ label, path, url(), filename() }`), each fetched (with the API key) when clicked. */
function showFiles(files) {
  for (const file of files) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = file.label;
    button.dataset.file = file.path;
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        const run = { signal: undefined, track: () => {}, check: () => {}, current: () => false };
        const { bytes } = await download(file.url(), run, (loaded, total) => {
          button.textContent = `${file.label}: ${total ? `${Math.round((100 * loaded) / total)} %` : mb(loaded)}`;
        });
        saveBytes(bytes, file.filename());
        button.textContent = file.label;
      } catch (error) {
        button.textContent = `${file.label}: failed`;
        $("downloads-note").textContent = error.message || String(error);
      } finally {
        button.disabled = false;
      }
    });
    $("downloads").append(button);
  }
  $("downloads-note").textContent = "The zip holds every frame's scene, the manifest and the preview video.";
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
