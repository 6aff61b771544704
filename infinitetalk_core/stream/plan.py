"""Chunk plan: which global frames every chunk generates, keeps and hears (pure integer bookkeeping).

The reference streams fixed windows of F frames (``frame_num``, 81) at 25 fps with a stride of F - M
(M = ``motion_frame``, 9): chunk k covers global frames [k(F-M), k(F-M) + F). The first chunk keeps all
of its frames; every later chunk drops its first M frames, which are VAE round-trips of the previous
chunk's tail (its context frames). The stitched output is cut to the audio length, or to a cap.

Differences from the reference (deliberate, documented):
- audio of F frames or fewer is accepted (one chunk, trimmed); the reference asserts N > F;
- the plan is computed up front and the output length is always exactly ``min(N, max_frames)``.

Continuing an existing clip (``lead_context``): the previous clip's last M frames are the context of
chunk 0 too, so every chunk is a continuation: chunk k covers global frames [k(F−M) − M, k(F−M) − M + F)
and keeps [M, F). Chunk 0 starts M frames before the audio; those context frames hear the audio's first
frame (feature rows before the start clamp to row 0) and are never output.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputValidationError

FPS = 25  # InfiniteTalk is trained and run at 25 video frames per second (audio features are 25 Hz)
TEMPORAL_STRIDE = 4  # Wan 2.1 VAE: 1 + 4n pixel frames <-> 1 + n latent frames
MAX_CHUNK_FRAMES = 1001  # far above anything the model was trained for (81); guards against typos


def latent_frames_for(pixel_frames: int) -> int:
    """Latent frames of a causal Wan VAE clip of ``pixel_frames`` (= 4n+1) frames: n + 1."""
    return (pixel_frames - 1) // TEMPORAL_STRIDE + 1


@dataclass(frozen=True)
class ChunkPlan:
    """One chunk of the stream. Ranges are half-open; "global" frames are 25 fps output/audio frames.

    index: position in the stream (0-based).
    start, stop: global frames the chunk generates (stop - start == chunk_frames); also the audio
        frames it hears. Frames at or past the audio length are heard as padding (see padded_frames).
    keep_start, keep_stop: local frames (0 = first decoded frame of the chunk) that go to the output.
    output_start, output_stop: where those kept frames land in this plan's output (0 = its first frame).
    context_frames: pixel frames encoded as context latents: 1 (the reference frame) for the first
        chunk, else M (the last M frames of the previous chunk after colour correction).
    context_latents: leading latent frames overwritten with the clean context every step.
    padded_frames: frames of [start, stop) past the end of the audio (the audio front end pads them).
    hears_audio_end: stop >= the audio length. The reference mirror-pads the audio features for such a
        chunk (also when stop == N: the ±2 windows of its last frames reach past the end).
    """

    index: int
    start: int
    stop: int
    keep_start: int
    keep_stop: int
    output_start: int
    output_stop: int
    context_frames: int
    context_latents: int
    padded_frames: int
    hears_audio_end: bool

    @property
    def is_first(self) -> bool:
        return self.index == 0

    @property
    def kept_frames(self) -> int:
        return self.keep_stop - self.keep_start

    @property
    def num_frames(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class StreamPlan:
    """The whole run: chunk geometry plus the exact output length.

    num_audio_frames: N, audio length in 25 fps frames. max_frames: optional cap (None = no cap).
    chunk_frames: F (4n+1). context_frames: M (4k+1, M < F). output_frames: min(N, max_frames).
    chunks: every chunk in order; their output ranges tile [0, output_frames) exactly.
    """

    num_audio_frames: int
    chunk_frames: int
    context_frames: int
    max_frames: int | None
    output_frames: int
    chunks: tuple[ChunkPlan, ...]
    lead_context: bool = False  # chunk 0 continues a previous clip (its last M frames are the context)
    first_frame: int = 0  # global frame of the first output frame: a chapter of a longer job starts later

    @property
    def stride(self) -> int:
        """Global frames between consecutive chunk starts: F - M."""
        return self.chunk_frames - self.context_frames

    @property
    def latent_frames(self) -> int:
        """Latent frames per chunk: (F - 1) / 4 + 1 (21 for 81)."""
        return latent_frames_for(self.chunk_frames)

    @property
    def num_chunks(self) -> int:
        return len(self.chunks)

    def chunk_for_output_frame(self, frame: int) -> ChunkPlan:
        """The chunk whose kept frames contain output frame ``frame`` (0 <= frame < output_frames)."""
        if not 0 <= frame < self.output_frames:
            raise InputValidationError(
                f"output frame {frame} is outside the video (0..{self.output_frames - 1}).",
                "Ask for a frame index inside the planned output.",
            )
        if self.lead_context:
            index = frame // self.stride
        else:
            index = 0 if frame < self.chunk_frames else (frame - self.context_frames) // self.stride
        return self.chunks[min(index, len(self.chunks) - 1)]


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputValidationError(
            f"{name} must be an integer, got {value!r}.", f"Pass {name} as a whole number."
        )
    if value < minimum:
        raise InputValidationError(
            f"{name} must be at least {minimum}, got {value}.", f"Raise {name} to >= {minimum}."
        )
    return value


def validate_chunk_settings(chunk_frames: int, context_frames: int) -> None:
    """Raise InputValidationError unless F = 4n+1 in [5, 1001], M = 4k+1 and 1 <= M < F."""
    _check_int("chunk_frames", chunk_frames, 5)
    _check_int("context_frames", context_frames, 1)
    if chunk_frames > MAX_CHUNK_FRAMES:
        raise InputValidationError(
            f"chunk_frames={chunk_frames} is too large (max {MAX_CHUNK_FRAMES}).",
            "Use 81 (what InfiniteTalk was trained on) or another 4n+1 value below the limit.",
        )
    for name, value in (("chunk_frames", chunk_frames), ("context_frames", context_frames)):
        if (value - 1) % TEMPORAL_STRIDE:
            lower = value - (value - 1) % TEMPORAL_STRIDE
            raise InputValidationError(
                f"{name}={value} is not of the form 4n+1 "
                "(the Wan VAE packs 1 + 4n frames into 1 + n latents).",
                f"Use {lower} or {lower + TEMPORAL_STRIDE}.",
            )
    if context_frames >= chunk_frames:
        raise InputValidationError(
            f"context_frames={context_frames} must be smaller than chunk_frames={chunk_frames}.",
            "Use fewer context frames (9 is the reference value) or longer chunks.",
        )


def plan_chunks(
    num_audio_frames: int, chunk_frames: int = 81, context_frames: int = 9, max_frames: int | None = None,
    lead_context: bool = False, first_frame: int = 0,
) -> StreamPlan:
    """Plan every chunk of a stream whose output is exactly min(num_audio_frames, max_frames) frames.

    ``first_frame``: start the stream at that global frame (a chapter): chunk 0 is then anchored to the
    reference at that time and ``max_frames`` stays a global frame (the chapter's end), so the output is
    min(num_audio_frames, max_frames) − first_frame frames and every chunk hears the audio of its own
    global time range.

    Chunk k starts at global frame k·(F−M); the first keeps local frames [0, F), later ones [M, F),
    the last one is trimmed to the output length. Number of chunks: 1 if the output fits in one chunk,
    else 1 + ceil((out − F) / (F − M)) (the reference's count). ``lead_context``: continue a previous
    clip (see the module docstring): ceil(out / (F − M)) chunks, each keeping [M, F).
    """
    _check_int("num_audio_frames", num_audio_frames, 1)
    validate_chunk_settings(chunk_frames, context_frames)
    if max_frames is not None:
        _check_int("max_frames", max_frames, 1)
    end = num_audio_frames if max_frames is None else min(num_audio_frames, max_frames)
    _check_int("first_frame", first_frame, 0)
    if first_frame >= end:
        raise InputValidationError(
            f"first_frame={first_frame} is not before the end of the output ({end} frames).",
            "Start the chapter inside the audio (and before max_frames).")
    out = end - first_frame
    stride = chunk_frames - context_frames
    if not isinstance(lead_context, bool):
        raise InputValidationError(f"lead_context must be True or False, got {lead_context!r}.", "Pass a bool.")
    if lead_context:
        count = -(-out // stride)
    else:
        count = 1 if out <= chunk_frames else 1 + -(-(out - chunk_frames) // stride)
    chunks = tuple(
        _chunk(k, out, num_audio_frames, chunk_frames, context_frames, lead_context, first_frame)
        for k in range(count)
    )
    return StreamPlan(num_audio_frames, chunk_frames, context_frames, max_frames, out, chunks, lead_context,
                      first_frame)


def _chunk(index: int, out: int, n_audio: int, f: int, m: int, lead: bool = False, first: int = 0) -> ChunkPlan:
    local = index * (f - m) - (m if lead else 0)  # counted from the plan's first output frame
    start = first + local
    fresh = index == 0 and not lead  # chunk 0 of a new clip: its context is the reference frame alone
    keep_start = 0 if fresh else m
    keep_stop = min(f, out - local)
    context = 1 if fresh else m
    return ChunkPlan(
        index=index,
        start=start,
        stop=start + f,
        keep_start=keep_start,
        keep_stop=keep_stop,
        output_start=local + keep_start,
        output_stop=local + keep_stop,
        context_frames=context,
        context_latents=latent_frames_for(context),
        padded_frames=max(0, start + f - n_audio),
        hears_audio_end=start + f >= n_audio,
    )
