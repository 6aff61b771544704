"""Continuing an existing clip: its last M frames are chunk 0's context; the output is the new audio only."""

from __future__ import annotations

import pytest
import torch

from infinitetalk_core.errors import InputValidationError
from infinitetalk_core.stream.conditioning import encode_context
from infinitetalk_core.stream.generate import generate_chunks
from infinitetalk_core.stream.plan import plan_chunks

from .conftest import CHUNK, CONTEXT


@pytest.mark.parametrize("frames", [1, 8, 9, 30])
def test_continuation_plan_tiles_the_new_frames_only(frames):
    plan = plan_chunks(frames, CHUNK, CONTEXT, lead_context=True)
    stride = CHUNK - CONTEXT
    assert plan.num_chunks == -(-frames // stride)
    assert plan.chunks[0].start == -CONTEXT and plan.chunks[0].context_frames == CONTEXT
    covered = []
    for c in plan.chunks:
        assert c.keep_start == CONTEXT and c.context_latents == (CONTEXT - 1) // 4 + 1
        covered += range(c.output_start, c.output_stop)
        assert plan.chunk_for_output_frame(c.output_start) is c
    assert covered == list(range(frames))


class _Recorder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.latents, self.config = model, [], model.config

    def forward(self, x, *args, **kw):
        self.latents.append(x[0].clone())
        return self.model(x, *args, **kw)


def test_previous_frames_seed_chunk_zero(make_inputs):
    inputs = make_inputs(20)
    first = list(generate_chunks(*inputs.args(inputs.plan(20)), image_encoder=inputs.encoder))
    previous = torch.cat([r.frames for r in first], dim=1)  # [3, 20, H, W]
    inputs.features = inputs.features.flip(0)  # new speech
    recorder = _Recorder(inputs.model)
    inputs.model = recorder
    plan = plan_chunks(20, CHUNK, CONTEXT, lead_context=True)
    results = list(generate_chunks(*inputs.args(plan), image_encoder=inputs.encoder, previous_frames=previous))
    assert sum(r.frames.shape[1] for r in results) == 20
    tail = encode_context(inputs.vae, previous[:, -CONTEXT:])
    torch.testing.assert_close(recorder.latents[0][:, :tail.shape[1]], tail, rtol=0, atol=0)
    fresh = list(generate_chunks(*inputs.args(inputs.plan(20)), image_encoder=inputs.encoder))
    assert not torch.equal(fresh[0].frames[:, :8], results[0].frames[:, :8])  # the context made a difference


def test_continuation_inputs_are_checked(make_inputs):
    inputs = make_inputs(20)
    lead = plan_chunks(20, CHUNK, CONTEXT, lead_context=True)
    with pytest.raises(InputValidationError, match="at least the 5 context frames"):
        list(generate_chunks(*inputs.args(lead), image_encoder=inputs.encoder,
                             previous_frames=torch.zeros(3, 4, 32, 32)))
    with pytest.raises(InputValidationError, match="lead_context"):
        list(generate_chunks(*inputs.args(lead), image_encoder=inputs.encoder))
    with pytest.raises(InputValidationError, match=r"\[3, frames, 32, 32\]"):
        list(generate_chunks(*inputs.args(lead), image_encoder=inputs.encoder,
                             previous_frames=torch.zeros(3, 9, 16, 16)))
