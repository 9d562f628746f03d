// Sharing a scene: the job's link in the address bar (`?job=<id>`), "Share link" (Web Share API, else the
// clipboard) and "Share scene file" (Web Share API with files, where the browser can share them).

import { $ } from "./state.js";
import { DOWNLOADS } from "./server.js";

let shared = { link: null, file: null }; // what the two share buttons hand over: the current scene's

/** The job's link in the address bar (`?job=<id>`), or none (`null`: a local file, a one-request prediction). */
export function showJobLink(id) {
  const url = new URL(location.href);
  url.hash = "";
  if (id) url.searchParams.set("job", id);
  else url.searchParams.delete("job");
  if (url.href !== location.href) history.replaceState(null, "", url);
}

/** "Share link" (a job's scene, reopened from its URL) and "Share scene file" (Web Share API, where the
 * browser can share files). */
export function showSharing(result) {
  const link = result.jobId ? location.href : null;
  const extension = DOWNLOADS.find(([name]) => name === result.format)?.[4] || `.${result.format}`;
  const file = result.bytes && !result.local
    ? new File([result.bytes], `${result.fileStem}${extension}`, { type: "application/octet-stream" })
    : null;
  shared = { link, file };
  $("share-link").hidden = !link;
  $("share-file").hidden = !(file && navigator.canShare?.({ files: [file] }));
  $("share-note").textContent = "";
}

export async function shareLink() {
  const { link } = shared;
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

export async function shareFile() {
  const { file } = shared;
  try {
    await navigator.share({ files: [file], title: file.name });
  } catch (error) {
    if (error.name !== "AbortError") $("share-note").textContent = `Could not share the file: ${error.message}`;
  }
}
