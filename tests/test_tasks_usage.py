"""Filling bars and harmonizing through the pipeline, with a model briefly trained for them (``task_model_dir``):
the input's own notes come back as the file has them, the model writes exactly the bars asked for, a model not
trained for a task refuses it, the request checks the tasks' fields, and the remote code does the same."""

import base64
import json

import numpy as np
import pytest
import symusic
from helpers import recorded_batches, run_without_package

from hf_music_xl import MusicXLConfig
from hf_music_xl.generate import load_pipeline
from hf_music_xl.models.music_xl import batch_sampling_music_xl, encoding, tasks_music_xl
from hf_music_xl.models.music_xl.sampling_music_xl import SamplingRequest, bar_range

TPQ = 384  # not the 480 the encoding writes: added notes must take the input's resolution
STEP = TPQ // encoding.STEPS_PER_BEAT


def humanize(path, out_path):
    """The chorale at 384 ticks per quarter, each note a little late (up to 28 ticks, under half a grid step, and
    shortened so that no two of one pitch overlap) at its own velocity, with a drum track and a tempo change: what
    a person's file looks like, so that the kept notes must keep all of it."""
    score = symusic.Score(str(path)).resample(TPQ)
    for number, track in enumerate(score.tracks):
        columns = track.notes.numpy()
        late = 7 * ((np.arange(len(columns["time"])) + number) % 5)
        columns["time"] = (columns["time"] + late).astype(np.int32)
        columns["duration"] = (columns["duration"] - 2 * late).astype(np.int32)
        columns["velocity"] = (40 + (np.arange(len(late)) * 7 + number) % 80).astype(np.int8)
        track.notes = symusic.Note.from_numpy(**columns)
    drums = symusic.Track("Drums", 0, True)
    beats = np.arange(0, TPQ * 40, TPQ, dtype=np.int32)
    drums.notes = symusic.Note.from_numpy(
        beats, np.full(40, STEP, np.int32), np.full(40, 42, np.int8), np.full(40, 99, np.int8)
    )
    score.tracks.append(drums)
    score.tempos.append(symusic.Tempo(TPQ * 16, 90.0))
    score.dump_midi(str(out_path))
    return out_path


@pytest.fixture(scope="module")
def pieces(chorale_midi_files, tmp_path_factory):
    """Humanized chorales: 0 (4/4, 22 bars), 6 (3/4) and 11 (4/4, 10 bars)."""
    folder = tmp_path_factory.mktemp("humanized")
    return {index: humanize(chorale_midi_files[index], folder / f"{index}.mid") for index in (0, 6, 11)}


@pytest.fixture(scope="module")
def pipe(task_model_dir):
    return load_pipeline(str(task_model_dir))


def note_rows(track, keep=None) -> list[tuple]:
    """(time, duration, pitch, velocity) of each note of a symusic track (where ``keep``), sorted."""
    columns = track.notes.numpy()
    keep = np.ones(len(columns["time"]), bool) if keep is None else keep
    return sorted(zip(*(columns[key][keep].tolist() for key in ("time", "duration", "pitch", "velocity"))))


def grid_step(ticks) -> np.ndarray:
    """Ticks to grid steps, half up (as the encoding rounds)."""
    return np.floor(np.asarray(ticks) / STEP + 0.5).astype(np.int64)


def assert_same_timing(out, given):
    assert out.ticks_per_quarter == given.ticks_per_quarter == TPQ
    assert [(t.time, t.mspq) for t in out.tempos] == [(t.time, t.mspq) for t in given.tempos]
    assert [(t.time, t.numerator, t.denominator) for t in out.time_signatures] == [
        (t.time, t.numerator, t.denominator) for t in given.time_signatures
    ]


def span(path, bars) -> tuple[int, int]:
    """The grid steps of bars (first, last), counted from 1, in a piece of one meter (worked out here by hand)."""
    meters = encoding.read_notes(str(path)).meters
    assert len(meters) == 1
    bar = encoding.bar_steps(int(meters[0, 1]), int(meters[0, 2]))
    return (bars[0] - 1) * bar, bars[1] * bar


# ----------------------------------------------------------------------------------------------------------
# Infilling


@pytest.mark.parametrize("task, fields", [("infill", {"bars": (2, 3)}), ("harmonize", {})])
def test_a_list_of_pieces_is_one_batch_and_each_is_its_sample_alone(pipe, pieces, monkeypatch, task, fields):
    """Each row keeps its own walls, given tokens, bars and prompt end: a 4/4 and a 3/4 piece of different lengths
    in one batch give, note for note, what each gives alone."""
    monkeypatch.setattr(batch_sampling_music_xl, "MAX_FED_TOKENS", 10_000)  # the layouts differ by hundreds of tokens
    inputs = [str(pieces[11]), str(pieces[6])]
    alone = [pipe(path, task=task, num_samples=2, seed=3, **fields) for path in inputs]
    calls = recorded_batches(pipe.model, monkeypatch)
    together = pipe(inputs, task=task, num_samples=2, seed=3, **fields)
    assert calls[0] == 4
    for samples, single in zip(together, alone):
        assert [(s["ids"], s["midi"], s["bars"]) for s in samples] == [(s["ids"], s["midi"], s["bars"]) for s in single]
    assert len({len(s["ids"]) for samples in together for s in samples}) > 1


@pytest.mark.parametrize("index, bars", [(0, (3, 5)), (6, (2, 3))])  # 4/4 and 3/4
def test_infilling_keeps_every_note_outside_the_bars_as_the_file_has_it(pipe, pieces, index, bars):
    given = symusic.Score(str(pieces[index]))
    start, end = span(pieces[index], bars)
    for sample in pipe(str(pieces[index]), task="infill", bars=bars, num_samples=2, seed=3):
        out = symusic.Score.from_midi(sample["midi"])
        assert_same_timing(out, given)
        kept, added = out.tracks[: len(given.tracks)], out.tracks[len(given.tracks) :]
        for before, after in zip(given.tracks, kept):
            onset = grid_step(before.notes.numpy()["time"])
            outside = before.is_drum | (onset < start) | (onset >= end)  # drum tracks stay whole
            assert (after.name, after.is_drum) == (before.name, before.is_drum)
            assert note_rows(after) == note_rows(before, outside)
        assert sum(len(track.notes) for track in kept) < given.note_num()  # the bars had notes, now replaced
        assert added and all(track.name.startswith(f"Generated (bars {bars[0]}-{bars[1]})") for track in added)


@pytest.mark.parametrize("index, bars", [(0, (3, 5)), (6, (2, 3))])
def test_infilling_writes_exactly_the_bars_asked_for(pipe, pieces, index, bars):
    start, end = span(pieces[index], bars)
    tracks = len(symusic.Score(str(pieces[index])).tracks)
    for sample in pipe(str(pieces[index]), task="infill", bars=bars, num_samples=2, seed=3):
        ids = np.array(sample["ids"])
        assert encoding.first_invalid_position(ids) is None
        new = ids[sample["prompt_length"] :]  # after xxback: time stands at the bars' start
        waits = new[1:][new[:-1] == encoding.SEP_ID] - encoding.DURATION_OFFSET
        assert start + waits.sum() == end  # time went from the first bar's start exactly to the last one's end
        written = [note for note in sample["notes"] if not note["prompt"]]
        assert written and all(start <= note["onset"] < end for note in written)
        assert (sample["task"], tuple(sample["infill_bars"]), sample["bars"]) == ("infill", bars, bars[1] - bars[0] + 1)
        # the added track holds them at the file's resolution
        added = symusic.Score.from_midi(sample["midi"]).tracks[tracks:]
        assert sorted((n.time, n.duration, n.pitch) for track in added for n in track.notes) == sorted(
            (n["onset"] * STEP, n["duration"] * STEP, n["pitch"]) for n in written
        )


def test_bars_outside_the_piece_are_refused(pipe, pieces):
    with pytest.raises(ValueError, match=r"bars 30-31 are not within the piece's bars 1-22"):
        pipe(str(pieces[0]), task="infill", bars=(30, 31))


# ----------------------------------------------------------------------------------------------------------
# Harmonization


def test_harmonizing_returns_the_melody_note_for_note(pipe, pieces):
    given = symusic.Score(str(pieces[0]))
    [sample] = pipe(str(pieces[0]), task="harmonize", seed=1)
    out = symusic.Score.from_midi(sample["midi"])
    assert_same_timing(out, given)
    melody, *added = out.tracks  # the top voice by default: the soprano
    assert melody.name == "soprano" and note_rows(melody) == note_rows(given.tracks[0])
    assert added and all(track.name.startswith("Harmonization") for track in added)
    # the layout gave the model that melody, bar by bar, to the end, and it wrote voices under it
    alone = symusic.Score(TPQ)
    alone.tracks.append(given.tracks[0])
    melody_notes = encoding.read_notes(alone)
    in_layout = tasks_music_xl.given_notes(np.array(sample["ids"]))
    for column in ("onset", "pitch", "duration"):
        assert np.array_equal(getattr(in_layout, column), getattr(melody_notes, column))
    assert [(n["onset"], n["pitch"], n["duration"]) for n in sample["notes"] if n["prompt"]] == list(
        zip(melody_notes.onset.tolist(), melody_notes.pitch.tolist(), melody_notes.duration.tolist())
    )
    assert sample["bars"] == int(melody_notes.onset[-1]) // 16 + 1 and sample["task"] == "harmonize"
    assert sum(not n["prompt"] for n in sample["notes"]) > len(melody_notes)


@pytest.mark.parametrize("choice, name", [("alto", "alto"), (2, "tenor"), ("3", "bass"), (None, "bass alone")])
def test_the_melody_is_the_named_or_numbered_track_or_the_only_one(pipe, pieces, tmp_path, choice, name):
    path, given = str(pieces[11]), symusic.Score(str(pieces[11]))
    if choice is None:  # a one-track file
        alone = symusic.Score(TPQ)
        alone.tracks.append(given.tracks[3])
        alone.dump_midi(path := str(tmp_path / "bass.mid"))
        given, name = alone, "bass"
    [sample] = pipe(path, task="harmonize", melody_track=choice, seed=0)
    melody = symusic.Score.from_midi(sample["midi"]).tracks[0]
    source = next(track for track in given.tracks if track.name == name)
    assert melody.name == name and note_rows(melody) == note_rows(source)


def test_a_melody_track_that_is_not_there_is_refused(pipe, pieces):
    tracks = "0: 'soprano', 1: 'alto', 2: 'tenor', 3: 'bass', 4: 'Drums'"
    with pytest.raises(ValueError, match=f"no track named 'Bass2'; the tracks are {tracks}"):
        pipe(str(pieces[11]), task="harmonize", melody_track="Bass2")
    with pytest.raises(ValueError, match=f"track 4 is not a track with notes to harmonize; the tracks are {tracks}"):
        pipe(str(pieces[11]), task="harmonize", melody_track=4)  # the drums


# ----------------------------------------------------------------------------------------------------------
# Refusals and checks


def test_a_model_not_trained_for_a_task_refuses_it_in_one_line(tiny_model_dir, pieces):
    continue_only = load_pipeline(str(tiny_model_dir))
    for task, extra in (("infill", {"bars": (1, 2)}), ("harmonize", {})):
        with pytest.raises(ValueError) as refused:
            continue_only(str(pieces[11]), task=task, **extra)
        assert str(refused.value) == (
            f"this model was trained with --tasks continue; {task} needs a model trained with --tasks ...,{task}"
        )
    # a model saved before the task tokens, and one trained without continuing
    with pytest.raises(ValueError, match="trained with --tasks continue; harmonize needs"):
        tasks_music_xl.check_task(MusicXLConfig(vocab_size=encoding.TASK_OFFSET), "harmonize")
    with pytest.raises(ValueError, match="trained with --tasks infill,harmonize; continue needs"):
        tasks_music_xl.check_task(MusicXLConfig(tasks="infill,harmonize"), "continue")


@pytest.mark.parametrize(
    "fields, problem",
    [
        (dict(task="infill"), "infill needs the bars to fill, first and last (counted from 1), e.g. (5, 8)"),
        (
            dict(task="infill", infill_bars=(0, 3)),
            "the bars to fill need 1 <= first <= last (bars count from 1), got 0-3",
        ),
        (dict(task="infill", infill_bars=(5, 4)), "got 5-4"),
        (dict(task="infill", infill_bars=(2.5, 3)), "a bar to fill must be a whole number, got 2.5"),
        (dict(task="infill", infill_bars="5-8"), "the bars to fill are two whole numbers, first and last"),
        (dict(infill_bars=(1, 2)), "infill_bars are the bars an infilling fills, not a continue task's"),
        (dict(task="harmonize", infill_bars=(1, 2)), "not a harmonize task's"),
        (dict(task="infill", infill_bars=(1, 2), melody_track="alto"), "melody_track chooses the melody of a"),
        (dict(task="harmonize", melody_track=-1), "melody_track is a track's name or its index from 0, got -1"),
        (dict(task="harmonize", allow_end=True), "allow_end lets a continuation end early"),
        (dict(task="fill"), "unknown task 'fill'; choose from continue, infill, harmonize"),
    ],
)
def test_the_request_checks_the_tasks_fields_and_the_pipeline_says_the_same(pipe, pieces, fields, problem):
    with pytest.raises(ValueError) as refused:
        SamplingRequest(**fields)
    assert problem in str(refused.value)
    with pytest.raises(ValueError) as also:
        pipe(str(pieces[11]), **fields)
    assert str(also.value) == str(refused.value)


def test_what_the_request_accepts():
    assert SamplingRequest(task="infill", infill_bars=[2.0, 3]).infill_bars == (2, 3)
    assert SamplingRequest(task="harmonize", melody_track="").melody_track is None
    assert SamplingRequest(task="harmonize", melody_track=2.0).melody_track == 2
    assert (bar_range("5-8"), bar_range("5"), bar_range(" 2 - 3 ")) == ((5, 8), (5, 5), (2, 3))
    for text in ("5-", "x", "5-8-9"):
        with pytest.raises(ValueError):
            bar_range(text)


def test_bars_as_a_pair_need_the_infill_task(pipe, pieces):
    with pytest.raises(ValueError, match=r"bars=\(first, last\) are bars to fill: pass task='infill' too"):
        pipe(str(pieces[11]), bars=(2, 3))
    with pytest.raises(ValueError, match="give the bars to fill once"):
        pipe(str(pieces[11]), task="infill", bars=(2, 3), infill_bars=(2, 3))
    with pytest.raises(ValueError, match="infill needs a piece"):
        pipe(None, task="infill", bars=(2, 3))


# ----------------------------------------------------------------------------------------------------------
# Without the package


def test_the_tasks_through_remote_code_in_a_fresh_interpreter(task_model_dir, pipe, pieces, tmp_path):
    path = str(pieces[11])
    out = run_without_package(
        f"""
        import base64
        from transformers import pipeline
        pipe = pipeline(model={str(task_model_dir)!r}, trust_remote_code=True)
        [filled] = pipe({path!r}, task="infill", bars=(2, 3), seed=4)
        [harmonized] = pipe({path!r}, task="harmonize", melody_track="alto", seed=4)
        samples = [{{**s, "midi": base64.b64encode(s["midi"]).decode()}} for s in (filled, harmonized)]
        print("RESULT " + json.dumps({{"class": type(pipe).__module__, "samples": samples}}, default=int))
        """,
        tmp_path,
    )
    assert out["class"].startswith("transformers_modules.")
    here = pipe(path, task="infill", bars=(2, 3), seed=4) + pipe(path, task="harmonize", melody_track="alto", seed=4)
    for remote, local in zip(out["samples"], here):
        assert base64.b64decode(remote.pop("midi")) == local.pop("midi")
        assert remote == json.loads(json.dumps(local))
