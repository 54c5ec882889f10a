"""Harmony measures on hand-written four-part progressions whose answers are known, and on a real Bach chorale."""

import math

import numpy as np
import pytest

from hf_music_xl import harmony


def chords(*rows, length=4):
    """A note table from block chords, one every ``length`` steps: each row is (given soprano pitch or None, the
    other pitches). The notes are listed in a scrambled order, which the measures must not depend on."""
    onset, pitch, duration, given = [], [], [], []
    for k, (soprano, others) in enumerate(rows):
        for note, is_given in [(soprano, True)] * (soprano is not None) + [(p, False) for p in others]:
            onset.append(k * length)
            pitch.append(note)
            duration.append(length)
            given.append(is_given)
    order = np.random.default_rng(0).permutation(len(onset))
    return tuple(np.asarray(column)[order] for column in (onset, pitch, duration, given))


def voices_of(*rows):
    return harmony.sonorities(*chords(*rows))[0]


def test_sonorities_assign_voices_by_rank():
    voices, times = harmony.sonorities(*chords((72, [60, 67, 48]), (72, [64, 50, 55, 60, 43]), (None, [62, 47])))
    assert times.tolist() == [0, 4, 8]
    assert voices.tolist() == [
        [72, 67, 60, 48],
        [72, 64, 60, 43],  # five lower notes: the lowest is the bass, the middle ones below the tenor are left out
        [-1, 62, -1, 47],  # no given note: no soprano; two lower notes: the alto and the bass
    ]
    assert voices_of((72, [48])).tolist() == [[72, -1, -1, 48]]  # a lone lower note is the bass


def test_a_held_note_sounds_at_later_onsets():
    # the soprano holds a half note over the lower voices' two quarters
    onset, pitch, duration = [0, 0, 0, 0, 4, 4, 4], [72, 64, 55, 48, 65, 57, 50], [8, 4, 4, 4, 4, 4, 4]
    voices, times = harmony.sonorities(onset, pitch, duration, np.arange(7) == 0)
    assert times.tolist() == [0, 4]
    assert voices.tolist() == [[72, 64, 55, 48], [72, 65, 57, 50]]


def test_parallel_fifth_between_soprano_and_bass_counted_once():
    # G4/C3 to A4/D3: a fifth (plus an octave) both times, both up; the alto goes up a step, the tenor down
    voices = voices_of((67, [64, 55, 48]), (69, [65, 53, 50]))
    fifths, octaves = harmony.parallels(voices)
    assert fifths[harmony.SOPRANO, harmony.BASS] == 1
    assert fifths.sum() == 1
    assert octaves.sum() == 0  # alto-tenor reach an octave (E4/G3 to F4/F3) from a sixth: no parallel


def test_contrary_fifths_are_not_parallel():
    # G4/C3 to D4/G3: a fifth both times, but the soprano falls as the bass rises
    fifths, octaves = harmony.parallels(voices_of((67, [64, 52, 48]), (62, [59, 59, 55])))
    assert fifths.sum() == 0 and octaves.sum() == 0


def test_a_held_or_repeated_voice_is_not_parallel():
    # the soprano holds G4 as a half note while the bass drops an octave (C3 to C2): fifths both times
    onset, pitch, duration = [0, 0, 0, 0, 4, 4, 4], [67, 64, 55, 48, 64, 55, 36], [8, 4, 4, 4, 4, 4, 4]
    voices, _ = harmony.sonorities(onset, pitch, duration, np.arange(7) == 0)
    assert voices[:, harmony.SOPRANO].tolist() == [67, 67]
    assert harmony.parallels(voices)[0].sum() == 0
    # and a note struck again at the same pitch is no motion either
    repeated = voices_of((67, [64, 55, 48]), (67, [64, 55, 36]))
    assert harmony.parallels(repeated)[0].sum() == 0
    # while soprano and bass leaping up an octave together, a fifth apart, make parallel fifths
    fifths, _ = harmony.parallels(voices_of((67, [64, 55, 48]), (79, [76, 72, 60])))
    assert fifths[harmony.SOPRANO, harmony.BASS] == 1 and fifths.sum() == 1


def test_parallel_octaves_and_unisons():
    # soprano and bass an octave apart, both up a step; alto and tenor in unison, both up a step
    fifths, octaves = harmony.parallels(voices_of((72, [60, 60, 48]), (74, [62, 62, 50])))
    assert octaves[harmony.SOPRANO, harmony.BASS] == 1
    assert octaves[harmony.ALTO, harmony.TENOR] == 1
    assert octaves[harmony.ALTO, harmony.BASS] == 1 and octaves[harmony.TENOR, harmony.BASS] == 1
    assert octaves.sum() == 6  # every pair is an octave or a unison here
    assert fifths.sum() == 0


def test_a_generated_note_above_the_melody_is_a_crossing():
    voices = voices_of((67, [72, 60, 48]), (67, [67, 60, 48]), (None, [72, 48]))
    assert harmony.crossings(voices) == 1  # the unison is no crossing, nor a note above an absent soprano


def test_range_share():
    # the soprano above A5, the bass below E2 in the first chord; all inside in the second; no tenor in the third
    voices = voices_of((84, [60, 50, 38]), (72, [62, 55, 48]), (72, [62, 48]))
    share = harmony.range_share(voices)
    assert share[harmony.SOPRANO] == pytest.approx(2 / 3)
    assert share[harmony.ALTO] == 1.0
    assert share[harmony.TENOR] == 1.0
    assert share[harmony.BASS] == pytest.approx(2 / 3)
    assert np.isnan(harmony.range_share(voices_of((72, [48])))[harmony.TENOR])  # never sounds


def test_spacing_share():
    # G5 over E4 is more than an octave; C5/E4/G3 is close; E4 over C3 (alto-bass) is not checked
    voices = voices_of((79, [64, 55, 48]), (72, [64, 55, 48]), (None, [64, 48]))
    assert harmony.spacing_share(voices) == pytest.approx(1 / 2)


def test_key_of_a_major_scale_and_of_a_minor_passage():
    assert harmony.estimate_key([60, 62, 64, 65, 67, 69, 71, 72], [4] * 8) == (0, "major")
    a_harmonic_minor = [69, 71, 72, 74, 76, 77, 80, 81]
    assert harmony.estimate_key(a_harmonic_minor, [4] * 8) == (9, "minor")
    # the same notes with the tonic and dominant of C long: the durations weigh in
    c_weighted = [60, 62, 64, 65, 67, 69, 71, 72], [16, 2, 8, 2, 16, 2, 2, 16]
    assert harmony.estimate_key(*c_weighted) == (0, "major")


def test_in_key_share_of_a_chromatic_passage():
    chromatic = np.arange(60, 72)
    assert harmony.in_key_share(chromatic, (0, "major")) == pytest.approx(7 / 12)
    assert harmony.in_key_share(chromatic, (9, "minor")) == pytest.approx(9 / 12)  # natural minor, raised 6th, 7th
    assert harmony.in_key_share(chromatic + 12, (2, "major")) == pytest.approx(7 / 12)  # octaves do not matter


def test_harmony_report_of_one_bar():
    table = chords((67, [64, 55, 48]), (69, [65, 53, 50]), (71, [62, 55, 43]), (72, [64, 55, 48]))
    report = harmony.harmony_report(*table)
    assert report["bars"] == 1
    assert report["key"] == (0, "major")
    assert report["parallel_fifths_per_bar"] == 1.0  # G4/C3 to A4/D3
    assert report["parallel_octaves_per_bar"] == 0.0
    assert report["crossings_per_bar"] == 0.0
    assert report["generated_notes_per_bar"] == 12.0
    assert report["in_key_share"] == 1.0
    assert report["range_share"] == 1.0 and report["spacing_share"] == 1.0
    # a key given instead: of these pitch classes F# major has only F (its E#), the alto's and the tenor's
    assert harmony.harmony_report(*table, key=(6, "major"))["in_key_share"] == pytest.approx(2 / 12)


def test_bars_run_from_the_first_onset_to_the_last_note_end():
    onset, pitch, duration, given = chords((67, [48]), (69, [50]), length=16)
    assert harmony.harmony_report(onset + 16, pitch, duration, given)["bars"] == 2  # bars 1 and 2
    assert harmony.harmony_report(onset, pitch, duration, given, bar_steps=12)["bars"] == 3  # 3/4: ends in bar 3


def test_pooled_divides_summed_counts_by_summed_bars():
    one_bar = harmony.harmony_report(*chords((67, [64, 55, 48]), (69, [65, 53, 50])))  # one fifth, 1 bar
    onset, pitch, duration, given = chords((72, [64, 55, 48]), (74, [65, 53, 47]), (76, [60, 55, 48]), length=16)
    three_bars = harmony.harmony_report(onset, pitch + (pitch == 65), duration, given)  # F# in C: 8 of 9 in key
    assert three_bars["parallel_fifths_per_bar"] == 0.0 and three_bars["bars"] == 3
    both = harmony.pooled([one_bar, three_bars])
    assert both["bars"] == 4
    assert both["parallel_fifths_per_bar"] == pytest.approx(1 / 4)  # not the mean of 1 and 0
    assert both["generated_notes_per_bar"] == pytest.approx((6 + 9) / 4)
    assert both["in_key_share"] == pytest.approx((6 + 8) / 15)  # by notes, not by piece
    assert both["counts"]["sounding"] == [5, 5, 5, 5]
    assert harmony.pooled([one_bar]) == {key: value for key, value in one_bar.items() if key != "key"}


def test_bach_chorale():
    pytest.importorskip("music21", reason="the real chorale comes from music21's corpus")
    from hf_music_xl.data.music21_source import bach_chorale_paths, read_music21

    path = next(path for path in bach_chorale_paths() if path.name == "bwv10.7.mxl")
    score = read_music21(path)
    onset, pitch, duration, given = harmony.score_note_table(score)
    assert given.sum() == len(score.tracks[0].notes)  # the soprano's notes, and only they, are given
    report = harmony.score_report(score)
    assert report == harmony.harmony_report(onset, pitch, duration, given, bar_steps=16)  # 4/4
    assert report["key"] == (7, "minor")  # G minor: two flats, and music21's own key analysis says so
    assert report["parallel_fifths_per_bar"] < 0.3
    assert report["parallel_octaves_per_bar"] < 0.3
    assert report["crossings_per_bar"] < 0.1
    assert report["range_share"] > 0.8 and report["range_soprano"] > 0.8
    assert report["spacing_share"] > 0.8
    assert report["in_key_share"] > 0.8
    assert 4 <= report["generated_notes_per_bar"] <= 12  # three voices in quarters and eighths, 4/4
    assert not any(isinstance(value, float) and math.isnan(value) for value in report.values())
