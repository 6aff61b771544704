"""The one place that talks to ComfyUI; everything else in the pack goes through ``get_host()``.

Two hosts with the same small surface:

- ``ComfyHost`` (inside ComfyUI): models are built with ``comfy.ops`` layers, wrapped in
  ``comfy.model_patcher.CoreModelPatcher`` (looked up at call time: ComfyUI rebinds it for dynamic
  VRAM) and loaded with ``model_management.load_models_gpu`` before each use, so ComfyUI decides what
  stays on the GPU; LoRAs become patcher weight patches; progress is a ``comfy.utils.ProgressBar`` with
  a JPEG preview per chunk; ``check_interrupt`` is ComfyUI's own check; model lists come from
  ``folder_paths``.
- ``TorchHost`` (CI, scripts): plain torch devices, tqdm progress, models from
  ``$INFINITETALK_MODELS_DIR/<folder>`` (the same folder names as ComfyUI's ``models/``).

ComfyUI is imported lazily, only when it is already importable, so the pack imports without it.
"""
from __future__ import annotations

import importlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

log = logging.getLogger(__name__)

MODEL_EXTENSIONS = (".safetensors", ".sft", ".pt", ".pth", ".bin", ".ckpt", ".gguf")
MODELS_DIR_ENV = "INFINITETALK_MODELS_DIR"
PROGRESS_EVENT = "infinitetalk.progress"
HOST_ENV = "INFINITETALK_HOST"  # "torch" forces the plain host even inside ComfyUI (debugging)


@dataclass
class ManagedModel:
    """A module plus what the host needs to place it: ComfyUI's patcher, or nothing (plain torch)."""

    module: torch.nn.Module
    patcher: Any = None
    info: dict = field(default_factory=dict)


_PRIVATE_TEMP: Path | None = None


class TorchHost:
    """Plain-torch services: CUDA if present, else CPU; tqdm progress; files from an env folder."""

    name = "torch"

    def compute_device(self) -> torch.device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def offload_device(self) -> torch.device:
        return torch.device("cpu")

    def models_dir(self) -> Path:
        return Path(os.environ.get(MODELS_DIR_ENV, "models")).expanduser()

    def model_list(self, folder: str) -> list[str]:
        root = self.models_dir() / folder
        if not root.is_dir():
            return []
        return sorted(
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and p.suffix.lower() in MODEL_EXTENSIONS
        )

    def model_path(self, folder: str, name: str) -> str | None:
        path = self.models_dir() / folder / name
        return str(path) if path.is_file() else None

    def folder_roots(self, folder: str) -> list[Path]:
        return [self.models_dir() / folder]

    def model_dirs(self, folder: str) -> list[str]:
        """Sub-folders holding a Hugging Face model (a config.json), e.g. chinese-wav2vec2-base."""
        names = set()
        for root in self.folder_roots(folder):
            if root.is_dir():
                names.update(p.parent.relative_to(root).as_posix() for p in root.rglob("config.json")
                             if p.parent != root)
        return sorted(names)

    def model_dir_path(self, folder: str, name: str) -> str | None:
        for root in self.folder_roots(folder):
            if (root / name / "config.json").is_file():
                return str(root / name)
        return None

    def output_dir(self) -> Path:
        return Path(os.environ.get("INFINITETALK_OUTPUT_DIR", "output")).expanduser()

    def temp_dir(self) -> Path:
        """$INFINITETALK_TEMP_DIR, else a private (0700) folder of this process; never inside output/."""
        if os.environ.get("INFINITETALK_TEMP_DIR"):
            return Path(os.environ["INFINITETALK_TEMP_DIR"]).expanduser()
        global _PRIVATE_TEMP
        if _PRIVATE_TEMP is None or not _PRIVATE_TEMP.is_dir():
            _PRIVATE_TEMP = Path(tempfile.mkdtemp(prefix="infinitetalk-"))
        return _PRIVATE_TEMP

    def save_path(self, prefix: str, width: int = 0, height: int = 0) -> tuple[Path, str]:
        """(mp4 path, subfolder) for an output prefix; refuses prefixes that leave the output folder."""
        from .output_paths import next_output_path

        return next_output_path(self.output_dir(), prefix)

    def operations(self, weight_dtype: torch.dtype | None) -> Any:
        return torch.nn  # the core's default layers

    def manage(self, module: torch.nn.Module, info: dict | None = None) -> ManagedModel:
        return ManagedModel(module, None, dict(info or {}))

    def add_weight_patches(self, model: ManagedModel, lora: Any, strength: float) -> ManagedModel:
        """Plain torch: merge the LoRA (a core ``LoraPatchSet``) into the weights in place."""
        from ..infinitetalk_core.model.lora import merge_lora

        merge_lora(model.module, lora, strength)
        return model

    def load_for_use(self, models: list[ManagedModel], device: torch.device | None = None) -> torch.device:
        device = device or self.compute_device()
        for m in models:
            m.module.to(device)
        return device

    def release(self, models: list[ManagedModel]) -> None:
        for m in models:
            m.module.to(self.offload_device())

    def progress(self, total: int, node_id: str | None = None) -> Progress:
        return TqdmProgress(total)

    def check_interrupt(self) -> None:
        return None

    def send_progress(self, data: dict, node_id: str | None = None) -> None:
        log.debug("progress %s", data)

    def attention_flag(self) -> str | None:
        """The attention kernel the host was told to use (None: no preference)."""
        return None

    def fp8_matmul_flag(self) -> bool:
        """True when fp8-kept weights should multiply in fp8 (``torch._scaled_mm``) where the GPU can."""
        return False

    def fused_rope(self) -> Any:
        """The host's one-kernel RoPE (``kernel(x, rotation matrices)``, see ``model.rope``), or None."""
        return None

    def is_interrupt(self, exc: BaseException) -> bool:
        return isinstance(exc, KeyboardInterrupt)

    def wrap_video_file(self, path: str) -> Any:
        return VideoFile(path)


class ComfyHost(TorchHost):
    """ComfyUI's model management, file registry, progress bar and interrupt check."""

    name = "comfyui"

    def __init__(self, mm, folder_paths):
        self.mm = mm
        self.folder_paths = folder_paths

    def compute_device(self) -> torch.device:
        return self.mm.get_torch_device()

    def offload_device(self) -> torch.device:
        return self.mm.unet_offload_device()

    def model_list(self, folder: str) -> list[str]:
        try:
            return list(self.folder_paths.get_filename_list(folder))
        except KeyError:
            return []

    def model_path(self, folder: str, name: str) -> str | None:
        return self.folder_paths.get_full_path(folder, name)

    def folder_roots(self, folder: str) -> list[Path]:
        try:
            return [Path(p) for p in self.folder_paths.get_folder_paths(folder)]
        except KeyError:
            return []

    def output_dir(self) -> Path:
        return Path(self.folder_paths.get_output_directory())

    def temp_dir(self) -> Path:
        return Path(self.folder_paths.get_temp_directory())

    def save_path(self, prefix: str, width: int = 0, height: int = 0) -> tuple[Path, str]:
        from .output_paths import comfy_output_path

        return comfy_output_path(self.folder_paths, prefix, width, height)

    def operations(self, weight_dtype: torch.dtype | None) -> Any:
        """``comfy.ops`` layers: weights stay in their storage dtype and are cast at use.

        manual_cast works for every storage dtype (fp8 included) and lets the patcher stream layers
        to the GPU (every weighted layer must be a comfy.ops layer for partial offload). Layers that keep
        scaled fp8 weights get theirs through ``comfy.ops.cast_bias_weight`` too (``install_fp8_cast``).
        """
        from .comfy_fp8_cast import install_fp8_cast

        ops = importlib.import_module("comfy.ops")
        install_fp8_cast(ops)
        return ops.manual_cast

    def manage(self, module: torch.nn.Module, info: dict | None = None) -> ManagedModel:
        patcher_mod = importlib.import_module("comfy.model_patcher")
        core_patcher = patcher_mod.CoreModelPatcher  # rebound at startup for dynamic VRAM
        patcher = core_patcher(module, load_device=self.compute_device(), offload_device=self.offload_device())
        return ManagedModel(module, patcher, dict(info or {}))

    def add_weight_patches(self, model: ManagedModel, lora: Any, strength: float) -> ManagedModel:
        """ComfyUI: the LoRA becomes patcher weight patches (applied when the patcher loads the model).

        Weights kept as scaled fp8 hold ``W / scale``: ComfyUI adds the delta to those raw values, so the
        deltas of those keys are divided by the same scale (``fp8_weight_scales``).
        """
        from ..infinitetalk_core.model.fp8 import fp8_weight_scales

        adapter = getattr(importlib.import_module("comfy.weight_adapter"), "LoRAAdapter", None)
        patches = lora.comfy_patches(lora_adapter=adapter, key_prefix="",  # the patcher wraps the DiT itself
                                     weight_scales=fp8_weight_scales(model.module))
        patcher = model.patcher.clone()
        applied = patcher.add_patches(patches, strength)
        missing = len(patches) - len(applied)
        if missing:
            log.warning("LoRA: %d of %d patched keys are not in the model", missing, len(patches))
        return ManagedModel(patcher.model, patcher, dict(model.info))

    def load_for_use(self, models: list[ManagedModel], device: torch.device | None = None) -> torch.device:
        patchers = [m.patcher for m in models if m.patcher is not None]
        if patchers:
            self.mm.load_models_gpu(patchers)
            return patchers[0].load_device
        return super().load_for_use(models, device)

    def release(self, models: list[ManagedModel]) -> None:
        self.mm.soft_empty_cache()  # ComfyUI decides when to offload; we only drop caches

    def progress(self, total: int, node_id: str | None = None) -> Progress:
        bar = importlib.import_module("comfy.utils").ProgressBar(total, node_id=node_id)
        return ComfyProgress(bar, self)

    def check_interrupt(self) -> None:
        self.mm.throw_exception_if_processing_interrupted()

    def send_progress(self, data: dict, node_id: str | None = None) -> None:
        """Websocket event ``infinitetalk.progress`` for js/ (chunk i of N, ETA)."""
        server = getattr(importlib.import_module("server").PromptServer, "instance", None)
        if server is not None:
            server.send_sync(PROGRESS_EVENT, {**data, "node": node_id}, server.client_id)

    def fp8_matmul_flag(self) -> bool:
        """ComfyUI's ``--fast fp8_matrix_mult`` (or a bare ``--fast``)."""
        cli = importlib.import_module("comfy.cli_args")
        fast = getattr(cli.args, "fast", None) or ()
        return "fp8_matrix_mult" in {getattr(feature, "value", feature) for feature in fast}

    def attention_flag(self) -> str | None:
        """ComfyUI's --use-sage-attention / --use-flash-attention / --use-pytorch-cross-attention."""
        mm = self.mm
        if getattr(mm, "sage_attention_enabled", lambda: False)():
            return "sage"
        if getattr(mm, "flash_attention_enabled", lambda: False)():
            return "flash"
        args = getattr(importlib.import_module("comfy.cli_args"), "args", None)
        return "sdpa" if getattr(args, "use_pytorch_cross_attention", False) else None

    def fused_rope(self) -> Any:
        """comfy-kitchen's ``apply_rope1`` as ComfyUI configured it (``comfy.quant_ops.ck``), if present:
        native Wan's RoPE kernel, one pass over q or k instead of four."""
        try:
            return importlib.import_module("comfy.quant_ops").ck.apply_rope1
        except Exception:  # an older ComfyUI without comfy-kitchen
            return None

    def is_interrupt(self, exc: BaseException) -> bool:
        return isinstance(exc, self.mm.InterruptProcessingException)

    def wrap_video_file(self, path: str) -> Any:
        try:
            from comfy_api.latest import InputImpl  # native VIDEO: SaveVideo / GetVideoComponents
            return InputImpl.VideoFromFile(path)
        except ImportError:  # older ComfyUI without the VIDEO type
            return VideoFile(path)


class Progress(Protocol):
    """``update(done, preview=None)``: ``done`` of ``total`` units; ``preview`` a PIL image or None."""

    total: int

    def update(self, done: int, preview: Any = None) -> None: ...

    def close(self) -> None: ...


class TqdmProgress:
    def __init__(self, total: int):
        from tqdm.auto import tqdm

        self.total = total
        self.bar = tqdm(total=total, desc="InfiniteTalk", leave=False, disable=None)

    def update(self, done: int, preview: Any = None) -> None:
        self.bar.n = min(done, self.total)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


class ComfyProgress:
    def __init__(self, bar, host: ComfyHost):
        self.bar, self.host, self.total = bar, host, bar.total

    def update(self, done: int, preview: Any = None) -> None:
        shown = ("JPEG", preview, 512) if preview is not None else None
        self.bar.update_absolute(min(done, self.total), self.total, shown)
        self.host.check_interrupt()  # throttled bar updates skip the server's own check

    def close(self) -> None:
        return None


@dataclass(frozen=True)
class VideoFile:
    """A finished video on disk: what Video Combine returns when ComfyUI's VIDEO type is absent."""

    path: str

    def get_stream_source(self) -> str:  # the name ComfyUI's VideoInput uses for "where the bytes are"
        return self.path


_HOST: TorchHost | None = None


def _comfy_modules() -> tuple[Any, Any] | None:
    if os.environ.get(HOST_ENV, "").lower() == "torch":
        return None
    try:
        mm = importlib.import_module("comfy.model_management")
        folder_paths = importlib.import_module("folder_paths")
    except ImportError:
        return None
    return mm, folder_paths


def get_host() -> TorchHost:
    """ComfyHost when running inside ComfyUI, else TorchHost (decided once per process)."""
    global _HOST
    if _HOST is None:
        found = _comfy_modules()
        _HOST = ComfyHost(*found) if found else TorchHost()
        log.debug("InfiniteTalk host: %s", _HOST.name)
    return _HOST


def set_host(host: TorchHost | None) -> None:
    """Replace the process-wide host (tests; ``None`` re-detects on next use)."""
    global _HOST
    _HOST = host
