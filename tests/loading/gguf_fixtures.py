"""Tiny GGUF files in the real key layout of city96's Wan GGUFs (and Kijai's InfiniteTalk GGUFs).

Written with the ``gguf`` package's own ``GGUFWriter``. Type rules as city96's tools (convert.py, the
llama.cpp patch and fix_5d_tensors.py): 1-D tensors, tensors of <= 1024 elements and ``.modulation`` in
F32; the 5-D ``patch_embedding.weight`` as an F32 5-D tensor; text/time embeddings, time projection,
img_emb and head left in the source float type (F16 here); every other 2-D weight quantized, unless its
rows are not a whole number of blocks (llama.cpp then falls back to F16).

``gguf.quants.quantize`` makes F16/BF16/Q8_0/Q4_0/Q4_1/Q5_0/Q5_1; it cannot make K-quants, so
``quantize`` below has simple (valid, not optimal) K-quantizers; their bytes are checked against
``gguf.quants.dequantize`` in tests/model/test_gguf_dequant.py like every other type.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from infinitetalk_core.stream.standins import tiny_dit, tiny_dit_config

KEEP_FLOAT = ("modulation", "patch_embedding.", "text_embedding.", "time_projection.", "time_embedding.",
              "img_emb.", "head.")
CONFIG = tiny_dit_config(dim=256)  # K-quant rows need 256 elements


def _f16(x: np.ndarray) -> np.ndarray:
    """float32 [n] -> its fp16 bytes [n, 2]."""
    return x.astype(np.float16).view(np.uint8).reshape(-1, 2)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a), where=b != 0)


def _k_affine(x: np.ndarray, levels: int) -> tuple[np.ndarray, ...]:
    """Super-blocks [n, 8, 32] -> (d, dmin, 6-bit scales [n, 8], mins [n, 8], q [n, 8, 32])."""
    lo, hi = np.minimum(x.min(-1), 0), x.max(-1)
    scale, mn = (hi - lo) / levels, -lo
    d = (scale.max(-1) / 63).astype(np.float16).astype(np.float32)
    dmin = (mn.max(-1) / 63).astype(np.float16).astype(np.float32)
    sc = np.clip(np.round(_safe_div(scale, d[:, None])), 0, 63)
    m = np.clip(np.round(_safe_div(mn, dmin[:, None])), 0, 63)
    q = np.round(_safe_div(x + (dmin[:, None] * m)[..., None], (d[:, None] * sc)[..., None]))
    return d, dmin, sc.astype(np.uint8), m.astype(np.uint8), np.clip(q, 0, levels).astype(np.uint8)


def _pack_k_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """8 scales and 8 mins of 6 bits -> the 12 bytes of Q4_K/Q5_K."""
    low = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    mid = (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6)
    high = (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)
    return np.concatenate([low, mid, high], axis=1).astype(np.uint8)


def _k_nibbles(q: np.ndarray) -> np.ndarray:
    """q [n, 8, 32] (< 16) -> 128 bytes: chunk c = sub-block 2c | sub-block 2c+1 << 4."""
    return (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(len(q), 128)


def _q4_k(x: np.ndarray) -> np.ndarray:
    d, dmin, sc, m, q = _k_affine(x.reshape(-1, 8, 32), 15)
    return np.concatenate([_f16(d), _f16(dmin), _pack_k_scales(sc, m), _k_nibbles(q)], axis=1)


def _q5_k(x: np.ndarray) -> np.ndarray:
    d, dmin, sc, m, q = _k_affine(x.reshape(-1, 8, 32), 31)
    qh = sum(((q[:, s] >> 4) & 1) << s for s in range(8)).astype(np.uint8)  # [n, 32]
    return np.concatenate([_f16(d), _f16(dmin), _pack_k_scales(sc, m), qh, _k_nibbles(q & 0x0F)], axis=1)


def _q6_k(x: np.ndarray) -> np.ndarray:
    g = x.reshape(-1, 16, 16)
    scale = np.abs(g).max(-1) / 32
    d = (np.abs(scale).max(-1) / 127).astype(np.float16).astype(np.float32)
    sc = np.clip(np.round(_safe_div(scale, d[:, None])), -128, 127)
    q = np.round(_safe_div(g, (d[:, None] * sc)[..., None]))
    q = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(-1, 2, 4, 32)  # [n, half, quarter, l]
    first = (q[:, :, 0] & 15) | ((q[:, :, 2] & 15) << 4)  # ql[l]: elements l and l + 64 of each half
    second = (q[:, :, 1] & 15) | ((q[:, :, 3] & 15) << 4)  # ql[l + 32]: elements l + 32 and l + 96
    ql = np.concatenate([first, second], 2)
    qh = sum((q[:, :, j] >> 4) << (2 * j) for j in range(4)).astype(np.uint8)
    n = len(q)
    scales = sc.astype(np.int8).view(np.uint8)
    return np.concatenate([ql.reshape(n, 128), qh.reshape(n, 64), scales, _f16(d)], 1)


K_QUANTIZERS = {"Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}


def quantize(values: np.ndarray, qtype: str) -> np.ndarray:
    """float32 [..., cols] -> GGUF bytes [..., row bytes] of ``qtype`` (gguf's quantizer where it has one)."""
    if qtype not in K_QUANTIZERS:
        return gguf.quants.quantize(values.astype(np.float32), GGMLQuantizationType[qtype])
    rows = values.reshape(-1, values.shape[-1]).astype(np.float32)
    blocks = K_QUANTIZERS[qtype](rows.reshape(-1, 256))
    return blocks.reshape(*values.shape[:-1], -1)


def reference_dequantize(data: np.ndarray, qtype: str) -> np.ndarray:
    """The gguf package's numpy dequantization (the truth the torch code is held against)."""
    return gguf.quants.dequantize(data, GGMLQuantizationType[qtype]).astype(np.float32)


def random_blocks(qtype: str, n_blocks: int, seed: int = 0, scale: float = 0.05) -> np.ndarray:
    """``n_blocks`` random but valid blocks [n_blocks, block bytes]: random bits, finite fp16 scales."""
    rng = np.random.default_rng(seed)
    size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]][1]
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for start in HALF_OFFSETS[qtype]:
        raw[:, start : start + 2] = _f16(rng.uniform(-scale, scale, n_blocks).astype(np.float32))
    return raw


HALF_OFFSETS = {"Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q4_K": [0, 2],
                "Q5_K": [0, 2], "Q6_K": [208], "Q3_K": [108], "Q2_K": [80, 82]}


def file_type(key: str, value: torch.Tensor, qtype: str, keep_float: tuple[str, ...] = KEEP_FLOAT) -> str:
    """The GGML type city96's tools give tensor ``key`` in a ``qtype`` file (see the module docstring)."""
    if value.dim() == 1 or value.numel() <= 1024 or "modulation" in key or value.dim() > 2:
        return "F32"
    if any(key.startswith(k) or f".{k}" in key for k in keep_float) or qtype in ("F16", "BF16"):
        return qtype if qtype in ("F16", "BF16") else "F16"
    block = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]][0]
    return qtype if value.shape[-1] % block == 0 else "F16"


def write_gguf(path: Path, state: dict[str, torch.Tensor], types: dict[str, str], arch: str | None = "wan",
               file_type_id: int | None = None, raw: dict[str, np.ndarray] | None = None,
               arrays: dict[str, list[int]] | None = None) -> Path:
    """A GGUF with ``state``'s tensors as ``types`` says (``raw``: ready-made bytes for some keys;
    ``arrays``: extra INT32-array metadata such as ``comfy.gguf.orig_shape.<name>``)."""
    writer = gguf.GGUFWriter(path=None, arch=arch or "wan")
    if arch is None:
        writer.kv_data[0].pop("general.architecture", None)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if file_type_id is not None:
        writer.add_file_type(file_type_id)
    for key, values in (arrays or {}).items():
        writer.add_array(key, values)
    for key, value in state.items():
        qtype, data = types[key], (raw or {}).get(key)
        if data is None:
            data = quantize(value.float().numpy(), qtype) if qtype != "F32" else value.float().numpy()
        writer.add_tensor(key, data, raw_dtype=GGMLQuantizationType[qtype])
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_state(seed: int = 0, config=CONFIG) -> dict[str, torch.Tensor]:
    """The seeded tiny InfiniteTalk DiT's float32 state dict (real key names)."""
    return {k: v.clone() for k, v in tiny_dit(seed, config).state_dict().items()}


def dequantized_state(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a GGUF as float32 via the gguf package (the safetensors twin of its values)."""
    reader = gguf.GGUFReader(path)
    out = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        values = reference_dequantize(np.array(t.data), t.tensor_type.name)
        out[t.name] = torch.from_numpy(values.reshape(shape).copy())
    del reader
    return out


def forward_inputs(config=CONFIG, seed: int = 0) -> dict:
    """One small forward call's inputs for ``config`` (as the loading tests', two feature layers)."""
    from tests.loading.conftest import forward_inputs as loading_forward_inputs

    return loading_forward_inputs(config, seed, audio_layers=2)
