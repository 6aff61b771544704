"""Load chinese-wav2vec2-base from any layout users keep it in, into transformers' Wav2Vec2Model.

Accepted, all without network access:

- a Hugging Face folder (``config.json``, ``preprocessor_config.json``, ``model.safetensors`` or
  ``pytorch_model.bin`` — read with ``torch.load(weights_only=True)``), as TencentGameMate publishes it;
- one ``.safetensors`` file as ComfyUI users keep it in ``models/audio_encoders`` (or kijai's
  ``models/wav2vec2``): kijai's ``wav2vec2-chinese-base_fp16.safetensors`` (``wav2vec2.`` prefix,
  ``weight_g``/``weight_v``, pretraining heads included) or a file saved from ComfyUI's own module
  (no prefix, ``parametrizations.weight.original0/1``). Its config is the bundled
  ``chinese_wav2vec2_base.json`` with the sizes read from the tensor shapes.

Attention is forced to transformers' "eager" implementation (the reference's only working mode).
"""
from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import PipelineLoadError

logger = logging.getLogger(__name__)

BUNDLED_CONFIG_PATH = Path(__file__).with_name("chinese_wav2vec2_base.json")

# Ordered exact prefix renames from file names to Wav2Vec2Model names.
_PREFIX_RENAMES = (("wav2vec2.", ""),)
# Heads of Wav2Vec2ForPreTraining / ForCTC that the feature encoder does not use.
_DROPPED_PREFIXES = ("quantizer.", "project_hid.", "project_q.", "lm_head.")
# Weight-norm of the positional conv: legacy names and torch.nn.utils.parametrizations names.
_POS_CONV = "encoder.pos_conv_embed.conv."
_WEIGHT_NORM_NAMES = {"weight_g": "parametrizations.weight.original0",
                      "weight_v": "parametrizations.weight.original1"}
# Unused at inference (SpecAugment mask vector); present or absent depending on the saver.
_OPTIONAL_KEYS = ("masked_spec_embed",)


def bundled_config() -> tuple[dict, dict]:
    """(config.json dict, preprocessor_config.json dict) of TencentGameMate/chinese-wav2vec2-base."""
    data = json.loads(BUNDLED_CONFIG_PATH.read_text())
    return dict(data["config"]), dict(data["preprocessor_config"])


def _rename_key(key: str) -> str | None:
    for old, new in _PREFIX_RENAMES:
        if key.startswith(old):
            key = new + key[len(old):]
            break
    if key.startswith(_DROPPED_PREFIXES):
        return None
    if key.startswith(_POS_CONV):
        tail = key[len(_POS_CONV):]
        key = _POS_CONV + _WEIGHT_NORM_NAMES.get(tail, tail)
    return key


def normalize_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """File keys → Wav2Vec2Model keys with the positional conv under parametrization names."""
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        new = _rename_key(key)
        if new is None:
            continue
        if new in out:
            raise PipelineLoadError(f"wav2vec2 checkpoint holds {key!r} twice (with and without prefix)",
                                    "Re-download the file; it mixes two layouts.")
        out[new] = value
    return out


def detect_config(shapes: Mapping[str, tuple[int, ...]]) -> dict:
    """Normalised key -> shape mapping of a single-file checkpoint -> Wav2Vec2Config dict.

    Starts from the bundled chinese-wav2vec2-base config and takes every size that shapes reveal. The
    head count cannot be read from shapes, so a different width needs the model's own config.json.
    """
    config = bundled_config()[0]
    try:
        hidden = shapes["encoder.layer_norm.weight"][0]
        conv_ids = sorted({int(m.group(1)) for k in shapes
                           if (m := re.match(r"feature_extractor\.conv_layers\.(\d+)\.conv\.weight$", k))})
        layer_ids = {int(m.group(1)) for k in shapes if (m := re.match(r"encoder\.layers\.(\d+)\.", k))}
        pos_v = shapes[_POS_CONV + _WEIGHT_NORM_NAMES["weight_v"]]
        ffn = shapes["encoder.layers.0.feed_forward.intermediate_dense.weight"][0]
    except KeyError as exc:
        raise PipelineLoadError(f"not a wav2vec2 checkpoint: tensor {exc.args[0]!r} is missing",
                                "Select chinese-wav2vec2-base (e.g. wav2vec2-chinese-base_fp16.safetensors).")
    if hidden != config["hidden_size"] or len(conv_ids) != len(config["conv_stride"]):
        raise PipelineLoadError(
            f"this wav2vec2 ({hidden} wide, {len(conv_ids)} conv layers) is not chinese-wav2vec2-base "
            f"({config['hidden_size']} wide, {len(config['conv_stride'])} conv layers), whose config is "
            "bundled", "Use chinese-wav2vec2-base, or load a Hugging Face folder / pass config= with "
                       "the model's own config.json.")
    conv_w = [shapes[f"feature_extractor.conv_layers.{i}.conv.weight"] for i in conv_ids]
    config.update(
        num_hidden_layers=len(layer_ids),
        intermediate_size=ffn,
        conv_dim=[s[0] for s in conv_w],
        conv_kernel=[s[-1] for s in conv_w],
        conv_bias="feature_extractor.conv_layers.0.conv.bias" in shapes,
        feat_extract_norm="layer" if "feature_extractor.conv_layers.1.layer_norm.weight" in shapes else "group",
        num_conv_pos_embeddings=pos_v[-1],
        num_conv_pos_embedding_groups=hidden // pos_v[1],
    )
    return config


def build_wav2vec2(config: Mapping[str, Any], device: torch.device | str = "meta"):
    """Wav2Vec2Config dict → transformers Wav2Vec2Model with eager attention (random or meta weights)."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    if config.get("do_stable_layer_norm"):
        raise PipelineLoadError("this wav2vec2 uses the pre-LN ('stable layer norm') encoder of the large "
                                "models; InfiniteTalk was trained on chinese-wav2vec2-base features",
                                "Use chinese-wav2vec2-base (wav2vec2-chinese-base_fp16.safetensors).")
    hf_config = Wav2Vec2Config(**{k: v for k, v in config.items() if not k.startswith("_")})
    hf_config._attn_implementation = "eager"
    with torch.device(device):
        model = Wav2Vec2Model(hf_config)
    return model.eval().requires_grad_(False)


def _fold_weight_norm(model) -> None:
    """Compute the positional conv's weight-norm once (same formula as every forward would)."""
    conv = model.encoder.pos_conv_embed.conv
    if hasattr(conv, "parametrizations"):
        torch.nn.utils.parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
    elif hasattr(conv, "weight_g"):
        torch.nn.utils.remove_weight_norm(conv)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """State dict of a .safetensors or torch pickle (.bin/.pt, weights_only) file."""
    if not path.is_file():
        raise PipelineLoadError(f"wav2vec2 weights not found: {path}", "Check the path.")
    if path.suffix != ".safetensors":
        from ..model.checkpoint import torch_load_safely

        state = torch_load_safely(path, "wav2vec2 weights")
        return state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        from safetensors.torch import load_file

        return load_file(str(path))
    except Exception as exc:  # safetensors' own error types for damaged headers/data
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise PipelineLoadError(f"cannot read wav2vec2 weights {path.name} ({first}).",
                                "The file is truncated or damaged; download it again.") from None


def load_state_dict_strict(model, state: dict[str, torch.Tensor], source: str) -> None:
    """Load with assign=True; raise PipelineLoadError listing missing/unexpected/mis-shaped keys."""
    expected = model.state_dict()
    for key in _OPTIONAL_KEYS:
        if key in expected and key not in state:
            state[key] = torch.zeros(expected[key].shape)
        elif key in state and key not in expected:
            state.pop(key)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        raise PipelineLoadError(
            f"{source} does not match the wav2vec2 architecture: {len(missing)} missing "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, {len(wrong)} wrong shapes "
            f"{wrong[:3]}", "Use chinese-wav2vec2-base (a Hugging Face folder or "
                            "wav2vec2-chinese-base_fp16.safetensors) with its own config.json.")
    model.load_state_dict(state, strict=True, assign=True)
    logger.info("wav2vec2 from %s: %d tensors, dtypes %s", source, len(state),
                dict(Counter(str(v.dtype).replace("torch.", "") for v in state.values())))


class Wav2Vec2AudioEncoder(torch.nn.Module):
    """A loaded wav2vec2 (transformers ``Wav2Vec2Model``, eager attention, eval mode) plus the
    preprocessor flag the feature pipeline needs. ``features.encode_audio_features`` drives it."""

    def __init__(self, model, do_normalize: bool = False, source: str = ""):
        super().__init__()
        self.model = model
        self.do_normalize = bool(do_normalize)
        self.source = source

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return self.model.feature_projection.projection.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.feature_projection.projection.weight.dtype

    def extra_repr(self) -> str:
        return f"layers={self.num_layers}, hidden={self.hidden_size}, source={self.source!r}"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PipelineLoadError(f"cannot read {path}: {exc}", "Fix or re-download the JSON file.") from exc


def _resolve_files(path: Path, config: str | Path | Mapping | None):
    """→ (weights file, config dict or None, preprocessor dict)."""
    base_pre = bundled_config()[1]
    if path.is_dir():
        weights = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()),
                       None)
        if weights is None:
            raise PipelineLoadError(f"no model.safetensors or pytorch_model.bin in {path}",
                                    "Download the full TencentGameMate/chinese-wav2vec2-base folder.")
        folder = path
    elif path.is_file():
        weights, folder = path, path.parent
    else:
        raise PipelineLoadError(f"wav2vec2 model not found: {path}",
                                "Put wav2vec2-chinese-base_fp16.safetensors in models/audio_encoders, or "
                                "give the chinese-wav2vec2-base folder.")
    if isinstance(config, Mapping):
        config_dict = dict(config)
    elif config is not None:
        config_dict = _read_json(Path(config))
    elif (folder / "config.json").is_file() and (path.is_dir() or _read_json(folder / "config.json")
                                                  .get("model_type") == "wav2vec2"):
        config_dict = _read_json(folder / "config.json")
    else:
        config_dict = None  # single file: bundled config + shapes
    pre_path = folder / "preprocessor_config.json"
    pre = _read_json(pre_path) if config_dict is not None and pre_path.is_file() else base_pre
    return weights, config_dict, pre


def load_wav2vec2(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                  config: str | Path | Mapping | None = None) -> Wav2Vec2AudioEncoder:
    """Load chinese-wav2vec2-base from a Hugging Face folder or one .safetensors file → Wav2Vec2AudioEncoder.

    ``config`` (a config.json path or dict) overrides what the folder or the bundled config says.
    Weights of any stored dtype are cast to ``dtype`` (float32 is the reference's precision).
    Raises PipelineLoadError for a missing, unreadable or non-matching checkpoint.
    """
    path = Path(path)
    weights, config_dict, pre = _resolve_files(path, config)
    return wav2vec2_from_state_dict(read_weights(weights), config_dict, pre.get("do_normalize", False),
                                    device=device, dtype=dtype, source=str(path))


def wav2vec2_from_state_dict(state_dict: Mapping[str, torch.Tensor], config: Mapping | None = None,
                             do_normalize: bool = False, device: torch.device | str = "cpu",
                             dtype: torch.dtype = torch.float32, source: str = "state dict"
                             ) -> Wav2Vec2AudioEncoder:
    """A wav2vec2 state dict in any accepted layout (e.g. what a host's own audio-encoder loader holds)
    → Wav2Vec2AudioEncoder. ``config=None``: the bundled chinese-wav2vec2-base config + shapes."""
    state = normalize_state_dict(state_dict)
    if config is None:
        config = detect_config({k: tuple(v.shape) for k, v in state.items()})
    model = build_wav2vec2(config, device="meta")
    load_state_dict_strict(model, state, Path(source).name or source)
    model.to(torch.float32)
    _fold_weight_norm(model)
    model.to(device=device, dtype=dtype)
    return Wav2Vec2AudioEncoder(model, do_normalize=do_normalize, source=source)


def wav2vec2_from_config(config: Mapping[str, Any] | None = None, device: torch.device | str = "cpu",
                         dtype: torch.dtype = torch.float32, seed: int = 0) -> Wav2Vec2AudioEncoder:
    """Freshly initialised wav2vec2 (transformers' init, ``seed``) of ``config`` (default: the bundled
    chinese-wav2vec2-base) → Wav2Vec2AudioEncoder. For benchmarks and tests of the real architecture."""
    torch.manual_seed(seed)
    model = build_wav2vec2(config if config is not None else bundled_config()[0], device="cpu")
    _fold_weight_norm(model)
    model.to(device=device, dtype=dtype)
    return Wav2Vec2AudioEncoder(model, do_normalize=False, source="random init")
