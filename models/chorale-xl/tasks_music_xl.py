"""Tasks beyond continuation, as layouts a causal model learns: bar infilling and harmonization.

Both tasks give the model notes it must not write and ask it to write the notes that sound with them. Given notes
stand between ``xxgiven`` and ``xxback``; ``xxback`` takes time (and the meter) back to where ``xxgiven`` stood
(the position rule of ``positions_music_xl.compute_positions``), so the notes written after it get the beat
positions of the bars they belong to. A task token after ``xxbos xxpad`` says which layout follows.

Both layouts keep the piece in its plain order (the order continuation trains on) where the model writes, and
place the given notes it needs a little ahead of where they sound (as the Anticipatory Music Transformer places
its controls), so the condition is always within the memory, however long the piece.

Infilling bars ``a..b`` (0-based here, inclusive; times ``T0`` and ``T1`` where bar ``a`` starts and bar ``b`` ends),
fill-in-the-middle with bar lines as the cut points: the right side (the ``INFILL_CONTEXT_BARS`` bars after the
span) is given ``INFILL_AHEAD_BARS`` bars before ``T0``, at ``A``; then the left side goes on to ``T0`` and the
model writes the span as the continuation of it::

    xxbos xxpad xxinfill ts4/4  <notes before A>
    xxgiven <wait A..T1> <notes of the bars after the span>  xxback       (time goes back to A)
    <notes from A to T0>  <wait to T0>  <notes of bars a..b>  <wait to T1>  xxeos

Harmonization: each bar's melody (the top voice) given at the start of the bar, then the bar in plain order, the
melody's notes given again where they sound (first at their onset, as the plain order writes the top voice), the
other voices written around them::

    xxbos xxpad xxharmonize ts4/4
    xxgiven <melody of bar 0> xxback  xxgiven n72 d8 xxback n64 d8 n55 d8 n48 d8 xxsep d8 xxgiven n74 d8 xxback ...

(A right side given after the whole left side, and the melody of a bar only ahead of it, measured worse than the
plain piece's own order: a small model then had the left side's end, or each chord's top note, out of easy
reach.)

A time signature change stands where the plain encoding puts it, after the wait that reaches its bar line (in a
harmonization, before that bar's ``xxgiven``). An infilled span may not contain a meter change inside it (its
first bar may start one).

At generation the given tokens are not sampled: a ``TaskPrompt`` lists the times ("walls") at which the sampler
writes them (``GivenNotesProcessor``); a wait may not cross the next wall.

This file is copied next to saved weights (the pipeline imports it), so it may import only torch, transformers,
numpy and its sibling files, and does nothing at import time beyond defining things.
"""

from dataclasses import dataclass

import numpy as np

from .encoding import (
    BACK_ID,
    BOS_ID,
    EOS_ID,
    GIVEN_ID,
    HARMONIZE_ID,
    INFILL_ID,
    NOTE_OFFSET,
    NUM_PITCHES,
    PAD_ID,
    Notes,
    ids_to_notes,
    meter_token,
    note_pair_ids,
    wait_ids,
)

TASK_TOKEN = {"infill": INFILL_ID, "harmonize": HARMONIZE_ID}
MAX_INFILL_BARS = 8  # the longest span drawn in training (the pipeline refuses nothing longer: it may do worse)
INFILL_CONTEXT_BARS = 4  # bars after the span given as its right side
INFILL_AHEAD_BARS = 4  # bars before the span at which the right side is given


@dataclass
class TaskPrompt:
    """What the sampler needs for one task: the prompt, the walls (times at which given tokens are written) with
    the tokens of each, and the bars to generate (time from the prompt's end to the last wall)."""

    ids: np.ndarray  # int64 [P], ends with xxback
    walls: list[int]  # grid steps, increasing
    blocks: list[list[int]]  # the tokens written at each wall
    bars: int
    start: int  # grid step where the written notes start (T0, or 0 for a harmonization)


def check_task(config, task: str) -> None:
    """Refuse, in one line naming the ``--tasks`` it was trained with, a task the model was not trained for
    (``config.task_names``; "continue" only for models saved before the task tokens)."""
    trained = config.task_names
    if task not in trained:
        raise ValueError(
            f"this model was trained with --tasks {','.join(trained)}; {task} needs a model trained with "
            f"--tasks ...,{task}"
        )


# ----------------------------------------------------------------------------------------------------------
# Writing stretches of notes


def stretch_ids(notes: Notes, start: int, end: int | None, wait_to_end: bool = True, meters: bool = True) -> np.ndarray:
    """The pairs of the notes with onset in ``[start, end)`` (``end`` None: to the last note), time counted from
    ``start``; with ``meters``, the time signature token of each change in ``(start, end]`` after the wait that
    reaches it (``(start, end)`` without ``wait_to_end``); with ``wait_to_end``, the wait from the last note (or
    change) to ``end``."""
    last_time = int(notes.onset[-1]) if len(notes) else start
    stop = end if end is not None else max(last_time, start)
    reaches_stop = wait_to_end or end is None  # a change at the stop is written only after a wait that reaches it
    inside = [(int(t), int(n), int(d)) for t, n, d in notes.meters if start < t <= stop]
    changes = [change for change in inside if change[0] < stop or reaches_stop] if meters else []
    parts, here = [], start
    for time, num, den in changes + [(end, 0, 0)]:
        inside = (notes.onset >= here) & ((notes.onset < time) if time is not None else True)
        onsets = notes.onset[inside]
        parts.append(note_pair_ids(onsets - here, notes.pitch[inside], notes.duration[inside]))
        if time is None or (not num and not wait_to_end):
            break
        parts.append(wait_ids(time - (int(onsets[-1]) if len(onsets) else here)))
        if num:
            parts.append(np.array([meter_token(num, den)], np.int64))
        here = time
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def head_ids(task: str, notes: Notes) -> np.ndarray:
    """``xxbos xxpad``, the task token and the first time signature."""
    _, num, den = notes.meters[0]
    return np.array([BOS_ID, PAD_ID, TASK_TOKEN[task], meter_token(int(num), int(den))], np.int64)


def meter_at(notes: Notes, time: int) -> list[int]:
    """The time signature token of a change exactly at ``time`` (none at 0: the head has it), as a list."""
    rows = [row for row in notes.meters if int(row[0]) == time and time > 0]
    return [meter_token(int(rows[0][1]), int(rows[0][2]))] if rows else []


# ----------------------------------------------------------------------------------------------------------
# Infilling


def piece_bars(notes: Notes) -> int:
    """Bars the piece spans: up to the bar of its last note's onset, by the meters (1 for no notes)."""
    return int(notes.bars().locate([int(notes.onset[-1])])[0][0]) + 1 if len(notes) else 1


def span_times(notes: Notes, first_bar: int, last_bar: int) -> tuple[int, int]:
    """(T0, T1): where bar ``first_bar`` starts and bar ``last_bar`` ends (0-based, inclusive), by the meters.
    Raises ValueError for a span outside the piece or one with a meter change inside it."""
    bars, last_in_piece = notes.bars(), piece_bars(notes) - 1
    if not 0 <= first_bar <= last_bar <= last_in_piece:
        raise ValueError(f"bars {first_bar + 1}-{last_bar + 1} are not within the piece's bars 1-{last_in_piece + 1}")
    start, end = bars.bar_time(first_bar), bars.bar_time(last_bar + 1)
    inside = [int(t) for t in notes.meters[:, 0] if start < t < end]
    if inside:
        bar = int(bars.locate([inside[0]])[0][0]) + 1
        raise ValueError(
            f"bars {first_bar + 1}-{last_bar + 1} contain a time signature change (bar {bar}): fill "
            "bars within one meter"
        )
    return start, end


def infill_parts(notes: Notes, first_bar: int, last_bar: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(prompt, middle, T0, T1) of the infilling layout: the prompt ends at T0, the middle (the notes of the span,
    the wait to T1 and ``xxeos``) is what the model writes."""
    start, end = span_times(notes, first_bar, last_bar)
    bars = notes.bars()
    ahead, context_end = (
        bars.bar_time(max(first_bar - INFILL_AHEAD_BARS, 0)),
        bars.bar_time(last_bar + 1 + INFILL_CONTEXT_BARS),
    )
    before, left = notes.onset < ahead, (notes.onset >= ahead) & (notes.onset < start)
    inside, after = (notes.onset >= start) & (notes.onset < end), (notes.onset >= end) & (notes.onset < context_end)
    prompt = [
        head_ids("infill", notes),
        stretch_ids(notes.select(before), 0, ahead),
        [GIVEN_ID],
        stretch_ids(notes.select(after), ahead, context_end, wait_to_end=False),  # its meters, from A
        [BACK_ID],
        stretch_ids(notes.select(left), ahead, start),
    ]
    middle = [stretch_ids(notes.select(inside), start, end, meters=False), [EOS_ID]]
    return _join(prompt), _join(middle), start, end


def infill_ids(notes: Notes, first_bar: int, last_bar: int) -> np.ndarray:
    """The whole infilling example of bars ``first_bar..last_bar`` (0-based, inclusive)."""
    prompt, middle, _, _ = infill_parts(notes, first_bar, last_bar)
    return np.concatenate([prompt, middle])


def infill_prompt(notes: Notes, first_bar: int, last_bar: int) -> TaskPrompt:
    """What the sampler needs to fill bars ``first_bar..last_bar``: after the prompt, the model writes from T0,
    and at T1 the sampler writes ``xxeos``."""
    prompt, _, start, end = infill_parts(notes, first_bar, last_bar)
    return TaskPrompt(prompt, [end], [[EOS_ID]], last_bar - first_bar + 1, start)


# ----------------------------------------------------------------------------------------------------------
# Harmonization


def bar_starts(notes: Notes) -> np.ndarray:
    """Times of the bar lines from 0 to the end of the bar of the last note (included)."""
    bars = notes.bars()
    return bars.bar_lines(bars.bar_time(piece_bars(notes)))


def given_pairs(melody: Notes, at: np.ndarray) -> list[int]:
    """The melody's notes where ``at`` is True, as pairs between ``xxgiven`` and ``xxback`` (none: empty)."""
    if not at.any():
        return []
    zero = np.zeros(int(at.sum()), np.int64)  # all at one onset: no wait between them
    return [GIVEN_ID] + note_pair_ids(zero, melody.pitch[at], melody.duration[at]).tolist() + [BACK_ID]


def melody_block(melody: Notes, start: int, end: int, meter: list[int]) -> list[int]:
    """The tokens given at bar line ``start``: a time signature change there, the melody of the bar, then the
    melody's notes that sound at the bar line."""
    pairs = stretch_ids(melody, start, end, wait_to_end=False, meters=False).tolist()
    return meter + [GIVEN_ID] + pairs + [BACK_ID] + given_pairs(melody, melody.onset == start)


def bar_ids(melody: Notes, others: Notes, start: int, end: int, meter: list[int]) -> list[int]:
    """One bar of the harmonization layout: its melody block, then onset by onset the melody's notes given and the
    other voices' written, the waits between them, the wait to ``end`` and a time signature change there."""
    tokens = melody_block(melody, start, end, [])  # the change at `start` ended the bar before
    mine = (others.onset >= start) & (others.onset < end)
    onsets = np.unique(np.r_[melody.onset[(melody.onset > start) & (melody.onset < end)], others.onset[mine]])
    here = start
    for onset in onsets.tolist():
        tokens += wait_ids(onset - here).tolist()
        here = onset
        if onset > start:
            tokens += given_pairs(melody, melody.onset == onset)
        at = others.onset == onset
        tokens += note_pair_ids(np.zeros(int(at.sum()), np.int64), others.pitch[at], others.duration[at]).tolist()
    return tokens + wait_ids(end - here).tolist() + meter


def harmonize_ids(notes: Notes, given: np.ndarray) -> np.ndarray:
    """The harmonization example of a piece whose notes ``given`` (bool per note) are the melody."""
    melody, others, lines = notes.select(given), notes.select(~given), bar_starts(notes)
    parts = [head_ids("harmonize", notes)]
    for start, end in zip(lines[:-1].tolist(), lines[1:].tolist()):
        parts.append(bar_ids(melody, others, start, end, meter_at(notes, end)))
    parts.append([EOS_ID])
    return _join(parts)


def harmonize_prompt(melody: Notes) -> TaskPrompt:
    """What the sampler needs to write voices under ``melody``: the head and bar 0's melody block; then it gives
    each later bar's block at its bar line (with a time signature change there), each melody note where it sounds,
    and ``xxeos`` at the end."""
    lines = bar_starts(melody).tolist()
    walls = {line: melody_block(melody, line, end, meter_at(melody, line)) for line, end in zip(lines, lines[1:])}
    for onset in np.unique(melody.onset).tolist():
        walls.setdefault(onset, given_pairs(melody, melody.onset == onset))  # inside a bar: the note alone
    walls[lines[-1]] = [EOS_ID]
    times = sorted(walls)
    prompt = np.concatenate([head_ids("harmonize", melody), np.array(walls[0], np.int64)])
    return TaskPrompt(prompt, times[1:], [walls[time] for time in times[1:]], len(lines) - 1, 0)


def melody_voice(notes: Notes) -> int | None:
    """The voice that is the melody: the highest by mean pitch, of a piece with at least two voices; else None."""
    if notes.voice is None or not len(notes):
        return None
    voices = np.unique(notes.voice)
    if len(voices) < 2:
        return None
    return int(voices[np.argmax([notes.pitch[notes.voice == v].mean() for v in voices])])


# ----------------------------------------------------------------------------------------------------------
# Reading what was written


def given_tokens(ids: np.ndarray) -> np.ndarray:
    """(T,) bool: the tokens between an ``xxgiven`` and the ``xxback`` that closes it."""
    index = np.arange(len(ids))
    last_given = np.maximum.accumulate(np.where(ids == GIVEN_ID, index, -1))
    last_back = np.maximum.accumulate(np.where(ids == BACK_ID, index, -1))
    return last_given > last_back


def written_notes(ids: np.ndarray, prompt_length: int) -> Notes:
    """The notes the model wrote in a task sequence: those after the prompt and outside given blocks, at their
    times (the other notes' pitch tokens become ``xxpad``, which moves no time, so every time stays as it was)."""
    ids = np.asarray(ids, dtype=np.int64)
    is_note = (ids >= NOTE_OFFSET) & (ids < NOTE_OFFSET + NUM_PITCHES)
    drop = is_note & (given_tokens(ids) | (np.arange(len(ids)) < prompt_length))
    return ids_to_notes(np.where(drop, PAD_ID, ids))


def given_notes(ids: np.ndarray) -> Notes:
    """The notes of a task sequence's given blocks, at their times, each once (a harmonization gives the melody
    twice: ahead of its bar and where it sounds)."""
    ids = np.asarray(ids, dtype=np.int64)
    is_note = (ids >= NOTE_OFFSET) & (ids < NOTE_OFFSET + NUM_PITCHES)
    notes = ids_to_notes(np.where(is_note & ~given_tokens(ids), PAD_ID, ids))
    rows = np.unique(np.c_[notes.onset, -notes.pitch, notes.duration], axis=0)  # by onset, then pitch high to low
    return Notes(rows[:, 0], -rows[:, 1], rows[:, 2], notes.meters)


def _join(parts) -> np.ndarray:
    return np.concatenate([np.asarray(part, dtype=np.int64) for part in parts])


__all__ = [
    "INFILL_AHEAD_BARS",
    "INFILL_CONTEXT_BARS",
    "MAX_INFILL_BARS",
    "TASK_TOKEN",
    "TaskPrompt",
    "bar_starts",
    "check_task",
    "given_notes",
    "given_tokens",
    "harmonize_ids",
    "harmonize_prompt",
    "infill_ids",
    "infill_parts",
    "infill_prompt",
    "melody_voice",
    "piece_bars",
    "span_times",
    "stretch_ids",
    "written_notes",
]
