"""The measures a harmony teacher checks on a four-part (chorale-style) texture, to compare sampled harmonizations
of a melody with Bach's own chorales on the same measures.

The input is a note table on the package's grid (``onset``, ``pitch``, ``duration`` in steps, 4 per quarter note)
and ``given``: True for the notes of the given melody (the soprano). The generated voices carry no labels (the model
writes alto, tenor and bass merged), so the voices are found the same way for a sample and for Bach, by rank: at
every onset time the given note sounding is the soprano; of the other sounding notes the lowest is the bass, the
highest the alto and the next the tenor. When more than three sound, the extra middle ones take part in no
voice-pair rule; when fewer sound, the bass comes first and the tenor goes first (two notes: alto and bass; one:
the bass). That is what Bach's parts do: the generated voices reach the model merged, where two parts in unison at
one onset are one note, and in the first 40 chorales 155 of the 157 sonorities with two lower notes are a unison
of the tenor with the bass or the alto, all four parts sounding, and the two with one lower note are the bass.

- parallels: parallel perfect fifths and octaves (or unisons) between any two voices from one sonority to the next:
  both voices move, in the same direction, and the interval mod 12 is 7 (or 0) before and after;
- crossings: sonorities where a generated note sounds above the given melody note (by rank, the only crossing
  that can be seen);
- range share: each voice's pitches (one per sonority it sounds in) inside its range: soprano C4-A5, alto G3-D5,
  tenor C3-G4, bass E2-C4;
- spacing share: sonorities where soprano-alto and alto-tenor are each within an octave;
- in-key share: generated notes whose pitch class belongs to the key (estimated by the Krumhansl-Schmuckler
  profiles from all notes, unless given); in minor the raised 6th and 7th count as in the key.

``harmony_report`` gives these per bar (or as shares) for one piece, with the counts behind them, so that
``pooled`` can add the counts of several pieces and compare 16 samples with 16 chorales as two pools.
"""

from __future__ import annotations

import numpy as np
import symusic

from .models.music_xl import encoding

VOICES = ("soprano", "alto", "tenor", "bass")
SOPRANO, ALTO, TENOR, BASS = range(4)
ABSENT = -1
# (lowest, highest) MIDI pitch of each voice, inclusive: the ranges of the harmony textbooks
RANGES = np.array([[60, 81], [55, 74], [48, 67], [40, 60]])
OCTAVE = 12
# (upper, lower) voice of each of the six pairs
PAIRS = np.array([(upper, lower) for upper in range(4) for lower in range(upper + 1, 4)])

# Krumhansl-Kessler key profiles (probe-tone ratings of each scale degree from the tonic), as Krumhansl-Schmuckler
# key finding correlates them with a piece's duration-weighted pitch-class histogram.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
MODES = ("major", "minor")
# scale degrees (semitones above the tonic) that count as in the key: minor has natural, harmonic and melodic
# minor's degrees, since a chorale in minor raises the 6th and 7th as a matter of course
KEY_STEPS = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 9, 10, 11)}


# ----------------------------------------------------------------------------------------------------------
# Voices by rank


def sonorities(onset, pitch, duration, given) -> tuple[np.ndarray, np.ndarray]:
    """(voices, times): at each distinct onset time (``times``, sorted), the pitch of each voice among the notes
    sounding then (onset <= t < onset + duration): ``voices`` is int64 [n_times, 4], soprano, alto, tenor, bass,
    -1 where a voice is absent. The soprano is the given note sounding (the highest, should two be given); of the
    others the lowest is the bass, the highest of two or more the alto, the second of three or more the tenor."""
    onset, pitch, duration = (np.asarray(column, dtype=np.int64) for column in (onset, pitch, duration))
    given = np.asarray(given, dtype=bool)
    times = np.unique(onset)
    voices = np.full((len(times), 4), ABSENT, dtype=np.int64)
    if not len(times):
        return voices, times

    # Each note sounds at a contiguous run of onset times, from its own to the last before its end: expand the
    # table into one (time, note) pair per note per time it sounds at, without a times x notes matrix.
    first = np.searchsorted(times, onset)
    span = np.searchsorted(times, onset + duration) - first
    note = np.repeat(np.arange(len(onset)), span)
    time = np.repeat(first - np.cumsum(span) + span, span) + np.arange(span.sum())

    top = given[note]
    np.maximum.at(voices[:, SOPRANO], time[top], pitch[note[top]])

    time, note = time[~top], note[~top]
    order = np.lexsort((-pitch[note], time))  # by time, then highest first
    time, lower_pitch = time[order], pitch[note[order]]
    per_time = np.bincount(time, minlength=len(times))
    rank = np.arange(len(time)) - (np.cumsum(per_time) - per_time)[time]  # 0 for the highest at its time
    count = per_time[time]  # lower notes sounding with each
    for voice, which in (
        (ALTO, (rank == 0) & (count >= 2)),
        (TENOR, (rank == 1) & (count >= 3)),
        (BASS, rank == count - 1),
    ):
        voices[time[which], voice] = lower_pitch[which]
    return voices, times


# ----------------------------------------------------------------------------------------------------------
# The rules, on voices [n_times, 4]


def parallels(voices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fifths, octaves): int64 [4, 4] counts of parallel perfect fifths and of parallel octaves or unisons from
    one sonority to the next, at [upper voice, lower voice]. Parallel: both voices sound at both sonorities, both
    move, in the same direction, and their interval mod 12 is 7 (fifths) or 0 (octaves) at both. A voice that
    holds or repeats its pitch does not move, so it makes no parallel."""
    upper, lower = voices[:, PAIRS[:, 0]], voices[:, PAIRS[:, 1]]  # [n_times, 6]
    present = (upper >= 0) & (lower >= 0)
    both = present[:-1] & present[1:]
    step_upper, step_lower = np.sign(np.diff(upper, axis=0)), np.sign(np.diff(lower, axis=0))
    similar = both & (step_upper != 0) & (step_upper == step_lower)
    interval = np.abs(upper - lower) % OCTAVE  # abs: a crossed pair still makes its fifth
    fifths, octaves = np.zeros((4, 4), np.int64), np.zeros((4, 4), np.int64)
    for counts, size in ((fifths, 7), (octaves, 0)):
        kept = similar & (interval[:-1] == size) & (interval[1:] == size)
        counts[PAIRS[:, 0], PAIRS[:, 1]] = kept.sum(axis=0)
    return fifths, octaves


def crossings(voices: np.ndarray) -> int:
    """Sonorities where a generated note sounds above the given melody note. The alto is the highest generated
    note, so this is the alto above the soprano; a unison is no crossing."""
    soprano, alto = voices[:, SOPRANO], voices[:, ALTO]
    return int(((soprano >= 0) & (alto > soprano)).sum())


def range_counts(voices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inside, sounding): int64 [4] per voice, the sonorities where it sounds inside its range, and where it
    sounds at all."""
    sounding = voices >= 0
    inside = sounding & (voices >= RANGES[:, 0]) & (voices <= RANGES[:, 1])
    return inside.sum(axis=0), sounding.sum(axis=0)


def range_share(voices: np.ndarray) -> np.ndarray:
    """float [4]: each voice's share of its pitches (one per sonority it sounds in) inside its range; NaN for a
    voice that never sounds."""
    inside, sounding = range_counts(voices)
    return inside / np.where(sounding > 0, sounding, np.nan)


def spacing_counts(voices: np.ndarray) -> tuple[int, int]:
    """(spaced, checked): of the sonorities where soprano-alto or alto-tenor both sound (``checked``), those where
    every such pair is within an octave (``spaced``)."""
    upper, lower = voices[:, [SOPRANO, ALTO]], voices[:, [ALTO, TENOR]]
    present = (upper >= 0) & (lower >= 0)
    wide = present & (np.abs(upper - lower) > OCTAVE)
    checked = present.any(axis=1)
    return int((checked & ~wide.any(axis=1)).sum()), int(checked.sum())


def spacing_share(voices: np.ndarray) -> float:
    """Share of sonorities whose adjacent upper voices (soprano-alto, alto-tenor) are within an octave, of those
    where at least one of the pairs sounds; NaN when none does."""
    spaced, checked = spacing_counts(voices)
    return spaced / checked if checked else float("nan")


# ----------------------------------------------------------------------------------------------------------
# Key


def estimate_key(pitch, duration) -> tuple[int, str]:
    """(tonic pitch class 0..11, 'major' or 'minor'): the Krumhansl-Schmuckler key, the rotation of the major and
    minor profiles that correlates best with the duration-weighted pitch-class histogram."""
    pitch, duration = np.asarray(pitch, dtype=np.int64), np.asarray(duration, dtype=np.float64)
    if not len(pitch):
        raise ValueError("estimate_key needs at least one note")
    histogram = np.bincount(pitch % 12, weights=duration, minlength=12)
    # row 12 * mode + tonic: the profile with its tonic moved to pitch class ``tonic``
    profiles = np.array([np.roll(profile, tonic) for profile in (MAJOR_PROFILE, MINOR_PROFILE) for tonic in range(12)])
    best = int(np.argmax(_correlations(profiles, histogram)))
    return best % 12, MODES[best // 12]


def _correlations(rows: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row with ``vector``; 0 where ``vector`` is constant (one pitch class each)."""
    rows, vector = rows - rows.mean(axis=1, keepdims=True), vector - vector.mean()
    scale = np.linalg.norm(rows, axis=1) * np.linalg.norm(vector)
    return rows @ vector / np.where(scale > 0, scale, 1.0)


def key_pitch_classes(key: tuple[int, str]) -> np.ndarray:
    """bool [12]: the pitch classes in ``key`` ((tonic, mode), as ``estimate_key`` returns)."""
    tonic, mode = key
    inside = np.zeros(12, dtype=bool)
    inside[(tonic + np.array(KEY_STEPS[mode])) % 12] = True
    return inside


def in_key_share(pitch, key: tuple[int, str]) -> float:
    """Share of the notes whose pitch class is in ``key``; NaN for no notes."""
    pitch = np.asarray(pitch, dtype=np.int64)
    return float(key_pitch_classes(key)[pitch % 12].mean()) if len(pitch) else float("nan")


# ----------------------------------------------------------------------------------------------------------
# One piece, and several pooled


def harmony_counts(onset, pitch, duration, given, bar_steps: int = 16, key=None) -> dict:
    """The counts behind ``harmony_report``: what ``pooled`` adds up across pieces."""
    onset, pitch, duration = (np.asarray(column, dtype=np.int64) for column in (onset, pitch, duration))
    given = np.asarray(given, dtype=bool)
    if not len(onset):
        raise ValueError("harmony_counts needs at least one note")
    voices, _ = sonorities(onset, pitch, duration, given)
    fifths, octaves = parallels(voices)
    inside, sounding = range_counts(voices)
    spaced, checked = spacing_counts(voices)
    key = estimate_key(pitch, duration) if key is None else key
    generated = pitch[~given]
    end = int((onset + duration).max())
    return {
        # from the bar of the first onset to the bar in which the last note ends
        "bars": (end - 1) // bar_steps - int(onset.min()) // bar_steps + 1,
        "sonorities": len(voices),
        "parallel_fifths": int(fifths.sum()),
        "parallel_octaves": int(octaves.sum()),
        "crossings": crossings(voices),
        "spaced": spaced,
        "spacing_checked": checked,
        "in_range": inside.tolist(),
        "sounding": sounding.tolist(),
        "generated_notes": len(generated),
        "generated_in_key": int(key_pitch_classes(key)[generated % 12].sum()),
    }


def _share(part, whole) -> float:
    return part / whole if whole else float("nan")


def rates(counts: dict) -> dict:
    """Per-bar rates and shares from counts (one piece's or several pieces' summed), with the counts under
    ``"counts"``. ``range_share`` is the alto, tenor and bass together: the soprano is the given melody, the same
    in a sample and in Bach (its own share is ``range_soprano``)."""
    bars = counts["bars"]
    inside, sounding = counts["in_range"], counts["sounding"]
    report = {
        "bars": bars,
        "parallel_fifths_per_bar": counts["parallel_fifths"] / bars,
        "parallel_octaves_per_bar": counts["parallel_octaves"] / bars,
        "crossings_per_bar": counts["crossings"] / bars,
        "spacing_share": _share(counts["spaced"], counts["spacing_checked"]),
        **{f"range_{voice}": _share(inside[k], sounding[k]) for k, voice in enumerate(VOICES)},
        "range_share": _share(sum(inside[ALTO:]), sum(sounding[ALTO:])),
        "in_key_share": _share(counts["generated_in_key"], counts["generated_notes"]),
        "generated_notes_per_bar": counts["generated_notes"] / bars,
    }
    return {**report, "counts": counts}


def harmony_report(onset, pitch, duration, given, bar_steps: int = 16, key=None) -> dict:
    """The harmony measures of one piece: parallel fifths, parallel octaves and crossings per bar, spacing share,
    range share per voice and of the generated voices, in-key share of the generated notes (``key`` as
    (tonic, mode), estimated from all notes when None), generated notes per bar, bars; the counts under
    ``"counts"`` and the key under ``"key"``."""
    if key is None:
        key = estimate_key(pitch, duration)
    counts = harmony_counts(onset, pitch, duration, given, bar_steps, key)
    return {**rates(counts), "key": key}


def pooled(reports: list[dict]) -> dict:
    """Several pieces' reports as one: their counts summed, then divided by the total bars or notes, so that a
    long piece weighs as much as its bars."""
    if not reports:
        raise ValueError("pooled needs at least one report")
    counts = [report["counts"] for report in reports]
    total = {name: sum(piece[name] for piece in counts) for name in counts[0] if not isinstance(counts[0][name], list)}
    for name in ("in_range", "sounding"):
        total[name] = np.sum([piece[name] for piece in counts], axis=0).tolist()
    return rates(total)


def score_note_table(score: symusic.Score, steps_per_beat: int = encoding.STEPS_PER_BEAT) -> tuple[np.ndarray, ...]:
    """(onset, pitch, duration, given) of a score whose first track is the given melody: each part on the grid as
    ``encoding.score_to_notes`` puts it, the other tracks merged into one (a unison of two of them is one note, as
    the model would write it)."""
    melody = encoding.score_to_notes(_with_tracks(score, score.tracks[:1]), steps_per_beat)
    others = encoding.score_to_notes(_with_tracks(score, score.tracks[1:]), steps_per_beat)
    onset = np.concatenate([melody.onset, others.onset])
    pitch = np.concatenate([melody.pitch, others.pitch])
    duration = np.concatenate([melody.duration, others.duration])
    return onset, pitch, duration, np.arange(len(onset)) < len(melody)


def score_report(score: symusic.Score, key=None) -> dict:
    """``harmony_report`` of a score whose first track is the given melody (Bach's soprano, as
    ``data.music21_source.read_music21`` reads a chorale), bars as long as its first time signature's."""
    meters = encoding.score_meters(score)
    bar_steps = encoding.bar_steps(int(meters[0, 1]), int(meters[0, 2]))
    return harmony_report(*score_note_table(score), bar_steps=bar_steps, key=key)


def _with_tracks(score: symusic.Score, tracks) -> symusic.Score:
    part = symusic.Score(score.ticks_per_quarter)
    part.time_signatures = score.time_signatures.copy()
    for track in tracks:
        part.tracks.append(track)
    return part
