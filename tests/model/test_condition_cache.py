"""The prompt, CLIP and audio embeddings run once per chunk, not once per step (``ConditionCache``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from infinitetalk_core.model.condition_cache import ConditionCache
from infinitetalk_core.sampling.guidance import COND, DROP_TEXT, UNCOND
from infinitetalk_core.stream.model_fn import make_model_fn

_spec = importlib.util.spec_from_file_location("_dit_case", Path(__file__).with_name("test_dit_behaviour.py"))
dit_case = importlib.util.module_from_spec(_spec)  # its tiny model, inputs and run helper
_spec.loader.exec_module(dit_case)
STEPS, PASSES = 3, [COND, DROP_TEXT, UNCOND]


def _count_calls(model) -> dict[str, list[int]]:
    counts = {}
    for name in ("text_embedding", "img_emb", "audio_proj"):
        counts[name] = calls = [0]
        getattr(model, name).register_forward_hook(lambda *_, calls=calls: calls.__setitem__(0, calls[0] + 1))
    return counts


def _sample(batch_passes: bool):
    model, inp = dit_case.tiny_model(), dit_case.inputs()
    counts = _count_calls(model)
    model_fn = make_model_fn(model, inp["y"][0], inp["clip_fea"], inp["one"], inp["text"][0], inp["text"][1],
                             inp["masks"], batch_passes)
    outs = []
    with torch.inference_mode():
        for step in range(STEPS):
            x = inp["x"][0] * (1 + step)
            outs.append(model_fn(x, torch.tensor([900.0 - 100 * step]), PASSES))
    return outs, {k: v[0] for k, v in counts.items()}, (model, inp)


def test_embeddings_run_once_per_chunk():
    for batch_passes in (True, False):
        _, counts, _ = _sample(batch_passes)
        # two prompts (positive, negative), one CLIP, two audios (real, null): none per step
        assert counts == {"text_embedding": 2, "img_emb": 1, "audio_proj": 2}, (batch_passes, counts)


def test_cached_embeddings_give_the_uncached_outputs():
    outs, _, (model, inp) = _sample(batch_passes=True)
    null = torch.zeros_like(inp["one"])
    contexts = {COND: inp["text"][0], DROP_TEXT: inp["text"][1], UNCOND: inp["text"][1]}
    audios = {COND: inp["one"], DROP_TEXT: inp["one"], UNCOND: null}
    for step, out in enumerate(outs):
        x, t = inp["x"] * (1 + step), torch.tensor([900.0 - 100 * step])
        for name in PASSES:
            plain = dit_case.run(model, x, t, [contexts[name]], [audios[name]], inp["masks"], inp)
            torch.testing.assert_close(out[name], plain[0], atol=1e-5, rtol=1e-5)


def test_cache_recomputes_for_other_or_changed_tensors():
    cache, built = ConditionCache(), []
    a = torch.ones(3)
    build = lambda: built.append(1) or a * 2  # noqa: E731
    cache.get("text", a, build)
    cache.get("text", a, build)
    assert len(built) == 1
    cache.get("text", a.clone(), build)  # equal values, another tensor: not assumed equal
    assert len(built) == 2
    a.add_(1)  # changed in place: its version moves on
    cache.get("text", a, build)
    cache.get("image", a, build)
    assert len(built) == 4 and cache.computed == {"text": 3, "image": 1}


def test_inference_tensors_are_cached_by_identity():
    """ComfyUI makes its tensors under inference_mode: they have no version counter."""
    cache, built = ConditionCache(), []
    with torch.inference_mode():
        a = torch.ones(3)
    for _ in range(2):
        cache.get("audio", a, lambda: built.append(1) or a * 2)
    assert len(built) == 1


def test_embeddings_run_once_per_chunk_with_inference_inputs():
    model, inp = dit_case.tiny_model(), dit_case.inputs()
    counts = _count_calls(model)
    with torch.inference_mode():
        inp = {k: v.clone() if torch.is_tensor(v) else [t.clone() for t in v] for k, v in inp.items()}
        model_fn = make_model_fn(model, inp["y"][0], inp["clip_fea"], inp["one"], inp["text"][0],
                                 inp["text"][1], inp["masks"], True)
        for step in range(STEPS):
            model_fn(inp["x"][0], torch.tensor([900.0 - 100 * step]), PASSES)
    assert {k: v[0] for k, v in counts.items()} == {"text_embedding": 2, "img_emb": 1, "audio_proj": 2}
