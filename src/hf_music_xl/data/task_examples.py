"""Training examples of the tasks (``hf-music-xl train --tasks continue,infill,harmonize``): each piece, each time
it is dealt to a stream, becomes the example of one task drawn by the mixing weights, from a generator the caller
seeds (``PieceStreams`` seeds it with the seed, the epoch and the piece's place in the deal), so a resumed run
draws the same examples.

- continue: the piece as it is;
- infill: a span of 1..``MAX_INFILL_BARS`` whole bars (never more than all but one of the piece's bars, and never
  across a meter change) moved after the rest of the piece (``tasks_music_xl.infill_ids``);
- harmonize: the highest voice given bar by bar, the others written under it (``tasks_music_xl.harmonize_ids``);
  only for pieces with at least two voices (tracks or parts): others draw again among the tasks that remain.

The layouts are those the pipeline samples with (``tasks_music_xl.py``)."""

from __future__ import annotations

import numpy as np

from ..models.music_xl import encoding, tasks_music_xl
from ..models.music_xl.configuration_music_xl import TASKS

# The weight of a task named without one: half continuation, as tasks_report.py measured it (BENCHMARKS.md); fill-in-
# the-middle code models mix 50-90% FIM examples at little cost to left-to-right quality.
DEFAULT_WEIGHTS = {"continue": 2.0, "infill": 1.0, "harmonize": 1.0}


def parse_tasks(text: str) -> dict[str, float]:
    """'continue,infill,harmonize' (``DEFAULT_WEIGHTS``) or 'continue:1,infill:1' -> {task: weight}, the weights
    summing to 1; refuses unknown tasks and weights that are not positive and finite."""
    weights = {}
    for item in filter(None, (part.strip() for part in str(text).split(","))):
        name, _, weight = item.partition(":")
        name = name.strip()
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
        try:
            value = float(weight) if weight.strip() else DEFAULT_WEIGHTS[name]
        except ValueError:
            raise ValueError(f"the weight of task {name!r} must be a number, got {weight!r}") from None
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"the weight of task {name!r} must be a finite number > 0, got {weight!r}")
        weights[name] = weights.get(name, 0.0) + value
    if not weights:
        raise ValueError("--tasks names no task; e.g. continue,infill,harmonize")
    total = sum(weights.values())
    return {name: value / total for name, value in weights.items()}


def piece_notes(ids: np.ndarray, voices: np.ndarray | None) -> encoding.Notes:
    """The notes of a corpus piece, each with its voice (the ``voices`` column: one per token, a note's on its
    pitch token); without voices every note is voice 0."""
    ids = np.asarray(ids, dtype=np.int64)
    notes = encoding.ids_to_notes(ids)
    is_note = (ids >= encoding.NOTE_OFFSET) & (ids < encoding.NOTE_OFFSET + encoding.NUM_PITCHES)
    is_duration = (ids >= encoding.DURATION_OFFSET) & (ids < encoding.DURATION_OFFSET + encoding.NUM_DURATIONS)
    note_at = np.flatnonzero(is_note & np.r_[is_duration[1:], False])  # pitch tokens that pair
    durations = ids[note_at + 1] - encoding.DURATION_OFFSET
    voice = np.zeros(len(note_at), np.int64) if voices is None else np.asarray(voices, np.int64)[note_at]
    notes.voice = voice[durations > 0]  # ids_to_notes drops d0 notes: drop their voices too
    return notes


def draw_infill_span(notes: encoding.Notes, generator: np.random.Generator) -> tuple[int, int] | None:
    """(first bar, last bar) of a span to fill, or None when the piece has fewer than two bars or the draw
    crosses a meter change."""
    bars = tasks_music_xl.piece_bars(notes)
    if bars < 2:
        return None
    length = int(generator.integers(1, min(tasks_music_xl.MAX_INFILL_BARS, bars - 1) + 1))
    first = int(generator.integers(0, bars - length + 1))
    try:
        tasks_music_xl.span_times(notes, first, first + length - 1)
    except ValueError:  # a meter change inside the span
        return None
    return first, first + length - 1


def task_example(
    ids: np.ndarray, voices: np.ndarray | None, weights: dict[str, float], generator: np.random.Generator
) -> tuple[np.ndarray, str]:
    """(example ids, task) of one piece: a task drawn by ``weights`` among those the piece allows."""
    names = list(weights)
    allowed = dict(weights)
    notes = None
    while allowed:
        probabilities = np.array([allowed.get(name, 0.0) for name in names])
        task = names[int(generator.choice(len(names), p=probabilities / probabilities.sum()))]
        if task == "continue":
            return np.asarray(ids, dtype=np.int64), task
        notes = piece_notes(ids, voices) if notes is None else notes
        if task == "infill":
            span = draw_infill_span(notes, generator)
            if span is not None:
                return tasks_music_xl.infill_ids(notes, *span), task
        else:
            melody = tasks_music_xl.melody_voice(notes)
            if melody is not None:
                return tasks_music_xl.harmonize_ids(notes, notes.voice == melody), task
        del allowed[task]
    return np.asarray(ids, dtype=np.int64), "continue"  # no task the weights name fits: the piece as it is
