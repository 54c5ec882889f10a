"""Work bounded by the input (issue 25, defect 3): what a small file can make the encoder do."""

import numpy as np
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
