"""Checkpoint files without loading them whole: safetensors headers, shard indexes, one tensor at a time.

We read safetensors ourselves instead of through ``safe_open``: a memory map keeps every page it touched
in the process's resident set until the file is closed, so streaming a 10 GB fp32 shard that way costs
10 GB of RSS. Reading each tensor with ``readinto`` into its own buffer keeps peak host memory at the
converted model plus the largest single tensor, and lets us say exactly how a file is truncated.
``.pth`` / ``.bin`` files only go through ``torch.load(weights_only=True)`` (no code execution).
``.gguf`` headers come from ``gguf_reader`` (the ``gguf`` package); their data is read here like
safetensors data, block-quantized tensors as their raw bytes (uint8).
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import torch

from ..errors import PipelineLoadError

log = logging.getLogger(__name__)

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in SAFETENSORS_DTYPES.items()}
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
GGUF_SUFFIXES = (".gguf",)
MAX_HEADER_BYTES = 100 * 2**20  # the safetensors format's own limit

DOWNLOAD_AGAIN = "Download the file again: the copy on disk is incomplete or damaged."


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as a file describes it. ``start``/``end`` are absolute byte offsets (0 when unknown)."""

    name: str
    dtype: str  # safetensors spelling: F32, BF16, F8_E4M3, ...; GGUF block types by GGML name: Q4_K, ...
    shape: tuple[int, ...]
    start: int = 0
    end: int = 0


@dataclass(frozen=True)
class FileHeader:
    """What a checkpoint file holds, read without its tensor data."""

    path: Path
    entries: Mapping[str, TensorEntry]
    container: str  # "safetensors" | "pickle" | "gguf"
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def dtypes(self) -> tuple[str, ...]:
        return tuple(sorted({e.dtype for e in self.entries.values()}))


def _load_error(path: Path, what: str, fix: str = DOWNLOAD_AGAIN) -> PipelineLoadError:
    return PipelineLoadError(f"{path}: {what}", fix)


def read_safetensors_header(path: str | Path) -> FileHeader:
    """Parse a safetensors header and check that the data it describes fits in the file."""
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        raise _load_error(
            path, f"the file is {size} bytes long, too short for a safetensors file (empty or truncated)."
        )
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > MAX_HEADER_BYTES:
            raise _load_error(
                path,
                f"the first 8 bytes announce a {header_len}-byte header, so this is not a "
                "safetensors file (or its start is damaged).",
                "Check that the file really is a .safetensors model; re-download it if so.",
            )
        if 8 + header_len > size:
            raise _load_error(
                path,
                f"the header says it is {header_len} bytes but the file is only {size} bytes "
                "long: the file is truncated.",
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise _load_error(
            path,
            f"the safetensors header is not valid JSON ({e}): the file is corrupt or not a safetensors file.",
        ) from None
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    entries = {name: _entry(path, name, info, data_start, size) for name, info in header.items()}
    return FileHeader(path, entries, "safetensors", metadata)


def _entry(path: Path, name: str, info: object, data_start: int, size: int) -> TensorEntry:
    try:
        dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
    except (TypeError, KeyError, ValueError):
        raise _load_error(
            path, f"header entry '{name}' lacks dtype/shape/data_offsets: the file is corrupt."
        ) from None
    if dtype not in SAFETENSORS_DTYPES:
        raise PipelineLoadError(
            f"{path}: tensor '{name}' has dtype {dtype}, which this loader does not read.",
            "Use an fp32, fp16, bf16 or fp8 (e4m3fn/e5m2) safetensors file.",
        )
    numel = 1
    for d in shape:
        numel *= d
    if end - begin != numel * SAFETENSORS_DTYPES[dtype].itemsize:
        raise _load_error(
            path,
            f"tensor '{name}' {dtype}{list(shape)} should take "
            f"{numel * SAFETENSORS_DTYPES[dtype].itemsize} bytes but the header gives {end - begin}: "
            "the header is corrupt.",
        )
    if data_start + end > size:
        raise _load_error(
            path,
            f"the file is truncated: tensor '{name}' needs bytes up to {data_start + end} but "
            f"the file has only {size} bytes.",
        )
    return TensorEntry(name, dtype, shape, data_start + begin, data_start + end)


def torch_load_safely(path: Path, what: str = "checkpoint"):
    """``torch.load(weights_only=True)``, memory-mapped for zip files, plain for legacy (non-zip) ones.

    A pickle that needs more than tensors is refused in one line (loading it could run code); a file
    torch cannot read at all is reported as damaged. Never suggests ``weights_only=False``.
    """
    import pickle

    path = Path(path)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) pickle
    except pickle.UnpicklingError as e:
        # the safe loader met something that is not a plain tensor: Python objects (could run code) or,
        # indistinguishably, damaged pickle bytes; either way it is not loaded
        unsafe = "global" in str(e).lower()
        raise PipelineLoadError(
            f"{path.name} ({what}) holds {'Python objects besides tensors' if unsafe else 'pickle data that is not plain tensors'}"
            f"; loading it could run code, so it was refused for safety{'' if unsafe else ' (or the file is damaged)'}.",
            "Use the .safetensors version of this file" + ("." if unsafe else ", or download it again."),
        ) from None
    except Exception as e:  # zip/EOF/format errors of many types: all mean "cannot read this file"
        raise _unreadable(path, what, e) from None


def _unreadable(path: Path, what: str, e: Exception) -> PipelineLoadError:
    import pickle

    first = (str(e).strip().splitlines() or [""])[0][:160]
    if isinstance(e, pickle.UnpicklingError) or "weights_only" in first:  # torch's text advises unsafe loading
        first = "its pickle data is damaged"
    return PipelineLoadError(
        f"{path.name} ({what}) cannot be read as a PyTorch checkpoint ({first or 'it ends too early'}).",
        "It is truncated or not a checkpoint: download it again, or use its .safetensors version.",
    )


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    """A torch pickle file as a plain state dict (see ``torch_load_safely``)."""
    obj = torch_load_safely(path)
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PipelineLoadError(
            f"{path}: the pickle does not hold a plain state dict of tensors.",
            "Use a checkpoint that is a state dict (or its .safetensors version).",
        )
    return obj


def read_pickle_header(path: str | Path) -> FileHeader:
    """Names, dtypes and shapes of a ``.pth``/``.bin`` state dict (memory-mapped, so data is not read)."""
    path = Path(path)
    state = _load_pickle(path)
    entries = {
        k: TensorEntry(k, DTYPE_NAMES.get(v.dtype, str(v.dtype)), tuple(v.shape)) for k, v in state.items()
    }
    return FileHeader(path, entries, "pickle")


def read_header(path: str | Path) -> FileHeader:
    """Header of one checkpoint file of either container."""
    path = Path(path)
    if not path.is_file():
        raise PipelineLoadError(
            f"no file at {path}.", "Check the path; pick the file from its ComfyUI models folder."
        )
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return read_safetensors_header(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return read_pickle_header(path)
    if path.suffix.lower() in GGUF_SUFFIXES:
        from .gguf_reader import read_gguf_header  # the gguf package is only needed for .gguf files

        return read_gguf_header(path)
    raise PipelineLoadError(
        f"{path}: unknown checkpoint format '{path.suffix}'.",
        "Use a .safetensors file (or a shard folder with its .index.json); .pth/.bin and .gguf also work.",
    )


def _read_tensor(f, entry: TensorEntry, buf: torch.Tensor) -> torch.Tensor:
    buf = buf[: entry.end - entry.start]
    f.seek(entry.start)
    got = f.readinto(memoryview(buf.numpy()))
    if got != len(buf):
        raise _load_error(
            Path(f.name), f"the file ended while reading '{entry.name}' ({got} of {len(buf)} bytes)."
        )
    if entry.dtype not in SAFETENSORS_DTYPES:  # a GGUF block-quantized tensor: its raw blocks
        return buf
    return buf.view(SAFETENSORS_DTYPES[entry.dtype]).reshape(entry.shape)


def iter_tensors(
    header: FileHeader, names: Iterable[str] | None = None, reuse_buffer: bool = False
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` one at a time (CPU, the file's dtype), in file order unless names are given.

    GGUF block-quantized tensors (``entry.dtype`` not a safetensors dtype) come as their raw bytes, 1-D
    uint8; ``gguf_quants.dequantize`` turns them into values.

    ``reuse_buffer``: read every tensor into one scratch buffer (as large as the largest tensor) that is
    overwritten at the next step, so the caller must convert or copy each tensor before asking for the
    next. It saves page-faulting a fresh buffer per tensor and keeps the peak at one tensor.
    """
    wanted = (
        list(names) if names is not None else sorted(header.entries, key=lambda n: header.entries[n].start)
    )
    if header.container == "pickle":
        state = _load_pickle(header.path)
        for name in wanted:
            yield name, state.pop(name).clone()  # clone: detach from the memory map before it closes
        return
    sizes = [header.entries[n].end - header.entries[n].start for n in wanted]
    scratch = torch.empty(max(sizes, default=0), dtype=torch.uint8) if reuse_buffer else None
    with open(header.path, "rb") as f:
        for name, size in zip(wanted, sizes):
            buf = scratch if scratch is not None else torch.empty(size, dtype=torch.uint8)
            yield name, _read_tensor(f, header.entries[name], buf)


def read_tensors(header: FileHeader, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """A few named tensors (scales, markers) as a dict."""
    return dict(iter_tensors(header, names))


def _shards_from_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as e:
        raise PipelineLoadError(f"{index}: not a readable shard index ({e}).", DOWNLOAD_AGAIN) from None
    shards = list(dict.fromkeys(weight_map.values()))
    missing = [s for s in shards if not (index.parent / s).is_file()]
    if missing:
        raise PipelineLoadError(
            f"{index.parent}: {len(missing)} of the {len(shards)} shards listed in {index.name} are missing: "
            f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}.",
            "Download every shard into the same folder (an interrupted download often leaves one out).",
        )
    return [index.parent / s for s in shards]


def resolve_checkpoint_files(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """The files behind a user's choice: one file, a shard folder / ``*.index.json``, or a list of these."""
    if isinstance(source, (list, tuple)):
        return [p for item in source for p in resolve_checkpoint_files(item)]
    path = Path(source)
    if path.name.endswith(".index.json") and path.is_file():
        return _shards_from_index(path)
    if path.is_dir():
        indexes = sorted(path.glob("*.safetensors.index.json"))
        if len(indexes) == 1:
            return _shards_from_index(indexes[0])
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in SAFETENSORS_SUFFIXES)
        if len(indexes) > 1 or len(files) != 1:
            raise PipelineLoadError(
                f"{path}: the folder has {len(indexes)} shard indexes and {len(files)} .safetensors files, "
                "so it "
                "is not clear which model to load.",
                "Pass the .safetensors file itself, or the folder's "
                "diffusion_pytorch_model.safetensors.index.json.",
            )
        return files
    if not path.exists():
        raise PipelineLoadError(
            f"no file or folder at {path}.", "Check the path; pick the file from its ComfyUI models folder."
        )
    return [path]
