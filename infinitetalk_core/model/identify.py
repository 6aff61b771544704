"""What is this model file? Answered from tensor names, shapes and dtypes only (headers, no weights).

Used by the loader for its error messages ("this file is a VAE, not a Wan DiT") and by the doctor to tell
users which ComfyUI models folder a file belongs in. Decisions come from shapes and marker keys, never
from the file name, with one exception that is said out loud: InfiniteTalk single, InfiniteTalk multi and
MultiTalk audio weights have identical names and shapes, so the header cannot tell them apart; ``variant``
then repeats what the file name says (and ``notes`` says so).

GGUF files are classified by the same tensor names; their identity adds ``quantization`` (the block type
holding the most elements, e.g. Q4_K in a Q4_K_M file), the GGUF architecture string and the count of
tensors per type in ``details``, and a note naming any type the loader cannot dequantize.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from .checkpoint import FileHeader, read_header, resolve_checkpoint_files
from .gguf_quants import SUPPORTED_TYPES
from .layouts import FP8_DTYPES, FileLayout, is_audio_key, is_block_quantized, map_layout

COMFY_FOLDERS = {
    "wan_dit": "diffusion_models",
    "infinitetalk": "model_patches",
    "multitalk": "model_patches",
    "wav2vec2": "audio_encoders",
    "vae": "vae",
    "t5": "text_encoders",
    "clip_vision": "clip_vision",
    "lora": "loras",
}
WAN_SIZES = {5120: "14B", 1536: "1.3B", 3072: "5B"}


@dataclass(frozen=True)
class FileIdentity:
    """A model file's kind and format, as far as its header tells."""

    path: Path
    kind: str  # wan_dit | infinitetalk | multitalk | wav2vec2 | vae | lora | t5 | clip_vision | unknown
    variant: str | None = None  # wan_dit: i2v/t2v/...; audio weights: single/multi (file name); lora: format
    size: str | None = None  # "14B", "1.3B", ...
    dtypes: tuple[str, ...] = ()
    fp8_scaled: bool = False
    key_prefix: str = ""
    tensor_count: int = 0
    comfy_folder: str | None = None
    details: Mapping[str, int | bool | str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    container: str = "safetensors"  # "safetensors" | "pickle" | "gguf"
    quantization: str | None = None  # GGUF: the dominant tensor type, e.g. "Q4_K" (or "F16")

    def describe(self) -> str:
        """Short plain-words description, e.g. 'a Wan DiT (i2v, 14B, BF16)'."""
        names = {
            "wan_dit": "a Wan DiT",
            "infinitetalk": "InfiniteTalk audio weights",
            "multitalk": "MultiTalk audio weights",
            "wav2vec2": "a wav2vec2 audio encoder",
            "vae": "a VAE",
            "lora": "a LoRA",
            "t5": "a T5 text encoder",
            "clip_vision": "a CLIP vision encoder",
            "unknown": "an unrecognised model",
        }
        storage = f"GGUF {self.quantization}" if self.container == "gguf" else "/".join(self.dtypes)
        bits = [b for b in (self.variant, self.size, storage) if b]
        return f"{names[self.kind]} ({', '.join(bits)})" if bits else names[self.kind]


def _has(keys, *names: str) -> bool:
    return all(n in keys for n in names)


def _any_suffix(keys, *suffixes: str) -> bool:
    return any(k.endswith(suffixes) for k in keys)


def _wan_dit(shapes: Mapping[str, Sequence[int]]) -> dict:
    dim, in_dim = shapes["patch_embedding.weight"][:2]
    blocks = {int(k.split(".")[1]) for k in shapes if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    has_clip = "img_emb.proj.1.weight" in shapes
    if any(k.startswith("vace_") for k in shapes):
        variant = "vace"
    elif in_dim == 16:
        variant = "t2v"
    elif in_dim == 36:
        variant = "i2v" if has_clip else "i2v_no_clip"
    elif in_dim == 48:
        variant = "ti2v"
    else:
        variant = f"in_dim {in_dim}"
    details = {
        "dim": dim,
        "in_dim": in_dim,
        "num_layers": len(blocks),
        "clip_image_embedding": has_clip,
        "audio_weights": any(is_audio_key(k) for k in shapes),
    }
    return {"variant": variant, "size": WAN_SIZES.get(dim, f"dim {dim}"), "details": details}


def _audio_weights(shapes: Mapping[str, Sequence[int]], path: Path) -> dict:
    name = path.name.lower()
    dim = shapes.get("blocks.0.audio_cross_attn.q_linear.weight", (0,))[0]
    blocks = {int(k.split(".")[1]) for k in shapes if k.startswith("blocks.")}
    kind = "multitalk" if "multitalk" in name else "infinitetalk"
    variant = "multi" if "multi" in name.replace("multitalk", "") else "single" if "single" in name else None
    note = (
        "InfiniteTalk single/multi and MultiTalk audio weights have identical tensor names and shapes; "
        "kind/variant here come from the file name only."
    )
    return {
        "kind": kind,
        "variant": variant,
        "size": WAN_SIZES.get(dim, f"dim {dim}") if dim else None,
        "details": {"dim": dim, "num_layers": len(blocks)},
        "notes": (note,),
    }


def _lora_format(keys) -> str:
    if any(k.startswith("lora_unet_") for k in keys):
        return "musubi"
    if _any_suffix(keys, ".lora_A.weight", ".lora_A.default.weight"):
        return "peft"
    return "kohya" if _any_suffix(keys, ".lora_down.weight") else "diff"


def _is_lora(keys) -> bool:
    return _any_suffix(
        keys,
        ".lora_down.weight",
        ".lora_up.weight",
        ".lora_A.weight",
        ".lora_B.weight",
        ".lora_A.default.weight",
        ".diff",
        ".diff_b",
        ".diff_m",
    )


def classify(shapes: Mapping[str, Sequence[int]], raw_keys: Sequence[str], path: Path) -> dict:
    """Kind, variant, size and details from un-prefixed shapes (and the raw file keys)."""
    keys = set(shapes)
    if _is_lora(raw_keys):
        return {"kind": "lora", "variant": _lora_format(raw_keys)}
    if _has(keys, "patch_embedding.weight", "blocks.0.self_attn.q.weight"):
        return {"kind": "wan_dit", **_wan_dit(shapes)}
    if "audio_proj.proj1.weight" in keys or any(is_audio_key(k) for k in keys):
        return _audio_weights(shapes, path)
    stripped = {k.removeprefix("wav2vec2.") for k in keys}
    if "feature_extractor.conv_layers.0.conv.weight" in stripped:
        width = shapes.get(
            "wav2vec2.encoder.layer_norm.weight", shapes.get("encoder.layer_norm.weight", (0,))
        )[0]
        layers = {k.split(".")[2] for k in stripped if k.startswith("encoder.layers.")}
        return {
            "kind": "wav2vec2",
            "variant": f"{len(layers)} layers x {width}",
            "details": {"hidden_size": width, "num_layers": len(layers)},
        }
    if any(k.endswith(".gamma") for k in keys) and "conv1.weight" in keys and "decoder.head.2.weight" in keys:
        z2 = shapes["conv1.weight"][0]
        return {
            "kind": "vae",
            "variant": {32: "wan2.1", 96: "wan2.2"}.get(z2, f"z_dim {z2 // 2}"),
            "details": {"z_dim": z2 // 2},
        }
    if any(k.startswith(("encoder.down.", "decoder.up.")) for k in keys):
        return {"kind": "vae", "variant": "image (SD/Flux style)"}
    if (_has(keys, "shared.weight") and any(".SelfAttention." in k for k in keys)) or _has(
        keys, "token_embedding.weight", "blocks.0.attn.q.weight"
    ):
        vocab, width = shapes.get("shared.weight", shapes.get("token_embedding.weight"))
        return {
            "kind": "t5",
            "variant": "umt5" if vocab == 256384 else f"vocab {vocab}",
            "details": {"width": width, "vocab": vocab},
        }
    if any(k.startswith(("vision_model.", "visual.transformer.", "visual.")) for k in keys):
        return {"kind": "clip_vision"}
    return {"kind": "unknown"}


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _gguf_facts(headers: Sequence[FileHeader]) -> dict:
    """quantization, details and notes of GGUF files (empty for other containers)."""
    if headers[0].container != "gguf":
        return {}
    entries = [e for h in headers for e in h.entries.values()]
    quantized = [e for e in entries if is_block_quantized(e)]
    weight = Counter()
    for e in quantized or entries:  # a GGUF without block types is "F16"/"BF16"/"F32"
        weight[e.dtype] += _numel(e.shape)
    types = Counter(e.dtype for e in entries)
    unsupported = sorted(t for t in types if t not in SUPPORTED_TYPES)
    meta = headers[0].metadata
    details = {"tensor_types": ", ".join(f"{t} x{n}" for t, n in sorted(types.items()))}
    details.update({k: meta[m] for k, m in (("gguf_arch", "general.architecture"),
                                            ("gguf_file_type", "general.file_type")) if m in meta})
    notes = ()
    if unsupported:
        details["gguf_unsupported_types"] = ", ".join(unsupported)
        notes = (f"GGUF tensor types {', '.join(unsupported)} are not supported by this loader "
                 f"(it reads {', '.join(SUPPORTED_TYPES)}).",)
    quantization = weight.most_common(1)[0][0] if weight else None
    return {"quantization": quantization, "details": details, "notes": notes}


def identify_headers(
    headers: Sequence[FileHeader], path: Path | None = None
) -> tuple[FileIdentity, list[FileLayout]]:
    """Identity of one model stored in one or more files, plus each file's key layout."""
    layouts = [map_layout(h.entries, h.path) for h in headers]
    shapes = {k: e.shape for layout in layouts for k, e in layout.params.items()}
    raw_keys = [n for h in headers for n in h.entries]
    path = Path(path or headers[0].path)
    found = classify(shapes, raw_keys, path)
    gguf = _gguf_facts(headers)
    found["details"] = {**found.get("details", {}), **gguf.get("details", {})}
    dtypes = tuple(sorted({d for h in headers for d in h.dtypes}))
    fp8 = any(layout.fp8_keys and (layout.scales or layout.quant_configs) for layout in layouts)
    kind = found.pop("kind")
    identity = FileIdentity(
        path=path,
        kind=kind,
        dtypes=dtypes,
        fp8_scaled=fp8,
        key_prefix=layouts[0].prefix,
        tensor_count=len(raw_keys),
        comfy_folder=COMFY_FOLDERS.get(kind),
        notes=tuple(found.pop("notes", ()))
        + gguf.get("notes", ())
        + (
            ("fp8 weights without scales (plain fp8 cast)",)
            if not fp8 and set(dtypes) & set(FP8_DTYPES)
            else ()
        ),
        container=headers[0].container,
        quantization=gguf.get("quantization"),
        **found,
    )
    return identity, layouts


def identify_file(path: str | Path) -> FileIdentity:
    """Identify a checkpoint (file, shard folder or ``*.index.json``) from its headers.

    Raises PipelineLoadError when the file is missing, truncated or not a checkpoint at all.
    ``.pth``/``.bin`` are opened with ``torch.load(weights_only=True, mmap=True)``, which reads no weights
    for zip-format files.
    """
    files = resolve_checkpoint_files(path)
    identity, _ = identify_headers([read_header(f) for f in files], Path(path))
    return identity
