"""bench/dit_forward.py: its FLOP model agrees with ../shared/research/flops_calc.py; tiny preset runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from infinitetalk_core.model.config import DiTConfig

REPO = Path(__file__).resolve().parents[2]


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_module(REPO / "bench" / "dit_forward.py", "bench_dit_forward")


@pytest.mark.parametrize("size", [(480, 832, 81), (640, 640, 81), (448, 896, 33)])
def test_flop_model_matches_research_calculator(bench, golden_dir, size):
    calc_path = golden_dir.parent / "research" / "flops_calc.py"
    if not calc_path.is_file():
        pytest.skip("flops_calc.py not found")
    calc = load_module(calc_path, "flops_calc")
    h, w, frames = size
    grid = ((frames - 1) // 4 + 1, h // 16, w // 16)
    for audio in (True, False):
        cfg = DiTConfig() if audio else DiTConfig(audio=None)
        ours, theirs = bench.forward_flops(cfg, grid), calc.forward_flops(h, w, frames, audio=audio)
        assert ours["total"] == theirs["total"]
        assert ours["self_attn"] == theirs["self_attn"] and ours["linear"] == theirs["linear"]
    single = bench.forward_flops(DiTConfig(), grid)["total"]
    assert bench.forward_flops(DiTConfig(), grid, batch=3)["total"] == 3 * single
    assert bench.forward_flops(DiTConfig(), grid, speakers=2)["total"] > single  # 64 audio tokens + routing


def test_tiny_preset_runs(bench, capsys):
    bench.main(["--preset", "tiny", "--warmup", "0", "--repeats", "1", "--frames", "5", "--speakers", "2"])
    table = capsys.readouterr().out
    assert "| achieved TFLOP/s |" in table and "| peak memory GiB (process RSS) |" in table
