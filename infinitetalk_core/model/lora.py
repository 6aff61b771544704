"""LoRA files for the Wan DiT: parse once, then merge into a model or hand to ComfyUI as weight patches.

Key grammar (shared/manifests/wan21_i2v_lora_formats.json), after an optional prefix
``diffusion_model.`` / ``model.diffusion_model.`` / ``base_model.model.`` / ``lora_unet_`` (musubi, whose
module names use ``_`` for ``.``, resolved against the model's own names):

- ``<m>.lora_down.weight`` [r, in] + ``<m>.lora_up.weight`` [out, r] (+ optional ``<m>.alpha``);
  PEFT ``lora_A`` = down, ``lora_B`` = up (also ``.default.`` spelled);
- ``<m>.diff`` (full delta of ``<m>.weight``), ``<m>.diff_b`` (of ``<m>.bias``), ``blocks.N.diff_m``
  (of ``blocks.N.modulation``).

Scale rule: ``W + strength · (alpha / rank) · up @ down`` when ``alpha`` is present, ``strength · up @ down``
otherwise, i.e. what ComfyUI and kijai's wrapper do, because these LoRAs are made and tuned in ComfyUI.
The InfiniteTalk reference (wan/wan_lora.py) ignores alpha; the two agree whenever alpha == rank, and
``ignore_alpha=True`` reproduces the reference exactly. diff patches are ``W + strength · diff``.

ComfyUI hand-off (ComfyUI 783545f6, comfy/lora.py + comfy/weight_adapter/lora.py): ``ModelPatcher.add_patches
(patches, strength_patch=strength)`` takes ``{"diffusion_model.<key>": patch}``, where a LoRA patch is
``LoRAAdapter(loaded_keys: set, weights=(up [out,r], down [r,in], alpha: float | None, mid=None,
dora_scale=None, reshape=None))`` and ComfyUI adds
``strength · (alpha / down.shape[0] if alpha else 1) · up @ down``
reshaped to the weight; a diff patch is the tuple ``("diff", (delta,))``. Older ComfyUI (before
weight_adapter) took the tuple ``("lora", (up, down, alpha, None, None, None))`` instead; ``comfy_patches``
builds that when no adapter class is given.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch

from ..errors import PipelineLoadError
from .checkpoint import iter_tensors, read_header
from .fp8 import dequantize_fp8, is_fp8
from .gguf import add_gguf_patch, is_gguf_layer

log = logging.getLogger(__name__)

LORA_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "lora_unet_")
# suffix -> role; longest first so ".lora_A.default.weight" wins over shorter matches
_SUFFIX_ROLES = (
    (".lora_A.default.weight", "down"),
    (".lora_B.default.weight", "up"),
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".alpha", "alpha"),
    (".diff_b", "diff_b"),
    (".diff_m", "diff_m"),
    (".diff", "diff"),
)
# musubi module names come with "_" for "."; these are the parts Wan/InfiniteTalk names are made of
WAN_NAME_PARTS = frozenset(
    (
        "blocks self_attn cross_attn audio_cross_attn ffn norm3 norm_x modulation q k v o k_img v_img norm_q "
        "norm_k norm_k_img q_linear kv_linear proj text_embedding time_embedding time_projection head "
        "img_emb "
        "patch_embedding audio_proj proj1 proj1_vf proj2 proj3 norm"
    ).split()
)


@dataclass(frozen=True)
class LoraPatch:
    """One weight delta. ``key`` is the model state-dict key it changes."""

    key: str
    kind: str  # "lora" | "diff"
    up: torch.Tensor | None = None  # [out, rank]
    down: torch.Tensor | None = None  # [rank, in] (conv kernels flattened)
    alpha: float | None = None
    diff: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return 0 if self.down is None else int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None or self.kind != "lora" else self.alpha / self.rank

    def delta(self, shape: Sequence[int], device=None) -> torch.Tensor:
        """The full float32 delta for strength 1, in the target's ``shape``."""
        if self.kind == "diff":
            return self.diff.to(device=device, dtype=torch.float32).reshape(shape)
        up = self.up.to(device=device, dtype=torch.float32).flatten(1)
        down = self.down.to(device=device, dtype=torch.float32).flatten(1)
        return (self.scale * (up @ down)).reshape(shape)


@dataclass(frozen=True)
class LoraPatchSet:
    """A parsed LoRA file: its patches, and the file keys that matched nothing (reported, not applied)."""

    path: Path
    format: str  # "kohya" (lora_down/up), "peft" (lora_A/B), "musubi" (lora_unet_), "diff" (diffs only)
    patches: tuple[LoraPatch, ...]
    unmatched: tuple[str, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(p.key for p in self.patches)

    def comfy_patches(
        self,
        lora_adapter: Callable | None = None,
        key_prefix: str = "diffusion_model.",
        weight_scales: Mapping[str, torch.Tensor] | None = None,
    ) -> dict:
        """Patches for ``ModelPatcher.add_patches(patches, strength_patch=strength)``.

        ``lora_adapter``: ComfyUI's ``comfy.weight_adapter.LoRAAdapter`` (current ComfyUI); without it the
        legacy ``("lora", (...))`` tuple is used. ``key_prefix``: where the DiT sits in the patched model.
        ``weight_scales``: for weights kept as scaled fp8 (``fp8.fp8_weight_scales(model)``): ComfyUI adds
        the delta to the raw fp8 values, so the delta is divided by the weight's scale here.
        """
        out = {}
        for p in self.patches:
            scale = (weight_scales or {}).get(p.key)
            if p.kind == "diff":
                out[key_prefix + p.key] = ("diff", (p.diff if scale is None else _unscale(p.diff, scale),))
            else:
                up = p.up if scale is None else _unscale(p.up, scale)
                weights = (up, p.down, p.alpha, None, None, None)
                out[key_prefix + p.key] = lora_adapter(set(), weights) if lora_adapter else ("lora", weights)
        return out


def _unscale(t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Divide a delta (or a LoRA up matrix, [out, r]) by a per-tensor or per-row fp8 scale, in float32."""
    s = scale.to(device=t.device, dtype=torch.float32)
    s = s.reshape(()) if s.numel() == 1 else s.reshape(-1, *([1] * (t.dim() - 1)))
    return t.float() / s


def _split_role(key: str) -> tuple[str, str] | None:
    if key == "diff_m":  # a top-level modulation delta has no module part
        return "", "diff_m"
    for suffix, role in _SUFFIX_ROLES:
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None


def _strip_prefix(name: str) -> tuple[str, str]:
    for prefix in LORA_PREFIXES:
        if name.startswith(prefix):
            return prefix, name[len(prefix) :]
    return "", name


def underscore_to_module(name: str, parts: Iterable[str] = WAN_NAME_PARTS) -> str:
    """``blocks_0_cross_attn_k_img`` -> ``blocks.0.cross_attn.k_img`` by greedy longest known part."""
    parts = set(parts)
    tokens, out = name.split("_"), []
    while tokens:
        for n in range(len(tokens), 0, -1):
            piece = "_".join(tokens[:n])
            if piece in parts or piece.isdigit() or n == 1:
                out.append(piece)
                tokens = tokens[n:]
                break
    return ".".join(out)


def _target_key(module: str, role: str) -> str:
    if role == "diff_m":
        return f"{module}.modulation" if module else "modulation"
    return f"{module}.bias" if role == "diff_b" else f"{module}.weight"


def _group(state: Mapping[str, torch.Tensor], parts: set[str]):
    """Group file tensors by (module, role); collect names that fit no role."""
    groups: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    unknown, prefixes = [], set()
    for name, tensor in state.items():
        prefix, key = _strip_prefix(name)
        split = _split_role(key)
        if split is None:
            unknown.append(name)
            continue
        module, role = split
        if prefix == "lora_unet_":
            module = underscore_to_module(module, parts)
        prefixes.add(prefix)
        groups.setdefault(module, {})[role] = (name, tensor)
    return groups, unknown, prefixes


def _format(groups, prefixes) -> str:
    roles = {r for g in groups.values() for r in g}
    if "lora_unet_" in prefixes:
        return "musubi"
    if any(
        n.endswith(("lora_A.weight", "lora_A.default.weight")) for g in groups.values() for n, _ in g.values()
    ):
        return "peft"
    return "kohya" if {"up", "down"} & roles else "diff"


def _check_shape(path: Path, patch: LoraPatch, shape: Sequence[int]) -> None:
    numel = 1
    for d in shape:
        numel *= d
    got = patch.diff.numel() if patch.kind == "diff" else patch.up.shape[0] * patch.down.flatten(1).shape[1]
    if got != numel:
        sizes = (
            list(patch.diff.shape)
            if patch.kind == "diff"
            else [patch.up.shape[0], patch.down.flatten(1).shape[1]]
        )
        raise PipelineLoadError(
            f"{path}: the LoRA changes '{patch.key}' with shape {sizes}, "
            f"but the model's tensor is {list(shape)}: "
            "this LoRA was made for a different model (e.g. Wan 1.3B vs 14B).",
            "Use a LoRA trained for Wan2.1 I2V 14B (e.g. lightx2v I2V 480p or FusionX I2V).",
        )


def parse_lora(
    path: Path,
    state: Mapping[str, torch.Tensor],
    target_shapes: Mapping[str, Sequence[int]] | None = None,
    ignore_alpha: bool = False,
) -> LoraPatchSet:
    """Turn a LoRA state dict into patches on ``target_shapes`` keys (all parsed modules if None)."""
    parts = set(WAN_NAME_PARTS)
    if target_shapes is not None:
        parts |= {p for k in target_shapes for p in k.split(".")}
    groups, unmatched, prefixes = _group(state, parts)
    patches = []
    for module, roles in groups.items():
        alpha = None if ignore_alpha or "alpha" not in roles else float(roles["alpha"][1].float().item())
        found = []
        if "up" in roles and "down" in roles:
            found.append(
                (
                    ("up", "down", "alpha"),
                    LoraPatch(f"{module}.weight", "lora", roles["up"][1], roles["down"][1], alpha),
                )
            )
        for role in ("diff", "diff_b", "diff_m"):
            if role in roles:
                found.append(((role,), LoraPatch(_target_key(module, role), "diff", diff=roles[role][1])))
        used = set()
        for role_names, patch in found:
            if target_shapes is not None and patch.key not in target_shapes:
                continue
            if target_shapes is not None:
                _check_shape(path, patch, target_shapes[patch.key])
            patches.append(patch)
            used |= {r for r in role_names if r in roles}
        unmatched += [name for role, (name, _) in roles.items() if role not in used]
    if not patches:
        shown = ", ".join(sorted(unmatched)[:5])
        raise PipelineLoadError(
            f"{path}: none of its {len(state)} tensors match a layer of the Wan DiT (first keys: {shown}).",
            "Use a Wan2.1 14B LoRA in ComfyUI/kohya, PEFT or musubi naming (lightx2v, FusionX, ...).",
        )
    if unmatched:
        log.warning(
            "%s: %d LoRA keys matched no model weight and were skipped, e.g. %s",
            path,
            len(unmatched),
            sorted(unmatched)[:5],
        )
    return LoraPatchSet(Path(path), _format(groups, prefixes), tuple(patches), tuple(sorted(unmatched)))


def load_lora(
    path: str | Path, target_shapes: Mapping[str, Sequence[int]] | None = None, ignore_alpha: bool = False
) -> LoraPatchSet:
    """Read a LoRA file (.safetensors, or .pth/.bin via weights_only) into a LoraPatchSet.

    ``target_shapes``: the model's state-dict key -> shape (``{k: v.shape for k, v in model.state_dict()
    .items()}``); keys outside it are reported as unmatched and shapes are checked. Raises
    PipelineLoadError when nothing matches.
    """
    header = read_header(path)
    return parse_lora(Path(path), dict(iter_tensors(header)), target_shapes, ignore_alpha)


def merge_lora(
    model: torch.nn.Module, lora: LoraPatchSet, strength: float = 1.0, dtype: torch.dtype = torch.bfloat16
) -> int:
    """Add ``strength`` × each patch into ``model``'s weights in place (math in float32); returns the count.

    An fp8-stored weight (fp8_mode="keep") is dequantised to ``dtype`` first and stays in ``dtype``. A
    GGUF-quantized weight keeps its bytes: the patch is added to the dequantized weight at every call.
    """
    for patch in lora.patches:
        module_name, _, attr = patch.key.rpartition(".")
        module = model.get_submodule(module_name)
        param = getattr(module, attr)
        if attr == "weight" and is_gguf_layer(module):
            add_gguf_patch(module, patch, strength)
            continue
        with torch.no_grad():
            if is_fp8(param):
                merged = dequantize_fp8(param, getattr(module, "scale_weight", None), torch.float32)
                module.scale_weight = None
                target_dtype = dtype
            else:
                merged, target_dtype = param.to(torch.float32), param.dtype
            merged += strength * patch.delta(param.shape, device=param.device)
            setattr(module, attr, torch.nn.Parameter(merged.to(target_dtype), requires_grad=False))
    return len(lora.patches)
