"""Training examples from a corpus: random windows for training (the alternative to ``streams``).

Window training (``hf-music-xl train --train-mode windows``) draws rows fresh every time
(``dataset.with_transform(TrainTransform(...))``): a ``map`` would write one augmented copy to disk and freeze the
randomness. Each time a piece is drawn it is

- transposed by a random shift within its safe range (default -6..+5 semitones, with probability
  ``transpose_p``; the reference did the same), and
- cut to a random window that starts on a bar line at the first note of a chord; its beat positions are those of
  the whole piece (``beat_positions``), so a bar index means "bar of the piece" as in generation.

Pieces shorter than the window are padded with xxpad, labelled -100.

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

from ..models.music_xl import encoding
from .pieces import IGNORE_INDEX


def bar_starts(ids: np.ndarray) -> np.ndarray:
    """Indices where a window may start: 0, and every first note of a chord that sounds on a bar line (bars as
    the piece's time signatures lay them out)."""
    ids = np.asarray(ids, dtype=np.int64)
    _, step_in_bar, _, _ = encoding.token_bars(ids)
    is_note = (ids >= encoding.NOTE_OFFSET) & (ids < encoding.NOTE_OFFSET + encoding.NUM_PITCHES)
    after_wait = np.r_[False, False, ids[:-2] == encoding.SEP_ID]  # the token after "xxsep d.."
    after_meter = np.r_[False, encoding.is_meter(ids[:-1])]  # the first note after a time signature
    opens_piece = np.r_[False, False, ids[:-2] == encoding.BOS_ID]  # the first note right after "xxbos xxpad"
    starts = np.flatnonzero(is_note & (after_wait | after_meter | opens_piece) & (step_in_bar == 0))
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
        meter: the model's position scheme is "meter" (else "grid"): which position features windows carry.
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
    meter: bool = True
    seed: int | None = None
    epoch: int = 0

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        pieces = [np.asarray(ids, dtype=np.int64) for ids in batch["input_ids"]]
        windows = [self.window(ids, self.generator_for(ids)) for ids in pieces]
        return {
            "input_ids": [w[0] for w in windows],
            "labels": [w[1] for w in windows],
            "beat_positions": [w[2] for w in windows],
        }

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def generator_for(self, ids: np.ndarray) -> torch.Generator | None:
        """None (torch's global generator) without a seed, else a generator seeded by (seed, epoch, tokens)."""
        if self.seed is None:
            return None
        digest = hashlib.blake2b(
            np.ascontiguousarray(ids, dtype=np.int64).tobytes(), digest_size=8, key=f"{self.seed}:{self.epoch}".encode()
        )
        return torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") >> 1)

    def window(self, ids: np.ndarray, generator: torch.Generator | None = None) -> tuple[np.ndarray, ...]:
        """(input_ids, labels, beat_positions) of one random window of the piece ``ids``."""
        if self.augment and torch.rand((), generator=generator).item() < self.transpose_p:
            ids = encoding.transpose_ids(ids, self.random_shift(ids, generator))
        starts = bar_starts(ids)
        last_start = max(0, len(ids) - int(self.window_len * self.min_fill))
        starts = starts[starts <= last_start]  # never empty: 0 is always a start
        start = int(starts[torch.randint(len(starts), (), generator=generator).item()])
        input_ids, labels = pad_window(ids[start : start + self.window_len], self.window_len)
        features = encoding.position_features(ids, self.meter)[start : start + self.window_len]  # the piece's own
        positions = np.zeros((self.window_len, 3), dtype=np.int64)
        positions[: len(features)] = features
        return input_ids, labels, positions

    def random_shift(self, ids: np.ndarray, generator: torch.Generator | None = None) -> int:
        low, high = encoding.transposition_range(ids)
        low, high = max(low, self.transpose_range[0]), min(high, self.transpose_range[1])
        return int(torch.randint(low, high + 1, (), generator=generator).item()) if low <= high else 0
