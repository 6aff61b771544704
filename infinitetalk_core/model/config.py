"""DiT configuration, detected from checkpoint tensor shapes.

The same code builds the real Wan2.1-I2V-14B + InfiniteTalk model and the tiny test models: every
size below is read from a state dict's shapes (``detect_dit_config``). Only the head count cannot be
read from shapes; every Wan model uses head_dim 128, so that is the default, with an override.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from ..errors import PipelineLoadError

WAN_HEAD_DIM = 128  # every released Wan2.1 model (1.3B: 12×128, 14B: 40×128)


@dataclass(frozen=True)
class AudioConfig:
    """InfiniteTalk's audio projector and per-block audio cross-attention sizes."""

    feature_dim: int = 12 * 768  # wav2vec2 layers × width, flattened per window slot
    window: int = 5  # wav2vec frames around each video frame (offsets −2..+2)
    vae_scale: int = 4  # video frames per latent frame: the latter windows span 5 + 4 − 1 = 8
    intermediate_dim: int = 512
    output_dim: int = 768  # audio token width, also kv_linear's input width
    context_tokens: int = 32  # audio tokens per latent frame and person

    @property
    def window_vf(self) -> int:
        """Window length of latent frames ≥ 1 (four video frames share one latent frame)."""
        return self.window + self.vae_scale - 1


@dataclass(frozen=True)
class DiTConfig:
    """Sizes of the Wan2.1 I2V DiT, plus the InfiniteTalk audio additions when present."""

    dim: int = 5120
    ffn_dim: int = 13824
    num_layers: int = 40
    num_heads: int = 40
    in_dim: int = 36  # 16 noisy latent + 4 mask + 16 reference latent channels
    out_dim: int = 16
    text_dim: int = 4096  # umt5-xxl width
    text_len: int = 512  # prompts are zero-padded to this many tokens
    freq_dim: int = 256  # timestep sinusoid width
    clip_dim: int = 1280  # ViT-H/14 token width (257 tokens)
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    audio: AudioConfig | None = AudioConfig()

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Complex RoPE slots for (frame, row, column): 22/21/21 for head_dim 128."""
        c = self.head_dim // 2
        return (c - 2 * (c // 3), c // 3, c // 3)

    @property
    def has_audio(self) -> bool:
        return self.audio is not None

    def with_audio(self, audio: AudioConfig | None) -> "DiTConfig":
        return replace(self, audio=audio)


def _shape(shapes: Mapping[str, Sequence[int]], key: str, source: str) -> tuple[int, ...]:
    if key not in shapes:
        raise PipelineLoadError(
            f"{source} has no tensor '{key}', so it is not a Wan2.1 DiT in a known layout.",
            "Pick the Wan2.1 I2V 14B diffusion model file (e.g. wan2.1_i2v_480p_14B_bf16.safetensors).",
        )
    return tuple(int(d) for d in shapes[key])


def detect_audio_config(
    shapes: Mapping[str, Sequence[int]], source: str = "the audio weights", vae_scale: int = 4
) -> AudioConfig:
    """Read the audio projector sizes from ``audio_proj.*`` shapes (keys without prefix)."""
    inter, first_in = _shape(shapes, "audio_proj.proj1.weight", source)
    _, latter_in = _shape(shapes, "audio_proj.proj1_vf.weight", source)
    tokens_x_width, _ = _shape(shapes, "audio_proj.proj3.weight", source)
    (output_dim,) = _shape(shapes, "audio_proj.norm.weight", source)
    # first_in = window·F and latter_in = (window + vae_scale − 1)·F
    feature_dim, rest = divmod(latter_in - first_in, vae_scale - 1)
    if rest or feature_dim <= 0 or first_in % feature_dim or tokens_x_width % output_dim:
        raise PipelineLoadError(
            f"{source}: audio_proj shapes {first_in}/{latter_in}/{tokens_x_width} do not fit the "
            "InfiniteTalk audio projector.",
            "Use an InfiniteTalk or MultiTalk audio weights file.",
        )
    return AudioConfig(
        feature_dim=feature_dim,
        window=first_in // feature_dim,
        vae_scale=vae_scale,
        intermediate_dim=inter,
        output_dim=output_dim,
        context_tokens=tokens_x_width // output_dim,
    )


def count_blocks(shapes: Mapping[str, Sequence[int]]) -> int:
    """Number of transformer blocks: one more than the largest ``blocks.N.`` index."""
    indices = {int(k.split(".")[1]) for k in shapes if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    return max(indices) + 1 if indices else 0


def detect_dit_config(
    shapes: Mapping[str, Sequence[int]],
    head_dim: int = WAN_HEAD_DIM,
    num_heads: int | None = None,
    source: str = "the model file",
) -> DiTConfig:
    """Build a DiTConfig from a state dict's shapes (keys already without any prefix).

    ``num_heads`` wins over ``head_dim`` when given. Audio sizes are detected when the shapes hold
    ``audio_proj.*``; otherwise ``audio`` is None (a base Wan model).
    """
    dim, in_dim, *patch = _shape(shapes, "patch_embedding.weight", source)
    ffn_dim, _ = _shape(shapes, "blocks.0.ffn.0.weight", source)
    _, text_dim = _shape(shapes, "text_embedding.0.weight", source)
    _, freq_dim = _shape(shapes, "time_embedding.0.weight", source)
    head_out, _ = _shape(shapes, "head.head.weight", source)
    heads = num_heads or dim // head_dim
    if heads <= 0 or dim % heads:
        raise PipelineLoadError(f"{source}: dim {dim} is not divisible into {heads} attention heads.",
                                "Pass the model's real head count (num_heads) or head_dim.")
    patch_size = tuple(int(p) for p in patch)
    clip_dim = _shape(shapes, "img_emb.proj.0.weight", source)[0] if "img_emb.proj.0.weight" in shapes else 0
    audio = detect_audio_config(shapes, source) if "audio_proj.proj1.weight" in shapes else None
    return DiTConfig(
        dim=dim,
        ffn_dim=ffn_dim,
        num_layers=count_blocks(shapes),
        num_heads=heads,
        in_dim=in_dim,
        out_dim=head_out // (patch_size[0] * patch_size[1] * patch_size[2]),
        text_dim=text_dim,
        freq_dim=freq_dim,
        clip_dim=clip_dim,
        patch_size=patch_size,  # type: ignore[arg-type]
        audio=audio,
    )
