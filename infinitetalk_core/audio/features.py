"""wav2vec2 features at 25 fps, exactly as the reference computes them, for any length of audio.

The reference (``src/audio_analysis/wav2vec2.py``) runs one pass: CNN feature encoder (50 Hz) →
linear interpolation to T = int(n / 16000 · 25) frames (align_corners=True) → feature projection →
positional conv → LayerNorm → transformer layers, and stacks the outputs of layers 1..L to [T, L, C].
We drive transformers' submodules ourselves (transformers 5 no longer hands per-layer hidden states to
a subclass) and keep time and memory linear in duration:

- CNN: exact in segments. Its receptive field is 400 samples at a 320-sample hop, and the only global
  operation, the first layer's GroupNorm (one group per channel, statistics over all of time), gets its
  per-channel mean/variance from a cheap first pass over the first conv.
- Interpolation and feature projection: one pass (per-frame maths, [T, 512] is small).
- Transformer: global attention, so long tracks run in overlapping windows of ``segment_seconds``; each
  window keeps its centre and discards ``context_seconds`` on each side (≥ the positional conv's half
  kernel, 64 frames, so that part is exact; only distant attention is cut). Tracks up to
  ``segment_seconds`` (40 s, the reference's default 1000-frame cap) are one pass: the reference's maths.

Whole-run storage (``encode_stored_features``, what Audio Encode holds for the sampler): bfloat16, written
window by window into one preallocated tensor, so the full-length float32 features never exist. An hour
of speech (90 000 frames × 12 layers × 768) is 1.66 GB instead of 3.32 GB. bfloat16 because the DiT
computes in bf16 and casts each chunk's windows to it (as the reference does): bf16(x) stored, upcast to
fp32 per chunk and cast to bf16 again is exactly bf16(x), so a bf16 DiT sees the same audio inputs as
from float32 features (fp16 storage would round twice). The digest that job fingerprints use is taken
from the float32 rows on the way (``StoredFeatures.digest``), equal to ``tensor_digest`` of what
``encode_audio_features`` returns, so job folders made from float32 features keep resuming.
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import AudioInputError, InputValidationError
from .prepare import FPS, MODEL_SAMPLE_RATE, frames_for_samples
from .wav2vec2_loading import Wav2Vec2AudioEncoder

logger = logging.getLogger(__name__)

CNN_SEGMENT_SECONDS = 10.0  # bounds the first conv's [512, 3200 Hz] activation (~65 MB per segment)
STORED_DTYPE = torch.bfloat16  # whole-run features on the host (see the module docstring)


@dataclass(frozen=True)
class TransformerSegment:
    """Frames [start, stop) go through the transformer; rows [keep_start, keep_stop) are kept."""

    start: int
    stop: int
    keep_start: int
    keep_stop: int


def plan_segments(total_frames: int, segment_frames: int, context_frames: int) -> list[TransformerSegment]:
    """Cover [0, total_frames) with windows of ``segment_frames`` whose kept parts tile the range and
    have at least ``context_frames`` of discarded context on each inner side."""
    if total_frames <= segment_frames:
        return [TransformerSegment(0, total_frames, 0, total_frames)]
    if segment_frames - 2 * context_frames < 1:
        raise InputValidationError(f"segment of {segment_frames} frames leaves nothing to keep after "
                                   f"{context_frames} frames of context on each side",
                                   "Use segment_seconds > 2 * context_seconds.")
    segments, start, keep_start = [], 0, 0
    while start + segment_frames < total_frames:
        keep_stop = start + segment_frames - context_frames
        segments.append(TransformerSegment(start, start + segment_frames, keep_start, keep_stop))
        keep_start, start = keep_stop, keep_stop - context_frames
    segments.append(TransformerSegment(total_frames - segment_frames, total_frames, keep_start, total_frames))
    return segments


def _conv_geometry(config) -> tuple[int, int]:
    """(receptive field, hop) of the CNN in samples: 400 and 320 for wav2vec2."""
    receptive, hop = 1, 1
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        receptive += (kernel - 1) * hop
        hop *= stride
    return receptive, hop


def _group_norm_stats(layer, waveform: torch.Tensor, chunk_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of the first conv's output over the whole track (float64),
    merged chunk by chunk (Chan et al.), so the first layer's GroupNorm can be applied per segment."""
    kernel, stride = layer.conv.kernel_size[0], layer.conv.stride[0]
    frames = (waveform.shape[0] - kernel) // stride + 1
    count, mean, m2 = 0, None, None
    for a in range(0, frames, chunk_frames):
        b = min(frames, a + chunk_frames)
        x = layer.conv(waveform[a * stride:(b - 1) * stride + kernel][None, None])[0].double()
        n_b, mean_b = x.shape[1], x.mean(dim=1)
        m2_b = ((x - mean_b[:, None]) ** 2).sum(dim=1)
        if mean is None:
            count, mean, m2 = n_b, mean_b, m2_b
            continue
        delta, total = mean_b - mean, count + n_b
        mean = mean + delta * (n_b / total)
        m2 = m2 + m2_b + delta ** 2 * (count * n_b / total)
        count = total
    return mean, m2 / count


def _first_layer(layer, x: torch.Tensor, stats) -> torch.Tensor:
    if stats is None:
        return layer(x)
    mean, var = stats
    h = layer.conv(x)
    norm = layer.layer_norm
    scale = norm.weight.double() * torch.rsqrt(var + norm.eps)
    shift = norm.bias.double() - mean * scale
    return layer.activation(h * scale.to(h.dtype)[:, None] + shift.to(h.dtype)[:, None])


def conv_features(encoder: Wav2Vec2AudioEncoder, waveform: torch.Tensor,
                  segment_seconds: float = CNN_SEGMENT_SECONDS) -> torch.Tensor:
    """[n] waveform (16 kHz, on the encoder's device/dtype) → [T50, conv_dim] CNN features at 50 Hz,
    equal to the feature encoder's single pass, computed in bounded-memory segments."""
    config = encoder.model.config
    layers = encoder.model.feature_extractor.conv_layers
    receptive, hop = _conv_geometry(config)
    total = (waveform.shape[0] - receptive) // hop + 1
    seg = max(1, int(segment_seconds * MODEL_SAMPLE_RATE) // hop)
    group_norm = isinstance(getattr(layers[0], "layer_norm", None), torch.nn.GroupNorm)
    stats = _group_norm_stats(layers[0], waveform, seg * hop // layers[0].conv.stride[0]) if group_norm else None
    out = None  # [T50, conv_dim], filled segment by segment (no list + cat: that held it twice)
    for j0 in range(0, total, seg):
        j1 = min(total, j0 + seg)
        h = _first_layer(layers[0], waveform[j0 * hop:(j1 - 1) * hop + receptive][None, None], stats)
        for layer in layers[1:]:
            h = layer(h)
        if out is None:
            out = torch.empty(total, h.shape[1], dtype=h.dtype, device=h.device)
        out[j0:j1] = h[0].transpose(0, 1)
    return out


def _transformer_layers(encoder: Wav2Vec2AudioEncoder, hidden: torch.Tensor) -> torch.Tensor:
    """[S, C] feature-projection output → [S, L, C] outputs of transformer layers 1..L."""
    stack = encoder.model.encoder
    h = hidden[None]
    h = stack.layer_norm(h + stack.pos_conv_embed(h))
    outs = []
    for layer in stack.layers:
        result = layer(h)
        h = result[0] if isinstance(result, tuple) else result  # transformers 4.x returns a tuple
        outs.append(h[0])
    return torch.stack(outs, dim=1)


def _input_values(encoder: Wav2Vec2AudioEncoder, waveform) -> torch.Tensor:
    array = waveform.detach().cpu().numpy() if isinstance(waveform, torch.Tensor) else np.asarray(waveform)
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 1:
        raise InputValidationError(f"encode_audio_features takes a mono [n] waveform, got shape "
                                   f"{list(array.shape)}", "Run prepare_waveform first.")
    if not np.isfinite(array).all():
        raise AudioInputError("the waveform contains NaN or infinite samples", "Run prepare_waveform first.")
    if encoder.do_normalize:  # Wav2Vec2FeatureExtractor's per-utterance normalisation (off for this model)
        array = (array - array.mean()) / np.sqrt(array.var() + 1e-7)
    return torch.from_numpy(np.ascontiguousarray(array)).to(encoder.device, encoder.dtype)


@dataclass(frozen=True)
class StoredFeatures:
    """Whole-run features as held on the host, and the identity of the float32 features they came from.

    ``features``: [T, L, C] in ``STORED_DTYPE`` (or the dtype asked for). ``digest``: ``tensor_digest`` of
    the float32 [T, L, C] that ``encode_audio_features`` returns for the same input (header
    ``torch.float32|(T, L, C)|``, then the rows' bytes in order), so fingerprints do not depend on the
    storage dtype and match those of jobs made when the features were stored in float32.
    """

    features: torch.Tensor
    digest: str


def _float32_digest(shape: tuple[int, ...]):
    """A running SHA-256 in ``tensor_digest``'s format for a float32 tensor of ``shape``: feed it the
    rows in order (the format hashes the bytes in memory order, so how they are split does not matter)."""
    return hashlib.sha256(f"{torch.float32}|{tuple(shape)}|".encode())


def _fit_range(rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``rows`` clamped to the largest finite value of a narrower float ``dtype`` (fp16: 65504), with a
    warning; unchanged when they fit (always for bfloat16, whose range is float32's)."""
    if not dtype.is_floating_point or torch.finfo(dtype).max >= torch.finfo(rows.dtype).max:
        return rows
    limit = torch.finfo(dtype).max
    peak = float(rows.abs().amax()) if rows.numel() else 0.0
    if not peak > limit:  # NaN compares False: left for the input checks to report
        return rows
    logger.warning("wav2vec2 features reach %.4g, beyond %s's %.4g: clamped (store them as bfloat16 to "
                   "keep them)", peak, dtype, limit)
    return rows.clamp(-limit, limit)


def _encode(encoder: Wav2Vec2AudioEncoder, waveform, sample_rate: int, segment_seconds: float,
            context_seconds: float, out_dtype: torch.dtype, digest: bool = False
            ) -> tuple[torch.Tensor, str | None]:
    """The pipeline behind both entry points: features written window by window into one preallocated
    [T, L, C] ``out_dtype`` tensor; with ``digest`` (bool) also the float32 digest of StoredFeatures."""
    if sample_rate != MODEL_SAMPLE_RATE:
        raise InputValidationError(f"wav2vec2 needs 16 kHz audio, got {sample_rate} Hz",
                                   "Run prepare_waveform (resample, mono, loudness) first.")
    values = _input_values(encoder, waveform)
    frames = frames_for_samples(values.shape[0])
    if frames < 1:
        raise AudioInputError(f"the audio is {values.shape[0] / MODEL_SAMPLE_RATE * 1000:.0f} ms long, "
                              f"shorter than one video frame ({1000 // FPS} ms)", "Use a longer clip.")
    cnn = conv_features(encoder, values)
    interp = F.interpolate(cnn.T[None], size=frames, mode="linear", align_corners=True)[0].T
    del cnn  # [T50, 512]: not needed past the interpolation (~370 MB per hour)
    projected = encoder.model.feature_projection(interp[None])[0][0]
    del interp

    pos_half = encoder.model.config.num_conv_pos_embeddings // 2
    context = max(pos_half, math.ceil(context_seconds * FPS))
    segments = plan_segments(frames, max(1, int(segment_seconds * FPS)), context)
    out = torch.empty(frames, encoder.num_layers, encoder.hidden_size, dtype=out_dtype)
    running = _float32_digest(out.shape) if digest else None
    for seg in segments:
        hidden = _transformer_layers(encoder, projected[seg.start:seg.stop])
        rows = hidden[seg.keep_start - seg.start:seg.keep_stop - seg.start].to("cpu", torch.float32)
        del hidden
        if running is not None:
            running.update(rows.contiguous().numpy().data)
        out[seg.keep_start:seg.keep_stop] = _fit_range(rows, out_dtype)
    logger.debug("wav2vec2: %d samples -> %d frames in %d transformer segment(s), stored as %s",
                 values.shape[0], frames, len(segments), out_dtype)
    return out, None if running is None else running.hexdigest()


@torch.no_grad()  # not inference_mode: callers may modify the features in place
def encode_audio_features(encoder: Wav2Vec2AudioEncoder, waveform, sample_rate: int = MODEL_SAMPLE_RATE,
                          segment_seconds: float = 40.0, context_seconds: float = 5.0,
                          out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[n] mono 16 kHz waveform (numpy or tensor) → [T, L, C] wav2vec2 features on the CPU.

    T = int(n / 16000 · 25) (one row per 25 fps video frame), L = transformer layers (12), C = width
    (768). Tracks longer than ``segment_seconds`` run the transformer in overlapping windows (see the
    module docstring); shorter ones in one pass. Each window's rows go straight into the ``out_dtype``
    result (no full-length float32 copy for a 16-bit one; fp16 clamps at ±65504 with a warning). Raises
    AudioInputError when the track is shorter than one video frame (640 samples) and
    InputValidationError for a rate other than 16 kHz.
    """
    return _encode(encoder, waveform, sample_rate, segment_seconds, context_seconds, out_dtype)[0]


@torch.no_grad()
def encode_stored_features(encoder: Wav2Vec2AudioEncoder, waveform, sample_rate: int = MODEL_SAMPLE_RATE,
                           segment_seconds: float = 40.0, context_seconds: float = 5.0,
                           dtype: torch.dtype = STORED_DTYPE) -> StoredFeatures:
    """``encode_audio_features`` for a whole run held on the host: the features in ``dtype`` (bfloat16:
    2 bytes per value, 1.66 GB per hour of speech) and the digest of their float32 values (see
    StoredFeatures). Same arguments and errors as ``encode_audio_features``."""
    features, digest = _encode(encoder, waveform, sample_rate, segment_seconds, context_seconds, dtype,
                               digest=True)
    return StoredFeatures(features, digest)
