"""Build a corpus of encoded pieces as a ``datasets.DatasetDict`` (train/validation), cached on disk.

One row per piece::

    input_ids  list[int16]  xxbos xxpad n.. d.. xxsep d.. ... xxeos   (xxeos ends every piece so the model
                            learns to stop)
    source     str          where the piece came from (a file, "file.abc#X:12", "music21:bach/bwv269.mxl")
    name       str          a short human name ("bwv269", a file stem, an ABC title)
    n_notes    int32        number of notes (n-tokens); NLL per note divides by it

Sources (``build_corpus(source)`` and ``hf-music-xl build-corpus SOURCE``):

- ``bach-chorales``: the SATB Bach chorales bundled with the installed music21 package, parsed with
  ``forceSource=True`` and read straight from the parsed parts (see ``music21_source``);
- ``music21:FOLDER``: every file of a folder of music21's corpus, e.g. ``music21:palestrina`` (Humdrum),
  ``music21:oneills1850`` (ABC);
- a directory (searched recursively), a glob, or one file: ``.mid``/``.midi`` read with symusic, ``.abc`` split
  into tunes on ``X:`` lines and each read through music21 (which knows the tune's meter changes and pickup bar),
  and the score formats music21 parses (``.krn``, ``.mxl``, ``.xml``, ``.musicxml``) read as the chorales are;
- ``datasets`` datasets: a ``.parquet`` file, folder or glob, a ``save_to_disk`` folder or ``hf:ORG/NAME``, with a
  column of MIDI bytes or note tables (see ``dataset_sources``);
- several of these joined by commas (``bach-chorales,music21:palestrina``): ``load_corpus`` builds each and
  concatenates their splits.

Pieces stream from the readers into Arrow files on disk as they come, so memory does not grow with the music:
what grows is about 2 KB per file (the file list, the deduplication hashes, the report). A file that
cannot be read is recorded in ``report.json`` and skipped; the build never stops for it. Files
with the same content, and pieces with the same tokens, are kept once. The split is a hash of a stable key
per piece (the BWV number for chorales, the content otherwise), so a piece stays on its side of the split
when the corpus grows.

Built once per cache key (source, file fingerprint, encoder version, quantization, limit, split fraction) in
``$HF_MUSIC_XL_CACHE`` or ``~/.cache/hf_music_xl/corpora``. Nothing read from music21's corpus may be
committed to this repository: the cache lives outside it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, Features, Sequence, Value, concatenate_datasets, load_from_disk
from datasets.arrow_writer import ArrowWriter
from tqdm.auto import tqdm

from ..models.music_xl import encoding

logger = logging.getLogger(__name__)

# Bump whenever the ids produced for the same input change (encoding or corpus rules): it is in the cache key.
# 2: time signature tokens; ABC tunes read through music21 (meters and pickups). 3: the voices column.
ENCODER_VERSION = "3"
DEFAULT_SOURCE = "bach-chorales"
MIDI_SUFFIXES = (".mid", ".midi")
ABC_SUFFIXES = (".abc",)
SCORE_SUFFIXES = (".krn", ".mxl", ".xml", ".musicxml")  # parsed by music21 (an optional dependency)
FEATURES = Features(
    {
        "input_ids": Sequence(Value("int16")),  # ids < 383: int16 halves the cache
        "voices": Sequence(Value("int8")),  # per token: the voice (track, part) of a note's two tokens, else -1
        "source": Value("string"),
        "name": Value("string"),
        "n_notes": Value("int32"),
    }
)


@dataclass(frozen=True)
class Item:
    """One thing to read: a chorale, a MIDI file or an ABC file (which may hold many tunes)."""

    kind: str  # "chorale" (a Bach chorale, split by BWV number) | "score" (parsed by music21) | "midi" | "abc"
    path: str
    label: str  # how the report and the `source` column name it


def default_cache_dir() -> Path:
    return Path(os.environ.get("HF_MUSIC_XL_CACHE", Path.home() / ".cache" / "hf_music_xl")) / "corpora"


# ----------------------------------------------------------------------------------------------------------
# Sources -> items


def _music21_root() -> Path:
    from .music21_source import _music21

    return Path(_music21().common.getCorpusFilePath())


def list_items(source: str) -> list[Item]:
    """The items of a source, in a stable order. Raises ValueError if the source names nothing readable."""
    if source == "bach-chorales":
        from .music21_source import bach_chorale_paths

        root = _music21_root()
        return [Item("chorale", str(p), f"music21:{p.relative_to(root).as_posix()}") for p in bach_chorale_paths()]
    if source.startswith("music21:"):
        folder = _music21_root() / source.removeprefix("music21:")
        if not folder.is_dir():
            raise ValueError(f"{source!r}: no folder {folder.name!r} in music21's corpus at {folder.parent}")
        return _file_items(sorted(folder.rglob("*")), root=folder.parent, prefix="music21:", source=source)
    path = Path(source).expanduser()
    if path.is_dir():
        return _file_items(sorted(path.rglob("*")), root=path, prefix="", source=source)
    if path.is_file():
        return _file_items([path], root=path.parent, prefix="", source=source)
    matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True))
    if matches:
        return _file_items(
            matches, root=Path(os.path.commonpath([p.parent for p in matches])), prefix="", source=source
        )
    raise ValueError(
        f"unknown corpus source {source!r}: give 'bach-chorales', 'music21:FOLDER', a directory, a glob, a file, "
        "a .parquet file, folder or glob, a save_to_disk folder or hf:ORG/NAME"
    )


def _file_items(paths: list[Path], root: Path, prefix: str, source: str) -> list[Item]:
    items = []
    kinds = {
        **dict.fromkeys(MIDI_SUFFIXES, "midi"),
        **dict.fromkeys(ABC_SUFFIXES, "abc"),
        **dict.fromkeys(SCORE_SUFFIXES, "score"),
    }
    for path in paths:
        kind = kinds.get(path.suffix.lower())
        if kind and path.is_file():
            items.append(Item(kind, str(path), prefix + path.relative_to(root).as_posix()))
    if not items:
        raise ValueError(f"{source!r}: no {'/'.join(kinds)} files found")
    return items


# ----------------------------------------------------------------------------------------------------------
# Reading one item (runs in worker processes)


def split_abc_tunes(text: str) -> list[tuple[str, str]]:
    """(tune label, tune text with the file header) for each ``X:`` tune of an ABC file."""
    starts = [m.start() for m in re.finditer(r"^X:", text, flags=re.MULTILINE)]
    if not starts:
        return []
    header = text[: starts[0]]
    bounds = starts + [len(text)]
    tunes = []
    for begin, end in zip(bounds[:-1], bounds[1:]):
        body = text[begin:end]
        number = body.splitlines()[0][2:].strip()
        title = re.search(r"^T:\s*(.*)$", body, flags=re.MULTILINE)
        label = f"X:{number}" + (f" {title.group(1).strip()}" if title else "")
        tunes.append((label, header + body))
    return tunes


def _piece(encoded: tuple[np.ndarray, np.ndarray], source: str, name: str, content_key: str, split_key: str) -> dict:
    ids, voices = encoded
    n_notes = int(((ids >= encoding.NOTE_OFFSET) & (ids < encoding.NOTE_OFFSET + encoding.NUM_PITCHES)).sum())
    return {
        "input_ids": ids.astype(np.int16),
        "voices": voices,
        "source": source,
        "name": name,
        "n_notes": n_notes,
        "content_key": content_key,  # for deduplication, not stored
        "split_key": split_key,  # for the split, not stored
    }


def _encode(score_or_bytes, steps_per_beat: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, voices) of a MIDI input: the piece with ``xxeos`` and the voice of each token (``token_voices``)."""
    notes = encoding.read_notes(score_or_bytes, steps_per_beat=steps_per_beat)
    ids = encoding.notes_to_ids(notes, add_eos=True)
    return ids, encoding.token_voices(ids, notes.voice)


def read_item(item: Item, steps_per_beat: int) -> tuple[list[dict], list[dict]]:
    """(pieces, skips) of one item; never raises for a bad input, it reports it as a skip."""
    pieces, skips = [], []
    try:
        if item.kind in ("chorale", "score"):
            from .music21_source import bwv_number, read_music21

            encoded = _encode(read_music21(item.path), steps_per_beat)
            key = _sha1(Path(item.path).read_bytes())
            split_key = f"bwv{bwv_number(item.path)}" if item.kind == "chorale" else key
            pieces.append(_piece(encoded, item.label, Path(item.path).stem, key, split_key))
        elif item.kind == "midi":
            # from the path: the size limit is checked before the file is read, and errors name the file
            encoded = _encode(item.path, steps_per_beat)
            key = _sha1(Path(item.path).read_bytes())
            pieces.append(_piece(encoded, item.label, Path(item.path).stem, key, key))
        else:
            text = Path(item.path).read_text(encoding="utf-8", errors="replace")
            tunes = split_abc_tunes(text)
            if not tunes:
                skips.append({"source": item.label, "reason": "no 'X:' tune in the ABC file"})
            for label, tune in tunes:
                source = f"{item.label}#{label.split()[0]}"
                key = _sha1(re.sub(r"^X:.*$", "", tune, count=1, flags=re.MULTILINE).encode())  # number aside
                try:
                    from .music21_source import read_abc_tune

                    encoded = _encode(read_abc_tune(tune), steps_per_beat)
                    pieces.append(_piece(encoded, source, f"{Path(item.path).stem} {label}", key, key))
                except Exception as error:  # music21 fails on some tunes: skip that tune only
                    skips.append({"source": source, "reason": _reason(error)})
    except Exception as error:  # any failure of one file is recorded; the build goes on
        skips.append({"source": item.label, "reason": _reason(error)})
    return pieces, skips


def _reason(error: Exception) -> str:
    return f"{type(error).__name__}: {error}".strip()[:500]


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _read_star(args):
    return read_item(*args)


def _pool_context():
    # fork starts workers instantly with music21 already imported; elsewhere use the platform default.
    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)


def read_items(items: list[Item], steps_per_beat: int, num_proc: int):
    """Yield (pieces, skips) of each item in order, read in parallel, with a progress bar. A generator: the
    caller writes each piece to disk before the next arrive, so memory does not grow with the corpus."""
    jobs = [(item, steps_per_beat) for item in items]
    progress = dict(total=len(jobs), desc="reading pieces", unit="file")
    if num_proc > 1 and len(jobs) > 1:
        with _pool_context().Pool(min(num_proc, len(jobs))) as pool:
            yield from tqdm(pool.imap(_read_star, jobs, chunksize=4), **progress)
    else:
        yield from (read_item(*job) for job in tqdm(jobs, **progress))


# ----------------------------------------------------------------------------------------------------------
# Deduplication and split


def first_seen(seen: dict[str, str], piece: dict) -> str | None:
    """The source of an earlier piece with the same file content or the same tokens, else None (and the piece
    is remembered). ``seen`` holds short hashes, not pieces."""
    keys = (piece["content_key"], _sha1(piece["input_ids"].tobytes()))
    first = next((seen[key] for key in keys if key in seen), None)
    if first is None:
        seen.update({key: piece["source"] for key in keys})
    return first


def split_score(split_key: str) -> float:
    """A number in [0, 1) fixed by the key: the piece goes to validation if it is below the fraction."""
    return int(_sha1(split_key.encode())[:8], 16) / 2**32


# ----------------------------------------------------------------------------------------------------------
# Building, caching, loading


def cache_key(
    source: str,
    items: list[Item],
    steps_per_beat: int,
    limit: int | None,
    validation_fraction: float,
    dataset: dict | None = None,
) -> str:
    """Everything that changes the built corpus: the source and its files, the encoder, the quantization.
    ``dataset``: a dataset source's fingerprint (its files, column and layout; ``DatasetSource.fingerprint``)."""
    if dataset is not None:
        files = dataset
    elif source == "bach-chorales" or source.startswith("music21:"):
        from .music21_source import _music21

        files = _music21().__version__  # the bundled files change only with music21's version
    else:
        files = [(item.path, os.stat(item.path).st_size, os.stat(item.path).st_mtime_ns) for item in items]
    described = dict(
        source=source,
        files=files,
        encoder_version=ENCODER_VERSION,
        steps_per_beat=steps_per_beat,
        limit=limit,
        validation_fraction=validation_fraction,
    )
    return _sha1(json.dumps(described, sort_keys=True).encode())[:16]


def _slug(source: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", source).strip("-")[-40:] or "corpus"


def build_corpus(
    source: str = DEFAULT_SOURCE,
    output: str | os.PathLike | None = None,
    steps_per_beat: int = encoding.STEPS_PER_BEAT,
    validation_fraction: float = 0.1,
    limit: int | None = None,
    num_proc: int = 2,
    cache_dir: str | os.PathLike | None = None,
    rebuild: bool = False,
    midi_column: str = "",
    note_tempo: float = 120.0,
    streaming: bool = False,
) -> DatasetDict:
    """Build (or load from the cache) the corpus of ``source`` and return it memory-mapped from disk.

    Args:
        source: ``bach-chorales``, ``music21:FOLDER``, a directory, a glob or a file (see the module docstring).
        output: also save the DatasetDict and ``report.json`` to this directory.
        steps_per_beat: grid steps per quarter note (4 = 16th notes).
        validation_fraction: share of pieces (by hash of a stable key) in the validation split.
        limit: read only the first ``limit`` items (quick tests).
        num_proc: worker processes for reading.
        cache_dir: where built corpora are cached (default ``$HF_MUSIC_XL_CACHE/corpora`` or
            ``~/.cache/hf_music_xl/corpora``).
        rebuild: ignore a cached build.
        midi_column, note_tempo, streaming: for a dataset source (parquet, save_to_disk, ``hf:``; see
            ``dataset_sources``): the column of MIDI bytes or note tables, the tempo of note tables without one,
            and whether to stream a Hub dataset instead of downloading it first.
    """
    from .dataset_sources import is_dataset_source, open_source

    rows = open_source(source, midi_column, note_tempo, streaming) if is_dataset_source(source) else None
    items = [] if rows else list_items(source)[:limit]
    key = cache_key(source, items, steps_per_beat, limit, validation_fraction, rows and rows.fingerprint())
    cached = Path(cache_dir or default_cache_dir()) / f"{_slug(source)}-{key}"
    if rebuild or not (cached / "dataset_dict.json").exists():
        _build_into(cached, source, items, key, steps_per_beat, validation_fraction, num_proc, rows, limit)
    else:
        logger.info("corpus %s: using the cached build in %s", source, cached)
    if output is not None:
        _copy_corpus(cached, Path(output))
    return load_from_disk(str(cached))


SPLITS = ("train", "validation")


def _build_into(
    target: Path, source, items, key, steps_per_beat, validation_fraction, num_proc, rows=None, limit=None
) -> None:
    """Read, deduplicate and split the pieces, streaming each into an Arrow file of its split on disk (memory
    stays flat however large the corpus), then save the DatasetDict and ``report.json`` into ``target``.
    ``rows``: a ``DatasetSource`` read instead of ``items`` (its pieces may carry the split their source names)."""
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so an interrupted build never leaves a half cache behind.
    partial = target.parent / f".{target.name}.partial-{os.getpid()}"
    rows_dir = target.parent / f".{target.name}.rows-{os.getpid()}"
    for folder in (partial, rows_dir):
        shutil.rmtree(folder, ignore_errors=True)
    rows_dir.mkdir()
    # Small write batches: a batch is the only part of the corpus held in memory (pieces can be long).
    splits = SPLITS + (("test",) if rows and "test" in rows.splits else ())
    writers = {
        name: ArrowWriter(features=FEATURES, path=str(rows_dir / f"{name}.arrow"), writer_batch_size=64)
        for name in splits
    }
    stats = {name: {"pieces": 0, "tokens": 0, "notes": 0} for name in splits}
    seen: dict[str, str] = {}
    skips, duplicates = [], []
    meters = MeterCounts()
    lowest_train = (2.0, -1)  # (split score, row) of the train piece closest to validation
    try:
        readings = rows.read(steps_per_beat, num_proc, limit) if rows else read_items(items, steps_per_beat, num_proc)
        for pieces, skipped in readings:
            skips.extend(skipped)
            for piece in pieces:
                first = first_seen(seen, piece)
                if first is not None:
                    duplicates.append({"source": piece["source"], "same_as": first})
                    continue
                score = split_score(piece["split_key"])
                split = piece.get("split") or ("validation" if score < validation_fraction else "train")
                if split == "train":
                    lowest_train = min(lowest_train, (score, stats["train"]["pieces"]))
                writers[split].write({name: piece[name] for name in FEATURES})
                stats[split]["pieces"] += 1
                stats[split]["tokens"] += len(piece["input_ids"])
                stats[split]["notes"] += piece["n_notes"]
                meters.count(piece["input_ids"])
        for writer in writers.values():
            writer.finalize()
        total = sum(split_stats["pieces"] for split_stats in stats.values())
        if not total:
            raise ValueError(f"{source!r}: no piece could be read ({len(skips)} skipped, see the reasons: {skips[:3]})")
        corpus = DatasetDict({name: Dataset.from_file(str(rows_dir / f"{name}.arrow")) for name in splits})
        if validation_fraction > 0 and not stats["validation"]["pieces"] and total >= 2:
            corpus, stats = _move_to_validation(corpus, stats, lowest_train[1])
        report = {
            "source": source,
            "cache_key": key,
            "encoder_version": ENCODER_VERSION,
            "steps_per_beat": steps_per_beat,
            "pieces_end_with_xxeos": True,
            "split_rule": f"sha1(key) < {validation_fraction} -> validation; key = BWV number for chorales, "
            "content hash otherwise",
            "items_read": rows.rows_read if rows else len(items),
            "pieces_kept": total,
            "skipped": skips,
            "duplicates": duplicates,
            "splits": stats,
            "meters": meters.report(),
            "build_seconds": round(time.perf_counter() - started, 2),
            **(rows.report() if rows else {}),
        }
        corpus.save_to_disk(str(partial))
        (partial / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
    finally:
        shutil.rmtree(rows_dir, ignore_errors=True)
        shutil.rmtree(partial, ignore_errors=True)
    logger.info(
        "corpus %s: %d pieces (%d skipped, %d duplicates) in %.1f s -> %s",
        source,
        total,
        len(skips),
        len(duplicates),
        report["build_seconds"],
        target,
    )


class MeterCounts:
    """How many pieces start in each meter, and how many change meter on the way (the corpus report's "meters")."""

    def __init__(self):
        self.first: dict[str, int] = {}
        self.changing = 0

    def count(self, ids) -> None:
        tokens = np.asarray(ids)[encoding.is_meter(np.asarray(ids))]
        first = encoding.VOCAB[int(tokens[0])].removeprefix("ts") if len(tokens) else "none"
        self.first[first] = self.first.get(first, 0) + 1
        self.changing += bool(len(set(tokens.tolist())) > 1)

    def report(self) -> dict:
        ordered = dict(sorted(self.first.items(), key=lambda item: -item[1]))
        return {"first_meter": ordered, "pieces_changing_meter": self.changing}


def _move_to_validation(corpus: DatasetDict, stats: dict, row: int) -> tuple[DatasetDict, dict]:
    """A small corpus whose hashes picked no validation piece: move the train piece with the lowest score there,
    so that tests and tiny corpora still have one."""
    train = corpus["train"]
    piece = train[row]
    moved = {"pieces": 1, "tokens": len(piece["input_ids"]), "notes": piece["n_notes"]}
    stats = {**stats, "train": {name: stats["train"][name] - moved[name] for name in moved}, "validation": moved}
    rest = train.select([index for index in range(len(train)) if index != row])
    return DatasetDict({**corpus, "train": rest, "validation": train.select([row])}), stats


def _copy_corpus(cached: Path, output: Path) -> None:
    if output.resolve() == cached.resolve():
        return
    if output.exists() and any(output.iterdir()) and not (output / "dataset_dict.json").exists():
        raise ValueError(f"{output} exists and is not a corpus directory: refusing to overwrite it")
    shutil.rmtree(output, ignore_errors=True)
    shutil.copytree(cached, output)


def load_corpus(corpus: str | os.PathLike = DEFAULT_SOURCE, **build_kwargs) -> DatasetDict:
    """A corpus saved by ``build_corpus`` (a directory with ``dataset_dict.json``), or built from a source; several
    joined by commas are loaded each and their splits concatenated."""
    parts = [part.strip() for part in str(corpus).split(",") if part.strip()]
    if len(parts) > 1:
        loaded = [load_corpus(part, **build_kwargs) for part in parts]
        return DatasetDict({name: concatenate_datasets([c[name] for c in loaded]) for name in SPLITS})
    from .dataset_sources import is_dataset_source

    path = Path(corpus).expanduser()
    if (path / "dataset_dict.json").exists() and not is_dataset_source(str(corpus)):
        return load_from_disk(str(path))
    return build_corpus(str(corpus), **build_kwargs)


def read_report(corpus: DatasetDict) -> dict:
    """The ``report.json`` saved next to a corpus loaded from disk ({} if there is none)."""
    for split in corpus.values():
        for cache_file in split.cache_files:
            report = Path(cache_file["filename"]).parent.parent / "report.json"
            if report.exists():
                return json.loads(report.read_text())
    return {}
