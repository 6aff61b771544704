"""Every invalid parameter raises InputValidationError before any model or VAE work."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from infinitetalk_core.errors import InputValidationError
from infinitetalk_core.stream.generate import StreamState, generate_chunks
from infinitetalk_core.sampling.guidance import GuidanceConfig
from infinitetalk_core.stream.host import TextContexts
from infinitetalk_core.stream.render import render_to_job
from infinitetalk_core.stream.sources import TensorReference
from infinitetalk_core.stream.standin_vae import StandInVAE


class CountingVAE(StandInVAE):
    calls = 0

    def encode(self, pixels):
        CountingVAE.calls += 1
        return super().encode(pixels)


BAD_SETTINGS = [
    dict(steps=0),
    dict(steps=2.5),
    dict(shift=-1.0),
    dict(seed=-3),
    dict(color_method="sepia"),
    dict(color_strength=1.5),
    dict(color_reference="last"),
    dict(reference_strategy="middle"),
    dict(reference_overflow="bounce"),
    dict(audio_padding="zeros"),
    dict(batch_passes="yes"),
]


def _expect_no_work(make, model, tmp_path, **changes):
    CountingVAE.calls = 0
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(InputValidationError) as info:
            make(**changes)
    finally:
        handle.remove()
    assert calls == [] and CountingVAE.calls == 0
    assert not any(tmp_path.iterdir())  # no job directory was created
    return info.value


@pytest.mark.parametrize("bad", BAD_SETTINGS, ids=lambda d: next(iter(d)))
def test_bad_settings(make_inputs, model, tmp_path, bad):
    inputs = make_inputs(13)
    plan = inputs.plan()

    def run(**_):
        settings = replace(inputs.settings, **bad)
        render_to_job(
            tmp_path / "job",
            inputs.model,
            CountingVAE(),
            plan,
            inputs.references,
            inputs.features,
            inputs.text,
            settings,
            image_encoder=inputs.encoder,
        )

    error = _expect_no_work(run, model, tmp_path)
    assert error.fix  # every error says how to fix it


def test_bad_guidance_scale():
    with pytest.raises(InputValidationError, match="guidance scales"):
        GuidanceConfig(text_scale=-1.0)


BAD_INPUTS = {
    "short_audio": lambda i, plan: dict(audio_features=i.features[:10]),
    "audio_width": lambda i, plan: dict(audio_features=torch.zeros(13, 3, 8)),
    "three_speakers": lambda i, plan: dict(audio_features=torch.zeros(3, 13, 2, 8)),
    "nan_audio": lambda i, plan: dict(audio_features=i.features * float("nan")),
    "two_speakers_no_masks": lambda i, plan: dict(audio_features=torch.stack([i.features, i.features])),
    "bad_masks": lambda i, plan: dict(ref_target_masks=torch.ones(3, 2, 2)),
    "text_width": lambda i, plan: dict(text=TextContexts.single(torch.zeros(3, 8), torch.zeros(3, 8))),
    "text_too_long": lambda i, plan: dict(text=TextContexts.single(torch.zeros(600, 16), torch.zeros(3, 16))),
    "no_clip": lambda i, plan: dict(image_encoder=None),
    "odd_size": lambda i, plan: dict(references=TensorReference(torch.zeros(3, 1, 24, 40))),
    "not_a_plan": lambda i, plan: dict(plan=[plan]),
    "bad_state": lambda i, plan: dict(state=StreamState(1, torch.zeros(3, 2, 32, 32))),
}


MESSAGES = {
    "short_audio": "plan needs",
    "audio_width": "layers x width",
    "three_speakers": "one or two speakers",
    "nan_audio": "NaN",
    "two_speakers_no_masks": "Two speakers need",
    "bad_masks": "ref_target_masks has shape",
    "text_width": "wide",
    "text_too_long": "tokens",
    "no_clip": "CLIP",
    "odd_size": "multiples of 16",
    "not_a_plan": "StreamPlan",
    "bad_state": "Resume state",
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs(make_inputs, model, tmp_path, case):
    inputs = make_inputs(13)
    plan = inputs.plan(frames=13)
    kwargs = dict(
        model=inputs.model,
        vae=CountingVAE(),
        plan=plan,
        references=inputs.references,
        audio_features=inputs.features,
        text=inputs.text,
        settings=inputs.settings,
        image_encoder=inputs.encoder,
    )
    kwargs.update(BAD_INPUTS[case](inputs, plan))
    error = _expect_no_work(lambda: generate_chunks(**kwargs), model, tmp_path)
    assert MESSAGES[case] in str(error)


def test_text_contexts_reject_bad_shapes():
    with pytest.raises(InputValidationError):
        TextContexts(())
    with pytest.raises(InputValidationError):
        TextContexts(((torch.zeros(16), torch.zeros(3, 16)),))
    with pytest.raises(InputValidationError, match="widths"):
        TextContexts(((torch.zeros(2, 16), torch.zeros(3, 8)),))
