"""A corpus build over a folder mixing good MIDI files with every bad-MIDI case of test_bad_midi.py: every good
file lands, every bad one is in the report with its reason, and the counts add up."""

import json
import shutil

import numpy as np
from test_bad_midi import test_odd_but_usable_files_encode_sensibly as odd_cases_test
from test_bad_midi import test_unusable_files_raise_one_error_naming_the_file as unusable_cases_test

from hf_music_xl.data.corpus import build_corpus
from hf_music_xl.models.music_xl import encoding


def parametrized(test) -> list[tuple]:
    """The cases of a parametrized test, so both files test the same inputs."""
    return next(mark for mark in test.pytestmark if mark.name == "parametrize").args[1]


UNUSABLE = parametrized(unusable_cases_test)  # (name, bytes, problem)
ODD = parametrized(odd_cases_test)  # (bytes, expected tokens): usable, so they must land


def test_mixed_folder_every_good_file_lands_every_bad_one_is_reported(chorale_midi_files, tmp_path):
    folder = tmp_path / "mixed"
    (folder / "bad").mkdir(parents=True)
    (folder / "odd").mkdir()
    good = {}
    for path in chorale_midi_files[:5]:
        shutil.copy(path, folder / path.name)
        good[path.name] = encoding.encode_midi(path, add_eos=True)
    for name, data, _ in UNUSABLE:
        (folder / "bad" / name).write_bytes(data)
    for index, (data, _) in enumerate(ODD):
        (folder / "odd" / f"odd{index}.mid").write_bytes(data)
        good[f"odd/odd{index}.mid"] = encoding.encode_midi(data, add_eos=True)
    (folder / "readme.txt").write_text("not a music file: not an item")

    built = build_corpus(str(folder), output=tmp_path / "out", cache_dir=tmp_path / "cache", num_proc=2)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    rows = {row["source"]: row for split in built.values() for row in split}

    # the counts add up: every file seen is a piece, a skip or a duplicate of a piece, and nothing twice
    seen = len(chorale_midi_files[:5]) + len(UNUSABLE) + len(ODD)
    assert report["items_read"] == seen
    accounted = [
        *rows,
        *(skip["source"] for skip in report["skipped"]),
        *(dup["source"] for dup in report["duplicates"]),
    ]
    assert sorted(accounted) == sorted(set(accounted)) and len(accounted) == seen
    assert report["pieces_kept"] == len(rows) == sum(split["pieces"] for split in report["splits"].values())

    # every bad file is reported with the problem the encoder names
    reasons = {skip["source"]: skip["reason"] for skip in report["skipped"]}
    assert set(reasons) == {f"bad/{name}" for name, _, _ in UNUSABLE}
    for name, _, problem in UNUSABLE:
        assert reasons[f"bad/{name}"].startswith("MidiReadError: ") and problem in reasons[f"bad/{name}"], reasons[
            f"bad/{name}"
        ]
        assert name in reasons[f"bad/{name}"]  # the message names the file

    # every good (or odd but usable) file landed with its own tokens, or as a duplicate of a piece that did
    duplicates = {dup["source"]: dup["same_as"] for dup in report["duplicates"]}
    for source, ids in good.items():
        kept = rows.get(source) or rows[duplicates[source]]
        np.testing.assert_array_equal(kept["input_ids"], ids)
    assert {source for source in good if source not in rows} == set(duplicates)  # odd cases sharing tokens
