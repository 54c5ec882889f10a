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
import json
import os
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from .dataset_rows import NAME_COLUMNS, FailedRows, RowSlice, notes_to_score, read_rows, row_name
from .workers import map_in_workers

__all__ = ["DatasetSource", "find_column", "is_dataset_source", "notes_to_score", "open_source"]

HF_PREFIX = "hf:"
SPLIT_NAMES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation"}
SPLIT_NAMES |= {"dev": "validation", "test": "test"}
ROWS_PER_TASK = 64  # rows a worker reads per task: fewer round trips through the main process (16: 1.5x its work)


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
    parquet: list = field(default_factory=list)  # the parquet files of a parquet source (its train split)
    read_columns: tuple = ()  # the columns a worker reads: the piece, its name and tempo if there are
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
        decides it. A task names where its rows are and the worker reads them (``dataset_rows``). Grid errors of
        note tables are gathered in ``self.grid``."""
        self.grid = GridError(self.note_tempo)
        total = limit or self._length()
        progress = tqdm(total=total, desc="reading rows", unit="row", smoothing=0.1)
        how = (self.column, self.read_columns, self.layout, self.note_tempo, steps_per_beat)
        jobs = ((where, *how) for where in self._slices(limit))
        readings = map_in_workers(read_rows, jobs, num_proc, time_limit, FailedRows, chunk=1)
        try:
            for reading in readings:
                where = reading.job[0] if isinstance(reading, FailedRows) else None
                if where is not None and len(where) > 1:  # find the row at fault: read them one by one
                    singles = [(where.single(n), *reading.job[1:]) for n in range(len(where))]
                    yield from self._take(map_in_workers(read_rows, singles, 1, time_limit, FailedRows), progress)
                else:
                    yield from self._take([reading], progress)
        finally:  # stop the workers now, not when the generator is collected
            readings.close()
            progress.close()

    def _slices(self, limit: int | None):
        """The ``RowSlice`` of each task, ``ROWS_PER_TASK`` rows, in the order of the rows, ``limit`` rows in all."""
        left = float("inf") if limit is None else limit
        for name, split in self.splits.items():
            ours = name if self.keeps_splits() or name == "test" else None
            parts = self._parts(split)
            if parts is None:  # rows without addresses (a streamed dataset): this process reads them
                rows = ((row_name(row, name, n), row[self.column], row.get("tempo")) for n, row in enumerate(split))
                for first in range(0, 2**63, ROWS_PER_TASK):
                    given = tuple(islice(rows, int(min(ROWS_PER_TASK, left))))
                    if not given:
                        break
                    yield RowSlice("rows", self.source, name, first, ours, given=given)
                    left -= len(given)
                continue
            first = 0
            for kind, path, group, rows in parts:
                for start in range(0, rows, ROWS_PER_TASK):
                    if left <= 0:
                        return
                    stop = int(min(rows, start + ROWS_PER_TASK, start + left))
                    yield RowSlice(kind, self.source, name, first + start, ours, path, group, start, stop)
                    left -= stop - start
                first += rows

    def _parts(self, split) -> list[tuple] | None:
        """(kind, path, row group, rows) of each part of a split the workers can read themselves, in row order:
        the row groups of parquet files, or the Arrow files of a ``Dataset``; None for rows that have no address."""
        if self.parquet:
            metadata = [(path, pq.ParquetFile(path).metadata) for path in self.parquet]
            return [
                ("parquet", path, group, meta.row_group(group).num_rows)
                for path, meta in metadata
                for group in range(meta.num_row_groups)
            ]
        files = [file["filename"] for file in getattr(split, "cache_files", [])]
        if not files or getattr(split, "_indices", None) is not None:
            return None
        parts = [("arrow", path, 0, arrow_rows(path)) for path in files]
        return parts if sum(part[3] for part in parts) == len(split) else None

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


def open_source(source: str, midi_column: str = "", note_tempo: float = 120.0, streaming: bool = False):
    """The ``DatasetSource`` of ``source``. Raises ValueError naming the source for anything unreadable."""
    from datasets import Dataset, load_dataset, load_from_disk

    files: list = []
    paths: list = []
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
        loaded = load_dataset("parquet", data_files={"train": paths}, streaming=True)  # its columns; workers read
        files = _stats(paths)
        total_rows = sum(pq.ParquetFile(path).metadata.num_rows for path in paths)
    splits = {"train": loaded} if isinstance(loaded, Dataset) else dict(loaded)
    unknown = [name for name in splits if name not in SPLIT_NAMES]
    if unknown:
        raise ValueError(f"{source!r}: splits {unknown} are not train, validation (valid, dev, val) or test")
    splits = {SPLIT_NAMES[name]: split for name, split in splits.items()}
    features = next(iter(splits.values())).features
    column, layout = find_column(source, features, midi_column)
    extra = [name for name in features if name != column and (name in NAME_COLUMNS or name == "tempo")]
    return DatasetSource(source, splits, column, layout, note_tempo, files, total_rows, paths, (column, *extra))


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


def arrow_rows(path: str) -> int:
    """Rows of an Arrow file written by ``datasets`` (memory-mapped: only its metadata is read)."""
    with pa.memory_map(path) as file:
        return pa.ipc.open_stream(file).read_all().num_rows
