"""M. What an attacker, a confused user or another node pack can put into our node functions: huge or
negative numbers, wrong types, empty batches, 1x1 / alpha / integer images, zero fps, empty CONDITIONING.
Each ends in a coded error with a fix (or works correctly); never a raw Python error, never a run that
starts generating with settings that cannot work (a guard host stops anything that reaches the model)."""
from __future__ import annotations

from fractions import Fraction

import pytest
import torch

import hostile_harness as hh


class ReachedGeneration(BaseException):
    pass


@pytest.fixture()
def guarded(box):
    host_mod = hh.sub("nodes.host")

    class Guard(host_mod.TorchHost):
        def load_for_use(self, models, device=None):
            raise ReachedGeneration("the sampler started generating with these inputs")

    host_mod.set_host(Guard())
    yield
    host_mod.set_host(host_mod.TorchHost())


def _conditioning(tokens, width=hh.TEXT_DIM):
    t = torch.zeros(1, 512, width)
    t[:, :tokens] = 0.5
    return [[t, {}]]


SAMPLER_BAD = {
    "steps_1e9": (dict(steps=10 ** 9), "steps"),
    "steps_string": (dict(steps="4"), "steps"),
    "steps_float": (dict(steps=2.5), "steps"),
    "steps_none": (dict(steps=None), "steps"),
    "max_frames_minus_100": (dict(max_frames=-100), "max_frames"),
    "max_frames_string": (dict(max_frames="all"), "max_frames"),
    "seed_negative": (dict(seed=-1), "seed"),
    "seed_too_big": (dict(seed=2 ** 70), "seed"),
    "shift_negative": (dict(shift=-2.0), "shift"),
    "shift_nan": (dict(shift=float("nan")), "shift"),
    "text_guidance_nan": (dict(text_guidance=float("nan")), "guidance"),
    "audio_guidance_inf": (dict(audio_guidance=float("inf")), "guidance"),
    "text_guidance_negative": (dict(text_guidance=-5.0), "guidance"),
    "color_strength_5": (dict(color_strength=5.0, color_method="lab"), "color_strength"),
    "chunk_huge": (dict(chunk_frames=4 * 10 ** 6 + 1), "chunk_frames"),
    "chunk_string": (dict(chunk_frames="81"), "chunk_frames"),
    "references_string": (dict(references="face.png"), "references"),
    "references_none": (dict(references=None), "references"),
    "audio_features_tensor": (dict(audio_features=torch.zeros(3)), "audio_features"),
    "audio_features_string": (dict(audio_features="speech"), "audio_features"),
    "model_none": (dict(model=None), "model"),
    "model_string": (dict(model="wan.safetensors"), "model"),
    "vae_none": (dict(vae=None), "vae"),
    "vae_string": (dict(vae="vae"), "vae"),
    "clip_vision_none": (dict(clip_vision=None), "clip_vision"),
    "positive_empty": (dict(positive=[]), "CONDITIONING"),
    "negative_empty": (dict(negative=[]), "CONDITIONING"),
    "positive_string": (dict(positive="a talking cat"), "positive"),
    "positive_none_tensor": (dict(positive=[[None, {}]]), "positive"),
    "positive_wrong_width": (dict(positive=_conditioning(5, width=32)), "text"),
    "size_none": (dict(size=None), "size"),
    "resume_string": (dict(resume="no"), "resume"),
    "job_name_int": (dict(job_name=5), "job_name"),
    "image_frames_string": (dict(image_frames="all"), "image_frames"),
}


@pytest.mark.parametrize("overrides,word", list(SAMPLER_BAD.values()), ids=list(SAMPLER_BAD))
def test_sampler_refuses_before_generating(overrides, word, render, guarded, world, box):
    try:
        render(feats=world.feats_1, **overrides)
    except ReachedGeneration:
        pytest.fail(f"{overrides} was not refused: the sampler started generating")
    except Exception as exc:  # noqa: BLE001
        hh.assert_coded(exc, "E_INPUT_VALIDATION", word)
        assert not box.jobs.exists() or not any(box.jobs.iterdir()), "a job folder was created"
    else:
        pytest.fail("no error and no generation?")


def test_all_zero_conditioning_works(render, world):
    (out, _), = [render(feats=world.feats_1, positive=_conditioning(0))]
    assert out[2] == 13


# ---------------------------------------------------------------- Reference Sampler

def _describe(world, image=None, video=None, fps=25.0):
    return world.nodes["InfiniteTalkReferenceSampler"]().describe("chunk_start", "hold", fps, image=image,
                                                                   video=video)


@pytest.mark.parametrize("fps", [0.0, -25.0, float("nan"), float("inf")], ids=["zero", "negative", "nan", "inf"])
def test_reference_fps_that_cannot_work(fps, world, render, guarded):
    image = torch.rand(4, 64, 64, 3)
    try:
        refs, _ = _describe(world, image=image, fps=fps)
        render(refs=refs, feats=world.feats_1)
    except ReachedGeneration:
        pytest.fail(f"fps={fps} reached generation")
    except Exception as exc:  # noqa: BLE001
        hh.assert_coded(exc, "E_INPUT_VALIDATION", "fps", "frame rate")
    else:
        pytest.fail("no error")


BAD_IMAGES = {
    "zero_frames": torch.zeros(0, 64, 64, 3),
    "string": "face.png",
    "two_channels": torch.rand(1, 64, 64, 2),
    "one_row": torch.rand(1, 1, 64, 3),
    "five_dims_batch": torch.rand(2, 1, 64, 64, 3),
    "zero_width": torch.zeros(1, 64, 0, 3),
}


@pytest.mark.parametrize("image", list(BAD_IMAGES.values()), ids=list(BAD_IMAGES))
def test_reference_images_that_cannot_work(image, world, render, guarded, box):
    try:
        refs, _ = _describe(world, image=image)
        render(refs=refs, feats=world.feats_1)
    except ReachedGeneration:
        if isinstance(image, torch.Tensor) and image.ndim == 5:
            return  # a [B, F, H, W, 3] batch is flattened: acceptable
        if isinstance(image, torch.Tensor) and image.shape[1] == 1:
            return  # a 1-row image is resized (cover + crop): acceptable
        pytest.fail("an image that cannot work reached generation")
    except Exception as exc:  # noqa: BLE001
        hh.assert_coded(exc, "E_INPUT_VALIDATION", "image", "frames", "channels", "reference")
    else:
        pytest.fail("no error")


def _first_reference_frame(world, image):
    refs, _ = _describe(world, image=image)
    return refs.open((64, 64)).frame(0)


def test_uint8_image_is_refused_or_scaled(world):
    image = torch.rand(1, 64, 64, 3)
    as_uint8 = (image * 255).round().to(torch.uint8)
    try:
        frame = _first_reference_frame(world, as_uint8)
    except Exception as exc:  # noqa: BLE001
        hh.assert_coded(exc, "E_INPUT_VALIDATION", "uint8", "dtype", "float", "image")
        return
    expected = _first_reference_frame(world, as_uint8.float() / 255)
    assert torch.allclose(frame, expected, atol=1e-5), "a uint8 IMAGE was read as 0..255 floats (all white)"


def test_alpha_channel_is_dropped(world):
    rgb = torch.rand(1, 64, 64, 3)
    rgba = torch.cat([rgb, torch.rand(1, 64, 64, 1)], -1)
    assert torch.equal(_first_reference_frame(world, rgba), _first_reference_frame(world, rgb))


def test_one_pixel_image_renders(world, render):
    refs, _ = _describe(world, image=torch.rand(1, 1, 1, 3))
    (out, _), = [render(refs=refs, feats=world.feats_1)]
    assert out[2] == 13


class _FakeVideo:
    def __init__(self, source=None, images=None, rate=25):
        self.source, self.images, self.rate = source, images, rate

    def get_stream_source(self):
        return self.source

    def get_components(self):
        class C:
            pass

        c = C()
        c.images, c.frame_rate = self.images, Fraction(self.rate)
        return c


@pytest.mark.parametrize("kind", ["text_file", "audio_only", "missing", "zero_frames", "zero_rate"])
def test_video_inputs_that_cannot_work(kind, world, tmp_path, render, guarded):
    import subprocess

    import imageio_ffmpeg

    if kind == "text_file":
        path = tmp_path / "clip.mp4"
        path.write_text("not a video")
        video = _FakeVideo(str(path))
    elif kind == "audio_only":
        path = tmp_path / "voice.mp4"
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                        "sine=frequency=200:duration=1", "-c:a", "aac", str(path)], check=True)
        video = _FakeVideo(str(path))
    elif kind == "missing":
        video = _FakeVideo(str(tmp_path / "gone.mp4"))
    elif kind == "zero_frames":
        video = _FakeVideo(None, torch.zeros(0, 64, 64, 3))
    else:
        video = _FakeVideo(None, torch.rand(3, 64, 64, 3), rate=0)
    try:
        refs, _ = _describe(world, video=video)
        render(refs=refs, feats=world.feats_1)
    except ReachedGeneration:
        pytest.fail(f"a {kind} video reached generation")
    except Exception as exc:  # noqa: BLE001
        hh.assert_coded(exc, ("E_INPUT_VALIDATION", "E_FFMPEG"), "video", "frames", "fps", "frame rate")
    else:
        pytest.fail("no error")


# ---------------------------------------------------------------- Video Combine / Color Match

def _combine(world, images, fps=25.0, crf=23):
    return world.nodes["InfiniteTalkVideoCombine"]().combine(fps, "hostile/m", crf, images=images)


COMBINE_BAD = {
    "zero_frames": (dict(images=torch.zeros(0, 32, 32, 3)), ("frame", "empty", "images")),
    "fps_zero": (dict(images=torch.rand(2, 32, 32, 3), fps=0.0), ("fps",)),
    "fps_nan": (dict(images=torch.rand(2, 32, 32, 3), fps=float("nan")), ("fps",)),
    "fps_negative": (dict(images=torch.rand(2, 32, 32, 3), fps=-25.0), ("fps",)),
    "images_string": (dict(images="frames"), ("images",)),
    "images_5d": (dict(images=torch.rand(1, 2, 32, 32, 3)), ("images", "shape")),
    "two_channels": (dict(images=torch.rand(2, 32, 32, 2)), ("images", "channels", "shape")),
}


@pytest.mark.parametrize("kw,words", list(COMBINE_BAD.values()), ids=list(COMBINE_BAD))
def test_video_combine_refuses(kw, words, world, box):
    with pytest.raises(Exception) as info:
        _combine(world, **kw)
    hh.assert_coded(info.value, "E_INPUT_VALIDATION", *words)
    assert not list(box.output.rglob("*.mp4")) and not [p for p in box.output.rglob("*") if ".part" in p.name]


@pytest.mark.parametrize("shape,crf", [((3, 1, 1, 3), 23), ((3, 33, 35, 3), 23), ((3, 32, 32, 4), 23),
                                       ((3, 32, 32, 3), 100), ((3, 32, 32, 3), -5)],
                         ids=["1x1", "odd", "alpha", "crf_100", "crf_negative"])
def test_video_combine_odd_inputs_work_or_are_coded(shape, crf, world, box):
    try:
        result = _combine(world, torch.rand(*shape), crf=crf)
    except Exception as exc:  # noqa: BLE001
        hh.assert_coded(exc, ("E_INPUT_VALIDATION", "E_FFMPEG"), "size", "width", "height", "even", "pixel", "crf")
        assert not list(box.output.rglob("*.mp4"))
    else:
        from pathlib import Path

        assert Path(result["result"][1]).stat().st_size > 0


def test_video_combine_uint8_images_are_refused_or_scaled(world, box):
    import subprocess

    import imageio_ffmpeg
    import numpy as np

    images = torch.full((2, 32, 32, 3), 0.25)
    try:
        result = _combine(world, (images * 255).to(torch.uint8))
    except Exception as exc:  # noqa: BLE001
        hh.assert_coded(exc, "E_INPUT_VALIDATION", "uint8", "dtype", "float", "images")
        return
    raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", result["result"][1], "-f",
                          "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    mean = np.frombuffer(raw, np.uint8).mean()
    assert abs(mean - 64) < 10, f"uint8 frames of value 64 came out as {mean:.0f} (read as 0..255 floats?)"


COLOR_BAD = {
    "method_bogus": (dict(method="sepia"), ("method",)),
    "strength_nan": (dict(strength=float("nan")), ("strength",)),
    "strength_5": (dict(strength=5.0), ("strength",)),
    "reference_empty": (dict(reference=torch.zeros(0, 32, 32, 3)), ("reference",)),
    "images_string": (dict(images="frames"), ("images",)),
    "reference_two_channels": (dict(reference=torch.rand(1, 32, 32, 2)), ("reference", "channels")),
}


@pytest.mark.parametrize("kw,words", list(COLOR_BAD.values()), ids=list(COLOR_BAD))
def test_color_match_refuses(kw, words, world):
    args = dict(images=torch.rand(3, 32, 32, 3), reference=torch.rand(1, 48, 40, 3), method="lab", strength=1.0)
    args.update(kw)
    with pytest.raises(Exception) as info:
        world.nodes["InfiniteTalkColorMatch"]().match(**args)
    hh.assert_coded(info.value, "E_INPUT_VALIDATION", *words)


@pytest.mark.parametrize("kind", ["empty_images", "alpha_images", "other_size_reference"])
def test_color_match_edge_cases_work_or_are_coded(kind, world):
    images = {"empty_images": torch.zeros(0, 32, 32, 3), "alpha_images": torch.rand(3, 32, 32, 4),
              "other_size_reference": torch.rand(3, 32, 32, 3)}[kind]
    try:
        (out,) = world.nodes["InfiniteTalkColorMatch"]().match(images, torch.rand(1, 17, 91, 3), "lab", 1.0)
    except Exception as exc:  # noqa: BLE001
        hh.assert_coded(exc, "E_INPUT_VALIDATION", "images", "channels", "frames", "empty")
    else:
        assert out.shape[0] == images.shape[0] and torch.isfinite(out).all()
