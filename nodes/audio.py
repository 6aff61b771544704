"""Audio Encode node: one or two speakers' AUDIO -> wav2vec2 features at 25 fps (+ the track to mux)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .common import AUDIO_FEATURES_TYPE, CATEGORY, WAV2VEC_TYPE, coded_errors, require

MULTI_MODES = ("para", "add")


@dataclass
class AudioFeatures:
    """What flows on an INFINITETALK_AUDIO_FEATURES socket.

    ``features``: per speaker [N, layers, width] at 25 fps (N = ``num_frames``), bfloat16 from Audio
    Encode (1.66 GB per speaker-hour; the sampler upcasts each chunk's windows); ``mix``: the combined
    track as a ComfyUI AUDIO dict (what Video Combine should mux); ``boxes``: optional per-speaker
    (top, left, bottom, right) boxes in source pixels (from the masks), else automatic halves;
    ``fingerprint``: the speakers' feature digests joined by "|" (of their float32 values, see
    ``encode_stored_features``: job folders made when the features were float32 keep matching).
    """

    features: list[torch.Tensor]
    num_frames: int
    mix: dict
    boxes: list[tuple[int, int, int, int]] | None = None
    fingerprint: str = ""
    mask_size: tuple[int, int] | None = None  # (height, width) of the masks the boxes come from

    @property
    def num_speakers(self) -> int:
        return len(self.features)


def mask_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """MASK [H, W] or [1, H, W] -> (top, left, bottom, right) of its non-zero area (half-open)."""
    m = mask.reshape(mask.shape[-2:]) > 0.5
    rows, cols = torch.nonzero(m.any(1)).flatten(), torch.nonzero(m.any(0)).flatten()
    if len(rows) == 0:
        from ..infinitetalk_core.errors import InputValidationError

        raise InputValidationError("A speaker mask is empty.", "Paint the speaker's face/body region in the mask.")
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


class InfiniteTalkAudioEncode:
    DESCRIPTION = (
        "Encodes speech with wav2vec2 into per-frame features (25 fps) for the whole track, once. "
        "A second speaker is mixed in 'para' (talking at the same time) or 'add' (one after the other)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = (AUDIO_FEATURES_TYPE, "AUDIO", "INT", "FLOAT")
    RETURN_NAMES = ("audio_features", "audio", "num_frames", "seconds")
    OUTPUT_TOOLTIPS = ("Features for the Streaming Sampler.",
                       "The track to mux (the speakers combined at the original sample rate).",
                       "Video length in frames at 25 fps (= the output length).",
                       "Audio length in seconds.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "wav2vec": (WAV2VEC_TYPE, {"tooltip": "The encoder from Wav2Vec Loader."}),
                "audio": ("AUDIO", {"tooltip": "Speech of speaker 1 (any length, any sample rate)."}),
                "normalize_loudness": ("BOOLEAN", {"default": True, "tooltip":
                                       "Normalise each track to -23 LUFS before encoding, as the reference "
                                       "does (the muxed audio is left untouched)."}),
            },
            "optional": {
                "audio_2": ("AUDIO", {"tooltip": "Speech of speaker 2 (optional)."}),
                "multi_mode": (list(MULTI_MODES), {"default": "para", "tooltip":
                               "para: both tracks play at the same time (mixed by summing); add: speaker 2 "
                               "talks after speaker 1 (tracks concatenated)."}),
                "mask_1": ("MASK", {"tooltip": "Region of speaker 1 in the reference image (its bounding box "
                                    "is used). Without masks: left half = speaker 1, right half = speaker 2."}),
                "mask_2": ("MASK", {"tooltip": "Region of speaker 2 in the reference image."}),
            },
        }

    @coded_errors("encoding the audio")
    def encode(self, wav2vec, audio, normalize_loudness, audio_2=None, multi_mode="para",
               mask_1=None, mask_2=None):
        from ..infinitetalk_core.audio import encode_stored_features

        boxes = speaker_boxes(audio_2 is not None, mask_1, mask_2)  # checked before any encoding
        tracks, mix = speaker_tracks(audio, audio_2, multi_mode, normalize_loudness)
        stored = []
        for i in range(len(tracks)):
            stored.append(encode_stored_features(wav2vec.encoder, tracks[i]))
            tracks[i] = None  # the 16 kHz copy (230 MB per hour) is not needed past its encoding
        frames = int(stored[0].features.shape[0])
        digests = "|".join(s.digest for s in stored)
        feats = AudioFeatures([s.features for s in stored], frames, mix, boxes, digests,
                              None if boxes is None else tuple(mask_1.shape[-2:]))
        return (feats, mix, frames, frames / 25.0)


MAX_BOX_OVERLAP = 0.9  # of the smaller box; more and both speakers would drive the same face


def speaker_boxes(two_speakers: bool, mask_1, mask_2) -> list[tuple[int, int, int, int]] | None:
    """The masks' boxes for two speakers (None = automatic halves); refuses masks that cannot work."""
    if mask_1 is None and mask_2 is None:
        return None
    require(two_speakers,
            "Speaker masks are connected but audio_2 is not, so there is no second speaker to place.",
            "Connect speaker 2's audio to audio_2, or disconnect mask_1 and mask_2 (one speaker needs "
            "no mask).")
    require(mask_1 is not None and mask_2 is not None, "Only one speaker mask was given.",
            "Connect both mask_1 and mask_2, or neither (automatic left/right halves).")
    boxes = [mask_box(mask_1), mask_box(mask_2)]
    require(boxes[0] != boxes[1],
            f"mask_1 and mask_2 have the same bounding box (top, left, bottom, right) = {boxes[0]}, so "
            "both speakers would drive the same face.",
            "Paint each speaker's own region: speaker 1's face in mask_1 and speaker 2's face in mask_2.")
    overlap = box_overlap(*boxes)
    require(overlap <= MAX_BOX_OVERLAP,
            f"The boxes of mask_1 {boxes[0]} and mask_2 {boxes[1]} overlap by {overlap:.0%} of the smaller "
            "one, so both speakers would drive the same face.",
            f"Paint each speaker's own region so that the boxes overlap by at most {MAX_BOX_OVERLAP:.0%}.")
    return boxes


def box_overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection of two half-open (top, left, bottom, right) boxes as a fraction of the smaller one."""
    height = min(a[2], b[2]) - max(a[0], b[0])
    width = min(a[3], b[3]) - max(a[1], b[1])
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return max(0, height) * max(0, width) / smaller if smaller > 0 else 1.0


def speaker_tracks(audio, audio_2, mode: str, normalize: bool):
    """AUDIO (+ AUDIO) -> (16 kHz mono tracks to encode, AUDIO to mux).

    One speaker muxes the original AUDIO untouched. Two speakers mux ``mux_mix`` of the ORIGINAL
    waveforms at speaker 1's sample rate, on the timeline the features use (sum for para, speaker 2
    after speaker 1 for add), cut to the features' length (num_frames / 25 s).
    """
    from ..infinitetalk_core.audio import audio_from_comfy, combine_speakers, frames_for_samples, mux_mix, \
        prepare_waveform

    source_1 = audio_from_comfy(audio)
    first = prepare_waveform(*source_1, normalize=normalize)
    if audio_2 is None:
        return [first], audio
    source_2 = audio_from_comfy(audio_2)
    second = prepare_waveform(*source_2, normalize=normalize)
    combined = combine_speakers(first, second, mode)
    track = mux_mix(*source_1, *source_2, mode, num_frames=frames_for_samples(combined.tracks[0].shape[0]))
    mix = {"waveform": torch.from_numpy(track.waveform)[None], "sample_rate": track.sample_rate}
    return list(combined.tracks), mix
