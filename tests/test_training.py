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
from transformers import AutoModelForCausalLM, AutoTokenizer, EvalPrediction

from hf_music_xl import encoding
from hf_music_xl.data import IGNORE_INDEX, TrainTransform, bar_starts, collate, eval_pieces
from hf_music_xl.training import TrainSettings, compute_metrics, resolve_precision, train, weights_digest

# A very small model: the point is the plumbing, not the music.
SMALL = "n_layer=1,d_model=32,n_head=2,d_head=16,d_inner=64,segment_len=32,mem_len=32"
REPO = Path(__file__).resolve().parent.parent


def small_settings(corpus_dir, output_dir, **overrides):
    values = dict(corpus=str(corpus_dir), output_dir=str(output_dir), model_overrides=SMALL, n_segments=2,
                  batch_size=4, max_steps=6, logging_steps=1)
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
        start = next(s for s in bar_starts(piece) if np.array_equal(piece[s : s + 128], input_ids[: len(piece[s : s + 128])]))
        starts.add(int(start))
        assert encoding.token_bars(piece)[1][start] == 0  # step 0 of its bar
        # positions are the piece's own (bar of the piece, as in generation), not counted from the window
        np.testing.assert_array_equal(positions[: len(piece) - start], encoding.position_features(piece)[start : start + 128])
    assert len(starts) > 3 and max(starts) > 0  # random, and every one on a bar line


def test_short_piece_is_padded_with_ignored_labels():
    piece = np.array([0, 1, 69, 141, 8, 141, 71, 141, 2])
    input_ids, labels, _ = TrainTransform(window_len=16, augment=False).window(piece)
    np.testing.assert_array_equal(input_ids[:9], piece)
    assert (input_ids[9:] == encoding.PAD_ID).all() and (labels[9:] == IGNORE_INDEX).all()
    np.testing.assert_array_equal(labels[:9], piece)


def test_transposition_stays_in_range_and_changes(chorale_corpus):
    piece = np.asarray(chorale_corpus["train"][0]["input_ids"], dtype=np.int64)
    transform = TrainTransform(window_len=4096, transpose_p=1.0)  # the whole piece in one window
    torch.manual_seed(0)
    shifts = set()
    for _ in range(40):
        input_ids, _, _ = transform.window(piece)
        shifted = input_ids[: len(piece)]
        is_note = (piece >= 9) & (piece < 137)
        np.testing.assert_array_equal(shifted[~is_note], piece[~is_note])  # timing untouched
        (shift,) = set((shifted[is_note] - piece[is_note]).tolist())
        shifts.add(shift)
    assert shifts <= set(range(-6, 6)) and len(shifts) > 5
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


def test_evaluation_scores_every_piece_whole(chorale_corpus):
    split = chorale_corpus["train"].select(range(5))
    pieces = eval_pieces(split)
    lengths = [len(ids) for ids in pieces["input_ids"]]
    assert lengths == sorted(lengths, reverse=True)  # longest first: little padding per batch
    assert sorted(map(tuple, pieces["input_ids"])) == sorted(map(tuple, split["input_ids"]))
    batch = collate([pieces[i] for i in range(3)])
    assert batch["input_ids"].shape == (3, lengths[0])
    shortest = lengths[2]
    assert (batch["input_ids"][2, shortest:] == encoding.PAD_ID).all() and (batch["labels"][2, shortest:] == IGNORE_INDEX).all()


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
    from hf_music_xl import training

    native = training.cpu_has_native_bf16()
    assert resolve_precision("auto") == {"bf16": native, "fp16": False}


# ----------------------------------------------------------------------------------------------------------
# Training


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
    out = model.generate(torch.tensor([[0, 1]]), max_new_tokens=8)
    assert out.shape[1] > 2 and tokenizer.decode_midi(out[0]) is not None


def test_resume_continues_to_the_same_weights(chorale_corpus_dir, tmp_path):
    straight = train(small_settings(chorale_corpus_dir, tmp_path / "straight", save_steps=3))  # mid-epoch: 24 steps an epoch
    interrupted = tmp_path / "interrupted"
    shutil.copytree(tmp_path / "straight" / "checkpoint-3", interrupted / "checkpoint-3")  # as if stopped at 3
    resumed = train(small_settings(chorale_corpus_dir, interrupted, resume=True, save_steps=3))
    assert (interrupted / "checkpoint-6").exists()
    assert weights_digest(resumed.model) == weights_digest(straight.model)


def test_a_bf16_trained_model_generates_with_its_cache_as_without(chorale_corpus_dir, tmp_path):
    """bf16 autocast training; its model's cached generation equals full recomputation, in fp32 and in bf16, far
    past the memory (32 tokens)."""
    result = train(small_settings(chorale_corpus_dir, tmp_path / "bf16", precision="bf16"))
    assert json.loads((tmp_path / "bf16" / "final" / "training_summary.json").read_text())["settings"]["precision"] == "bf16"
    model = result.model.eval()
    prompt = torch.tensor([[0, 1, encoding.TOKEN_TO_ID["ts3/4"], 69, 141]])
    for context in (contextlib.nullcontext(), torch.autocast("cpu", dtype=torch.bfloat16)):
        with context:
            cached = model.generate(prompt, max_new_tokens=80, do_sample=False)
            recomputed = model.generate(prompt, max_new_tokens=80, do_sample=False, use_cache=False)
        assert torch.equal(cached, recomputed)


def test_gradient_checkpointing_flag_trains_to_the_same_weights(chorale_corpus_dir, tmp_path):
    """--gradient-checkpointing recomputes each block in the backward pass: less memory, the same training."""
    plain = train(small_settings(chorale_corpus_dir, tmp_path / "plain", max_steps=3))
    checkpointed = train(small_settings(chorale_corpus_dir, tmp_path / "checkpointed", max_steps=3, gradient_checkpointing=True))
    assert all(layer.gradient_checkpointing for layer in checkpointed.model.transformer.layers)
    assert not any(layer.gradient_checkpointing for layer in plain.model.transformer.layers)
    assert weights_digest(checkpointed.model) == weights_digest(plain.model)


def test_ddp_two_processes_end_identical(chorale_corpus_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "tests" / "ddp_worker.py"), str(chorale_corpus_dir), str(tmp_path)]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert finished.returncode == 0, finished.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert (tmp_path / "final" / "model.safetensors").exists()
