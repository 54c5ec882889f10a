"""Training examples as TransformerXL and musicautobot feed them: every batch row continues its own stream.

Each epoch, the training pieces are shuffled (from the seed and the epoch) and dealt out, whole, to ``rows x
processes`` streams: process ``p`` of ``P`` takes the pieces at places ``p, p + P, p + 2P, ...`` of the shuffled
order and deals each to the shortest of its own ``rows`` streams, cycling through a new shuffled order when a
stream still needs more, until every stream holds ``steps x step_tokens + 1`` tokens (the rest of its last piece
waits for another epoch). A process deals only when it is first asked for one of its steps, so it never deals, or
reads, another process's pieces. Step ``s`` of row ``r`` is tokens ``[s * step_tokens, (s + 1) *
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

With ``tasks`` (``hf-music-xl train --tasks``), each piece entering a stream becomes the example of a task drawn
from a generator seeded by (seed, epoch, cycle, place in the deal) (``task_examples.py``); the deal then reads
each of its pieces once an epoch to learn its example's length (the examples themselves are rebuilt when a window
needs them). Without tasks (or ``continue`` alone) the lengths come from the Arrow file's offsets.

Nothing holds the corpus's tokens: the pieces stay in the split's memory-mapped Arrow file (``ArrowPieces``), an
epoch's deal is each stream's list of piece indices (O(number of pieces) small integers), and a step reads only
the few pieces its window overlaps. Under DDP a process is handed only its own streams' indices and deals only
its own streams, so it reads only their pieces, with tasks or without.
"""

from __future__ import annotations

import heapq

import numpy as np
import pyarrow.compute as pc
import torch

from ..models.music_xl import encoding
from .task_examples import task_example


class ArrowPieces:
    """The token ids of a ``datasets.Dataset`` column, piece by piece, as views into its memory-mapped Arrow file:
    only the piece offsets (and the lengths) are read into memory."""

    def __init__(self, split, column: str = "input_ids"):
        self.values, self.offsets, self.chunk_of, self.first_row = [], [], [], [0]
        chunked = split.data.column(column)  # the whole table, as a select() leaves it; _indices maps rows to it
        for chunk in chunked.chunks:
            self.values.append(chunk.values.to_numpy(zero_copy_only=False))  # a view for int16 without nulls
            self.offsets.append(chunk.offsets.to_numpy())
            self.first_row.append(self.first_row[-1] + len(chunk))
        self.first_row = np.asarray(self.first_row)
        indices = split._indices  # noqa: SLF001 - the rows of a select()ed split, if any
        self.rows = indices.column(0).to_numpy().astype(np.int64) if indices is not None else None
        lengths = pc.list_value_length(chunked).to_numpy(zero_copy_only=False).astype(np.int64)
        self.lengths = lengths[self.rows] if self.rows is not None else lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> np.ndarray:
        row = int(self.rows[index]) if self.rows is not None else int(index)
        chunk = int(np.searchsorted(self.first_row, row, side="right")) - 1
        offsets, local = self.offsets[chunk], row - self.first_row[chunk]
        return self.values[chunk][offsets[local] : offsets[local + 1]]


class ListPieces:
    """Token id sequences already in memory (tests, small inputs), with the interface of ``ArrowPieces``."""

    def __init__(self, pieces):
        self.pieces = [np.asarray(ids) for ids in pieces]
        self.lengths = np.array([len(ids) for ids in self.pieces], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.pieces)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.pieces[index]


class PieceStreams(torch.utils.data.Dataset):
    """Contiguous streams of whole pieces for ``rows`` batch rows on each of ``processes`` processes.

    Args:
        pieces: a corpus split (``datasets.Dataset`` with ``input_ids``, read from its Arrow file as needed) or
            token id sequences (each ``xxbos xxpad ... xxeos``).
        rows: batch rows per process (per-device batch size).
        step_tokens: tokens per row per step (``n_segments * segment_len``).
        processes: data-parallel processes (DDP world size).
        seed: with the epoch, fixes the order of pieces and every transposition.
        augment: transpose pieces as they enter a stream.
        transpose_p, transpose_range: probability of a shift and its bounds in semitones, narrowed per piece to
            what stays in 0..127.
        tasks: {task: weight} (``task_examples.parse_tasks``); None or continuation alone: the pieces as they are.
        voices: with ``pieces`` given as sequences, each one's ``voices`` (a split brings its own column).
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
        tasks: dict[str, float] | None = None,
        voices=None,
    ):
        is_split = hasattr(pieces, "data") and hasattr(pieces, "_indices")
        self.pieces = ArrowPieces(pieces) if is_split else ListPieces(pieces)
        self.tasks = tasks if tasks and set(tasks) != {"continue"} else None
        self.voices = None
        if self.tasks and is_split and "voices" in pieces.column_names:
            self.voices = ArrowPieces(pieces, "voices")
        elif self.tasks and voices is not None:
            self.voices = ListPieces(voices)
        if not len(self.pieces):
            raise ValueError("no training pieces to stream")
        self.rows, self.processes, self.step_tokens = rows, processes, step_tokens
        self.seed, self.augment, self.transpose_p, self.transpose_range = seed, augment, transpose_p, transpose_range
        self.plain_from_step = None  # from this step of the run on (epoch * steps + step), no transposition
        total = int(self.pieces.lengths.sum())
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
        """Deal the pieces anew for ``epoch`` (the Trainer calls this through its data loader); each process's
        streams are dealt when they are first asked for (``stream_deal``)."""
        if epoch == self.epoch:
            return
        self.epoch = epoch
        self.deals = {}  # process -> its streams' (pieces, ends, example keys) this epoch
        self.shift_cache = [{} for _ in range(self.streams)]  # (place in stream) -> shift, of the pieces in use
        self.example_cache = [{} for _ in range(self.streams)]  # (place in stream) -> task example, likewise

    def stream_deal(self, stream: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
        """The indices of ``stream``'s pieces in order, where each ends in the stream (tokens) and the key of each
        one's task example; its process's streams are dealt on first use."""
        process, row = divmod(stream, self.rows)
        if process not in self.deals:
            self.deals[process] = self.deal(self.epoch, process)
        dealt, ends, keys = self.deals[process]
        return dealt[row], ends[row], keys[row]

    @property
    def dealt(self) -> list[np.ndarray]:
        """Every stream's piece indices this epoch (all processes' streams: for inspection)."""
        return [self.stream_deal(stream)[0] for stream in range(self.streams)]

    def deal(self, epoch: int, process: int) -> tuple[list[np.ndarray], list[np.ndarray], list[list[tuple[int, int]]]]:
        """For each of ``process``'s streams, the indices of its pieces in order, where each ends in the stream
        (tokens) and the key of each one's task example ((cycle, place in the deal), empty without tasks), for
        ``epoch``: every stream at least ``steps x step_tokens + 1`` long. The process takes every
        ``processes``-th place of the shuffled orders, from place ``process`` on, and reads only those pieces."""
        length = self.steps * self.step_tokens + 1
        lengths = self.pieces.lengths
        keys = [[] for _ in range(self.rows)]
        example_lengths = [[] for _ in range(self.rows)]
        filled = [[] for _ in range(self.rows)]  # piece indices per stream
        shortest = [(0, row) for row in range(self.rows)]  # (size, row): ties go to the lowest row
        place, cycle = process, 0  # place: counted through the cycles' orders one after another
        order = np.random.default_rng([self.seed, epoch]).permutation(len(lengths))
        while shortest[0][0] < length:
            if place // len(order) != cycle:  # past this order's end: a new order for the cycle the place is in
                cycle = place // len(order)
                order = np.random.default_rng([self.seed, epoch, cycle]).permutation(len(lengths))
            cursor = place % len(order)
            size, row = shortest[0]
            piece = int(order[cursor])
            filled[row].append(piece)
            piece_length = int(lengths[piece])
            if self.tasks:
                keys[row].append((cycle, cursor))
                piece_length = len(self.example(piece, epoch, cycle, cursor))
                example_lengths[row].append(piece_length)
            heapq.heapreplace(shortest, (size + piece_length, row))
            place += self.processes
        dealt = [np.asarray(indices, dtype=np.int64) for indices in filled]
        if self.tasks:
            return dealt, [np.cumsum(np.asarray(sizes, dtype=np.int64)) for sizes in example_lengths], keys
        return dealt, [np.cumsum(lengths[indices]) for indices in dealt], keys

    def example(self, piece: int, epoch: int, cycle: int, cursor: int) -> np.ndarray:
        """The task example of ``piece`` at place ``cursor`` of cycle ``cycle`` of ``epoch``'s deal."""
        generator = np.random.default_rng([self.seed, epoch, cycle, cursor, 1])  # 1: the tasks' own stream
        voices = self.voices[piece] if self.voices is not None else None
        return task_example(self.pieces[piece], voices, self.tasks, generator)[0]

    def piece_ids(self, stream: int, place: int) -> np.ndarray:
        """The tokens of the piece at ``place`` of ``stream``: the piece, or its task example."""
        dealt, _, keys = self.stream_deal(stream)
        piece = int(dealt[place])
        if not self.tasks:
            return self.pieces[piece]
        cache = self.example_cache[stream]
        if place not in cache:
            cache[place] = self.example(piece, self.epoch, *keys[place])
        return cache[place]

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

    def window(self, stream: int, begin: int, end: int, transpose: bool) -> np.ndarray:
        """Tokens ``[begin, end)`` of a stream, read from the pieces that overlap them, each shifted as dealt."""
        ends = self.stream_deal(stream)[1]
        first, last = np.searchsorted(ends, [begin, end - 1], side="right")
        cache = self.shift_cache[stream]
        for stale in (cache, self.example_cache[stream]):
            for place in [place for place in stale if place < first]:  # pieces the stream has moved past
                del stale[place]
        parts = []
        for place in range(int(first), int(last) + 1):
            ids = self.piece_ids(stream, place)
            start = ends[place] - len(ids)
            part = ids[max(begin - start, 0) : end - start].astype(np.int64)
            if transpose:
                if place not in cache:
                    cache[place] = self.draw_shift(ids, self.epoch, stream, place)
                is_note = (part >= encoding.NOTE_OFFSET) & (part < encoding.NOTE_OFFSET + encoding.NUM_PITCHES)
                part = np.where(is_note, part + cache[place], part)
            parts.append(part)
        return np.concatenate(parts)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        step, process, row = index // self.streams, index // self.rows % self.processes, index % self.rows
        stream = process * self.rows + row
        transpose = self.plain_from_step is None or self.epoch * self.steps + step < self.plain_from_step
        begin = step * self.step_tokens
        ids = self.window(stream, begin, begin + self.step_tokens + 1, transpose)
        return {"input_ids": ids[:-1], "labels": ids[:-1], "shift_labels": ids[1:]}
