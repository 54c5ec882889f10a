"""Work bounded by the input (issue 25, defect 3): what a small file can make the encoder do."""

import numpy as np
import pytest
import symusic
from hypothesis import given, settings
from hypothesis import strategies as st
from test_bad_midi import midi, note, track

from hf_music_xl.models.music_xl import encoding as E


def time_signature(numerator: int, denominator_power: int, delta: int = 0):
    return (delta, [0xFF, 0x58, 0x04, numerator, denominator_power, 24, 8])


def test_meter_events_cost_a_lookup_not_a_pass_over_the_table(monkeypatch):
    # 2,000 time signatures outside the table (17/8 .. 26/8, each 10 times in turn), a note under each
    events = []
    for index in range(2_000):
        events += [time_signature(17 + index % 10, 3, delta=0 if index == 0 else 1), *note(60, length=239)]
    data = midi(track(*events))
    calls = []
    real_bar_steps = E.bar_steps
    monkeypatch.setattr(E, "bar_steps", lambda *args: calls.append(args) or real_bar_steps(*args))
    E.meter_token.cache_clear()
    E.meter_bar_lengths.cache_clear()
    ids = E.encode_midi(data)
    # each meter looked up once per kind, the table's lengths computed once: before, every event of a meter outside
    # the table recomputed the bar length of all 80 meters (162,000 calls here)
    assert len(calls) < 2 * 2_000 + len(E.METERS) + 10
    assert int(E.is_meter(ids).sum()) == 2_000  # the nearest of 17/8 .. 26/8 differ in turn: one token each
    tokens = {E.VOCAB[token] for token in ids[E.is_meter(ids)]}
    expected = {E.VOCAB[E.meter_token.__wrapped__(17 + index, 8)] for index in range(10)}
    assert tokens == expected


def test_the_cached_meter_lookup_gives_the_table_s_answer():
    for num in range(1, 40):
        for den in (1, 2, 4, 8, 16, 32, 64):
            for steps_per_beat in (2, 4, 12):
                assert E.meter_token(num, den, steps_per_beat) == E.meter_token.__wrapped__(num, den, steps_per_beat)
    assert not E.meter_bar_lengths(4).flags.writeable  # shared between calls: nobody may change it
    np.testing.assert_array_equal(E.meter_bar_lengths(4), [E.bar_steps(n, d) for n, d in E.METERS])


def stretch_by_stretch_ids(notes: E.Notes) -> list[int]:
    """The ids of a note table the obvious way, one meter's stretch at a time (what notes_to_ids did before it
    wrote all events at once): its token, its notes with waits counted from its start, the wait to the next."""
    ids, changes = [E.BOS_ID, E.PAD_ID], notes.meters.tolist()
    for k, (start, num, den) in enumerate(changes):
        end = changes[k + 1][0] if k + 1 < len(changes) else None
        inside = (notes.onset >= start) & (notes.onset < end if end is not None else True)
        ids.append(E.meter_token(num, den))
        ids += E.note_pair_ids(notes.onset[inside] - start, notes.pitch[inside], notes.duration[inside]).tolist()
        if end is not None:
            last = int(notes.onset[inside][-1] - start) if inside.any() else 0
            ids += E.wait_ids(end - start - last).tolist()
    return ids


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 127), st.integers(1, 160)), max_size=30),
    st.lists(st.tuples(st.integers(1, 3200), st.sampled_from(E.METERS)), max_size=8),
    st.sampled_from(E.METERS),
)
def test_all_events_at_once_write_what_stretch_by_stretch_writes(note_rows, changes, first_meter):
    onset, pitch, duration = (np.array(column, np.int64).reshape(-1) for column in zip(*note_rows or [((), (), ())]))
    order = np.argsort(onset, kind="stable")
    times = sorted({time for time, _ in changes})
    meter_of = dict(changes)
    meters = np.array([[0, *first_meter]] + [[time, *meter_of[time]] for time in times], np.int64)
    notes = E.Notes(onset[order], pitch[order], duration[order], meters)
    assert E.notes_to_ids(notes).tolist() == stretch_by_stretch_ids(notes)


def test_a_tiny_file_of_one_long_rest_encodes_to_a_few_tokens():
    # 2 ticks a quarter, a note, the largest delta a MIDI file holds (2**28 - 1 ticks: 33 million bars), a note:
    # 45 bytes that encoded to 6.7 million tokens (99.9% of a small corpus's training tokens)
    data = midi(track(*note(60, length=1), (0x0FFFFFFF, [0x90, 62, 80]), (1, [0x80, 62, 0])), division=2)
    assert len(data) == 45
    ids = E.encode_midi(data)
    notes = E.ids_to_notes(ids)
    assert len(ids) == 15 and notes.pitch.tolist() == [60, 62]  # xxbos xxpad ts4/4 n60 d2, 4 waits, n62 d2
    far = int(E.quantize(np.array([0x0FFFFFFF + 1]), 2, 4)[0])  # where the second note was
    assert notes.onset[0] == 0 and 0 < notes.onset[1] <= E.MAX_REST_STEPS
    assert notes.onset[1] % 16 == far % 16  # shortened by whole 4/4 bars: the note keeps its place in the bar


def score_of(notes, meters=(), ticks_per_quarter=4):
    """A one-track score at a tick a grid step: notes (onset step, pitch, steps), meters (step, num, den)."""
    score = symusic.Score(ticks_per_quarter)
    piano = symusic.Track("piano")
    for onset, pitch, steps in notes:
        piano.notes.append(symusic.Note(onset, steps, pitch, 80))
    score.tracks.append(piano)
    for step, num, den in meters:
        score.time_signatures.append(symusic.TimeSignature(step, num, den))
    return score


def test_long_rests_are_shortened_by_whole_bars_of_the_meter_in_force():
    # silences of 5000 steps before the first note (4/4), 2000 up to a change to 3/4, 1000 in 3/4; then 600 and 606
    score = score_of([(5000, 60, 4), (8000, 62, 4), (9206, 64, 4)], [(0, 4, 4), (7000, 3, 4), (8600, 6, 8)])
    notes = E.ids_to_notes(E.encode_midi(score))
    # 5000 -> 632 (273 bars of 16 cut: the fewest bars that leave at most 640), 2000 -> 640 (85 bars of 16),
    # 1000 -> 640 (30 bars of 12); the spans under the limit are untouched
    assert notes.onset.tolist() == [632, 632 + 640 + 640, 632 + 640 + 640 + 600 + 606]
    assert notes.meters.tolist() == [[0, 4, 4], [632 + 640, 3, 4], [632 + 640 + 640 + 600, 6, 8]]
    assert notes.onset[0] % 16 == 5000 % 16  # every note and change keeps its place in its bar


def test_the_rest_limit_is_a_keyword_and_a_bar_longer_than_it_cuts_just_the_excess(chorale_midi_files):
    score = score_of([(0, 60, 4), (27, 62, 4)])  # a wait of 27 steps in 4/4 (bars of 16)
    assert E.ids_to_notes(E.encode_midi(score)).onset.tolist() == [0, 27]  # under the default limit: as it was
    assert E.ids_to_notes(E.encode_midi(score, max_rest_steps=20)).onset.tolist() == [0, 11]  # one bar cut
    # a bar cut would leave less than nothing (27 - 32): the excess over 10 steps is cut instead
    assert E.ids_to_notes(E.encode_midi(score, max_rest_steps=10)).onset.tolist() == [0, 10]
    with pytest.raises(ValueError, match="max_rest_steps must be at least 1"):
        E.encode_midi(score, max_rest_steps=0)
    for path in chorale_midi_files:  # real music holds no such silence: every rest is kept
        assert E.encode_midi(path).tolist() == E.encode_midi(path, max_rest_steps=10**9).tolist()
