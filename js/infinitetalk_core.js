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

// Stages the server reports (payload field `stage`), in the order a run goes through them.
export const STAGES = ["preparing", "encoding_references", "refining_context", "sampling", "decoding", "muxing", "done"];

function wholeNumber(value) {
  const n = Number(value);
  return value !== null && value !== undefined && value !== "" && Number.isInteger(n) ? n : null;
}

// The server's event payload -> a normalised record, or null when it is not ours / malformed.
// `chunk` is the 0-based index of the chunk being worked on, `chunks` the total. A payload without
// `stage` (older servers) is a sampling update, or "done" once fraction reaches 1.
export function parseProgress(detail) {
  if (!detail || typeof detail !== "object") return null;
  const hasStage = detail.stage !== undefined && detail.stage !== null;
  if (hasStage && !STAGES.includes(detail.stage)) return null;
  let chunks = wholeNumber(detail.chunks);
  let chunk = wholeNumber(detail.chunk);
  const chunkOk = chunks !== null && chunks >= 1 && chunk !== null && chunk >= 0;
  if (!chunkOk) {
    if (!hasStage || detail.stage === "sampling" || detail.stage === "decoding") return null;
    chunks = null;
    chunk = null;
  }
  const fraction = Number(detail.fraction);
  const clamped = detail.fraction !== null && Number.isFinite(fraction) ? Math.min(1, Math.max(0, fraction)) : 0;
  return {
    node: detail.node === undefined || detail.node === null ? null : String(detail.node),
    stage: hasStage ? detail.stage : clamped >= 1 ? "done" : "sampling",
    chunk,
    chunks,
    step: Number.isInteger(detail.step) ? detail.step : 0,
    steps: Number.isInteger(detail.steps) ? detail.steps : 0,
    fraction: clamped,
    eta: Number.isFinite(detail.eta) ? detail.eta : null,
    chunkDone: detail.chunk_done === true,
    ditCalls: wholeNumber(detail.dit_calls) ?? 0,
    skippedCalls: wholeNumber(detail.skipped_calls) ?? 0,
  };
}

// The status line drawn on the node, e.g. "Chunk 3/12 · sampling step 7/40 · ETA 4:10" (1-based chunk
// for people), "Chunk 3/12 · decoding", "Preparing…", "Muxing…", "Done".
export function progressLabel(p) {
  if (!p) return "";
  const eta = `ETA ${formatEta(p.eta)}`;
  switch (p.stage) {
    case "preparing":
      return "Preparing…";
    case "encoding_references":
      return "Encoding references…";
    case "muxing":
      return "Muxing…";
    case "done":
      return "Done";
    default:
      break;
  }
  // A finished chunk (older payloads: chunk_done) counts the chunks done; otherwise chunk is 0-based.
  const shown = p.chunkDone ? p.chunk : Math.min(p.chunk + 1, p.chunks);
  const parts = [`Chunk ${shown}/${p.chunks}`];
  if (p.stage === "refining_context") {
    parts.push("refining context (experimental)", eta);
    return parts.join(" · ");
  }
  if (p.stage === "decoding") {
    parts.push("decoding");
    if (p.eta !== null) parts.push(eta);
    return parts.join(" · ");
  }
  if (!p.chunkDone) parts.push(p.steps > 0 ? `sampling step ${p.step}/${p.steps}` : "sampling");
  // step caches: how many of the finished chunk's DiT pass calls were answered from the cache
  if (p.chunkDone && p.skippedCalls > 0 && p.ditCalls > 0) parts.push(`cache skipped ${p.skippedCalls}/${p.ditCalls}`);
  parts.push(eta);
  return parts.join(" · ");
}

// The live preview's URLs of a progress payload (Streaming Sampler, live_preview on), or null. Only
// ComfyUI /view URLs of the output folder are accepted: the <video> must never load anything else.
export function liveInfo(detail) {
  if (!detail || typeof detail !== "object") return null;
  const ok = (url) => typeof url === "string" && url.startsWith("/view?") && url.includes("type=output");
  if (!ok(detail.live_url)) return null;
  return { liveUrl: detail.live_url, latestUrl: ok(detail.latest_url) ? detail.latest_url : null };
}

// "chunk 3/12 live": the text under the live video (chunks done, of all).
export function liveLabel(done, chunks) {
  return Number.isInteger(done) && Number.isInteger(chunks) && chunks > 0 ? `chunk ${done}/${chunks} live` : "live";
}
