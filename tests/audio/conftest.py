"""Fixtures for the audio tests: the golden tiny wav2vec2, golden tensors, ffmpeg-made test files."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from infinitetalk_core.audio import load_wav2vec2
from infinitetalk_core.audio.decode import ffmpeg_executable


@pytest.fixture(scope="session")
def audio_golden(golden_dir) -> dict[str, torch.Tensor]:
    return load_file(str(golden_dir / "audio" / "audio.safetensors"))


@pytest.fixture(scope="session")
def tiny_folder(golden_dir) -> Path:
    return golden_dir / "audio" / "wav2vec2_tiny"


@pytest.fixture(scope="session")
def tiny_encoder(tiny_folder):
    return load_wav2vec2(tiny_folder)


@pytest.fixture(scope="session")
def make_audio(tmp_path_factory):
    """make_audio(name, *ffmpeg output args, source=lavfi spec, seconds) -> path of a generated file."""
    folder = tmp_path_factory.mktemp("audio_files")

    def make(name: str, *args: str, source: str = "sine=frequency=440:sample_rate=44100",
             seconds: float = 1.0, extra_inputs: tuple[str, ...] = ()) -> Path:
        path = folder / name
        cmd = [ffmpeg_executable(), "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-t", str(seconds),
               "-i", source, *extra_inputs, *args, str(path)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
        return path

    return make
