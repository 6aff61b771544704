"""Every node's inputs checked against its own INPUT_TYPES before its body runs.

ComfyUI checks combo choices and min/max of typed-in values, but not values that arrive through links,
from API scripts or from other packs calling a node function; and nothing checks what a socket carries.
A wrong value here is one E_INPUT_VALIDATION naming the input, instead of an AttributeError deep inside.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any, Callable

import torch

from ..infinitetalk_core.errors import AudioInputError, InputValidationError


def _fail(name: str, what: str, fix: str) -> None:
    raise InputValidationError(f"{name}{'' if what.startswith('=') else ' '}{what}.", fix)


def _image(name: str, value: Any) -> None:
    if not isinstance(value, torch.Tensor) or value.ndim != 4 or value.shape[-1] not in (3, 4):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        _fail(name, f"is not an IMAGE batch [frames, height, width, 3] (got {shape})",
              "Connect an IMAGE output (LoadImage, a video loader, VAE Decode).")
    if value.shape[0] == 0 or value.shape[1] == 0 or value.shape[2] == 0:
        _fail(name, f"is empty ({tuple(value.shape)})", "Connect an image or video with at least one frame.")
    if not value.is_floating_point():
        _fail(name, f"holds {value.dtype} values, not ComfyUI's 0..1 floats",
              "Convert it to a float IMAGE (0..1) first; 0..255 integers would be read as white.")


PER_FRAME_MASKS = ("dub_mask",)  # MASK inputs that take one mask per source frame; the others take one


def _mask(name: str, value: Any) -> None:
    if not isinstance(value, torch.Tensor) or value.ndim not in (2, 3) or not value.is_floating_point():
        _fail(name, f"is not a MASK [height, width] (got {type(value).__name__})", "Connect a MASK output.")
    if value.numel() == 0:
        _fail(name, f"is empty ({tuple(value.shape)})", "Connect a mask with at least one pixel.")
    if value.ndim == 3 and value.shape[0] != 1 and name not in PER_FRAME_MASKS:
        _fail(name, f"is a batch of {value.shape[0]} masks", "Connect one mask per speaker.")


def _audio(name: str, value: Any) -> None:
    if not (isinstance(value, Mapping) and isinstance(value.get("waveform"), torch.Tensor) and "sample_rate" in value):
        raise AudioInputError(f"{name} is not a ComfyUI AUDIO value {{'waveform', 'sample_rate'}}.",
                              "Connect an AUDIO output (LoadAudio).")


def _frames(name: str, value: Any) -> None:
    if not all(hasattr(value, a) for a in ("iter_uint8", "width", "height", "frame_count", "fps")):
        _fail(name, f"is not the Streaming Sampler's frames (got {type(value).__name__})",
              "Connect the Streaming Sampler's frames output, or use images for an IMAGE batch.")


def _conditioning(name: str, value: Any) -> None:
    ok = isinstance(value, list) and value and all(
        isinstance(c, (list, tuple)) and len(c) >= 1 and isinstance(c[0], torch.Tensor) for c in value)
    if not ok:
        _fail(name, "is not a CONDITIONING value", "Connect CLIPTextEncode's output.")


def _has(*methods: str) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if not all(callable(getattr(value, m, None)) for m in methods):
            _fail(name, f"is not a {name.upper().replace('_', ' ')} model (got {type(value).__name__})",
                  f"Connect the matching loader's output to {name}.")
    return check


FRAMES_SOCKET = "INFINITETALK_FRAMES"  # any frames source (duck-typed: see nodes/frames.py FramesSource)
SOCKETS: dict[str, Callable[[str, Any], None]] = {
    "IMAGE": _image, "MASK": _mask, "AUDIO": _audio, "CONDITIONING": _conditioning,
    "VAE": _has("encode", "decode"), "CLIP_VISION": _has("encode_image"),
}


def _scalar(name: str, kind: str, value: Any, options: dict) -> None:
    if kind == "BOOLEAN":
        if not isinstance(value, bool):
            _fail(name, f"={value!r} is not true or false", f"Set {name} to true or false.")
        return
    if kind == "STRING":
        if not isinstance(value, str):
            _fail(name, f"={value!r} is not text", f"Set {name} to text.")
        return
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()  # a 0-d tensor from another pack's number output
    number = isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value
    if not number or (kind == "INT" and not float(value).is_integer()):
        _fail(name, f"={value!r} is not a {'whole ' if kind == 'INT' else ''}number", f"Set {name} to a number.")
    low, high = options.get("min"), options.get("max")
    if (low is not None and value < low) or (high is not None and value > high):
        _fail(name, f"={value} is outside {low}..{high}", f"Set {name} between {low} and {high}.")


def _check_one(name: str, spec: tuple, value: Any, custom: dict[str, type]) -> None:
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    if isinstance(kind, list):
        if value not in kind:
            shown = ", ".join(map(str, kind[:12])) + (", ..." if len(kind) > 12 else "")
            _fail(name, f"={value!r} is not one of {shown}", f"Choose one of the listed values for {name}.")
    elif kind in ("INT", "FLOAT", "BOOLEAN", "STRING"):
        _scalar(name, kind, value, options)
    elif kind in SOCKETS:
        SOCKETS[kind](name, value)
    elif kind == FRAMES_SOCKET:
        _frames(name, value)
    elif kind in custom and not isinstance(value, custom[kind]):
        _fail(name, f"is not an {kind} (got {type(value).__name__})",
              f"Connect the InfiniteTalk node that outputs {kind}.")


def check_node_inputs(declared: dict, values: dict, custom: dict[str, type] | None = None,
                      own_checks: tuple[str, ...] = ()) -> None:
    """Raise E_INPUT_VALIDATION for the first input that does not fit the node's INPUT_TYPES.

    Required inputs must be present; optional ones may be None (not connected). ``own_checks``: inputs
    the node explains better itself (model file lists: "put it in models/...").
    """
    custom = custom or {}
    for section in ("required", "optional"):
        for name, spec in declared.get(section, {}).items():
            if name in own_checks:
                continue
            value = values.get(name)
            if value is None:
                if section == "required":
                    error = AudioInputError if spec[0] == "AUDIO" else InputValidationError
                    raise error(f"{name} is not connected or has no value.", f"Connect or set {name}.")
                continue
            _check_one(name, spec, value, custom)
