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
the deduplication digests and the report's lists are kept on disk too (``build_ledger``); what grows is a folder
source's file list (a few hundred bytes a file; a dataset source lists none). A file that
cannot be read is recorded in ``report.json`` and skipped; the build never stops for it. Files are read in child
processes (``workers``), each with a time limit: a reader that crashes (a segfault, the OOM killer) or hangs is
that file's failure in the report, with the signal or the limit, and the build goes on. Files
with the same content, and pieces with the same tokens, are kept once. The split is a hash of a stable key
per piece (the BWV number for chorales, the content otherwise), so a piece stays on its side of the split
when the corpus grows.

Built once per cache key (source, the files' contents, encoder version, quantization, limit, split fraction) in
``$HF_MUSIC_XL_CACHE`` or ``~/.cache/hf_music_xl/corpora``. Nothing read from music21's corpus may be
committed to this repository: the cache lives outside it.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import DatasetDict, concatenate_datasets, load_from_disk
from tqdm.auto import tqdm

from ..models.music_xl import encoding
from .atomic import Writing, clean_leftovers, replace_folder, scratch
from .corpus_writer import SPLITS, CorpusWriter, PieceBatch, pack
from .workers import map_in_workers

logger = logging.getLogger(__name__)

# Bump whenever the ids produced for the same input change (encoding or corpus rules): it is in the cache key.
# 2: time signature tokens; ABC tunes read through music21 (meters and pickups). 3: the voices column. 4: long rests
# shortened (encoding.MAX_REST_STEPS).
ENCODER_VERSION = "4"
DEFAULT_SOURCE = "bach-chorales"
MIDI_SUFFIXES = (".mid", ".midi")
ABC_SUFFIXES = (".abc",)
SCORE_SUFFIXES = (".krn", ".mxl", ".xml", ".musicxml")  # parsed by music21 (an optional dependency)
# Seconds to read one item (a file; an ABC file's tunes together: 700 folk tunes take about a minute) before it
# counts as hung and its process is stopped; ``build_corpus(time_limit=)``, ``build-corpus --time-limit``.
DEFAULT_TIME_LIMIT = 600.0


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
    stored = ids.astype(np.int16)
    return {
        "input_ids": stored,
        "voices": voices,
        "source": source,
        "name": name,
        "n_notes": n_notes,
        "content_key": content_key,  # for deduplication, not stored
        "tokens_key": hashlib.sha1(stored.tobytes()).digest(),  # likewise, hashed here in the reading process
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


def _read_star(args) -> tuple[PieceBatch, list[dict]]:
    """(pieces packed for the writer, skips) of one item: what a worker sends back."""
    pieces, skips = read_item(*args)
    return pack(pieces), skips


def _failed_item(job, reason: str) -> tuple[PieceBatch, list[dict]]:
    """An item whose reading process died or ran past the time limit: that item's failure, in the report."""
    item, _ = job
    return pack([]), [{"source": item.label, "reason": reason}]


def read_items(items: list[Item], steps_per_beat: int, num_proc: int, time_limit: float | None = DEFAULT_TIME_LIMIT):
    """Yield (pieces, skips) of each item in order, read in ``num_proc`` child processes (at least one), with a
    progress bar. A generator: the caller writes each piece to disk before the next arrive, so memory does not grow
    with the corpus. An item whose process dies (a crash in a reader, the OOM killer) or that takes longer than
    ``time_limit`` seconds is a skip with the reason; the build goes on (see ``workers``)."""
    jobs = [(item, steps_per_beat) for item in items]
    progress = dict(total=len(jobs), desc="reading pieces", unit="file")
    readings = map_in_workers(_read_star, jobs, min(num_proc, len(jobs)), time_limit, _failed_item)
    try:
        yield from tqdm(readings, **progress)
    finally:  # stop the workers now, not when the generator is collected
        readings.close()


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
    """Everything that changes the built corpus: the source and its files' contents (a file changed in place with
    its size and times kept, as ``cp -p`` and ``rsync -a`` do, is a new corpus), the encoder, the quantization.
    ``dataset``: a dataset source's fingerprint (its files, column and layout; ``DatasetSource.fingerprint``)."""
    if dataset is not None:
        files = dataset
    elif source == "bach-chorales" or source.startswith("music21:"):
        from .music21_source import _music21

        files = _music21().__version__  # the bundled files change only with music21's version
    else:
        files = [(item.path, file_digest(item.path)) for item in items]  # 8,000 MIDI files (32 MB): 0.4 s
    described = dict(
        source=source,
        files=files,
        encoder_version=ENCODER_VERSION,
        steps_per_beat=steps_per_beat,
        limit=limit,
        validation_fraction=validation_fraction,
    )
    return _sha1(json.dumps(described, sort_keys=True).encode())[:16]


def file_digest(path: str) -> str:
    """sha1 of a file's bytes, read in blocks."""
    digest = hashlib.sha1()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


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
    time_limit: float | None = DEFAULT_TIME_LIMIT,
) -> DatasetDict:
    """Build (or load from the cache) the corpus of ``source`` and return it memory-mapped from disk.

    Args:
        source: ``bach-chorales``, ``music21:FOLDER``, a directory, a glob or a file (see the module docstring).
        output: also save the DatasetDict and ``report.json`` to this directory.
        steps_per_beat: grid steps per quarter note (4 = 16th notes).
        validation_fraction: share of pieces (by hash of a stable key) in the validation split.
        limit: read only the first ``limit`` items (quick tests).
        num_proc: worker processes for reading (each file is read in a child process, even with 1: a crash in a
            reader or the OOM killer ends that file's reading, recorded in the report, not the build).
        cache_dir: where built corpora are cached (default ``$HF_MUSIC_XL_CACHE/corpora`` or
            ``~/.cache/hf_music_xl/corpora``).
        rebuild: ignore a cached build.
        midi_column, note_tempo, streaming: for a dataset source (parquet, save_to_disk, ``hf:``; see
            ``dataset_sources``): the column of MIDI bytes or note tables, the tempo of note tables without one,
            and whether to stream a Hub dataset instead of downloading it first.
        time_limit: seconds to read one file (or task of dataset rows) before it counts as hung, is stopped and
            recorded as skipped; None: no limit.
    """
    from .dataset_sources import is_dataset_source, open_source

    rows = open_source(source, midi_column, note_tempo, streaming) if is_dataset_source(source) else None
    items = [] if rows else list_items(source)[:limit]
    key = cache_key(source, items, steps_per_beat, limit, validation_fraction, rows and rows.fingerprint())
    cached = Path(cache_dir or default_cache_dir()) / f"{_slug(source)}-{key}"
    clean_leftovers(cached.parent)  # of builds killed before (SIGKILL, power cut): their process is gone
    if rebuild or not (cached / "dataset_dict.json").exists():
        reading = Reading(steps_per_beat, num_proc, time_limit)
        _build_into(cached, source, items, key, reading, validation_fraction, rows, limit)
    else:
        logger.info("corpus %s: using the cached build in %s", source, cached)
    if output is not None:
        _copy_corpus(cached, Path(output))
    return load_from_disk(str(cached))


CACHE_HINT = " (choose another folder with --cache-dir or $HF_MUSIC_XL_CACHE)"


@dataclass(frozen=True)
class Reading:
    """How a build reads its pieces: the grid, the worker processes, the time limit per file."""

    steps_per_beat: int
    num_proc: int
    time_limit: float | None


def _build_into(target: Path, source, items, key, reading: Reading, validation_fraction, rows=None, limit=None) -> None:
    """Read the pieces and stream them into a ``CorpusWriter``, which saves the DatasetDict and ``report.json``
    into ``target``, aside and renamed into place: a build that fails or is killed leaves the old corpus or none.
    ``rows``: a ``DatasetSource`` read instead of ``items`` (its pieces may carry the split their source names)."""
    started = time.perf_counter()
    failure = Writing(f"cannot write the corpus cache in {target.parent}", CACHE_HINT)
    splits = SPLITS + (("test",) if rows and "test" in rows.splits else ())
    with CorpusWriter(target, source, splits, validation_fraction, failure) as writer:
        if rows:
            readings = rows.read(reading.steps_per_beat, reading.num_proc, limit, reading.time_limit)
        else:
            readings = read_items(items, reading.steps_per_beat, reading.num_proc, reading.time_limit)
        with contextlib.closing(readings):  # a write that fails stops the readers at once
            for pieces, skipped in readings:
                writer.add(pieces, skipped)
        head = {
            "source": source,
            "cache_key": key,
            "encoder_version": ENCODER_VERSION,
            "steps_per_beat": reading.steps_per_beat,
            "pieces_end_with_xxeos": True,
            "split_rule": f"sha1(key) < {validation_fraction} -> validation; key = BWV number for chorales, "
            "content hash otherwise",
            "items_read": rows.rows_read if rows else len(items),
        }
        tail = {"build_seconds": round(time.perf_counter() - started, 2), **(rows.report() if rows else {})}
        report = writer.save(head, tail)
    logger.info(
        "corpus %s: %d pieces (%d skipped, %d duplicates) in %.1f s -> %s",
        source,
        report["pieces_kept"],
        report["skipped"],
        report["duplicates"],
        report["build_seconds"],
        target,
    )


def _copy_corpus(cached: Path, output: Path) -> None:
    """Copy the built corpus to ``output`` aside and rename it into place: a full disk leaves the old corpus
    there (or nothing), never a half copy that ``load_corpus`` would fail on."""
    if output.resolve() == cached.resolve():
        return
    if (
        output.exists()
        and not (output / "dataset_dict.json").exists()
        and (not output.is_dir() or any(output.iterdir()))
    ):
        raise ValueError(f"{output} exists and is not a corpus directory: refusing to overwrite it")
    copy = scratch(output, "copy")
    try:
        with Writing(f"cannot write the corpus to {output}"):
            output.parent.mkdir(parents=True, exist_ok=True)
            clean_leftovers(output.parent)
            shutil.copytree(cached, copy)
            replace_folder(copy, output)
    finally:
        shutil.rmtree(copy, ignore_errors=True)


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
