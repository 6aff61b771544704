"""Regional compilation: ``torch.compile`` on each transformer block instead of the whole DiT.

All 40 blocks run the same code with different weights. Compiling each block with the module's own
``compile()`` lets dynamo treat the parameters as graph inputs (``inline_inbuilt_nn_modules``, on by
default), so the first block's compiled graph serves every block: one compile (a minute or two on a
GPU, at the first chunk), no recompiles across blocks, steps or chunks of the same size. A different
chunk size or guidance batch compiles once more. The whole-model compile would instead trace the
chunk-level Python (audio routing, step caches) and recompile far more often.
"""
from __future__ import annotations

import torch

from ..errors import InputValidationError

COMPILE_MODES = ("off", "blocks")


def compile_blocks(model: torch.nn.Module, mode: str = "blocks", backend: str = "inductor") -> int:
    """Compile every block of ``model.blocks`` in place (``mode`` "off": nothing). Returns how many."""
    if mode not in COMPILE_MODES:
        raise InputValidationError(
            f"compile must be one of {', '.join(COMPILE_MODES)}; got {mode!r}.", "Use off or blocks."
        )
    if mode == "off":
        return 0
    for block in model.blocks:
        block.compile(backend=backend, dynamic=False)
    return len(model.blocks)


__all__ = ["COMPILE_MODES", "compile_blocks"]
