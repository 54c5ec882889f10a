"""The musicautobot note/duration/SEP encoding: MIDI <-> token ids, beat positions, transposition.

A piece is a flat id sequence::

    xxbos xxpad  n67 d4 n59 d4 n55 d8  xxsep d4  n69 d4 ...

Each note is a pair ``n{pitch} d{duration}``; notes starting on the same grid step are written back to back,
highest pitch first; ``xxsep d{wait}`` moves time forward by ``wait`` steps. Durations and waits are counted
in grid steps (``steps_per_beat`` per quarter note; 4 gives 16th notes).

Ids 0..297 are exactly the reference's, so text encodings interoperate; we add one id after them:

=========  =======  ===========================================================
ids        tokens   meaning
=========  =======  ===========================================================
0..8       specials xxbos xxpad xxeos xxs2scls xxmask xxcseq xxmseq xxnscls xxsep
9..136     n0..n127 note pitch (MIDI number)
137..297   d0..d160 duration or wait in grid steps
298        xxunk    a text word outside the vocabulary (text tokenizers only)
=========  =======  ===========================================================

Where we differ from the reference (each a defect there):
- a rest longer than ``MAX_DURATION`` steps becomes several ``xxsep d..`` pairs instead of an id past the vocab;
- note durations are clamped to ``MAX_DURATION`` (160 steps = 10 bars of 4/4) and rounded to at least 1 step;
- the whole pitch range 0..127 is kept; notes with the same (onset, pitch) collapse to one (the longest);
- rounding is half-up, so 32nd notes land on the grid instead of vanishing;
- decoding never fails on sampled output (``strict=True`` reports the first invalid position instead).

Everything here works on numpy arrays: no Python loop runs per note.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import symusic

SPECIAL_TOKENS = ["xxbos", "xxpad", "xxeos", "xxs2scls", "xxmask", "xxcseq", "xxmseq", "xxnscls", "xxsep"]
BOS_ID, PAD_ID, EOS_ID, SEP_ID = 0, 1, 2, 8
NOTE_OFFSET, NUM_PITCHES = 9, 128
DURATION_OFFSET, NUM_DURATIONS = 137, 161
MAX_DURATION = NUM_DURATIONS - 1
UNK_ID = DURATION_OFFSET + NUM_DURATIONS  # 298
VOCAB = (
    SPECIAL_TOKENS
    + [f"n{pitch}" for pitch in range(NUM_PITCHES)]
    + [f"d{steps}" for steps in range(NUM_DURATIONS)]
    + ["xxunk"]
)
VOCAB_SIZE = len(VOCAB)  # 299
TOKEN_TO_ID = {token: index for index, token in enumerate(VOCAB)}

STEPS_PER_BEAT = 4  # grid steps per quarter note (16th notes)
STEPS_PER_BAR = 16  # 4/4 at 16th notes
TICKS_PER_QUARTER = 480  # resolution of the MIDI we write
DEFAULT_VELOCITY = 80
DEFAULT_TEMPO_QPM = 120.0

# Limits on input, so that a hostile or broken file fails clearly instead of exhausting memory. Real pieces
# are far below them (a Bach chorale: 5 KB, 250 notes, 700 tokens). Each is a keyword of encode_midi.
MAX_FILE_BYTES = 64 * 2**20
MAX_NOTES = 1_000_000
MAX_TOKENS = 8_000_000  # also bounds the rests written for absurd tick values (a note at tick 2**31)

MidiSource = "str | os.PathLike | bytes | symusic.Score"  # what encode_midi accepts


class MidiReadError(ValueError):
    """A MIDI input could not be turned into notes; the message names the input and the problem."""


class InvalidTokenError(ValueError):
    """A token sequence breaks the grammar (raised by ``decode_ids(..., strict=True)``)."""


# ----------------------------------------------------------------------------------------------------------
# Reading MIDI into a note table


@dataclass
class Notes:
    """Notes on the grid, sorted by onset then pitch (highest first); all arrays have one entry per note."""

    onset: np.ndarray  # int64 [n], grid steps
    pitch: np.ndarray  # int64 [n], 0..127
    duration: np.ndarray  # int64 [n], grid steps, 1..MAX_DURATION

    def __len__(self) -> int:
        return len(self.onset)


def _describe(source: MidiSource) -> str:
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes of MIDI>"
    if isinstance(source, symusic.Score):
        return "<symusic.Score>"
    return os.fspath(source)


def load_score(source: MidiSource, max_bytes: int = MAX_FILE_BYTES) -> symusic.Score:
    """A ``symusic.Score`` in ticks from a path, bytes or a Score; unreadable input raises ``MidiReadError``."""
    if isinstance(source, symusic.Score):  # already a Score, in any time unit
        return source.to("tick")
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        if os.path.getsize(source) > max_bytes:  # a missing file is a FileNotFoundError, as users expect
            raise MidiReadError(f"{_describe(source)}: larger than the limit of {max_bytes} bytes")
        with open(source, "rb") as file:
            data = file.read()
    if len(data) > max_bytes:
        raise MidiReadError(f"{_describe(source)}: larger than the limit of {max_bytes} bytes")
    if not data:
        raise MidiReadError(f"{_describe(source)}: the file is empty")
    try:
        score = symusic.Score.from_midi(data, sanitize_data=True)
    except Exception as error:  # symusic raises RuntimeError/ValueError with its own wording
        raise MidiReadError(f"{_describe(source)}: not a readable MIDI file ({error})") from error
    if score.ticks_per_quarter <= 0:
        raise MidiReadError(f"{_describe(source)}: invalid time division ({score.ticks_per_quarter} ticks per quarter)")
    if data[8:10] == b"\x00\x02":  # the header's format field
        play_tracks_in_turn(score)
    return score


def play_tracks_in_turn(score: symusic.Score) -> None:
    """Type-2 MIDI holds independent sequences (patterns) meant one after another, not together: shift each
    track to start where the previous ones ended (in place)."""
    start = 0
    for track in score.tracks:
        length = track.end()
        track.shift_time(start, inplace=True)
        start += length


def quantize(ticks: np.ndarray, ticks_per_quarter: int, steps_per_beat: int) -> np.ndarray:
    """Ticks to grid steps, rounding half up in integers (the reference's banker's rounding made 32nd notes
    vanish)."""
    return (ticks.astype(np.int64) * (2 * steps_per_beat) + ticks_per_quarter) // (2 * ticks_per_quarter)


def score_to_notes(score: symusic.Score, steps_per_beat: int = STEPS_PER_BEAT) -> Notes:
    """All non-drum notes of a tick-based score on the grid, merged, deduplicated and sorted.

    This runs once per file, so it keeps the count of numpy calls low: the tracks are merged inside symusic
    and read out as arrays once, and a single sort of a packed key does the ordering."""
    tracks = [track.notes for track in score.tracks if not track.is_drum]
    merged = tracks[0].copy() if len(tracks) > 1 else tracks[0] if tracks else symusic.Track().notes
    for notes in tracks[1:]:
        merged.extend(notes)
    if not len(merged):
        return Notes(*(np.zeros(0, np.int64) for _ in range(3)))
    arrays = merged.numpy()
    tpq = score.ticks_per_quarter
    onset = np.maximum(quantize(arrays["time"], tpq, steps_per_beat), 0)
    duration = quantize(arrays["duration"], tpq, steps_per_beat)
    duration = np.minimum(np.maximum(duration, 1), MAX_DURATION)  # never zero length; clamped to d160
    pitch = arrays["pitch"].astype(np.int64)

    # Order by onset, then pitch high to low, then the longest note first, by sorting one packed key:
    # bits 16.. onset, 8..15 (127 - pitch), 0..7 (255 - duration). Unpacking the sorted key gives the columns.
    key = np.sort((onset << 16) - (pitch << 8) - duration + (127 << 8 | 255))
    first_of_kind = np.empty(len(key), dtype=bool)  # deduplicate (onset, pitch), keeping the longest
    first_of_kind[0] = True
    np.not_equal(key[1:] >> 8, key[:-1] >> 8, out=first_of_kind[1:])
    key = key[first_of_kind]
    return Notes(onset=key >> 16, pitch=127 - ((key >> 8) & 255), duration=255 - (key & 255))


# ----------------------------------------------------------------------------------------------------------
# Notes -> ids


def notes_to_ids(notes: Notes, add_bos: bool = True, add_eos: bool = False) -> np.ndarray:
    """Encode a note table; rests longer than MAX_DURATION become several ``xxsep d..`` pairs."""
    wait = notes.onset.copy()  # [n] steps since the previous note (0 within a chord)
    wait[1:] -= notes.onset[:-1]
    seps = -(-wait // MAX_DURATION)  # [n] xxsep pairs written before each note (ceil; usually 0 or 1)
    note_slot = np.arange(len(notes)) + np.cumsum(seps)  # [n] pair index of each note
    n_pairs = len(notes) + int(seps.sum())

    start = 2 if add_bos else 0
    ids = np.empty(start + 2 * n_pairs + add_eos, np.int64)
    ids[:start] = BOS_ID, PAD_ID
    ids[start + 2 * n_pairs :] = EOS_ID
    pairs = ids[start : start + 2 * n_pairs].reshape(n_pairs, 2)  # a view: writing pairs writes ids

    # Every slot that is not a note is an xxsep; a long rest is d160 pairs with the remainder last, in the
    # slot just before its note. Writing the remainder before every note is harmless where a note has no
    # xxsep: that slot belongs to the previous note (or, for the first, wraps to the last, always a note),
    # and the note pairs written next overwrite it.
    pairs[:, 0] = SEP_ID
    pairs[:, 1] = DURATION_OFFSET + MAX_DURATION
    pairs[note_slot - 1, 1] = DURATION_OFFSET + wait - MAX_DURATION * (seps - 1)
    pairs[note_slot, 0] = NOTE_OFFSET + notes.pitch
    pairs[note_slot, 1] = DURATION_OFFSET + notes.duration
    return ids


def encode_midi(
    source: MidiSource,
    steps_per_beat: int = STEPS_PER_BEAT,
    add_bos: bool = True,
    add_eos: bool = False,
    allow_empty: bool = False,
    max_bytes: int = MAX_FILE_BYTES,
    max_notes: int = MAX_NOTES,
    max_tokens: int = MAX_TOKENS,
) -> np.ndarray:
    """Token ids of a MIDI path, bytes or ``symusic.Score``.

    Raises ``MidiReadError`` (a ValueError naming the input) for unreadable input, a file over ``max_bytes``,
    more than ``max_notes`` notes or more than ``max_tokens`` tokens, and a score without notes (drums do not
    count) unless ``allow_empty`` (then the result is just the prefix)."""
    score = load_score(source, max_bytes=max_bytes)
    if score.note_num() > max_notes:
        raise MidiReadError(f"{_describe(source)}: {score.note_num()} notes, over the limit of {max_notes}")
    notes = score_to_notes(score, steps_per_beat)
    if not len(notes) and not allow_empty:
        raise MidiReadError(f"{_describe(source)}: no notes outside drum tracks")
    # Each note writes 2 tokens, and each xxsep pair covers up to MAX_DURATION steps of its wait (plus one
    # pair per note at most for the remainders): a cheap upper bound checked before anything is allocated.
    last_onset = int(notes.onset[-1]) if len(notes) else 0
    if 3 + 4 * len(notes) + 2 * (last_onset // MAX_DURATION) > max_tokens:
        raise MidiReadError(f"{_describe(source)}: the last note starts at grid step {last_onset}, which would take "
                            f"more than the limit of {max_tokens} tokens")
    return notes_to_ids(notes, add_bos=add_bos, add_eos=add_eos)


# ----------------------------------------------------------------------------------------------------------
# ids -> notes -> MIDI


def _classify(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    is_note = (ids >= NOTE_OFFSET) & (ids < NOTE_OFFSET + NUM_PITCHES)
    is_duration = (ids >= DURATION_OFFSET) & (ids < DURATION_OFFSET + NUM_DURATIONS)
    return is_note, is_duration, ids == SEP_ID


def first_invalid_position(ids) -> int | None:
    """Index of the first token that breaks the grammar, or None. Valid: ``xxbos``, ``xxpad`` and ``xxeos``
    between pairs; every note and every ``xxsep`` directly followed by a duration; nothing else."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    is_note, is_duration, is_sep = _classify(ids)
    opens_pair = is_note | is_sep
    opened_before = np.r_[False, opens_pair[:-1]]
    closed_after = np.r_[is_duration[1:], False]
    is_frame = np.isin(ids, [BOS_ID, PAD_ID, EOS_ID])
    valid = (opens_pair & closed_after) | (is_duration & opened_before) | is_frame
    bad = np.flatnonzero(~valid)
    return int(bad[0]) if len(bad) else None


def ids_to_notes(ids, strict: bool = False) -> Notes:
    """Notes of any id sequence. Lenient by default: a pair is read wherever a note or ``xxsep`` is directly
    followed by a duration, and everything else is skipped. ``strict=True`` raises ``InvalidTokenError``."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if strict:
        bad = first_invalid_position(ids)
        if bad is not None:
            window = " ".join(id_to_token(i) for i in ids[max(0, bad - 3) : bad + 3])
            raise InvalidTokenError(f"invalid token {id_to_token(ids[bad])!r} at position {bad} (near: {window})")
    is_note, is_duration, is_sep = _classify(ids)
    closes = np.r_[False, is_duration[1:]]  # [T] token i is a duration, so (i-1, i) may be a pair
    wait_at = np.where(closes & np.r_[False, is_sep[:-1]], ids - DURATION_OFFSET, 0)  # [T]
    time_at = np.cumsum(wait_at) - wait_at  # [T] time before token i's own wait
    note_end = np.flatnonzero(closes & np.r_[False, is_note[:-1]])  # index of each note's duration token
    pitch = ids[note_end - 1] - NOTE_OFFSET
    duration = ids[note_end] - DURATION_OFFSET
    onset = time_at[note_end]
    keep = duration > 0  # d0 is in the vocabulary but cannot sound
    return Notes(onset[keep], pitch[keep], duration[keep])


def overlap_layers(notes: Notes, max_layers: int = 16) -> np.ndarray:
    """Layer (track) index per note such that no two notes of one pitch overlap within a layer.

    A MIDI track cannot hold two sounding notes of the same pitch unambiguously (a reader pairs note-offs with
    note-ons in its own order), yet merged voices do this (an alto joining the soprano's held note). Such notes
    move to extra layers so the written file reads back to exactly the same notes."""
    layer = np.zeros(len(notes), np.int64)
    remaining = np.arange(len(notes))
    for index in range(max_layers - 1):
        if not len(remaining):
            break
        onset, pitch = notes.onset[remaining], notes.pitch[remaining]
        order = np.lexsort((onset, pitch))  # group by pitch, in time order
        onset, pitch, end = onset[order], pitch[order], onset[order] + notes.duration[remaining][order]
        # Running max of note ends within each pitch group: offset groups so one cummax serves all of them.
        group_offset = pitch * (int(end.max()) + 1)
        ended_before = np.maximum.accumulate(end + group_offset) - group_offset  # [k] includes the note itself
        previous_end = np.r_[0, ended_before[:-1]]
        overlaps = np.r_[False, pitch[1:] == pitch[:-1]] & (onset < previous_end)
        remaining = remaining[order][overlaps]
        layer[remaining] = index + 1
    return layer


def notes_to_score(
    notes: Notes,
    steps_per_beat: int = STEPS_PER_BEAT,
    ticks_per_quarter: int = TICKS_PER_QUARTER,
    velocity: int = DEFAULT_VELOCITY,
    tempo_qpm: float = DEFAULT_TEMPO_QPM,
) -> symusic.Score:
    """A piano score (4/4, fixed tempo and velocity: the encoding keeps neither). Notes overlapping a note of
    the same pitch go to extra piano tracks (see ``overlap_layers``); ``encode_midi`` merges them back."""
    ticks_per_step = ticks_per_quarter // steps_per_beat
    # MIDI ticks are int32: absurdly long random sequences lose what lies past ~a million bars.
    fits = (notes.onset + notes.duration) * ticks_per_step <= np.iinfo(np.int32).max
    notes = Notes(notes.onset[fits], notes.pitch[fits], notes.duration[fits])
    score = symusic.Score(ticks_per_quarter)
    score.tempos.append(symusic.Tempo(0, tempo_qpm))
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    layers = overlap_layers(notes)
    for layer in range(int(layers.max(initial=0)) + 1):
        chosen = layers == layer
        track = symusic.Track("Piano" if layer == 0 else f"Piano (overlap {layer})", 0, False)
        track.notes = symusic.Note.from_numpy(
            (notes.onset[chosen] * ticks_per_step).astype(np.int32),
            (notes.duration[chosen] * ticks_per_step).astype(np.int32),
            notes.pitch[chosen].astype(np.int8),
            np.full(int(chosen.sum()), velocity, dtype=np.int8),
        )
        score.tracks.append(track)
    return score


def decode_ids(ids, strict: bool = False, steps_per_beat: int = STEPS_PER_BEAT) -> symusic.Score:
    """A ``symusic.Score`` from any id sequence (see ``ids_to_notes`` for what is skipped)."""
    return notes_to_score(ids_to_notes(ids, strict=strict), steps_per_beat=steps_per_beat)


def id_to_token(token_id: int) -> str:
    return VOCAB[token_id] if 0 <= token_id < VOCAB_SIZE else f"<id {int(token_id)}>"


# ----------------------------------------------------------------------------------------------------------
# Beat positions


def beat_positions(ids) -> np.ndarray:
    """Grid step at which each token sounds: the waits before it since the last ``xxbos``.

    As in the reference, an ``xxsep`` and its duration keep the old position and the token after them carries
    the new one: ``xxsep(0) d2(0) n71(2) d2(2) xxsep(2) d2(2) n71(4)``.
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    is_note, is_duration, is_sep = _classify(ids)
    wait = np.where(is_duration & np.r_[False, is_sep[:-1]], ids - DURATION_OFFSET, 0)  # [T]
    before = np.cumsum(wait) - wait  # [T] exclusive cumulative waits
    at_last_bos = np.maximum.accumulate(np.where(ids == BOS_ID, before, 0))  # before is non-decreasing
    return before - at_last_bos


def bar_and_step(positions, steps_per_bar: int = STEPS_PER_BAR) -> tuple[np.ndarray, np.ndarray]:
    """(bar index, step within the bar) of each position."""
    positions = np.asarray(positions)
    return positions // steps_per_bar, positions % steps_per_bar


# ----------------------------------------------------------------------------------------------------------
# Transposition


def transposition_range(ids) -> tuple[int, int]:
    """(lowest, highest) shift in semitones that keeps every note of ``ids`` within 0..127."""
    ids = np.asarray(ids, dtype=np.int64)
    pitches = ids[(ids >= NOTE_OFFSET) & (ids < NOTE_OFFSET + NUM_PITCHES)] - NOTE_OFFSET
    if not len(pitches):
        return -(NUM_PITCHES - 1), NUM_PITCHES - 1
    return -int(pitches.min()), NUM_PITCHES - 1 - int(pitches.max())


def transpose_ids(ids, semitones: int) -> np.ndarray:
    """Shift every note by ``semitones``; a shift outside ``transposition_range`` raises ValueError."""
    ids = np.asarray(ids, dtype=np.int64)
    low, high = transposition_range(ids)
    if not low <= semitones <= high:
        raise ValueError(f"a shift of {semitones} semitones leaves the pitch range; allowed {low}..{high}")
    is_note = (ids >= NOTE_OFFSET) & (ids < NOTE_OFFSET + NUM_PITCHES)
    return np.where(is_note, ids + semitones, ids)
