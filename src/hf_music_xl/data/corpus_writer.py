"""Writing one corpus build: pieces streamed into an Arrow file per split as they are read, duplicates dropped,
each piece's split fixed by a hash of its key; then the DatasetDict and ``report.json`` saved in a scratch folder
beside the target and renamed into place (``atomic``).

Memory stays flat however large the corpus: a record batch (1,000 pieces) is all of the music held at once; what the
build remembers of each piece (its digests for deduplication, the skips and duplicates for the report) is kept on
disk in a ``Ledger`` (``build_ledger``), and the report's lists are written from there.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import Dataset, DatasetDict, Features, Sequence, Value
from datasets.arrow_writer import ArrowWriter
from datasets.utils.py_utils import asdict  # the dataclass asdict that save_to_disk uses (defaults left out)

from ..models.music_xl import encoding
from .atomic import Writing, replace_folder, scratch
from .build_ledger import Ledger, write_json

SPLITS = ("train", "validation")
FEATURES = Features(
    {
        "input_ids": Sequence(Value("int16")),  # ids < 383: int16 halves the cache
        "voices": Sequence(Value("int8")),  # per token: the voice (track, part) of a note's two tokens, else -1
        "source": Value("string"),
        "name": Value("string"),
        "n_notes": Value("int32"),
    }
)
SCHEMA = pa.schema(list(FEATURES.type))  # FEATURES' Arrow schema without its metadata, which a pickle would carry
WRITE_BATCH = 1000  # rows a record batch holds (as datasets writes them): a loaded file faults in one header a batch


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def first_seen(seen: Ledger, piece: dict) -> str | None:
    """The source of an earlier piece with the same file content or the same tokens, else None (and the piece
    is remembered). ``seen`` holds the pieces' sha1 digests, on disk."""
    return seen.first_source((bytes.fromhex(piece["content_key"]), piece["tokens_key"]), piece["source"])


def split_score(split_key: str) -> float:
    """A number in [0, 1) fixed by the key: the piece goes to validation if it is below the fraction."""
    return int(_sha1(split_key.encode())[:8], 16) / 2**32


def meter_of(ids: np.ndarray) -> tuple[str, bool]:
    """The meter a piece starts in ("none" without one), and whether it changes meter on the way."""
    tokens = ids[encoding.is_meter(ids)]
    first = encoding.VOCAB[int(tokens[0])].removeprefix("ts") if len(tokens) else "none"
    return first, bool(len(set(tokens.tolist())) > 1)


@dataclass
class PieceBatch:
    """The pieces of one reading, packed in the reading process (``pack``): their stored columns as one Arrow
    table, so that the build's main process only picks rows, and what it needs of each piece to deduplicate it,
    place it and count it (``keys``: source, content_key, tokens_key, split_key, split, tokens, notes, meter)."""

    table: pa.Table
    keys: list[dict]


def pack(pieces: list[dict]) -> PieceBatch:
    """A ``PieceBatch`` of the pieces a reader made (dicts with the ``FEATURES`` and the keys)."""
    columns = {name: [piece[name] for piece in pieces] for name in ("source", "name", "n_notes")}
    for name, dtype in (("input_ids", np.int16), ("voices", np.int8)):
        arrays = [np.asarray(piece[name], dtype) for piece in pieces]
        offsets = np.cumsum([0] + [len(array) for array in arrays], dtype=np.int64).astype(np.int32)
        values = np.concatenate(arrays) if arrays else np.zeros(0, dtype)
        columns[name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
    table = pa.table({name: columns[name] for name in FEATURES}, schema=SCHEMA)
    keys = [
        {
            **{name: piece[name] for name in ("source", "content_key", "tokens_key", "split_key")},
            "split": piece.get("split"),
            "tokens": len(piece["input_ids"]),
            "notes": piece["n_notes"],
            "meter": meter_of(np.asarray(piece["input_ids"])),
        }
        for piece in pieces
    ]
    return PieceBatch(table, keys)


class MeterCounts:
    """How many pieces start in each meter, and how many change meter on the way (the corpus report's "meters")."""

    def __init__(self):
        self.first: dict[str, int] = {}
        self.changing = 0

    def count(self, meter: tuple[str, bool]) -> None:
        first, changing = meter
        self.first[first] = self.first.get(first, 0) + 1
        self.changing += changing

    def report(self) -> dict:
        ordered = dict(sorted(self.first.items(), key=lambda item: -item[1]))
        return {"first_meter": ordered, "pieces_changing_meter": self.changing}


class CorpusWriter:
    """The Arrow files of one build, in a scratch folder beside ``target``, and what they hold so far. Use it as a
    ``with`` block: its scratch folders are removed at the end, whatever happened. An OSError while writing
    becomes ``failure``'s one line (a ``CorpusWriteError``)."""

    def __init__(self, target: Path, source: str, splits: tuple, validation_fraction: float, failure: Writing):
        self.target, self.source, self.splits, self.failure = target, source, splits, failure
        self.validation_fraction = validation_fraction
        self.rows_dir, self.partial = scratch(target, "rows"), scratch(target, "partial")
        self.stats = {name: {"pieces": 0, "tokens": 0, "notes": 0} for name in splits}
        self.seen: Ledger | None = None
        self.meters = MeterCounts()
        self.lowest_train = (2.0, -1)  # (split score, row) of the train piece closest to validation
        self.writers: dict[str, ArrowWriter] = {}
        self.pending: dict[str, list[pa.Table]] = {name: [] for name in splits}  # rows to write, < WRITE_BATCH

    def __enter__(self) -> CorpusWriter:
        try:
            with self.failure:
                self.target.parent.mkdir(parents=True, exist_ok=True)
                self.rows_dir.mkdir()
                self.seen = Ledger(self.rows_dir / "ledger.sqlite")
                self.writers = {
                    name: ArrowWriter(
                        features=FEATURES, path=str(self.rows_dir / f"{name}.arrow"), writer_batch_size=WRITE_BATCH
                    )
                    for name in self.splits
                }
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exception) -> bool:
        if self.seen is not None:
            self.seen.close()
        shutil.rmtree(self.rows_dir, ignore_errors=True)
        shutil.rmtree(self.partial, ignore_errors=True)
        return False

    def add(self, batch: PieceBatch, skipped: list[dict]) -> None:
        """The pieces and skips of one reading: duplicates are recorded, the others written to their split."""
        with self.failure:
            self.seen.add_skips(skipped)
        rows = {name: [] for name in self.splits}  # the rows of ``batch.table`` each split takes
        for row, piece in enumerate(batch.keys):
            with self.failure:
                first = first_seen(self.seen, piece)
            if first is not None:
                with self.failure:
                    self.seen.add_duplicate(piece["source"], first)
                continue
            score = split_score(piece["split_key"])
            split = piece["split"] or ("validation" if score < self.validation_fraction else "train")
            if split == "train":
                self.lowest_train = min(self.lowest_train, (score, self.stats["train"]["pieces"]))
            rows[split].append(row)
            self.stats[split]["pieces"] += 1
            self.stats[split]["tokens"] += piece["tokens"]
            self.stats[split]["notes"] += piece["notes"]
            self.meters.count(piece["meter"])
        for split, taken in rows.items():
            if taken:
                self.pending[split].append(batch.table.take(taken))
            if sum(len(table) for table in self.pending[split]) >= WRITE_BATCH:
                self.flush(split)

    def flush(self, split: str) -> None:
        """Write the rows waiting for ``split`` as one record batch."""
        if self.pending[split]:
            with self.failure:
                self.writers[split].write_table(pa.concat_tables(self.pending[split]).combine_chunks())
            self.pending[split] = []

    def save(self, head: dict, tail: dict) -> dict:
        """Finish the Arrow files, save the DatasetDict and ``report.json`` (``head``, the counts, ``tail``) and
        rename them into ``target``; the report, with the number of skips and of duplicates in place of their lists
        (which go from the ledger straight to the file). Raises ValueError if no piece was kept."""
        for split in self.splits:
            self.flush(split)
        with self.failure:
            for writer in self.writers.values():
                writer.finalize()
        total = sum(split_stats["pieces"] for split_stats in self.stats.values())
        if not total:
            reasons = f"{self.seen.skipped} skipped, see the reasons: {list(self.seen.skips(3))}"
            raise ValueError(f"{self.source!r}: no piece could be read ({reasons})")
        corpus = DatasetDict({name: Dataset.from_file(str(self.rows_dir / f"{name}.arrow")) for name in self.splits})
        moved = self.validation_fraction > 0 and not self.stats["validation"]["pieces"] and total >= 2
        if moved:
            corpus, self.stats = move_to_validation(corpus, self.stats, self.lowest_train[1])
        counts = {
            "pieces_kept": total,
            "skipped": self.seen.skipped,
            "duplicates": self.seen.duplicates,
            "splits": self.stats,
            "meters": self.meters.report(),
        }
        report = {**head, **counts, **tail}
        with self.failure:
            if moved:  # splits that are parts of one file: a copy (of a tiny corpus)
                corpus.save_to_disk(str(self.partial))
            else:
                save_in_place(corpus, self.partial)
            streamed = {"skipped": self.seen.skips(), "duplicates": self.seen.duplicate_rows()}
            write_json(self.partial / "report.json", report, streamed)
            replace_folder(self.partial, self.target)
        return report


SAVED_STATE = ("_fingerprint", "_format_columns", "_format_kwargs", "_format_type", "_output_all_columns")
DATA_FILE = "data-00000-of-00001.arrow"


def save_in_place(corpus: DatasetDict, folder: Path) -> None:
    """What ``corpus.save_to_disk(folder)`` writes (``load_from_disk`` reads it), for splits that are each one whole
    Arrow file: the files are renamed into place, not copied row by row (a copy reads every page of the corpus
    through this process's memory map, and writes it all a second time). The state and info files are written
    from the split as ``save_to_disk`` writes them."""
    folder.mkdir()
    for name, split in corpus.items():
        (folder / name).mkdir()
        shutil.move(split.cache_files[0]["filename"], folder / name / DATA_FILE)
        state = {key: split.__dict__[key] for key in SAVED_STATE}
        state.update(_split=None if split.split is None else str(split.split), _data_files=[{"filename": DATA_FILE}])
        (folder / name / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
        info = asdict(split._info)  # noqa: SLF001 - as save_to_disk writes it
        (folder / name / "dataset_info.json").write_text(json.dumps({key: info[key] for key in sorted(info)}, indent=2))
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": list(corpus)}))


def move_to_validation(corpus: DatasetDict, stats: dict, row: int) -> tuple[DatasetDict, dict]:
    """A small corpus whose hashes picked no validation piece: move the train piece with the lowest score there,
    so that tests and tiny corpora still have one."""
    train = corpus["train"]
    piece = train[row]
    moved = {"pieces": 1, "tokens": len(piece["input_ids"]), "notes": piece["n_notes"]}
    stats = {**stats, "train": {name: stats["train"][name] - moved[name] for name in moved}, "validation": moved}
    rest = train.select([index for index in range(len(train)) if index != row])
    return DatasetDict({**corpus, "train": rest, "validation": train.select([row])}), stats
