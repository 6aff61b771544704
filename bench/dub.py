"""Cost of true dubbing per chunk at the tiny CPU preset (tiny DiT, stand-in VAE/CLIP, 128 x 128, 81-frame
chunks, 4 steps x 3 passes), against the same video dubbed without it:

  plain        video source, denoise 1, no mask (every chunk from noise)
  mask         + a static dub_mask (source clip read and VAE-encoded, latents pinned every step, audio
               gated, feathered composite after colour)
  mask_frames  + one mask per source frame (a tracked face)
  mask_all     + a dub_mask over the whole frame: every step of the mask path runs (full-frame composite)
               while the frames are the plain run's, so its extra time is the path's own cost alone (the
               other mask variants also decode different content, which moves CPU op times by a few %)
  denoise_0.5  + denoise 0.5 without a mask (half the steps run: faster)

Per chunk: the fastest of --repeats runs of its own timings (conditioning, DiT, decode, colour, dub, post;
the minimum, as the least disturbed by other work on the machine), summed over the chunks; the overhead
is a variant's extra time over plain, and ``dub_share`` the time of the dub steps themselves (source clip,
its encode, masks, composite) over the chunk time; the pinning inside the sampler is in the DiT time. With the real Wan VAE the
mask path's largest extra is one VAE encode of the chunk's source frames (the size of the y encode every
chunk already does). JSON on stdout; no assertions.
"""
from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infinitetalk_core.sampling.guidance import GuidanceConfig  # noqa: E402
from infinitetalk_core.stream.dub_mask import DubMask  # noqa: E402
from infinitetalk_core.stream.generate import generate_chunks  # noqa: E402
from infinitetalk_core.stream.host import TextContexts  # noqa: E402
from infinitetalk_core.stream.plan import plan_chunks  # noqa: E402
from infinitetalk_core.stream.settings import StreamSettings  # noqa: E402
from infinitetalk_core.stream.sources import TensorReference  # noqa: E402
from infinitetalk_core.stream.standin_vae import StandInVAE  # noqa: E402
from infinitetalk_core.stream.standins import StandInImageEncoder, random_audio_features, tiny_dit  # noqa: E402

VARIANTS = ("plain", "mask", "mask_frames", "mask_all", "denoise_0.5")


def _box_masks(frames: int, size: int, moving: bool) -> torch.Tensor:
    masks = torch.zeros(frames if moving else 1, size, size)
    for i in range(masks.shape[0]):
        left = size // 4 + (i % (size // 8))
        masks[i, size // 4: 3 * size // 4, left: left + size // 2] = 1.0
    return masks


def _chunk_timings(args, variant: str, model, source, features, text) -> list[dict]:
    settings = StreamSettings(steps=args.steps, shift=7.0, guidance=GuidanceConfig(5.0, 4.0), seed=42,
                              color_method="lab", color_reference="chunk",
                              denoise=0.5 if variant == "denoise_0.5" else 1.0)
    mask = None
    if variant == "mask_all":
        mask = DubMask(torch.ones(1, args.size, args.size), feather=8)
    elif variant.startswith("mask"):
        mask = DubMask(_box_masks(source.num_frames, args.size, variant == "mask_frames"), feather=8)
    plan = plan_chunks(args.frames, 81, 9)
    results = generate_chunks(model, StandInVAE(0), plan, source, features, text, settings,
                              image_encoder=StandInImageEncoder(16), dub_mask=mask)
    return [dict(r.timings) for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=225, help="audio length in 25 fps frames (3 chunks)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    source_frames = int(args.frames * 30000 / 1001 / 25) + 1
    source = TensorReference(torch.rand(3, source_frames, args.size, args.size, generator=g) * 2 - 1,
                             fps=Fraction(30000, 1001))
    text = TextContexts.single(torch.randn(12, 16, generator=g), torch.randn(9, 16, generator=g))
    model, features = tiny_dit(0), random_audio_features(args.frames, seed=0)
    runs = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):  # interleaved, so machine noise hits every variant alike
        for variant in VARIANTS:
            runs[variant].append(_chunk_timings(args, variant, model, source, features, text))
    total = {v: _fastest(r, lambda t: sum(t.values())) for v, r in runs.items()}
    dub = {v: _fastest(r, lambda t: t.get("dub", 0.0)) for v, r in runs.items()}
    print(json.dumps({
        "bench": "dub", "size": args.size, "chunk_frames": 81, "steps": args.steps, "passes": 3,
        "threads": args.threads, "repeats": args.repeats,
        "chunk_s": {v: round(s, 4) for v, s in total.items()},
        "overhead_vs_plain": {v: round(total[v] / total["plain"] - 1, 4) for v in VARIANTS[1:]},
        "dub_share": {v: round(dub[v] / total[v], 4) for v in VARIANTS[1:]},
    }))


def _fastest(runs: list[list[dict]], value) -> float:
    """Sum over chunks of each chunk's fastest run (by ``value`` of its timings)."""
    return float(sum(min(value(run[k]) for run in runs) for k in range(len(runs[0]))))


if __name__ == "__main__":
    main()
