"""Re-roll one chunk of a job: regenerate chunk k with another seed and continue from it.

Chunk k's noise depends only on (seed, k), so a chunk the user dislikes can be drawn again with another
seed while chunks 0..k-1 stay on disk untouched. Chunks k+1.. are regenerated too (their context
changed), with the run's own seed. The job records the seed in ``manifest.rerolls`` and a later render
passes ``rerolls`` to ``generate_chunks(chunk_seeds=...)``; a resumed re-rolled job therefore keeps
its re-rolled chunks.

Chunk k continues from the state saved after chunk k-1. When that float state is still on disk (the two
newest chunks' and every ``CHECKPOINT_EVERY``-th chunk's are kept) it is used as is, and the result is
bit-identical to an uninterrupted run with the same per-chunk seeds. Otherwise it is rebuilt from the
kept frames: the last M frames before chunk k, as u / 127.5 - 1. The uint8 frames are within half a level
of the float state, but the chunk store is H.264 at crf 12 (visually lossless, not lossless), so the
rebuilt context differs from the float one by a few uint8 levels on average (more on noise-like detail):
the re-rolled chunk is then close to, not equal to, what an uninterrupted run would give. When a chunk
kept fewer than M frames (M > F - M), the rest come from the earlier chunks' kept frames (that chunk's
own decode of those frames was dropped, not stored: a further, small approximation).
"""

from __future__ import annotations

import logging

import torch

from ..errors import InputValidationError
from ..sampling.seeds import MAX_SEED
from .job import JobDirectory

log = logging.getLogger(__name__)

__all__ = ["apply_reroll", "check_reroll_seed", "rebuilt_state"]


def apply_reroll(job: JobDirectory, from_chunk: int, seed: int, context_frames: int) -> bool:
    """Make ``job`` regenerate chunk ``from_chunk`` (0-based) with ``seed`` and every later chunk with the
    run's seed; chunks before it are kept. Returns False (nothing changed) when that re-roll is already
    recorded, so queueing the same workflow again resumes instead of re-rolling again.

    Refused (``InputValidationError``, job untouched): a chunk outside the plan, a chunk past the next
    one to generate, a seed outside 0..2**64-1.
    """
    _check_chunk(job, from_chunk)
    check_reroll_seed(seed)
    _check_int("context_frames", context_frames, 1)
    if job.manifest.rerolls.get(from_chunk) == seed:
        return False
    if from_chunk > 0 and not job.has_state(from_chunk - 1):
        # written before the manifest forgets the later chunks: a crash leaves a resumable job either way
        job.save_state(from_chunk - 1, rebuilt_state(job, from_chunk, context_frames))
    job.manifest.rerolls = {k: v for k, v in job.manifest.rerolls.items() if k < from_chunk}
    job.manifest.rerolls[from_chunk] = seed
    job.truncate(from_chunk)  # saves the manifest (with the re-roll) before deleting any file
    log.info("job %s: chunk %d re-rolled with seed %d; regenerating chunks %d..%d", job.path.name,
             from_chunk + 1, seed, from_chunk + 1, job.manifest.layout["num_chunks"])
    return True


def rebuilt_state(job: JobDirectory, next_chunk: int, context_frames: int) -> dict[str, torch.Tensor]:
    """The carry state before chunk ``next_chunk`` rebuilt from the kept frames of the chunks before it,
    in ``StreamState.to_tensors()`` format: ``next_chunk`` int64 [1] and ``context_pixels`` float32
    [3, M, H, W] = u / 127.5 - 1 of the last M = ``context_frames`` frames (see the module docstring)."""
    have = sum(r.frames for r in job.manifest.chunks[:next_chunk])
    if have < context_frames:
        raise InputValidationError(
            f"Chunk {next_chunk + 1} cannot be re-rolled: the {next_chunk} chunk(s) before it kept {have} "
            f"frames, fewer than the {context_frames} context frames it continues from.",
            "Re-roll an earlier chunk, or start the job over with another seed.",
        )
    frames = torch.from_numpy(job.last_frames(context_frames, before=next_chunk).copy())
    pixels = frames.permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0).contiguous()  # as ChunkResult.frames
    return {"next_chunk": torch.tensor([next_chunk], dtype=torch.int64), "context_pixels": pixels}


def check_reroll_seed(seed: object) -> int:
    """``seed`` if it is a whole number in 0..2**64-1 (ComfyUI's seed range), else InputValidationError."""
    _check_int("reroll seed", seed, 0)
    if seed > MAX_SEED:
        raise InputValidationError(f"reroll seed {seed} is above 2**64-1.",
                                   "Pick a seed between 0 and 18446744073709551615.")
    return seed


def _check_chunk(job: JobDirectory, from_chunk: object) -> None:
    """A chunk of the plan that is finished or the next one to generate (messages count from 1)."""
    total, done = job.manifest.layout["num_chunks"], job.chunks_done
    _check_int("reroll chunk", from_chunk, None)
    if not 0 <= from_chunk < total:
        raise InputValidationError(
            f"Cannot re-roll chunk {from_chunk + 1}: the job has chunks 1..{total}.",
            f"Pick a chunk between 1 and {total}.",
        )
    if from_chunk > done:
        raise InputValidationError(
            f"Cannot re-roll chunk {from_chunk + 1}: only {done} of {total} chunks are done, so it has not "
            "been reached yet.",
            f"Pick a chunk between 1 and {done + 1} (chunk {done + 1} is the next one to generate), or let "
            "the job run further first.",
        )


def _check_int(name: str, value: object, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputValidationError(f"{name} must be a whole number, got {value!r}.",
                                   f"Pass {name} as an integer.")
    if minimum is not None and value < minimum:
        raise InputValidationError(f"{name} must be at least {minimum}, got {value}.",
                                   f"Use {name} >= {minimum}.")
