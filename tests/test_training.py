"""Examples, metrics and training with the real Trainer on a handful of real chorales (tiny models)."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import load_from_disk
from helpers import weights_digest
from transformers import AutoModelForCausalLM, AutoTokenizer, EvalPrediction

from hf_music_xl import MusicGrammarProcessor
from hf_music_xl.data.pieces import IGNORE_INDEX, collate, eval_pieces
from hf_music_xl.data.windows import TrainTransform, bar_starts
from hf_music_xl.models.music_xl import encoding
from hf_music_xl.training.metrics import compute_metrics
from hf_music_xl.training.precision import cpu_has_native_bf16, resolve_precision
from hf_music_xl.training.run import train
from hf_music_xl.training.settings import TrainSettings

# A very small model: the point is the plumbing, not the music.
SMALL = "n_layer=1,d_model=32,n_head=2,d_head=16,d_inner=64,segment_len=32,mem_len=32"
REPO = Path(__file__).resolve().parent.parent


def small_settings(corpus_dir, output_dir, **overrides):
    values = dict(
        corpus=str(corpus_dir),
        output_dir=str(output_dir),
        model_overrides=SMALL,
        n_segments=2,
        batch_size=4,
        max_steps=6,
        logging_steps=1,
    )
    return TrainSettings(**{**values, **overrides})


# ----------------------------------------------------------------------------------------------------------
# Examples


def test_train_windows(chorale_corpus):
    piece = np.asarray(chorale_corpus["train"][0]["input_ids"], dtype=np.int64)
    transform = TrainTransform(window_len=128, augment=False)
    torch.manual_seed(0)
    starts = set()
    for _ in range(30):
        input_ids, labels, positions = transform.window(piece)
        assert len(input_ids) == len(labels) == len(positions) == 128
        start = next(
            s for s in bar_starts(piece) if np.array_equal(piece[s : s + 128], input_ids[: len(piece[s : s + 128])])
        )
        starts.add(int(start))
        assert encoding.token_bars(piece)[1][start] == 0  # step 0 of its bar
        # positions are the piece's own (bar of the piece, as in generation), not counted from the window
        np.testing.assert_array_equal(
            positions[: len(piece) - start], encoding.position_features(piece)[start : start + 128]
        )
    assert len(starts) > 3 and max(starts) > 0  # random, and every one on a bar line


def test_bar_starts_on_a_hand_example():
    ts44, sep, eos = encoding.TOKEN_TO_ID["ts4/4"], encoding.SEP_ID, encoding.EOS_ID
    d = lambda steps: encoding.DURATION_OFFSET + steps  # noqa: E731
    n = lambda pitch: encoding.NOTE_OFFSET + pitch  # noqa: E731
    #       0  1  2     3      4     5      6     7    8      9      10    11   12    13     14    15   16
    piece = [
        0,
        1,
        ts44,
        n(60),
        d(4),
        n(64),
        d(4),
        sep,
        d(16),
        n(62),
        d(4),
        sep,
        d(8),
        n(65),
        d(8),
        sep,
        d(8),
        sep,
        d(16),
        n(0),
        d(4),
        eos,
    ]
    #        17   18     19    20    21
    # starts: 0; the first note after the time signature (3); notes after a wait on a bar line (9 at step 16, 19 at
    # step 48); not the chord's second note (5), the note mid-bar (13), the rest that crosses bar 2 (17), the meter (2)
    assert bar_starts(piece).tolist() == [0, 3, 9, 19]


def test_transposition_range_outside_the_pieces_safe_range_gives_no_shift():
    transform = TrainTransform(window_len=8, transpose_range=(3, 5))
    high = np.array([0, 1, encoding.NOTE_OFFSET + 126, encoding.DURATION_OFFSET + 1, 2])  # may only go up by 1
    assert {transform.random_shift(high, torch.Generator().manual_seed(k)) for k in range(20)} == {0}
    middle = high.copy()
    middle[2] = encoding.NOTE_OFFSET + 60
    assert {transform.random_shift(middle, torch.Generator().manual_seed(k)) for k in range(40)} == {3, 4, 5}


def test_windows_leave_room_for_min_fill_and_carry_the_models_positions():
    # eight bars of one note each: bar starts at 2, 6, 10, ..., 30 (xxbos xxpad, then "n d xxsep d" per bar)
    n, d, sep = encoding.NOTE_OFFSET, encoding.DURATION_OFFSET, encoding.SEP_ID
    piece = np.array([0, 1] + [token for bar in range(8) for token in (n + 60 + bar, d + 16, sep, d + 16)][:-2] + [2])
    transform = TrainTransform(window_len=16, augment=False, min_fill=0.5)
    drawn = {
        int(np.flatnonzero(piece == transform.window(piece, torch.Generator().manual_seed(k))[0][0])[0])
        for k in range(60)
    }
    # a window keeps at least 8 real tokens: starts up to len - 8 = 24
    assert drawn == {0} | {start for start in bar_starts(piece).tolist() if 0 < start <= len(piece) - 8}
    # a model saved before time signatures reads grid positions: step 6 is (bar 0, step 6, 0), not (bar 0, beat 1, 2)
    offbeat = np.array([0, 1, n + 60, d + 6, sep, d + 6, n + 62, d + 4, 2])
    _, _, positions = TrainTransform(window_len=12, augment=False, meter=False, min_fill=1.0).window(offbeat)
    assert positions[:9].tolist() == encoding.position_features(offbeat, meter=False).tolist() and positions[
        6
    ].tolist() == [0, 6, 0]
    assert positions.dtype == np.int64


def test_short_piece_is_padded_with_ignored_labels():
    piece = np.array([0, 1, 69, 141, 8, 141, 71, 141, 2])
    input_ids, labels, _ = TrainTransform(window_len=16, augment=False).window(piece)
    np.testing.assert_array_equal(input_ids[:9], piece)
    assert (input_ids[9:] == encoding.PAD_ID).all() and (labels[9:] == IGNORE_INDEX).all()
    np.testing.assert_array_equal(labels[:9], piece)


def test_transform_pads_input_with_xxpad_and_labels_with_ignore_index():
    piece = [0, 1, 69, 141, 8, 141, 71, 141, 2]
    rows = TrainTransform(window_len=12, augment=False, min_fill=1.0)({"input_ids": [piece]})  # from the start
    assert rows["input_ids"][0].tolist() == piece + [encoding.PAD_ID] * 3
    assert rows["labels"][0].tolist() == piece + [IGNORE_INDEX] * 3


def test_seeded_draws_depend_on_the_pieces_tokens():
    # twelve pieces with the same safe range: each gets its own shift, and a piece the same shift wherever it is
    pieces = [[0, 1, 9 + 60 + k, 141, 2] for k in range(12)]
    transform = TrainTransform(window_len=8, transpose_p=1.0, seed=3)
    shifted = transform({"input_ids": pieces + pieces[:1]})["input_ids"]
    shifts = [int(row[2]) - piece[2] for row, piece in zip(shifted, pieces + pieces[:1])]
    assert len(set(shifts[:12])) > 3 and shifts[12] == shifts[0]


def test_transposition_stays_in_range_and_changes(chorale_corpus):
    piece = np.asarray(chorale_corpus["train"][0]["input_ids"], dtype=np.int64)
    transform = TrainTransform(window_len=4096, transpose_p=1.0)  # the whole piece in one window
    torch.manual_seed(0)
    shifts = set()
    for _ in range(200):  # 12 shifts: one missing from 200 uniform draws has odds of 3e-7
        input_ids, _, _ = transform.window(piece)
        shifted = input_ids[: len(piece)]
        is_note = (piece >= 9) & (piece < 137)
        np.testing.assert_array_equal(shifted[~is_note], piece[~is_note])  # timing untouched
        (shift,) = set((shifted[is_note] - piece[is_note]).tolist())
        shifts.add(shift)
    assert shifts == set(range(-6, 6))  # every shift of -6..+5, both ends included
    # a piece near the top of the range is only shifted down
    high = np.array([0, 1, 9 + 125, 141, 2])
    for _ in range(20):
        assert transform.window(high)[0][2] <= 9 + 127


def test_with_transform_draws_fresh_windows(chorale_corpus):
    dataset = chorale_corpus["train"].with_transform(TrainTransform(window_len=64))
    torch.manual_seed(0)
    draws = {tuple(dataset[0]["input_ids"]) for _ in range(10)}
    assert len(draws) > 1  # not frozen as a map would be
    batch = collate([dataset[i] for i in range(3)])
    assert batch["input_ids"].shape == batch["labels"].shape == (3, 64) and batch["beat_positions"].shape == (3, 64, 3)
    assert batch["input_ids"].dtype == torch.long


def test_seeded_windows_depend_on_seed_epoch_and_piece_only(chorale_corpus):
    """Training seeds the windows: a piece's window and shift are a function of (seed, epoch, piece), so a resumed
    run draws what the uninterrupted one drew, and every epoch draws new ones."""
    pieces = [np.asarray(ids, dtype=np.int64) for ids in chorale_corpus["train"]["input_ids"][:4]]
    transform = TrainTransform(window_len=64, transpose_p=0.5, seed=7)

    def draws(epoch, seed=7):
        transform.seed = seed
        transform.set_epoch(epoch)
        return [tuple(transform({"input_ids": [piece]})["input_ids"][0].tolist()) for piece in pieces]

    torch.manual_seed(0)
    first = draws(0)
    torch.manual_seed(1)  # the global generator plays no part
    assert draws(0) == first
    by_epoch = [draws(epoch) for epoch in range(1, 6)]
    for piece in range(len(pieces)):  # each piece: new windows or shifts as the epochs go
        assert len({first[piece]} | {epoch[piece] for epoch in by_epoch}) > 1
    assert draws(0, seed=8) != first  # and the seed matters


def test_collate_pads_stream_targets_and_takes_a_batch_of_one():
    examples = [
        {"input_ids": np.array([0, 1, 69]), "labels": np.array([0, 1, 69]), "shift_labels": np.array([1, 69, 141])},
        {"input_ids": np.array([0, 1]), "labels": np.array([0, 1]), "shift_labels": np.array([1, 70])},
    ]
    batch = collate(examples)
    assert batch["shift_labels"].tolist() == [[1, 69, 141], [1, 70, IGNORE_INDEX]]
    assert (
        batch["input_ids"].tolist() == [[0, 1, 69], [0, 1, encoding.PAD_ID]] and batch["labels"][1, 2] == IGNORE_INDEX
    )
    alone = collate([{"input_ids": [0, 1], "labels": [0, 1], "beat_positions": [[0, 0, 0], [0, 0, 0]]}])
    assert set(alone) == {"input_ids", "labels", "beat_positions"} and alone["beat_positions"].shape == (1, 2, 3)


def test_evaluation_scores_every_piece_whole(chorale_corpus):
    split = chorale_corpus["train"].select(range(5))
    pieces = eval_pieces(split)
    lengths = [len(ids) for ids in pieces["input_ids"]]
    assert lengths == sorted(lengths, reverse=True)  # longest first: little padding per batch
    assert sorted(map(tuple, pieces["input_ids"])) == sorted(map(tuple, split["input_ids"]))
    batch = collate([pieces[i] for i in range(3)])
    assert batch["input_ids"].shape == (3, lengths[0])
    shortest = lengths[2]
    assert (batch["input_ids"][2, shortest:] == encoding.PAD_ID).all() and (
        batch["labels"][2, shortest:] == IGNORE_INDEX
    ).all()


def test_evaluation_pieces_are_ids_and_labels_read_from_the_corpus_longest_first_ties_in_order(chorale_corpus):
    from datasets import Dataset

    validation = chorale_corpus["validation"]
    # a corpus on disk: the examples are read from its own memory-mapped files, neither copied nor written beside it
    assert eval_pieces(validation).cache_files == validation.cache_files

    # 40 pieces of two lengths: equal lengths keep their order (a stable sort; numpy's default is not, past 16)
    pieces = [[0, 1] + [9 + k] * (2 + k % 2) for k in range(40)]
    split = Dataset.from_dict({"input_ids": pieces, "name": [f"p{k}" for k in range(40)]})
    examples = eval_pieces(split)
    assert examples.cache_files == []  # nothing written to disk
    assert examples["input_ids"] == [pieces[k] for k in range(1, 40, 2)] + [pieces[k] for k in range(0, 40, 2)]
    assert all(set(example) == {"input_ids", "labels"} for example in examples)
    assert all(example["labels"] == example["input_ids"] for example in examples)


# ----------------------------------------------------------------------------------------------------------
# Metrics and settings


def test_compute_metrics_by_hand():
    labels = np.array([[0, 20, 140, IGNORE_INDEX]])  # predictions for 20 (a note), 140 (a duration)
    scores = np.zeros((1, 3, 2))
    scores[0, :, 0] = [1.0, 3.0, 99.0]  # NLL; the last position predicts an ignored label
    scores[0, :, 1] = [1.0, 0.0, 1.0]  # correct?
    metrics = compute_metrics(EvalPrediction(predictions=scores, label_ids=labels))
    assert metrics["tokens"] == 2 and metrics["notes"] == 1
    assert metrics["nll_per_token"] == pytest.approx(2.0) and metrics["nll_per_note"] == pytest.approx(4.0)
    assert metrics["token_accuracy"] == pytest.approx(0.5) and metrics["perplexity"] == pytest.approx(np.exp(2.0))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_fp16_on_cpu_is_refused():
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16")

    native = cpu_has_native_bf16()
    assert resolve_precision("auto") == {"bf16": native, "fp16": False}


# ----------------------------------------------------------------------------------------------------------
# Training


@pytest.mark.slow
def test_train_saves_a_directory_that_loads_and_generates(chorale_corpus_dir, tmp_path):
    result = train(small_settings(chorale_corpus_dir, tmp_path / "run"))
    for key in ("eval_loss", "eval_perplexity", "eval_token_accuracy", "eval_nll_per_token", "eval_nll_per_note"):
        assert np.isfinite(result.metrics[key])
    assert result.metrics["eval_nll_per_note"] > result.metrics["eval_nll_per_token"]

    history = json.loads(next((tmp_path / "run").glob("checkpoint-6")).joinpath("trainer_state.json").read_text())
    rates = [entry["learning_rate"] for entry in history["log_history"] if "learning_rate" in entry]
    peak = int(np.argmax(rates))
    assert 0 < peak < len(rates) - 1 and max(rates) == pytest.approx(2e-3)  # one cycle: up, then down
    assert any("eval_nll_per_note" in entry for entry in history["log_history"])  # evaluated each epoch

    final = tmp_path / "run" / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert model.generation_config.do_sample and model.generation_config.eos_token_id == encoding.EOS_ID
    assert weights_digest(model) == weights_digest(result.model)
    grammar = [MusicGrammarProcessor(model.config)]
    torch.manual_seed(0)
    out = model.generate(torch.tensor([[0, 1]]), max_new_tokens=24, logits_processor=grammar)
    torch.manual_seed(0)  # the saved model samples what the trained one samples
    assert torch.equal(
        out, result.model.eval().generate(torch.tensor([[0, 1]]), max_new_tokens=24, logits_processor=grammar)
    )
    assert out.shape == (1, 26) and encoding.first_invalid_position(out[0]) is None
    notes = encoding.ids_to_notes(out[0])
    score = tokenizer.decode_midi(out[0])
    step = encoding.TICKS_PER_QUARTER // encoding.STEPS_PER_BEAT
    assert sorted((n.time, n.pitch, n.duration) for track in score.tracks for n in track.notes) == sorted(
        zip((notes.onset * step).tolist(), notes.pitch.tolist(), (notes.duration * step).tolist())
    )
    assert len(notes) >= 1


@pytest.mark.slow
def test_resume_continues_to_the_same_weights(chorale_corpus_dir, tmp_path):
    straight = train(
        small_settings(chorale_corpus_dir, tmp_path / "straight", save_steps=3)
    )  # mid-epoch: 24 steps an epoch
    interrupted = tmp_path / "interrupted"
    shutil.copytree(tmp_path / "straight" / "checkpoint-3", interrupted / "checkpoint-3")  # as if stopped at 3
    resumed = train(small_settings(chorale_corpus_dir, interrupted, resume=True, save_steps=3))
    assert (interrupted / "checkpoint-6").exists()
    assert weights_digest(resumed.model) == weights_digest(straight.model)


def test_a_bf16_trained_model_generates_with_its_cache_as_without(chorale_corpus_dir, tmp_path):
    """bf16 autocast training; its model's cached generation equals full recomputation, in fp32 and in bf16, far
    past the memory (32 tokens)."""
    result = train(small_settings(chorale_corpus_dir, tmp_path / "bf16", precision="bf16"))
    assert (
        json.loads((tmp_path / "bf16" / "final" / "training_summary.json").read_text())["settings"]["precision"]
        == "bf16"
    )
    model = result.model.eval()
    prompt = torch.tensor([[0, 1, encoding.TOKEN_TO_ID["ts3/4"], 69, 141]])
    for context in (contextlib.nullcontext(), torch.autocast("cpu", dtype=torch.bfloat16)):
        with context:
            cached = model.generate(prompt, max_new_tokens=80, do_sample=False)
            recomputed = model.generate(prompt, max_new_tokens=80, do_sample=False, use_cache=False)
        assert torch.equal(cached, recomputed)


@pytest.mark.slow
def test_gradient_checkpointing_flag_trains_to_the_same_weights(chorale_corpus_dir, tmp_path):
    """--gradient-checkpointing recomputes each block in the backward pass: less memory, the same training."""
    plain = train(small_settings(chorale_corpus_dir, tmp_path / "plain", max_steps=3))
    checkpointed = train(
        small_settings(chorale_corpus_dir, tmp_path / "checkpointed", max_steps=3, gradient_checkpointing=True)
    )
    assert all(layer.gradient_checkpointing for layer in checkpointed.model.transformer.layers)
    assert not any(layer.gradient_checkpointing for layer in plain.model.transformer.layers)
    assert weights_digest(checkpointed.model) == weights_digest(plain.model)


@pytest.mark.slow
def test_ddp_two_processes_end_identical(chorale_corpus_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(REPO / "tests" / "ddp_worker.py"),
        str(chorale_corpus_dir),
        str(tmp_path),
    ]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert finished.returncode == 0, finished.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["digest"] == ranks[1]["digest"]
    # ... and the steps trained them: the weights are not the initial ones
    assert weights_digest(initial_model()) != ranks[0]["digest"]
    assert weights_digest(AutoModelForCausalLM.from_pretrained(tmp_path / "final")) == ranks[0]["digest"]
    assert json.loads((tmp_path / "final" / "training_summary.json").read_text())["eval"]["step"] == 4


def initial_model():
    """The model train() starts from with SMALL: it seeds 42, then builds it."""
    from transformers import set_seed

    from hf_music_xl import MusicXLConfig, MusicXLForCausalLM
    from hf_music_xl.training.settings import parse_overrides

    set_seed(42)
    return MusicXLForCausalLM(MusicXLConfig.from_preset("tiny", **parse_overrides(SMALL)))


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_accelerate_launch_trains_with_two_processes(chorale_corpus_dir, tmp_path):
    """The README's `accelerate launch --multi_gpu --num_processes 2 scripts/train.py ...`: on a CPU-only machine it
    runs two DDP processes (through torchrun), each with its own streams, whose checkpoint holds both ranks' state."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [
        str(accelerate),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(REPO / "scripts" / "train.py"),
        "--corpus",
        str(chorale_corpus_dir),
        "--output-dir",
        str(tmp_path),
        "--model-overrides",
        SMALL,
        "--n-segments",
        "2",
        "--batch-size",
        "2",
        "--max-steps",
        "4",
        "--save-steps",
        "4",
        "--precision",
        "fp32",
    ]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    checkpoint = tmp_path / "checkpoint-4"
    assert sorted(path.name for path in checkpoint.glob("rng_state_*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert sorted(path.name for path in checkpoint.glob("stream_memory-rank*")) == [
        "stream_memory-rank0.safetensors",
        "stream_memory-rank1.safetensors",
    ]
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    # 2 rows on each of 2 processes: 4 streams share the corpus, so an epoch is that many steps of 64 tokens
    tokens = sum(len(ids) for ids in load_from_disk(str(chorale_corpus_dir))["train"]["input_ids"])
    assert state["global_step"] == 4 and state["epoch"] == pytest.approx(4 / ((tokens // 4 - 1) // 64))
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert weights_digest(final) != weights_digest(initial_model())
    assert "final model, tokenizer and generation config" in finished.stdout  # printed once, by rank 0
    assert finished.stdout.count("final model, tokenizer and generation config") == 1
