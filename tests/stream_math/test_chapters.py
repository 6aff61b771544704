"""Chapters: silences and scene cuts found, boundaries placed in them, specs parsed, chapter plans that
start later in the audio and tile the whole job exactly."""
from __future__ import annotations

import numpy as np
import pytest

from infinitetalk_core.errors import InputValidationError
from infinitetalk_core.stream.chapters import (chapter_at, chapter_times_spec, find_scene_cuts, find_silences,
                                               frame_energy_db, plan_chapters)
from infinitetalk_core.stream.plan import plan_chunks

RATE = 16000


def tone(seconds: float, pauses=()) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    wave = 0.3 * np.sin(2 * np.pi * 220 * t)
    for a, b in pauses:
        wave[int(a * RATE):int(b * RATE)] = 1e-4 * np.sin(2 * np.pi * 50 * t[int(a * RATE):int(b * RATE)])
    return wave


def test_energy_is_per_25fps_frame_and_in_dbfs():
    level = frame_energy_db(np.full(RATE, 0.5), RATE)
    assert len(level) == 25 and np.allclose(level, 20 * np.log10(0.5))
    assert len(frame_energy_db(np.ones(RATE + 1), RATE)) == 26  # the last partial frame counts


def test_silences_need_the_threshold_and_the_duration():
    wave = tone(10, [(2.0, 2.2), (5.0, 5.8)])  # 200 ms and 800 ms pauses
    assert find_silences(wave, RATE, -40, 300) == [(125, 145)]
    assert find_silences(wave, RATE, -40, 160) == [(50, 55), (125, 145)]
    assert find_silences(wave, RATE, -100, 160) == []  # the pauses are at -83 dBFS, not below -100
    assert find_silences(np.stack([wave, wave]), RATE) == [(125, 145)]  # channels are mixed first


def test_scene_cuts_stand_out_of_the_usual_motion():
    diffs = [0, 2, 3, 2, 60, 2, 3, 2, 2, 1, 2, 3]
    assert find_scene_cuts(diffs) == [4]
    assert find_scene_cuts([0, 5, 6, 5, 9, 5]) == []  # busy motion, no cut
    assert find_scene_cuts([0, .2, .2, 8, .2, .2]) == []  # a small change in a still shot is no cut
    assert find_scene_cuts(diffs, times=[i / 50 for i in range(len(diffs))]) == [2]  # a 50 fps source


def test_chapters_land_in_the_silence_nearest_to_even_parts():
    silences = find_silences(tone(40, [(9.0, 9.6), (21.0, 21.5), (30.0, 30.4)]), RATE)
    chapters = plan_chapters("2", 1000, silences)
    assert [(c.start, c.stop, c.kind) for c in chapters] == [(0, 531, "start"), (531, 1000, "silence")]
    three = plan_chapters("3", 1000, silences)
    assert [c.start for c in three] == [0, 232, 755] and all(c.kind == "silence" for c in three[1:])
    even = plan_chapters("2", 1000, [])  # no silence anywhere: an even split, said so
    assert [(c.start, c.kind) for c in even] == [(0, "start"), (500, "even")]


def test_auto_chapters_are_about_a_minute_and_use_cuts_too():
    chapters = plan_chapters("auto", 25 * 200, silences=[(1480, 1500), (3000, 3010)], scene_cuts=[4400])
    assert [(c.start, c.kind) for c in chapters] == [(0, "start"), (1490, "silence"), (3005, "silence"),
                                                     (4400, "scene_cut")]
    assert plan_chapters("auto", 25 * 50, silences=[(600, 620)]) == plan_chapters("", 25 * 50)  # under 2 min


def test_given_times_and_their_round_trip():
    chapters = plan_chapters("12.5, 30", 1000)
    assert [(c.start, c.stop, c.kind) for c in chapters] == [(0, 312, "start"), (312, 750, "time"),
                                                             (750, 1000, "time")]
    assert chapter_times_spec(chapters) == "12.48, 30.00"
    assert plan_chapters(chapter_times_spec(chapters), 1000) == chapters
    assert chapter_times_spec(plan_chapters("", 1000)) == "1"
    assert chapter_at(chapters, 2).start == 312


@pytest.mark.parametrize("spec, problem", [("soon", "not a list of times"), ("30, 12", "increasing"),
                                           ("50", "do not fit"), ("0, 45", "inside the audio")])
def test_bad_specs_say_what_to_write(spec, problem):
    with pytest.raises(InputValidationError, match=problem) as err:
        plan_chapters(spec, 1000)
    assert "auto" in err.value.fix or "fewer" in err.value.fix


def test_a_chapter_number_outside_the_job_is_refused():
    with pytest.raises(InputValidationError, match="chapter=3, but this job has 2"):
        chapter_at(plan_chapters("20.0", 1000), 3)


def test_chapter_plans_start_later_and_tile_the_whole_job():
    chapters = plan_chapters("7, 23.2", 1000)
    plans = [plan_chunks(1000, 81, 9, c.stop, first_frame=c.start) for c in chapters]
    assert sum(p.output_frames for p in plans) == 1000
    for chapter, plan in zip(chapters, plans):
        first = plan.chunks[0]
        assert first.start == chapter.start and first.context_frames == 1 and first.keep_start == 0
        assert [c.start - chapter.start for c in plan.chunks] == [k * 72 for k in range(plan.num_chunks)]
        assert plan.chunks[-1].output_stop == plan.output_frames == chapter.frames
        assert plan.chunks[-1].padded_frames == max(0, plan.chunks[-1].stop - 1000)  # hears the real audio
    with pytest.raises(InputValidationError, match="first_frame=1000"):
        plan_chunks(1000, 81, 9, first_frame=1000)
