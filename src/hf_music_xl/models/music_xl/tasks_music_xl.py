"""Tasks beyond continuation, as layouts a causal model learns: bar infilling and harmonization.

Both tasks give the model notes it must not write and ask it to write the notes that sound with them. Given notes
stand between ``xxgiven`` and ``xxback``; ``xxback`` takes time (and the meter) back to where ``xxgiven`` stood
(the position rule of ``positions_music_xl.compute_positions``), so the notes written after it get the beat
positions of the bars they belong to. A task token after ``xxbos xxpad`` says which layout follows.

Infilling bars ``a..b`` (0-based here, inclusive; times ``T0`` and ``T1`` where bar ``a`` starts and bar ``b`` ends),
fill-in-the-middle with bar lines as the cut points: the left side, then the right side given, then the middle::

    xxbos xxpad xxinfill ts4/4  <notes before T0>  <wait to T0>
    xxgiven <wait T0..T1> <notes of the INFILL_CONTEXT_BARS bars after T1>  xxback          (time goes back to T0)
    <notes of bars a..b>  <wait to T1>  xxeos

The right side is the few bars after the span, not the rest of the piece: the middle is written right after it,
and the end of the left side must stay within the memory too (a right side of the whole piece pushed both out of
a small model's reach: the multitask model then scored the middle worse given both sides than given the left).

Harmonization, the given voice (the melody) of each bar placed just before the notes written under it, so the
condition is always within the memory however long the piece::

    xxbos xxpad xxharmonize ts4/4
    xxgiven <melody of bar 0> xxback  <other voices of bar 0>  <wait to bar 1>
    xxgiven <melody of bar 1> xxback  <other voices of bar 1>  <wait to bar 2>  ...  xxeos

A time signature change stands where the plain encoding puts it, after the wait that reaches its bar line (in a
harmonization, before that bar's ``xxgiven``). An infilled span may not contain a meter change inside it (its
first bar may start one).

At generation the given tokens are not sampled: ``schedule`` lists, per row, the times ("walls") at which the
sampler must write them (``GivenNotesProcessor``); a wait may not cross the next wall.

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
    changes = [(int(t), int(n), int(d)) for t, n, d in notes.meters if start < t < stop or (t == stop and reaches_stop)]
    changes = changes if meters else []
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


def span_times(notes: Notes, first_bar: int, last_bar: int) -> tuple[int, int]:
    """(T0, T1): where bar ``first_bar`` starts and bar ``last_bar`` ends (0-based, inclusive), by the meters.
    Raises ValueError for a span outside the piece or one with a meter change inside it."""
    bars = notes.bars()
    last_in_piece = int(bars.locate([int(notes.onset[-1])])[0][0]) if len(notes) else 0
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
    """(prompt, middle, T0, T1) of the infilling layout: the prompt ends with ``xxback``, the middle (the notes of
    the span, the wait to T1 and ``xxeos``) is what the model writes. The right side given is the
    ``INFILL_CONTEXT_BARS`` bars after the span."""
    start, end = span_times(notes, first_bar, last_bar)
    context_end = notes.bars().bar_time(last_bar + 1 + INFILL_CONTEXT_BARS)
    before, inside = notes.onset < start, (notes.onset >= start) & (notes.onset < end)
    after = (notes.onset >= end) & (notes.onset < context_end)
    prompt = [
        head_ids("infill", notes),
        stretch_ids(notes.select(before), 0, start),
        [GIVEN_ID],
        wait_ids(end - start),
        meter_at(notes, end),
        stretch_ids(notes.select(after), end, context_end, wait_to_end=False),
        [BACK_ID],
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
    last_bar = int(bars.locate([int(notes.onset[-1])])[0][0]) if len(notes) else 0
    return np.array([bars.bar_time(bar) for bar in range(last_bar + 2)], np.int64)


def melody_block(melody: Notes, start: int, end: int, meter: list[int]) -> list[int]:
    """The tokens written at bar line ``start``: a time signature change there, then the melody of the bar given."""
    pairs = stretch_ids(melody, start, end, wait_to_end=False, meters=False)
    return meter + [GIVEN_ID] + pairs.tolist() + [BACK_ID]


def harmonize_ids(notes: Notes, given: np.ndarray) -> np.ndarray:
    """The harmonization example of a piece whose notes ``given`` (bool per note) are the melody."""
    melody, others, lines = notes.select(given), notes.select(~given), bar_starts(notes)
    parts = [head_ids("harmonize", notes)]
    for start, end in zip(lines[:-1].tolist(), lines[1:].tolist()):
        parts.append(melody_block(melody, start, end, []))  # a change at `start` ended the bar before
        parts.append(stretch_ids(others, start, end))  # ends with the wait to `end` and a change there
    parts.append([EOS_ID])
    return _join(parts)


def harmonize_prompt(melody: Notes) -> TaskPrompt:
    """What the sampler needs to write voices under ``melody``: the head and bar 0's melody; at each later bar
    line the sampler writes that bar's melody (and a time signature change there), and ``xxeos`` at the end."""
    lines = bar_starts(melody).tolist()
    blocks = [melody_block(melody, start, end, meter_at(melody, start)) for start, end in zip(lines, lines[1:])]
    prompt = np.concatenate([head_ids("harmonize", melody), np.array(blocks[0], np.int64)])
    return TaskPrompt(prompt, lines[1:], blocks[1:] + [[EOS_ID]], len(lines) - 1, 0)


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
    """The notes of a task sequence's given blocks, at their times."""
    ids = np.asarray(ids, dtype=np.int64)
    is_note = (ids >= NOTE_OFFSET) & (ids < NOTE_OFFSET + NUM_PITCHES)
    return ids_to_notes(np.where(is_note & ~given_tokens(ids), PAD_ID, ids))


def _join(parts) -> np.ndarray:
    return np.concatenate([np.asarray(part, dtype=np.int64) for part in parts])


__all__ = [
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
    "span_times",
    "stretch_ids",
    "written_notes",
]
