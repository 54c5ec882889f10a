"""The MIDI side of the tasks (``tasks_music_xl.py``): which track of a file is the melody, and the file a task
returns: the input's own notes kept as they are (same tracks, ticks, velocities; its tempos and time signatures)
with the generated notes added as a new track, at the input's ticks per quarter.

This file is copied next to saved weights (the pipeline imports it), so it may import only torch, transformers,
numpy, symusic and its sibling files, and does nothing at import time beyond defining things.
"""

import numpy as np
import symusic

from .encoding import DEFAULT_VELOCITY, Notes, notes_to_score, quantize
from .tasks_music_xl import melody_voice


def melody_track(score: symusic.Score, choice: str | int | None, notes: Notes) -> int:
    """The index in ``score.tracks`` of the melody to harmonize: the track named ``choice``, else the one at index
    ``choice`` (an int, or digits); by default the voice the model learnt as the melody (``melody_voice``: the
    highest by mean pitch), or the only one. ``notes`` are ``read_notes``'s of the score (voices: non-drum tracks
    in order). Raises ValueError naming the tracks there are."""
    tracks = list(score.tracks)
    non_drum = [index for index, track in enumerate(tracks) if not track.is_drum]
    if choice is None:
        voice = melody_voice(notes)
        return non_drum[int(notes.voice[0]) if voice is None else voice]  # None: one voice plays
    named = [index for index, track in enumerate(tracks) if track.name == choice]
    if named:
        return named[0]
    listing = ", ".join(f"{index}: {track.name!r}" for index, track in enumerate(tracks))
    if not (isinstance(choice, int) or str(choice).isdigit()):
        raise ValueError(f"no track named {choice!r}; the tracks are {listing}")
    index = int(choice)
    if index >= len(tracks) or tracks[index].is_drum or not len(tracks[index].notes):
        raise ValueError(f"track {index} is not a track with notes to harmonize; the tracks are {listing}")
    return index


def with_tracks(score: symusic.Score, indices: list[int]) -> symusic.Score:
    """A copy of ``score`` (its tempos, time signatures, key signatures and markers) with only these tracks."""
    kept = score.copy()
    kept.tracks.clear()
    for index in indices:
        kept.tracks.append(score.tracks[index].copy())
    return kept


def without_span(score: symusic.Score, start: int, end: int, steps_per_beat: int) -> symusic.Score:
    """A copy of ``score`` without the notes an infilling of grid steps ``[start, end)`` replaces: the notes of
    non-drum tracks whose onset, quantized as ``read_notes`` quantizes it, falls in the span. Every other note
    stays as it is; drum tracks stay whole (the model neither reads nor writes drums)."""
    kept = score.copy()
    for track in kept.tracks:
        if track.is_drum or not len(track.notes):
            continue
        columns = track.notes.numpy()  # time, duration, pitch, velocity
        onset = np.maximum(quantize(columns["time"], score.ticks_per_quarter, steps_per_beat), 0)
        keep = (onset < start) | (onset >= end)
        track.notes = symusic.Note.from_numpy(**{name: column[keep] for name, column in columns.items()})
    return kept


def with_generated(score: symusic.Score, notes: Notes, name: str, steps_per_beat: int) -> symusic.Score:
    """A copy of ``score`` with ``notes`` (on the grid) added as a track named ``name``, at the score's ticks per
    quarter (a grid step is ``ticks_per_quarter / steps_per_beat`` ticks); notes overlapping one of the same pitch
    go to further tracks, as ``notes_to_score`` writes them."""
    generated = notes_to_score(notes, steps_per_beat, score.ticks_per_quarter, DEFAULT_VELOCITY)
    out = score.copy()
    for layer, track in enumerate(generated.tracks):
        track.name = name if layer == 0 else f"{name} (overlap {layer})"
        out.tracks.append(track)
    return out


__all__ = ["melody_track", "with_generated", "with_tracks", "without_span"]
