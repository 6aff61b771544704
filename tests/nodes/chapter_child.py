"""Render one chapter of the chapter test's job in a process of its own (tests/nodes/test_chapters.py):
``python chapter_child.py CHAPTER OUT.npy`` with INFINITETALK_MODELS_DIR / INFINITETALK_OUTPUT_DIR set to
the parent's folders (the tiny models are already there; the job folders are shared)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pack_loader import load_pack, sibling_module  # noqa: E402


def main(chapter: int, out: str) -> None:
    pack = load_pack()
    chapters_test = sibling_module(__file__, "test_chapters")
    graph = chapters_test.load_graph(pack)
    handle = chapters_test.render(graph, job_name="farm", chapter=chapter)[0]
    np.save(out, np.concatenate(list(handle.iter_uint8(64))))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
