"""GGUF headers -> the same ``FileHeader`` / ``TensorEntry`` the safetensors reader gives.

The ``gguf`` package (llama.cpp's reader) parses the header: metadata and tensor infos. It memory-maps the
file, but only the header pages are touched here and the reader is dropped before returning; tensor data
is later read with ``readinto`` by ``checkpoint.iter_tensors`` like any safetensors tensor, so streaming
a 10 GB GGUF keeps host memory at one tensor, not the whole mapped file.

What a ``TensorEntry`` of a GGUF says:

- ``dtype``: the GGML type name: F32 / F16 / BF16 (plain, read as torch tensors) or a block type (Q8_0,
  Q4_K, ...: read as raw uint8 bytes, see ``gguf_quants``).
- ``shape``: the logical torch shape: the file's dimensions reversed (GGML lists the innermost first), or
  ``comfy.gguf.orig_shape.<name>`` when city96's converter stored a reshaped tensor (an INT32 array).
  city96's Wan files write 1-D tensors, small tensors and the ``.modulation`` parameters in F32 and add
  the 5-D ``patch_embedding.weight`` back as a plain F32 5-D tensor (tools/fix_5d_tensors.py).
- ``start`` / ``end``: absolute byte offsets of the tensor data.

``FileHeader.metadata`` keeps the facts the identification needs: ``general.architecture`` ("wan" in
city96's files), ``general.file_type`` (e.g. "Q4_K_M") and ``general.quantization_version``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import PipelineLoadError
from .checkpoint import DOWNLOAD_AGAIN, SAFETENSORS_DTYPES, FileHeader, TensorEntry

log = logging.getLogger(__name__)

ARCH_KEY = "general.architecture"
FILE_TYPE_KEY = "general.file_type"
QUANT_VERSION_KEY = "general.quantization_version"
ORIG_SHAPE_PREFIX = "comfy.gguf.orig_shape."
GGUF_MAGIC = b"GGUF"


def _gguf_module():
    try:
        import gguf
    except ImportError:
        raise PipelineLoadError(
            "reading .gguf models needs the 'gguf' Python package, which is not installed.",
            "Install it into ComfyUI's Python: python -m pip install 'gguf>=0.17' (or use a .safetensors "
            "model).",
        ) from None
    return gguf


def _open(path: Path):
    """A ``gguf.GGUFReader`` over ``path``; any parsing failure is one PipelineLoadError."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise PipelineLoadError(
            f"{path}: the file does not start with 'GGUF', so it is not a GGUF model (or it is damaged).",
            DOWNLOAD_AGAIN,
        )
    gguf = _gguf_module()
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError/IndexError/... for every kind of damage
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise PipelineLoadError(
            f"{path}: cannot be read as a GGUF file ({first}): it is truncated or damaged, or made by a "
            "GGUF writer newer than the installed gguf package.",
            DOWNLOAD_AGAIN + " If it is complete, update the package: python -m pip install -U gguf.",
        ) from None


def _field_value(reader, key: str):
    """A metadata value: str, number, or a list of them (ARRAY); None when absent or unreadable.

    Decoded from the field's ``parts``/``data`` (as city96's loader does), not ``ReaderField.contents()``,
    whose behaviour has changed between gguf releases.
    """
    gguf, field = _gguf_module(), reader.get_field(key)
    if field is None or not field.types:
        return None
    try:
        values = [field.parts[i] for i in field.data]
        if field.types[-1] == gguf.GGUFValueType.STRING:
            values = [bytes(v).decode("utf-8") for v in values]
        else:
            values = [v.tolist()[0] for v in values]
    except (IndexError, UnicodeDecodeError, AttributeError):  # unexpected layout: treat as absent
        return None
    return values if field.types[0] == gguf.GGUFValueType.ARRAY else values[0]


def _file_type_name(value) -> str | None:
    """``general.file_type`` (a llama.cpp LlamaFileType number) -> "Q4_K_M", "F16", ...; None if unknown."""
    if value is None:
        return None
    try:
        name = _gguf_module().LlamaFileType(int(value)).name
    except (ValueError, TypeError):
        return str(value)
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def _metadata(reader) -> dict[str, str]:
    values = {
        ARCH_KEY: _field_value(reader, ARCH_KEY),
        FILE_TYPE_KEY: _file_type_name(_field_value(reader, FILE_TYPE_KEY)),
        QUANT_VERSION_KEY: _field_value(reader, QUANT_VERSION_KEY),
    }
    return {k: str(v) for k, v in values.items() if v is not None}


def _logical_shape(reader, path: Path, tensor) -> tuple[int, ...]:
    """The torch shape: ``comfy.gguf.orig_shape.<name>`` if present, else the GGML dims reversed."""
    stored = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    orig = _field_value(reader, ORIG_SHAPE_PREFIX + tensor.name)
    if orig is None:
        return stored
    shape = tuple(int(d) for d in (orig if isinstance(orig, list) else [orig]))
    numel = 1
    for d in shape:
        numel *= d
    if numel != int(tensor.n_elements):
        raise PipelineLoadError(
            f"{path}: tensor '{tensor.name}' has {tensor.n_elements} elements but its original shape "
            f"metadata says {list(shape)}: the file is damaged.",
            DOWNLOAD_AGAIN,
        )
    return shape


def _entry(reader, path: Path, tensor, size: int) -> TensorEntry:
    name, dtype = tensor.name, tensor.tensor_type.name
    shape = _logical_shape(reader, path, tensor)
    start, end = int(tensor.data_offset), int(tensor.data_offset) + int(tensor.n_bytes)
    if end > size:
        raise PipelineLoadError(
            f"{path}: the file is truncated: tensor '{name}' needs bytes up to {end} but the file has "
            f"only {size} bytes.",
            DOWNLOAD_AGAIN,
        )
    block = int(_gguf_module().GGML_QUANT_SIZES[tensor.tensor_type][0])
    if dtype not in SAFETENSORS_DTYPES and int(tensor.shape[0]) % block:
        raise PipelineLoadError(
            f"{path}: tensor '{name}' ({dtype}) has rows of {int(tensor.shape[0])} elements, not a whole "
            f"number of {block}-element blocks: the file is damaged.",
            DOWNLOAD_AGAIN,
        )
    return TensorEntry(name, dtype, shape, start, end)


def read_gguf_header(path: str | Path) -> FileHeader:
    """Tensor names, GGML types, logical shapes and offsets of a ``.gguf`` file (no tensor data read).

    Raises PipelineLoadError for a file that is not GGUF, truncated or damaged, or when the ``gguf``
    package is missing.
    """
    path = Path(path)
    size = path.stat().st_size
    reader = _open(path)
    try:
        entries = {t.name: _entry(reader, path, t, size) for t in reader.tensors}
        metadata = _metadata(reader)
    finally:
        del reader  # drop the memory map now: nothing below keeps a view into it
    return FileHeader(path, entries, "gguf", metadata)
