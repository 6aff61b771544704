"""A real ComfyUI server with this pack and tiny models (skipped unless COMFYUI_DIR and COMFYUI_PYTHON)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[2]
COMFY_DIR, COMFY_PYTHON = os.environ.get("COMFYUI_DIR"), os.environ.get("COMFYUI_PYTHON")
TEXT_DIM, CLIP_DIM = 768, 1024  # CLIP-L text tokens and ViT-L vision tokens (see make_native_models.py)

pytestmark = pytest.mark.comfyui


def pytest_collection_modifyitems(items):
    if COMFY_DIR and COMFY_PYTHON:
        return
    skip = pytest.mark.skip(reason="set COMFYUI_DIR and COMFYUI_PYTHON to run the real-ComfyUI tests")
    for item in items:
        if "tests/comfyui" in str(item.fspath):
            item.add_marker(skip)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tiny_dit(models: Path) -> None:
    sys.path.insert(0, str(REPO))
    try:
        from infinitetalk_core.model.config import AudioConfig, DiTConfig
        from infinitetalk_core.model.dit import InfiniteTalkDiT
        from infinitetalk_core.model.layouts import is_audio_key
    finally:
        sys.path.remove(str(REPO))
    audio = AudioConfig(feature_dim=2 * 32, intermediate_dim=32, output_dim=32, context_tokens=4)
    config = DiTConfig(dim=256, ffn_dim=256, num_layers=1, num_heads=2, text_dim=TEXT_DIM, clip_dim=CLIP_DIM,
                       audio=audio)
    gen = torch.Generator().manual_seed(7)
    state = {k: torch.randn(v.shape, generator=gen) * 0.05
             for k, v in InfiniteTalkDiT(config, device="meta").state_dict().items()}
    (models / "diffusion_models").mkdir(parents=True, exist_ok=True)
    (models / "model_patches").mkdir(parents=True, exist_ok=True)
    save_file({k: v for k, v in state.items() if not is_audio_key(k)}, models / "diffusion_models" / "tiny_wan.safetensors")
    save_file({k: v for k, v in state.items() if is_audio_key(k)}, models / "model_patches" / "tiny_it.safetensors")
    base = {k: v for k, v in state.items() if not is_audio_key(k)}
    save_file(scaled_fp8(base), models / "diffusion_models" / "tiny_wan_fp8_scaled.safetensors")
    (models / "loras").mkdir(parents=True, exist_ok=True)
    save_file(lightx2v_lora(base, gen), models / "loras" / LORA_FILE)


LORA_FILE = "tiny_lightx2v_rank4.safetensors"
LORA_MODULES = ("blocks.0.self_attn.q", "blocks.0.cross_attn.o", "blocks.0.ffn.0", "blocks.0.ffn.2")


def scaled_fp8(state: dict) -> dict:
    """ComfyUI "scaled fp8" layout: 2-D weights as e4m3fn with a per-tensor fp32 ``scale_weight``."""
    out = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for key, t in state.items():
        if key.endswith(".weight") and t.dim() == 2:
            scale = t.abs().max() / 448.0
            out[key] = (t / scale).to(torch.float8_e4m3fn)
            out[key.removesuffix("weight") + "scale_weight"] = scale.reshape(()).float()
        else:
            out[key] = t.half()
    return out


def lightx2v_lora(state: dict, gen: torch.Generator, rank: int = 4, alpha: float = 8.0) -> dict:
    """lightx2v layout: ``diffusion_model.<m>.lora_down/lora_up.weight`` + ``.alpha`` (+ ``.diff_b``)."""
    out = {}
    for m in LORA_MODULES:
        rows, cols = state[m + ".weight"].shape
        out[f"diffusion_model.{m}.lora_down.weight"] = (torch.randn(rank, cols, generator=gen) * 0.1).to(torch.bfloat16)
        out[f"diffusion_model.{m}.lora_up.weight"] = (torch.randn(rows, rank, generator=gen) * 0.1).to(torch.bfloat16)
        out[f"diffusion_model.{m}.alpha"] = torch.tensor(alpha)
    for m in LORA_MODULES[::2]:
        out[f"diffusion_model.{m}.diff_b"] = (torch.randn(state[m + ".bias"].shape, generator=gen) * 0.05).to(torch.bfloat16)
    return out


@pytest.fixture(scope="session")
def native_models(tmp_path_factory) -> Path:
    """Tiny/small files ComfyUI's native loaders accept (cached in $INFINITETALK_TEST_CACHE if set)."""
    root = Path(os.environ.get("INFINITETALK_TEST_CACHE") or tmp_path_factory.mktemp("native")) / "native_models"
    out = subprocess.run([COMFY_PYTHON, str(Path(__file__).with_name("make_native_models.py")), COMFY_DIR, str(root)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return root


@pytest.fixture(scope="session")
def server(tmp_path_factory, native_models, golden_dir):
    base = tmp_path_factory.mktemp("comfy")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "infinitetalk_dubbing").symlink_to(REPO, target_is_directory=True)
    models = base / "models"
    for sub in ("vae", "text_encoders", "clip_vision"):
        (models / sub).mkdir(parents=True)
        for f in (native_models / sub).iterdir():
            (models / sub / f.name).symlink_to(f)
    write_tiny_dit(models)
    shutil.copytree(golden_dir / "audio" / "wav2vec2_tiny", models / "audio_encoders" / "tiny_wav2vec2")
    port = _free_port()
    log = open(base / "server.log", "w")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        [COMFY_PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
         "--disable-api-nodes", "--database-url", "sqlite:///:memory:", "--base-directory", str(base)],
        cwd=COMFY_DIR, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(360):  # 11-16 s on an idle machine; minutes on a loaded one
            try:
                urllib.request.urlopen(url + "/system_stats", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.5)
        else:
            pytest.fail("ComfyUI did not start")
        assert proc.poll() is None, (base / "server.log").read_text()[-3000:]
        yield {"url": url, "base": base, "log": base / "server.log", "proc": proc}
    finally:
        proc.terminate()  # the server we started, by its handle
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.load(r)
