"""`hf-music-xl train` flags the README names, through the CLI on a real (tiny) run: --max-minutes,
--plain-final-fraction, --no-augment and gradient clipping (--max-grad-norm)."""

import functools
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import load_from_disk
from torch.optim.optimizer import register_optimizer_step_pre_hook

from hf_music_xl import MusicXLForCausalLM
from hf_music_xl.cli import main
from hf_music_xl.models.music_xl import encoding
from hf_music_xl.training import budget, callbacks, run
from hf_music_xl.training.trainer import MusicXLTrainer

SMALL = "n_layer=1,d_model=32,n_head=2,d_head=16,d_inner=64,segment_len=32,mem_len=32"


def train_command(corpus_dir, output_dir, *flags):
    """`hf-music-xl train` on the test corpus: 4 rows of 64 tokens a step (24 steps an epoch)."""
    main(
        [
            "train",
            "--corpus",
            str(corpus_dir),
            "--output-dir",
            str(output_dir),
            "--model-overrides",
            SMALL,
            "--n-segments",
            "2",
            "--batch-size",
            "4",
            "--logging-steps",
            "1",
            *flags,
        ]
    )


def log_history(output_dir) -> list[dict]:
    checkpoint = max(Path(output_dir).glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    return json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]


# ----------------------------------------------------------------------------------------------------------
# --max-minutes, on a clock the test moves


class FakeClock:
    """Stands for ``time`` in training.py: it moves only when the model runs a training forward (``tick`` seconds),
    so a "slow step" is an event of the test, not a real wait."""

    def __init__(self, tick: float):
        self.now, self.tick = 1000.0, tick

    def perf_counter(self) -> float:
        return self.now

    def strftime(self, *args):
        import time

        return time.strftime(*args)


@pytest.fixture
def clock(monkeypatch):
    clock = FakeClock(tick=1.0)
    forward = MusicXLForCausalLM.forward

    @functools.wraps(forward)  # the Trainer reads forward's signature (labels)
    def ticking_forward(self, *args, **kwargs):
        if self.training:
            clock.now += clock.tick
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(MusicXLForCausalLM, "forward", ticking_forward)
    for module in (budget, callbacks, run):  # the step timing, the wall-clock budget and the run's own times
        monkeypatch.setattr(module, "time", clock)
    return clock


def expected_steps(corpus_dir, minutes, step_seconds):
    """What the README promises: the steps that fit the budget at the measured speed, with an evaluation per epoch
    (24 steps) at a third of a step's cost per token, plus a second, and 10% slack."""
    eval_tokens = sum(len(ids) for ids in load_from_disk(str(corpus_dir))["validation"]["input_ids"])
    eval_seconds = eval_tokens / 256 * step_seconds / 3 + 1.0  # 256 tokens a step
    return int(0.9 * minutes * 60 / (step_seconds + eval_seconds / 24))


def test_max_minutes_fits_the_steps_and_the_one_cycle_completes(chorale_corpus_dir, tmp_path, clock, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_music_xl.training"):
        train_command(chorale_corpus_dir, tmp_path / "run", "--max-minutes", "1")
    steps = expected_steps(chorale_corpus_dir, 1, step_seconds=1.0)  # each step measured at 1 s
    assert 24 < steps < 60
    history = log_history(tmp_path / "run")
    rates = [entry["learning_rate"] for entry in history if "learning_rate" in entry]
    assert len(rates) == steps  # every fitted step ran
    assert max(rates) == pytest.approx(2e-3, rel=1e-2) and rates[-1] < 1e-3 * max(rates)  # up, then down to the end
    assert "budget" not in caplog.text
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_max_minutes_stops_at_the_budget_when_steps_turn_slower(
    chorale_corpus_dir, tmp_path, clock, monkeypatch, caplog
):
    fit = run.fit_steps_to_budget

    def measured_then_slower(*args, **kwargs):
        steps = fit(*args, **kwargs)  # measured at 1 s a step
        clock.tick = 3.0  # from here on a step takes 3 s: the 60 s are spent after step 21
        return steps

    monkeypatch.setattr(run, "fit_steps_to_budget", measured_then_slower)
    with caplog.at_level(logging.WARNING, logger="hf_music_xl.training"):
        train_command(chorale_corpus_dir, tmp_path / "run", "--max-minutes", "1")
    assert "wall-clock budget of 1.0 min reached at step 21" in caplog.text
    state = json.loads((tmp_path / "run" / "checkpoint-21" / "trainer_state.json").read_text())  # saved at the stop
    assert state["global_step"] == 21 and state["max_steps"] == expected_steps(chorale_corpus_dir, 1, 1.0)
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


# ----------------------------------------------------------------------------------------------------------
# Transposition switched off: --no-augment, --plain-final-fraction


@pytest.fixture
def seen_rows(monkeypatch):
    """(global step, row of input ids) of every training micro-batch the Trainer feeds the model."""
    seen = []
    compute_loss = MusicXLTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        if model.training:
            seen.extend((self.state.global_step, row) for row in inputs["input_ids"].tolist())
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(MusicXLTrainer, "compute_loss", recording)
    return seen


def untransposed(row, pieces_text) -> bool:
    """Every part of the row (split where a piece starts) stands, token for token, in one corpus piece."""
    row = np.asarray(row)
    row = (
        row[: len(row) - np.argmax(row[::-1] != encoding.PAD_ID)] if (row != encoding.PAD_ID).any() else row
    )  # window padding
    cuts = [0, *np.flatnonzero(row == encoding.BOS_ID).tolist(), len(row)]
    parts = [row[begin:end] for begin, end in zip(cuts, cuts[1:]) if end > begin]
    return all(any(f" {' '.join(map(str, part))} " in piece for piece in pieces_text) for part in parts)


@pytest.fixture(scope="module")
def pieces_text(chorale_corpus_dir):
    return [f" {' '.join(map(str, ids))} " for ids in load_from_disk(str(chorale_corpus_dir))["train"]["input_ids"]]


@pytest.mark.parametrize("mode", ["stream", "windows"])
def test_no_augment_trains_on_the_pieces_as_written(chorale_corpus_dir, tmp_path, seen_rows, pieces_text, mode):
    train_command(
        chorale_corpus_dir,
        tmp_path / "run",
        "--train-mode",
        mode,
        "--max-steps",
        "4",
        "--no-augment",
        "--transpose-p",
        "1.0",
    )
    assert sorted({step for step, _ in seen_rows}) == [0, 1, 2, 3] and len(seen_rows) >= 12
    assert all(untransposed(row, pieces_text) for _, row in seen_rows)


@pytest.mark.parametrize("mode", ["stream", "windows"])
def test_plain_final_fraction_switches_transposition_off_for_the_last_steps(
    chorale_corpus_dir, tmp_path, seen_rows, pieces_text, mode
):
    train_command(
        chorale_corpus_dir,
        tmp_path / "run",
        "--train-mode",
        mode,
        "--max-steps",
        "8",
        "--plain-final-fraction",
        "0.5",
        "--transpose-p",
        "1.0",
    )
    assert sorted({step for step, _ in seen_rows}) == list(range(8))
    first_half = [untransposed(row, pieces_text) for step, row in seen_rows if step < 4]
    assert not all(first_half)  # transposed (every piece, at p = 1, unless it drew 0)
    # the last half plain. Streams switch at a step of their data, exactly; windows switch when the callback runs at
    # the start of step 4, but the Trainer has drawn step 4's batch and accelerate one more ahead by then (measured:
    # steps 4 and 5 are still transposed), so plain windows begin two steps late.
    plain_from = 4 if mode == "stream" else 6
    assert all(untransposed(row, pieces_text) for step, row in seen_rows if step >= plain_from)


# ----------------------------------------------------------------------------------------------------------
# Gradient clipping


def test_gradients_are_clipped_to_max_grad_norm(chorale_corpus_dir, tmp_path):
    """The optimizer only ever steps with gradients of norm <= --max-grad-norm, and they needed clipping."""
    norms = []

    def record_norm(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    handle = register_optimizer_step_pre_hook(record_norm)
    try:
        train_command(chorale_corpus_dir, tmp_path / "run", "--max-steps", "4", "--max-grad-norm", "0.05")
    finally:
        handle.remove()
    assert len(norms) == 4 and max(norms) <= 0.05 * (1 + 1e-4)
    before_clipping = [entry["grad_norm"] for entry in log_history(tmp_path / "run") if "grad_norm" in entry]
    assert len(before_clipping) == 4 and min(before_clipping) > 0.05  # every step was clipped
    assert all(math.isclose(norm, 0.05, rel_tol=1e-3) for norm in norms)


# ----------------------------------------------------------------------------------------------------------
# --keep-best


def test_keep_best_ends_with_the_best_checkpoints_weights(chorale_corpus_dir, tmp_path):
    """Evaluations every 2 steps: final/ holds the weights of the checkpoint with the lowest NLL per note (kept by
    the rotation, named in the state where it was renamed to, not in the staging directory), and its metrics."""
    from helpers import weights_digest

    output = tmp_path / "run"
    train_command(
        chorale_corpus_dir,
        output,
        *("--max-steps", "6", "--eval-steps", "2", "--save-steps", "2", "--save-total-limit", "2", "--keep-best"),
        *("--learning-rate", "1.0"),  # a rate that overshoots, so the best is not the last
    )
    state = json.loads((output / "checkpoint-6" / "trainer_state.json").read_text())
    history = [entry for entry in state["log_history"] if "eval_nll_per_note" in entry]
    evals = {entry["step"]: entry["eval_nll_per_note"] for entry in history}
    best_step = min(evals, key=evals.get)
    assert best_step != 6  # (step 2 here): the case where keeping the best matters
    assert state["best_model_checkpoint"] == str(output / f"checkpoint-{best_step}")
    assert (output / f"checkpoint-{best_step}").is_dir() and not (output / "_saving").exists()
    final = MusicXLForCausalLM.from_pretrained(output / "final")
    best = MusicXLForCausalLM.from_pretrained(output / f"checkpoint-{best_step}")
    assert weights_digest(final) == weights_digest(best)
    summary = json.loads((output / "final" / "training_summary.json").read_text())
    assert summary["eval"]["eval_nll_per_note"] == pytest.approx(evals[best_step], rel=1e-4)
