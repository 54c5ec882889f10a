"""Real music from the corpus bundled with the installed music21 package, as ``symusic.Score`` objects.

Pieces are parsed with ``forceSource=True`` (otherwise music21 writes pickles into a shared cache) and read
straight from the parsed parts: music21's own MIDI writer is slow, expands repeats and fails on some files.
Nothing read here is ever written into this repository: the music is read from the installed package at run
time (its encodings are shared "with permission", some non-commercially).
"""

from __future__ import annotations

import re
from pathlib import Path

import symusic

TICKS_PER_QUARTER = 480
SATB = ("soprano", "alto", "tenor", "bass")


def _music21():
    try:
        import music21
    except ImportError as error:  # an optional dependency: say how to get it
        raise ImportError("reading the music21 corpus needs music21: pip install 'hf_music_xl[music21]'") from error
    return music21


def bach_chorale_paths() -> list[Path]:
    """The Bach chorale files of music21's corpus (Riemenschneider numbering, duplicates removed), sorted."""
    music21 = _music21()
    root = Path(music21.common.getCorpusFilePath())
    names = music21.corpus.chorales.Iterator(1, 371, numberingSystem="riemenschneider", returnType="filename")
    paths = set()
    for name in names:  # 'bach/bwv269'; corpus.getWork would match 'bwv244.3' to 'bwv244.32' too
        # The iterator's names are stems, except one truncated name ('bwv18.5-l' for 'bwv18.5-lz').
        stem = root / name
        existing = sorted(stem.parent.glob(stem.name + "*.mxl")) or sorted(stem.parent.glob(stem.name + "*.krn"))
        paths.update(existing[:1])
    return sorted(paths, key=lambda path: path.name)


def bwv_number(path: str | Path) -> str:
    """'bwv153.1.mxl' -> '153.1'."""
    match = re.match(r"bwv(\d+[a-z]?(?:\.\d+)?)", Path(path).name, re.IGNORECASE)
    return match.group(1) if match else Path(path).stem


def _part_name(part) -> str:
    return str(part.partName or part.id or "").lower()


def choose_parts(stream) -> list:
    """The four voices of a chorale when they are named (other parts double them on instruments); else all."""
    parts = list(stream.parts) or [stream]
    voices = [part for part in parts if _part_name(part).startswith(SATB)]
    return voices if len(voices) == len(SATB) else parts


def pickup_quarters(part) -> float:
    """Quarter notes missing from an opening pickup bar, so that bar 1 can start on a bar line."""
    measures = part.getElementsByClass("Measure")
    return float(measures[0].paddingLeft) if len(measures) else 0.0


def stream_to_score(stream, align_pickup: bool = True) -> symusic.Score:
    """One track per part; tied notes merged; chords split into notes; the time signatures of the first part.
    With ``align_pickup`` the piece is delayed by the missing part of an opening pickup bar, so bar lines count
    from a real bar line (the first time signature stays at 0: the pickup is the end of a full first bar)."""
    parts = choose_parts(stream)
    shift = pickup_quarters(parts[0]) if align_pickup else 0.0
    score = symusic.Score(TICKS_PER_QUARTER)
    for meter in parts[0].recurse().getElementsByClass("TimeSignature"):  # (flatten() can miss a measure's own)
        offset = float(meter.getOffsetInHierarchy(parts[0]))
        start = round((offset + shift) * TICKS_PER_QUARTER) if offset > 0 else 0
        score.time_signatures.append(symusic.TimeSignature(start, int(meter.numerator), int(meter.denominator)))
    for part in parts:
        track = symusic.Track(_part_name(part) or "part", 0, False)
        for element in part.flatten().stripTies().notes:
            start = round((float(element.offset) + shift) * TICKS_PER_QUARTER)
            length = round(float(element.quarterLength) * TICKS_PER_QUARTER)
            for pitch in element.pitches:
                track.notes.append(symusic.Note(start, length, int(pitch.midi), 80))
        score.tracks.append(track)
    return score


def read_music21(path: str | Path, align_pickup: bool = True) -> symusic.Score:
    """Parse one file of the music21 corpus (or any file music21 reads) into a ``symusic.Score``."""
    stream = _music21().converter.parse(str(path), forceSource=True)
    return stream_to_score(stream, align_pickup=align_pickup)


def read_abc_tune(text: str, align_pickup: bool = True) -> symusic.Score:
    """One ABC tune (its text, with the file header) into a ``symusic.Score``, through music21, which knows its
    meter changes and its pickup bar (symusic's abc2midi loses where the bars fall)."""
    stream = _music21().converter.parse(text, format="abc", forceSource=True)
    return stream_to_score(stream, align_pickup=align_pickup)
