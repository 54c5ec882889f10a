"""The note table and the meters: where a piece's notes and bars fall on the grid, in numpy.

``Notes`` holds a piece's notes (onset, pitch, duration in grid steps, and the voice each came from) and its
meters; ``Bars`` says where its bars and beats fall (time signatures take effect where they stand); the time
signature tokens are looked up here. ``encoding.py`` (MIDI -> ids) and ``decoding_music_xl.py`` (ids -> MIDI)
both build on this file; ``encoding`` re-exports everything here.

This file is copied next to saved weights for ``trust_remote_code`` loading, with its siblings.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from .vocabulary_music_xl import (
    DEFAULT_METER,
    METER_OFFSET,
    METERS,
    TASK_OFFSET,
    TASK_TOKENS,
)

STEPS_PER_BEAT = 4  # grid steps per quarter note (16th notes)
STEPS_PER_BAR = 16  # 4/4 at 16th notes


def default_meters() -> np.ndarray:
    return np.array([[0, *DEFAULT_METER]], dtype=np.int64)


@dataclass
class Notes:
    """Notes on the grid, sorted by onset then pitch (highest first); all arrays have one entry per note. The
    meters say where the bars fall: one row per time signature, (time in grid steps, numerator, denominator), in
    time order, the first at 0 (4/4 when the source has none)."""

    onset: np.ndarray  # int64 [n], grid steps
    pitch: np.ndarray  # int64 [n], 0..127
    duration: np.ndarray  # int64 [n], grid steps, 1..MAX_DURATION
    meters: np.ndarray = field(default_factory=default_meters)  # int64 [k, 3]
    voice: np.ndarray | None = None  # int64 [n], the non-drum track each note came from (read from MIDI), or None

    def __len__(self) -> int:
        return len(self.onset)

    def select(self, keep: np.ndarray) -> Notes:
        """The notes where ``keep`` is True, with the same meters."""
        voice = None if self.voice is None else self.voice[keep]
        return Notes(self.onset[keep], self.pitch[keep], self.duration[keep], self.meters, voice)

    def bars(self, steps_per_beat: int = STEPS_PER_BEAT) -> Bars:
        return Bars(self.meters, steps_per_beat)


# ----------------------------------------------------------------------------------------------------------
# Meters and bars


def bar_steps(num: int, den: int, steps_per_beat: int = STEPS_PER_BEAT) -> int:
    """Grid steps in a bar of num/den (4/4 at 16th notes: 16; 6/8: 12)."""
    return max(1, round(num * 4 * steps_per_beat / den))


def beat_steps(num: int, den: int, steps_per_beat: int = STEPS_PER_BEAT) -> int:
    """Grid steps in a beat: the denominator's note, or three of them in compound meters (6/8, 9/8, 12/8: a dotted
    quarter), so that 3/4 (three beats of 4 steps) and 6/8 (two of 6) differ although their bars do not."""
    compound = den >= 8 and num > 3 and num % 3 == 0
    return max(1, round((3 if compound else 1) * 4 * steps_per_beat / den))


@functools.lru_cache  # bare, not called: remote code runs nothing at import (it keeps the last 128 meters)
def meter_token(num: int, den: int, steps_per_beat: int = STEPS_PER_BEAT) -> int:
    """The time signature token of num/den. A meter outside ``METERS`` (17/8, 7/32, ...) gets the token of the same
    bar length, from the finest denominator that has one (17/8 is 34 steps: 17/8 does not exist, but no
    representation of 34 steps does either, so the nearest length wins: 16/8 and 9/4 tie, the first is taken).
    Cached: a file may hold a million time signatures, and each costs a lookup, not a pass over the table."""
    if (num, den) in METERS:
        return METER_OFFSET + METERS.index((num, den))
    target = bar_steps(num, den, steps_per_beat)
    lengths = meter_bar_lengths(steps_per_beat)
    exact = np.flatnonzero(lengths == target)
    if len(exact):  # the finest denominator first: METERS runs from 1 to 16, so take the last
        return METER_OFFSET + int(exact[-1])
    return METER_OFFSET + int(np.argmin(np.abs(lengths - target)))


@functools.lru_cache
def meter_bar_lengths(steps_per_beat: int) -> np.ndarray:
    """Grid steps in a bar of each meter of ``METERS``, in its order (read-only: the array is shared)."""
    lengths = np.array([bar_steps(n, d, steps_per_beat) for n, d in METERS])
    lengths.flags.writeable = False
    return lengths


def token_meter(token_id: int) -> tuple[int, int]:
    """(numerator, denominator) of a time signature token."""
    return METERS[int(token_id) - METER_OFFSET]


def is_meter(ids: np.ndarray) -> np.ndarray:
    return (ids >= METER_OFFSET) & (ids < METER_OFFSET + len(METERS))


def is_task(ids: np.ndarray) -> np.ndarray:
    return (ids >= TASK_OFFSET) & (ids < TASK_OFFSET + len(TASK_TOKENS))


@dataclass
class Bars:
    """Where the bars of a piece fall, from its meters (time in grid steps, numerator, denominator; the first at
    0). A meter change starts a new bar where it stands: bar lines count on from it (so a pickup written as a short
    bar of its own moves nothing after it), and a change that is not on a bar line of the old meter ends that bar
    short."""

    meters: np.ndarray  # int64 [k, 3]
    steps_per_beat: int = STEPS_PER_BEAT

    def __post_init__(self):
        meters = np.asarray(self.meters, dtype=np.int64).reshape(-1, 3)
        self.times = meters[:, 0]
        self.lengths = np.array([bar_steps(n, d, self.steps_per_beat) for _, n, d in meters], dtype=np.int64)
        self.beats = np.array([beat_steps(n, d, self.steps_per_beat) for _, n, d in meters], dtype=np.int64)
        spans = np.diff(self.times)  # bars of each meter but the last: ceil(span / length)
        self.first_bar = np.r_[0, np.cumsum(-(-spans // self.lengths[:-1]))].astype(np.int64)

    def locate(self, times) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bar index, step within the bar, steps in that bar) of each time."""
        times = np.asarray(times, dtype=np.int64)
        k = np.maximum(np.searchsorted(self.times, times, side="right") - 1, 0)
        since = times - self.times[k]
        return self.first_bar[k] + since // self.lengths[k], since % self.lengths[k], self.lengths[k]

    def bar_time(self, bar: int) -> int:
        """Grid step at which bar ``bar`` starts."""
        k = max(int(np.searchsorted(self.first_bar, bar, side="right")) - 1, 0)
        return int(self.times[k] + (bar - self.first_bar[k]) * self.lengths[k])

    def bar_lines(self, end: int) -> np.ndarray:
        """Times of every bar line from 0 up to ``end`` (included)."""
        last_bar = int(self.locate([end])[0][0])
        return np.array([self.bar_time(bar) for bar in range(last_bar + 1)], dtype=np.int64)

    def beat_of(self, times) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bar, beat within the bar, step within the beat) of each time: the model's position features."""
        bar, step, _ = self.locate(times)
        k = np.maximum(np.searchsorted(self.times, np.asarray(times, dtype=np.int64), side="right") - 1, 0)
        return bar, step // self.beats[k], step % self.beats[k]


def meter_table(changes, collapse: bool = True) -> np.ndarray:
    """(k, 3) meters from (time, num, den) changes in time order: 4/4 from 0 until the first, a change replaced by a
    later one at the same time, and with ``collapse`` a meter equal to the one before dropped (without, it stays:
    as a token, it starts a bar where it stands)."""
    rows = [(0, *DEFAULT_METER)]
    for time, num, den in changes:
        if rows[-1][0] == time:
            rows[-1] = (time, num, den)
        elif rows[-1][1:] != (num, den) or not collapse:
            rows.append((time, num, den))
    if collapse:
        rows = [rows[0]] + [row for before, row in zip(rows, rows[1:]) if row[1:] != before[1:]]
    return np.array(rows, dtype=np.int64)
