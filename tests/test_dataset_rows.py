"""Workers read their own rows: a dataset source's tasks name slices of parquet row groups or Arrow files, and the
main process never iterates the rows (it only plans the slices from the files' metadata). Real parquet files of
real chorale MIDI bytes, written here."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, IterableDataset

from hf_music_xl.data import dataset_rows, dataset_sources
from hf_music_xl.data.corpus import build_corpus
from hf_music_xl.data.dataset_rows import ParquetCursor, RowSlice
from hf_music_xl.models.music_xl import encoding


def numbered_table(count: int) -> pa.Table:
    return pa.table({"id": [f"row-{n}" for n in range(count)], "music": [bytes([n]) for n in range(count)]})


def test_the_cursor_reads_any_slice_of_a_row_group_in_or_out_of_order(tmp_path, monkeypatch):
    monkeypatch.setattr(dataset_rows, "READ_BATCH", 4)  # slices straddle the batches the group is read in
    path = tmp_path / "rows.parquet"
    pq.write_table(numbered_table(30), path, row_group_size=13)  # groups of 13, 13 and 4 rows

    def ids(cursor, group, start, stop):
        where = RowSlice("parquet", "s", "train", 0, None, str(path), group, start, stop)
        return [row["id"] for row in cursor.read(where, ["id"])]

    cursor = ParquetCursor()
    assert ids(cursor, 0, 0, 3) == ["row-0", "row-1", "row-2"]
    assert ids(cursor, 0, 5, 11) == [f"row-{n}" for n in range(5, 11)]  # skips what another worker reads
    assert ids(cursor, 0, 1, 2) == ["row-1"]  # behind the cursor (a task read again): the group opens anew
    assert ids(cursor, 1, 10, 13) == ["row-23", "row-24", "row-25"]
    assert ids(cursor, 2, 0, 4) == ["row-26", "row-27", "row-28", "row-29"]
    assert ids(cursor, 2, 3, 9) == ["row-29"]  # a slice past the group's end stops at it


def no_rows_here(self, *args, **kwargs):
    raise AssertionError("the main process iterated the dataset's rows")


@pytest.mark.parametrize("num_proc", [1, 2])
def test_workers_read_the_rows_of_many_row_groups_and_the_main_process_none(
    chorale_midi_files, tmp_path, monkeypatch, num_proc
):
    monkeypatch.setattr(IterableDataset, "__iter__", no_rows_here)  # the workers fork after: they are told to read
    monkeypatch.setattr(dataset_sources, "ROWS_PER_TASK", 3)  # tasks straddle the row groups of 2 rows
    paths = chorale_midi_files[:9]
    table = pa.table({"md5": [p.stem for p in paths], "music": [p.read_bytes() for p in paths], "year": [1] * 9})
    (tmp_path / "data").mkdir()
    pq.write_table(table.slice(0, 5), tmp_path / "data" / "a.parquet", row_group_size=2)
    pq.write_table(table.slice(5), tmp_path / "data" / "b.parquet", row_group_size=2)
    source = str(tmp_path / "data")
    built = build_corpus(source, output=tmp_path / "out", cache_dir=tmp_path / "cache", num_proc=num_proc, limit=8)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    rows = {row["name"]: row for split in built.values() for row in split}
    assert sorted(rows) == sorted(p.stem for p in paths[:8])  # the limit cuts inside the last file's row groups
    for index, path in enumerate(paths[:8]):  # each row is its file's piece, with its index across the files
        assert rows[path.stem]["input_ids"] == encoding.encode_midi(path, add_eos=True).tolist()
        assert rows[path.stem]["source"] == f"{source}#train/{index}"
    assert report["items_read"] == 8


def test_a_saved_dataset_of_several_arrow_files_is_read_by_the_workers(chorale_midi_files, tmp_path, monkeypatch):
    monkeypatch.setattr(dataset_sources, "ROWS_PER_TASK", 2)
    paths = chorale_midi_files[:5]
    rows = {"title": [p.stem for p in paths], "music": [p.read_bytes() for p in paths]}
    rows["music"][3] = b"not midi"
    Dataset.from_dict(rows).save_to_disk(str(tmp_path / "saved"), num_shards=2)
    assert len(list((tmp_path / "saved").glob("*.arrow"))) == 2
    source = str(tmp_path / "saved")
    with monkeypatch.context() as patched:
        patched.setattr(Dataset, "__iter__", no_rows_here)  # the main process reads only the files' row counts
        built = build_corpus(source, output=tmp_path / "out", cache_dir=tmp_path / "cache", num_proc=1)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert sorted(name for split in built.values() for name in split["name"]) == sorted(
        p.stem for n, p in enumerate(paths) if n != 3
    )
    assert [skip["source"] for skip in report["skipped"]] == [f"{source}#train/3"]
