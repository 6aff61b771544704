"""Run by test_memory.py in a fresh interpreter: peak resident memory of hostile-but-cheap operations.

Prints one JSON object: for each probe, the extra peak RSS (MB) above the RSS just before it (the peak is
reset through /proc/self/clear_refs before each probe), or the error it raised. RLIMIT_AS caps the process
so a runaway allocation fails instead of eating the machine.
"""
from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hostile_harness as hh  # noqa: E402


def _status(key: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    raise KeyError(key)


def _measure(fn) -> dict:
    import gc

    gc.collect()
    open("/proc/self/clear_refs", "w").write("5")
    before = _status("VmRSS")
    try:
        value = fn()
    except BaseException as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"[:400], "extra_mb": _status("VmHWM") - before}
    return {"extra_mb": _status("VmHWM") - before, "value": value}


def _least(fn) -> dict:
    """The smaller of two measurements (the peak is a high-water mark: one noisy run must not decide)."""
    runs = [_measure(fn) for _ in range(2)]
    return min(runs, key=lambda r: r["extra_mb"])


def main() -> None:
    import torch

    torch.set_num_threads(1)
    pack = hh.load_pack()
    host = hh.sub("infinitetalk_core.stream.host")
    run = hh.sub("nodes.run")
    nodes = pack.NODE_CLASS_MAPPINGS
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    vm = _status("VmSize")
    cap = int((vm + 3 * size_mb + 1500) * 1024 * 1024)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    out = {}

    # 1 GB of float32 "features" ([T, L, C] like two hours of wav2vec2 output), resident before measuring
    big = torch.ones(size_mb * 1024 * 1024 // 4 // (12 * 768), 12, 768)
    out["hash_contiguous"] = _least(lambda: host.tensor_digest(big))
    small = torch.arange(24.0).reshape(2, 3, 4)
    out["hash_view_equals_copy"] = {"value": host.tensor_digest(small.transpose(0, 2)) ==
                                    host.tensor_digest(small.transpose(0, 2).contiguous())}
    del big
    half = torch.ones(size_mb // 2 * 1024 * 1024 // 4 // 768, 768)
    view = half.t()  # not contiguous: hashing it must not materialise a copy
    out["hash_noncontiguous"] = _least(lambda: host.tensor_digest(view))
    del half, view

    def image_path(height, width):
        image = torch.rand(1, height, width, 3)

        def go():
            refs, first = nodes["InfiniteTalkReferenceSampler"]().describe("chunk_start", "hold", 25.0, image=image)
            size, _ = run.target_size({"size": "auto_480"}, refs)
            source = refs.open(size)
            frame = source.frame(0)
            source.close()
            return [list(size), list(frame.shape)]

        return go

    out["image_10000x10"] = _measure(image_path(10000, 10))
    out["image_10x10000"] = _measure(image_path(10, 10000))
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
