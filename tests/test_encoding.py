"""MIDI <-> ids: the reference layout, its fixed defects, exact round trips on real chorales, total decoding."""

import numpy as np
import pytest
import symusic
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_music_xl.models.music_xl import encoding as E


def text(ids):
    return " ".join(E.VOCAB[i] for i in ids)


def score_of(notes, tracks=1, drum=False, tpq=480):
    """A score from (onset_quarters, pitch, duration_quarters) triples, spread over `tracks` tracks."""
    score = symusic.Score(tpq)
    for index in range(tracks):
        track = symusic.Track(f"t{index}", 0, drum)
        for onset, pitch, duration in notes[index::tracks]:
            track.notes.append(symusic.Note(round(onset * tpq), round(duration * tpq), pitch, 90))
        score.tracks.append(track)
    return score


def notes_as_set(notes: E.Notes):
    return set(zip(notes.onset.tolist(), notes.pitch.tolist(), notes.duration.tolist()))


def test_ids_match_the_reference_layout():
    assert [E.VOCAB[i] for i in (0, 1, 2, 8, 9, 136, 137, 297, 298)] == [
        "xxbos",
        "xxpad",
        "xxeos",
        "xxsep",
        "n0",
        "n127",
        "d0",
        "d160",
        "xxunk",
    ]
    # time signatures come after: ids 0..298 keep their meaning
    assert E.VOCAB_SIZE == 383 and len(set(E.VOCAB)) == 383 and E.LEGACY_VOCAB_SIZE == 299
    assert E.VOCAB[379:] == ["xxgiven", "xxback", "xxinfill", "xxharmonize"]  # the task tokens, after them
    assert E.VOCAB[299] == "ts1/1" and E.VOCAB[378] == "ts16/16"
    needed = ["2/4", "3/4", "4/4", "5/4", "6/4", "2/2", "3/2", "3/8", "6/8", "9/8", "12/8"]
    assert all(f"ts{meter}" in E.TOKEN_TO_ID for meter in needed)


def test_reference_example():
    # musicautobot's own example: a chord (highest first), then one note a quarter later; without a time signature
    # the file is in 4/4, as MIDI defines it, and says so after xxbos xxpad
    ids = E.encode_midi(score_of([(0, 60, 1), (0, 52, 2), (0, 45, 2), (1, 62, 1)], tracks=2))
    assert text(ids) == "xxbos xxpad ts4/4 n60 d4 n52 d8 n45 d8 xxsep d4 n62 d4"
    # the reference's ids exactly, for vocabularies saved before time signatures
    legacy = E.encode_midi(score_of([(0, 60, 1), (0, 52, 2), (0, 45, 2), (1, 62, 1)], tracks=2), meter=False)
    assert text(legacy) == "xxbos xxpad n60 d4 n52 d8 n45 d8 xxsep d4 n62 d4"


def with_meters(score, *meters):
    """The score with time signatures (time in quarters, numerator, denominator)."""
    for quarters, num, den in meters:
        score.time_signatures.append(symusic.TimeSignature(round(quarters * score.ticks_per_quarter), num, den))
    return score


def test_time_signatures_at_the_start_and_at_each_change():
    # 3/4 for two bars (24 steps), then 6/8 from step 24: the rest that crosses the change is split there
    score = with_meters(score_of([(0, 60, 1), (5, 62, 1), (8, 64, 1)]), (0, 3, 4), (6, 6, 8))
    ids = E.encode_midi(score)
    assert text(ids) == "xxbos xxpad ts3/4 n60 d4 xxsep d20 n62 d4 xxsep d4 ts6/8 xxsep d8 n64 d4"
    notes = E.ids_to_notes(ids, strict=True)
    assert notes.meters.tolist() == [[0, 3, 4], [24, 6, 8]] and notes.onset.tolist() == [0, 20, 32]
    decoded = E.decode_ids(ids)  # the decoder writes them back into the MIDI
    assert [(ts.time, ts.numerator, ts.denominator) for ts in decoded.time_signatures] == [(0, 3, 4), (2880, 6, 8)]
    assert E.encode_midi(decoded).tolist() == ids.tolist()
    # a change at a note: the time signature first; repeated or replaced ones count once
    same = with_meters(score_of([(0, 60, 1), (3, 62, 1)]), (0, 4, 4), (0, 2, 4), (3, 2, 4), (3, 3, 8))
    assert text(E.encode_midi(same)) == "xxbos xxpad ts2/4 n60 d4 xxsep d12 ts3/8 n62 d4"


def test_other_meters_keep_their_bar_length():
    assert E.VOCAB[E.meter_token(6, 8)] == "ts6/8" and E.meter_token(6, 8) != E.meter_token(
        3, 4
    )  # same bar, other beats
    assert E.VOCAB[E.meter_token(24, 16)] == "ts12/8"  # 24 sixteenths: numerator over 16, as twelve eighths
    assert E.VOCAB[E.meter_token(7, 32)] == "ts4/16"  # 3.5 steps, on a 16th grid: 4
    assert E.bar_steps(*E.token_meter(E.meter_token(40, 8))) == 80  # 40/8 = 80 steps, as 5/1
    # odd lengths past 16 steps have no token: the nearest length (17/16: 16 steps)
    assert E.bar_steps(*E.token_meter(E.meter_token(17, 16))) == 16


def test_bars_follow_meters_and_a_pickup_moves_nothing_after_it():
    # a pickup of one quarter written as a 1/4 bar, then 4/4: bar lines at 0, 4, 20, 36
    bars = E.Bars(np.array([[0, 1, 4], [4, 4, 4]]))
    bar, step, length = bars.locate([0, 3, 4, 19, 20, 36])
    assert bar.tolist() == [0, 0, 1, 1, 2, 3] and step.tolist() == [0, 3, 0, 15, 0, 0] and length.tolist()[-1] == 16
    assert bars.bar_lines(40).tolist() == [0, 4, 20, 36]
    # a change off the bar line ends that bar short: 3/4 from 0, 2/4 at 30 (mid-bar 2): bars 0, 12, 24, 30, 38
    bars = E.Bars(np.array([[0, 3, 4], [30, 2, 4]]))
    assert bars.bar_lines(46).tolist() == [0, 12, 24, 30, 38, 46]
    # beats: 3/4 has three of 4 steps, 6/8 two of 6
    assert [column.tolist() for column in E.Bars(np.array([[0, 3, 4]])).beat_of([0, 5, 11])] == [
        [0, 0, 0],
        [0, 1, 2],
        [0, 1, 3],
    ]
    assert [column.tolist() for column in E.Bars(np.array([[0, 6, 8]])).beat_of([0, 5, 11])] == [
        [0, 0, 0],
        [0, 0, 1],
        [0, 5, 5],
    ]


def test_bars_of_notes_follow_their_meters_and_grid():
    notes = E.ids_to_notes(
        [
            0,
            1,
            E.TOKEN_TO_ID["ts3/4"],
            69,
            E.DURATION_OFFSET + 4,
            E.SEP_ID,
            E.DURATION_OFFSET + 30,
            70,
            E.DURATION_OFFSET + 4,
        ]
    )
    assert notes.bars().bar_lines(30).tolist() == [0, 12, 24] and notes.bars().lengths.tolist() == [12]
    assert notes.bars(steps_per_beat=8).lengths.tolist() == [24]  # 3/4 with 8 steps a quarter


def test_long_rests_split_and_leading_rest_kept():
    # 100 quarters = 400 steps of rest after the first note; the piece starts after a 2-bar (32 step) rest.
    ids = E.encode_midi(score_of([(8, 60, 1), (108, 62, 1)]))
    assert text(ids) == "xxbos xxpad ts4/4 xxsep d32 n60 d4 xxsep d160 xxsep d160 xxsep d80 n62 d4"
    assert ids.max() < E.VOCAB_SIZE
    assert E.ids_to_notes(ids).onset.tolist() == [32, 432]


def test_durations_clamp_round_and_never_vanish():
    # 50 quarters clamps to d160; a 64th note rounds up to one step; a 32nd note (half a step) rounds half up.
    ids = E.encode_midi(score_of([(0, 60, 50), (1, 61, 1 / 16), (2, 62, 1 / 8), (3.125, 63, 1)]))
    assert text(ids) == "xxbos xxpad ts4/4 n60 d160 xxsep d4 n61 d1 xxsep d4 n62 d1 xxsep d5 n63 d4"


def test_full_pitch_range_and_duplicates_collapse_to_longest():
    ids = E.encode_midi(score_of([(0, 0, 1), (0, 127, 1), (1, 64, 1), (1, 64, 3)], tracks=2))
    assert text(ids) == "xxbos xxpad ts4/4 n127 d4 n0 d4 xxsep d4 n64 d12"


def test_drum_tracks_dropped_and_tracks_merged():
    score = score_of([(0, 60, 1), (1, 64, 1)], tracks=2)
    score.tracks.append(score_of([(0, 36, 1)], drum=True).tracks[0])
    assert text(E.encode_midi(score)) == "xxbos xxpad ts4/4 n60 d4 xxsep d4 n64 d4"


def test_eos_and_inputs_in_all_forms(tmp_path):
    score = score_of([(0, 60, 1)])
    path = tmp_path / "one.mid"
    score.dump_midi(str(path))
    expected = [E.BOS_ID, E.PAD_ID, E.TOKEN_TO_ID["ts4/4"], E.NOTE_OFFSET + 60, E.DURATION_OFFSET + 4, E.EOS_ID]
    for source in (path, str(path), path.read_bytes(), score, score.to("quarter")):
        assert E.encode_midi(source, add_eos=True).tolist() == expected


def test_bad_input_raises_one_error_type_naming_the_file(tmp_path):
    empty, garbage, silent = tmp_path / "empty.mid", tmp_path / "garbage.mid", tmp_path / "silent.mid"
    empty.write_bytes(b"")
    garbage.write_bytes(b"this is not a MIDI file at all")
    symusic.Score(480).dump_midi(str(silent))
    for path, problem in ((empty, "empty"), (garbage, "not a readable MIDI"), (silent, "no notes")):
        with pytest.raises(E.MidiReadError, match=problem) as error:
            E.encode_midi(path)
        assert str(path) in str(error.value) and isinstance(error.value, ValueError)
    assert E.encode_midi(silent, allow_empty=True).tolist() == [E.BOS_ID, E.PAD_ID, E.TOKEN_TO_ID["ts4/4"]]
    # inputs that are not files are named by what they are
    with pytest.raises(E.MidiReadError, match=r"^<symusic\.Score>: no notes outside drum tracks$"):
        E.encode_midi(symusic.Score(480))
    with pytest.raises(E.MidiReadError, match=r"^<30 bytes of MIDI>: not a readable MIDI file"):
        E.encode_midi(garbage.read_bytes())


def reference_notes(path, ticks_per_step=120):
    """The notes of a MIDI file the slow, obvious way: every non-drum note, one per (onset, pitch), longest."""
    longest = {}
    for track in symusic.Score(str(path)).tracks:
        for note in track.notes:
            assert note.time % ticks_per_step == 0 and note.duration % ticks_per_step == 0, "not on the grid"
            key = (note.time // ticks_per_step, note.pitch)
            longest[key] = max(longest.get(key, 0), note.duration // ticks_per_step)
    return {(onset, pitch, duration) for (onset, pitch), duration in longest.items()}


def test_round_trip_is_exact_on_real_chorales(chorale_midi_files, tmp_path):
    total_notes = 0
    for path in chorale_midi_files:
        ids = E.encode_midi(path)
        expected = reference_notes(path)
        assert notes_as_set(E.ids_to_notes(ids, strict=True)) == expected
        # ... and through a MIDI file written by the decoder, read back by symusic.
        written = tmp_path / path.name
        E.decode_ids(ids).dump_midi(str(written))
        assert notes_as_set(E.score_to_notes(symusic.Score(str(written)))) == expected
        assert E.encode_midi(written).tolist() == ids.tolist()
        total_notes += len(expected)
    assert total_notes > 2000


def test_decode_is_total_on_hostile_sequences():
    rng = np.random.default_rng(0)
    hostile = [
        [],
        [E.SEP_ID],
        [E.DURATION_OFFSET + 4],
        [9, 9, 9],
        [E.SEP_ID, E.SEP_ID, E.DURATION_OFFSET + 2],
        [E.DURATION_OFFSET + 4, 70, E.DURATION_OFFSET + 4, E.UNK_ID, -5, 10_000, 70],
        [0, 1, 69, E.DURATION_OFFSET] + [E.SEP_ID, E.DURATION_OFFSET + 160] * 200_000 + [69, 141],
    ] + [rng.integers(-3, E.VOCAB_SIZE + 3, size).tolist() for size in (1, 2, 7, 1001, 20_000)]
    for ids in hostile:
        notes = E.ids_to_notes(ids)
        assert ((notes.pitch >= 0) & (notes.pitch < 128)).all() and (notes.duration >= 1).all()
        assert score_notes(E.decode_ids(ids)) == notes_in_ticks(notes)


INT32_MAX = 2**31 - 1
TICKS_PER_STEP = E.TICKS_PER_QUARTER // E.STEPS_PER_BEAT


def score_notes(score):
    """(tick, duration in ticks, pitch) of every note of every track of a score."""
    return {(note.time, note.duration, note.pitch) for track in score.tracks for note in track.notes}


def notes_in_ticks(notes: E.Notes):
    """What the decoder should write: every note in ticks, but those ending past MIDI's int32 ticks."""
    return {
        (onset * TICKS_PER_STEP, duration * TICKS_PER_STEP, pitch)
        for onset, pitch, duration in notes_as_set(notes)
        if (onset + duration) * TICKS_PER_STEP <= INT32_MAX
    }


def test_notes_past_int32_ticks_are_dropped_not_wrapped():
    # n60 at 0, then 120,000 waits of d160 (19.2 million steps: 2.3 billion ticks), n61, a 3/4 there too
    far = [E.SEP_ID, E.DURATION_OFFSET + 160] * 120_000
    ids = [0, 1, 69, E.DURATION_OFFSET + 4] + far + [E.TOKEN_TO_ID["ts3/4"], 70, E.DURATION_OFFSET + 4]
    assert len(E.ids_to_notes(ids)) == 2
    score = E.decode_ids(ids)
    assert score_notes(score) == {
        (0, 4 * TICKS_PER_STEP, 60)
    }  # the far note is dropped, not written at a negative tick
    assert [(ts.time, ts.numerator, ts.denominator) for ts in score.time_signatures] == [(0, 4, 4)]
    # just inside the limit, a note is kept where it is
    near = [E.SEP_ID, E.DURATION_OFFSET + 160] * 111_848  # 17,895,680 steps
    ids = [0, 1] + near + [70, E.DURATION_OFFSET + 17]
    assert score_notes(E.decode_ids(ids)) == {(17_895_680 * TICKS_PER_STEP, 17 * TICKS_PER_STEP, 61)}
    assert score_notes(E.decode_ids(ids[:-1] + [E.DURATION_OFFSET + 18])) == set()  # one step more: past the limit


def test_strict_positions_of_a_batch_of_one():
    # generate() returns (1, L): the position is counted in the flattened sequence
    assert E.first_invalid_position(np.array([[0, 1, 69, E.DURATION_OFFSET + 4, 999]])) == 4
    assert E.first_invalid_position([[0, 1, 69, E.DURATION_OFFSET + 4]]) is None


def test_lenient_decode_keeps_only_complete_pairs():
    ids = [
        0,
        1,
        E.DURATION_OFFSET + 4,
        69,
        70,
        E.DURATION_OFFSET + 2,
        E.SEP_ID,
        E.SEP_ID,
        E.DURATION_OFFSET + 3,
        4,
        71,
        E.DURATION_OFFSET + 1,
    ]
    assert notes_as_set(E.ids_to_notes(ids)) == {(0, 61, 2), (3, 62, 1)}


def test_strict_decode_names_the_first_invalid_position():
    assert E.first_invalid_position(E.encode_midi(score_of([(0, 60, 1), (2, 62, 1)]), add_eos=True)) is None
    cases = {
        (0, 1, E.DURATION_OFFSET + 4): 2,  # a duration first
        (0, 1, 69, E.SEP_ID, E.DURATION_OFFSET + 4): 2,  # a note without its duration
        (0, 1, 69, E.DURATION_OFFSET + 4, E.SEP_ID): 4,  # a trailing xxsep
        (0, 1, 4, 69, E.DURATION_OFFSET + 4): 2,  # an unused special
        (0, 1, 69, E.DURATION_OFFSET + 4, 999): 4,  # an id outside the vocabulary
    }
    for ids, position in cases.items():
        assert E.first_invalid_position(ids) == position
        with pytest.raises(E.InvalidTokenError, match=f"position {position}"):
            E.decode_ids(ids, strict=True)
    # the message shows the tokens around the bad one (three before it, itself and two after)
    ids = (0, 1, 69, E.DURATION_OFFSET + 4, 71, E.DURATION_OFFSET + 2, 4, 72, E.DURATION_OFFSET + 1)
    near = " ".join(E.id_to_token(i) for i in ids[3:9])
    with pytest.raises(E.InvalidTokenError, match=f"at position 6 \\(near: {near}\\)$"):
        E.decode_ids(ids, strict=True)


def test_beat_positions_follow_the_reference_rule():
    ids = [
        0,
        1,
        E.SEP_ID,
        E.DURATION_OFFSET + 2,
        80,
        E.DURATION_OFFSET + 2,
        E.SEP_ID,
        E.DURATION_OFFSET + 2,
        80,
        E.DURATION_OFFSET + 2,
        0,
        1,
        80,
        E.DURATION_OFFSET + 2,
        E.SEP_ID,
        E.DURATION_OFFSET + 16,
        80,
    ]
    # xxsep(0) d2(0) n71(2) d2(2) xxsep(2) d2(2) n71(4) d2(4), then a new piece restarts at 0.
    assert E.beat_positions(ids).tolist() == [0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 0, 0, 0, 0, 0, 0, 16]
    # features: (bar, beat, step in beat) in 4/4 (no time signature) and, for old vocabularies, (bar, step, 0)
    assert E.position_features(ids)[-1].tolist() == [1, 0, 0] and E.position_features(ids)[8].tolist() == [0, 1, 0]
    assert E.position_features(ids, meter=False)[8].tolist() == [0, 4, 0]
    three = [0, 1, E.TOKEN_TO_ID["ts3/4"], 80, E.DURATION_OFFSET + 2, E.SEP_ID, E.DURATION_OFFSET + 13, 80]
    assert E.position_features(three)[-1].tolist() == [1, 0, 1]  # step 13 of 3/4: bar 1, beat 0, step 1


def test_beat_positions_match_decoded_onsets_on_real_music(chorale_midi_files):
    ids = E.encode_midi(chorale_midi_files[0])
    positions = E.beat_positions(ids)
    note_index = np.flatnonzero((ids >= E.NOTE_OFFSET) & (ids < E.DURATION_OFFSET))
    assert positions[note_index].tolist() == E.ids_to_notes(ids).onset.tolist()
    assert (np.diff(positions) >= 0).all()


def test_transposition_stays_in_range():
    ids = E.encode_midi(score_of([(0, 3, 1), (1, 120, 1)]))
    assert E.transposition_range(ids) == (-3, 7)
    up = E.transpose_ids(ids, 7)
    assert text(up) == "xxbos xxpad ts4/4 n10 d4 xxsep d4 n127 d4"  # time signatures are not notes
    assert E.transpose_ids(ids, -3)[3] == E.NOTE_OFFSET
    assert E.transposition_range([0, 1, E.NOTE_OFFSET, E.DURATION_OFFSET + 1, E.NOTE_OFFSET + 100]) == (
        0,
        27,
    )  # pitch 0
    assert E.transposition_range([0, 1, E.SEP_ID, E.DURATION_OFFSET + 4]) == (-127, 127)  # no notes: any shift
    for shift in (8, -4):
        with pytest.raises(ValueError, match="allowed -3..7"):
            E.transpose_ids(ids, shift)
    assert (E.transpose_ids(ids, 0) == ids).all()


# Property-based checks: generated grid music round-trips; arbitrary ids decode; positions never decrease.
grid_notes = st.lists(
    st.tuples(st.integers(0, 2_000), st.integers(0, 127), st.integers(1, E.MAX_DURATION)), min_size=1, max_size=60
)


@settings(max_examples=60, deadline=None)
@given(grid_notes)
def test_round_trip_property(triples):
    longest = {}
    for onset, pitch, duration in triples:
        longest[(onset, pitch)] = max(longest.get((onset, pitch), 0), duration)
    onset, pitch, duration = (np.array(column) for column in zip(*[(o, p, d) for (o, p), d in longest.items()]))
    order = np.lexsort((-pitch, onset))
    notes = E.Notes(onset[order], pitch[order], duration[order])
    ids = E.notes_to_ids(notes)
    assert ids.max() < E.VOCAB_SIZE and E.first_invalid_position(ids) is None
    assert notes_as_set(E.ids_to_notes(ids)) == notes_as_set(notes)
    assert notes_as_set(E.score_to_notes(E.decode_ids(ids))) == notes_as_set(notes)


@settings(max_examples=60, deadline=None)
@given(grid_notes, st.lists(st.tuples(st.integers(0, 2_500), st.sampled_from(E.METERS)), max_size=6))
def test_round_trip_with_meter_changes_property(triples, changes):
    longest = {}
    for onset, pitch, duration in triples:
        longest[(onset, pitch)] = max(longest.get((onset, pitch), 0), duration)
    onset, pitch, duration = (np.array(column) for column in zip(*[(o, p, d) for (o, p), d in longest.items()]))
    order = np.lexsort((-pitch, onset))
    meters = E.meter_table(sorted((time, *meter) for time, meter in changes))
    notes = E.Notes(onset[order], pitch[order], duration[order], meters[meters[:, 0] <= onset.max()])
    ids = E.notes_to_ids(notes, add_eos=True)
    assert E.first_invalid_position(ids) is None and ids.max() < E.VOCAB_SIZE
    decoded = E.ids_to_notes(ids)
    assert notes_as_set(decoded) == notes_as_set(notes) and decoded.meters.tolist() == notes.meters.tolist()
    assert E.notes_to_ids(E.score_to_notes(E.decode_ids(ids)), add_eos=True).tolist() == ids.tolist()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-10, 400), max_size=300))
def test_decode_total_and_positions_monotone_property(ids):
    assert score_notes(E.decode_ids(ids)) == notes_in_ticks(E.ids_to_notes(ids))  # short: every note fits
    positions = E.beat_positions(ids)
    since_bos = np.r_[True, np.array(ids[1:], dtype=np.int64) != E.BOS_ID] if ids else np.ones(0, bool)
    assert (np.diff(positions)[since_bos[1:]] >= 0).all()


def test_overlapping_unisons_survive_a_midi_file(tmp_path):
    # Soprano holds G4 for 4 bars; the alto strikes G4 twice meanwhile. One MIDI track would pair them wrongly.
    ids = E.encode_midi(score_of([(0, 67, 16), (2, 67, 1), (3, 67, 2)], tracks=3))
    path = tmp_path / "unison.mid"
    E.decode_ids(ids).dump_midi(str(path))
    assert E.encode_midi(path).tolist() == ids.tolist()
    assert notes_as_set(E.ids_to_notes(ids)) == {(0, 67, 64), (8, 67, 4), (12, 67, 8)}
    assert [track.name for track in E.decode_ids(ids).tracks] == ["Piano", "Piano (overlap 1)"]


def test_transposition_moves_notes_only():
    """Every id that is not a note (specials, every duration from d0, right past n127, time signatures) is kept."""
    others = [i for i in range(E.VOCAB_SIZE) if not E.NOTE_OFFSET <= i < E.NOTE_OFFSET + E.NUM_PITCHES]
    ids = np.array([0, 1, E.NOTE_OFFSET + 60] + others)
    for shift in (-6, 5):
        moved = E.transpose_ids(ids, shift)
        assert moved[2] == E.NOTE_OFFSET + 60 + shift and moved[3:].tolist() == others
