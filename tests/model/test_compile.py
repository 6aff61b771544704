"""Regional compilation: same frames as eager, one set of graphs for all blocks, no recompiles over chunks."""
from __future__ import annotations

import pytest
import torch

from infinitetalk_core.errors import InputValidationError
from infinitetalk_core.model.compile import compile_blocks
from infinitetalk_core.sampling.guidance import GuidanceConfig
from infinitetalk_core.stream.generate import generate_chunks
from infinitetalk_core.stream.host import TextContexts
from infinitetalk_core.stream.plan import plan_chunks
from infinitetalk_core.stream.settings import StreamSettings
from infinitetalk_core.stream.sources import TensorReference
from infinitetalk_core.stream.standin_vae import StandInVAE
from infinitetalk_core.stream.standins import StandInImageEncoder, random_audio_features, tiny_dit, tiny_dit_config


def three_blocks(seed: int = 0):
    from dataclasses import replace

    return tiny_dit(seed, replace(tiny_dit_config(), num_layers=3))


def render(model) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 1, 32, 32, generator=g) * 2 - 1
    text = TextContexts.single(torch.randn(5, 16, generator=g), torch.randn(7, 16, generator=g))
    settings = StreamSettings(steps=2, guidance=GuidanceConfig(5.0, 4.0), seed=7, color_method="none")
    plan = plan_chunks(29, 13, 5)  # three chunks
    assert plan.num_chunks == 3
    chunks = generate_chunks(model, StandInVAE(0), plan, TensorReference(image), random_audio_features(29),
                             text, settings, image_encoder=StandInImageEncoder(16))
    return [c.frames for c in chunks]


def test_compiled_blocks_match_eager_without_recompiles():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    eager = render(three_blocks())
    model = three_blocks()
    assert compile_blocks(model, backend="aot_eager") == len(model.blocks) > 1
    chunks = render(model)  # compiles during chunk 1
    graphs = counters["stats"]["unique_graphs"]
    again = render(model)  # three more chunks of the same size
    assert counters["stats"]["unique_graphs"] == graphs > 0  # nothing compiled again
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    for a, b, c in zip(eager, chunks, again):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
        assert torch.equal(b, c)
    assert counters["stats"]["unique_graphs"] <= 2  # one graph for every block (+ at most one variant)


def test_off_compiles_nothing_and_bad_modes_are_refused():
    model = three_blocks()
    assert compile_blocks(model, "off") == 0
    with pytest.raises(InputValidationError):
        compile_blocks(model, "everything")
