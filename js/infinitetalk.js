// InfiniteTalk frontend extension: "chunk i of N · ETA" on the Streaming Sampler (the chunk preview
// image itself arrives through ComfyUI's own progress previews) and a playable video on Video Combine.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { PROGRESS_EVENT, parseProgress, progressLabel, videoFromOutput, viewUrl } from "./infinitetalk_core.js";

const SAMPLER = "InfiniteTalkStreamingSampler";
const COMBINE = "InfiniteTalkVideoCombine";

function findNode(id) {
  return id === null ? null : app.graph?.getNodeById?.(Number(id)) ?? null;
}

function setStatus(node, text) {
  node.infinitetalkStatus = text;
  node.setDirtyCanvas?.(true, false);
}

function showVideo(node, url) {
  if (!node.infinitetalkVideo) {
    const video = document.createElement("video");
    Object.assign(video, { controls: true, loop: true, muted: true, playsInline: true });
    video.style.width = "100%";
    node.infinitetalkVideo = video;
    node.addDOMWidget?.("preview", "video", video, { serialize: false, hideOnZoom: false });
  }
  node.infinitetalkVideo.src = url;
}

app.registerExtension({
  name: "infinitetalk.dubbing",
  setup() {
    api.addEventListener(PROGRESS_EVENT, (event) => {
      const progress = parseProgress(event.detail);
      const node = progress && findNode(progress.node);
      if (node) setStatus(node, progressLabel(progress));
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name === SAMPLER) {
      const draw = nodeType.prototype.onDrawForeground;
      nodeType.prototype.onDrawForeground = function (ctx) {
        draw?.apply(this, arguments);
        if (!this.infinitetalkStatus || this.flags?.collapsed) return;
        ctx.save();
        ctx.font = "12px sans-serif";
        ctx.fillStyle = "#9fd";
        ctx.fillText(this.infinitetalkStatus, 8, -6);
        ctx.restore();
      };
    }
    if (nodeData.name === COMBINE) {
      const executed = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (output) {
        executed?.apply(this, arguments);
        const video = videoFromOutput(output);
        const url = video && viewUrl(video, api.api_base ?? "");
        if (url) showVideo(this, url);
      };
    }
  },
});
