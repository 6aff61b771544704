"""The engine's side of context refinement (``sampling.refine``): build the short clip's conditioning,
run the refinement, decode and colour-correct the refined frames, which then serve as the chunk's
context. Experimental; off unless ``StreamSettings.refine.every`` > 0."""
from __future__ import annotations

import torch

from ..audio import chunk_audio_windows
from ..color import match_colors_signed
from ..sampling.refine import refine_latents
from ..sampling.seeds import refine_noise
from .conditioning import encode_context, encode_y
from .model_fn import counting, make_model_fn
from .plan import ChunkPlan


def refine_context_pixels(run, chunk: ChunkPlan, context_pixels: torch.Tensor, reference: torch.Tensor,
                          clip: torch.Tensor | None, colour_target: torch.Tensor | None
                          ) -> tuple[torch.Tensor, int]:
    """context_pixels [3, M, H, W] (the previous chunk's tail) -> (refined frames [3, M, H, W], DiT pass
    calls). The clip is those M frames: y as for chunk 0 (the chunk's reference frame), the audio of
    their time range (the chunk's first M frames), noise from (seed, chunk)."""
    settings, device, frames = run.settings, run.device, context_pixels.shape[1]
    latents = encode_context(run.vae, context_pixels)
    y = encode_y(run.vae, reference, frames)
    audio = chunk_audio_windows(run.persons, chunk.start, frames, total_frames=run.plan.num_audio_frames,
                                padding=settings.audio_padding).to(device=device, dtype=torch.float32)
    positive, negative = run.text.for_chunk(chunk.index)
    model_fn = make_model_fn(run.model, y.to(device), None if clip is None else clip.to(device), audio,
                             positive.to(device), negative.to(device), run.masks, run.batching)
    counted, calls = counting(model_fn)
    noise = refine_noise(latents.shape, settings.seed, chunk.index, device)
    refined = refine_latents(counted, latents.to(device), noise, settings.refine, settings.guidance)
    pixels = run.vae.decode(refined).float()
    if colour_target is not None:
        pixels = match_colors_signed(pixels, colour_target.to(pixels.device), settings.color_method,
                                     settings.color_strength)
    return pixels, calls[0]


__all__ = ["refine_context_pixels"]
