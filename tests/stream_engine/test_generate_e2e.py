"""End to end: tiny DiT + stand-in VAE/CLIP -> job directory -> mp4 with the original audio."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from infinitetalk_core.errors import InputValidationError
from infinitetalk_core.stream.generate import generate_chunks
from infinitetalk_core.stream.hooks import GenerationInterrupted, StreamHooks
from infinitetalk_core.stream.masks import speaker_masks
from infinitetalk_core.stream.render import render_to_job, render_video
from infinitetalk_core.stream.standins import random_audio_features
from infinitetalk_core.video.probe import decoded_audio_seconds, decoded_frame_count


def _tone(seconds: float, rate: int = 44100) -> tuple[np.ndarray, int]:
    t = np.arange(int(seconds * rate)) / rate
    return (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)[None].repeat(2, 0), rate


def _job_frames(job) -> np.ndarray:
    return np.concatenate(list(job.iter_frame_batches()))


@pytest.mark.parametrize("frames, audio_seconds", [(7, 0.5), (13, 0.4), (30, 1.6)])
def test_mp4_length_equals_audio_frames(make_inputs, tmp_path, frames, audio_seconds):
    """Shorter than a chunk, exactly one chunk, several chunks; audio longer and shorter than the video."""
    inputs = make_inputs(frames)
    plan = inputs.plan()
    out = render_video(
        tmp_path / "out.mp4",
        _tone(audio_seconds),
        tmp_path / "job",
        *inputs.args(plan),
        image_encoder=inputs.encoder,
    )
    assert plan.output_frames == frames
    assert decoded_frame_count(out) == frames
    assert decoded_audio_seconds(out) == pytest.approx(frames / 25, abs=1e-3)


def test_resume_after_crash_is_bit_identical(make_inputs, tmp_path):
    inputs = make_inputs(40, color_method="lab", color_reference="previous_tail")
    plan = inputs.plan()
    assert plan.num_chunks == 5
    clean = render_to_job(tmp_path / "clean", *inputs.args(plan), image_encoder=inputs.encoder)

    def crash(progress):
        if progress.chunk == 2 and progress.step == 1:
            raise RuntimeError("simulated crash in the middle of chunk 2")

    with pytest.raises(RuntimeError, match="simulated crash"):
        render_to_job(
            tmp_path / "crashed",
            *inputs.args(plan),
            image_encoder=inputs.encoder,
            hooks=StreamHooks(on_step=crash),
        )
    resumed_log = []
    job = render_to_job(
        tmp_path / "crashed",
        *inputs.args(plan),
        image_encoder=inputs.encoder,
        on_chunk_saved=lambda result, io: resumed_log.append(result.index),
    )
    assert resumed_log == [2, 3, 4]  # chunks 0 and 1 were not generated again
    assert job.is_complete and job.frames_done == 40
    assert _job_frames(job).tobytes() == _job_frames(clean).tobytes()
    a, b = render_to_job(tmp_path / "crashed", *inputs.args(plan), image_encoder=inputs.encoder), clean
    assert a.load_state()["context_pixels"].equal(b.load_state()["context_pixels"])


def test_interrupt_leaves_job_resumable(make_inputs, tmp_path):
    inputs = make_inputs(30)
    plan = inputs.plan()
    calls = []

    def interrupt() -> bool:
        calls.append(1)
        return len(calls) > 3  # chunk 1, step 2

    with pytest.raises(GenerationInterrupted) as info:
        render_to_job(
            tmp_path / "job",
            *inputs.args(plan),
            image_encoder=inputs.encoder,
            hooks=StreamHooks(check_interrupt=interrupt),
        )
    assert info.value.code == "E_INTERRUPTED"
    job = render_to_job(tmp_path / "job", *inputs.args(plan), image_encoder=inputs.encoder)
    assert job.is_complete and job.frames_done == 30


def test_different_inputs_do_not_resume(make_inputs, tmp_path):
    inputs = make_inputs(20)
    plan = inputs.plan()
    first = render_to_job(None, *inputs.args(plan), image_encoder=inputs.encoder, job_root=tmp_path)
    other = make_inputs(20, seed=1)  # other image, audio and text
    second = render_to_job(None, *other.args(plan), image_encoder=other.encoder, job_root=tmp_path)
    assert first.path != second.path and second.is_complete
    assert _job_frames(first).tobytes() != _job_frames(second).tobytes()
    reseeded = make_inputs(20, seed=0)
    reseeded.settings = replace(reseeded.settings, seed=8)  # same data, another noise seed
    with pytest.raises(InputValidationError, match="parameters"):
        render_to_job(first.path, *reseeded.args(plan), image_encoder=reseeded.encoder)


def test_colour_is_applied_before_context_frames_are_taken(make_inputs):
    inputs = make_inputs(30, color_method="lab", color_strength=1.0)
    plan = inputs.plan()
    results = list(generate_chunks(*inputs.args(plan), image_encoder=inputs.encoder))
    first = results[0]
    # chunk 0 keeps all its frames: the carried context is exactly its last M corrected output frames
    assert first.state.context_pixels.equal(first.frames[:, -plan.context_frames :])
    plain = make_inputs(30, color_method="none")
    uncorrected = list(generate_chunks(*plain.args(plan), image_encoder=plain.encoder))
    assert not uncorrected[0].frames.equal(first.frames)
    # the correction feeds back: chunk 1 differs beyond what correcting it alone would explain
    assert not torch.allclose(uncorrected[1].frames, results[1].frames, atol=1e-3)


def test_batched_passes_match_sequential(make_inputs):
    batched = make_inputs(13, batch_passes=True)
    single = make_inputs(13, batch_passes=False)
    plan = batched.plan()
    a = next(generate_chunks(*batched.args(plan), image_encoder=batched.encoder)).frames
    b = next(generate_chunks(*single.args(plan), image_encoder=single.encoder)).frames
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


class _OOMWhenBatched(torch.nn.Module):
    """Runs the wrapped DiT but raises the CUDA OOM error for any batch of more than one pass."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.batch_sizes = inner, []

    def forward(self, x, *args, **kwargs):
        self.batch_sizes.append(x.shape[0])
        if x.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner(x, *args, **kwargs)


def test_batched_passes_fall_back_to_sequential_after_oom(make_inputs):
    single = make_inputs(30, batch_passes=False)
    batched = make_inputs(30, batch_passes=True)
    flaky = _OOMWhenBatched(batched.model)
    plan = batched.plan()
    expected = [r.frames for r in generate_chunks(*single.args(plan), image_encoder=single.encoder)]
    oom_inputs = replace(batched, model=flaky)
    got = [r.frames for r in generate_chunks(*oom_inputs.args(plan), image_encoder=oom_inputs.encoder)]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # one failed batched attempt for the whole run, then one pass per forward (also in later chunks)
    assert flaky.batch_sizes.count(3) == 1 and set(flaky.batch_sizes) == {1, 3}
    assert plan.num_chunks > 1


def test_hooks_report_progress_and_previews(make_inputs):
    inputs = make_inputs(30)
    plan = inputs.plan()
    steps, chunks = [], []
    stages = []
    hooks = StreamHooks(on_step=steps.append, on_chunk=chunks.append, on_stage=stages.append)
    list(generate_chunks(*inputs.args(plan), image_encoder=inputs.encoder, hooks=hooks))
    assert len(steps) == plan.num_chunks * inputs.settings.steps
    fractions = [s.fraction for s in steps]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    # the last step still has the final decode ahead: its ETA is the measured per-chunk overhead, not 0
    assert steps[-1].eta_seconds is not None and steps[-1].eta_seconds > 0
    assert [(s.stage, s.chunk) for s in stages[:3]] == [("encoding_references", 0), ("sampling", 0), ("decoding", 0)]
    assert len(stages) == 3 * plan.num_chunks
    assert steps[0].denoised.shape == (16, 4, 4, 4)
    assert [c.chunk for c in chunks] == list(range(plan.num_chunks))
    assert sum(c.frames.shape[1] for c in chunks) == 30


def test_two_speakers_with_masks(make_inputs):
    inputs = make_inputs(13)
    plan = inputs.plan()
    features = torch.stack([inputs.features, random_audio_features(13, seed=5)])
    masks = speaker_masks(32, 32, 32, 32, num_speakers=2)
    args = list(inputs.args(plan))
    args[4] = features
    two = next(generate_chunks(*args, image_encoder=inputs.encoder, ref_target_masks=masks)).frames
    one = next(generate_chunks(*inputs.args(plan), image_encoder=inputs.encoder)).frames
    assert two.shape == one.shape and not two.equal(one)


def test_per_chunk_text_contexts_are_used(make_inputs):
    from infinitetalk_core.stream.host import TextContexts

    inputs = make_inputs(30)
    plan = inputs.plan()
    base = list(generate_chunks(*inputs.args(plan), image_encoder=inputs.encoder))
    pos, neg = inputs.text.chunks[0]
    inputs.text = TextContexts(((pos, neg), (pos, neg), (pos * -1.0, neg)))
    travel = list(generate_chunks(*inputs.args(plan), image_encoder=inputs.encoder))
    assert base[1].frames.equal(travel[1].frames)
    assert not base[2].frames.equal(travel[2].frames)


def test_v2v_references_follow_source_time(make_inputs, tmp_path):
    from fractions import Fraction

    from infinitetalk_core.stream.references import reference_frame_indices
    from infinitetalk_core.stream.sources import VideoFileReference
    from infinitetalk_core.video import write_mp4

    source = (np.arange(40, dtype=np.uint8)[:, None, None, None] * 6).repeat(48, 1).repeat(64, 2).repeat(3, 3)
    path = write_mp4(tmp_path / "src.mp4", [source], 40, 64, 48, fps=Fraction(30000, 1001))
    inputs = make_inputs(30, color_reference="chunk")
    inputs.references = VideoFileReference(path, (32, 32))
    plan = inputs.plan()
    try:
        results = list(generate_chunks(*inputs.args(plan), image_encoder=inputs.encoder))
    finally:
        inputs.references.close()
    expected = reference_frame_indices(plan, 40, Fraction(30000, 1001))
    assert [r.reference_index for r in results] == expected == [0, 9, 19, 28]
    assert sum(r.frames.shape[1] for r in results) == 30
