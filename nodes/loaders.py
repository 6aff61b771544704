"""Model Loader (Wan DiT + InfiniteTalk audio weights + LoRAs) and Wav2Vec Loader nodes.

Both only resolve file names through the host and call one core loader; the returned objects carry the
host's model handle so ComfyUI can place and offload them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..infinitetalk_core.model.attention import BACKENDS as ATTENTION_BACKENDS
from ..infinitetalk_core.model.compile import COMPILE_MODES
from .common import CATEGORY, MODEL_TYPE, WAV2VEC_TYPE, coded_errors, require
from .host import ManagedModel, get_host
from .model_lists import loadable, unloadable_reason

NONE = "none"
MERGED = "none (already in the base file)"
WEIGHT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FP8_MODES = ("keep", "dequantize")
WAV2VEC_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class InfiniteTalkModel:
    """What flows on an INFINITETALK_MODEL socket: the managed DiT and how it was built."""

    managed: ManagedModel
    config: Any
    attention: str
    files: tuple[str, ...]
    loras: tuple[tuple[str, float], ...] = ()
    report: Any = None


@dataclass
class Wav2VecEncoder:
    """What flows on an INFINITETALK_WAV2VEC socket."""

    encoder: Any
    path: str
    dtype: torch.dtype
    info: dict = field(default_factory=dict)


def _path(folder: str, name: str, what: str) -> str:
    path = get_host().model_path(folder, name)
    require(
        path is not None,
        f"{what} file {name!r} was not found in the '{folder}' model folder.",
        f"Put the file into ComfyUI/models/{folder}/ (run `python -m infinitetalk_core.doctor` to check "
        "which file is which) and press R in the editor to refresh the lists.",
    )
    return path


GGUF_FOLDERS = ("diffusion_models", "model_patches")  # where the loader also lists .gguf files


def _gguf_files(folder: str) -> list[str]:
    """``.gguf`` files below ``folder``'s roots: ComfyUI's own lists leave them out (not a torch format)."""
    names = []
    for root in get_host().folder_roots(folder):
        for top, dirs, files in os.walk(root, followlinks=True):  # as ComfyUI: linked model folders too
            dirs[:] = [d for d in dirs if d != ".git"]
            names += [(Path(top) / f).relative_to(root).as_posix() for f in files if f.lower().endswith(".gguf")]
    return names


def _choices(folder: str, *extra: str) -> list[str]:
    """The folder's model files; for the DiT and audio folders also every ``.gguf`` (checked at load)."""
    listed = get_host().model_list(folder)
    ggufs = _gguf_files(folder) if folder in GGUF_FOLDERS else []
    return [*extra, *listed, *sorted(set(ggufs) - set(listed))]


class InfiniteTalkModelLoader:
    OWN_INPUT_CHECKS = ("base_model", "infinitetalk_model", "lora_1", "lora_2")  # "put it in models/..."
    DESCRIPTION = (
        "Loads the Wan2.1 I2V-14B DiT with InfiniteTalk's audio layers (from the separate InfiniteTalk "
        "file or already merged), optional LoRAs, in the chosen storage dtype. ComfyUI manages its VRAM."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The InfiniteTalk DiT, ready for the Streaming Sampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        loras = _choices("loras", NONE)
        return {
            "required": {
                "base_model": (loadable("diffusion_models", _choices("diffusion_models"), "base"), {
                    "tooltip": "Wan2.1 I2V-14B DiT (models/diffusion_models or models/unet), e.g. "
                               "wan2.1_i2v_480p_14B_fp16.safetensors, an fp8-scaled file, or a GGUF "
                               "(city96's Q8_0 ... Q3_K: weights stay quantized, dequantized per layer)."}),
                "infinitetalk_model": ([MERGED, *loadable("model_patches", _choices("model_patches"), "audio")], {
                    "tooltip": "InfiniteTalk audio weights (models/model_patches), e.g. "
                               "wan2.1_infiniteTalk_single_fp16.safetensors or Kijai's "
                               "Wan2_1-InfiniteTalk_Single_Q8.gguf. Choose 'none' only if the base "
                               "file already contains the audio layers."}),
                "weight_dtype": (list(WEIGHT_DTYPES), {
                    "default": "bf16",
                    "tooltip": "dtype of the DiT weights and of its computation (bf16 as the reference; "
                               "fp32 only for CPU debugging)."}),
                "fp8_weights": (list(FP8_MODES), {
                    "default": "keep",
                    "tooltip": "For fp8 (scaled) files: keep = weights stay fp8 in memory (half the "
                               "VRAM/RAM; with ComfyUI's --fast fp8_matrix_mult they also multiply in fp8 "
                               "on GPUs that can), dequantize = converted to weight_dtype at load."}),
                "attention": (list(ATTENTION_BACKENDS), {
                    "default": "auto",
                    "tooltip": "Attention kernel: auto = ComfyUI's --use-sage/flash-attention flag if "
                               "given, else the fastest installed: flash-attn 3 on Hopper, SageAttention "
                               "(slightly approximate), flash-attn 2, PyTorch SDPA."}),
            },
            "optional": {
                "lora_1": (loras, {"default": NONE, "tooltip": "Optional LoRA (models/loras), e.g. the "
                                   "lightx2v step-distill LoRA for 4-8 step sampling."}),
                "strength_1": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05,
                                         "tooltip": "Strength of lora_1 (1.0 = as trained)."}),
                "lora_2": (loras, {"default": NONE, "tooltip": "A second optional LoRA (models/loras)."}),
                "strength_2": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05,
                                         "tooltip": "Strength of lora_2 (1.0 = as trained)."}),
                "compile": (list(COMPILE_MODES), {"default": "off", "tooltip":
                            "blocks = torch.compile each transformer block (one compile shared by all 40, "
                            "at the first chunk; needs a working Triton/C++ toolchain), then faster steps."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, base_model, infinitetalk_model):
        """The lists hold only loadable files; a file named anyway is refused here with the reason (and
        ComfyUI's own "value not in list" check is skipped for these two)."""
        reason = unloadable_reason("diffusion_models", base_model, "base")
        if reason is None and infinitetalk_model != MERGED:
            reason = unloadable_reason("model_patches", infinitetalk_model, "audio")
            return True if reason is None else f"infinitetalk_model: {reason}"
        return True if reason is None else f"base_model: {reason}"

    @coded_errors("loading the InfiniteTalk model")
    def load(self, base_model, infinitetalk_model, weight_dtype, fp8_weights, attention,
             lora_1=NONE, strength_1=1.0, lora_2=NONE, strength_2=1.0, compile="off"):
        from ..infinitetalk_core.model.compile import compile_blocks
        from ..infinitetalk_core.model.fp8 import set_fp8_compute
        from ..infinitetalk_core.model.loading import load_infinitetalk_model
        from ..infinitetalk_core.model.rope import set_fused_rope

        host = get_host()
        base = _path("diffusion_models", base_model, "Base DiT")
        audio = None if infinitetalk_model == MERGED else _path("model_patches", infinitetalk_model, "InfiniteTalk")
        loras = tuple((_path("loras", n, "LoRA"), float(s))
                      for n, s in ((lora_1, strength_1), (lora_2, strength_2)) if n and n != NONE and s != 0)
        model, report = load_infinitetalk_model(
            base, audio, dtype=WEIGHT_DTYPES[weight_dtype], device=host.offload_device(),
            operations=host.operations(WEIGHT_DTYPES[weight_dtype]), fp8_mode=fp8_weights,
        )
        model.attention_backend = attention
        model.attention_preference = host.attention_flag()  # ComfyUI's attention flags, for "auto"
        set_fused_rope(host.fused_rope(), devices=("cuda",))  # its CPU fallback is slower than ours
        if fp8_weights == "keep" and host.fp8_matmul_flag():  # W8A8 on GPUs that can (sm 8.9+)
            set_fp8_compute(model, "auto")
        compile_blocks(model, compile)  # weights stay graph inputs: LoRA patches and offload still apply
        managed = _apply_loras(host, host.manage(model, {"kind": "infinitetalk_dit"}), loras)
        files = (base,) if audio is None else (base, audio)
        return (InfiniteTalkModel(managed, model.config, attention, files, loras, report),)


def _apply_loras(host, managed: ManagedModel, loras) -> ManagedModel:
    """ComfyUI: patcher weight patches (unpatched on unload); plain torch: merged in place.

    Patches of GGUF-quantized weights stay with their layers (added to the dequantized weight at each
    call): a host adding deltas to the stored values would add them to block bytes.
    """
    from ..infinitetalk_core.model.gguf import logical_shapes, split_gguf_patches
    from ..infinitetalk_core.model.lora import load_lora

    shapes = logical_shapes(managed.module) if loras else {}
    for path, strength in loras:
        rest = split_gguf_patches(managed.module, load_lora(path, target_shapes=shapes), strength)
        if rest.patches:
            managed = host.add_weight_patches(managed, rest, strength)
    return managed


class InfiniteTalkWav2VecLoader:
    OWN_INPUT_CHECKS = ("wav2vec_model",)
    DESCRIPTION = "Loads the wav2vec2 speech encoder InfiniteTalk was trained with (chinese-wav2vec2-base)."
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (WAV2VEC_TYPE,)
    RETURN_NAMES = ("wav2vec",)
    OUTPUT_TOOLTIPS = ("The wav2vec2 encoder for Audio Encode.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "wav2vec_model": (get_host().model_dirs("audio_encoders") + _choices("audio_encoders"), {
                    "tooltip": "wav2vec2 in models/audio_encoders: the single file "
                               "wav2vec2-chinese-base_fp16.safetensors, or the Hugging Face folder "
                               "TencentGameMate/chinese-wav2vec2-base."}),
                "dtype": (list(WAV2VEC_DTYPES), {
                    "default": "fp32",
                    "tooltip": "Compute dtype; fp32 matches the reference features exactly, fp16 is faster "
                               "on GPU."}),
                "device": (["auto", "cpu"], {
                    "default": "auto",
                    "tooltip": "auto: the GPU when there is one; cpu keeps VRAM free for the DiT "
                               "(encoding runs once per audio track)."}),
            },
        }

    @coded_errors("loading wav2vec2")
    def load(self, wav2vec_model, dtype, device):
        from ..infinitetalk_core.audio import load_wav2vec2

        host = get_host()
        path = host.model_dir_path("audio_encoders", wav2vec_model) or _path("audio_encoders", wav2vec_model,
                                                                              "wav2vec2")
        target = host.compute_device() if device == "auto" else torch.device("cpu")
        encoder = load_wav2vec2(path, device=target, dtype=WAV2VEC_DTYPES[dtype])
        return (Wav2VecEncoder(encoder, path, WAV2VEC_DTYPES[dtype], {"device": str(target)}),)
