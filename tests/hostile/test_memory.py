"""L. Memory: an extreme-aspect image at auto_480 must not allocate gigabytes; hashing a long feature tensor
(two hours of audio) must stream it instead of copying it. Measured as peak RSS in a fresh subprocess."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import hostile_harness as hh


@pytest.fixture(scope="module")
def probes(pack):
    import os

    # large allocations straight from mmap and back to the OS when freed: we measure what the code holds,
    # not what glibc's heap keeps cached
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="0")
    proc = subprocess.run([sys.executable, str(hh.REPO / "tests" / "hostile" / "memory_probe.py"), "1024"],
                          capture_output=True, text=True, timeout=300, cwd=str(hh.REPO), env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, f"memory probe failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("probe", ["image_10000x10", "image_10x10000"])
def test_extreme_aspect_image_stays_small(probe, probes):
    res = probes[probe]
    if "error" in res:
        hh.assert_coded(res["error"].split(": ", 1)[1], "E_INPUT_VALIDATION", "aspect", "size", "image")
    assert res["extra_mb"] < 300, f"{probe} at auto_480 peaked {res['extra_mb']:.0f} MB above its start"


@pytest.mark.parametrize("probe", ["hash_contiguous", "hash_noncontiguous"])
def test_hashing_a_long_feature_tensor_does_not_copy_it(probe, probes):
    res = probes[probe]
    assert "error" not in res, res["error"]
    assert res["extra_mb"] < 100, f"{probe}: hashing peaked {res['extra_mb']:.0f} MB above the tensor itself"


def test_hash_of_a_view_equals_hash_of_its_copy(probes):
    assert probes["hash_view_equals_copy"]["value"] is True
