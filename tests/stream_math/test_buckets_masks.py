"""Resolution buckets, resize/crop geometry and two-speaker masks against the golden fixtures."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from infinitetalk_core.errors import InputValidationError
from infinitetalk_core.stream.buckets import (
    BUCKETS_480,
    BUCKETS_720,
    bucket_for,
    default_shift,
    latent_size,
    resize_crop_geometry,
    tokens_per_latent_frame,
)
from infinitetalk_core.stream.masks import source_speaker_masks, speaker_masks


@pytest.fixture(scope="module")
def plan_json(golden_dir):
    return json.loads((golden_dir / "chunk_plan" / "chunk_plan.json").read_text())


def test_golden_buckets(plan_json):
    for case in plan_json["bucket_cases"]:
        target = bucket_for(*case["source_hw"], family="480")
        assert list(target) == case["target_hw"]
        assert list(latent_size(*target)) == case["latent_hw"]
        assert tokens_per_latent_frame(*target) * 21 == case["seq_len"]


def test_spec_examples_and_tables():
    assert bucket_for(1080, 1920, "480") == (448, 896)
    assert bucket_for(1080, 1920, "720") == (704, 1280)
    assert bucket_for(1, 1, "720") == (960, 960)
    assert bucket_for(10, 1000, "480") == (320, 1216)  # extreme ratios clamp to the end buckets
    assert bucket_for(1000, 10, "720") == (1920, 512)
    for table in (BUCKETS_480, BUCKETS_720):
        for h, w in table.values():
            assert h % 16 == 0 and w % 16 == 0  # latent grid divisible by the 2x2 patch
    assert default_shift("480") == 7.0 and default_shift("720") == 11.0


def test_tie_goes_to_the_first_bucket():
    # 0.44 lies midway between the keys 0.38 and 0.50: whatever float rounding decides, we must pick
    # what the reference's stable sort over the keys picks
    ratio_keys = sorted(BUCKETS_480, key=lambda k: abs(float(k) - 0.44))
    assert bucket_for(44, 100, "480") == BUCKETS_480[ratio_keys[0]]


def test_resize_crop_geometry():
    g = resize_crop_geometry(720, 1280, 448, 896)
    assert (g.resize_h, g.resize_w, g.top, g.left) == (504, 896, 28, 0)
    g = resize_crop_geometry(1000, 700, 768, 512)  # scale = max(0.768, 0.7314) -> 768 x ceil(537.6)
    assert (g.resize_h, g.resize_w, g.top, g.left) == (768, 538, 0, 13)
    g = resize_crop_geometry(100, 103, 640, 640)  # width ceil(6.4 * 103 = 659.2) = 660
    assert g.resize_h == 640 and g.resize_w == 660 and g.left == 10
    g = resize_crop_geometry(100, 101, 640, 640)  # width ceil(646.4) = 647: round(3.5) = 4
    assert (g.resize_w, g.left) == (647, 4)
    g = resize_crop_geometry(100, 100, 101, 100)  # 101 x 101: (101-100)/2 = 0.5 rounds to even 0
    assert (g.resize_w, g.left) == (101, 0)


def test_golden_two_speaker_masks(plan_json, golden_dir):
    tensors = load_file(str(golden_dir / "chunk_plan" / "chunk_plan_masks.safetensors"))
    for case in plan_json["two_person_mask_cases"]:
        h, w = case["source_hw"]
        target = bucket_for(h, w)
        boxes = None if case["bbox"] is None else [case["bbox"]["person1"], case["bbox"]["person2"]]
        masks = speaker_masks(h, w, *target, num_speakers=2, bboxes=boxes)
        expected = tensors[case["tensor"]].float()
        assert list(masks.shape) == case["mask_shape"]
        assert torch.equal(masks, expected)
        assert [int(m.sum()) for m in masks] == [m["sum"] for m in case["masks"]]


def test_one_speaker_masks_are_all_ones():
    masks = speaker_masks(720, 1280, 448, 896, num_speakers=1)
    assert masks.shape == (3, 56, 112) and bool((masks == 1).all())


def test_bbox_first_coordinate_is_rows():
    masks = source_speaker_masks(100, 200, 2, bboxes=[(10, 20, 30, 90), (50, 120, 60, 180)])
    assert masks[0, 10:30, 20:90].eq(1).all() and masks[0].sum() == 20 * 70
    assert masks[1, 50:60, 120:180].eq(1).all() and masks[1].sum() == 10 * 60
    assert torch.equal(masks[2], (masks[0] + masks[1] == 0).float())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_speakers=3), "1 or 2"),
        (dict(num_speakers=2, bboxes=[(0, 0, 10, 10)]), "1 speaker boxes for 2"),
        (dict(num_speakers=2, bboxes=[(0, 0, 10), (0, 0, 10, 10)]), "expected 4"),
        (dict(num_speakers=2, bboxes=[(10, 0, 5, 10), (0, 0, 10, 10)]), "empty or outside"),
        (dict(num_speakers=2, bboxes=[(-1, 0, 5, 10), (0, 0, 10, 10)]), "empty or outside"),
        (dict(num_speakers=2, bboxes=[(500, 0, 600, 10), (0, 0, 10, 10)]), "empty or outside"),
        (dict(num_speakers=2, face_scale=0.6), "face_scale"),
    ],
)
def test_invalid_masks(kwargs, match):
    with pytest.raises(InputValidationError, match=match):
        speaker_masks(360, 720, 448, 896, **kwargs)


@pytest.mark.parametrize("args", [(0, 100), (100, -3), (10.5, 100), (True, 100)])
def test_invalid_sizes(args):
    with pytest.raises(InputValidationError, match="positive integer"):
        bucket_for(*args)


def test_invalid_family():
    with pytest.raises(InputValidationError, match="bucket family"):
        bucket_for(100, 100, "1080")
