"""The audio package stays host-independent and free of torchaudio/torchvision/librosa/pyloudnorm."""
from __future__ import annotations

import ast
from pathlib import Path

from infinitetalk_core import audio

FORBIDDEN = {"comfy", "comfy_api", "folder_paths", "server", "nodes", "torchaudio", "torchvision", "librosa",
             "pyloudnorm"}


def test_no_forbidden_imports():
    for path in Path(audio.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_bundled_config_ships_inside_the_package():
    assert (Path(audio.__file__).parent / "chinese_wav2vec2_base.json").is_file()
