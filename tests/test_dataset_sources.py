"""Corpus sources that are `datasets` datasets: parquet files of real chorale MIDI bytes, a save_to_disk folder, and
note tables, read through the same build as folders of MIDI files. The datasets are written here, from the
chorale fixtures; nothing is downloaded."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict

from hf_music_xl.cli import main
from hf_music_xl.data.corpus import build_corpus, load_corpus
from hf_music_xl.data.dataset_sources import find_column, is_dataset_source, notes_to_score
from hf_music_xl.models.music_xl import encoding


def midi_rows(paths) -> dict:
    return {
        "md5": [path.stem for path in paths],
        "music": [path.read_bytes() for path in paths],
        "year": [1700] * len(paths),
    }


def report_of(folder) -> dict:
    return json.loads((folder / "report.json").read_text())


def test_parquet_of_midi_bytes_builds_like_the_files_and_reports_bad_rows(chorale_midi_files, tmp_path):
    paths = chorale_midi_files[:6]
    rows = midi_rows(paths)
    rows["md5"] += ["truncated", "empty", "copy"]
    rows["music"] += [paths[0].read_bytes()[:40], b"", paths[1].read_bytes()]
    rows["year"] += [0, 0, 0]
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table(rows).slice(0, 5), tmp_path / "data" / "part-0.parquet")
    pq.write_table(pa.table(rows).slice(5), tmp_path / "data" / "part-1.parquet")

    assert is_dataset_source(str(tmp_path / "data"))
    built = build_corpus(str(tmp_path / "data"), output=tmp_path / "out", cache_dir=tmp_path / "cache", num_proc=2)
    report = report_of(tmp_path / "out")
    by_name = {row["name"]: row for split in built.values() for row in split}
    # every good row is a piece with exactly the ids of its file; the column was found (the only binary one)
    assert sorted(by_name) == sorted(path.stem for path in paths)
    for path in paths:
        assert by_name[path.stem]["input_ids"] == encoding.encode_midi(path, add_eos=True).tolist()
    assert report["dataset"]["column"] == "music" and report["dataset"]["layout"] == "midi"
    # the bad rows are reported by row id with the encoder's reason, the copy as a duplicate
    reasons = {skip["source"]: skip["reason"] for skip in report["skipped"]}
    source = str(tmp_path / "data")
    assert set(reasons) == {f"{source}#train/6", f"{source}#train/7"}
    assert all(reason.startswith("MidiReadError") for reason in reasons.values()), reasons
    assert [dup["source"] for dup in report["duplicates"]] == [f"{source}#train/8"]
    assert report["items_read"] == 9 and report["pieces_kept"] == 6
    assert len(built["validation"]) >= 1  # no named splits: our split rule, which always leaves one

    # the same files as one glob give the same pieces; a second build is the cached one
    again = load_corpus(str(tmp_path / "data" / "*.parquet"), cache_dir=tmp_path / "cache")
    assert sorted(again["train"]["name"]) == sorted(built["train"]["name"])


def test_named_splits_are_kept_and_save_to_disk_folders_load(chorale_midi_files, tmp_path):
    paths = chorale_midi_files[:7]
    saved = DatasetDict(
        {
            "train": Dataset.from_dict(midi_rows(paths[:4])),
            "valid": Dataset.from_dict(midi_rows(paths[4:6])),
            "test": Dataset.from_dict(midi_rows(paths[6:])),
        }
    )
    saved.save_to_disk(str(tmp_path / "saved"))
    assert is_dataset_source(str(tmp_path / "saved"))
    built = load_corpus(str(tmp_path / "saved"), cache_dir=tmp_path / "cache", num_proc=1)
    assert sorted(built["train"]["name"]) == sorted(p.stem for p in paths[:4])
    assert sorted(built["validation"]["name"]) == sorted(p.stem for p in paths[4:6])
    assert built["test"]["name"] == [paths[6].stem]

    # one Dataset saved (no split names): our split rule
    Dataset.from_dict(midi_rows(paths)).save_to_disk(str(tmp_path / "one"))
    single = load_corpus(str(tmp_path / "one"), cache_dir=tmp_path / "cache", num_proc=1)
    assert len(single["train"]) + len(single["validation"]) == len(paths) and len(single["validation"]) >= 1
    # our own built corpus is not mistaken for a source
    assert not is_dataset_source(str(built["train"].cache_files[0]["filename"]).rsplit("/", 2)[0])


def test_the_midi_column_is_named_when_it_is_not_the_only_binary_one(chorale_midi_files, tmp_path):
    rows = midi_rows(chorale_midi_files[:3])
    rows["cover"] = [b"\x89PNG"] * 3
    pq.write_table(pa.table(rows), tmp_path / "two.parquet")
    with pytest.raises(ValueError, match="several midi columns"):
        build_corpus(str(tmp_path / "two.parquet"), cache_dir=tmp_path / "cache")
    built = build_corpus(str(tmp_path / "two.parquet"), cache_dir=tmp_path / "cache", midi_column="music", num_proc=1)
    assert len(built["train"]) + len(built["validation"]) == 3
    with pytest.raises(ValueError, match="no column 'midi'"):
        build_corpus(str(tmp_path / "two.parquet"), cache_dir=tmp_path / "cache", midi_column="midi")
    with pytest.raises(ValueError, match="neither MIDI bytes nor a note table"):
        build_corpus(str(tmp_path / "two.parquet"), cache_dir=tmp_path / "cache", midi_column="year")


def note_table(path, tempo: float, jitter: float = 0.0) -> list[dict]:
    """A chorale's notes in seconds at ``tempo`` (as MAESTRO-style mirrors store them), onsets moved by ``jitter``."""
    score = encoding.load_score(path)
    seconds = 60.0 / tempo / score.ticks_per_quarter
    return [
        {"pitch": n.pitch, "start": n.time * seconds + jitter, "end": n.end * seconds + jitter, "velocity": n.velocity}
        for track in score.tracks
        for n in track.notes
    ]


def test_note_tables_land_on_the_grid_at_their_tempo_and_absurd_ones_are_reported(chorale_midi_files, tmp_path):
    paths = chorale_midi_files[:3]
    tables = [note_table(paths[0], 90.0), note_table(paths[1], 120.0, jitter=0.01), note_table(paths[2], 1000.0), []]
    table = pa.table({"name": ["a", "b", "fast", "none"], "notes": tables, "tempo": [90.0, None, 1000.0, None]})
    pq.write_table(table, tmp_path / "notes.parquet")
    built = build_corpus(str(tmp_path / "notes.parquet"), output=tmp_path / "out", cache_dir=tmp_path / "cache")
    report = report_of(tmp_path / "out")
    rows = {row["name"]: row for split in built.values() for row in split}
    # at the stated (90) or default (120) tempo the chorale's notes come back on the grid: its own pitches, onsets
    for name, path in (("a", paths[0]), ("b", paths[1])):
        decoded = encoding.ids_to_notes(np.array(rows[name]["input_ids"]))
        original = encoding.ids_to_notes(encoding.encode_midi(path))
        assert np.array_equal(decoded.pitch, original.pitch) and np.array_equal(decoded.onset, original.onset)
    grid = report["note_tables"]
    assert grid["tables"] == 2 and grid["default_tempo_qpm"] == 120.0
    # 10 ms at 120 qpm is 0.08 of a 16th step: the jittered table's onsets are that far off, the other's on it
    assert 0.03 < grid["mean_onset_grid_error_steps"] < 0.05 and grid["max_onset_grid_error_steps"] == pytest.approx(
        0.08
    )
    reasons = {skip["source"].rsplit("/", 1)[1]: skip["reason"] for skip in report["skipped"]}
    assert "absurd tempo 1000" in reasons["2"] and "no notes" in reasons["3"]


def test_a_parquet_file_changed_in_place_with_its_size_and_mtime_kept_is_rebuilt(chorale_midi_files, tmp_path):
    paths = chorale_midi_files[:3]
    table = pa.table(midi_rows(paths))
    data = tmp_path / "rows.parquet"
    pq.write_table(table, data, compression="none")
    first = build_corpus(str(data), cache_dir=tmp_path / "cache", num_proc=1)
    before = data.stat()
    swapped = midi_rows([paths[1], paths[0], paths[2]])  # two rows' music swapped: new bytes, the same size
    swapped["md5"] = [path.stem for path in paths]
    pq.write_table(pa.table(swapped), data, compression="none")
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (data.stat().st_size, data.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    rebuilt = build_corpus(str(data), cache_dir=tmp_path / "cache", num_proc=1)
    by_name = {row["name"]: row["input_ids"] for split in rebuilt.values() for row in split}
    assert by_name[paths[0].stem] == encoding.encode_midi(paths[1], add_eos=True).tolist()
    assert {row["name"]: row["input_ids"] for split in first.values() for row in split} != by_name


def test_find_column_and_notes_to_score_name_the_problem():
    features = Dataset.from_dict({"x": [1], "t": ["a"]}).features
    with pytest.raises(ValueError, match="no binary .* or note-table column among x, t"):
        find_column("src", features)
    with pytest.raises(ValueError, match="finite seconds"):
        notes_to_score([{"pitch": 60, "start": -1.0, "end": 0.5}], 120.0, 4)


def test_build_corpus_cli_takes_a_parquet_file_and_the_midi_column(chorale_midi_files, tmp_path, capsys):
    pq.write_table(pa.table(midi_rows(chorale_midi_files[:3])), tmp_path / "c.parquet")
    main(["build-corpus", str(tmp_path / "c.parquet"), "--midi-column", "music", "--num-proc", "1",
          "--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "out")])  # fmt: skip
    assert "skipped 0 files" in capsys.readouterr().out
    assert report_of(tmp_path / "out")["dataset"]["column"] == "music"
