"""A corpus build survives its readers (issue 25, defect 2): a reading process that dies (a crash in the C++ reader,
the OOM killer) or hangs is that file's failure in the report, and the build goes on, at any --num-proc; no
reading process outlives the build, even one killed by SIGKILL.

The readers are replaced with ``monkeypatch`` in this process: workers are forked from it, so they run the
replacement, and it really kills or blocks the worker process."""

import ctypes
import faulthandler
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hf_music_xl.cli import main as cli_main
from hf_music_xl.data import corpus as corpus_module
from hf_music_xl.data import dataset_rows, dataset_sources
from hf_music_xl.data.corpus import build_corpus
from hf_music_xl.data.workers import map_in_workers

REAL_READ_ITEM = corpus_module.read_item


def die_by_sigkill():
    os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does


def die_by_segfault():
    faulthandler.disable()  # pytest's handler, inherited by the fork, would print every thread's stack first
    ctypes.string_at(0)  # a real segfault: C code reads address 0


def die_by_exit():
    os._exit(3)  # a library that ends the process


@pytest.fixture
def folder_with_a_marked_file(chorale_midi_files, tmp_path):
    """Five chorales and one more file, "marked", sorted in the middle: files are read after it too."""
    folder = tmp_path / "midi"
    folder.mkdir()
    for path in chorale_midi_files[:5]:
        shutil.copy(path, folder / path.name)
    names = sorted(path.name for path in folder.iterdir())
    marked = folder / names[2].replace(".mid", "-marked.mid")
    shutil.copy(chorale_midi_files[5], marked)
    return folder, marked


def reader_that_on(marked: Path, action):
    def reader(item, steps_per_beat):
        if Path(item.path) == marked:
            action()
        return REAL_READ_ITEM(item, steps_per_beat)

    return reader


def built_names(built) -> set[str]:
    return {row["name"] for split in built.values() for row in split}


@pytest.mark.parametrize(
    "death, reason",
    [
        (die_by_sigkill, "died of SIGKILL (signal 9)"),
        (die_by_segfault, "died of SIGSEGV (signal 11)"),
        (die_by_exit, "exited with status 3"),
    ],
)
@pytest.mark.parametrize("num_proc", [1, 2])
def test_a_reader_that_dies_is_that_file_s_failure_and_the_build_goes_on(
    folder_with_a_marked_file, tmp_path, monkeypatch, num_proc, death, reason
):
    folder, marked = folder_with_a_marked_file
    monkeypatch.setattr(corpus_module, "read_item", reader_that_on(marked, death))
    built = build_corpus(str(folder), output=tmp_path / "out", cache_dir=tmp_path / "cache", num_proc=num_proc)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["skipped"] == [{"source": marked.name, "reason": f"WorkerDied: the reading process {reason}"}]
    assert report["items_read"] == 6 and report["pieces_kept"] == 5
    assert built_names(built) == {path.stem for path in folder.iterdir() if path != marked}
    assert multiprocessing.active_children() == []  # every reading process is gone


@pytest.mark.parametrize("through_the_cli", [False, True])
def test_a_reader_that_hangs_is_stopped_at_the_time_limit(
    folder_with_a_marked_file, tmp_path, monkeypatch, capsys, through_the_cli
):
    folder, marked = folder_with_a_marked_file
    monkeypatch.setattr(corpus_module, "read_item", reader_that_on(marked, lambda: time.sleep(3600)))
    if through_the_cli:
        flags = ["--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--time-limit", "3"]
        cli_main(["build-corpus", str(folder), *flags, "--num-proc", "1"])
        assert "skipped 1 files" in capsys.readouterr().out
    else:
        build_corpus(str(folder), output=tmp_path / "out", cache_dir=tmp_path / "cache", num_proc=2, time_limit=3)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["skipped"] == [
        {"source": marked.name, "reason": "TimeLimit: reading took longer than the limit of 3 s; stopped"}
    ]
    assert report["pieces_kept"] == 5
    assert multiprocessing.active_children() == []


def doubled_unless_seventh(job: int) -> int:
    if job % 7 == 6:
        die_by_sigkill()
    if job == 30:
        raise ValueError("thirty")
    return 2 * job


@pytest.mark.parametrize("num_proc, chunk", [(1, 8), (2, 8), (3, 1)])
def test_results_come_in_order_and_no_job_is_lost_with_its_dead_worker(num_proc, chunk):
    # every 7th job kills its worker: the jobs beside it in the worker's chunks are read again by a new one
    results = list(
        map_in_workers(doubled_unless_seventh, range(60), num_proc, None, lambda job, why: (job, why), chunk=chunk)
    )
    died = "WorkerDied: the reading process died of SIGKILL (signal 9)"
    expected = [(job, died) if job % 7 == 6 else 2 * job for job in range(60)]
    expected[30] = (30, "ValueError: thirty")  # the function's own exception: that job's failure, no death
    assert results == expected
    assert multiprocessing.active_children() == []


def test_a_dataset_row_that_kills_its_reader_is_that_row_s_failure(chorale_midi_files, tmp_path, monkeypatch):
    paths = chorale_midi_files[:6]
    table = pa.table({"md5": [path.stem for path in paths], "music": [path.read_bytes() for path in paths]})
    pq.write_table(table, tmp_path / "rows.parquet")
    real_encode_rows = dataset_rows.encode_rows

    def encode_rows(rows, *reading):  # rows are read 4 at a time here: the row at fault is found one by one
        if any(name == paths[3].stem for _, _, name, _, _ in rows):
            die_by_segfault()
        return real_encode_rows(rows, *reading)

    monkeypatch.setattr(dataset_sources, "ROWS_PER_TASK", 4)
    monkeypatch.setattr(dataset_rows, "encode_rows", encode_rows)
    source = str(tmp_path / "rows.parquet")
    built = build_corpus(source, output=tmp_path / "out", cache_dir=tmp_path / "cache", num_proc=2)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    died = "WorkerDied: the reading process died of SIGSEGV (signal 11)"
    assert report["skipped"] == [{"source": f"{source}#train/3", "reason": died}]
    assert built_names(built) == {path.stem for path in paths} - {paths[3].stem}
    assert report["items_read"] == 6


def process_state(pid: int) -> str | None:
    """The kernel's state letter of a process (R, S, Z...), or None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


BLOCKING_BUILD = textwrap.dedent(
    """
    import os, sys, time
    from hf_music_xl.data import corpus

    real_read_item = corpus.read_item

    def reader(item, steps_per_beat):
        if item.path == sys.argv[1]:
            print("READING", os.getpid(), flush=True)
            time.sleep(3600)
        return real_read_item(item, steps_per_beat)

    corpus.read_item = reader
    corpus.build_corpus(sys.argv[2], cache_dir=sys.argv[3], num_proc=int(sys.argv[4]))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers die with the build through Linux prctl")
@pytest.mark.parametrize("num_proc", [1, 2])
def test_no_reading_process_outlives_a_build_killed_by_sigkill(folder_with_a_marked_file, tmp_path, num_proc):
    folder, marked = folder_with_a_marked_file
    command = [sys.executable, "-c", BLOCKING_BUILD, str(marked), str(folder), str(tmp_path / "cache"), str(num_proc)]
    build = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = build.stdout.readline()  # blocks until the worker is inside the marked file
    assert line.startswith("READING "), line
    worker = int(line.split()[1])
    assert process_state(worker) not in (None, "Z")
    build.kill()  # SIGKILL: no Python code of the build runs again
    build.wait()
    deadline = time.monotonic() + 60  # the kernel kills the worker as its parent dies: this only bounds a failure
    while process_state(worker) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_state(worker) in (None, "Z"), "the reading process outlived the build"
    # the killed build left its scratch folder in the cache; the next build there removes it
    assert [name for name in os.listdir(tmp_path / "cache") if f".rows-{build.pid}@" in name]
    build_corpus(str(folder), cache_dir=tmp_path / "cache", num_proc=num_proc)
    assert [name for name in os.listdir(tmp_path / "cache") if name.startswith(".")] == []
