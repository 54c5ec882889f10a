"""Stream training reads the pieces from the corpus's memory-mapped Arrow file as it deals them: the same examples
as from the pieces in memory, for a whole split and a select()ed one, with per-epoch state that is piece indices
only."""

import numpy as np
import pytest

from hf_music_xl.data.streams import ArrowPieces, PieceStreams


def items(data) -> list[dict]:
    return [data[index] for index in range(len(data))]


@pytest.mark.parametrize("rows", [None, [9, 0, 4, 2, 7, 1, 3]], ids=["whole split", "selected rows"])
def test_streams_from_arrow_equal_streams_from_memory(chorale_corpus, rows):
    split = chorale_corpus["train"] if rows is None else chorale_corpus["train"].select(rows)
    in_memory = [np.asarray(ids) for ids in split["input_ids"]]
    settings = dict(rows=2, step_tokens=48, processes=2, seed=4, transpose_p=0.8)
    from_arrow, from_memory = PieceStreams(split, **settings), PieceStreams(in_memory, **settings)
    for epoch in (0, 2):
        from_arrow.set_epoch(epoch)
        from_memory.set_epoch(epoch)
        for a, b in zip(items(from_arrow), items(from_memory), strict=True):
            assert all(np.array_equal(a[key], b[key]) and a[key].dtype == np.int64 for key in b)
    # the shifts were applied: some note differs from the untransposed stream
    plain = PieceStreams(split, **{**settings, "transpose_p": 0.0})
    plain.set_epoch(2)
    assert any(not np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(items(plain), items(from_arrow)))


def test_pieces_are_views_of_the_arrow_file_and_an_epoch_holds_indices_only(chorale_corpus):
    split = chorale_corpus["train"]
    pieces = ArrowPieces(split)
    assert [pieces[index].tolist() for index in range(len(pieces))] == split["input_ids"]
    assert pieces.lengths.tolist() == [len(ids) for ids in split["input_ids"]]
    assert all(not values.flags.owndata for values in pieces.values)  # no copy of the tokens
    data = PieceStreams(split, rows=2, step_tokens=64)
    assert not hasattr(data, "tokens")
    dealt = np.concatenate(data.dealt)
    assert dealt.dtype == np.int64 and len(dealt) <= 2 * len(split) + data.streams  # about one epoch of indices


class RecordedReads:
    """Pieces (``ArrowPieces``) that remember which were read."""

    def __init__(self, pieces):
        self.pieces, self.lengths, self.read = pieces, pieces.lengths, set()

    def __len__(self) -> int:
        return len(self.pieces)

    def __getitem__(self, index: int) -> np.ndarray:
        self.read.add(int(index))
        return self.pieces[index]


@pytest.mark.parametrize("tasks", [None, "continue,infill,harmonize"])
def test_a_process_reads_only_its_own_streams_pieces(chorale_corpus, tasks):
    from hf_music_xl.data.task_examples import parse_tasks

    split = chorale_corpus["train"]
    settings = dict(rows=2, step_tokens=64, processes=2, seed=1, tasks=tasks and parse_tasks(tasks))
    data = PieceStreams(split, **settings)
    data.pieces = RecordedReads(data.pieces)  # before any deal: a process deals when first asked for a step
    ours = [index for index in range(len(data)) if index // data.rows % data.processes == 0]  # process 0's items
    items = [data[index] for index in ours]
    assert set(data.deals) == {0}  # the other process's streams were never dealt
    own = {int(piece) for row in range(data.rows) for piece in data.stream_deal(row)[0]}
    assert data.pieces.read <= own  # with tasks, the deal read each example's piece: only its own
    other = {int(piece) for stream in (2, 3) for piece in data.stream_deal(stream)[0]}
    assert other - own  # the other process has pieces of its own, which this one never read
    # the examples do not depend on whether the other process was dealt: a fresh copy, every stream dealt first
    fresh = PieceStreams(split, **settings)
    assert len(fresh.dealt) == 4
    assert all(np.array_equal(a["input_ids"], fresh[index]["input_ids"]) for a, index in zip(items, ours))
