// Run: node --test js/tests   (node's built-in test runner; no npm packages)
import { test } from "node:test";
import assert from "node:assert/strict";
import { formatEta, parseProgress, progressLabel, videoFromOutput, viewUrl } from "../infinitetalk_core.js";

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
  assert.deepEqual(p, { node: "12", chunk: 2, chunks: 10, step: 7, steps: 40, fraction: 0.3, eta: 90, chunkDone: false });
  assert.equal(parseProgress(null), null);
  assert.equal(parseProgress({ chunk: 1 }), null);
  assert.equal(parseProgress({ chunk: -1, chunks: 3 }), null);
  assert.equal(parseProgress({ chunk: 0, chunks: 3, fraction: 7 }).fraction, 1);
  assert.equal(parseProgress({ chunk: 0, chunks: 3, eta: "soon" }).eta, null);
});

test("progressLabel", () => {
  assert.equal(progressLabel(parseProgress({ chunk: 2, chunks: 10, step: 7, steps: 40, fraction: 0.2, eta: 250 })),
    "chunk 3 of 10 · step 7/40 · ETA 4:10");
  assert.equal(progressLabel(parseProgress({ chunk: 3, chunks: 10, steps: 40, fraction: 0.3, eta: null, chunk_done: true })),
    "chunk 3 of 10 · ETA --:--");
  assert.equal(progressLabel(parseProgress({ chunk: 10, chunks: 10, fraction: 1, chunk_done: true })), "chunk 10 of 10 · done");
  assert.equal(progressLabel(null), "");
});

test("viewUrl and videoFromOutput", () => {
  const out = { images: [{ filename: "talk_00001.mp4", subfolder: "InfiniteTalk", type: "output" }], animated: [true] };
  const video = videoFromOutput(out);
  assert.equal(viewUrl(video), "/api/view?filename=talk_00001.mp4&type=output&subfolder=InfiniteTalk");
  assert.equal(viewUrl(video, "/base"), "/base/api/view?filename=talk_00001.mp4&type=output&subfolder=InfiniteTalk");
  assert.equal(videoFromOutput({ images: [{ filename: "a.png" }] }), null);
  assert.equal(videoFromOutput(undefined), null);
  assert.equal(viewUrl({}), null);
});
