"""Our safetensors reader agrees with the safetensors library, for every dtype, and finds shards."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from infinitetalk_core.errors import PipelineLoadError
from infinitetalk_core.model.checkpoint import (
    SAFETENSORS_DTYPES,
    iter_tensors,
    read_header,
    resolve_checkpoint_files,
)


def test_every_dtype_reads_like_the_library(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for name, dtype in SAFETENSORS_DTYPES.items():
        base = torch.randn(3, 5, generator=g) * 10
        tensors[name] = base > 0 if dtype == torch.bool else base.to(dtype)
    tensors["scalar"] = torch.tensor(3.5)
    tensors["empty_marker"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    path = tmp_path / "all.safetensors"
    save_file(tensors, path, metadata={"format": "pt"})
    header = read_header(path)
    assert header.metadata == {"format": "pt"} and header.entries["BF16"].dtype == "BF16"
    assert header.entries["scalar"].shape == () and header.entries["F8_E4M3"].shape == (3, 5)
    ours, theirs = dict(iter_tensors(header)), load_file(path)
    assert set(ours) == set(theirs)
    for k in theirs:
        assert ours[k].dtype == theirs[k].dtype and ours[k].shape == theirs[k].shape
        assert torch.equal(ours[k].reshape(-1).view(torch.uint8), theirs[k].reshape(-1).view(torch.uint8)), k


def test_pickle_header_and_tensors(tmp_path):
    state = {"a": torch.randn(2, 3), "b": torch.arange(4)}
    torch.save(state, tmp_path / "w.bin")
    header = read_header(tmp_path / "w.bin")
    assert (
        header.container == "pickle"
        and header.entries["a"].dtype == "F32"
        and header.entries["b"].shape == (4,)
    )
    assert all(torch.equal(t, state[k]) for k, t in iter_tensors(header))


def test_folder_resolution(tmp_path):
    save_file({"a": torch.zeros(1)}, tmp_path / "one.safetensors")
    assert resolve_checkpoint_files(tmp_path) == [tmp_path / "one.safetensors"]
    save_file({"b": torch.zeros(1)}, tmp_path / "two.safetensors")
    with pytest.raises(PipelineLoadError, match="2 .safetensors files and no|0 shard indexes and 2"):
        resolve_checkpoint_files(tmp_path)
    assert resolve_checkpoint_files([tmp_path / "one.safetensors", tmp_path / "two.safetensors"]) == [
        tmp_path / "one.safetensors",
        tmp_path / "two.safetensors",
    ]


def test_header_size_mismatch_is_corrupt(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(4)}, path)
    data = bytearray(path.read_bytes())
    data[8:] = data[8:].replace(b"[0,16]", b"[0,12]")
    path.write_bytes(bytes(data))
    with pytest.raises(PipelineLoadError, match="should take 16 bytes but the header gives 12"):
        read_header(path)
