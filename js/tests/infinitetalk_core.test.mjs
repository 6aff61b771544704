// Run: node --test js/tests   (node's built-in test runner; no npm packages)
import { test } from "node:test";
import assert from "node:assert/strict";
import { formatEta, parseProgress, progressLabel } from "../infinitetalk_core.js";

test("formatEta", () => {
  assert.equal(formatEta(0), "0:00");
  assert.equal(formatEta(65.4), "1:05");
  assert.equal(formatEta(3723), "1:02:03");
  assert.equal(formatEta(null), "--:--");
  assert.equal(formatEta(-1), "--:--");
  assert.equal(formatEta(Number.NaN), "--:--");
});

test("parseProgress accepts the server payload and rejects junk", () => {
  const p = parseProgress({ node: 12, chunk: 2, chunks: 10, step: 7, steps: 40, fraction: 0.3, eta: 90 });
  assert.deepEqual(p, { node: "12", stage: "sampling", chunk: 2, chunks: 10, step: 7, steps: 40, fraction: 0.3,
    eta: 90, chunkDone: false, ditCalls: 0, skippedCalls: 0 });
  assert.equal(parseProgress(null), null);
  assert.equal(parseProgress({ chunk: 1 }), null);
  assert.equal(parseProgress({ chunk: -1, chunks: 3 }), null);
  assert.equal(parseProgress({ chunk: 0, chunks: 3, fraction: 7 }).fraction, 1);
  assert.equal(parseProgress({ chunk: 0, chunks: 3, eta: "soon" }).eta, null);
});

test("parseProgress reads the stage", () => {
  const p = parseProgress({ node: "13", stage: "decoding", chunk: 0, chunks: 4, step: 2, steps: 2, fraction: 0.2,
    eta: null });
  assert.deepEqual(p, { node: "13", stage: "decoding", chunk: 0, chunks: 4, step: 2, steps: 2, fraction: 0.2,
    eta: null, chunkDone: false, ditCalls: 0, skippedCalls: 0 });
  // stages before the chunk plan exists (and muxing/done) may come without chunk numbers
  assert.equal(parseProgress({ stage: "preparing", node: 12 }).chunks, null);
  assert.equal(parseProgress({ stage: "muxing", chunks: 0, chunk: 0, fraction: 0.95 }).stage, "muxing");
  assert.equal(parseProgress({ stage: "done", fraction: 1 }).stage, "done");
  // an unknown stage, or a chunk stage without chunk numbers, is not ours
  assert.equal(parseProgress({ stage: "dreaming", chunk: 0, chunks: 3 }), null);
  assert.equal(parseProgress({ stage: "sampling", step: 1, steps: 4 }), null);
  assert.equal(parseProgress({ stage: "decoding", chunk: -1, chunks: 3 }), null);
  // without a stage: sampling, or done once the fraction reaches 1
  assert.equal(parseProgress({ chunk: 1, chunks: 3, fraction: 0.5 }).stage, "sampling");
  assert.equal(parseProgress({ chunk: 3, chunks: 3, fraction: 1, chunk_done: true }).stage, "done");
});

test("progressLabel shows the stage", () => {
  const label = (detail) => progressLabel(parseProgress(detail));
  assert.equal(label({ stage: "preparing", node: 12 }), "Preparing…");
  assert.equal(label({ stage: "encoding_references", chunk: 0, chunks: 12, fraction: 0 }), "Encoding references…");
  assert.equal(label({ stage: "sampling", chunk: 2, chunks: 12, step: 7, steps: 40, fraction: 0.2, eta: 250 }),
    "Chunk 3/12 · sampling step 7/40 · ETA 4:10");
  assert.equal(label({ stage: "sampling", chunk: 0, chunks: 12, step: 0, steps: 40, eta: null }),
    "Chunk 1/12 · sampling step 0/40 · ETA --:--");
  assert.equal(label({ stage: "decoding", chunk: 2, chunks: 12, step: 40, steps: 40, eta: null }),
    "Chunk 3/12 · decoding");
  assert.equal(label({ stage: "decoding", chunk: 11, chunks: 12, step: 40, steps: 40, eta: 65 }),
    "Chunk 12/12 · decoding · ETA 1:05");
  assert.equal(label({ stage: "refining_context", chunk: 4, chunks: 12, fraction: 0.3, eta: 65 }),
    "Chunk 5/12 · refining context (experimental) · ETA 1:05");
  assert.equal(label({ stage: "muxing", chunk: 11, chunks: 12, fraction: 0.99, node: 13 }), "Muxing…");
  assert.equal(label({ stage: "done", chunk: 11, chunks: 12, fraction: 1 }), "Done");
});

test("progressLabel keeps payloads without a stage working", () => {
  assert.equal(progressLabel(parseProgress({ chunk: 2, chunks: 10, step: 7, steps: 40, fraction: 0.2, eta: 250 })),
    "Chunk 3/10 · sampling step 7/40 · ETA 4:10");
  assert.equal(progressLabel(parseProgress({ chunk: 3, chunks: 10, steps: 40, fraction: 0.3, eta: null, chunk_done: true })),
    "Chunk 3/10 · ETA --:--");
  assert.equal(progressLabel(parseProgress({ chunk: 10, chunks: 10, fraction: 1, chunk_done: true })), "Done");
  assert.equal(progressLabel(parseProgress({ chunk: 3, chunks: 10, steps: 40, fraction: 0.3, eta: 60, chunk_done: true,
    dit_calls: 120, skipped_calls: 42 })), "Chunk 3/10 · cache skipped 42/120 · ETA 1:00");
  assert.equal(progressLabel(parseProgress({ chunk: 3, chunks: 10, steps: 40, fraction: 0.3, eta: 60, chunk_done: true,
    dit_calls: 120, skipped_calls: 0 })), "Chunk 3/10 · ETA 1:00");
  assert.equal(progressLabel(null), "");
});

test("liveInfo accepts only output-folder /view URLs; liveLabel", async () => {
  const { liveInfo, liveLabel } = await import("../infinitetalk_core.js");
  const url = "/view?filename=index.m3u8&subfolder=InfiniteTalk_jobs%2Fjob%2Flive&type=output";
  assert.deepEqual(liveInfo({ live_url: url, latest_url: url.replace("index.m3u8", "latest.mp4") }),
    { liveUrl: url, latestUrl: url.replace("index.m3u8", "latest.mp4") });
  assert.equal(liveInfo({ live_url: "https://evil.example/x.m3u8" }), null);
  assert.equal(liveInfo({ live_url: "/view?filename=x&type=temp" }), null);
  assert.equal(liveInfo({ chunk: 1 }), null);
  assert.equal(liveLabel(3, 12), "chunk 3/12 live");
  assert.equal(liveLabel(null, 12), "live");
});
