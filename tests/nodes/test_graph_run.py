"""The example graph run node by node with the plain-torch host: tiny DiT and wav2vec2 files in the real
layouts go through the real loaders; the native VAE / CLIP vision / CONDITIONING are stand-ins with the
interfaces ComfyUI passes (pixels [F, H, W, 3] in [0, 1], raw Wan latents [1, 16, T, h, w], ...)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

TEXT_DIM, CLIP_DIM, SIZE = 32, 32, 64


class ComfyStyleVAE:
    """ComfyUI's VAE dialect over the core's deterministic stand-in (raw, unnormalised latents)."""

    def __init__(self, core):
        from importlib import import_module

        host = import_module(core + ".stream.host")
        self.host = host
        self.inner = import_module(core + ".stream.standin_vae").StandInVAE(seed=3)
        self.calls = 0

    def encode(self, images):  # [F, H, W, 3] in [0, 1] -> [1, 16, T, h, w] raw
        self.calls += 1
        normalized = self.inner.encode(self.host.pixels_from_comfy(images))
        return self.host.denormalize_wan21_latents(normalized)[None]

    def decode(self, raw):  # [1, 16, T, h, w] raw -> [1, F, H, W, 3] in [0, 1]
        pixels = self.inner.decode(self.host.normalize_wan21_latents(raw[0]))
        return self.host.pixels_to_comfy(pixels)[None]


class ComfyStyleClipVision:
    """Like comfy.clip_vision.ClipVisionModel.encode_image: IMAGE -> output with penultimate tokens."""

    def __init__(self):
        self.proj = torch.randn(3, CLIP_DIM, generator=torch.Generator().manual_seed(5))
        self.crops = []

    def encode_image(self, image, crop=True):
        self.crops.append(crop)
        pooled = torch.nn.functional.adaptive_avg_pool2d(image.permute(0, 3, 1, 2), 16).flatten(2)  # [1,3,256]
        tokens = torch.cat([pooled.mean(2, keepdim=True), pooled], 2).transpose(1, 2) @ self.proj
        return {"penultimate_hidden_states": tokens}  # [1, 257, CLIP_DIM]


def conditioning(seed: int, tokens: int) -> list:
    """CLIPTextEncode output for umt5: [1, 512, D] with zeros after the prompt's tokens."""
    t = torch.zeros(1, 512, TEXT_DIM)
    t[:, :tokens] = torch.randn(1, tokens, TEXT_DIM, generator=torch.Generator().manual_seed(seed))
    return [[t, {"pooled_output": None}]]


def write_tiny_models(models: Path, golden: Path, core: str) -> None:
    from importlib import import_module

    config_mod = import_module(core + ".model.config")
    dit_mod = import_module(core + ".model.dit")
    layouts = import_module(core + ".model.layouts")
    audio = config_mod.AudioConfig(feature_dim=2 * 32, intermediate_dim=32, output_dim=32, context_tokens=4)
    config = config_mod.DiTConfig(dim=256, ffn_dim=256, num_layers=1, num_heads=2, text_dim=TEXT_DIM,
                                  clip_dim=CLIP_DIM, audio=audio)
    model = dit_mod.InfiniteTalkDiT(config, device="meta")
    gen = torch.Generator().manual_seed(7)
    state = {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in model.state_dict().items()}
    save_file({k: v for k, v in state.items() if not layouts.is_audio_key(k)},
              models / "diffusion_models" / "tiny_wan_i2v.safetensors")
    save_file({k: v for k, v in state.items() if layouts.is_audio_key(k)},
              models / "model_patches" / "tiny_infinitetalk.safetensors")
    shutil.copytree(golden / "audio" / "wav2vec2_tiny", models / "audio_encoders" / "tiny_wav2vec2")


def speech(seconds: float, rate: int = 44100) -> dict:
    t = torch.arange(int(seconds * rate)) / rate
    wave = 0.3 * torch.sin(2 * torch.pi * 220 * t) * (0.5 + 0.5 * torch.sin(2 * torch.pi * 3 * t))
    return {"waveform": torch.stack([wave, 0.8 * wave])[None].float(), "sample_rate": rate}


def ffmpeg_info(path: Path) -> tuple[float, bool, int]:
    from imageio_ffmpeg import get_ffmpeg_exe

    err = subprocess.run([get_ffmpeg_exe(), "-hide_banner", "-i", str(path), "-map", "0:v", "-f", "null", "-"],
                         capture_output=True, text=True, check=False).stderr
    h, m, s = re.search(r"Duration: (\d+):(\d+):([\d.]+)", err).groups()
    frames = int(re.findall(r"frame=\s*(\d+)", err)[-1])
    return int(h) * 3600 + int(m) * 60 + float(s), "Audio: aac" in err, frames


@pytest.fixture()
def graph(pack, pack_module, models_dir, golden_dir):
    core = pack.__name__ + ".infinitetalk_core"
    write_tiny_models(models_dir, golden_dir, core)
    n = pack.NODE_CLASS_MAPPINGS
    (model,) = n["InfiniteTalkModelLoader"]().load("tiny_wan_i2v.safetensors", "tiny_infinitetalk.safetensors",
                                                    "fp32", "keep", "sdpa")
    (wav2vec,) = n["InfiniteTalkWav2VecLoader"]().load("tiny_wav2vec2", "fp32", "cpu")
    return {"nodes": n, "models": models_dir, "model": model, "wav2vec": wav2vec, "vae": ComfyStyleVAE(core), "core": core}


def sampler_inputs(g, refs, feats, **overrides):
    inputs = {"model": g["model"], "vae": g["vae"], "clip_vision": ComfyStyleClipVision(),
              "positive": conditioning(1, 7), "negative": conditioning(2, 3), "references": refs,
              "audio_features": feats, "size": "custom", "width": SIZE, "height": SIZE, "chunk_frames": 17,
              "context_frames": 5, "steps": 2, "shift": 0.0, "text_guidance": 5.0, "audio_guidance": 4.0,
              "seed": 42, "color_method": "lab", "color_strength": 1.0, "color_reference": "first",
              "resume": True, "image_frames": 3, "job_name": ""}
    inputs.update(overrides)
    return inputs


def test_image_to_video_graph_writes_an_exact_length_mp4_with_audio(graph):
    n = graph["nodes"]
    audio = speech(2.0)  # 50 frames at 25 fps -> 4 chunks of 17 with 5 context frames
    feats, mix, frames, seconds = n["InfiniteTalkAudioEncode"]().encode(graph["wav2vec"], audio, True)
    assert frames == 50 and seconds == 2.0 and mix is audio
    image = torch.rand(1, 48, 80, 3)
    refs, first = n["InfiniteTalkReferenceSampler"]().describe("chunk_start", "hold", 25.0, image=image)
    assert torch.equal(first, image)
    clip = ComfyStyleClipVision()
    out = n["InfiniteTalkStreamingSampler"]().sample(**sampler_inputs(graph, refs, feats, clip_vision=clip))
    handle, images, count, fps = out
    assert count == 50 and fps == 25.0 and images.shape == (3, SIZE, SIZE, 3)
    assert clip.crops and not any(clip.crops)  # the reference squashes to 224, no crop
    result = n["InfiniteTalkVideoCombine"]().combine(25.0, "tests/talk", 19, frames=handle, audio=mix)
    path = Path(result["result"][1])
    assert path.is_file() and result["ui"]["images"][0]["filename"] == path.name
    duration, has_audio, video_frames = ffmpeg_info(path)
    assert has_audio and video_frames == 50 and abs(duration - 2.0) < 0.05
    # the job folder lists every chunk: queueing again resumes (nothing left to generate)
    manifest = json.loads((Path(handle.path) / "manifest.json").read_text())
    assert len(manifest["chunks"]) == 4
    calls = graph["vae"].calls
    again = n["InfiniteTalkStreamingSampler"]().sample(**sampler_inputs(graph, refs, feats, clip_vision=clip))
    assert again[2] == 50 and graph["vae"].calls - calls <= 1  # only the fingerprint probe


def test_interrupted_run_resumes_from_the_last_finished_chunk(graph, pack_module):
    n, host_mod = graph["nodes"], pack_module("nodes.host")
    feats, *_ = n["InfiniteTalkAudioEncode"]().encode(graph["wav2vec"], speech(1.6), False)
    refs, _ = n["InfiniteTalkReferenceSampler"]().describe("chunk_start", "hold", 25.0, image=torch.rand(1, 64, 64, 3))

    class Stop(BaseException):
        pass

    class InterruptingHost(host_mod.TorchHost):
        steps = 0

        def check_interrupt(self):
            InterruptingHost.steps += 1
            if InterruptingHost.steps == 2:  # chunk 2, after its first step (checked between steps)
                raise Stop()

    host_mod.set_host(InterruptingHost())
    with pytest.raises(Stop):
        n["InfiniteTalkStreamingSampler"]().sample(**sampler_inputs(graph, refs, feats))
    host_mod.set_host(host_mod.TorchHost())
    job = next(p for p in (graph["models"].parent / "output" / "InfiniteTalk_jobs").iterdir())
    assert len(json.loads((job / "manifest.json").read_text())["chunks"]) == 1  # chunk 1 was kept
    handle, _, count, _ = n["InfiniteTalkStreamingSampler"]().sample(**sampler_inputs(graph, refs, feats))
    uninterrupted = n["InfiniteTalkStreamingSampler"]().sample(**sampler_inputs(graph, refs, feats, job_name="x"))[0]
    assert count == 40
    resumed, fresh = (np.concatenate(list(h.iter_uint8(64))) for h in (handle, uninterrupted))
    assert np.array_equal(resumed, fresh)


def test_a_named_job_refuses_other_speech(graph):
    """The job fingerprint covers the audio features (taken from Audio Encode's own digests)."""
    n = graph["nodes"]
    encode = n["InfiniteTalkAudioEncode"]()
    refs, _ = n["InfiniteTalkReferenceSampler"]().describe("chunk_start", "hold", 25.0, image=torch.rand(1, 64, 64, 3))
    first, *_ = encode.encode(graph["wav2vec"], speech(0.6), False)
    n["InfiniteTalkStreamingSampler"]().sample(**sampler_inputs(graph, refs, first, job_name="speech"))
    louder = speech(0.6)
    louder["waveform"] = louder["waveform"] * 0.5 + 0.01
    other, *_ = encode.encode(graph["wav2vec"], louder, False)
    with pytest.raises(ValueError, match=r"made for other inputs \(changed: audio\)"):
        n["InfiniteTalkStreamingSampler"]().sample(**sampler_inputs(graph, refs, other, job_name="speech"))


def test_video_combine_takes_an_image_batch(graph):
    images = torch.rand(10, 32, 48, 3)
    result = graph["nodes"]["InfiniteTalkVideoCombine"]().combine(10.0, "tests/imgs", 23, images=images,
                                                                   audio=speech(0.5))
    duration, has_audio, frames = ffmpeg_info(Path(result["result"][1]))
    assert frames == 10 and has_audio and abs(duration - 1.0) < 0.05


def test_errors_reach_the_user_with_a_code_and_a_fix(graph, pack):
    from importlib import import_module

    errors = import_module(pack.__name__ + ".infinitetalk_core.errors")
    n = graph["nodes"]
    with pytest.raises(errors.InfiniteTalkError) as exc:
        n["InfiniteTalkModelLoader"]().load("missing.safetensors", "tiny_infinitetalk.safetensors", "fp32", "keep", "sdpa")
    assert str(exc.value).startswith("E_INPUT_VALIDATION") and "models/diffusion_models" in str(exc.value)
    with pytest.raises(errors.InfiniteTalkError) as exc:  # a wav2vec file where the DiT should be
        n["InfiniteTalkModelLoader"]().load("../audio_encoders/tiny_wav2vec2/model.safetensors",
                                            "tiny_infinitetalk.safetensors", "fp32", "keep", "sdpa")
    assert str(exc.value).startswith("E_PIPELINE_LOAD") and "Fix:" in str(exc.value)
    with pytest.raises(errors.InfiniteTalkError) as exc:
        n["InfiniteTalkAudioEncode"]().encode(graph["wav2vec"], {"waveform": torch.zeros(1, 1, 0), "sample_rate": 16000}, True)
    assert str(exc.value).startswith("E_AUDIO")
    with pytest.raises(errors.InfiniteTalkError) as exc:
        n["InfiniteTalkVideoCombine"]().combine(25.0, "x", 19)
    assert str(exc.value).startswith("E_INPUT_VALIDATION")


def test_out_of_memory_names_the_knobs(pack_module):
    common = pack_module("nodes.common")
    err = common.translate_error(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), "sampling")
    text = str(err)
    assert text.startswith("E_OOM") and all(k in text for k in ("resolution", "chunk_frames", "fp8", "offload"))


def record_progress(host_mod) -> list:
    """Install a plain-torch host that keeps every progress event; returns the list it fills."""
    events = []

    class RecordingHost(host_mod.TorchHost):
        def send_progress(self, payload, node_id=None):
            events.append(payload)

    host_mod.set_host(RecordingHost())
    return events


def test_step_cache_and_scheduler_inputs_reach_the_engine_and_the_fingerprint(graph, pack_module):
    """step_cache/scheduler from the node: skipped calls in progress, a different job per setting, and a
    clear refusal (before any job folder) for a cache on a 4-step distilled run."""
    from importlib import import_module

    n, host_mod = graph["nodes"], pack_module("nodes.host")
    errors = import_module(graph["core"] + ".errors")
    feats, *_ = n["InfiniteTalkAudioEncode"]().encode(graph["wav2vec"], speech(1.0), False)
    refs, _ = n["InfiniteTalkReferenceSampler"]().describe("chunk_start", "hold", 25.0, image=torch.rand(1, 64, 64, 3))
    events = record_progress(host_mod)
    cached = sampler_inputs(graph, refs, feats, steps=12, step_cache="easycache", cache_threshold=5.0)
    n["InfiniteTalkStreamingSampler"]().sample(**cached)
    done = [e for e in events if e.get("chunk_done")]
    assert done and all(e["dit_calls"] == 36 and e["skipped_calls"] > 0 for e in done)
    n["InfiniteTalkStreamingSampler"]().sample(**sampler_inputs(graph, refs, feats, steps=12))
    n["InfiniteTalkStreamingSampler"]().sample(**sampler_inputs(graph, refs, feats, steps=4, scheduler="distill",
                                                                text_guidance=1.0, audio_guidance=2.0))
    jobs = graph["models"].parent / "output" / "InfiniteTalk_jobs"
    assert len(list(jobs.iterdir())) == 3  # the cache and the scheduler are part of the job fingerprint
    with pytest.raises(errors.InfiniteTalkError, match="E_INPUT_VALIDATION.*refused at 4 steps"):
        n["InfiniteTalkStreamingSampler"]().sample(**sampler_inputs(graph, refs, feats, steps=4, scheduler="distill",
                                                                    step_cache="teacache"))
    assert len(list(jobs.iterdir())) == 3


def test_refine_inputs_reach_progress_and_the_job_manifest(graph, pack_module):
    n, host_mod = graph["nodes"], pack_module("nodes.host")
    feats, *_ = n["InfiniteTalkAudioEncode"]().encode(graph["wav2vec"], speech(1.0), False)
    refs, _ = n["InfiniteTalkReferenceSampler"]().describe("chunk_start", "hold", 25.0, image=torch.rand(1, 64, 64, 3))
    events = record_progress(host_mod)
    handle, *_ = n["InfiniteTalkStreamingSampler"]().sample(
        **sampler_inputs(graph, refs, feats, refine_every=1, refine_strength=0.5, refine_steps=2))
    done = [e["refine_calls"] for e in events if e.get("chunk_done")]
    assert done[0] == 0 and done[1:] and all(c == 2 * 3 for c in done[1:])
    assert any(e["stage"] == "refining_context" for e in events)
    layout = json.loads((Path(handle.path) / "manifest.json").read_text())["layout"]
    assert layout["refinement"]["experimental"] and layout["refinement"]["refined_chunks"] == list(range(1, len(done)))


def test_fp8_matmul_flag_switches_kept_fp8_layers_to_fp8_compute(graph, pack_module):
    """ComfyUI's --fast fp8_matrix_mult reaches the fp8 layers (through the host's flag)."""
    from safetensors.torch import load_file

    n, host_mod, models = graph["nodes"], pack_module("nodes.host"), graph["models"]
    state = load_file(models / "diffusion_models" / "tiny_wan_i2v.safetensors")
    scaled = {}
    for key, t in state.items():
        if key.endswith(".weight") and t.dim() == 2:
            scale = t.abs().max() / 448.0
            scaled[key], scaled[key[:-7] + ".scale_weight"] = (t / scale).to(torch.float8_e4m3fn), scale.float()
        else:
            scaled[key] = t
    save_file(scaled, models / "diffusion_models" / "tiny_wan_fp8.safetensors")

    class FastHost(host_mod.TorchHost):
        def fp8_matmul_flag(self):
            return True

    for host, expected in ((host_mod.TorchHost(), "dequantize"), (FastHost(), "auto")):
        host_mod.set_host(host)
        (model,) = n["InfiniteTalkModelLoader"]().load("tiny_wan_fp8.safetensors", "tiny_infinitetalk.safetensors",
                                                        "bf16", "keep", "sdpa")
        modes = {m.fp8_compute for m in model.managed.module.modules()
                 if getattr(m, "scale_weight", None) is not None}
        assert modes == {expected}


def test_model_loader_compiles_the_blocks_when_asked(graph, pack_module, monkeypatch):
    compile_module = pack_module("infinitetalk_core.model.compile")
    calls = []
    monkeypatch.setattr(compile_module, "compile_blocks", lambda model, mode: calls.append(mode) or 0)
    n = graph["nodes"]
    n["InfiniteTalkModelLoader"]().load("tiny_wan_i2v.safetensors", "tiny_infinitetalk.safetensors", "fp32", "keep",
                                        "sdpa", compile="blocks")
    assert calls == ["blocks"]


def test_the_dit_is_loaded_again_before_every_chunk(graph, pack_module):
    """A VAE encode/decode may offload the DiT in low VRAM; the sampler loads it back before each chunk."""
    n, host_mod = graph["nodes"], pack_module("nodes.host")
    feats, *_ = n["InfiniteTalkAudioEncode"]().encode(graph["wav2vec"], speech(1.6), False)
    refs, _ = n["InfiniteTalkReferenceSampler"]().describe("chunk_start", "hold", 25.0, image=torch.rand(1, 64, 64, 3))
    loads = []

    class CountingHost(host_mod.TorchHost):
        def load_for_use(self, models, device=None):
            loads.append([m.info.get("kind") if m.info else None for m in models])
            return super().load_for_use(models, device)

    host_mod.set_host(CountingHost())
    handle, _, count, _ = n["InfiniteTalkStreamingSampler"]().sample(**sampler_inputs(graph, refs, feats))
    chunks = len(json.loads((Path(handle.path) / "manifest.json").read_text())["chunks"])
    dit_loads = [k for k in loads if k == ["infinitetalk_dit"]]
    assert count == 40 and chunks == 3 and len(dit_loads) == 1 + chunks  # at the start, then before each chunk
