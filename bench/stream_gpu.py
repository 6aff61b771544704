"""bench/stream.py's gpu mode: one full-size random-weight chunk per recipe on CUDA, DiT time against
the compute limit of streaming_perf.md §3 (1.825 PFLOP per forward; H100 989 TFLOP/s dense bf16)."""

from __future__ import annotations

import argparse
import json

import torch

from infinitetalk_core.sampling.guidance import GuidanceConfig
from infinitetalk_core.stream.host import TextContexts
from infinitetalk_core.stream.plan import plan_chunks
from infinitetalk_core.stream.settings import StreamSettings
from infinitetalk_core.stream.sources import TensorReference
from infinitetalk_core.stream.standin_vae import StandInVAE

PFLOP_PER_FORWARD_480 = 1.825  # streaming_perf.md §3.1: 480x832x81, 32,760 tokens
H100_BF16_DENSE_TFLOPS = 989.0


def recipes(text: str) -> list[tuple[int, int]]:
    """"40x3,4x1" -> [(40, 3), (4, 1)] (steps x guidance passes; passes 1 or 3)."""
    recipes = []
    for item in text.split(","):
        steps, _, passes = item.strip().partition("x")
        if not (steps.isdigit() and passes in ("1", "3") and int(steps) > 0):
            raise argparse.ArgumentTypeError(f"{item!r}: use STEPSxPASSES with passes 1 or 3, e.g. 4x1")
        recipes.append((int(steps), int(passes)))
    return recipes


def run_gpu(args) -> dict:
    """Full-size random-weight DiT on CUDA; DiT time per chunk vs the §3 compute limit."""
    from infinitetalk_core.model.config import DiTConfig
    from infinitetalk_core.model.dit import InfiniteTalkDiT
    from infinitetalk_core.stream.generate import generate_chunks

    if not torch.cuda.is_available():
        raise SystemExit("gpu mode needs a CUDA device")
    device = torch.device("cuda")
    # built on meta directly in bf16 (an fp32 build would need 75 GB), then random weights at real scale
    model = InfiniteTalkDiT(DiTConfig(), device="meta", dtype=torch.bfloat16).to_empty(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "modulation" in name:
                p.normal_(0, 0.05)
            elif p.ndim >= 2:
                p.normal_(0, p[0].numel() ** -0.5)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)
    model.eval().requires_grad_(False)
    height, width, frames = 480, 832, 81
    image = torch.rand(3, 1, height, width) * 2 - 1
    text = TextContexts.single(torch.randn(120, 4096) * 0.1, torch.randn(60, 4096) * 0.1)

    class Clip:
        def encode_image(self, frame):
            return torch.randn(1, 257, 1280, device=frame.device) * 0.1

    out = {"mode": "gpu", "device": torch.cuda.get_device_name(), "recipes": []}
    for steps, passes in args.recipes:
        text_scale, audio_scale = (5.0, 4.0) if passes == 3 else (1.0, 1.0)  # 3 passes: text + audio CFG
        settings = StreamSettings(
            steps=steps, guidance=GuidanceConfig(text_scale, audio_scale), seed=0, color_method="lab"
        )
        plan = plan_chunks(frames, frames, 9)
        features = torch.randn(frames, 12, 768)
        result = next(
            generate_chunks(
                model,
                StandInVAE(0, device=device),
                plan,
                TensorReference(image),
                features,
                text,
                settings,
                image_encoder=Clip(),
                device=device,
            )
        )
        dit = result.timings["dit"]
        limit = PFLOP_PER_FORWARD_480 * steps * passes * 1e3 / H100_BF16_DENSE_TFLOPS
        out["recipes"].append(
            {
                "steps": steps,
                "passes": passes,
                "dit_s": round(dit, 2),
                "dit_s_per_forward": round(dit / (steps * passes), 3),  # x 120 for the 40 x 3 default
                "vae_s": round(result.timings["vae"], 2),
                "colour_s": round(result.timings["colour"], 2),
                "limit_s_at_989TF": round(limit, 1),
                "share_of_limit": round(limit / dit, 3),
                "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1),
            }
        )
        print(json.dumps(out["recipes"][-1]), flush=True)
    return out
