"""Token ids back to music: the grammar check, ids -> notes -> ``symusic.Score`` (total: any sequence decodes), where
each token sounds (the beat positions, by the meter rule) and transposition.

``encoding.py`` re-exports everything here, so ``encoding.decode_ids`` is this file's.

This file is copied next to saved weights for ``trust_remote_code`` loading, with its siblings.
"""

from __future__ import annotations

import numpy as np
import symusic

from .notes_music_xl import (
    STEPS_PER_BAR,
    STEPS_PER_BEAT,
    Bars,
    Notes,
    is_meter,
    is_task,
    meter_table,
    token_meter,
)
from .vocabulary_music_xl import (
    BACK_ID,
    BOS_ID,
    DEFAULT_METER,
    DURATION_OFFSET,
    EOS_ID,
    GIVEN_ID,
    NOTE_OFFSET,
    NUM_DURATIONS,
    NUM_PITCHES,
    PAD_ID,
    SEP_ID,
    VOCAB,
    VOCAB_SIZE,
)

TICKS_PER_QUARTER = 480  # resolution of the MIDI we write
DEFAULT_VELOCITY = 80
DEFAULT_TEMPO_QPM = 120.0


class InvalidTokenError(ValueError):
    """A token sequence breaks the grammar (raised by ``decode_ids(..., strict=True)``)."""


# ----------------------------------------------------------------------------------------------------------
# ids -> notes -> MIDI


def _classify(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    is_note = (ids >= NOTE_OFFSET) & (ids < NOTE_OFFSET + NUM_PITCHES)
    is_duration = (ids >= DURATION_OFFSET) & (ids < DURATION_OFFSET + NUM_DURATIONS)
    return is_note, is_duration, ids == SEP_ID


def first_invalid_position(ids: np.ndarray | list[int]) -> int | None:
    """Index of the first token that breaks the grammar, or None. Valid: ``xxbos``, ``xxpad``, ``xxeos``, time
    signatures and task tokens between pairs; every note and every ``xxsep`` directly followed by a duration;
    nothing else."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    is_note, is_duration, is_sep = _classify(ids)
    opens_pair = is_note | is_sep
    opened_before = np.r_[False, opens_pair[:-1]]
    closed_after = np.r_[is_duration[1:], False]
    is_frame = np.isin(ids, [BOS_ID, PAD_ID, EOS_ID]) | is_meter(ids) | is_task(ids)
    valid = (opens_pair & closed_after) | (is_duration & opened_before) | is_frame
    bad = np.flatnonzero(~valid)
    return int(bad[0]) if len(bad) else None


def ids_to_notes(ids: np.ndarray | list[int], strict: bool = False) -> Notes:
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
    time_at = taken_back(ids, np.cumsum(wait_at) - wait_at)  # [T] time before token i's own wait
    note_end = np.flatnonzero(closes & np.r_[False, is_note[:-1]])  # index of each note's duration token
    pitch = ids[note_end - 1] - NOTE_OFFSET
    duration = ids[note_end] - DURATION_OFFSET
    onset = time_at[note_end]
    keep = duration > 0  # d0 is in the vocabulary but cannot sound
    meters = meter_table([(int(time_at[i]), *token_meter(ids[i])) for i in np.flatnonzero(is_meter(ids))])
    return Notes(onset[keep], pitch[keep], duration[keep], meters)


def taken_back(ids: np.ndarray, times: np.ndarray) -> np.ndarray:
    """``times`` (a token's time from the waits before it) with the task layouts' rule: an ``xxback`` takes time
    back to the latest ``xxgiven`` before it, if no other ``xxback`` closed that one (the model's rule,
    ``positions_music_xl.compute_positions``)."""
    backs, givens = np.flatnonzero(ids == BACK_ID), np.flatnonzero(ids == GIVEN_ID)
    if not len(backs) or not len(givens):
        return times
    opened = np.searchsorted(givens, backs) - 1  # [b] the latest xxgiven before each xxback, -1: none
    previous_back = np.r_[-1, backs[:-1]]
    closes = (opened >= 0) & (givens[np.maximum(opened, 0)] > previous_back)  # that xxgiven is still open
    shift = np.zeros(len(ids), np.int64)
    shift[backs[closes]] = times[backs[closes]] - times[givens[opened[closes]]]
    return times - np.cumsum(shift)


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
    """A piano score with the notes' time signatures (fixed tempo and velocity: the encoding keeps neither). Notes
    overlapping a note of the same pitch go to extra piano tracks (see ``overlap_layers``); ``encode_midi`` merges
    them back."""
    ticks_per_step = ticks_per_quarter // steps_per_beat
    # MIDI ticks are int32: absurdly long random sequences lose what lies past ~a million bars.
    fits = (notes.onset + notes.duration) * ticks_per_step <= np.iinfo(np.int32).max
    notes = notes.select(fits)
    score = symusic.Score(ticks_per_quarter)
    score.tempos.append(symusic.Tempo(0, tempo_qpm))
    for time, num, den in notes.meters:
        if time * ticks_per_step <= np.iinfo(np.int32).max:
            score.time_signatures.append(symusic.TimeSignature(int(time * ticks_per_step), int(num), int(den)))
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


def decode_ids(
    ids: np.ndarray | list[int], strict: bool = False, steps_per_beat: int = STEPS_PER_BEAT
) -> symusic.Score:
    """A ``symusic.Score`` from any id sequence (see ``ids_to_notes`` for what is skipped)."""
    return notes_to_score(ids_to_notes(ids, strict=strict), steps_per_beat=steps_per_beat)


def id_to_token(token_id: int) -> str:
    return VOCAB[token_id] if 0 <= token_id < VOCAB_SIZE else f"<id {int(token_id)}>"


# ----------------------------------------------------------------------------------------------------------
# Beat positions


def beat_positions(ids: np.ndarray | list[int]) -> np.ndarray:
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


def token_bars(ids: np.ndarray | list[int], steps_per_beat: int = STEPS_PER_BEAT) -> tuple[np.ndarray, ...]:
    """Per token, where it sounds by the meter rule: (bar, step within the bar, beat within the bar, step within the
    beat). Each piece (from an ``xxbos``) starts in 4/4 at bar 0; a time signature token takes effect where it
    stands in the sequence, at its time, where it starts a bar (the bars before it counted up, a short last one
    included: ``Bars``); the token itself already counts in the new meter."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    times = beat_positions(ids)
    columns = [np.zeros(len(ids), np.int64) for _ in range(4)]
    starts = np.r_[0, np.flatnonzero(ids == BOS_ID)]
    for begin, end in zip(starts, np.r_[starts[1:], len(ids)]):  # one piece at a time
        piece = slice(begin, end)
        changes = begin + np.flatnonzero(is_meter(ids[piece]))
        meters = [DEFAULT_METER] + [token_meter(token) for token in ids[changes]]
        bars = Bars(np.c_[np.r_[0, times[changes]], meters], steps_per_beat)  # each meter from where it stands
        which = np.cumsum(is_meter(ids[piece]))  # the meter each token counts in: the last token up to it
        since = times[piece] - bars.times[which]
        step = since % bars.lengths[which]
        values = (
            bars.first_bar[which] + since // bars.lengths[which],
            step,
            step // bars.beats[which],
            step % bars.beats[which],
        )
        for column, value in zip(columns, values):
            column[piece] = value
    return tuple(columns)


def position_features(
    ids: np.ndarray | list[int], meter: bool = True, steps_per_beat: int = STEPS_PER_BEAT
) -> np.ndarray:
    """(T, 3) the model's beat-position input of each token: (bar, beat within the bar, step within the beat) by
    the meter rule; or, for models saved before time signatures (``meter=False``), (bar, step within a 16-step
    bar, 0) counted from ``xxbos``."""
    if not meter:
        times = beat_positions(ids)
        return np.stack([times // STEPS_PER_BAR, times % STEPS_PER_BAR, np.zeros_like(times)], axis=1)
    bar, _, beat, in_beat = token_bars(ids, steps_per_beat)
    return np.stack([bar, beat, in_beat], axis=1)


# ----------------------------------------------------------------------------------------------------------
# Transposition


def transposition_range(ids: np.ndarray | list[int]) -> tuple[int, int]:
    """(lowest, highest) shift in semitones that keeps every note of ``ids`` within 0..127."""
    ids = np.asarray(ids, dtype=np.int64)
    pitches = ids[(ids >= NOTE_OFFSET) & (ids < NOTE_OFFSET + NUM_PITCHES)] - NOTE_OFFSET
    if not len(pitches):
        return -(NUM_PITCHES - 1), NUM_PITCHES - 1
    return -int(pitches.min()), NUM_PITCHES - 1 - int(pitches.max())


def transpose_ids(ids: np.ndarray | list[int], semitones: int) -> np.ndarray:
    """Shift every note by ``semitones``; a shift outside ``transposition_range`` raises ValueError."""
    ids = np.asarray(ids, dtype=np.int64)
    low, high = transposition_range(ids)
    if not low <= semitones <= high:
        raise ValueError(f"a shift of {semitones} semitones leaves the pitch range; allowed {low}..{high}")
    is_note = (ids >= NOTE_OFFSET) & (ids < NOTE_OFFSET + NUM_PITCHES)
    return np.where(is_note, ids + semitones, ids)
