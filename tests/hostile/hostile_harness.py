"""Shared plumbing of the hostile-input suite (imported by conftest.py and by the render child).

Everything runs on the CI tier: the pack loaded the way ComfyUI loads it (an importlib spec, never with
the pack root on sys.path), the plain-torch host, a tiny DiT and the tiny wav2vec2 in the real file
layouts, a ComfyUI-dialect stand-in VAE and CLIP vision. Sizes: 32x32, chunks of 13 frames with 5
context frames, 2 steps; 29 audio frames = 3 chunks.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import re
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared pack loader
from pack_loader import PACK_MODULE, load_pack  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[2]
SIZE, CHUNK, CONTEXT, STEPS = 64, 13, 5, 2  # 64: the sampler's smallest custom size
TEXT_DIM, CLIP_DIM = 16, 16
FRAMES_3_CHUNKS = 29  # 13 + 8 + 8
SECONDS_3_CHUNKS = 1.18  # -> 29 feature rows at 25 fps
DIT_FILE, AUDIO_FILE = "hostile_tiny_wan_i2v.safetensors", "hostile_tiny_infinitetalk.safetensors"
SINGLE_AUDIO_FILE = "hostile_tiny_infinitetalk_single.safetensors"
WAV2VEC_DIR = "hostile_tiny_wav2vec2"
JOBS = "InfiniteTalk_jobs"

CODES = ("E_INPUT_VALIDATION", "E_PIPELINE_LOAD", "E_AUDIO", "E_OOM", "E_FFMPEG", "E_GENERATION",
         "E_NONFINITE", "E_JOB_LOCKED", "E_JOB_DAMAGED", "E_DISK", "E_INTERRUPTED")
RAW_TYPES = re.compile(r"\b(AttributeError|TypeError|KeyError|IndexError|ZeroDivisionError|NameError|"
                       r"UnboundLocalError|AssertionError|OverflowError|UnicodeDecodeError|"
                       r"RecursionError|NotImplementedError|StopIteration|UnpicklingError|"
                       r"JSONDecodeError|SafetensorError|HeaderTooLarge)\b|object has no attribute|"
                       r"object is not subscriptable|unsupported operand|Traceback|File \"")


def sub(name: str):
    """The pack's submodule ``name`` ("nodes.host", "infinitetalk_core.errors", ...)."""
    load_pack()
    return importlib.import_module(f"{PACK_MODULE}.{name}")


# ---------------------------------------------------------------- message checks

def message_problems(text: str, code: str | tuple[str, ...], words: tuple[str, ...] = ()) -> list[str]:
    """What is wrong with an error message against ``CODE: what. Fix: what to do.`` (empty = fine)."""
    codes = (code,) if isinstance(code, str) else tuple(code)
    problems = []
    if not any(text.startswith(c + ": ") for c in codes):
        problems.append(f"does not start with {' or '.join(c + ': ' for c in codes)}")
    if " Fix: " not in text:
        problems.append("has no ' Fix: '")
    elif not text.split(" Fix: ", 1)[1].strip():
        problems.append("has an empty fix")
    if "\n" in text:
        problems.append("spans several lines")
    if RAW_TYPES.search(text):
        problems.append(f"shows a raw Python error ({RAW_TYPES.search(text).group(0)!r})")
    if "Check the inputs named above" in text:
        problems.append("is the generic 'Check the inputs named above' fallback")
    if words and not any(w.lower() in text.lower() for w in words):
        problems.append(f"names none of {words}")
    return problems


def assert_coded(exc_or_text, code, *words: str) -> str:
    text = exc_or_text if isinstance(exc_or_text, str) else str(exc_or_text)
    problems = message_problems(text, code, words)
    assert not problems, f"message {'; '.join(problems)}:\n    {text!r}"
    return text


# ---------------------------------------------------------------- files and trees

def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder below ``root``: relative path -> ("dir",) or ("file", size, sha256)."""
    root = Path(root)
    out: dict[str, tuple] = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = ("link", str(p.readlink()))
        elif p.is_dir():
            out[rel] = ("dir",)
        else:
            out[rel] = ("file", p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def tree_diff(before: dict, after: dict) -> str:
    lines = [f"- {k}" for k in before if k not in after]
    lines += [f"+ {k}" for k in after if k not in before]
    lines += [f"~ {k}" for k in before if k in after and before[k] != after[k]]
    return "\n".join(lines)


def read_manifest(job: Path) -> dict:
    return json.loads((Path(job) / "manifest.json").read_text())


def chunk_records(job: Path) -> list[dict]:
    return list(read_manifest(job)["chunks"])


def chunk_files(job: Path) -> list[Path]:
    """Chunk files as the manifest names them (never a hard-coded extension)."""
    return [Path(job) / rec["file"] for rec in chunk_records(job)]


def chunk_hashes(job: Path) -> list[str]:
    """The per-chunk content hash of each record (whatever the lead calls it: prefer a content hash)."""
    out = []
    for rec in chunk_records(job):
        for key in ("content", "content_sha256", "frames_sha256", "content_hash", "sha256"):
            if key in rec:
                out.append(str(rec[key]))
                break
        else:
            out.append(json.dumps({k: v for k, v in rec.items() if k not in ("file", "size")}, sort_keys=True))
    return out


def flip_bytes(path: Path, where: float = 0.5, count: int = 64) -> None:
    data = bytearray(Path(path).read_bytes())
    start = max(0, min(len(data) - count, int(len(data) * where)))
    for i in range(start, min(len(data), start + count)):
        data[i] ^= 0xA5
    Path(path).write_bytes(bytes(data))


def copy_job(src_output: Path, dst_output: Path) -> Path:
    shutil.copytree(src_output, dst_output, symlinks=True, dirs_exist_ok=True)
    return dst_output


# ---------------------------------------------------------------- tiny models and stand-ins

def dit_config():
    config = sub("infinitetalk_core.model.config")
    audio = config.AudioConfig(feature_dim=2 * 32, intermediate_dim=16, output_dim=16, context_tokens=4)
    return config.DiTConfig(dim=256, ffn_dim=256, num_layers=1, num_heads=2, text_dim=TEXT_DIM,
                            clip_dim=CLIP_DIM, audio=audio)


def tiny_state(seed: int = 11) -> dict:
    import torch

    dit = sub("infinitetalk_core.model.dit")
    model = dit.InfiniteTalkDiT(dit_config(), device="meta")
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in model.state_dict().items()}


def write_tiny_models(models: Path, golden: Path) -> dict:
    from safetensors.torch import save_file

    layouts = sub("infinitetalk_core.model.layouts")
    for folder in ("diffusion_models", "model_patches", "audio_encoders", "loras", "vae", "text_encoders",
                   "clip_vision"):
        (models / folder).mkdir(parents=True, exist_ok=True)
    state = tiny_state()
    base = {k: v for k, v in state.items() if not layouts.is_audio_key(k)}
    audio = {k: v for k, v in state.items() if layouts.is_audio_key(k)}
    save_file(base, models / "diffusion_models" / DIT_FILE)
    save_file(audio, models / "model_patches" / AUDIO_FILE)
    save_file(audio, models / "model_patches" / SINGLE_AUDIO_FILE)
    if not (models / "audio_encoders" / WAV2VEC_DIR).exists():
        shutil.copytree(golden / "audio" / "wav2vec2_tiny", models / "audio_encoders" / WAV2VEC_DIR)
    return {"base": base, "audio": audio}


class ComfyVAE:
    """ComfyUI's VAE dialect (pixels [F, H, W, 3] in [0, 1], raw latents [1, 16, T, h, w]) over the core's
    deterministic stand-in. ``on_decode(n)`` runs before the n-th decode (1-based): sleeps, kills, faults."""

    def __init__(self, seed: int = 3, on_decode=None):
        self.host = sub("infinitetalk_core.stream.host")
        self.inner = sub("infinitetalk_core.stream.standin_vae").StandInVAE(seed=seed)
        self.encodes = 0
        self.decodes = 0
        self.on_decode = on_decode
        self.decode_hook = None  # raw latents -> raw latents (fault injection)

    def encode(self, images):
        self.encodes += 1
        normalized = self.inner.encode(self.host.pixels_from_comfy(images))
        return self.host.denormalize_wan21_latents(normalized)[None]

    def decode(self, raw):
        self.decodes += 1
        if self.on_decode is not None:
            self.on_decode(self.decodes)
        pixels = self.inner.decode(self.host.normalize_wan21_latents(raw[0]))
        out = self.host.pixels_to_comfy(pixels)[None]
        return out if self.decode_hook is None else self.decode_hook(out)


class ComfyClipVision:
    def __init__(self, seed: int = 5):
        import torch

        self.proj = torch.randn(3, CLIP_DIM, generator=torch.Generator().manual_seed(seed))

    def encode_image(self, image, crop=True):
        import torch

        pooled = torch.nn.functional.adaptive_avg_pool2d(image.permute(0, 3, 1, 2).float(), 16).flatten(2)
        tokens = torch.cat([pooled.mean(2, keepdim=True), pooled], 2).transpose(1, 2) @ self.proj
        return {"penultimate_hidden_states": tokens}


def conditioning(seed: int, tokens: int) -> list:
    import torch

    t = torch.zeros(1, 512, TEXT_DIM)
    t[:, :tokens] = torch.randn(1, tokens, TEXT_DIM, generator=torch.Generator().manual_seed(seed))
    return [[t, {"pooled_output": None}]]


def speech(seconds: float, rate: int = 16000, channels: int = 1) -> dict:
    import torch

    t = torch.arange(int(round(seconds * rate))) / rate
    wave = 0.3 * torch.sin(2 * torch.pi * 220 * t) * (0.5 + 0.5 * torch.sin(2 * torch.pi * 3 * t))
    return {"waveform": torch.stack([wave] * channels)[None].float(), "sample_rate": rate}


def reference_image():
    import torch

    return torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(21))


def load_model(model_file: str = DIT_FILE, audio_file: str = AUDIO_FILE, **loras):
    nodes = load_pack().NODE_CLASS_MAPPINGS
    (model,) = nodes["InfiniteTalkModelLoader"]().load(model_file, audio_file, "fp32", "keep", "sdpa", **loras)
    return model


def make_features(features, num_frames: int, mix=None, boxes=None, fingerprint=None):
    """AudioFeatures of ``features``; ``fingerprint``: Audio Encode's (the digest of the float32 features
    its bfloat16 ones came from), default the digests of the tensors given."""
    audio = sub("nodes.audio")
    host = sub("infinitetalk_core.stream.host")
    return audio.AudioFeatures(list(features), num_frames, mix, boxes,
                               fingerprint or "|".join(host.tensor_digest(f) for f in features))


UNSET = object()  # "not given" (None is a hostile value of its own)


def sampler_inputs(model, refs, feats, vae=UNSET, **overrides) -> dict:
    inputs = {"model": model, "vae": ComfyVAE() if vae is UNSET else vae, "clip_vision": ComfyClipVision(),
              "positive": conditioning(1, 7), "negative": conditioning(2, 3), "references": refs,
              "audio_features": feats, "size": "custom", "width": SIZE, "height": SIZE,
              "chunk_frames": CHUNK, "context_frames": CONTEXT, "steps": STEPS, "shift": 0.0,
              "text_guidance": 1.0, "audio_guidance": 1.0, "seed": 42, "color_method": "none",
              "color_strength": 1.0, "color_reference": "first", "resume": True, "image_frames": 1,
              "job_name": "hostile"}
    inputs.update(overrides)
    return inputs


def frames_digest(handle) -> tuple[str, int]:
    digest, count = hashlib.sha256(), 0
    for batch in handle.iter_uint8(64):
        digest.update(batch.tobytes())
        count += len(batch)
    return digest.hexdigest(), count


def now() -> float:
    return time.time()
