// InfiniteTalk frontend extension: a status line ("Chunk 3/12 · sampling step 7/40 · ETA 4:10",
// "Muxing…", ...) at the bottom of the Streaming Sampler and Video Combine nodes. The chunk preview image
// arrives through ComfyUI's own progress previews, and Video Combine's mp4 plays in ComfyUI's own video
// preview (its UI output is {images: [mp4], animated: [true]}, like SaveVideo's).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { PROGRESS_EVENT, liveInfo, liveLabel, parseProgress, progressLabel } from "./infinitetalk_core.js";

const STATUS_NODES = new Set(["InfiniteTalkStreamingSampler", "InfiniteTalkVideoCombine"]);
// A strip of this height is kept free between the node's sockets and its first widget for the status
// line (below the title, never over it or over a widget); scripts/api_to_ui.py sizes the nodes with it.
const STATUS_HEIGHT = 20;

function findNode(id) {
  return id === null ? null : app.graph?.getNodeById?.(Number(id)) ?? null;
}

function setStatus(node, text) {
  node.infinitetalkStatus = text;
  node.setDirtyCanvas?.(true, false);
}

// Height of the socket rows: where LiteGraph starts the widgets when widgets_start_y is unset.
function socketRowsHeight(node) {
  const inputs = (node.inputs ?? []).filter((slot) => !slot.widget).length;
  const rows = Math.max(1, inputs, node.outputs?.length ?? 0);
  return (node.constructor.slot_start_y || 0) + rows * (globalThis.LiteGraph?.NODE_SLOT_HEIGHT ?? 20);
}

// Cut `text` to `width` pixels with an ellipsis.
function fitText(ctx, text, width) {
  if (ctx.measureText(text).width <= width) return text;
  let end = text.length;
  while (end > 0 && ctx.measureText(text.slice(0, end) + "…").width > width) end -= 1;
  return text.slice(0, end) + "…";
}

// Live preview (Streaming Sampler, live_preview on): a <video> DOM widget playing the job's HLS playlist
// natively where the browser can (Safari); elsewhere (Chromium, no hls.js vendored) it plays the newest
// chunk (latest.m4v) and moves on to the next one when that has played and a newer chunk exists.
const HLS_TYPE = "application/vnd.apple.mpegurl";

function liveWidget(node) {
  if (node.infinitetalkLive) return node.infinitetalkLive;
  const box = document.createElement("div");
  const video = Object.assign(document.createElement("video"), { muted: true, autoplay: true, controls: true,
    playsInline: true });
  video.style.width = "100%";
  video.dataset.infinitetalkLive = "1"; // the sampler's live player, not an output preview
  const label = document.createElement("div");
  label.style.cssText = "font: 12px sans-serif; color: #9fd; padding: 2px 4px";
  box.append(video, label);
  node.addDOMWidget?.("infinitetalk_live", "video", box, { serialize: false });
  const live = { video, label, native: !!video.canPlayType?.(HLS_TYPE), chunk: -1, shown: -1, latestUrl: null };
  // fallback: when a chunk has played, show the newest one if it is newer, else replay the current one
  video.addEventListener("ended", () => (live.shown < live.chunk ? showLatest(live) : video.play?.()));
  node.infinitetalkLive = live;
  return live;
}

function showLatest(live) {
  if (!live.latestUrl) return;
  live.shown = live.chunk;
  live.video.src = `${live.latestUrl}&chunk=${live.chunk}`; // a new URL per chunk: no stale cache
  live.video.play?.().catch?.(() => {});
}

function updateLive(node, detail, progress) {
  const info = liveInfo(detail);
  if (!info && !node.infinitetalkLive) return;
  const live = liveWidget(node);
  if (info) {
    live.latestUrl = info.latestUrl;
    if (live.native && live.video.src !== info.liveUrl) live.video.src = info.liveUrl;
  }
  // the live event carries the chunks done so far (a resumed job has some); chunk_done events count on
  if (progress && (progress.chunkDone || info)) live.chunk = Math.max(live.chunk, progress.chunk);
  if (progress?.chunks) live.label.textContent = liveLabel(Math.max(0, live.chunk), progress.chunks);
  const idle = live.video.paused || live.video.ended || live.shown < 0;
  if (!live.native && live.chunk > live.shown && idle) showLatest(live);
}

app.registerExtension({
  name: "infinitetalk.dubbing",
  setup() {
    api.addEventListener(PROGRESS_EVENT, (event) => {
      const progress = parseProgress(event.detail);
      const node = progress && findNode(progress.node);
      if (node) setStatus(node, progressLabel(progress));
      if (node && node.type === "InfiniteTalkStreamingSampler") updateLive(node, event.detail, progress);
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!STATUS_NODES.has(nodeData.name)) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = created?.apply(this, arguments);
      // LGraphNode declares widgets_start_y as an instance field, so define it on the instance.
      Object.defineProperty(this, "widgets_start_y", {
        configurable: true,
        get: () => socketRowsHeight(this) + STATUS_HEIGHT + 2,
        set: () => {},
      });
      return result;
    };
    const draw = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      draw?.apply(this, arguments);
      if (!this.infinitetalkStatus || this.flags?.collapsed) return;
      ctx.save();
      ctx.font = "12px sans-serif";
      ctx.fillStyle = "#9fd";
      ctx.textBaseline = "middle";
      const y = socketRowsHeight(this) + 2 + STATUS_HEIGHT / 2;
      ctx.fillText(fitText(ctx, this.infinitetalkStatus, this.size[0] - 20), 10, y);
      ctx.restore();
    };
  },
});
