"""File key layouts -> the model's state-dict keys: prefixes, fp8 scale siblings, markers.

One ordered table of exact prefix renames, applied to a whole file at once (the prefix every key shares),
and one rule for fp8 files. Layouts covered (see shared/manifests):

- original Wan / InfiniteTalk / MultiTalk names, no prefix (MeiGen, Wan-AI shards, Comfy-Org split files);
- ``model.diffusion_model.`` (ComfyUI full-checkpoint style), ``diffusion_model.``, ``model.``;
- fp8 "scaled": ``<module>.weight`` in F8 with a ``<module>.scale_weight`` (ComfyUI scaled_fp8, kijai
  ``_scaled_KJ``) or ``<module>.weight_scale`` sibling; ``scale_input`` / ``input_scale`` are activation
  hints we ignore; the ``scaled_fp8`` marker is dropped; newer ComfyUI files add ``<module>.comfy_quant``
  (a JSON blob naming the format) and may store the fp8 bytes as U8;
- GGUF (city96's Wan2.1 GGUFs, Kijai's InfiniteTalk GGUFs): the original names above, no prefix, through
  the same table; block-quantized tensors (``is_block_quantized``: Q8_0, Q4_K, ...) keep their logical
  shape in the entry, so the name-and-shape checks are those of every other layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .checkpoint import SAFETENSORS_DTYPES, TensorEntry

MODEL_KEY_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.")
FP8_MARKER = "scaled_fp8"
SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
IGNORED_SUFFIXES = (".scale_input", ".input_scale")
QUANT_CONFIG_SUFFIX = ".comfy_quant"
FP8_DTYPES = ("F8_E4M3", "F8_E5M2")

_AUDIO_KEY = re.compile(r"^(audio_proj\.|blocks\.\d+\.(audio_cross_attn|norm_x)\.)")


def is_audio_key(key: str) -> bool:
    """True for the InfiniteTalk/MultiTalk additions (audio_proj, blocks.N.audio_cross_attn / norm_x)."""
    return bool(_AUDIO_KEY.match(key))


def is_block_quantized(entry: TensorEntry) -> bool:
    """A GGUF tensor stored as GGML quantization blocks (raw bytes), not as plain elements."""
    return entry.dtype not in SAFETENSORS_DTYPES


def common_prefix(names: list[str]) -> str:
    """The first prefix of MODEL_KEY_PREFIXES that every name starts with, else ''."""
    for prefix in MODEL_KEY_PREFIXES:
        if names and all(n.startswith(prefix) for n in names):
            return prefix
    return ""


@dataclass(frozen=True)
class FileLayout:
    """A file's tensors under model keys.

    ``params``: model key -> file entry (weights as stored, fp8 included). ``scales``: model weight key ->
    file key of its dequantisation scale. ``quant_configs``: model weight key -> file key of its
    ``comfy_quant`` blob. ``ignored``: file keys deliberately not loaded (marker, input scales).
    """

    path: Path | None
    prefix: str
    params: Mapping[str, TensorEntry]
    scales: Mapping[str, str]
    quant_configs: Mapping[str, str]
    ignored: tuple[str, ...]
    has_fp8_marker: bool

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: e.shape for k, e in self.params.items()}

    @property
    def fp8_keys(self) -> tuple[str, ...]:
        return tuple(k for k, e in self.params.items() if e.dtype in FP8_DTYPES or k in self.quant_configs)

    @property
    def quantized_keys(self) -> tuple[str, ...]:
        """Model keys of GGUF block-quantized tensors (Q8_0, Q4_K, ...)."""
        return tuple(k for k, e in self.params.items() if is_block_quantized(e))

    @property
    def audio_keys(self) -> tuple[str, ...]:
        return tuple(k for k in self.params if is_audio_key(k))


def _module_of(key: str, suffixes: tuple[str, ...]) -> str | None:
    for suffix in suffixes:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return None


def map_layout(entries: Mapping[str, TensorEntry], path: Path | None = None) -> FileLayout:
    """Sort a file's entries into model parameters, fp8 scales and ignored keys (names and shapes only)."""
    prefix = common_prefix(list(entries))
    params: dict[str, TensorEntry] = {}
    scales: dict[str, str] = {}
    quant_configs: dict[str, str] = {}
    ignored: list[str] = []
    marker = False
    for name, entry in entries.items():
        key = name[len(prefix) :]
        if key == FP8_MARKER:
            marker = True
            ignored.append(name)
        elif _module_of(key, IGNORED_SUFFIXES) is not None:
            ignored.append(name)
        elif (module := _module_of(key, SCALE_SUFFIXES)) is not None:
            scales[module + ".weight"] = name
        elif (module := _module_of(key, (QUANT_CONFIG_SUFFIX,))) is not None:
            quant_configs[module + ".weight"] = name
        else:
            params[key] = entry
    return FileLayout(path, prefix, params, scales, quant_configs, tuple(ignored), marker)


def orphan_scales(layout: FileLayout) -> list[str]:
    """Scale keys whose weight is missing from the same file (a damaged or mixed-up fp8 file)."""
    return [name for key, name in layout.scales.items() if key not in layout.params]
