"""A build's outputs are atomic (issue 25, defect 6): the cache entry and the --output folder are written aside and
renamed into place, so a failed build leaves the old corpus or none; a read-only or full disk is one clear line;
the leftovers of killed builds are removed by the next build.

Full and read-only disks are real: small tmpfs mounts (the test is skipped, with the reason, where mounting is not
allowed). Read-only also comes from chmod where that binds (not for root)."""

import contextlib
import json
import os
import shutil
import subprocess
import sys

import pytest
from datasets import DatasetDict

from hf_music_xl.cli import main as cli_main
from hf_music_xl.data import corpus_writer
from hf_music_xl.data.atomic import HOST, CorpusWriteError
from hf_music_xl.data.corpus import build_corpus, load_corpus


@contextlib.contextmanager
def tmpfs(folder, size: str, read_only: bool = False):
    """A tmpfs of ``size`` mounted on ``folder`` while the block runs; skips the test if mounting is refused."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip() or 'mount failed'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def remount_read_only(folder) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


@contextlib.contextmanager
def read_only_folder(folder):
    """A folder nobody may write to: chmod where that binds, else (root) a read-only tmpfs."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    try:
        if not os.access(folder, os.W_OK):
            yield folder
            return
        with tmpfs(folder, "1m", read_only=True):
            assert not os.access(folder, os.W_OK) or pytest.fail("a read-only tmpfs is writable")
            yield folder
    finally:
        folder.chmod(0o755)


@pytest.fixture
def three_and_sixty(chorale_midi_files, tmp_path):
    """Two folders of MIDI files: three chorales, and sixty (twelve chorales in five transpositions): a corpus
    of about 44 KB and one of about 110 KB on disk."""
    import symusic

    three, sixty = tmp_path / "three", tmp_path / "sixty"
    three.mkdir()
    sixty.mkdir()
    for path in chorale_midi_files[:3]:
        shutil.copy(path, three / path.name)
    for path in chorale_midi_files:
        for shift in range(5):
            score = symusic.Score(str(path))
            score.shift_pitch(shift - 2, inplace=True)
            score.dump_midi(str(sixty / f"{path.stem}-{shift}.mid"))
    return three, sixty


def pieces(corpus) -> int:
    return sum(len(split) for split in corpus.values())


def test_a_full_disk_while_copying_the_output_keeps_the_old_corpus(three_and_sixty, tmp_path):
    three, sixty = three_and_sixty
    with tmpfs(tmp_path / "disk", "64k") as disk:  # the three fit, the sixty do not
        build_corpus(str(three), output=disk / "out", cache_dir=tmp_path / "cache", num_proc=1)
        assert pieces(load_corpus(disk / "out")) == 3
        with pytest.raises(CorpusWriteError, match=f"cannot write the corpus to {disk / 'out'}: No space left"):
            build_corpus(str(sixty), output=disk / "out", cache_dir=tmp_path / "cache", num_proc=1)
        assert pieces(load_corpus(disk / "out")) == 3  # the old corpus, whole: it loads
        assert sorted(os.listdir(disk)) == ["out"]  # no half copy beside it
    assert sorted(pieces(load_corpus(built)) for built in (tmp_path / "cache").iterdir()) == [3, 60]  # cached


def test_a_full_cache_disk_is_one_clear_line_and_leaves_nothing(three_and_sixty, tmp_path, capsys):
    three, _ = three_and_sixty
    with tmpfs(tmp_path / "disk", "16k") as disk:
        with pytest.raises(SystemExit) as exit_:
            cli_main(["build-corpus", str(three), "--cache-dir", str(disk), "--num-proc", "1"])
        message = str(exit_.value)
        assert message.startswith(f"hf-music-xl build-corpus: error: cannot write the corpus cache in {disk}: ")
        assert "No space left on device" in message and "--cache-dir" in message and "\n" not in message
        assert os.listdir(disk) == []  # nothing half written, no scratch folder


def test_read_only_cache_and_output_are_one_clear_line(three_and_sixty, tmp_path):
    three, _ = three_and_sixty
    with read_only_folder(tmp_path / "locked") as locked:
        with pytest.raises(CorpusWriteError, match=f"cannot write the corpus cache in {locked / 'cache'}: "):
            build_corpus(str(three), cache_dir=locked / "cache", num_proc=1)
        with pytest.raises(CorpusWriteError, match=f"cannot write the corpus to {locked / 'out'}: "):
            build_corpus(str(three), output=locked / "out", cache_dir=tmp_path / "cache", num_proc=1)
        with pytest.raises(SystemExit, match="error: cannot write the corpus to"):
            cli_main(["build-corpus", str(three), "--output", str(locked / "out"), "--cache-dir", str(tmp_path)])


def test_a_read_only_cache_still_serves_what_it_holds(three_and_sixty, tmp_path):
    three, _ = three_and_sixty
    with tmpfs(tmp_path / "disk", "1m") as disk:
        build_corpus(str(three), cache_dir=disk, num_proc=1)
        remount_read_only(disk)
        assert pieces(build_corpus(str(three), cache_dir=disk, num_proc=1)) == 3  # a shared, read-only cache


def test_a_build_that_fails_leaves_the_old_cached_corpus(three_and_sixty, tmp_path, monkeypatch):
    three, _ = three_and_sixty
    first = build_corpus(str(three), cache_dir=tmp_path / "cache", num_proc=1)
    folder = tmp_path / "cache" / os.listdir(tmp_path / "cache")[0]
    before = {path: path.stat().st_ino for path in folder.rglob("*")}
    seen = []

    def fail_on_the_second_piece(piece):  # the build stops half way, after writing a piece
        seen.append(piece)
        if len(seen) == 2:
            raise RuntimeError("the build stops here")
        return None

    monkeypatch.setattr(corpus_writer, "first_seen", lambda _, piece: fail_on_the_second_piece(piece))
    with pytest.raises(RuntimeError, match="the build stops here"):
        build_corpus(str(three), cache_dir=tmp_path / "cache", num_proc=1, rebuild=True)
    assert {path: path.stat().st_ino for path in folder.rglob("*")} == before  # the old build, untouched
    assert os.listdir(tmp_path / "cache") == [folder.name]  # and no scratch folder beside it
    assert pieces(load_corpus(folder)) == pieces(first) == 3


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_leftovers_of_killed_builds_are_removed_by_the_next_build(three_and_sixty, tmp_path):
    three, _ = three_and_sixty
    cache = tmp_path / "cache"
    gone, running = dead_pid(), os.getppid()
    leftovers = {
        f".three-0123.rows-{gone}@{HOST}": False,  # a build that was killed: removed
        f".three-0123.partial-{gone}": False,  # named as builds before this one named them: removed
        f".three-0123.rows-{running}@{HOST}": True,  # a build still running: kept
        f".three-0123.rows-{gone}@another-host": True,  # a build on another machine sharing the folder: kept
        "three-0123": True,  # a corpus
    }
    for name in leftovers:
        (cache / name / "train").mkdir(parents=True)
    build_corpus(str(three), cache_dir=cache, num_proc=1)
    left = set(os.listdir(cache))
    assert {name for name, kept in leftovers.items() if kept} <= left
    assert not {name for name, kept in leftovers.items() if not kept} & left
    assert len(left) == 4  # and the new corpus

    output = tmp_path / "out"  # the same for the folder an --output copy is written beside
    (tmp_path / f".out.copy-{gone}@{HOST}").mkdir()
    build_corpus(str(three), cache_dir=cache, output=output, num_proc=1)
    assert not (tmp_path / f".out.copy-{gone}@{HOST}").exists()
    report = json.loads((output / "report.json").read_text())
    assert report["pieces_kept"] == 3


def test_output_that_is_a_file_is_refused(three_and_sixty, tmp_path):
    three, _ = three_and_sixty
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(ValueError, match="exists and is not a corpus directory"):
        build_corpus(str(three), output=tmp_path / "out", cache_dir=tmp_path / "cache", num_proc=1)
    assert (tmp_path / "out").read_text() == "not a folder"


def test_a_build_renames_its_arrow_files_into_place_as_save_to_disk_would_write_them(three_and_sixty, tmp_path):
    _, sixty = three_and_sixty

    def no_copy(*args, **kwargs):
        raise AssertionError("the corpus was copied row by row")

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(DatasetDict, "save_to_disk", no_copy)
        built = build_corpus(str(sixty), cache_dir=tmp_path / "cache", num_proc=1)  # 60 files: no piece moved
    assert len(built["train"]) > 0 and len(built["validation"]) > 0
    folder = tmp_path / "cache" / os.listdir(tmp_path / "cache")[0]
    built.save_to_disk(str(tmp_path / "saved"))  # what datasets writes for the same corpus
    for name in ("train", "validation"):
        files = sorted(path.name for path in (folder / name).iterdir())
        assert files == sorted(path.name for path in (tmp_path / "saved" / name).iterdir())
        assert (folder / name / "dataset_info.json").read_text() == (
            tmp_path / "saved" / name / "dataset_info.json"
        ).read_text()
        ours, theirs = (json.loads((root / name / "state.json").read_text()) for root in (folder, tmp_path / "saved"))
        assert {**ours, "_fingerprint": None} == {**theirs, "_fingerprint": None}
    assert (folder / "dataset_dict.json").read_text() == (tmp_path / "saved" / "dataset_dict.json").read_text()
    assert load_corpus(folder)["train"].to_dict() == load_corpus(tmp_path / "saved")["train"].to_dict()
