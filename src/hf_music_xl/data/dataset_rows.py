"""Reading the rows of a dataset source in the worker processes: each task names where its rows are (a slice of a
parquet row group or of an Arrow file) and the worker reads them itself, so the build's main process never holds
or ships the music. Only a streamed Hub dataset (an ``IterableDataset``, which has no row addresses) passes its rows
through the main process.

A worker keeps the parquet row group it reads open between tasks (``ParquetCursor``): consecutive slices of one row
group read it once, batch by batch, and only the columns the build needs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import symusic

from .corpus_writer import PieceBatch, pack

TEMPO_RANGE = (10.0, 400.0)  # quarter notes a minute; outside it a note table's tempo is absurd
NOTE_TICKS = 480  # ticks per quarter of the score a note table is written into (the encoder rounds to the grid)
NAME_COLUMNS = ("name", "title", "filename", "file_name", "path", "md5", "id")
READ_BATCH = 64  # rows a worker decodes from a parquet row group at once


@dataclass(frozen=True)
class RowSlice:
    """Rows ``[start, stop)`` of one part of a source split: a parquet row group (``kind`` "parquet", ``group``), an
    Arrow file (``kind`` "arrow"), or rows handed over as they are (``kind`` "rows", ``given``: a streamed dataset's).
    ``first_index``: the index of row ``start`` in its split (row ids count in the split); ``ours``: the split its
    pieces go to, or None for the split rule."""

    kind: str
    source: str
    split: str
    first_index: int
    ours: str | None
    path: str = ""
    group: int = 0
    start: int = 0
    stop: int = 0
    given: tuple = ()  # (name, value, tempo) of each row, for kind "rows"

    def __len__(self) -> int:
        return len(self.given) if self.kind == "rows" else self.stop - self.start

    def row_id(self, offset: int) -> str:
        return f"{self.source}#{self.split}/{self.first_index + offset}"

    def single(self, offset: int) -> RowSlice:
        """The one row at ``offset``: a task of its own (to find the row at fault when a task fails)."""
        if self.kind == "rows":
            given = self.given[offset : offset + 1]
            return RowSlice(self.kind, self.source, self.split, self.first_index + offset, self.ours, given=given)
        where = self.start + offset
        return RowSlice(
            self.kind, self.source, self.split, self.first_index + offset, self.ours, self.path, self.group, where,
            where + 1,
        )  # fmt: skip

    def rows(self, column: str, columns: tuple[str, ...]) -> list[tuple]:
        """(ours, row id, name, value, tempo) of each row, read where the slice says."""
        if self.kind == "rows":
            given = self.given
        else:
            if self.kind == "parquet":
                records = CURSOR.read(self, list(columns))
            else:
                records = arrow_table(self.path).slice(self.start, len(self)).select(list(columns)).to_pylist()
            given = [(row_name(row, self.split, self.first_index + n), row[column], row.get("tempo")) for n, row in
                     enumerate(records)]  # fmt: skip
        return [(self.ours, self.row_id(n), name, value, tempo) for n, (name, value, tempo) in enumerate(given)]


class ParquetCursor:
    """The parquet row group a worker reads, held open between its tasks: a slice after the last one read goes on
    from there; one before it (a task read again) opens the group anew."""

    def __init__(self):
        self.key, self.batches, self.held, self.position = None, iter(()), None, 0

    def read(self, where: RowSlice, columns: list[str]) -> list[dict]:
        """The rows of ``where`` (its ``columns``), as dicts."""
        if self.key != (where.path, where.group, columns) or self.position > where.start:
            file = pq.ParquetFile(where.path)
            self.batches = file.iter_batches(READ_BATCH, row_groups=[where.group], columns=columns, use_threads=False)
            self.key, self.held, self.position = (where.path, where.group, columns), None, 0
        records = []
        while self.position < where.stop:
            if self.held is None:
                self.held = next(self.batches, None)
                if self.held is None:
                    break
            skip = max(0, where.start - self.position)  # rows of the batch before the slice
            take = min(len(self.held), where.stop - self.position)  # rows of the batch up to the slice's end
            if take > skip:
                records += self.held.slice(skip, take - skip).to_pylist()
            self.position += take
            self.held = None if take == len(self.held) else self.held.slice(take)
        return records


CURSOR = ParquetCursor()  # one per worker process (each forks its own)
OPEN_ARROW: dict[str, pa.Table] = {}  # the Arrow file a worker reads, memory-mapped (one at a time)


def arrow_table(path: str) -> pa.Table:
    """The table of an Arrow file written by ``datasets`` (stream format), memory-mapped: nothing is copied."""
    if path not in OPEN_ARROW:
        OPEN_ARROW.clear()
        OPEN_ARROW[path] = pa.ipc.open_stream(pa.memory_map(path)).read_all()
    return OPEN_ARROW[path]


def row_name(row: dict, split: str, index: int) -> str:
    for column in NAME_COLUMNS:
        if isinstance(row.get(column), str) and row[column]:
            is_path = column in ("filename", "file_name", "path")
            return (Path(row[column]).stem if is_path else "") or row[column]
    return f"{split}-{index}"


def notes_to_score(notes, tempo: float, steps_per_beat: int) -> tuple[symusic.Score, np.ndarray]:
    """A note table (seconds) as a one-track score at ``tempo`` quarter notes a minute, and each onset's distance
    from the nearest grid step (in steps)."""
    if not TEMPO_RANGE[0] <= tempo <= TEMPO_RANGE[1]:
        raise ValueError(
            f"absurd tempo {tempo} (outside {TEMPO_RANGE[0]:g}..{TEMPO_RANGE[1]:g} quarter notes a minute)"
        )
    if not notes:
        raise ValueError("no notes in the note table")
    starts = np.array([float(note["start"]) for note in notes])
    ends = np.array(
        [float(note["end"]) if note.get("end") is not None else note["start"] + note["duration"] for note in notes]
    )
    if not (np.isfinite(starts).all() and np.isfinite(ends).all()) or starts.min() < 0:
        raise ValueError("note times must be finite seconds >= 0")
    quarters = tempo / 60.0  # quarter notes a second
    steps = starts * quarters * steps_per_beat
    score = symusic.Score(NOTE_TICKS)
    track = symusic.Track(program=0)
    for note, start, end in zip(notes, starts, ends):
        onset = int(round(start * quarters * NOTE_TICKS))
        length = max(1, int(round((end - start) * quarters * NOTE_TICKS)))
        velocity = int(note.get("velocity") or 64)
        track.notes.append(symusic.Note(onset, length, int(note["pitch"]), min(max(velocity, 1), 127)))
    score.tracks.append(track)
    score.tempos.append(symusic.Tempo(0, float(tempo)))
    return score, np.abs(steps - np.round(steps))


def read_rows(job) -> tuple[PieceBatch, list[dict], list[np.ndarray], int]:
    """(pieces packed for the writer, skips, grid errors, rows) of one task: the worker reads its slice, then
    encodes each row."""
    where, column, columns, layout, note_tempo, steps_per_beat = job
    pieces, skips, errors, count = encode_rows(where.rows(column, columns), column, layout, note_tempo, steps_per_beat)
    return pack(pieces), skips, errors, count


def encode_rows(rows, column: str, layout: str, note_tempo: float, steps_per_beat: int):
    from .corpus import _encode, _piece, _reason

    pieces, skips, errors = [], [], []
    for split, row_id, name, value, tempo in rows:
        try:
            if value is None:
                raise ValueError(f"the {column!r} column is empty")
            if layout == "midi":
                data = bytes(value)
                key = hashlib.sha1(data).hexdigest()
                encoded = _encode(data, steps_per_beat)
            else:
                score, error = notes_to_score(value, float(tempo or note_tempo), steps_per_beat)
                encoded = _encode(score, steps_per_beat)
                key = hashlib.sha1(encoded[0].astype(np.int16).tobytes()).hexdigest()
                errors.append(error)
            piece = _piece(encoded, row_id, name, key, key)
            if split is not None:
                piece["split"] = split
            pieces.append(piece)
        except Exception as error:  # a bad row is recorded; the build goes on
            skips.append({"source": row_id, "reason": _reason(error)})
    return pieces, skips, errors, len(rows)


@dataclass
class FailedRows:
    """A task of rows whose reading process died or ran past the time limit (``map_in_workers``' failure)."""

    job: tuple
    reason: str

    def as_skips(self) -> tuple[PieceBatch, list[dict], list[np.ndarray], int]:
        """What ``read_rows`` returns, with every row of the task a skip for ``reason``."""
        where = self.job[0]
        skips = [{"source": where.row_id(n), "reason": self.reason} for n in range(len(where))]
        return pack([]), skips, [], len(where)
