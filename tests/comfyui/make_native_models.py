"""Write the smallest files ComfyUI's native loaders accept, with random weights (run with COMFYUI_PYTHON).

    $COMFYUI_PYTHON tests/comfyui/make_native_models.py COMFYUI_DIR MODELS_DIR

What ComfyUI's detection allows (comfy/sd.py, comfy/clip_vision.py at 783545f6):
- Wan 2.1 VAE: the width is read from ``decoder.head.0.gamma`` -> a genuinely tiny VAE (dim 8) works.
- umt5-xxl (CLIPLoader type "wan"): detected by ``encoder.block.23...wi_1`` with 10240 rows and built from
  a fixed config (d_model 4096, 24 layers, 5.7 B parameters): no small file is accepted. Instead the tests
  use a CLIP-L text encoder (CLIPLoader type "stable_diffusion"; also a fixed config, 123 M parameters,
  tokenizer bundled with ComfyUI), which produces CONDITIONING through the same CLIPTextEncode node; the
  tiny DiT's text width is 768 to match.
- CLIP vision: every accepted layout is a fixed config; the smallest is ViT-L/14 at 224 px (304 M
  parameters, 257 tokens x 1024) -> the tiny DiT's CLIP width is 1024.
Files are written in fp16 with the layouts ComfyUI itself produces (state dicts of its own classes).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def main(comfy_dir: str, models_dir: str) -> None:
    sys.path.insert(0, comfy_dir)
    os.chdir(comfy_dir)
    import comfy.options

    comfy.options.enable_args_parsing()  # ComfyUI reads its flags at import time: run as with --cpu
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.clip_vision
    import comfy.ldm.wan.vae
    import comfy.sd1_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    models = Path(models_dir)

    def save(module: torch.nn.Module, path: Path, strip: str = "") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {}
        for key, value in module.state_dict().items():
            if value.is_floating_point():
                # 1-D weights are norm scales -> 1; everything else small random
                value = torch.ones_like(value) if key.endswith(("gamma", "weight")) and value.ndim == 1 \
                    else torch.randn_like(value.float()) * 0.02
            state[key.removeprefix(strip)] = value.half().contiguous()
        save_file(state, str(path))

    if not (models / "vae" / "tiny_wan_vae.safetensors").exists():
        vae = comfy.ldm.wan.vae.WanVAE(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                       temperal_downsample=[False, True, True])
        save(vae, models / "vae" / "tiny_wan_vae.safetensors")
    if not (models / "text_encoders" / "clip_l_random.safetensors").exists():
        clip = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float16)
        save(clip, models / "text_encoders" / "clip_l_random.safetensors", strip="transformer.")
    if not (models / "clip_vision" / "vit_l_random.safetensors").exists():
        config = os.path.join(os.path.dirname(comfy.clip_vision.__file__), "clip_vision_config_vitl.json")
        vision = comfy.clip_vision.ClipVisionModel(config)
        save(vision.model, models / "clip_vision" / "vit_l_random.safetensors")
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
