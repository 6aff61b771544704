"""``load_infinitetalk_model``: base DiT + InfiniteTalk audio weights (+ LoRAs) -> a ready model.

Everything that can be checked from headers is checked before a single weight is read: file kinds (a VAE
or a T2V model given as base, the two files swapped, a 1.3B base with 14B audio weights), the detected
config, and a strict name-and-shape match against the model built on ``meta``. Then tensors stream file
by file, one at a time: read, convert (fp8 dequantised or kept), move to ``device``, assign. Peak host
memory is about one copy of the model in the target dtype plus the largest single tensor.

GGUF files (city96's Wan GGUFs, Kijai's InfiniteTalk GGUFs) go the same way: their block-quantized
Linear weights (Q8_0 ... Q2_K) stay as their bytes in ``gguf.GGUFLinear`` layers (dequantized per call),
plain F32/F16/BF16 tensors are converted to ``dtype``, and a block-quantized tensor of any other layer is
dequantized once at load. A GGUF base mixes freely with a safetensors audio file and vice versa.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..errors import InputValidationError, PipelineLoadError
from .checkpoint import FileHeader, iter_tensors, read_header, read_tensors, resolve_checkpoint_files
from .config import DiTConfig, detect_dit_config
from .fp8 import FP8_MODES, QUANT_FORMATS, assign_fp8_weight, dequantize_fp8, fp8_operations
from .gguf import assign_gguf_weight, can_hold_gguf, gguf_operations
from .gguf_quants import dequantize
from .identify import FileIdentity, identify_headers
from .layouts import FileLayout, is_block_quantized, orphan_scales
from .load_checks import check_audio_file, check_base_file, check_gguf_types, check_keys
from .lora import load_lora, merge_lora

log = logging.getLogger(__name__)

PathLike = str | Path


@dataclass(frozen=True)
class LoraReport:
    path: Path
    strength: float
    format: str
    applied: int
    unmatched: tuple[str, ...]


@dataclass(frozen=True)
class LoadReport:
    """What was loaded and how: config, files, dtypes, fp8 handling, key counts, LoRAs."""

    config: DiTConfig
    base: FileIdentity
    audio: FileIdentity | None
    files: tuple[Path, ...]
    dtypes_seen: tuple[str, ...]
    dtype: torch.dtype
    device: str
    fp8_mode: str
    fp8_weights: int  # fp8 weights found in the files
    fp8_kept: int  # of those, kept as fp8 storage (fp8_mode="keep")
    loaded_keys: int
    audio_keys: int
    ignored_keys: tuple[str, ...]  # fp8 markers and input scales, deliberately not loaded
    loras: tuple[LoraReport, ...] = ()
    gguf_weights: int = 0  # GGUF block-quantized tensors found in the files
    gguf_kept: int = 0  # of those, kept quantized in GGUFLinear layers (the rest dequantized at load)

    def summary(self) -> str:
        c = self.config
        lora = "".join(f"; LoRA {r.path.name} x{r.strength}: {r.applied} patches" for r in self.loras)
        fp8 = f"; fp8 weights {self.fp8_weights} ({self.fp8_mode})" if self.fp8_weights else ""
        if self.gguf_weights:
            fp8 += f"; GGUF weights {self.gguf_weights} ({self.gguf_kept} kept quantized)"
        audio = "" if self.audio is None else f"; audio weights: {self.audio.describe()} from {self.audio.path.name}"
        return (
            f"DiT dim {c.dim}, {c.num_layers} layers, {c.num_heads} heads, in_dim {c.in_dim}, audio "
            f"{'yes' if c.has_audio else 'no'}: {self.loaded_keys} tensors ({self.audio_keys} audio) from "
            f"{len(self.files)} file(s), dtypes {'/'.join(self.dtypes_seen)} -> {self.dtype} on {self.device}"
            f"{fp8}{audio}{lora}"
        )


def _identify(source: PathLike | Sequence[PathLike]):
    files = resolve_checkpoint_files(source)
    headers = [read_header(f) for f in files]
    shown = source if isinstance(source, (str, Path)) else files[0]
    identity, layouts = identify_headers(headers, Path(shown))
    return identity, headers, layouts


def _without(layout: FileLayout, keys: set[str]) -> FileLayout:
    """``layout`` minus ``keys`` (a merged base file whose audio part is replaced by the audio file)."""
    params = {k: e for k, e in layout.params.items() if k not in keys}
    scales = {k: v for k, v in layout.scales.items() if k not in keys}
    return FileLayout(
        layout.path,
        layout.prefix,
        params,
        scales,
        layout.quant_configs,
        layout.ignored,
        layout.has_fp8_marker,
    )


def _quant_formats(header: FileHeader, layout: FileLayout) -> dict[str, torch.dtype]:
    """Weight key -> fp8 dtype from ComfyUI ``comfy_quant`` blobs; other quant formats are refused."""
    formats = {}
    for key, name in layout.quant_configs.items():
        blob = read_tensors(header, [name])[name]
        fmt = json.loads(bytes(blob.to(torch.uint8).tolist()).decode("utf-8")).get("format")
        if fmt not in QUANT_FORMATS:
            raise PipelineLoadError(
                f"{header.path}: '{key}' is quantised as '{fmt}', which this loader does not "
                "read (it reads fp8 e4m3fn/e5m2, scaled or not).",
                "Use the fp8_scaled, fp16 or bf16 version of this model.",
            )
        formats[key] = QUANT_FORMATS[fmt]
    return formats


def _gguf_tensor(
    model: torch.nn.Module, key: str, entry, raw: torch.Tensor, dtype: torch.dtype, device: torch.device
) -> torch.Tensor | None:
    """A block-quantized GGUF tensor: kept as bytes in its GGUFLinear (None), else dequantized once."""
    module_name, _, attr = key.rpartition(".")
    module = model.get_submodule(module_name)
    if attr == "weight" and can_hold_gguf(module) and len(entry.shape) == 2:
        assign_gguf_weight(module, raw.to(device, copy=True), entry.dtype, entry.shape)
        return None
    return dequantize(raw, entry.dtype, entry.shape, dtype).to(device)  # a new tensor


def _load_file(
    model: torch.nn.Module,
    header: FileHeader,
    layout: FileLayout,
    expected: Mapping[str, torch.dtype],
    device: torch.device,
    fp8_mode: str,
) -> tuple[int, int, int]:
    """Stream one file's tensors into ``model``; returns (fp8 weights seen, fp8 kept, GGUF weights kept)."""
    bad = orphan_scales(layout)
    if bad:
        raise PipelineLoadError(
            f"{header.path}: fp8 scales without their weights: {bad[:3]}.",
            "The fp8 file is damaged or mixed with another; download it again.",
        )
    scales = read_tensors(header, layout.scales.values())
    scale_of = {key: scales[name] for key, name in layout.scales.items()}
    formats = _quant_formats(header, layout)
    names = {e.name: key for key, e in layout.params.items()}
    batch: dict[str, torch.Tensor] = {}
    seen = kept = gguf_kept = 0
    order = sorted(names, key=lambda n: header.entries[n].start)
    # tensors arrive in a reused scratch buffer: every branch below must copy out of it
    for name, tensor in iter_tensors(header, order, reuse_buffer=True):
        key = names[name]
        if is_block_quantized(header.entries[name]):
            out = _gguf_tensor(model, key, header.entries[name], tensor, expected[key], device)
            gguf_kept += out is None
            if out is not None:
                batch[key] = out
            continue
        if key in formats and tensor.dtype == torch.uint8:
            tensor = tensor.view(formats[key])  # ComfyUI may store fp8 bytes as U8
        if tensor.dtype in QUANT_FORMATS.values():
            seen += 1
            if fp8_mode == "keep" and key.endswith(".weight") and tensor.dim() == 2:
                module = model.get_submodule(key.rpartition(".")[0])
                assign_fp8_weight(module, tensor.to(device, copy=True), scale_of.get(key))
                kept += 1
                continue
            batch[key] = dequantize_fp8(tensor, scale_of.get(key), expected[key]).to(device)  # a new tensor
            continue
        batch[key] = tensor.to(device=device, dtype=expected[key], copy=True)
    model.load_state_dict(batch, strict=False, assign=True)
    return seen, kept, gguf_kept


def _build_model(config: DiTConfig, operations, dtype: torch.dtype) -> torch.nn.Module:
    from .dit import InfiniteTalkDiT  # imported here so headers-only tools work without the model code

    model = InfiniteTalkDiT(config, operations=operations, device="meta", dtype=dtype)
    return model.requires_grad_(False).eval()


def _materialise_leftovers(model: torch.nn.Module, device: torch.device) -> None:
    """Non-persistent buffers are not in any file; the model rebuilds them (e.g. RoPE tables)."""
    leftovers = [n for n, t in model.named_buffers() if t is not None and t.is_meta]
    if leftovers and hasattr(model, "init_non_persistent_buffers"):
        model.init_non_persistent_buffers(device)
        leftovers = [n for n, t in model.named_buffers() if t is not None and t.is_meta]
    meta_params = [n for n, p in model.named_parameters() if p.is_meta]
    if leftovers or meta_params:
        raise PipelineLoadError(
            f"after loading, {len(meta_params) + len(leftovers)} tensors still have no data: "
            f"{(meta_params + leftovers)[:5]}.",
            "This is a bug in the loader; please report it.",
        )


def _checked_files(
    base: PathLike | Sequence[PathLike], audio: PathLike | Sequence[PathLike] | None, require_audio: bool
) -> tuple[FileIdentity, FileIdentity | None, list[FileHeader], list[FileLayout]]:
    """(base identity, audio identity, headers, layouts) after the file-kind checks; the audio file's keys
    replace those of a merged base file."""
    base_id, base_headers, base_layouts = _identify(base)
    audio_id, audio_headers, audio_layouts = _identify(audio) if audio is not None else (None, [], [])
    check_base_file(base_id, audio_id)
    if audio_id is not None:
        check_audio_file(audio_id, base_id)
        replaced = {k for lay in audio_layouts for k in lay.params}
        base_layouts = [_without(lay, replaced) for lay in base_layouts]
    layouts = base_layouts + audio_layouts
    if require_audio and not any(lay.audio_keys for lay in layouts):
        raise PipelineLoadError(
            f"{base_id.path} is {base_id.describe()} without InfiniteTalk audio weights, and "
            "no audio weights file was given.",
            "Also pass the InfiniteTalk file (e.g. wan2.1_infiniteTalk_single_fp16.safetensors).",
        )
    return base_id, audio_id, base_headers + audio_headers, layouts


def _merge_lora_file(
    model: torch.nn.Module, shapes: Mapping, path: PathLike, strength: float, dtype: torch.dtype,
    ignore_alpha: bool,
) -> LoraReport:
    """Merge one LoRA file into ``model`` (GGUF weights: patched at use, see ``merge_lora``)."""
    patches = load_lora(path, shapes, ignore_alpha=ignore_alpha)
    applied = merge_lora(model, patches, strength, dtype=dtype)
    return LoraReport(patches.path, float(strength), patches.format, applied, patches.unmatched)


def _report(
    config: DiTConfig,
    identities: tuple[FileIdentity, FileIdentity | None],
    headers: Sequence[FileHeader],
    layouts: Sequence[FileLayout],
    dtype: torch.dtype,
    device: torch.device,
    fp8_mode: str,
    counts: tuple[int, int, int, int],
    loras: tuple[LoraReport, ...],
) -> LoadReport:
    """The LoadReport of a finished load; ``counts`` = (fp8 seen, fp8 kept, GGUF weights, GGUF kept)."""
    (base_id, audio_id), (seen, kept, gguf_count, gguf_kept) = identities, counts
    return LoadReport(
        config=config,
        base=base_id,
        audio=audio_id,
        files=tuple(h.path for h in headers),
        dtypes_seen=tuple(sorted({d for h in headers for d in h.dtypes})),
        dtype=dtype,
        device=str(device),
        fp8_mode=fp8_mode,
        fp8_weights=seen,
        fp8_kept=kept,
        loaded_keys=sum(len(lay.params) for lay in layouts),
        audio_keys=sum(len(lay.audio_keys) for lay in layouts),
        ignored_keys=tuple(n for lay in layouts for n in lay.ignored),
        loras=loras,
        gguf_weights=gguf_count,
        gguf_kept=gguf_kept,
    )


def load_infinitetalk_model(
    base: PathLike | Sequence[PathLike],
    audio: PathLike | Sequence[PathLike] | None = None,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    operations=torch.nn,
    loras: Sequence[tuple[PathLike, float]] = (),
    head_dim: int = 128,
    num_heads: int | None = None,
    fp8_mode: str = "dequantize",
    require_audio: bool = True,
    ignore_lora_alpha: bool = False,
) -> tuple[torch.nn.Module, LoadReport]:
    """Load Wan2.1 I2V (``base``) + InfiniteTalk/MultiTalk (``audio``) into an ``InfiniteTalkDiT``.

    ``base``: a single file (original keys or ``model.diffusion_model.``-prefixed), a shard folder or its
    ``*.index.json``, or a list of files; fp32/fp16/bf16/fp8-scaled safetensors or a GGUF (city96's; its
    block-quantized Linear weights stay quantized, dequantized per call); a merged base+audio file needs no
    ``audio``. ``fp8_mode``: "dequantize" (fp8 -> ``dtype`` at load) or "keep" (fp8 storage, dequantised per
    matmul). ``loras``: (path, strength) pairs merged after loading. Returns (model in eval mode, report).
    Raises PipelineLoadError with a plain explanation for wrong, swapped, mismatched or damaged files.
    """
    if fp8_mode not in FP8_MODES:
        raise InputValidationError(
            f"fp8_mode must be one of {FP8_MODES}, got {fp8_mode!r}.", "Use 'dequantize' (default) or 'keep'."
        )
    device = torch.device(device)
    base_id, audio_id, headers, layouts = _checked_files(base, audio, require_audio)
    shapes = {k: e.shape for lay in layouts for k, e in lay.params.items()}
    config = detect_dit_config(shapes, head_dim=head_dim, num_heads=num_heads, source=str(base_id.path))
    check_gguf_types(layouts)
    has_fp8 = any(lay.fp8_keys for lay in layouts)
    ops = fp8_operations(operations) if fp8_mode == "keep" and has_fp8 else operations
    gguf_count = sum(len(lay.quantized_keys) for lay in layouts)
    model = _build_model(config, gguf_operations(ops) if gguf_count else ops, dtype)
    expected = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}  # logical shapes
    check_keys(expected, layouts)
    seen = kept = gguf_kept = 0
    for header, layout in zip(headers, layouts):
        counts = _load_file(model, header, layout, {k: d for k, (_, d) in expected.items()}, device, fp8_mode)
        seen, kept, gguf_kept = seen + counts[0], kept + counts[1], gguf_kept + counts[2]
    _materialise_leftovers(model, device)
    shapes_of = {k: s for k, (s, _) in expected.items()}
    lora_reports = [_merge_lora_file(model, shapes_of, p, s, dtype, ignore_lora_alpha) for p, s in loras]
    report = _report(config, (base_id, audio_id), headers, layouts, dtype, device, fp8_mode,
                     (seen, kept, gguf_count, gguf_kept), tuple(lora_reports))
    log.info("loaded %s", report.summary())
    return model, report
