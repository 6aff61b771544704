"""Plain-words checks run on headers before any weight is read: right kind of file, matching sizes,
and a strict name/shape match against the model built on ``meta``."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from ..errors import PipelineLoadError
from .gguf_quants import SUPPORTED_TYPES
from .identify import FileIdentity
from .layouts import FileLayout, is_block_quantized

WAN_NAMES = {5120: "Wan 14B", 1536: "Wan 1.3B", 3072: "Wan 2.2 5B"}
PICK_BASE = (
    "Pick the Wan2.1 I2V 14B diffusion model (e.g. wan2.1_i2v_480p_14B_bf16.safetensors in "
    "ComfyUI/models/diffusion_models, or the Wan2.1-I2V-14B-480P shard folder)."
)
PICK_AUDIO = (
    "Pick the InfiniteTalk audio weights (e.g. wan2.1_infiniteTalk_single_fp16.safetensors in "
    "ComfyUI/models/model_patches, or MeiGen's single/infinitetalk.safetensors)."
)
PICK_GGUF = (
    "Use a GGUF of a type this loader reads (Q8_0, Q6_K, Q5_K_M/S, Q4_K_M/S, Q5_0/1, Q4_0/1, Q3_K_M/S, "
    "Q2_K, F16, e.g. city96/Wan2.1-I2V-14B-480P-gguf), or the fp8/fp16 .safetensors model."
)
SHOWN = 5


def _where(identity: FileIdentity) -> str:
    return f" (it belongs in ComfyUI/models/{identity.comfy_folder})" if identity.comfy_folder else ""


def check_base_file(base: FileIdentity, audio: FileIdentity | None) -> None:
    """The base must be a Wan2.1 image-to-video DiT with the CLIP image embedding."""
    if base.kind in ("infinitetalk", "multitalk"):
        if audio is not None and audio.kind == "wan_dit":
            raise PipelineLoadError(
                f"the two files are swapped: {base.path.name} holds audio weights and "
                f"{audio.path.name} is the Wan DiT.",
                "Pass the Wan DiT as the base model and the InfiniteTalk file as the audio weights.",
            )
        raise PipelineLoadError(
            f"{base.path} holds only InfiniteTalk/MultiTalk audio weights, not the base Wan DiT.",
            "Give it as the audio weights; " + PICK_BASE,
        )
    if base.kind == "vae":
        raise PipelineLoadError(
            f"{base.path}: this file is a VAE, not a Wan DiT.",
            "Load it with the VAE loader instead. " + PICK_BASE,
        )
    arch = base.details.get("gguf_arch")
    if base.kind == "unknown" and arch not in (None, "wan"):
        raise PipelineLoadError(
            f"{base.path}: a GGUF of the '{arch}' architecture, not a Wan DiT: its {base.tensor_count} "
            "tensors match no model layout this loader knows.",
            PICK_BASE + " GGUF versions: city96/Wan2.1-I2V-14B-480P-gguf (models/diffusion_models or unet).",
        )
    if base.kind == "unknown":
        raise PipelineLoadError(
            f"{base.path}: unknown format: its {base.tensor_count} tensors match no model layout "
            "this loader knows (not a Wan DiT).",
            PICK_BASE,
        )
    if base.kind != "wan_dit":
        raise PipelineLoadError(
            f"{base.path}: this file is {base.describe()}, not a Wan DiT{_where(base)}.", PICK_BASE
        )
    variant, in_dim = base.variant, base.details.get("in_dim")
    if variant == "t2v":
        raise PipelineLoadError(
            f"{base.path}: this is a T2V model (in_dim 16); InfiniteTalk needs the I2V 14B model "
            "(in_dim 36).",
            PICK_BASE,
        )
    if variant == "i2v_no_clip":
        raise PipelineLoadError(
            f"{base.path}: this image-to-video DiT has no CLIP image embedding (img_emb), like "
            "Wan 2.2 I2V; InfiniteTalk needs Wan2.1 I2V 14B.",
            PICK_BASE,
        )
    if variant != "i2v":
        raise PipelineLoadError(
            f"{base.path}: this is a Wan DiT of type '{variant}' (in_dim {in_dim}); "
            "InfiniteTalk needs the Wan2.1 I2V 14B model (in_dim 36).",
            PICK_BASE,
        )


def check_audio_file(audio: FileIdentity, base: FileIdentity) -> None:
    """The audio file must hold InfiniteTalk/MultiTalk weights sized for this base."""
    if audio.kind == "wan_dit":
        if audio.details.get("audio_weights"):
            raise PipelineLoadError(
                f"{audio.path} is a complete InfiniteTalk model (base + audio weights), given as "
                "the audio weights.",
                "Pass it as the base model and leave the audio weights empty.",
            )
        raise PipelineLoadError(
            f"{audio.path}: a Wan DiT (base model) was given as the InfiniteTalk audio weights.", PICK_AUDIO
        )
    if audio.kind not in ("infinitetalk", "multitalk"):
        raise PipelineLoadError(
            f"{audio.path}: this file is {audio.describe()}, not InfiniteTalk audio weights{_where(audio)}.",
            PICK_AUDIO,
        )
    a_dim, b_dim = audio.details.get("dim"), base.details.get("dim")
    if a_dim != b_dim:
        raise PipelineLoadError(
            f"InfiniteTalk weights are for dim {a_dim} but the base model has dim {b_dim} "
            f"({WAN_NAMES.get(b_dim, 'a different Wan size')}).",
            "Use the Wan2.1 I2V 14B base model (dim 5120) with these InfiniteTalk weights.",
        )
    a_layers, b_layers = audio.details.get("num_layers"), base.details.get("num_layers")
    if a_layers != b_layers:
        raise PipelineLoadError(
            f"InfiniteTalk weights have {a_layers} blocks but the base model has {b_layers}.",
            "Use the base model the audio weights were trained for (Wan2.1 I2V 14B, 40 blocks).",
        )


def check_gguf_types(layouts: Sequence[FileLayout]) -> None:
    """Every block-quantized GGUF tensor must be of a type ``gguf_quants`` dequantizes (named if not)."""
    bad: dict[str, list[str]] = {}
    for layout in layouts:
        for key, entry in layout.params.items():
            if is_block_quantized(entry) and entry.dtype not in SUPPORTED_TYPES:
                bad.setdefault(entry.dtype, []).append(f"{key} in {layout.path.name if layout.path else '?'}")
    if bad:
        kinds = ", ".join(
            f"{t} ({len(keys)} tensor{'s' if len(keys) > 1 else ''}, e.g. {keys[0]})"
            for t, keys in sorted(bad.items())
        )
        raise PipelineLoadError(
            f"the model holds GGUF tensors of a quantization type this loader does not read: {kinds}. "
            f"It reads {', '.join(SUPPORTED_TYPES)}.",
            PICK_GGUF,
        )


def _listing(items: Sequence[str]) -> str:
    more = f" ... (+{len(items) - SHOWN})" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def check_keys(
    expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]], layouts: Sequence[FileLayout]
) -> None:
    """Strict check: every model tensor exactly once across the files, with the model's shape."""
    origin: dict[str, str] = {}
    duplicates, unexpected, wrong_shape = [], [], []
    for layout in layouts:
        name = layout.path.name if layout.path else "?"
        for key, entry in layout.params.items():
            if key in origin:
                duplicates.append(f"{key} ({origin[key]} and {name})")
            origin[key] = name
            if key not in expected:
                unexpected.append(f"{layout.prefix}{key} in {name}")
            elif tuple(entry.shape) != expected[key][0]:
                wrong_shape.append(
                    f"{key} is {list(entry.shape)} in {name}, the model needs {list(expected[key][0])}"
                )
    missing = sorted(k for k in expected if k not in origin)
    if not (duplicates or unexpected or wrong_shape or missing):
        return
    parts = [
        f"{len(v)} {what}: {_listing(v)}"
        for what, v in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("with the wrong shape", wrong_shape),
            ("in more than one file", duplicates),
        )
        if v
    ]
    raise PipelineLoadError(
        "the checkpoint does not match the InfiniteTalk DiT: " + "; ".join(parts) + ".",
        "Use the Wan2.1 I2V 14B base with the InfiniteTalk audio weights; if you did, a shard "
        "or file may be incomplete, so download it again.",
    )
