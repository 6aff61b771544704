"""Behaviour of the DiT beyond golden parity: batching of guidance passes, routing only for two speakers,
the operations namespace, the plain Wan model, audio windows, the chunked x_ref_attn_map and input errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from infinitetalk_core.errors import InputValidationError
from infinitetalk_core.model import audio_modules
from infinitetalk_core.model.attention import attention, resolve_backend
from infinitetalk_core.model.audio_modules import assemble_audio_windows, x_ref_attn_map
from infinitetalk_core.model.config import AudioConfig, DiTConfig
from infinitetalk_core.model.dit import InfiniteTalkDiT

AUDIO = AudioConfig(
    feature_dim=2 * 8, window=5, vae_scale=4, intermediate_dim=16, output_dim=12, context_tokens=3
)
CONFIG = DiTConfig(dim=32, ffn_dim=48, num_layers=2, num_heads=4, text_dim=16, clip_dim=16, audio=AUDIO)
T, H, W = 3, 4, 6  # latent frames and size -> 9 video frames, 3·2·3 = 18 tokens


def tiny_model(config: DiTConfig = CONFIG, **kw) -> InfiniteTalkDiT:
    torch.manual_seed(0)
    return InfiniteTalkDiT(config, **kw).eval()


def inputs(batch: int = 1, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    masks = torch.zeros(3, H, W)
    masks[0, :, :3], masks[1, :, 3:] = 1, 1
    return dict(
        x=rand(batch, 16, T, H, W),
        t=torch.full((batch,), 700.0),
        clip_fea=rand(1, 257, 16),
        y=rand(1, 20, T, H, W),
        masks=masks,
        text=[rand(5, 16), rand(9, 16)],
        two=rand(2, 9, 5, 2, 8),
        one=rand(1, 9, 5, 2, 8),
    )


def run(model, x, t, context, audio, masks, inp, **kw):
    with torch.inference_mode():
        return model(x, t, context, inp["clip_fea"], inp["y"], audio, masks, **kw)


def test_batched_guidance_passes_equal_separate_forwards():
    """cond (2 speakers, prompt) / drop-text (2 speakers, other-length prompt) / uncond (null audio)."""
    model, inp = tiny_model(), inputs(batch=1)
    x, t, null = inp["x"], inp["t"], torch.zeros_like(inp["one"])
    passes = [(inp["text"][0], inp["two"]), (inp["text"][1], inp["two"]), (inp["text"][1], null)]
    separate = [run(model, x, t, [c], [a], inp["masks"], inp) for c, a in passes]
    batched = run(
        model,
        x.expand(3, -1, -1, -1, -1),
        t.expand(3),
        [c for c, _ in passes],
        [a for _, a in passes],
        inp["masks"],
        inp,
    )
    torch.testing.assert_close(batched, torch.cat(separate), atol=1e-5, rtol=1e-5)
    assert (separate[0] - separate[1]).abs().max() > 1e-3  # the passes really differ
    assert (separate[1] - separate[2]).abs().max() > 1e-3


def test_audio_and_context_tensor_forms_agree():
    model, inp = tiny_model(), inputs(batch=2)
    padded = torch.stack([inp["text"][0], inp["text"][0]])
    as_list = run(
        model, inp["x"], inp["t"], [inp["text"][0]] * 2, [inp["two"], inp["two"]], inp["masks"], inp
    )
    as_tensor = run(
        model,
        inp["x"],
        inp["t"],
        padded,
        torch.stack([inp["two"], inp["two"]]),
        inp["masks"].expand(2, 3, H, W),
        inp,
    )
    torch.testing.assert_close(as_list, as_tensor, atol=0, rtol=0)


def test_routing_map_is_computed_only_for_two_speakers(monkeypatch):
    calls = []

    def counting(*args, **kw):
        calls.append(1)
        return x_ref_attn_map(*args, **kw)

    monkeypatch.setattr(audio_modules, "x_ref_attn_map", counting)
    model, inp = tiny_model(), inputs(batch=2)
    run(model, inp["x"], inp["t"], inp["text"], [inp["one"], inp["one"]], inp["masks"], inp)
    assert calls == []
    run(model, inp["x"], inp["t"], inp["text"], [inp["two"], inp["one"]], inp["masks"], inp)
    assert len(calls) == CONFIG.num_layers  # one sample routed, once per block


def _dense_map(q, k, masks, frame_tokens):
    """The reference's maths: two head groups of full probabilities, summed per mask, averaged."""
    probs = torch.softmax(q[:, :4].transpose(0, 1) @ k[:frame_tokens, :4].permute(1, 2, 0) / 8**0.5, -1)
    groups = [(probs[h : h + 2, :, None] * masks[None, None]).sum(-1).mean(0) for h in (0, 2)]
    return (sum(groups) / 2 / masks.sum(-1)).t()


def test_fused_map_equals_dense_reference_maths():
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(30, 5, 8, generator=g), torch.randn(30, 5, 8, generator=g)  # 5 heads: last ignored
    masks = (torch.rand(3, 6, generator=g) > 0.5).float()
    masks[:, 0] = 1.0  # no empty mask (the reference divides by zero there)
    dense = _dense_map(q, k, masks, 6)
    torch.testing.assert_close(x_ref_attn_map(q, k, masks, 6), dense)
    bf16 = x_ref_attn_map(q.bfloat16(), k.bfloat16(), masks, 6)
    assert bf16.dtype == torch.float32 and (bf16 - dense).abs().max() < 0.02


def test_fused_map_never_builds_the_probabilities():
    """One attention kernel: no tensor of heads·L·S elements (the [h, L, S] scores) is ever made."""
    from torch.utils._python_dispatch import TorchDispatchMode

    sizes = []

    class Sizes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            sizes.extend(t.numel() for t in torch.utils._pytree.tree_leaves(out) if torch.is_tensor(t))
            return out

    q, k, masks = torch.randn(60, 4, 8), torch.randn(60, 4, 8), torch.ones(3, 12)
    with Sizes():
        x_ref_attn_map(q, k, masks, 12)
    assert sizes and max(sizes) < 4 * 60 * 12


def test_audio_windows_are_contiguous_runs():
    """Latent frame j ≥ 1 sees wav2vec frames 4j−5 … 4j+2 (spec §1.6)."""
    frames = 9
    rows = torch.arange(frames)[:, None] + torch.arange(-2, 3)[None]  # window of video frame i: i−2 … i+2
    first, latter = assemble_audio_windows(rows[None, :, :, None, None].float(), vae_scale=4)
    assert first[0, 0, :, 0, 0].tolist() == [-2, -1, 0, 1, 2]
    for j in (1, 2):
        assert latter[0, j - 1, :, 0, 0].tolist() == list(range(4 * j - 5, 4 * j + 3))


class CountingLinear(nn.Linear):
    made = 0

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        CountingLinear.made += 1


class CastLinear(nn.Linear):  # like comfy.ops.manual_cast: weights cast to the input at use
    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


class CastConv3d(nn.Conv3d):
    def forward(self, x):
        return self._conv_forward(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


class CastLayerNorm(nn.LayerNorm):
    def forward(self, x):
        return F.layer_norm(
            x, self.normalized_shape, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps
        )


class CountingOps:
    Linear, Conv3d, LayerNorm = CountingLinear, nn.Conv3d, nn.LayerNorm


class CastOps:
    Linear, Conv3d, LayerNorm = CastLinear, CastConv3d, CastLayerNorm


def test_operations_namespace_builds_every_weighted_layer():
    CountingLinear.made = 0
    model = tiny_model(operations=CountingOps)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is CountingLinear for m in linears)
    assert CountingLinear.made == len(linears) == 12 + 15 * CONFIG.num_layers


def test_casting_operations_run_bf16_weights_in_fp32():
    """Weights (and loose modulation / RMSNorm parameters) stored in bf16, computed in fp32."""
    reference = tiny_model()
    rounded = {k: v.to(torch.bfloat16).float() for k, v in reference.state_dict().items()}
    reference.load_state_dict(rounded)
    cast = tiny_model(operations=CastOps, dtype=torch.bfloat16)
    cast.load_state_dict(rounded)
    assert cast.blocks[0].modulation.dtype == torch.bfloat16
    inp = inputs()
    expected = run(reference, inp["x"], inp["t"], inp["text"][:1], [inp["two"]], inp["masks"], inp)
    got = run(
        cast,
        inp["x"],
        inp["t"],
        inp["text"][:1],
        [inp["two"]],
        inp["masks"],
        inp,
        compute_dtype=torch.float32,
    )
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_plain_wan_model_has_no_audio_and_runs():
    model, inp = tiny_model(CONFIG.with_audio(None)), inputs()
    assert not any("audio" in k or "norm_x" in k for k in model.state_dict())
    out = run(model, inp["x"], inp["t"], inp["text"][:1], None, None, inp)
    assert out.shape == (1, 16, T, H, W) and out.dtype == torch.float32 and torch.isfinite(out).all()
    with pytest.raises(InputValidationError, match="without InfiniteTalk audio"):
        run(model, inp["x"], inp["t"], inp["text"][:1], [inp["one"]], None, inp)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(audio=[torch.zeros(1, 8, 5, 2, 8)]), "expected \\[1 or 2 speakers, 9"),
        (dict(audio=[torch.zeros(3, 9, 5, 2, 8)]), "1 or 2 speakers"),
        (dict(audio=None), "audio is missing"),
        (dict(masks=None), "needs ref_target_masks"),
        (dict(context=[torch.zeros(513, 16)]), "tokens ≤ 512"),
        (dict(context=[torch.zeros(5, 16)] * 2), "2 prompts for a batch of 1"),
        (dict(x=torch.zeros(1, 16, T, H, 5)), "y has shape"),
        (
            dict(x=torch.zeros(1, 16, T, H, 5), y=torch.zeros(1, 20, T, H, 5)),
            "not divisible by the patch size",
        ),
        (dict(clip_fea=torch.zeros(1, 256, 16)), "clip_fea is of shape"),
        (dict(backend="flash"), "needs a CUDA device"),
        (dict(backend="fast"), "Unknown attention backend"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, match):
    model, inp = tiny_model(), inputs()
    kw = dict(x=inp["x"], context=inp["text"][:1], audio=[inp["two"]], masks=inp["masks"], backend=None)
    kw.update(change)
    inp.update({k: v for k, v in change.items() if k in ("y", "clip_fea")})
    with pytest.raises(InputValidationError, match=match):
        run(
            model,
            kw["x"],
            inp["t"],
            kw["context"],
            kw["audio"],
            kw["masks"],
            inp,
            attention_backend=kw["backend"],
        )


def test_sdpa_attention_matches_explicit_softmax():
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, n, 3, 8, generator=g) for n in (7, 4, 4))
    weights = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / 8**0.5, -1)
    torch.testing.assert_close(attention(q, k, v, "sdpa"), torch.einsum("bhqk,bkhd->bqhd", weights, v))
    assert resolve_backend("auto", torch.device("cpu"), torch.bfloat16) == "sdpa"


def test_full_size_mixed_batch_forward_shapes_on_meta():
    """The real 14B config at 480×832, 81 frames: a two-speaker pass batched with a null-audio pass."""
    model = InfiniteTalkDiT(DiTConfig(), device="meta", dtype=torch.bfloat16)
    meta = dict(device="meta", dtype=torch.bfloat16)
    x, y = torch.empty(2, 16, 21, 60, 104, **meta), torch.empty(1, 20, 21, 60, 104, **meta)
    audio = [torch.empty(2, 81, 5, 12, 768, **meta), torch.empty(1, 81, 5, 12, 768, **meta)]
    with torch.inference_mode():
        out = model(
            x,
            torch.empty(2, device="meta"),
            [torch.empty(30, 4096, **meta), torch.empty(12, 4096, **meta)],
            torch.empty(1, 257, 1280, **meta),
            y,
            audio,
            torch.empty(3, 60, 104, device="meta"),
        )
    assert out.shape == (2, 16, 21, 60, 104) and out.dtype == torch.float32
