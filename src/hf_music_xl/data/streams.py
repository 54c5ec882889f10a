"""Training examples as TransformerXL and musicautobot feed them: every batch row continues its own stream.

Each epoch, the training pieces are shuffled (from the seed and the epoch) and dealt out, whole, to ``rows x
processes`` streams: the next piece always goes to the shortest stream, cycling through the shuffled order
again when a stream still needs more, until every stream holds ``steps x step_tokens + 1`` tokens (the rest of
its last piece waits for another epoch). Step ``s`` of row ``r`` is tokens ``[s * step_tokens, (s + 1) *
step_tokens)`` of that row's stream, and its targets are the same tokens shifted by one (``shift_labels``), so
the last token of a step learns the first token of the next. The Trainer carries each row's memory from one step
to the next (``training.MusicXLTrainer``), so every token after the first step of an epoch trains with a full
memory, and positions in a piece count from its own ``xxbos`` in training as in generation.

Each piece, each time it enters a stream, is transposed by a shift drawn within its safe range (probability
``transpose_p``, default -6..+5 semitones) from a generator seeded by (seed, epoch, stream, piece in stream): the
examples are a function of (seed, epoch, index) only, so a resumed run sees exactly the same data.

Indices are laid out for the Trainer's sequential sampler, which, under DDP, hands process ``p`` the batches
``p, p + P, p + 2P, ...``: item ``i`` is row ``i % rows`` of step ``i // (rows x P)`` of process ``(i // rows) % P``.
So each process has its own ``rows`` streams, and with gradient accumulation micro-batch ``k + 1`` continues
micro-batch ``k``. The number of steps per epoch is fixed when the dataset is made (from the corpus size), so
the Trainer's epoch length does not change from one shuffle to the next.
"""

from __future__ import annotations

import numpy as np
import torch

from ..models.music_xl import encoding


class PieceStreams(torch.utils.data.Dataset):
    """Contiguous streams of whole pieces for ``rows`` batch rows on each of ``processes`` processes.

    Args:
        pieces: token id sequences (each ``xxbos xxpad ... xxeos``), e.g. a corpus split's ``input_ids``.
        rows: batch rows per process (per-device batch size).
        step_tokens: tokens per row per step (``n_segments * segment_len``).
        processes: data-parallel processes (DDP world size).
        seed: with the epoch, fixes the order of pieces and every transposition.
        augment: transpose pieces as they enter a stream.
        transpose_p, transpose_range: probability of a shift and its bounds in semitones, narrowed per piece to
            what stays in 0..127.
    """

    def __init__(
        self,
        pieces,
        rows: int,
        step_tokens: int,
        processes: int = 1,
        seed: int = 0,
        augment: bool = True,
        transpose_p: float = 0.5,
        transpose_range: tuple[int, int] = (-6, 5),
    ):
        self.pieces = [np.asarray(ids, dtype=np.int64) for ids in pieces]
        if not self.pieces:
            raise ValueError("no training pieces to stream")
        self.rows, self.processes, self.step_tokens = rows, processes, step_tokens
        self.seed, self.augment, self.transpose_p, self.transpose_range = seed, augment, transpose_p, transpose_range
        self.plain_from_step = None  # from this step of the run on (epoch * steps + step), no transposition
        total = sum(len(ids) for ids in self.pieces)
        self.steps = (total // self.streams - 1) // step_tokens  # steps per epoch: each stream's share of the corpus
        if self.steps < 1:
            raise ValueError(
                f"the corpus ({total:,} tokens) is too small for {self.streams} streams of "
                f"{step_tokens} tokens a step: use fewer rows or shorter steps"
            )
        self.epoch = None
        self.set_epoch(0)

    @property
    def streams(self) -> int:
        return self.rows * self.processes

    def __len__(self) -> int:
        return self.steps * self.streams

    def set_epoch(self, epoch: int) -> None:
        """Deal the pieces anew for ``epoch`` (the Trainer calls this through its data loader)."""
        if epoch == self.epoch:
            return
        self.epoch = epoch
        self.tokens, self.shifts = self.deal(epoch)

    def deal(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(streams, length) token ids and (streams, length) transposition of each token, for ``epoch``."""
        length = self.steps * self.step_tokens + 1
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.pieces))
        filled = [[] for _ in range(self.streams)]  # piece indices per stream
        sizes = np.zeros(self.streams, dtype=np.int64)
        cursor, cycle = 0, 0
        while sizes.min() < length:
            if cursor == len(order):  # every piece dealt once: go round again in a new order
                cycle, cursor = cycle + 1, 0
                order = np.random.default_rng([self.seed, epoch, cycle]).permutation(len(self.pieces))
            stream = int(sizes.argmin())
            filled[stream].append(int(order[cursor]))
            sizes[stream] += len(self.pieces[order[cursor]])
            cursor += 1
        tokens = np.empty((self.streams, length), dtype=np.int64)
        shifts = np.zeros((self.streams, length), dtype=np.int8)
        for stream, indices in enumerate(filled):
            ids = np.concatenate([self.pieces[index] for index in indices])[:length]
            per_piece = [self.draw_shift(self.pieces[index], epoch, stream, k) for k, index in enumerate(indices)]
            tokens[stream] = ids
            shifts[stream] = np.repeat(per_piece, [len(self.pieces[index]) for index in indices])[:length]
        return tokens, shifts

    def draw_shift(self, ids: np.ndarray, epoch: int, stream: int, place: int) -> int:
        """The transposition of one piece entering a stream: 0, or uniform in its safe range."""
        if not self.augment:
            return 0
        generator = np.random.default_rng([self.seed, epoch, stream, place])
        if generator.random() >= self.transpose_p:
            return 0
        low, high = encoding.transposition_range(ids)
        low, high = max(low, self.transpose_range[0]), min(high, self.transpose_range[1])
        return int(generator.integers(low, high + 1)) if low <= high else 0

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        step, process, row = index // self.streams, index // self.rows % self.processes, index % self.rows
        stream = process * self.rows + row
        window = slice(step * self.step_tokens, (step + 1) * self.step_tokens + 1)
        ids, shifts = self.tokens[stream, window], self.shifts[stream, window]
        if self.plain_from_step is None or self.epoch * self.steps + step < self.plain_from_step:
            is_note = (ids >= encoding.NOTE_OFFSET) & (ids < encoding.NOTE_OFFSET + encoding.NUM_PITCHES)
            ids = np.where(is_note, ids + shifts, ids)
        return {"input_ids": ids[:-1], "labels": ids[:-1], "shift_labels": ids[1:]}
