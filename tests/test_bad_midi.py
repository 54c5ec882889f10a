"""Bad MIDI input: each case encodes sensibly or raises MidiReadError naming the file and the problem."""

import struct

import numpy as np
import pytest
import symusic
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_music_xl import MusicXLTokenizerFast
from hf_music_xl.models.music_xl import encoding as E


def varlen(value: int) -> bytes:
    groups = [value & 0x7F]
    value >>= 7
    while value:
        groups.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(groups))


def track(*events) -> bytes:
    """A track chunk from (delta ticks, event bytes) pairs, closed by End of Track."""
    body = b"".join(varlen(delta) + bytes(event) for delta, event in events) + b"\x00\xff\x2f\x00"
    return b"MTrk" + struct.pack(">I", len(body)) + body


def midi(*tracks, midi_format: int = 1, division: int = 480) -> bytes:
    return b"MThd" + struct.pack(">IHHH", 6, midi_format, len(tracks), division) + b"".join(tracks)


def note(pitch: int, length: int = 480, delta: int = 0, channel: int = 0):
    return [(delta, [0x90 | channel, pitch, 80]), (length, [0x80 | channel, pitch, 0])]


GOOD = midi(track(*note(60)))


def text_of(ids) -> str:
    return " ".join(E.VOCAB[i] for i in ids)


def write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "name, data, problem",
    [
        ("empty.mid", b"", "the file is empty"),
        ("truncated.mid", GOOD[: len(GOOD) // 2], "not a readable MIDI file"),
        ("random.mid", np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not a readable"),
        ("notes.txt.mid", b"these are my notes, not music\n" * 10, "not a readable MIDI file"),
        ("huge-length.mid", GOOD[:18] + b"\xff\xff\xff\xff" + GOOD[22:], "not a readable MIDI file"),
        ("header-only.mid", GOOD[:14], "no notes"),
        ("silent.mid", midi(track((0, [0xFF, 0x51, 0x03, 0x07, 0xA1, 0x20]))), "no notes"),
        ("drums.mid", midi(track(*note(36, channel=9), *note(38, channel=9))), "no notes outside drum tracks"),
        ("division-zero.mid", midi(track(*note(60)), division=0), "invalid time division"),
        ("smpte.mid", midi(track(*note(60)), division=0xE728), "not a readable MIDI file"),
    ],
)
def test_unusable_files_raise_one_error_naming_the_file(tmp_path, name, data, problem):
    path = write(tmp_path, name, data)
    for tokenizer_call in (E.encode_midi, MusicXLTokenizerFast().encode_midi):
        with pytest.raises(E.MidiReadError, match=problem) as error:
            tokenizer_call(path)
        assert str(path) in str(error.value)
        assert isinstance(error.value, ValueError)


def test_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        E.encode_midi(tmp_path / "nowhere.mid")


@pytest.mark.parametrize(
    "data, expected",
    [
        # A tempo of 0 or 16.7 million microseconds per quarter: the encoding is in ticks, tempo does not matter.
        (midi(track((0, [0xFF, 0x51, 0x03, 0, 0, 0]), *note(60))), "xxbos xxpad ts4/4 n60 d4"),
        (midi(track((0, [0xFF, 0x51, 0x03, 0xFF, 0xFF, 0xFF]), *note(60))), "xxbos xxpad ts4/4 n60 d4"),
        # A note held for 100 bars clamps to the largest duration token.
        (midi(track(*note(60, length=480 * 400))), "xxbos xxpad ts4/4 n60 d160"),
        # A note-on without its note-off (symusic drops it); the rest of the piece survives.
        (midi(track((0, [0x90, 60, 80]), *note(62, delta=480))), "xxbos xxpad ts4/4 xxsep d4 n62 d4"),
        # Overlapping identical notes collapse to one, the longest.
        (
            midi(track((0, [0x90, 60, 80]), (0, [0x90, 60, 80]), (240, [0x80, 60, 0]), (240, [0x80, 60, 0]))),
            "xxbos xxpad ts4/4 n60 d4",
        ),
        # Type 2 holds independent sequences: they play one after another.
        (midi(track(*note(60)), track(*note(64)), midi_format=2), "xxbos xxpad ts4/4 n60 d4 xxsep d4 n64 d4"),
        # Time signatures: a corrupt one (numerator 0) is dropped; 7/8 then, after the last note, 5/4 (moves nothing).
        (
            midi(
                track(
                    (0, [0xFF, 0x58, 0x04, 0, 2, 24, 8]),
                    (0, [0xFF, 0x58, 0x04, 7, 3, 24, 8]),
                    *note(60),
                    (0x0FFFFFFF, [0xFF, 0x58, 0x04, 5, 2, 24, 8]),
                )
            ),
            "xxbos xxpad ts7/8 n60 d4",
        ),
        # A tiny resolution (1 tick per quarter) and an odd one (7) still land on the grid.
        (midi(track(*note(60, length=1), *note(62, length=2)), division=1), "xxbos xxpad ts4/4 n60 d4 xxsep d4 n62 d8"),
        (midi(track(*note(60, length=7), *note(62, length=7)), division=7), "xxbos xxpad ts4/4 n60 d4 xxsep d4 n62 d4"),
    ],
)
def test_odd_but_usable_files_encode_sensibly(data, expected):
    assert text_of(E.encode_midi(data)) == expected


def test_absurd_tick_values_give_a_short_rest_or_a_clear_limit(tmp_path):
    far = midi(track(*note(60, delta=0x0FFFFFFF)))  # the largest delta a MIDI file can hold: ~140,000 bars
    ids = E.encode_midi(far)
    assert ids.max() < E.VOCAB_SIZE and E.first_invalid_position(ids) is None
    step = int(E.quantize(np.array([0x0FFFFFFF]), 480, 4)[0])
    # the silence is shortened by whole bars to at most MAX_REST_STEPS (see test_bounded_work.py)
    assert E.ids_to_notes(ids).onset.tolist() == [E.MAX_REST_STEPS - 16 + step % 16]
    # with the rest limit raised, the whole silence is written, and the token limit still stops a longer one
    assert E.ids_to_notes(E.encode_midi(far, max_rest_steps=step)).onset.tolist() == [step]
    path = write(tmp_path, "far.mid", far)
    with pytest.raises(E.MidiReadError, match="far.mid.*limit of 10000 tokens"):
        E.encode_midi(path, max_tokens=10_000, max_rest_steps=step)


def test_size_and_note_limits(tmp_path):
    many = midi(track(*[event for pitch in range(40, 90) for event in note(pitch)]))
    path = write(tmp_path, "many.mid", many)
    assert len(E.ids_to_notes(E.encode_midi(path))) == 50
    with pytest.raises(E.MidiReadError, match="many.mid: 50 notes and 0 time signatures, over the limit of 49"):
        E.encode_midi(path, max_notes=49)
    with pytest.raises(E.MidiReadError, match=f"many.mid: larger than the limit of {len(many) - 1} bytes"):
        E.encode_midi(path, max_bytes=len(many) - 1)
    with pytest.raises(E.MidiReadError, match="bytes of MIDI>: larger than the limit"):
        E.encode_midi(many, max_bytes=100)
    # the limits are inclusive: exactly at them is fine, for a path and for bytes
    assert len(E.ids_to_notes(E.encode_midi(path, max_bytes=len(many), max_notes=50))) == 50
    assert len(E.ids_to_notes(E.encode_midi(many, max_bytes=len(many)))) == 50
    with pytest.raises(E.MidiReadError, match=f"bytes of MIDI>: larger than the limit of {len(many) - 1} bytes"):
        E.encode_midi(many, max_bytes=len(many) - 1)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 400), max_size=200), st.integers(-130, 130))
def test_transposition_never_leaves_the_pitch_range(ids, shift):
    low, high = E.transposition_range(ids)
    if low <= shift <= high:
        shifted = E.transpose_ids(ids, shift)
        notes = (shifted >= E.NOTE_OFFSET) & (shifted < E.DURATION_OFFSET)
        assert notes.tolist() == [E.NOTE_OFFSET <= i < E.DURATION_OFFSET for i in ids]  # notes stay notes
        assert (shifted[~notes] == np.array(ids, dtype=np.int64)[~notes]).all()  # nothing else moves
    else:
        with pytest.raises(ValueError, match="leaves the pitch range"):
            E.transpose_ids(ids, shift)


@pytest.mark.parametrize("tracks", [2, 3])
def test_format_2_tracks_past_the_int32_tick_range_raise_a_clear_error(tmp_path, tracks):
    # Each track lasts 5 maximal deltas (about 1.34e9 ticks): two in turn wrapped round silently, three made
    # symusic's shift_time raise TypeError.
    pattern = track(*[(2**28 - 1, [0xFF, 0x01, 0x00]) for _ in range(5)], *note(60))
    path = write(tmp_path, "long-patterns.mid", midi(*[pattern] * tracks, midi_format=2))
    for tokenizer_call in (E.encode_midi, MusicXLTokenizerFast().encode_midi):
        with pytest.raises(E.MidiReadError, match="format-2 tracks played in turn") as error:
            tokenizer_call(path)
        assert str(path) in str(error.value)


def score_with(pitch: int = 60, ticks_per_quarter: int = 480):
    score = symusic.Score(ticks_per_quarter)
    piano = symusic.Track("piano")
    piano.notes.append(symusic.Note(0, 480, 64, 80))
    piano.notes.append(symusic.Note(480, 480, pitch, 80))
    score.tracks.append(piano)
    return score


@pytest.mark.parametrize(
    "score, problem",
    [
        (score_with(pitch=-1), "pitch -1 .* outside MIDI.s 0..127"),  # once a silent rest
        (score_with(pitch=-128), "pitch -128 .* outside MIDI.s 0..127"),  # once id -119
        (score_with(ticks_per_quarter=0), "invalid time division"),
        (score_with(ticks_per_quarter=-480), "invalid time division"),
    ],
)
def test_a_score_passed_in_is_checked_like_bytes(score, problem):
    for tokenizer_call in (E.encode_midi, MusicXLTokenizerFast().encode_midi):
        with pytest.raises(E.MidiReadError, match=problem) as error:
            tokenizer_call(score)
        assert "<symusic.Score>" in str(error.value)


def test_a_valid_score_still_encodes():
    assert text_of(E.encode_midi(score_with())).count(" n") == 2
