"""Context refinement (experimental drift repair): off = untouched engine, its cost, what chunk k sees, resume."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from infinitetalk_core.audio import chunk_audio_windows
from infinitetalk_core.errors import InputValidationError
from infinitetalk_core.sampling.refine import RefineSettings, refine_latents, refine_timesteps
from infinitetalk_core.sampling.seeds import chunk_noise, refine_noise
from infinitetalk_core.stream import generate as generate_module
from infinitetalk_core.stream.conditioning import encode_context, encode_y
from infinitetalk_core.stream.generate import generate_chunks
from infinitetalk_core.stream.hooks import StreamHooks
from infinitetalk_core.stream.model_fn import make_model_fn
from infinitetalk_core.stream.render import render_to_job

REFINE = RefineSettings(every=2, strength=0.4, steps=3)


class CountingModel(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x, *args, **kwargs):
        self.calls += x.shape[0]
        return self.inner(x, *args, **kwargs)


def frames_of(results):
    return torch.cat([r.frames for r in results], dim=1)


def test_off_and_never_due_leave_the_engine_untouched(make_inputs, monkeypatch):
    plain = make_inputs(40)
    plan = plain.plan()
    expected = frames_of(generate_chunks(*plain.args(plan), image_encoder=plain.encoder))

    def forbidden(*args, **kwargs):
        raise AssertionError("refinement ran although it is off")

    monkeypatch.setattr(generate_module, "refine_context_pixels", forbidden)
    for refine in (RefineSettings(0, 0.9, 7), RefineSettings(plan.num_chunks, 0.5, 2)):
        inputs = make_inputs(40, refine=refine)
        assert torch.equal(frames_of(generate_chunks(*inputs.args(plan), image_encoder=inputs.encoder)), expected)
    assert "refine" not in make_inputs(40, refine=RefineSettings(0)).settings.to_json()


def test_extra_dit_calls_are_refine_steps_times_passes(make_inputs, tmp_path):
    inputs = make_inputs(40, refine=REFINE)
    plan = inputs.plan()
    assert plan.num_chunks == 5  # refined before chunks 2 and 4
    counting = CountingModel(inputs.model)
    chunks = []
    results = list(generate_chunks(counting, *inputs.args(plan)[1:], image_encoder=inputs.encoder,
                                   hooks=StreamHooks(on_chunk=chunks.append)))
    steps = inputs.settings.steps
    assert [r.refine_calls for r in results] == [0, 0, 9, 0, 9] == [c.refine_calls for c in chunks]
    assert counting.calls == 5 * steps * 3 + 2 * REFINE.steps * 3
    job = render_to_job(tmp_path / "job", *inputs.args(plan), image_encoder=inputs.encoder)
    layout = json.loads((job.path / "manifest.json").read_text())["layout"]
    assert layout["refinement"]["refined_chunks"] == [2, 4]
    assert layout["refinement"]["extra_dit_calls_total"] == 18 and layout["dit_calls_per_chunk"] == steps * 3


def test_chunk_k_sees_the_refined_tail_of_chunk_k_minus_1(make_inputs, monkeypatch):
    """The context latents chunk 2 samples with equal an independent refinement of chunk 1's tail."""
    inputs = make_inputs(40, refine=REFINE)
    plan, settings = inputs.plan(), inputs.settings
    seen = {}
    real = generate_module.scheduler_sampler

    def recording(name):
        sampler = real(name)

        def run(model_fn, noise, timesteps, context, *args, **kwargs):
            seen[len(seen)] = context.clone()
            return sampler(model_fn, noise, timesteps, context, *args, **kwargs)

        return run

    monkeypatch.setattr(generate_module, "scheduler_sampler", recording)
    results = list(generate_chunks(*inputs.args(plan), image_encoder=inputs.encoder))
    tail, chunk = results[1].state.context_pixels, plan.chunks[2]
    reference = inputs.references.frame(0).float()  # an image source: every chunk's reference
    frames = tail.shape[1]
    audio = chunk_audio_windows([inputs.features], chunk.start, frames, total_frames=plan.num_audio_frames,
                                padding=settings.audio_padding)
    positive, negative = inputs.text.for_chunk(2)
    h, w = (s // 8 for s in inputs.references.size)
    model_fn = make_model_fn(inputs.model, encode_y(inputs.vae, reference, frames),
                             inputs.encoder.encode_image(reference), audio.float(), positive, negative,
                             torch.ones(3, h, w))
    latents = encode_context(inputs.vae, tail)
    refined = refine_latents(model_fn, latents, refine_noise(latents.shape, settings.seed, 2), REFINE,
                             settings.guidance)
    expected = encode_context(inputs.vae, inputs.vae.decode(refined).float())
    torch.testing.assert_close(seen[2], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(seen[2], encode_context(inputs.vae, tail), atol=1e-3)  # it did change
    assert torch.equal(seen[1], encode_context(inputs.vae, results[0].state.context_pixels))  # chunk 1: not


def test_kill_and_resume_across_a_refined_chunk_is_bit_identical(make_inputs, tmp_path):
    inputs = make_inputs(40, refine=REFINE, color_method="lab", color_reference="previous_tail")
    plan = inputs.plan()
    clean = render_to_job(tmp_path / "clean", *inputs.args(plan), image_encoder=inputs.encoder)

    def crash(progress):
        if progress.chunk == 2 and progress.step == 1:
            raise RuntimeError("simulated kill inside the refined chunk")

    with pytest.raises(RuntimeError, match="simulated kill"):
        render_to_job(tmp_path / "killed", *inputs.args(plan), image_encoder=inputs.encoder,
                      hooks=StreamHooks(on_step=crash))
    resumed = render_to_job(tmp_path / "killed", *inputs.args(plan), image_encoder=inputs.encoder)
    a = np.concatenate(list(resumed.iter_frame_batches()))
    b = np.concatenate(list(clean.iter_frame_batches()))
    assert a.tobytes() == b.tobytes()


def test_refinement_noise_and_schedule():
    noise = refine_noise((16, 3, 4, 4), 7, 2)
    assert torch.equal(noise, refine_noise((16, 3, 4, 4), 7, 2))
    assert not torch.equal(noise, refine_noise((16, 3, 4, 4), 7, 4))
    assert not torch.equal(noise, chunk_noise((16, 3, 4, 4), 7, 2))
    t = refine_timesteps(0.3, 4)
    assert t.shape == (5,) and float(t[0]) == pytest.approx(300) and float(t[-1]) == 0
    assert bool((t[:-1] > t[1:]).all())


def test_refine_latents_starts_at_strength_and_follows_the_model():
    target = torch.full((16, 3, 4, 4), 0.5)
    latents, noise = torch.full((16, 3, 4, 4), -1.0), torch.randn(16, 3, 4, 4)
    inputs = []

    def exact(x, t, passes):  # the point-mass velocity towards `target`
        inputs.append(x.clone())
        s = float(t) / 1000
        return {p: (x - target) / s for p in passes}

    out = refine_latents(exact, latents, noise, RefineSettings(1, 0.3, 3))
    torch.testing.assert_close(inputs[0], 0.7 * latents + 0.3 * noise)
    torch.testing.assert_close(out, target)


@pytest.mark.parametrize("kwargs", [dict(every=-1), dict(strength=0.0), dict(strength=1.5),
                                    dict(strength=float("nan")), dict(steps=0), dict(steps=51), dict(every=True)])
def test_bad_refine_settings_are_refused(kwargs):
    with pytest.raises(InputValidationError):
        RefineSettings(**{"every": 2, **kwargs}).validate()
