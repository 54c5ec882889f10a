"""Stream training: every batch row continues its own stream of whole pieces, with the memory carried across steps."""

import numpy as np
import pytest
import torch
from helpers import BOS, EOS
from safetensors import safe_open

from hf_music_xl.data.streams import PieceStreams
from hf_music_xl.models.music_xl import encoding
from hf_music_xl.training.checkpoints import STREAM_MEMORY
from hf_music_xl.training.run import train
from hf_music_xl.training.settings import TrainSettings
from hf_music_xl.training.trainer import MusicXLTrainer

SMALL = "n_layer=1,d_model=32,n_head=2,d_head=16,d_inner=64,segment_len=16,mem_len=16"


def fake_pieces(count=9, seed=0):
    """Pieces `xxbos xxpad (n60 d{k+1})* xxeos` of different lengths: piece k is told by its durations, which no
    transposition changes, and its shift by its pitches."""
    generator = np.random.default_rng(seed)
    pieces = []
    for k in range(count):
        pairs = int(generator.integers(10, 40))
        body = np.tile([encoding.NOTE_OFFSET + 60, encoding.DURATION_OFFSET + k + 1], pairs)
        pieces.append(np.r_[BOS, encoding.PAD_ID, body, EOS])
    return pieces


def piece_spans(stream):
    """(piece index, start, end) of the pieces in a stream (but a last one cut before its first duration)."""
    starts = list(np.flatnonzero(stream == BOS)) + [len(stream)]
    return [
        (int(stream[begin + 3]) - encoding.DURATION_OFFSET - 1, begin, end)
        for begin, end in zip(starts, starts[1:])
        if end - begin > 3
    ]


def stream_of(data, process, row):
    """A stream's tokens as the steps hand them out (input_ids of each step, then the last target)."""
    steps = [data[(step * data.processes + process) * data.rows + row] for step in range(data.steps)]
    return np.concatenate([step["input_ids"] for step in steps] + [steps[-1]["shift_labels"][-1:]])


def test_each_row_continues_its_stream_of_whole_pieces():
    pieces = fake_pieces()
    data = PieceStreams(pieces, rows=2, step_tokens=12, processes=2, seed=1, augment=False)
    total = sum(len(p) for p in pieces)
    assert data.steps == (total // 4 - 1) // 12 and len(data) == data.steps * 4
    streams = [stream_of(data, process, row) for process in (0, 1) for row in (0, 1)]
    for stream in streams:
        # whole pieces back to back from a piece's start (the last one may be cut where the epoch ends)
        assert stream[0] == BOS
        for piece, begin, end in piece_spans(stream):
            np.testing.assert_array_equal(stream[begin:end], pieces[piece][: end - begin])
    for index in range(len(data)):
        item = data[index]
        np.testing.assert_array_equal(item["shift_labels"][:-1], item["input_ids"][1:])  # targets: the next token
        np.testing.assert_array_equal(item["labels"], item["input_ids"])
    # every piece is dealt before any comes round again
    dealt = [piece for stream in streams for piece, _, _ in piece_spans(stream)]
    assert len(set(dealt[: len(pieces)])) == min(len(dealt), len(pieces)) or len(set(dealt)) == len(pieces)


def test_epochs_reshuffle_from_the_seed():
    pieces = fake_pieces(12)
    data = PieceStreams(pieces, rows=3, step_tokens=10, seed=5, augment=False)
    epoch0 = [data[i]["input_ids"].copy() for i in range(len(data))]
    data.set_epoch(1)
    epoch1 = [data[i]["input_ids"].copy() for i in range(len(data))]
    assert len(epoch1) == len(epoch0)  # the Trainer's epoch length does not change
    assert any(not np.array_equal(a, b) for a, b in zip(epoch0, epoch1))
    again = PieceStreams(pieces, rows=3, step_tokens=10, seed=5, augment=False)
    assert all(np.array_equal(again[i]["input_ids"], epoch0[i]) for i in range(len(data)))
    again.set_epoch(1)
    assert all(np.array_equal(again[i]["input_ids"], epoch1[i]) for i in range(len(data)))


def test_transposition_is_per_piece_within_range_and_reaches_both_ends():
    pieces = fake_pieces(12)
    shifts_seen = set()
    data = PieceStreams(pieces, rows=2, step_tokens=16, seed=3, transpose_p=1.0)
    for epoch in range(20):
        data.set_epoch(epoch)
        for row in (0, 1):
            stream = stream_of(data, 0, row)
            for _, begin, end in piece_spans(stream):
                notes = stream[begin:end][(stream[begin:end] >= 9) & (stream[begin:end] < 137)]
                assert len(set(notes.tolist())) == 1  # one shift for the whole piece
                shifts_seen.add(int(notes[0]) - (encoding.NOTE_OFFSET + 60))
    assert shifts_seen == set(range(-6, 6))  # every shift of -6..+5, both ends included
    high = [np.r_[BOS, encoding.PAD_ID, encoding.NOTE_OFFSET + 125, encoding.DURATION_OFFSET + 1, EOS]] * 3
    data = PieceStreams(high, rows=1, step_tokens=4, seed=0, transpose_p=1.0)
    for epoch in range(20):
        data.set_epoch(epoch)
        stream = stream_of(data, 0, 0)
        assert (stream[(stream >= 9) & (stream < 137)] <= encoding.NOTE_OFFSET + 127).all()  # shifted up to 127 only


def test_each_epoch_draws_new_transpositions():
    """Copies of one piece, so the shuffle cannot change a stream: what differs between epochs is the shifts drawn
    for the pieces, seeded by (seed, epoch, stream, piece), never the same for every epoch."""
    piece = fake_pieces(1)[0]
    data = PieceStreams([piece] * 8, rows=2, step_tokens=16, seed=3, transpose_p=1.0)
    plain = PieceStreams([piece] * 8, rows=2, step_tokens=16, seed=3, augment=False)
    untransposed = stream_of(plain, 0, 0)
    by_epoch = []
    for epoch in range(4):
        data.set_epoch(epoch)
        plain.set_epoch(epoch)
        assert np.array_equal(stream_of(plain, 0, 0), untransposed)  # the dealing itself changes nothing
        by_epoch.append(tuple(stream_of(data, 0, 0).tolist()) + tuple(stream_of(data, 0, 1).tolist()))
    assert len(set(by_epoch)) == len(by_epoch)  # four epochs, four different sets of shifts
    again = PieceStreams([piece] * 8, rows=2, step_tokens=16, seed=3, transpose_p=1.0)
    again.set_epoch(2)
    assert tuple(stream_of(again, 0, 0).tolist()) + tuple(stream_of(again, 0, 1).tolist()) == by_epoch[2]


def test_plain_final_steps_are_untransposed():
    pieces = fake_pieces(6)
    data = PieceStreams(pieces, rows=1, step_tokens=8, seed=0, transpose_p=1.0)
    plain = PieceStreams(pieces, rows=1, step_tokens=8, seed=0, augment=False)
    data.plain_from_step = half = data.steps // 2
    same = [np.array_equal(data[step]["input_ids"], plain[step]["input_ids"]) for step in range(data.steps)]
    assert not all(same[:half]) and all(same[half:])
    data.set_epoch(1)  # the step counts across epochs: all of epoch 1 comes after it
    plain.set_epoch(1)
    assert all(np.array_equal(data[step]["input_ids"], plain[step]["input_ids"]) for step in range(data.steps))


def test_too_small_a_corpus_is_a_clear_error():
    with pytest.raises(ValueError, match="too small"):
        PieceStreams(fake_pieces(2), rows=16, step_tokens=512)


# ----------------------------------------------------------------------------------------------------------
# The Trainer carries the memory


@pytest.mark.slow
def test_training_carries_the_memory_from_step_to_step(chorale_corpus_dir, tmp_path, monkeypatch):

    seen = []  # (epoch, tokens in the memory after the micro-batch, tokens in the micro-batch)
    compute_loss = MusicXLTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        out = compute_loss(self, model, inputs, *args, **kwargs)
        if model.training:
            seen.append((self.memory_epoch, self.memory.get_seq_length(), int(inputs["input_ids"].shape[1])))
        return out

    monkeypatch.setattr(MusicXLTrainer, "compute_loss", recording)
    settings = TrainSettings(
        corpus=str(chorale_corpus_dir),
        output_dir=str(tmp_path / "run"),
        model_overrides=SMALL,
        n_segments=2,
        batch_size=4,
        grad_accum=2,
        max_steps=30,
        logging_steps=5,
        save_steps=0,
    )
    train(settings)
    assert {epoch for epoch, _, _ in seen} >= {0, 1}
    for epoch in {epoch for epoch, _, _ in seen}:
        in_epoch = [(after, tokens) for e, after, tokens in seen if e == epoch]
        # every micro-batch continues the one before, through gradient accumulation; a new epoch starts empty
        assert [after for after, _ in in_epoch] == [tokens * (k + 1) for k, (_, tokens) in enumerate(in_epoch)]
    checkpoint = sorted((tmp_path / "run").glob("checkpoint-*"))[-1]
    with safe_open(str(checkpoint / STREAM_MEMORY.format(0)), framework="pt") as saved:
        assert int(saved.metadata()["epoch"]) >= 1 and saved.get_tensor("states").shape[0] == 4


def test_stream_training_has_no_gradient_path_into_the_previous_step():
    """What the Trainer does, step by step: loss of step 2 with the carried memory; its gradients do not depend on
    whether step 1 ran with gradients."""
    from helpers import tiny_model

    model = tiny_model(segment_len=8, mem_len=8, mask_p=0.0).train()
    data = PieceStreams(fake_pieces(), rows=2, step_tokens=8, seed=0, augment=False)
    batches = [
        {
            key: torch.as_tensor(np.stack([data[s * 2 + r][key] for r in (0, 1)]))
            for key in ("input_ids", "labels", "shift_labels")
        }
        for s in (0, 1)
    ]
    memory = model(**batches[0], use_cache=True).past_key_values
    model.zero_grad()
    model(**batches[1], past_key_values=memory, use_cache=True).loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    with torch.no_grad():
        memory = model(**batches[0], use_cache=True).past_key_values
    model.zero_grad()
    model(**batches[1], past_key_values=memory, use_cache=True).loss.backward()
    for before, after in zip(grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(before, after)
