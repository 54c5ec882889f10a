"""Corpus sources that are ``datasets`` datasets: one row per piece, as MIDI bytes or as a note table.

Sources (``--corpus`` / ``build-corpus SOURCE``):

- a ``.parquet`` file, a folder of them (searched recursively) or a glob, read through ``load_dataset("parquet")``
  as an ``IterableDataset``: rows stream from the files, nothing is copied first;
- a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (memory-mapped Arrow), unless it is
  one of our own built corpora (it has ``input_ids``);
- ``hf:ORG/NAME`` (``load_dataset(NAME)``; with ``streaming``, an ``IterableDataset`` that is encoded as it arrives
  instead of being downloaded whole first).

The piece is in one column: MIDI bytes (``midi_column``, found automatically when exactly one column is binary,
e.g. GigaMIDI's ``music``), or a note table: a list of ``{pitch, start, end, velocity}`` (or ``duration`` instead of
``end``) in seconds, placed on our grid at the row's ``tempo`` (quarter notes a minute) if it has one, else at
``note_tempo``; the report gives how far the onsets were from the grid. Splits the source names are kept
(``validation``/``valid``/``dev``, ``test``); a source with only ``train`` (or unnamed files) gets our split rule.
A row that cannot be read (unreadable bytes, no notes, an absurd tempo) is recorded in ``report.json`` with its row
id and the reason; the build goes on.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import symusic
from tqdm.auto import tqdm

from .workers import map_in_workers

HF_PREFIX = "hf:"
SPLIT_NAMES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation"}
SPLIT_NAMES |= {"dev": "validation", "test": "test"}
NAME_COLUMNS = ("name", "title", "filename", "file_name", "path", "md5", "id")
TEMPO_RANGE = (10.0, 400.0)  # quarter notes a minute; outside it a note table's tempo is absurd
NOTE_TICKS = 480  # ticks per quarter of the score a note table is written into (the encoder rounds to the grid)
ROWS_PER_TASK = 16  # rows a worker process reads per task; a few tasks per process are in flight at once


def is_dataset_source(source: str) -> bool:
    """Whether ``source`` names a ``datasets`` dataset (parquet, save_to_disk folder, ``hf:``) rather than files."""
    if source.startswith(HF_PREFIX):
        return True
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "state.json").exists():
            return True
        if (path / "dataset_dict.json").exists():
            return not _is_built_corpus(path)
        return bool(_parquet_files(source)) and not _has_music_files(path)
    return bool(_parquet_files(source))


def _is_built_corpus(path: Path) -> bool:
    splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
    info = path / splits[0] / "dataset_info.json" if splits else None
    return info is not None and info.exists() and "input_ids" in json.loads(info.read_text()).get("features", {})


def _has_music_files(path: Path) -> bool:
    from .corpus import ABC_SUFFIXES, MIDI_SUFFIXES, SCORE_SUFFIXES

    suffixes = MIDI_SUFFIXES + ABC_SUFFIXES + SCORE_SUFFIXES
    return any(p.suffix.lower() in suffixes for p in path.rglob("*"))


def _parquet_files(source: str) -> list[str]:
    path = Path(source).expanduser()
    if path.is_dir():
        return sorted(str(p) for p in path.rglob("*.parquet"))
    if path.is_file():
        return [str(path)] if path.suffix == ".parquet" else []
    return sorted(p for p in glob.glob(os.path.expanduser(source), recursive=True) if p.endswith(".parquet"))


@dataclass
class GridError:
    """How far note-table onsets were from the grid, in grid steps (the report's ``note_tables``)."""

    tempo_default: float
    notes: int = 0
    total: float = 0.0
    largest: float = 0.0
    tables: int = 0

    def add(self, errors: np.ndarray) -> None:
        self.tables += 1
        self.notes += len(errors)
        self.total += float(errors.sum())
        self.largest = max(self.largest, float(errors.max(initial=0.0)))

    def report(self) -> dict:
        mean = self.total / self.notes if self.notes else 0.0
        return {
            "tables": self.tables,
            "default_tempo_qpm": self.tempo_default,
            "notes": self.notes,
            "mean_onset_grid_error_steps": round(mean, 4),
            "max_onset_grid_error_steps": round(self.largest, 4),
        }


@dataclass
class DatasetSource:
    """The splits of a dataset source and how to read its pieces. ``splits``: source split name -> (Iterable)Dataset."""

    source: str
    splits: dict
    column: str
    layout: str  # "midi" (bytes) | "notes" (a note table)
    note_tempo: float
    files: list = field(default_factory=list)  # (path, size, mtime, ctime) of local files, for the cache key
    total_rows: int | None = None  # when known without reading the rows (parquet metadata), for the ETA
    rows_read: int = 0

    def fingerprint(self) -> dict:
        described = {"column": self.column, "layout": self.layout, "note_tempo": self.note_tempo}
        if self.files:
            return {**described, "files": self.files}
        return {
            **described,
            "fingerprints": {name: getattr(d, "_fingerprint", None) for name, d in self.splits.items()},
        }

    def keeps_splits(self) -> bool:
        """The source's own split decides (train/validation/test) only if it names a validation split."""
        return "validation" in self.splits

    def read(self, steps_per_beat: int, num_proc: int, limit: int | None, time_limit: float | None = None):
        """Yield (pieces, skips) per task of rows, like ``corpus.read_items`` (in child processes: a row whose
        process dies or passes ``time_limit`` seconds is a skip); a piece carries ``split`` when the source's split
        decides it. Grid errors of note tables are gathered in ``self.grid``."""
        self.grid = GridError(self.note_tempo)
        rows = islice(self._rows(), limit)
        tasks = _batches(rows, ROWS_PER_TASK)
        total = limit or self._length()
        progress = tqdm(total=total, desc="reading rows", unit="row", smoothing=0.1)
        jobs = ((task, self.column, self.layout, self.note_tempo, steps_per_beat) for task in tasks)
        readings = map_in_workers(_read_rows, jobs, num_proc, time_limit, FailedRows, chunk=1)
        try:
            for reading in readings:
                if isinstance(reading, FailedRows) and len(reading.job[0]) > 1:  # find the row at fault
                    singles = [([row], *reading.job[1:]) for row in reading.job[0]]
                    yield from self._take(map_in_workers(_read_rows, singles, 1, time_limit, FailedRows), progress)
                else:
                    yield from self._take([reading], progress)
        finally:  # stop the workers now, not when the generator is collected
            readings.close()
            progress.close()

    def _take(self, readings, progress):
        """(pieces, skips) of each reading, counting its rows and gathering its grid errors."""
        for reading in readings:
            pieces, skips, errors, count = reading.as_skips() if isinstance(reading, FailedRows) else reading
            for error in errors:
                self.grid.add(error)
            self.rows_read += count
            progress.update(count)
            yield pieces, skips

    def report(self) -> dict:
        described = {
            "dataset": {
                "column": self.column,
                "layout": self.layout,
                "source_splits": sorted(self.splits),
                "splits_kept": self.keeps_splits(),
                "rows_read": self.rows_read,
            }
        }
        if self.layout == "notes":
            described["note_tables"] = self.grid.report()
        return described

    def _length(self) -> int | None:
        try:
            return sum(len(split) for split in self.splits.values())
        except TypeError:  # an IterableDataset has no length
            return self.total_rows

    def _rows(self):
        for name, split in self.splits.items():
            ours = name if self.keeps_splits() or name == "test" else None
            for index, row in enumerate(split):
                yield (
                    ours,
                    f"{self.source}#{name}/{index}",
                    _row_name(row, name, index),
                    row[self.column],
                    row.get("tempo"),
                )


def open_source(source: str, midi_column: str = "", note_tempo: float = 120.0, streaming: bool = False):
    """The ``DatasetSource`` of ``source``. Raises ValueError naming the source for anything unreadable."""
    from datasets import Dataset, load_dataset, load_from_disk

    files: list = []
    total_rows = None
    if source.startswith(HF_PREFIX):
        from huggingface_hub import HfApi

        name = source.removeprefix(HF_PREFIX)
        revision = HfApi().dataset_info(name).sha  # the commit read is in the cache key: new data, new build
        loaded = load_dataset(name, revision=revision, streaming=streaming)
        files = [("revision", revision)]
    elif Path(source).expanduser().is_dir() and not _parquet_files(source):
        folder = Path(source).expanduser()
        loaded = load_from_disk(str(folder))
        files = _stats(sorted(folder.rglob("*.arrow")))
    else:
        paths = _parquet_files(source)
        if not paths:
            raise ValueError(f"{source!r}: no .parquet files found")
        loaded = load_dataset("parquet", data_files={"train": paths}, streaming=True)
        files = _stats(paths)
        total_rows = sum(pq.ParquetFile(path).metadata.num_rows for path in paths)
    splits = {"train": loaded} if isinstance(loaded, Dataset) else dict(loaded)
    unknown = [name for name in splits if name not in SPLIT_NAMES]
    if unknown:
        raise ValueError(f"{source!r}: splits {unknown} are not train, validation (valid, dev, val) or test")
    splits = {SPLIT_NAMES[name]: split for name, split in splits.items()}
    features = next(iter(splits.values())).features
    column, layout = find_column(source, features, midi_column)
    return DatasetSource(source, splits, column, layout, note_tempo, files, total_rows)


def _stats(paths) -> list:
    """What identifies the content of local dataset files without reading them (they may hold gigabytes): size,
    modification and status-change times. ``cp -p`` and ``rsync -a`` set the first two back, but writing a file
    always moves its status-change time (ctime), which no tool sets."""
    stats = [(str(path), os.stat(path)) for path in paths]
    return [(path, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns) for path, stat in stats]


def find_column(source: str, features, midi_column: str = "") -> tuple[str, str]:
    """(column, "midi" | "notes"): the named column, else the one binary column, else the one note-table column."""
    if features is None:
        raise ValueError(f"{source!r}: the dataset does not declare its columns; name one with --midi-column")
    layouts = {name: _layout(feature) for name, feature in features.items()}
    if midi_column:
        if midi_column not in layouts:
            raise ValueError(f"{source!r}: no column {midi_column!r}; it has {', '.join(layouts)}")
        if layouts[midi_column] is None:
            raise ValueError(f"{source!r}: column {midi_column!r} holds neither MIDI bytes nor a note table")
        return midi_column, layouts[midi_column]
    for layout in ("midi", "notes"):
        found = [name for name, kind in layouts.items() if kind == layout]
        if len(found) == 1:
            return found[0], layout
        if len(found) > 1:
            raise ValueError(f"{source!r}: several {layout} columns ({', '.join(found)}); name one with --midi-column")
    raise ValueError(f"{source!r}: no binary (MIDI bytes) or note-table column among {', '.join(layouts)}")


def _layout(feature) -> str | None:
    from datasets import List, Sequence, Value

    if isinstance(feature, Value) and feature.dtype in ("binary", "large_binary"):
        return "midi"
    inner = feature.feature if isinstance(feature, (List, Sequence)) else None
    if isinstance(inner, dict) and {"pitch", "start"} <= set(inner) and ({"end", "duration"} & set(inner)):
        return "notes"
    return None


def _row_name(row: dict, split: str, index: int) -> str:
    for column in NAME_COLUMNS:
        if isinstance(row.get(column), str) and row[column]:
            is_path = column in ("filename", "file_name", "path")
            return (Path(row[column]).stem if is_path else "") or row[column]
    return f"{split}-{index}"


# ----------------------------------------------------------------------------------------------------------
# Reading rows (runs in worker processes)


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


def _read_rows(job) -> tuple[list[dict], list[dict], list[np.ndarray], int]:
    from .corpus import _encode, _piece, _reason

    rows, column, layout, note_tempo, steps_per_beat = job
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


def _batches(iterable, size: int):
    iterator = iter(iterable)
    while batch := list(islice(iterator, size)):
        yield batch


@dataclass
class FailedRows:
    """A task of rows whose reading process died or ran past the time limit (``map_in_workers``' failure)."""

    job: tuple
    reason: str

    def as_skips(self) -> tuple[list[dict], list[dict], list[np.ndarray], int]:
        """What ``_read_rows`` returns, with every row of the task a skip for ``reason``."""
        rows = self.job[0]
        return [], [{"source": row[1], "reason": self.reason} for row in rows], [], len(rows)
