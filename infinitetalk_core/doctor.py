"""``python -m infinitetalk_core.doctor [MODELS_DIR]``: which model file is which, and what is missing.

Reads safetensors / GGUF headers only (``identify_file``; no weights are loaded), so it runs in seconds
on a full 60 GB models folder. GGUF files are reported with their quantization (the dominant tensor
type, e.g. Q4_K), tensor count and any tensor type the loader cannot read. MODELS_DIR is ComfyUI's
``models`` folder (default: $INFINITETALK_MODELS_DIR, else ./models). Exit status: 0 when everything the
example workflows need is present, 1 otherwise.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import InfiniteTalkError
from .model.identify import COMFY_FOLDERS, FileIdentity, identify_file

MODEL_SUFFIXES = (".safetensors", ".sft", ".pth", ".pt", ".bin", ".ckpt", ".gguf")
REPACK = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/tree/main/split_files"
GGUF_DIT = "https://huggingface.co/city96/Wan2.1-I2V-14B-480P-gguf"
FOLDER_ALIASES = {"diffusion_models": ("diffusion_models", "unet")}  # ComfyUI reads both as one list


@dataclass(frozen=True)
class Need:
    """One file the example workflows need: its kind, folder, whether optional, and where to get it."""

    kind: str
    label: str
    required: bool
    source: str


NEEDS = (
    Need("wan_dit", "Wan2.1 I2V-14B DiT", True,
         f"{REPACK}/diffusion_models (wan2.1_i2v_480p_14B_fp16.safetensors or _fp8_e4m3fn), or a GGUF "
         f"from {GGUF_DIT} (e.g. wan2.1-i2v-14b-480p-Q4_K_M.gguf)"),
    Need("infinitetalk", "InfiniteTalk audio weights (single)", True,
         f"{REPACK}/model_patches (wan2.1_infiniteTalk_single_fp16.safetensors), or "
         "https://huggingface.co/Kijai/WanVideo_comfy/tree/main/InfiniteTalk"),
    Need("wav2vec2", "chinese-wav2vec2-base", True,
         "https://huggingface.co/Kijai/wav2vec2_safetensors (wav2vec2-chinese-base_fp16.safetensors)"),
    Need("vae", "Wan 2.1 VAE", True, f"{REPACK}/vae (wan_2.1_vae.safetensors)"),
    Need("t5", "umt5-xxl text encoder", True,
         f"{REPACK}/text_encoders (umt5_xxl_fp8_e4m3fn_scaled.safetensors or umt5_xxl_fp16)"),
    Need("clip_vision", "CLIP vision ViT-H/14", False, f"{REPACK}/clip_vision (clip_vision_h.safetensors)"),
    Need("lora", "step-distill LoRA (faster: 4-8 steps)", False,
         "https://huggingface.co/Kijai/WanVideo_comfy/tree/main/Lightx2v "
         "(lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors)"),
)


@dataclass(frozen=True)
class Finding:
    path: Path
    identity: FileIdentity | None
    error: str | None = None

    def folder_ok(self, root: Path) -> bool:
        want = self.identity.comfy_folder if self.identity else None
        folders = FOLDER_ALIASES.get(want, (want,))
        return want is None or any(f in self.path.relative_to(root).parts[:-1] for f in folders)


def model_files(root: Path) -> Iterable[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in MODEL_SUFFIXES:
            yield path


def examine(root: Path) -> list[Finding]:
    """Identify every model file below ``root`` (headers only)."""
    findings = []
    for path in model_files(root):
        try:
            findings.append(Finding(path, identify_file(path)))
        except InfiniteTalkError as exc:
            findings.append(Finding(path, None, str(exc)))
    return findings


def _describe(f: Finding) -> str:
    if f.identity is None:
        return f"unreadable: {f.error}"
    extra = " fp8-scaled" if f.identity.fp8_scaled else ""
    if f.identity.container == "gguf":
        file_type = f.identity.details.get("gguf_file_type")
        extra += f", {f.identity.tensor_count} tensors" + (f", file type {file_type}" if file_type else "")
    return f.identity.describe() + extra


def _is_usable(identity: FileIdentity, need: Need) -> bool:
    if identity.kind != need.kind or identity.details.get("gguf_unsupported_types"):
        return False
    if need.kind == "wan_dit":  # InfiniteTalk is trained on the I2V 14B model only
        return identity.variant == "i2v" and identity.size == "14B"
    return True


def report(root: Path, findings: list[Finding]) -> tuple[list[str], bool]:
    """Lines to print and whether every required file is present in the right folder."""
    lines = [f"Models folder: {root}", ""]
    for f in findings:
        rel = f.path.relative_to(root)
        where = ""
        if f.identity and f.identity.comfy_folder:
            ok = f.folder_ok(root)
            where = "ok" if ok else f"MOVE to models/{f.identity.comfy_folder}/"
        lines.append(f"  {rel}: {_describe(f)}" + (f"  [{where}]" if where else ""))
        for note in (f.identity.notes if f.identity else ()):
            lines.append(f"      note: {note}")
    lines.append("")
    complete = True
    for need in NEEDS:
        usable = [f for f in findings if f.identity and _is_usable(f.identity, need) and f.folder_ok(root)]
        folder = COMFY_FOLDERS[need.kind]
        if usable:
            lines.append(f"  found    {need.label}: {usable[0].path.relative_to(root)}")
        else:
            complete &= not need.required
            state = "MISSING " if need.required else "optional"
            lines.append(f"  {state} {need.label} -> put it in models/{folder}/ ; get it from {need.source}")
    lines.append("")
    lines.append("Everything the example workflows need is in place." if complete
                 else "Some required files are missing or misplaced (see above).")
    return lines, complete


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infinitetalk_core.doctor", description=__doc__.split("\n")[0])
    parser.add_argument("models_dir", nargs="?",
                        default=os.environ.get("INFINITETALK_MODELS_DIR", "models"),
                        help="ComfyUI's models folder (default: $INFINITETALK_MODELS_DIR or ./models)")
    args = parser.parse_args(argv)
    root = Path(args.models_dir).expanduser().resolve()
    if not root.is_dir():
        print(f"E_INPUT_VALIDATION: '{root}' is not a folder. Fix: pass ComfyUI's models folder.", file=sys.stderr)
        return 2
    lines, complete = report(root, examine(root))
    print("\n".join(lines))
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
