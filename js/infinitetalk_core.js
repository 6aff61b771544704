// Pure helpers of the InfiniteTalk frontend extension (no DOM, no ComfyUI imports), so that
// `node --test js/tests` can check them. ComfyUI also loads this file as a module; it only exports.

export const PROGRESS_EVENT = "infinitetalk.progress";

// Seconds -> "1:05", "1:02:03"; null/negative/NaN -> "--:--".
export function formatEta(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds) || seconds < 0) return "--:--";
  const total = Math.round(seconds);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

// The server's event payload -> a normalised record, or null when it is not ours / malformed.
export function parseProgress(detail) {
  if (!detail || typeof detail !== "object") return null;
  const chunks = Number(detail.chunks);
  const chunk = Number(detail.chunk);
  if (!Number.isInteger(chunks) || chunks < 1 || !Number.isInteger(chunk) || chunk < 0) return null;
  const fraction = Number(detail.fraction);
  return {
    node: detail.node === undefined || detail.node === null ? null : String(detail.node),
    chunk,
    chunks,
    step: Number.isInteger(detail.step) ? detail.step : 0,
    steps: Number.isInteger(detail.steps) ? detail.steps : 0,
    fraction: Number.isFinite(fraction) ? Math.min(1, Math.max(0, fraction)) : 0,
    eta: Number.isFinite(detail.eta) ? detail.eta : null,
    chunkDone: detail.chunk_done === true,
  };
}

// "chunk 3 of 12 · step 7/40 · ETA 4:10" (1-based chunk for people; a finished chunk shows its count).
export function progressLabel(p) {
  if (!p) return "";
  const shown = p.chunkDone ? p.chunk : Math.min(p.chunk + 1, p.chunks);
  const parts = [`chunk ${shown} of ${p.chunks}`];
  if (!p.chunkDone && p.steps > 0) parts.push(`step ${p.step}/${p.steps}`);
  parts.push(p.fraction >= 1 ? "done" : `ETA ${formatEta(p.eta)}`);
  return parts.join(" · ");
}

// A saved-file record from a node's UI output -> the /view URL the browser can play.
export function viewUrl(result, base = "") {
  if (!result || typeof result.filename !== "string" || !result.filename) return null;
  const params = new URLSearchParams({
    filename: result.filename,
    type: result.type || "output",
    subfolder: result.subfolder || "",
  });
  return `${base}/api/view?${params.toString()}`;
}

// The first playable video in an "executed" output ({images: [...], animated: [true]}), or null.
export function videoFromOutput(output) {
  const items = output && Array.isArray(output.images) ? output.images : [];
  const video = items.find((r) => r && /\.(mp4|webm|mov|mkv)$/i.test(r.filename || ""));
  return video || null;
}
