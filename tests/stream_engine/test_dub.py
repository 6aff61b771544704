"""True dubbing: denoise from the source latents, the dub mask (latents pinned, frames composited, audio
gated) and reading the source by time without re-decoding it."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
import torch

from infinitetalk_core.errors import InputValidationError
from infinitetalk_core.sampling.inpaint import noised_source, partial_timesteps
from infinitetalk_core.sampling.schedulers import scheduler_timesteps
from infinitetalk_core.sampling.seeds import chunk_noise
from infinitetalk_core.stream.dub_mask import DubMask, feather_alpha, latent_keep, token_gate
from infinitetalk_core.stream.generate import generate_chunks
from infinitetalk_core.stream.references import source_indices_for_chunk
from infinitetalk_core.stream.sources import TensorReference, VideoFileReference
from infinitetalk_core.video import write_mp4

NTSC = Fraction(30000, 1001)
SRC_H, SRC_W, SRC_FRAMES = 48, 64, 40


def _source_video(tmp_path):
    """A 29.97 fps clip whose every frame differs (a moving gradient plus noise)."""
    g = np.random.default_rng(0)
    ramp = np.linspace(0, 160, SRC_W, dtype=np.float32)[None, :, None]
    frames = [np.clip(ramp + 2 * i + g.integers(0, 60, (SRC_H, SRC_W, 3)), 0, 255).astype(np.uint8)
              for i in range(SRC_FRAMES)]
    return write_mp4(tmp_path / "src.mp4", [np.stack(frames)], SRC_FRAMES, SRC_W, SRC_H, fps=NTSC)


def _box_mask(frames: int = 1, move: int = 0) -> torch.Tensor:
    """[frames, 48, 64] source-size masks: a box (moving ``move`` pixels per frame)."""
    masks = torch.zeros(frames, SRC_H, SRC_W)
    for i in range(frames):
        left = 16 + (i * move) % 16
        masks[i, 12:36, left:left + 24] = 1.0
    return masks


def _run(inputs, plan, **kw):
    return list(generate_chunks(*inputs.args(plan), image_encoder=inputs.encoder, **kw))


def _output_and_source(results, plan, references):
    """Output frames uint8 [N, H, W, 3] and, for each, the source frame on screen at its time."""
    out = np.concatenate([r.frames_uint8() for r in results])
    shown = []
    for r in results:
        indices = source_indices_for_chunk(r.chunk, references.num_frames, references.fps)
        shown += indices[r.chunk.keep_start:r.chunk.keep_stop]
    source = np.stack([((references.frame(i) + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
                       for i in shown])
    return out, source, shown


@pytest.mark.parametrize("per_frame", [False, True])
@pytest.mark.parametrize("denoise", [1.0, 0.5])
def test_outside_the_mask_the_output_is_the_source(make_inputs, tmp_path, per_frame, denoise):
    inputs = make_inputs(30, steps=4, denoise=denoise, color_method="lab", color_reference="chunk")
    inputs.references = VideoFileReference(_source_video(tmp_path), (32, 32))
    raw = _box_mask(SRC_FRAMES, move=1) if per_frame else _box_mask()
    mask = DubMask.from_source_masks(raw, (32, 32), feather=3)
    plan = inputs.plan()
    try:
        results = _run(inputs, plan, dub_mask=mask)
        out, source, shown = _output_and_source(results, plan, inputs.references)
    finally:
        inputs.references.close()
    assert len(out) == 30 and plan.num_chunks == 4
    outside = (mask.masks[shown if per_frame else [0] * len(shown)] == 0).numpy()  # [N, H, W]
    diff = np.abs(out.astype(int) - source.astype(int))
    assert outside.any() and (~outside).any()
    assert diff[outside].max() <= 1
    assert diff[~outside].mean() > 5  # inside, the model generated new pixels


def test_mask_of_ones_changes_nothing(make_inputs):
    """A mask over everything: no pin, a composite of weight 1 and a gate of 1 leave every bit as it was."""
    inputs = make_inputs(30, steps=3, color_method="lab")
    plan = inputs.plan()
    base = _run(inputs, plan)
    everywhere = DubMask(torch.ones(1, 32, 32), feather=0)
    dubbed = _run(inputs, plan, dub_mask=everywhere)
    for a, b in zip(base, dubbed):
        assert torch.equal(a.pixels_uint8, b.pixels_uint8)
        assert a.frames.equal(b.frames)


class _Recorder(torch.nn.Module):
    """The model, recording every latent it is evaluated on and counting forwards."""

    def __init__(self, model):
        super().__init__()
        self.model, self.latents, self.gates = model, [], []
        self.config = model.config

    def forward(self, x, *args, **kw):
        self.latents.append(x[0].clone())
        self.gates.append(kw.get("audio_gate"))
        return self.model(x, *args, **kw)


def test_denoise_starts_from_the_noised_source_and_runs_only_the_remaining_steps(make_inputs, tmp_path):
    inputs = make_inputs(13, steps=10, denoise=0.4, batch_passes=True)
    inputs.references = VideoFileReference(_source_video(tmp_path), (32, 32))
    recorder = _Recorder(inputs.model)
    inputs.model = recorder
    plan = inputs.plan()
    try:
        (result,) = _run(inputs, plan)
        indices = source_indices_for_chunk(plan.chunks[0], SRC_FRAMES, NTSC)
        clip = torch.stack([inputs.references.frame(i) for i in indices], 1)
    finally:
        inputs.references.close()
    assert len(recorder.latents) == 4  # round(10 * 0.4) steps, the passes batched into one forward each
    assert result.pass_calls == 4 * 3
    timesteps = partial_timesteps(scheduler_timesteps("flow_euler", 10, 7.0), 0.4)
    assert timesteps.numel() == 5
    noise = chunk_noise((16, 4, 4, 4), inputs.settings.seed, 0)
    expected = noised_source(inputs.vae.encode(clip), noise, timesteps[0] / 1000)
    context = plan.chunks[0].context_latents
    torch.testing.assert_close(recorder.latents[0][:, context:], expected[:, context:], rtol=0, atol=1e-6)
    assert recorder.gates == [None] * 4  # no mask: no audio gate


def test_one_speaker_with_a_mask_gates_the_audio(make_inputs):
    inputs = make_inputs(13, steps=2)
    recorder = _Recorder(inputs.model)
    inputs.model = recorder
    masks = torch.zeros(1, 32, 32)
    masks[0, 0:16, 0:16] = 1.0  # the top-left latent quarter: one token of the 2 x 2 token grid per frame
    _run(inputs, inputs.plan(), dub_mask=DubMask(masks))
    gate = recorder.gates[0]
    assert gate.shape == (4, 2, 2)
    assert gate[:, 0, 0].eq(1).all() and gate.sum() == 4


def test_audio_gate_zeroes_the_audio_contribution_per_token():
    from infinitetalk_core.stream.standins import random_audio_features, tiny_dit
    from infinitetalk_core.audio import chunk_audio_windows

    model = tiny_dit(seed=0, config=None)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 16, 2, 4, 4, generator=g)
    y, clip = torch.randn(1, 20, 2, 4, 4, generator=g), torch.randn(1, 257, 16, generator=g)
    audio = chunk_audio_windows([random_audio_features(5, seed=1)], 0, 5)
    gate = torch.zeros(2, 2, 2)
    gate[1, 0, 1] = 1.0
    gate[0, 1, 1] = 0.5
    debug, plain = {}, {}
    with torch.no_grad():
        model(x, torch.tensor([500.0]), [torch.randn(4, 16, generator=g)], clip, y, [audio], audio_gate=gate,
              debug=debug)
    out = debug["block0.audio_attn_out"][0]  # [L, dim], tokens in frame-row-column order
    flat = gate.flatten()
    assert out[flat == 0].abs().max() == 0  # exactly no audio outside the mask
    assert out[flat == 1].abs().min() > 0 and out[flat == 0.5].abs().min() > 0


def test_source_frames_are_read_once(make_inputs):
    """Consecutive chunks share frames: they come from memory, not a re-read (a decoder restart)."""
    inputs = make_inputs(30, steps=2, denoise=0.5, color_reference="first", color_method="lab")
    frames = torch.rand(3, 60, 32, 32) * 2 - 1
    reads: list[int] = []

    class Counting(TensorReference):
        def frame(self, index):
            reads.append(index)
            return super().frame(index)

    inputs.references = Counting(frames, fps=NTSC)
    masks = DubMask(torch.ones(1, 32, 32) * (torch.arange(32) < 20).float()[None, :, None])
    _run(inputs, inputs.plan(), dub_mask=masks)
    assert len(reads) == len(set(reads)) and max(reads) < 60, str(reads)


def test_latent_keep_token_gate_and_feather():
    masks = torch.zeros(9, 32, 32)
    masks[3, 8:9, 20:21] = 1.0  # one pixel in pixel frame 3 (latent frame 1)
    keep = latent_keep(masks)
    assert keep.shape == (1, 3, 4, 4)
    assert keep[0, 1, 1, 2] == 0 and keep.sum() == 3 * 16 - 1
    assert token_gate(keep)[1, 0, 1] == 1 and token_gate(keep).sum() == 1
    box = torch.zeros(1, 40, 40)
    box[0, 10:30, 10:30] = 1
    alpha = feather_alpha(box, 4)
    assert alpha[box == 0].abs().max() == 0 and alpha[0, 20, 20] == pytest.approx(1.0)
    assert 0 < alpha[0, 10, 20] < 0.2 and 0 < alpha[0, 13, 20] < 1  # a ramp inside the edge


def test_bad_dub_inputs_are_refused(make_inputs, tmp_path):
    inputs = make_inputs(13, denoise=0.5)
    with pytest.raises(InputValidationError, match="single image"):
        _run(inputs, inputs.plan())
    inputs = make_inputs(13)
    with pytest.raises(InputValidationError, match="dub mask is 16x16"):
        _run(inputs, inputs.plan(), dub_mask=DubMask(torch.ones(1, 16, 16)))
    inputs.references = TensorReference(torch.zeros(3, 5, 32, 32))
    with pytest.raises(InputValidationError, match="3 masks but the source has 5 frames"):
        _run(inputs, inputs.plan(), dub_mask=DubMask(torch.ones(3, 32, 32)))
    with pytest.raises(InputValidationError, match="mask_feather"):
        DubMask(torch.ones(1, 32, 32), feather=-1)
    with pytest.raises(InputValidationError, match="denoise"):
        replace(inputs.settings, denoise=0.0).validate()


def test_outside_the_mask_the_sampled_latents_are_the_source_latents(make_inputs):
    """The sampler pins the region outside the mask at every step: at σ = 0 it is VAE(source) exactly."""
    for scheduler, steps in (("flow_euler", 3), ("unipc", 3), ("distill", 4)):
        inputs = make_inputs(13, steps=steps, scheduler=scheduler, shift=5.0)
        inputs.references = TensorReference(torch.rand(3, 20, 32, 32) * 2 - 1, fps=NTSC)
        decoded, vae = [], inputs.vae
        inputs.vae = type("Recording", (), {"encode": vae.encode, "identity": "r",
                                            "decode": lambda self, z: decoded.append(z) or vae.decode(z)})()
        masks = torch.zeros(1, 32, 32)
        masks[0, 8:24, 8:24] = 1
        _run(inputs, inputs.plan(), dub_mask=DubMask(masks))
        indices = source_indices_for_chunk(inputs.plan().chunks[0], 20, NTSC)
        source = vae.encode(torch.stack([inputs.references.frame(i) for i in indices], 1))
        keep = latent_keep(DubMask(masks).pixel_masks(indices)).bool().expand_as(source)
        assert torch.equal(decoded[0][keep], source[keep]), scheduler
        assert not torch.equal(decoded[0][~keep], source[~keep])


def test_two_speakers_keep_their_routing_masks_and_no_audio_gate(make_inputs):
    from infinitetalk_core.stream.masks import speaker_masks
    from infinitetalk_core.stream.standins import random_audio_features

    inputs = make_inputs(13, steps=2)
    inputs.features = torch.stack([inputs.features, random_audio_features(13, seed=5)])
    inputs.references = TensorReference(torch.rand(3, 20, 32, 32) * 2 - 1, fps=NTSC)
    recorder = _Recorder(inputs.model)
    inputs.model = recorder
    masks = torch.zeros(1, 32, 32)
    masks[0, 8:24, :] = 1
    routing = speaker_masks(32, 32, 32, 32, num_speakers=2)
    (result,) = _run(inputs, inputs.plan(13), dub_mask=DubMask(masks), ref_target_masks=routing)
    assert recorder.gates == [None] * 2  # the speakers' own masks route the audio
    indices = source_indices_for_chunk(inputs.plan(13).chunks[0], 20, NTSC)
    source = torch.stack([inputs.references.frame(i) for i in indices], 1)
    expected = ((source + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 3, 0)
    outside = masks[0] == 0
    assert (result.pixels_uint8[:, outside].int() - expected[:, outside].int()).abs().max() <= 1
