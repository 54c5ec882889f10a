"""Corpus building: real chorales from music21, real MIDI/ABC files, real Arrow caches."""

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import symusic

from hf_music_xl.cli import main as cli_main
from hf_music_xl.data import corpus as corpus_module
from hf_music_xl.data.corpus import (
    build_corpus,
    list_items,
    load_corpus,
    read_report,
    split_abc_tunes,
)
from hf_music_xl.data.corpus_writer import split_score
from hf_music_xl.models.music_xl import encoding

TWO_TUNES = """%abc-2.1
M:4/4
L:1/8

X:1
T:Up and down
K:C
CDEF GABc|cBAG FEDC|]

X:2
T:Fifths
K:G
G2d2 G2d2|B4 G4|]
"""


def test_chorale_corpus_rows(chorale_corpus):
    assert set(chorale_corpus) == {"train", "validation"}
    assert len(chorale_corpus["train"]) + len(chorale_corpus["validation"]) == 12
    assert len(chorale_corpus["validation"]) >= 1
    for row in chorale_corpus["train"]:
        ids = np.asarray(row["input_ids"])
        assert ids[0] == encoding.BOS_ID and ids[1] == encoding.PAD_ID and ids[-1] == encoding.EOS_ID
        assert encoding.first_invalid_position(ids) is None
        assert row["n_notes"] == int(((ids >= 9) & (ids < 137)).sum()) > 50
        assert row["source"].startswith("music21:bach/") and row["name"].startswith("bwv")


def test_chorale_split_is_by_bwv_number(chorale_corpus):
    report = read_report(chorale_corpus)
    assert report["source"] == "bach-chorales" and report["skipped"] == []
    folder = Path(chorale_corpus["train"].cache_files[0]["filename"]).parent.parent
    assert folder.name == f"bach-chorales-{report['cache_key']}"  # the cache key names the folder and the report
    # the split key of a chorale is its BWV number ("bwv153.1"), which is also its name
    assert all(split_score(name) >= 0.1 for name in chorale_corpus["train"]["name"])
    # 12 chorales may hash none below 0.1: then the lowest-scoring one is moved to validation
    lowest = min([*chorale_corpus["train"]["name"], *chorale_corpus["validation"]["name"]], key=split_score)
    assert lowest in chorale_corpus["validation"]["name"]
    assert report["splits"]["validation"]["pieces"] == len(chorale_corpus["validation"])


def build_identity(folder: Path) -> dict:
    """(inode, mtime) of every file of a built corpus: a rebuild writes new files and renames a new folder in."""
    return {
        path.relative_to(folder): (path.stat().st_ino, path.stat().st_mtime_ns) for path in sorted(folder.rglob("*"))
    }


def test_second_build_is_cached(chorale_corpus_dir, tmp_path, monkeypatch, caplog):
    before = build_identity(chorale_corpus_dir)
    reads = tmp_path / "reads.txt"

    def recording_reader(item, steps_per_beat):  # runs in a reading process: it leaves its trace in a file
        with open(reads, "a") as file:
            file.write(item.label + "\n")
        return [], []

    monkeypatch.setattr(corpus_module, "read_item", recording_reader)
    with caplog.at_level(logging.INFO, logger="hf_music_xl.data.corpus"):
        again = build_corpus("bach-chorales", limit=12, cache_dir=chorale_corpus_dir.parent, num_proc=1)
    assert not reads.exists()  # not one file read again
    assert f"corpus bach-chorales: using the cached build in {chorale_corpus_dir}" in caplog.messages
    assert Path(again["train"].cache_files[0]["filename"]).parent.parent == chorale_corpus_dir
    assert build_identity(chorale_corpus_dir) == before  # the very same files
    assert len(again["train"]) + len(again["validation"]) == 12
    # the check can fail: a different limit is another corpus, built (here from nothing, so refused)
    with pytest.raises(ValueError, match="no piece could be read"):
        build_corpus("bach-chorales", limit=11, cache_dir=chorale_corpus_dir.parent, num_proc=1)
    assert len(reads.read_text().splitlines()) == 11


def test_rebuild_replaces_the_cached_build(chorale_midi_files, tmp_path):
    folder = tmp_path / "midi"
    folder.mkdir()
    for path in chorale_midi_files[:3]:
        shutil.copy(path, folder / path.name)
    first = build_corpus(str(folder), cache_dir=tmp_path / "cache", num_proc=1)
    built = Path(first["train"].cache_files[0]["filename"]).parent.parent
    before = build_identity(built)
    assert (
        build_identity(
            Path(
                build_corpus(str(folder), cache_dir=tmp_path / "cache", num_proc=1)["train"].cache_files[0]["filename"]
            ).parent.parent
        )
        == before
    )
    rebuilt = build_corpus(str(folder), cache_dir=tmp_path / "cache", num_proc=1, rebuild=True)
    assert Path(rebuilt["train"].cache_files[0]["filename"]).parent.parent == built
    assert build_identity(built).keys() == before.keys() and build_identity(built) != before
    # a file that changes is a new corpus: its pieces are read again
    shutil.copy(chorale_midi_files[3], folder / chorale_midi_files[0].name)
    changed = build_corpus(str(folder), cache_dir=tmp_path / "cache", num_proc=1)
    assert Path(changed["train"].cache_files[0]["filename"]).parent.parent != built
    rows = {row["name"]: row["input_ids"] for split in changed.values() for row in split}
    assert rows[chorale_midi_files[0].stem] == encoding.encode_midi(chorale_midi_files[3], add_eos=True).tolist()


def test_a_file_changed_in_place_with_its_size_and_times_kept_is_rebuilt(chorale_midi_files, tmp_path):
    # what cp -p and rsync -a do: new bytes, the same size and modification time
    folder = tmp_path / "midi"
    folder.mkdir()
    for path in chorale_midi_files[:3]:
        shutil.copy(path, folder / path.name)
    changed = folder / chorale_midi_files[0].name
    first = build_corpus(str(folder), cache_dir=tmp_path / "cache", num_proc=1)
    before = changed.stat()
    score = symusic.Score(str(changed))
    score.shift_pitch(1, inplace=True)  # every pitch a semitone up: the same events, so the same bytes count
    score.dump_midi(str(changed))
    os.utime(changed, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (changed.stat().st_size, changed.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    rebuilt = build_corpus(str(folder), cache_dir=tmp_path / "cache", num_proc=1)
    rows = {row["name"]: row["input_ids"] for split in rebuilt.values() for row in split}
    assert rows[changed.stem] == encoding.encode_midi(changed, add_eos=True).tolist()
    old_rows = {row["name"]: row["input_ids"] for split in first.values() for row in split}
    assert rows[changed.stem] != old_rows[changed.stem]
    assert len(list((tmp_path / "cache").iterdir())) == 2  # a new key, not the old build served


def test_cache_folder_names(chorale_midi_files, tmp_path):
    assert corpus_module._slug("/data/midi/**/*.mid") == "data-midi-mid"
    assert corpus_module._slug("XMAS/") == "XMAS" and corpus_module._slug("???") == "corpus"
    assert corpus_module._slug("a" * 30 + "/" + "b" * 30) == "a" * 9 + "-" + "b" * 30  # the last 40 characters
    # corpora that differ only in their validation share are two builds, each with its own split
    folder = tmp_path / "midi"
    folder.mkdir()
    for path in chorale_midi_files[:8]:
        shutil.copy(path, folder / path.name)
    tenth = build_corpus(str(folder), cache_dir=tmp_path / "cache", num_proc=1, validation_fraction=0.1)
    half = build_corpus(str(folder), cache_dir=tmp_path / "cache", num_proc=1, validation_fraction=0.5)
    assert len(list((tmp_path / "cache").iterdir())) == 2
    for built in (tenth, half):  # a fresh build's report names its own folder's key
        folder = Path(built["train"].cache_files[0]["filename"]).parents[1]
        assert folder.name.endswith(f"-midi-{read_report(built)['cache_key']}")  # the slug of the path, then the key
    assert len(half["validation"]) > len(tenth["validation"])


def test_cache_key_covers_encoder_and_quantization(monkeypatch):
    items = corpus_module.list_items("bach-chorales")[:3]
    key = corpus_module.cache_key("bach-chorales", items, 4, 3, 0.1)
    assert key != corpus_module.cache_key("bach-chorales", items, 8, 3, 0.1)
    assert key != corpus_module.cache_key("bach-chorales", items, 4, 3, 0.2)  # the validation share
    assert key != corpus_module.cache_key("bach-chorales", items, 4, 2, 0.1)  # the limit
    assert corpus_module.cache_key("music21:a", items, 4, 3, 0.1) != corpus_module.cache_key(
        "music21:b", items, 4, 3, 0.1
    )
    assert key == corpus_module.cache_key("bach-chorales", items, 4, 3, 0.1)  # and nothing else
    monkeypatch.setattr(corpus_module, "ENCODER_VERSION", "test")
    assert key != corpus_module.cache_key("bach-chorales", items, 4, 3, 0.1)
    monkeypatch.undo()
    # music21's own corpus changes with its version: a new music21 is a new corpus
    import types

    import hf_music_xl.data.music21_source as music21_source

    monkeypatch.setattr(music21_source, "_music21", lambda: types.SimpleNamespace(__version__="0.0-test"))
    assert key != corpus_module.cache_key("bach-chorales", items, 4, 3, 0.1)


def test_midi_directory_skips_bad_files_and_duplicates(chorale_midi_files, tmp_path):
    folder = tmp_path / "midi"
    (folder / "nested").mkdir(parents=True)
    for path in chorale_midi_files[:4]:
        shutil.copy(path, folder / path.name)
    shutil.copy(chorale_midi_files[0], folder / "nested" / "copy.midi")  # same content, other name
    (folder / "broken.mid").write_bytes(b"MThd this is not midi")
    (folder / "empty.mid").write_bytes(b"")
    (folder / "notes.txt").write_text("ignored: not a music file")

    built = build_corpus(str(folder), output=tmp_path / "out", cache_dir=tmp_path / "cache", num_proc=2)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (tmp_path / "out" / "dataset_dict.json").exists()
    assert sorted(skip["source"] for skip in report["skipped"]) == ["broken.mid", "empty.mid"]
    assert [dup["source"] for dup in report["duplicates"]] == ["nested/copy.midi"]
    rows = [row for split in built.values() for row in split]
    assert len(rows) == 4
    first = next(row for row in rows if row["source"] == chorale_midi_files[0].name)
    expected = encoding.encode_midi(chorale_midi_files[0], add_eos=True)
    np.testing.assert_array_equal(first["input_ids"], expected)


def test_glob_source(chorale_midi_files, tmp_path):
    pattern = str(chorale_midi_files[0].parent / "bwv1*.mid")
    built = build_corpus(pattern, cache_dir=tmp_path, num_proc=1)
    names = sorted(name for split in built.values() for name in split["name"])
    assert names == sorted(p.stem for p in chorale_midi_files if p.name.startswith("bwv1"))


def test_abc_file_is_split_into_tunes(tmp_path):
    assert [label for label, _ in split_abc_tunes(TWO_TUNES)] == ["X:1 Up and down", "X:2 Fifths"]
    (tmp_path / "tunes.abc").write_text(TWO_TUNES + "\nX:3\nT:Silence\nK:C\nz8|]\n")
    built = build_corpus(str(tmp_path / "tunes.abc"), cache_dir=tmp_path / "cache", num_proc=1)
    report = read_report(built)
    rows = {row["source"]: row for split in built.values() for row in split}
    assert set(rows) == {"tunes.abc#X:1", "tunes.abc#X:2"}
    assert rows["tunes.abc#X:1"]["n_notes"] == 16
    assert [skip["source"] for skip in report["skipped"]] == ["tunes.abc#X:3"]  # no notes: skipped, not fatal


def test_music21_folders_of_score_formats(tmp_path):
    """music21:palestrina holds Humdrum (.krn) files: read as the chorales are, with the same error report; a
    folder mixing formats reads each; a comma joins corpora."""
    built = build_corpus("music21:palestrina", limit=3, cache_dir=tmp_path / "cache", num_proc=2)
    rows = [row for split in built.values() for row in split]
    assert len(rows) == 3 and all(
        row["source"].startswith("music21:palestrina/") and row["source"].endswith(".krn") for row in rows
    )
    assert all(row["n_notes"] > 200 and row["input_ids"][:2] == [0, 1] and row["input_ids"][-1] == 2 for row in rows)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    root = Path(list_items("music21:palestrina")[0].path).parent
    shutil.copy(root / "Agnus_00.krn", mixed / "agnus.krn")
    (mixed / "broken.mxl").write_bytes(b"not a zip")
    (mixed / "tune.abc").write_text(TWO_TUNES)
    folder = build_corpus(str(mixed), cache_dir=tmp_path / "cache", num_proc=1)
    report = read_report(folder)
    assert sorted(row["source"] for split in folder.values() for row in split) == [
        "agnus.krn",
        "tune.abc#X:1",
        "tune.abc#X:2",
    ]
    assert [skip["source"] for skip in report["skipped"]] == ["broken.mxl"] and report["skipped"][0]["reason"]
    joined = load_corpus(f"music21:palestrina,{mixed}", limit=3, cache_dir=tmp_path / "cache", num_proc=1)
    assert sorted(source for split in joined.values() for source in split["source"]) == sorted(
        [row["source"] for row in rows] + ["agnus.krn", "tune.abc#X:1", "tune.abc#X:2"]
    )


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus source"):
        build_corpus(str(tmp_path / "nowhere"), cache_dir=tmp_path)
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="no .mid"):
        build_corpus(str(tmp_path / "text"), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="music21"):
        build_corpus("music21:no-such-folder", cache_dir=tmp_path)


def test_output_refuses_to_overwrite_other_things(chorale_corpus_dir, tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a corpus directory"):
        build_corpus("bach-chorales", limit=12, cache_dir=chorale_corpus_dir.parent, output=tmp_path)
    assert (tmp_path / "precious.txt").exists()
    # an earlier corpus there is replaced, whole
    earlier = tmp_path / "earlier"
    shutil.copytree(chorale_corpus_dir, earlier)
    (earlier / "stale.txt").write_text("from the earlier corpus")
    build_corpus("bach-chorales", limit=12, cache_dir=chorale_corpus_dir.parent, output=earlier)
    assert sorted(p.name for p in earlier.iterdir()) == sorted(p.name for p in chorale_corpus_dir.iterdir())


def test_cli_build_corpus(chorale_corpus_dir, tmp_path, capsys):
    cli_main(
        [
            "build-corpus",
            "bach-chorales",
            "--limit",
            "12",
            "--cache-dir",
            str(chorale_corpus_dir.parent),
            "--output",
            str(tmp_path / "chorales"),
        ]
    )
    printed = capsys.readouterr().out
    assert "train:" in printed and str(tmp_path / "chorales") in printed
    meters = read_report(load_corpus(tmp_path / "chorales"))["meters"]
    assert sum(meters["first_meter"].values()) == 12 and "4/4" in meters["first_meter"]  # chorales: mostly 4/4
    assert f"meters (at the start): 4/4 {meters['first_meter']['4/4']}" in printed
    assert (
        len(load_corpus(tmp_path / "chorales")["train"]) + len(load_corpus(tmp_path / "chorales")["validation"]) == 12
    )
    with pytest.raises(SystemExit, match="unknown corpus source"):
        cli_main(["build-corpus", str(tmp_path / "missing"), "--cache-dir", str(tmp_path)])
