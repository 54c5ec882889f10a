"""`hf-music-xl build-corpus` as the README shows it: where the cache goes ($HF_MUSIC_XL_CACHE, else
~/.cache/hf_music_xl/corpora) and recursive `**` globs."""

import shutil
from pathlib import Path

import pytest

from hf_music_xl.cli import main
from hf_music_xl.data.corpus import load_corpus


@pytest.fixture
def midi_tree(chorale_midi_files, tmp_path):
    """Three chorales at three depths, and a file that is not music."""
    root = tmp_path / "midi"
    (root / "x" / "y").mkdir(parents=True)
    for path, target in zip(chorale_midi_files, ["a.mid", "x/b.mid", "x/y/c.mid"]):
        shutil.copy(path, root / target)
    (root / "x" / "y" / "notes.txt").write_text("not music")
    return root


def built_location(printed: str) -> Path:
    """The corpus folder the command names on its last line ("corpus: FOLDER  (report: ...)")."""
    line = next(line for line in printed.splitlines() if line.startswith("corpus: "))
    return Path(line.removeprefix("corpus: ").split("  (report")[0])


def sources(folder: Path) -> list[str]:
    corpus = load_corpus(folder)
    return sorted(source for split in corpus.values() for source in split["source"])


def test_recursive_glob_finds_files_at_every_depth(midi_tree, tmp_path, capsys):
    main(["build-corpus", str(midi_tree / "**" / "*.mid"), "--num-proc", "1", "--cache-dir", str(tmp_path / "cache")])
    folder = built_location(capsys.readouterr().out)
    assert folder.parent == tmp_path / "cache" and sources(folder) == ["a.mid", "x/b.mid", "x/y/c.mid"]


def test_cache_goes_to_hf_music_xl_cache(midi_tree, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_MUSIC_XL_CACHE", str(tmp_path / "elsewhere"))
    main(["build-corpus", str(midi_tree), "--num-proc", "1"])
    folder = built_location(capsys.readouterr().out)
    assert folder.parent == tmp_path / "elsewhere" / "corpora" and (folder / "dataset_dict.json").is_file()
    assert sources(folder) == ["a.mid", "x/b.mid", "x/y/c.mid"]  # a directory is searched recursively too


def test_default_cache_is_in_the_home_folder(midi_tree, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_MUSIC_XL_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    main(["build-corpus", str(midi_tree), "--num-proc", "1"])
    folder = built_location(capsys.readouterr().out)
    assert folder.parent == tmp_path / "home" / ".cache" / "hf_music_xl" / "corpora"
    assert (folder / "dataset_dict.json").is_file() and (folder / "report.json").is_file()
