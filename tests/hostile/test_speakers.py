"""K. Two speakers: masks that cannot place a second speaker, identical or overlapping boxes, masks of
another size than the image, and "single"-speaker InfiniteTalk weights driven by two speakers."""
from __future__ import annotations

import logging

import pytest
import torch

import hostile_harness as hh


def _mask(top, left, bottom, right, size=64):
    m = torch.zeros(1, size, size)
    m[:, top:bottom, left:right] = 1.0
    return m


def _encode(world, **kw):
    return world.nodes["InfiniteTalkAudioEncode"]().encode(world.wav2vec, hh.speech(0.52), False, **kw)


LEFT, RIGHT = _mask(8, 2, 56, 30), _mask(8, 34, 56, 62)

BAD_MASKS = {
    "masks_without_audio_2": (dict(mask_1=LEFT, mask_2=RIGHT), ("audio_2",)),
    "mask_1_without_audio_2": (dict(mask_1=LEFT), ("audio_2",)),
    "only_mask_1": (dict(audio_2=hh.speech(0.52), mask_1=LEFT), ("mask_2", "both")),
    "only_mask_2": (dict(audio_2=hh.speech(0.52), mask_2=RIGHT), ("mask_1", "both")),
    "identical_boxes": (dict(audio_2=hh.speech(0.52), mask_1=LEFT, mask_2=LEFT.clone()), ("same",)),
    "overlapping_95": (dict(audio_2=hh.speech(0.52), mask_1=_mask(8, 2, 56, 40), mask_2=_mask(8, 3, 56, 41)),
                       ("overlap",)),
    "empty_mask_2": (dict(audio_2=hh.speech(0.52), mask_1=LEFT, mask_2=torch.zeros(1, 64, 64)), ("empty",)),
    "mask_not_a_tensor": (dict(audio_2=hh.speech(0.52), mask_1="left", mask_2=RIGHT), ("mask_1", "mask")),
    "batch_of_two_masks": (dict(audio_2=hh.speech(0.52), mask_1=torch.cat([LEFT, RIGHT]), mask_2=RIGHT),
                           ("mask_1", "mask")),
}


@pytest.mark.parametrize("kw,words", list(BAD_MASKS.values()), ids=list(BAD_MASKS))
def test_bad_speaker_masks_are_refused(kw, words, world):
    with pytest.raises(Exception) as info:
        _encode(world, **kw)
    hh.assert_coded(info.value, "E_INPUT_VALIDATION", *words)


def _two_speaker_feats(world, **masks):
    feats, *_ = _encode(world, audio_2=hh.speech(0.52), **masks)
    return feats


@pytest.mark.parametrize("size", [16, 200], ids=["smaller_mask", "bigger_mask"])
def test_masks_of_another_size_than_the_image(size, world, render, box):
    feats = _two_speaker_feats(world, mask_1=_mask(0, 0, size, size // 3, size),
                               mask_2=_mask(0, 2 * size // 3, size, size, size))
    try:
        render(feats=feats)
    except Exception as exc:  # noqa: BLE001
        hh.assert_coded(exc, "E_INPUT_VALIDATION", "mask", "box")
    else:
        pytest.fail(f"{size}x{size} masks were used on a 64x64 image without a word")


def test_single_speaker_weights_with_two_speakers_warn_or_refuse(world, render, box, caplog):
    model = hh.load_model(hh.DIT_FILE, hh.SINGLE_AUDIO_FILE)
    feats = _two_speaker_feats(world)
    caplog.set_level(logging.WARNING)
    try:
        render(model=model, feats=feats)
    except Exception as exc:  # noqa: BLE001
        hh.assert_coded(exc, "E_INPUT_VALIDATION", "single")
        return
    warned = [r.getMessage() for r in caplog.records if "single" in r.getMessage().lower()]
    assert warned, "weights named 'single' drove two speakers with neither a warning nor a refusal"
