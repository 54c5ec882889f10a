"""The musicautobot note/duration/SEP encoding: MIDI -> token ids. The note table and the meters it builds on
(``notes_music_xl.py``) and decoding, beat positions and transposition (``decoding_music_xl.py``) are re-exported
here, so ``encoding`` is the one module to import for all of them.

A piece is a flat id sequence::

    xxbos xxpad  n67 d4 n59 d4 n55 d8  xxsep d4  n69 d4 ...

Each note is a pair ``n{pitch} d{duration}``; notes starting on the same grid step are written back to back,
highest pitch first; ``xxsep d{wait}`` moves time forward by ``wait`` steps. Durations and waits are counted
in grid steps (``steps_per_beat`` per quarter note; 4 gives 16th notes). A time signature token ``ts3/4`` follows
``xxbos xxpad`` and stands wherever the meter changes, at that bar line (a wait that crosses the change is split
there): ``xxbos xxpad ts3/4 n67 d4 ... xxsep d4 ts6/8 n69 d6``.

Ids 0..297 are exactly the reference's, so text encodings interoperate; we add ids after them:

=========  ===========  ===========================================================
ids        tokens       meaning
=========  ===========  ===========================================================
0..8       specials     xxbos xxpad xxeos xxs2scls xxmask xxcseq xxmseq xxnscls xxsep
9..136     n0..n127     note pitch (MIDI number)
137..297   d0..d160     duration or wait in grid steps
298        xxunk        a text word outside the vocabulary (text tokenizers only)
299..378   ts1/1..      time signatures: numerators 1..16 over 1, 2, 4, 8 and 16 (``METERS``)
379..382   tasks        xxgiven xxback xxinfill xxharmonize (layouts: ``tasks_music_xl.py``)
=========  ===========  ===========================================================

Vocabularies saved before the time signatures (ids 0..298, ``LEGACY_VOCAB_SIZE``) encode without them
(``encode_midi(..., meter=False)``), as they always did.

Where we differ from the reference (each a defect there):
- a rest longer than ``MAX_DURATION`` steps becomes several ``xxsep d..`` pairs instead of an id past the vocab;
- note durations are clamped to ``MAX_DURATION`` (160 steps = 10 bars of 4/4) and rounded to at least 1 step;
- the whole pitch range 0..127 is kept; notes with the same (onset, pitch) collapse to one (the longest);
- rounding is half-up, so 32nd notes land on the grid instead of vanishing;
- a note-free span longer than ``MAX_REST_STEPS`` (40 bars of 4/4) is shortened by whole bars to at most that,
  so a small file's silence of millions of bars costs a few waits, not millions of tokens;
- decoding never fails on sampled output (``strict=True`` reports the first invalid position instead).

Everything here works on numpy arrays: no Python loop runs per note.
"""

from __future__ import annotations

import os

import numpy as np
import symusic

# The note table and the meters (notes_music_xl.py) and decoding (decoding_music_xl.py), re-exported (``as``
# itself), so that ``encoding.Notes`` and ``encoding.decode_ids`` are found here too.
from .decoding_music_xl import (
    DEFAULT_TEMPO_QPM as DEFAULT_TEMPO_QPM,
)
from .decoding_music_xl import (
    DEFAULT_VELOCITY as DEFAULT_VELOCITY,
)
from .decoding_music_xl import (
    TICKS_PER_QUARTER as TICKS_PER_QUARTER,
)
from .decoding_music_xl import (
    InvalidTokenError as InvalidTokenError,
)
from .decoding_music_xl import (
    beat_positions as beat_positions,
)
from .decoding_music_xl import (
    decode_ids as decode_ids,
)
from .decoding_music_xl import (
    first_invalid_position as first_invalid_position,
)
from .decoding_music_xl import (
    id_to_token as id_to_token,
)
from .decoding_music_xl import (
    ids_to_notes as ids_to_notes,
)
from .decoding_music_xl import (
    notes_to_score as notes_to_score,
)
from .decoding_music_xl import (
    overlap_layers as overlap_layers,
)
from .decoding_music_xl import (
    position_features as position_features,
)
from .decoding_music_xl import (
    taken_back as taken_back,
)
from .decoding_music_xl import (
    token_bars as token_bars,
)
from .decoding_music_xl import (
    transpose_ids as transpose_ids,
)
from .decoding_music_xl import (
    transposition_range as transposition_range,
)
from .notes_music_xl import (
    STEPS_PER_BAR as STEPS_PER_BAR,
)
from .notes_music_xl import (
    STEPS_PER_BEAT as STEPS_PER_BEAT,
)
from .notes_music_xl import (
    Bars as Bars,
)
from .notes_music_xl import (
    Notes as Notes,
)
from .notes_music_xl import (
    bar_steps as bar_steps,
)
from .notes_music_xl import (
    beat_steps as beat_steps,
)
from .notes_music_xl import (
    default_meters as default_meters,
)
from .notes_music_xl import (
    is_meter as is_meter,
)
from .notes_music_xl import (
    is_task as is_task,
)
from .notes_music_xl import (
    meter_bar_lengths as meter_bar_lengths,
)
from .notes_music_xl import (
    meter_table as meter_table,
)
from .notes_music_xl import (
    meter_token as meter_token,
)
from .notes_music_xl import (
    token_meter as token_meter,
)
from .vocabulary_music_xl import (
    BACK_ID as BACK_ID,
)
from .vocabulary_music_xl import (
    BOS_ID as BOS_ID,
)
from .vocabulary_music_xl import (
    DEFAULT_METER as DEFAULT_METER,
)
from .vocabulary_music_xl import (
    DURATION_OFFSET as DURATION_OFFSET,
)
from .vocabulary_music_xl import (
    EOS_ID as EOS_ID,
)
from .vocabulary_music_xl import (
    GIVEN_ID as GIVEN_ID,
)
from .vocabulary_music_xl import (
    HARMONIZE_ID as HARMONIZE_ID,
)
from .vocabulary_music_xl import (
    INFILL_ID as INFILL_ID,
)
from .vocabulary_music_xl import (
    LEGACY_VOCAB_SIZE as LEGACY_VOCAB_SIZE,
)
from .vocabulary_music_xl import (
    MAX_DURATION as MAX_DURATION,
)
from .vocabulary_music_xl import (
    MAX_METER_NUMERATOR as MAX_METER_NUMERATOR,
)
from .vocabulary_music_xl import (
    METER_DENOMINATORS as METER_DENOMINATORS,
)
from .vocabulary_music_xl import (
    METER_OFFSET as METER_OFFSET,
)
from .vocabulary_music_xl import (
    METERS as METERS,
)
from .vocabulary_music_xl import (
    NOTE_OFFSET as NOTE_OFFSET,
)
from .vocabulary_music_xl import (
    NUM_DURATIONS as NUM_DURATIONS,
)
from .vocabulary_music_xl import (
    NUM_PITCHES as NUM_PITCHES,
)
from .vocabulary_music_xl import (
    PAD_ID as PAD_ID,
)
from .vocabulary_music_xl import (
    SEP_ID as SEP_ID,
)

# The vocabulary's ids, defined once in vocabulary_music_xl.py; re-exported (``as`` itself), so that readers of the
# encoding find them here too (``encoding.BOS_ID``).
from .vocabulary_music_xl import (
    SPECIAL_TOKENS as SPECIAL_TOKENS,
)
from .vocabulary_music_xl import (
    TASK_OFFSET as TASK_OFFSET,
)
from .vocabulary_music_xl import (
    TASK_TOKENS as TASK_TOKENS,
)
from .vocabulary_music_xl import (
    TOKEN_TO_ID as TOKEN_TO_ID,
)
from .vocabulary_music_xl import (
    UNK_ID as UNK_ID,
)
from .vocabulary_music_xl import (
    VOCAB as VOCAB,
)
from .vocabulary_music_xl import (
    VOCAB_SIZE as VOCAB_SIZE,
)

# Limits on input, so that a hostile or broken file fails clearly instead of exhausting memory. Real pieces
# are far below them (a Bach chorale: 5 KB, 250 notes, 700 tokens). Each is a keyword of encode_midi.
MAX_FILE_BYTES = 64 * 2**20
MAX_NOTES = 1_000_000
MAX_TOKENS = 8_000_000  # also bounds the rests written for absurd tick values (a note at tick 2**31)
MAX_TICK = 2**31 - 1  # symusic keeps tick times in int32
# The longest note-free span written (4 xxsep pairs); a longer one is shortened by whole bars, so the notes after
# it keep their place in the bar. 640 steps: 40 bars of 4/4 at 16th notes, a silence no real piece holds.
MAX_REST_STEPS = 4 * MAX_DURATION

MidiSource = "str | os.PathLike | bytes | symusic.Score"  # what encode_midi accepts


class MidiReadError(ValueError):
    """A MIDI input could not be turned into notes; the message names the input and the problem."""


# ----------------------------------------------------------------------------------------------------------
# Reading MIDI into a note table


def _describe(source: MidiSource) -> str:
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes of MIDI>"
    if isinstance(source, symusic.Score):
        return "<symusic.Score>"
    return os.fspath(source)


def load_score(source: MidiSource, max_bytes: int = MAX_FILE_BYTES) -> symusic.Score:
    """A ``symusic.Score`` in ticks from a path, bytes or a Score; unreadable input raises ``MidiReadError``."""
    if isinstance(source, symusic.Score):  # already a Score, in any time unit
        return checked_score(source.to("tick"))
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
        # symusic keeps times in int32: a longer sum wraps round (two tracks) or fails in shift_time (three)
        total = sum(track.end() for track in score.tracks)
        if total > MAX_TICK:
            raise MidiReadError(
                f"{_describe(source)}: its format-2 tracks played in turn last {total} ticks, "
                f"past the {MAX_TICK} a MIDI time can hold"
            )
        play_tracks_in_turn(score)
    return score


def checked_score(score: symusic.Score) -> symusic.Score:
    """A Score built in code skips the MIDI reader's checks: refuse what the bytes path refuses, and pitches
    outside 0..127 (-1 would pack into the sort key as a rest, -128 as an id outside the vocabulary)."""
    if score.ticks_per_quarter <= 0:
        raise MidiReadError(f"<symusic.Score>: invalid time division ({score.ticks_per_quarter} ticks per quarter)")
    for track in score.tracks:
        pitch = track.notes.numpy()["pitch"] if len(track.notes) else np.zeros(0, np.int64)
        if len(pitch) and (pitch.min() < 0 or pitch.max() > 127):
            bad = int(pitch[(pitch < 0) | (pitch > 127)][0])
            raise MidiReadError(f"<symusic.Score>: pitch {bad} in track {track.name!r} is outside MIDI's 0..127")
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
    meters = score_meters(score, steps_per_beat)
    if not len(merged):
        return Notes(*(np.zeros(0, np.int64) for _ in range(3)), meters, np.zeros(0, np.int64))
    track_of_note = np.repeat(np.arange(len(tracks)), [len(notes) for notes in tracks])  # [n] voice of each note
    arrays = merged.numpy()
    tpq = score.ticks_per_quarter
    onset = np.maximum(quantize(arrays["time"], tpq, steps_per_beat), 0)
    duration = quantize(arrays["duration"], tpq, steps_per_beat)
    duration = np.minimum(np.maximum(duration, 1), MAX_DURATION)  # never zero length; clamped to d160
    pitch = arrays["pitch"].astype(np.int64)

    # Order by onset, then pitch high to low, then the longest note first, by sorting one packed key:
    # bits 16.. onset, 8..15 (127 - pitch), 0..7 (255 - duration). Unpacking the sorted key gives the columns.
    key = (onset << 16) - (pitch << 8) - duration + (127 << 8 | 255)
    order = np.argsort(key, kind="stable")  # of equal notes, the earlier track's is kept
    key = key[order]
    first_of_kind = np.empty(len(key), dtype=bool)  # deduplicate (onset, pitch), keeping the longest
    first_of_kind[0] = True
    np.not_equal(key[1:] >> 8, key[:-1] >> 8, out=first_of_kind[1:])
    key, voice = key[first_of_kind], track_of_note[order][first_of_kind]
    return Notes(
        onset=key >> 16, pitch=127 - ((key >> 8) & 255), duration=255 - (key & 255), meters=meters, voice=voice
    )


def score_meters(score: symusic.Score, steps_per_beat: int = STEPS_PER_BEAT) -> np.ndarray:
    """(time step, numerator, denominator) of each meter of a tick-based score, each as its token reads it back
    (``meter_token``), on the grid; 4/4 from 0 until the first time signature; a meter equal to the one before, or
    replaced at the same step, is dropped."""
    if not len(score.time_signatures):
        return default_meters()
    signatures = score.time_signatures.numpy()  # read as arrays: one Python object per event costs ~25 us
    order = np.argsort(signatures["time"], kind="stable")  # stable: of two at one time, the later in the file wins
    ticks, nums, dens = (signatures[name][order].astype(np.int64) for name in ("time", "numerator", "denominator"))
    valid = (nums >= 1) & (dens >= 1)  # corrupt ones: dropped
    if not valid.any():
        return default_meters()
    steps = np.maximum(quantize(ticks[valid], score.ticks_per_quarter, steps_per_beat), 0)
    read_back: dict[tuple[int, int], tuple[int, int]] = {}  # each kind of meter looked up once, however often
    changes = []
    for step, num, den in zip(steps.tolist(), nums[valid].tolist(), dens[valid].tolist()):
        if (num, den) not in read_back:
            read_back[num, den] = token_meter(meter_token(num, den, steps_per_beat))
        changes.append((step, *read_back[num, den]))
    return meter_table(changes)


def shorten_rests(notes: Notes, max_rest_steps: int = MAX_REST_STEPS, steps_per_beat: int = STEPS_PER_BEAT) -> Notes:
    """The notes with every note-free span (between two onsets or meter changes, or before the first) longer than
    ``max_rest_steps`` shortened to at most that, by whole bars of the meter in force there, so that everything
    after it keeps its place in the bar (by exactly the excess where one bar is longer than the limit). Later
    notes and meters move earlier together."""
    if max_rest_steps < 1:
        raise ValueError(f"max_rest_steps must be at least 1, got {max_rest_steps}")
    # Meters between two onsets only split the span: if no onset follows the one before (or 0) by more than the
    # limit, and no meter lies that far past the last onset, there is nothing to shorten (a real piece).
    last_onset = int(notes.onset[-1]) if len(notes) else 0
    longest = np.diff(notes.onset, prepend=0).max(initial=0)
    if longest <= max_rest_steps and notes.meters[-1, 0] - last_onset <= max_rest_steps:
        return notes
    times = np.unique(np.r_[0, notes.onset, notes.meters[:, 0]])  # every event, in time order
    gaps = np.diff(times)  # [G] the span after each event up to the next
    bars = Bars(notes.meters, steps_per_beat)
    length = bars.lengths[np.searchsorted(bars.times, times[:-1], side="right") - 1]  # [G] bar in force
    excess = np.maximum(gaps - max_rest_steps, 0)
    cut = -(-excess // length) * length  # whole bars, at least the excess
    cut = np.where(gaps - cut >= 1, cut, excess)  # a bar longer than the limit: just the excess
    moved = np.r_[0, np.cumsum(cut)]  # [G + 1] how far each event moves earlier

    def shifted(at: np.ndarray) -> np.ndarray:
        return at - moved[np.searchsorted(times, at)]

    meters = np.c_[shifted(notes.meters[:, 0]), notes.meters[:, 1:]]
    return Notes(shifted(notes.onset), notes.pitch, notes.duration, meters, notes.voice)


# ----------------------------------------------------------------------------------------------------------
# Notes -> ids


def notes_to_ids(notes: Notes, add_bos: bool = True, add_eos: bool = False, meter: bool = True) -> np.ndarray:
    """Encode a note table; rests longer than MAX_DURATION become several ``xxsep d..`` pairs. With ``meter`` a
    time signature token follows ``xxbos xxpad`` and stands at every meter change (the wait up to it ends there);
    without, the ids are those of vocabularies saved before time signatures."""
    head = [BOS_ID, PAD_ID] if add_bos else []
    tail = [EOS_ID] if add_eos else []
    if not meter:
        return np.concatenate(
            [
                np.array(head, np.int64),
                note_pair_ids(notes.onset, notes.pitch, notes.duration),
                np.array(tail, np.int64),
            ]
        )
    if len(notes.meters) == 1:  # most pieces: the meter's token, then the notes as without meters
        start, num, den = notes.meters[0].tolist()
        body = note_pair_ids(notes.onset - start, notes.pitch, notes.duration)
        return np.concatenate([np.array([*head, meter_token(num, den)], np.int64), body, np.array(tail, np.int64)])
    # Meter changes and notes are one list of events in time order (a change before the notes at its time), each
    # written as the xxsep pairs of the wait since the event before, then its own tokens: a time signature's one
    # or a note's two. All in arrays: a file of a million time signatures costs what a million notes cost.
    meters, count = notes.meters, len(notes) + len(notes.meters)
    meter_at = np.searchsorted(notes.onset, meters[:, 0], side="left") + np.arange(len(meters))  # event index
    is_note = np.ones(count, bool)
    is_note[meter_at] = False
    time = np.empty(count, np.int64)
    time[meter_at], time[is_note] = meters[:, 0], notes.onset
    wait = np.diff(time, prepend=time[:1])  # [E] steps since the event before (the first meter's: none)
    seps = -(-wait // MAX_DURATION)  # [E] xxsep pairs before each event: d160 each, the remainder last
    size = 2 * seps + np.where(is_note, 2, 1)
    first = np.cumsum(size) - size  # [E] index of each event's first token
    ids = np.empty(int(size.sum()), np.int64)
    pair = np.repeat(first, seps) + 2 * (np.arange(int(seps.sum())) - np.repeat(np.cumsum(seps) - seps, seps))
    ids[pair], ids[pair + 1] = SEP_ID, DURATION_OFFSET + MAX_DURATION
    rest = seps > 0
    ids[first[rest] + 2 * seps[rest] - 1] = DURATION_OFFSET + wait[rest] - MAX_DURATION * (seps[rest] - 1)
    own = first + 2 * seps  # [E] index of the event's own first token
    ids[own[meter_at]] = [meter_token(num, den) for _, num, den in meters.tolist()]
    ids[own[is_note]], ids[own[is_note] + 1] = NOTE_OFFSET + notes.pitch, DURATION_OFFSET + notes.duration
    return np.concatenate([np.array(head, np.int64), ids, np.array(tail, np.int64)])


def wait_ids(steps: int) -> np.ndarray:
    """``xxsep d..`` pairs moving time forward by ``steps`` (none for 0; d160 pairs, the remainder last)."""
    pairs = [MAX_DURATION] * (steps // MAX_DURATION) + ([steps % MAX_DURATION] if steps % MAX_DURATION else [])
    return np.array([token for wait in pairs for token in (SEP_ID, DURATION_OFFSET + wait)], np.int64)


def note_pair_ids(onset: np.ndarray, pitch: np.ndarray, duration: np.ndarray) -> np.ndarray:
    """The pairs of notes sorted by onset (from step 0): ``n d`` per note, ``xxsep d..`` before each new onset."""
    wait = onset.copy()  # [n] steps since the previous note (0 within a chord)
    wait[1:] -= onset[:-1]
    seps = -(-wait // MAX_DURATION)  # [n] xxsep pairs written before each note (ceil; usually 0 or 1)
    note_slot = np.arange(len(onset)) + np.cumsum(seps)  # [n] pair index of each note
    n_pairs = len(onset) + int(seps.sum())
    ids = np.empty(2 * n_pairs, np.int64)
    pairs = ids.reshape(n_pairs, 2)  # a view: writing pairs writes ids

    # Every slot that is not a note is an xxsep; a long rest is d160 pairs with the remainder last, in the
    # slot just before its note. Writing the remainder before every note is harmless where a note has no
    # xxsep: that slot belongs to the previous note (or, for the first, wraps to the last, always a note),
    # and the note pairs written next overwrite it.
    if not n_pairs:
        return ids
    pairs[:, 0] = SEP_ID
    pairs[:, 1] = DURATION_OFFSET + MAX_DURATION
    pairs[note_slot - 1, 1] = DURATION_OFFSET + wait - MAX_DURATION * (seps - 1)
    pairs[note_slot, 0] = NOTE_OFFSET + pitch
    pairs[note_slot, 1] = DURATION_OFFSET + duration
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
    meter: bool = True,
    max_rest_steps: int = MAX_REST_STEPS,
) -> np.ndarray:
    """Token ids of a MIDI path, bytes or ``symusic.Score``; with ``meter``, its time signatures as tokens (a file
    without one is in 4/4, as MIDI defines it). The notes are ``read_notes``'s (see there for what raises)."""
    notes = read_notes(source, steps_per_beat, allow_empty, max_bytes, max_notes, max_tokens, max_rest_steps)
    return notes_to_ids(notes, add_bos=add_bos, add_eos=add_eos, meter=meter)


def read_notes(
    source: MidiSource,
    steps_per_beat: int = STEPS_PER_BEAT,
    allow_empty: bool = False,
    max_bytes: int = MAX_FILE_BYTES,
    max_notes: int = MAX_NOTES,
    max_tokens: int = MAX_TOKENS,
    max_rest_steps: int = MAX_REST_STEPS,
) -> Notes:
    """The notes of a MIDI path, bytes or ``symusic.Score`` on the grid, each with its voice (the non-drum track it
    came from), and the meters up to the last note.

    Raises ``MidiReadError`` (a ValueError naming the input) for unreadable input, a file over ``max_bytes``,
    more than ``max_notes`` notes or time signatures, or more than ``max_tokens`` tokens, and a score without notes
    (drums do not count) unless ``allow_empty``. A note-free span longer than ``max_rest_steps`` grid steps is
    shortened to at most that by whole bars (``shorten_rests``)."""
    score = load_score(source, max_bytes=max_bytes)
    if score.note_num() > max_notes or len(score.time_signatures) > max_notes:
        raise MidiReadError(
            f"{_describe(source)}: {score.note_num()} notes and {len(score.time_signatures)} time "
            f"signatures, over the limit of {max_notes}"
        )
    notes = score_to_notes(score, steps_per_beat)
    if not len(notes) and not allow_empty:
        raise MidiReadError(f"{_describe(source)}: no notes outside drum tracks")
    last_onset = int(notes.onset[-1]) if len(notes) else 0
    # meter changes after the last note move nothing that sounds
    notes.meters = notes.meters[notes.meters[:, 0] <= last_onset] if len(notes) else notes.meters[:1]
    notes = shorten_rests(notes, max_rest_steps, steps_per_beat)
    last_onset = int(notes.onset[-1]) if len(notes) else 0
    # Each note writes 2 tokens, each xxsep pair covers up to MAX_DURATION steps of its wait (plus one pair per
    # note or meter at most for the remainders), each meter 1: a cheap upper bound checked before anything is built.
    if 3 + 4 * len(notes) + 3 * len(notes.meters) + 2 * (last_onset // MAX_DURATION) > max_tokens:
        raise MidiReadError(
            f"{_describe(source)}: the last note starts at grid step {last_onset}, which would take "
            f"more than the limit of {max_tokens} tokens"
        )
    return notes


def token_voices(ids: np.ndarray, voice: np.ndarray) -> np.ndarray:
    """(T,) int8 the voice of every token of ``ids`` (the encoding of notes whose voices are ``voice``, in their
    order): a note's pitch and duration tokens carry its voice, every other token -1. Voices past 126 read as 126."""
    voices = np.full(len(ids), -1, np.int8)
    at = np.flatnonzero((ids >= NOTE_OFFSET) & (ids < NOTE_OFFSET + NUM_PITCHES))  # [n] the notes, in order
    voices[at] = voices[at + 1] = np.minimum(voice, 126)
    return voices
