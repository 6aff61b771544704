"""D. NaN/inf: damaged weights, a NaN LoRA, NaN from the VAE or the inputs -> a coded error (E_NONFINITE for
numbers that went bad while generating), nothing damaged committed, and re-queueing with good weights
resumes after the last good chunk."""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file

import hostile_harness as hh


@pytest.fixture(scope="session")
def inproc_reference(world, tmp_path_factory):
    """The 3-chunk render done in this process (what a repaired job must equal)."""
    import os

    out = tmp_path_factory.mktemp("hostile_inproc_reference")
    old = os.environ.get("INFINITETALK_OUTPUT_DIR")
    os.environ["INFINITETALK_OUTPUT_DIR"] = str(out)
    try:
        res = world.nodes["InfiniteTalkStreamingSampler"]().sample(**hh.sampler_inputs(world.model, world.refs,
                                                                                       world.feats))
        return hh.frames_digest(res[0])
    finally:
        if old is not None:
            os.environ["INFINITETALK_OUTPUT_DIR"] = old


def _damaged_model(world, value: float, key: str = "blocks.0.ffn.0.weight"):
    model = copy.deepcopy(world.model)
    with torch.no_grad():
        dict(model.managed.module.named_parameters())[key].view(-1)[0] = value
    return model


class _BadAfterChunk(torch.nn.Module):
    """The DiT, whose output turns to NaN once ``vae`` has decoded ``after`` chunks."""

    def __init__(self, inner, vae, after: int):
        super().__init__()
        self.inner, self.vae, self.after = inner, vae, after
        self.config = inner.config
        self.attention_backend = getattr(inner, "attention_backend", "sdpa")

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        return out * float("nan") if self.vae.decodes >= self.after else out


def _job_state(box):
    job = box.job()
    if not (job / "manifest.json").is_file():
        return 0, None, []
    manifest = hh.read_manifest(job)
    files = [p for p in (job / "chunks").iterdir()] if (job / "chunks").is_dir() else []
    return len(manifest["chunks"]), manifest, files


def _assert_nonfinite(exc):
    return hh.assert_coded(exc, "E_NONFINITE", "weight", "LoRA", "fp16", "NaN", "finite")


@pytest.mark.parametrize("value", [float("inf"), float("nan"), float("-inf")], ids=["inf", "nan", "-inf"])
def test_damaged_dit_weight_commits_nothing_and_fixed_weights_resume(value, world, render, box, inproc_reference):
    with pytest.raises(Exception) as info:
        render(model=_damaged_model(world, value))
    text = _assert_nonfinite(info.value)
    assert "weight" in text.lower() or "lora" in text.lower(), "the message should point at the weights"
    done, manifest, files = _job_state(box)
    assert done == 0 and len(files) == 0, f"a NaN chunk was committed ({done} records, files {files})"
    if value != value:  # once is enough: the fixed weights (same files, so the same job) render correctly
        (out, vae), = [render()]
        assert hh.frames_digest(out[0]) == inproc_reference


def test_failure_at_chunk_1_keeps_chunk_0_and_resumes(world, render, box, inproc_reference):
    vae = hh.ComfyVAE()
    model = copy.copy(world.model)
    model.managed = copy.copy(world.model.managed)
    model.managed.module = _BadAfterChunk(world.model.managed.module, vae, after=1)
    with pytest.raises(Exception) as info:
        render(model=model, vae=vae)
    _assert_nonfinite(info.value)
    done, manifest, files = _job_state(box)
    assert done == 1, f"expected chunk 0 committed and chunk 1 not; manifest lists {done}"
    assert len(files) == 1, f"chunk files on disk: {files}"
    assert manifest["layout"]["num_chunks"] == 3
    (out, vae2), = [render()]
    assert vae2.decodes == 2, "re-queueing should regenerate only chunks 1 and 2"
    assert hh.frames_digest(out[0]) == inproc_reference


def _nan_lora(world, name: str, value: float) -> str:
    dim = 256
    tensors = {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.full((4, dim), 0.01),
               "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.full((dim, 4), 0.01)}
    tensors["diffusion_model.blocks.0.self_attn.q.lora_up.weight"][3, 2] = value
    save_file(tensors, world.models / "loras" / name)
    return name


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nan_lora_is_refused_or_nonfinite(value, world, render, box):
    name = _nan_lora(world, f"hostile_bad_lora_{'nan' if value != value else 'inf'}.safetensors", value)
    try:
        model = hh.load_model(lora_1=name, strength_1=1.0)
    except Exception as exc:  # refusing the LoRA at load time is fine too, if it names it
        hh.assert_coded(exc, ("E_PIPELINE_LOAD", "E_NONFINITE"), "LoRA")
        return
    with pytest.raises(Exception) as info:
        render(model=model)
    text = _assert_nonfinite(info.value)
    assert "lora" in text.lower(), "a model with a LoRA went non-finite: the message should name the LoRA"
    assert _job_state(box)[0] == 0


@pytest.mark.parametrize("where", ["decode_nan", "decode_inf"])
def test_vae_output_nan_is_never_committed(where, render, box):
    vae = hh.ComfyVAE()
    bad = float("nan") if where == "decode_nan" else float("inf")

    def hook(images):
        images = images.clone()
        images[..., 3, 3, :] = bad
        return images

    vae.decode_hook = hook
    with pytest.raises(Exception) as info:
        render(vae=vae)
    hh.assert_coded(info.value, ("E_NONFINITE", "E_GENERATION"), "VAE", "NaN", "finite", "decod")
    assert _job_state(box)[0] == 0


def test_nan_in_conditioning_is_coded_and_commits_nothing(render, box):
    positive = hh.conditioning(1, 7)
    positive[0][0][0, 2, 5] = float("nan")
    with pytest.raises(Exception) as info:
        render(positive=positive)
    hh.assert_coded(info.value, ("E_INPUT_VALIDATION", "E_NONFINITE"), "positive", "conditioning", "prompt",
                    "text", "NaN")
    assert _job_state(box)[0] == 0


def test_inf_in_clip_vision_is_coded(render, box):
    class BadClip(hh.ComfyClipVision):
        def encode_image(self, image, crop=True):
            out = super().encode_image(image, crop)
            out["penultimate_hidden_states"][0, 0, 0] = float("inf")
            return out

    with pytest.raises(Exception) as info:
        render(clip_vision=BadClip())
    hh.assert_coded(info.value, ("E_INPUT_VALIDATION", "E_NONFINITE"), "CLIP", "clip_vision", "image", "NaN",
                    "finite")
    assert _job_state(box)[0] == 0


def test_nan_reference_image_fails_before_any_folder(world, render, box):
    image = hh.reference_image().clone()
    image[0, 5, 5, 1] = float("nan")
    refs, _ = world.nodes["InfiniteTalkReferenceSampler"]().describe("chunk_start", "hold", 25.0, image=image)
    with pytest.raises(Exception) as info:
        render(refs=refs)
    hh.assert_coded(info.value, "E_INPUT_VALIDATION", "NaN", "infinite", "image", "reference")
    assert not box.jobs.exists() or not any(box.jobs.iterdir())


def test_nan_audio_features_fail_before_any_folder(world, render, box):
    feats = world.feats.features[0].clone()
    feats[7, 0, 3] = float("nan")
    with pytest.raises(Exception) as info:
        render(feats=hh.make_features([feats], feats.shape[0]))
    hh.assert_coded(info.value, "E_INPUT_VALIDATION", "NaN", "infinite", "audio")
    assert not box.jobs.exists() or not any(box.jobs.iterdir())
