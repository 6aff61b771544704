"""MultiTalk audio weights (MeiGen's multitalk.safetensors and Kijai's repacks) load wherever InfiniteTalk's
do, are identified as MultiTalk, and the load report says which audio weights were loaded."""
from __future__ import annotations

import pytest
import torch

from infinitetalk_core.model.identify import identify_file
from infinitetalk_core.model.loading import load_infinitetalk_model


def _load(tiny, base, audio, **kw):
    return load_infinitetalk_model(base, audio, dtype=torch.float32, head_dim=tiny.head_dim, **kw)


def _fp16_repack(tiny):
    return {k: (v.half() if tiny.is_linear_weight(k, v) and k.startswith("blocks.") else v)
            for k, v in tiny.audio.items()}


def _fp8_repack(tiny):
    blocks = {k: v for k, v in tiny.audio.items() if k.startswith("blocks.")}
    tensors, _ = tiny.fp8_scaled(blocks, extras=False)
    tensors.update({k: v for k, v in tiny.audio.items() if k not in blocks})
    return tensors


@pytest.mark.parametrize("name, make", [
    ("multitalk.safetensors", lambda tiny: tiny.audio),  # MeiGen-AI/MeiGen-MultiTalk
    ("Wan2_1-multitalk-14B_fp16.safetensors", _fp16_repack),  # Kijai's fp16 repack: F16 block Linears
    ("WanVideo_2_1_Multitalk_14B_fp8_e4m3fn_scaled_KJ.safetensors", _fp8_repack),  # Kijai's scaled fp8
])
def test_multitalk_weights_load_and_are_named(tiny, tiny_inputs, name, make):
    base = tiny.write("wan_i2v.safetensors", tiny.base)
    multitalk = tiny.write(name, make(tiny))
    assert identify_file(multitalk).kind == "multitalk"
    model, report = _load(tiny, base, multitalk)
    assert report.audio.kind == "multitalk" and report.audio_keys == len(tiny.audio)
    assert "audio weights: MultiTalk audio weights" in report.summary() and name in report.summary()
    twin, twin_report = _load(tiny, base, tiny.write("infinitetalk_single.safetensors", make(tiny)))
    assert "audio weights: InfiniteTalk audio weights (single" in twin_report.summary()
    with torch.no_grad():  # the same tensors under another name: the same model
        torch.testing.assert_close(model(**tiny_inputs), twin(**tiny_inputs), rtol=0, atol=0)
