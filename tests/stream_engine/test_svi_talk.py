"""mode = svi_talk: Stable Video Infinity's talk conditioning (1 motion frame + the reference as every
padding frame, CLIP of the motion frame, no clean context latents) and its LoRA's DiffSynth/PEFT keys."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from infinitetalk_core.errors import InputValidationError
from infinitetalk_core.model.lora import merge_lora, parse_lora
from infinitetalk_core.sampling.refine import RefineSettings
from infinitetalk_core.sampling.seeds import chunk_noise
from infinitetalk_core.stream.conditioning import encode_y_svi
from infinitetalk_core.stream.generate import generate_chunks
from infinitetalk_core.stream.plan import plan_chunks

from .conftest import CHUNK


def _diffsynth_mask(frames: int, h: int, w: int) -> torch.Tensor:
    """The mask exactly as SVI's encode_images_adaptive builds it (ones, frames 1.. zeroed, frame 0 repeated
    4 times, folded into [4, T, h, w])."""
    msk = torch.ones(1, frames, h, w)
    msk[:, 1:] = 0
    msk = torch.concat([torch.repeat_interleave(msk[:, 0:1], repeats=4, dim=1), msk[:, 1:]], dim=1)
    return msk.view(1, msk.shape[1] // 4, 4, h, w).transpose(1, 2)[0]


def test_svi_conditioning_matches_a_hand_built_case(make_inputs):
    inputs = make_inputs(13)
    g = torch.Generator().manual_seed(1)
    motion = torch.rand(3, 1, 32, 32, generator=g) * 2 - 1
    reference = torch.rand(3, 32, 32, generator=g) * 2 - 1
    clip = torch.zeros(3, CHUNK, 32, 32)
    clip[:, 0] = motion[:, 0]
    for i in range(1, CHUNK):  # "every padding frame is the user's reference image"
        clip[:, i] = reference
    expected = torch.cat([_diffsynth_mask(CHUNK, 4, 4), inputs.vae.encode(clip)])
    assert torch.equal(encode_y_svi(inputs.vae, motion, reference, CHUNK), expected)


class _Recorder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls, self.config = model, [], model.config

    def forward(self, x, t, context, clip_fea=None, y=None, **kw):
        self.calls.append((x[0].clone(), clip_fea.clone(), y[0].clone()))
        return self.model(x, t, context, clip_fea=clip_fea, y=y, **kw)


def test_svi_talk_chunks_continue_from_one_motion_frame(make_inputs):
    inputs = make_inputs(30, steps=2, mode="svi_talk", color_method="lab")
    recorder = _Recorder(inputs.model)
    inputs.model = recorder
    plan = plan_chunks(30, CHUNK, 1)
    results = list(generate_chunks(*inputs.args(plan), image_encoder=inputs.encoder))
    assert [r.chunk.keep_start for r in results] == [0] + [1] * (len(results) - 1)
    assert sum(r.frames.shape[1] for r in results) == 30  # the boundary frame is not repeated
    reference = inputs.references.frame(0)
    for k, result in enumerate(results):
        x, clip, y = recorder.calls[k * 2]  # 2 steps per chunk, the passes batched
        noise = chunk_noise((16, 4, 4, 4), inputs.settings.seed, k)
        assert torch.equal(x, noise)  # no clean context latents are written into the latent
        motion = reference[:, None] if k == 0 else results[k - 1].state.context_pixels
        assert motion.shape[1] == 1
        assert torch.equal(y, encode_y_svi(inputs.vae, motion, reference, CHUNK))
        torch.testing.assert_close(clip, inputs.encoder.encode_image(motion[:, 0]), rtol=0, atol=0)


def test_svi_talk_needs_one_motion_frame_and_no_refinement(make_inputs):
    inputs = make_inputs(30, mode="svi_talk")
    with pytest.raises(InputValidationError, match="1 motion frame"):
        list(generate_chunks(*inputs.args(inputs.plan()), image_encoder=inputs.encoder))
    with pytest.raises(InputValidationError, match="svi_talk has none"):
        replace(inputs.settings, refine=RefineSettings(every=2)).validate()
    with pytest.raises(InputValidationError, match="mode must be one of"):
        replace(inputs.settings, mode="svi").validate()


@pytest.mark.parametrize("prefix", ["", "diffusion_model."])
def test_svi_talk_lora_keys_from_diffsynth_peft(model, prefix):
    """SVI's LoRAs are saved by DiffSynth-Studio's PEFT training: <module>.lora_A/B.default.weight, the
    update B·A times the strength (its lora_alpha = rank: no extra scale)."""
    g = torch.Generator().manual_seed(0)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    names = ["blocks.0.self_attn.q", "blocks.0.cross_attn.k_img", "blocks.0.ffn.0"]
    state = {}
    for name in names:
        out, inp = shapes[f"{name}.weight"]
        state[f"{prefix}{name}.lora_A.default.weight"] = torch.randn(4, inp, generator=g)
        state[f"{prefix}{name}.lora_B.default.weight"] = torch.randn(out, 4, generator=g)
    lora = parse_lora("svi-talk.safetensors", state, shapes)
    assert sorted(p.key for p in lora.patches) == sorted(f"{n}.weight" for n in names)
    target = type(model)(model.config)
    target.load_state_dict(model.state_dict())
    merge_lora(target, lora, strength=0.5, dtype=torch.float32)
    for name in names:
        a, b = state[f"{prefix}{name}.lora_A.default.weight"], state[f"{prefix}{name}.lora_B.default.weight"]
        expected = model.state_dict()[f"{name}.weight"] + 0.5 * b @ a
        torch.testing.assert_close(target.state_dict()[f"{name}.weight"], expected, rtol=1e-5, atol=1e-5)
