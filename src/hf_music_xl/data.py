"""Training examples from a corpus: windows of ``n_segments * segment_len`` tokens, augmented on the fly.

Training rows are drawn fresh every time (``dataset.with_transform(TrainTransform(...))``): a ``map`` would
write one augmented copy to disk and freeze the randomness. Each time a piece is drawn it is

- transposed by a random shift within its safe range (default -6..+5 semitones, with probability
  ``transpose_p``; the reference did the same), and
- cut to a random window that starts on a bar line at the first note of a chord, so the beat positions the
  model computes from the window (it counts from the window's first token) still fall on the right beats.

Pieces shorter than the window are padded with xxpad, labelled -100. Evaluation uses ``eval_windows``: fixed,
non-overlapping chunks that cover every validation token once, so eval NLL is comparable from run to run.
Randomness comes from torch's global generator, which the Trainer seeds (and seeds per dataloader worker).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset

from . import encoding

IGNORE_INDEX = -100


def bar_starts(ids: np.ndarray, steps_per_bar: int = encoding.STEPS_PER_BAR) -> np.ndarray:
    """Indices where a window may start: 0, and every first note of a chord that sounds on a bar line."""
    ids = np.asarray(ids, dtype=np.int64)
    positions = encoding.beat_positions(ids)
    is_note = (ids >= encoding.NOTE_OFFSET) & (ids < encoding.NOTE_OFFSET + encoding.NUM_PITCHES)
    after_wait = np.r_[False, False, ids[:-2] == encoding.SEP_ID]  # the token after "xxsep d.."
    opens_piece = np.r_[False, False, ids[:-2] == encoding.BOS_ID]  # the first note right after "xxbos xxpad"
    starts = np.flatnonzero(is_note & (after_wait | opens_piece) & (positions % steps_per_bar == 0))
    return np.r_[0, starts[starts > 0]]


def pad_window(ids: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, labels) of exactly ``length`` tokens: padded with xxpad, whose labels are -100."""
    ids = np.asarray(ids[:length], dtype=np.int64)
    input_ids = np.full(length, encoding.PAD_ID, dtype=np.int64)
    labels = np.full(length, IGNORE_INDEX, dtype=np.int64)
    input_ids[: len(ids)] = ids
    labels[: len(ids)] = ids
    return input_ids, labels


@dataclass
class TrainTransform:
    """Batch transform for ``Dataset.with_transform``: corpus rows -> random augmented windows.

    Args:
        window_len: tokens per example, ``n_segments * config.segment_len``.
        augment: transpose at random; False gives plain random windows (the reference trained its last epochs so).
        transpose_p: probability that a drawn piece is transposed.
        transpose_range: (lowest, highest) shift in semitones, narrowed per piece to what stays in 0..127.
        min_fill: a window holds at least this share of real tokens when the piece allows it, so piece
            endings (and xxeos) are seen about as often as beginnings.
    """

    window_len: int
    augment: bool = True
    transpose_p: float = 0.5
    transpose_range: tuple[int, int] = (-6, 5)
    min_fill: float = 0.5
    steps_per_bar: int = encoding.STEPS_PER_BAR

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        windows = [self.window(np.asarray(ids, dtype=np.int64)) for ids in batch["input_ids"]]
        return {"input_ids": [w[0] for w in windows], "labels": [w[1] for w in windows]}

    def window(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.augment and torch.rand(()).item() < self.transpose_p:
            ids = encoding.transpose_ids(ids, self.random_shift(ids))
        starts = bar_starts(ids, self.steps_per_bar)
        last_start = max(0, len(ids) - int(self.window_len * self.min_fill))
        starts = starts[starts <= last_start]  # never empty: 0 is always a start
        start = int(starts[torch.randint(len(starts), ()).item()])
        return pad_window(ids[start : start + self.window_len], self.window_len)

    def random_shift(self, ids: np.ndarray) -> int:
        low, high = encoding.transposition_range(ids)
        low, high = max(low, self.transpose_range[0]), min(high, self.transpose_range[1])
        return int(torch.randint(low, high + 1, ()).item()) if low <= high else 0


def eval_windows(ids, window_len: int, steps_per_bar: int = encoding.STEPS_PER_BAR) -> list[tuple]:
    """Consecutive chunks covering ``ids`` once, each cut at the last bar start that fits (or at the window
    length if none does), padded to ``window_len``. Each chunk is scored without memory of the one before."""
    ids = np.asarray(ids, dtype=np.int64)
    starts = bar_starts(ids, steps_per_bar)
    chunks, start = [], 0
    while start < len(ids):
        limit = start + window_len
        if limit >= len(ids):
            end = len(ids)
        else:
            inside = starts[(starts > start) & (starts <= limit)]
            end = int(inside[-1]) if len(inside) else limit - (limit - start) % 2  # keep note/duration pairs
        chunks.append(pad_window(ids[start:end], window_len))
        start = end
    return chunks


def eval_dataset(split: Dataset, window_len: int, steps_per_bar: int = encoding.STEPS_PER_BAR) -> Dataset:
    """The fixed evaluation windows of a split, in memory (nothing random, so a map is right here)."""

    def to_windows(batch):
        chunks = [chunk for ids in batch["input_ids"] for chunk in eval_windows(ids, window_len, steps_per_bar)]
        return {"input_ids": [c[0] for c in chunks], "labels": [c[1] for c in chunks]}

    return split.map(to_windows, batched=True, remove_columns=split.column_names, keep_in_memory=True)


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack equal-length windows into LongTensors."""
    return {key: torch.as_tensor(np.stack([np.asarray(e[key]) for e in examples]), dtype=torch.long) for key in examples[0]}
