"""The sampler's model callable for one chunk: guidance passes -> DiT forwards (batched or one by one),
with TeaCache deciding per pass whether the transformer blocks run (``sampling.teacache``)."""
from __future__ import annotations

import logging
from typing import Sequence

import torch

from ..errors import InputValidationError
from ..model.condition_cache import ConditionCache
from ..model.dit import BlockCacheCall
from ..sampling.guidance import COND, DROP_AUDIO, DROP_TEXT, UNCOND
from ..sampling.teacache import TeaCache

log = logging.getLogger(__name__)

# pass name -> (uses the positive prompt, uses the real audio)
PASS_INPUTS = {
    COND: (True, True),
    DROP_TEXT: (False, True),
    UNCOND: (False, False),
    DROP_AUDIO: (True, False),
}


class PassBatching:
    """Whether a step's guidance passes share one DiT forward. Batching is ~1.5x faster but needs
    activation memory for every pass at once; after an out-of-memory error it is switched off for the
    rest of the run (one object per run), so a render degrades to sequential passes instead of dying."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled


def _forward_fn(model, y, clip, audio, positive, negative, masks, audio_gate=None):
    """forward(x, t, names, block_cache) -> [len(names), 16, T, h, w] for the named passes.

    One ``ConditionCache`` serves every call: the prompt, CLIP and audio embeddings are computed once
    per chunk (the inputs below are the same tensors at every step)."""
    null_audio = torch.zeros_like(audio[:1])
    conditions = ConditionCache()

    def inputs(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        use_prompt, use_audio = PASS_INPUTS[name]
        return (positive if use_prompt else negative), (audio if use_audio else null_audio)

    def forward(x, t, names, block_cache=None):
        contexts, audios = zip(*(inputs(n) for n in names))
        extra = {"condition_cache": conditions}
        if block_cache is not None:
            extra["block_cache"] = block_cache
        if audio_gate is not None:
            extra["audio_gate"] = audio_gate
        return model(x.unsqueeze(0).expand(len(names), *x.shape), t.expand(len(names)), list(contexts),
                     clip_fea=clip, y=y.unsqueeze(0), audio=list(audios), ref_target_masks=masks, **extra)

    return forward


def _teacache_forward(forward, model, cache: TeaCache):
    """Wrap forward: decide every pass, run the computing passes through the blocks (storing their
    residuals) and the skipping ones on their cached residuals."""
    if not hasattr(model, "step_cache_indicator"):
        raise InputValidationError(
            "step_cache teacache needs the InfiniteTalk DiT (its time embedding is the cache indicator).",
            "Use step_cache none or easycache with this model.",
        )

    def cached(x, t, names, block_cache=None):
        indicator = model.step_cache_indicator(t, x, cache.config.use_ret_steps)
        decisions = [cache.decide(name, indicator) for name in names]
        compute = [n for n, d in zip(names, decisions) if d.computed]
        skip = [n for n, d in zip(names, decisions) if not d.computed]
        out = {}
        if compute:
            call = BlockCacheCall()
            out.update(zip(compute, forward(x, t, compute, call).unbind(0)))
            for name, residual in zip(compute, call.residual.unbind(0)):
                cache.store(name, residual)
        if skip:
            reuse = torch.stack([cache.residual(name) for name in skip])
            out.update(zip(skip, forward(x, t, skip, BlockCacheCall(reuse=reuse)).unbind(0)))
        return torch.stack([out[name] for name in names])

    return cached


def counting(model_fn):
    """``model_fn`` that counts the guidance-pass evaluations asked of it -> (fn, [count])."""
    calls = [0]

    def counted(x, t, passes):
        calls[0] += len(passes)
        return model_fn(x, t, passes)

    return counted, calls


def make_model_fn(
    model,
    y: torch.Tensor,
    clip: torch.Tensor | None,
    audio: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    masks: torch.Tensor,
    batch_passes: bool | PassBatching = True,
    teacache: TeaCache | None = None,
    audio_gate: torch.Tensor | None = None,
):
    """The sampler's ``model_fn(x, t, passes) -> {pass: v}`` for one chunk.

    x [16, T, h, w]; y [20, T, h, w]; clip [1, 257, D]; audio [P, F, 5, L, C]. The null-audio passes
    get one zero speaker [1, F, 5, L, C] (reference). ``batch_passes`` runs all requested passes in one
    forward (B = number of passes), falling back to one forward per pass if that runs out of memory.
    ``teacache``: this chunk's TeaCache state (None: every call runs every block). ``audio_gate``:
    per-token factor of the audio cross-attention (the DiT's ``audio_gate``; None: no gate).
    """
    batching = batch_passes if isinstance(batch_passes, PassBatching) else PassBatching(batch_passes)
    forward = _forward_fn(model, y, clip, audio, positive, negative, masks, audio_gate)
    if teacache is not None:
        forward = _teacache_forward(forward, model, teacache)

    def model_fn(x: torch.Tensor, t: torch.Tensor, passes: Sequence[str]) -> dict[str, torch.Tensor]:
        if batching.enabled and len(passes) > 1:
            saved = teacache.snapshot() if teacache is not None else None
            try:
                return dict(zip(passes, forward(x, t, passes).unbind(0)))
            except torch.OutOfMemoryError:
                if teacache is not None:
                    teacache.restore(saved)  # the per-pass retry decides this step again
                batching.enabled = False
                log.warning(
                    "Out of memory with %d guidance passes in one forward; running them one by "
                    "one from now on (slower, less memory).",
                    len(passes),
                )
                if x.device.type == "cuda":
                    torch.cuda.empty_cache()
        return {name: forward(x, t, [name])[0] for name in passes}

    return model_fn


__all__ = ["PASS_INPUTS", "PassBatching", "counting", "make_model_fn"]
