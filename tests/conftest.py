"""Shared test fixtures: where ../shared (golden fixtures, manifests) lives, and torch settings."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("INFINITETALK_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden"
MANIFESTS = SHARED / "manifests"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.skip(f"golden fixtures not found at {GOLDEN} (set INFINITETALK_SHARED)")
    return GOLDEN


@pytest.fixture(scope="session")
def manifests_dir() -> Path:
    if not MANIFESTS.is_dir():
        pytest.skip(f"manifests not found at {MANIFESTS} (set INFINITETALK_SHARED)")
    return MANIFESTS
