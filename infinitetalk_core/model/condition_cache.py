"""The DiT's condition embeddings of one chunk, computed once and reused by every step and pass.

Within a chunk every DiT call gets the same prompt, negative prompt, CLIP tokens and audio (only x and
t change), so ``text_embedding``, ``img_emb`` and ``audio_proj`` give the same result at every step: a
40-step × 3-pass chunk would otherwise recompute them 120 times. The per-block cross-attention K/V of
those tokens are not kept: at the 14B width they would take ~1.3 GB per pass for the whole chunk.

Entries are keyed by the identity of the input tensor and its in-place version counter, and the
cache holds the input itself, so an id cannot be reused by another tensor while the entry lives.
Inference-mode tensors (ComfyUI runs nodes under ``torch.inference_mode``) have no version counter:
for them only the identity counts. Make one cache per chunk (``stream.model_fn.make_model_fn`` does):
the weights and the conditions must not change under it.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

import torch


class ConditionCache:
    """Memo of condition embeddings by input tensor; ``computed`` counts the embeddings actually run."""

    def __init__(self) -> None:
        self._entries: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.computed: Counter[str] = Counter()

    def get(self, kind: str, source: torch.Tensor, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``build()``'s result for ``source`` (computed on the first request of this kind and tensor)."""
        key = (kind, id(source), _version(source))
        entry = self._entries.get(key)
        if entry is None or entry[0] is not source:
            entry = (source, build())
            self._entries[key] = entry
            self.computed[kind] += 1
        return entry[1]


def _version(t: torch.Tensor) -> int | None:
    """The in-place version counter, or None for an inference tensor (which has none)."""
    return None if t.is_inference() else t._version


__all__ = ["ConditionCache"]
