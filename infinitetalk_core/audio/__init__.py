"""Audio front end: any speech track → the reference's wav2vec2 features → per-chunk DiT windows.

The audio model file
    InfiniteTalk hears speech through TencentGameMate/chinese-wav2vec2-base. Either
    - ``wav2vec2-chinese-base_fp16.safetensors`` (Kijai/wav2vec2_safetensors, 190 MB; the file ComfyUI's
      own InfiniteTalk workflows use) in ``ComfyUI/models/audio_encoders`` — the config is bundled here
      (``chinese_wav2vec2_base.json``), nothing is downloaded; or
    - the Hugging Face folder ``TencentGameMate/chinese-wav2vec2-base`` (config.json,
      preprocessor_config.json, model.safetensors or pytorch_model.bin).

Pipeline (one speaker)::

    samples, rate = load_audio_file("speech.m4a")          # or audio_from_comfy(AUDIO)
    wave = prepare_waveform(samples, rate)                  # 16 kHz mono, -23 LUFS  [n] float32
    encoder = load_wav2vec2(path, device="cpu", dtype=torch.float32)
    features = encode_audio_features(encoder, wave)         # [T, 12, 768], T = int(n / 640.0)
    audio = chunk_audio_windows(features, start=72 * k, frames=81)   # [1, 81, 5, 12, 768]

Two speakers: ``tracks = combine_speakers(wave1, wave2, "para"|"add")``, encode each of
``tracks.tracks``, pass both feature tensors to ``chunk_audio_windows`` (→ [2, F, 5, L, C]); mux
``mux_mix(samples1, rate1, samples2, rate2, mode, num_frames)`` (the original waveforms on the same
timeline, at speaker 1's sample rate; ``tracks.mix`` is only the 16 kHz copy).

Public API
    load_audio_file(path) -> (np.ndarray [C, T] float32, sample_rate)
    audio_from_comfy(audio_dict) -> (np.ndarray [C, T] float32, sample_rate)
    prepare_waveform(samples, sample_rate, normalize=True, target_lufs=-23.0) -> np.ndarray [n] (16 kHz)
    frames_for_samples(num_samples, sample_rate=16000, fps=25) -> int
    integrated_loudness(samples, rate) -> float LUFS;  normalize_loudness(samples, rate, target_lufs)
    load_wav2vec2(path, device="cpu", dtype=torch.float32, config=None) -> Wav2Vec2AudioEncoder
    wav2vec2_from_state_dict(state_dict, config=None, do_normalize=False, device="cpu",
                             dtype=torch.float32, source="state dict") -> Wav2Vec2AudioEncoder
    build_wav2vec2(config_dict, device="meta") -> transformers Wav2Vec2Model (eager); bundled_config()
    wav2vec2_from_config(config=None, device="cpu", dtype=torch.float32, seed=0) -> random-init encoder
    encode_audio_features(encoder, waveform, sample_rate=16000, segment_seconds=40.0,
                          context_seconds=5.0, out_dtype=torch.float32) -> Tensor [T, L, C] (CPU)
    encode_stored_features(encoder, waveform, ..., dtype=STORED_DTYPE) -> StoredFeatures(features, digest)
        (what Audio Encode holds for a whole run: bfloat16, 1.66 GB per hour; digest = tensor_digest of
        the float32 features, so job fingerprints do not depend on the storage dtype)
    combine_speakers(first, second, mode="para") -> SpeakerTracks(tracks, mix, mode)
    mux_mix(first, first_rate, second, second_rate, mode="para", num_frames=None, fps=25)
        -> MuxTrack(waveform [C, T], sample_rate, offsets, gain)
    chunk_audio_windows(features, start, frames, total_frames=None, padding="mirror")
        -> Tensor [P, frames, 5, L, C]
    window_rows(start, frames, total_frames, padding="mirror", available_rows=None) -> [frames, 5] rows

Behaviour on unusual input
    empty audio, NaN/inf samples, a bad sample rate, an undecodable or video-only file → AudioInputError
    (E_AUDIO) saying what was wrong; all-silent audio is valid (loudness left unchanged, features of
    silence: a closed mouth); clips shorter than 0.4 s are not loudness-normalised (the reference raises);
    clips shorter than one chunk are valid (few feature rows, the video is trimmed to them); clips shorter
    than one video frame (40 ms) → AudioInputError. Any input rate (8, 22.05, 44.1, 48 kHz, ...) works.
"""
from .decode import audio_from_comfy, load_audio_file
from .features import (
    STORED_DTYPE,
    StoredFeatures,
    encode_audio_features,
    encode_stored_features,
    plan_segments,
)
from .loudness import integrated_loudness, normalize_loudness
from .mux_mix import MuxTrack, mux_mix
from .prepare import frames_for_samples, prepare_waveform
from .speakers import SpeakerTracks, combine_speakers
from .wav2vec2_loading import (
    Wav2Vec2AudioEncoder,
    build_wav2vec2,
    bundled_config,
    load_wav2vec2,
    wav2vec2_from_config,
    wav2vec2_from_state_dict,
)
from .windows import chunk_audio_windows, window_rows

__all__ = [
    "STORED_DTYPE",
    "MuxTrack",
    "SpeakerTracks",
    "StoredFeatures",
    "Wav2Vec2AudioEncoder",
    "audio_from_comfy",
    "build_wav2vec2",
    "bundled_config",
    "chunk_audio_windows",
    "combine_speakers",
    "encode_audio_features",
    "encode_stored_features",
    "frames_for_samples",
    "integrated_loudness",
    "load_audio_file",
    "load_wav2vec2",
    "mux_mix",
    "normalize_loudness",
    "plan_segments",
    "prepare_waveform",
    "wav2vec2_from_config",
    "wav2vec2_from_state_dict",
    "window_rows",
]
