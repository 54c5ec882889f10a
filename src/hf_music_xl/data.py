"""Training examples from a corpus: windows of ``n_segments * segment_len`` tokens, augmented on the fly.

Training rows are drawn fresh every time (``dataset.with_transform(TrainTransform(...))``): a ``map`` would
write one augmented copy to disk and freeze the randomness. Each time a piece is drawn it is

- transposed by a random shift within its safe range (default -6..+5 semitones, with probability
  ``transpose_p``; the reference did the same), and
- cut to a random window that starts on a bar line at the first note of a chord, so the beat positions the
  model computes from the window (it counts from the window's first token) still fall on the right beats.

Pieces shorter than the window are padded with xxpad, labelled -100. Evaluation uses ``eval_windows``: fixed,
non-overlapping chunks that cover every validation token once, so eval NLL is comparable from run to run.

Randomness: by default the draws come from torch's global generator. Training sets ``seed`` (and ``epoch``, each
epoch): then a piece's window and shift are a function of (seed, epoch, the piece's tokens) only, drawn from a
generator of their own. That keeps resuming exact: the Trainer fetches batches ahead of the step (accelerate
prefetches one) and, after a mid-epoch resume, fetches the first batch before it restores the global RNG, so draws
from the global generator would land in a different order than in an uninterrupted run. It also makes the
windows independent of the number of dataloader workers and processes.
"""

from __future__ import annotations

import hashlib
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
        seed: None draws from torch's global generator; an int makes each draw a function of (seed, ``epoch``,
            the piece's tokens), as training does (see the module docstring).
        epoch: set at the start of every epoch when ``seed`` is set (training's ``EpochSeed`` callback).
    """

    window_len: int
    augment: bool = True
    transpose_p: float = 0.5
    transpose_range: tuple[int, int] = (-6, 5)
    min_fill: float = 0.5
    steps_per_bar: int = encoding.STEPS_PER_BAR
    seed: int | None = None
    epoch: int = 0

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        pieces = [np.asarray(ids, dtype=np.int64) for ids in batch["input_ids"]]
        windows = [self.window(ids, self.generator_for(ids)) for ids in pieces]
        return {"input_ids": [w[0] for w in windows], "labels": [w[1] for w in windows]}

    def generator_for(self, ids: np.ndarray) -> torch.Generator | None:
        """None (torch's global generator) without a seed, else a generator seeded by (seed, epoch, tokens)."""
        if self.seed is None:
            return None
        digest = hashlib.blake2b(np.ascontiguousarray(ids, dtype=np.int64).tobytes(), digest_size=8,
                                 key=f"{self.seed}:{self.epoch}".encode())  # fmt: skip
        return torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") >> 1)

    def window(self, ids: np.ndarray, generator: torch.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        if self.augment and torch.rand((), generator=generator).item() < self.transpose_p:
            ids = encoding.transpose_ids(ids, self.random_shift(ids, generator))
        starts = bar_starts(ids, self.steps_per_bar)
        last_start = max(0, len(ids) - int(self.window_len * self.min_fill))
        starts = starts[starts <= last_start]  # never empty: 0 is always a start
        start = int(starts[torch.randint(len(starts), (), generator=generator).item()])
        return pad_window(ids[start : start + self.window_len], self.window_len)

    def random_shift(self, ids: np.ndarray, generator: torch.Generator | None = None) -> int:
        low, high = encoding.transposition_range(ids)
        low, high = max(low, self.transpose_range[0]), min(high, self.transpose_range[1])
        return int(torch.randint(low, high + 1, (), generator=generator).item()) if low <= high else 0


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
