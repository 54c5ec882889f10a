"""Training survives interruption: SIGKILL mid-run, a kill during a save, torn checkpoints; resumes reach the
weights of an uninterrupted run with the same seed, bit for bit (CPU)."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_music_xl.training.checkpoints import checkpoint_problem, resumable_checkpoint
from hf_music_xl.training.run import train
from hf_music_xl.training.settings import TrainSettings

SMALL = "n_layer=1,d_model=32,n_head=2,d_head=16,d_inner=64,segment_len=32,mem_len=32"
# batch 2 over the 11 training chorales: 6 steps an epoch; a checkpoint every 4 steps lands mid-epoch (4, 8).
RUN = dict(model_overrides=SMALL, n_segments=2, batch_size=2, max_steps=12, save_steps=4, logging_steps=1)
CLI_FLAGS = [
    "--model-overrides",
    SMALL,
    "--n-segments",
    "2",
    "--batch-size",
    "2",
    "--max-steps",
    "12",
    "--save-steps",
    "4",
    "--logging-steps",
    "1",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def settings(corpus_dir, output_dir, **overrides) -> TrainSettings:
    return TrainSettings(corpus=str(corpus_dir), output_dir=str(output_dir), **{**RUN, **overrides})


def final_weights(output_dir) -> dict:
    return load_file(Path(output_dir) / "final" / "model.safetensors")


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"weights differ: {different}"


def checkpoints(output_dir) -> list[str]:
    return sorted((p.name for p in Path(output_dir).glob("checkpoint-*")), key=lambda n: int(n.split("-")[1]))


@pytest.fixture(scope="module")
def straight_run(chorale_corpus_dir, tmp_path_factory):
    """The uninterrupted reference: 12 steps, a checkpoint every 4."""
    output = tmp_path_factory.mktemp("straight")
    train(settings(chorale_corpus_dir, output))
    return output


def test_steps_per_epoch_make_the_checkpoints_mid_epoch(straight_run):
    state = json.loads((straight_run / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8 and state["epoch"] % 1 != 0  # 8 steps of 6 an epoch: mid-epoch
    assert checkpoints(straight_run) == ["checkpoint-8", "checkpoint-12"]  # save_total_limit 2
    assert not (straight_run / "_saving").exists()


STOPS_IN_STEP_5 = """
import sys
from transformers import Trainer
from hf_music_xl.cli import main

training_step = Trainer.training_step

def step_that_stops_in_step_5(self, *args, **kwargs):
    # inside step 5 (checkpoint-4 is written by then): say so on stdout, then wait on stdin, which the test never
    # writes: the kill lands here, mid-step, whatever the machine's speed
    if self.state.global_step == 4:
        print("IN STEP 5", flush=True)
        sys.stdin.read()
    return training_step(self, *args, **kwargs)

Trainer.training_step = step_that_stops_in_step_5
main(["train", *sys.argv[1:]])
"""


def test_sigkill_mid_run_then_resume_gives_the_same_weights(chorale_corpus_dir, straight_run, tmp_path, caplog):
    """`hf-music-xl train` killed with SIGKILL inside step 5 (the process says when it is there, then waits on a pipe,
    so the kill lands mid-step), then resumed (`--resume`, in this process to save a start-up): the final weights
    equal the uninterrupted run's exactly."""
    output = tmp_path / "killed"
    command = [
        sys.executable,
        "-c",
        STOPS_IN_STEP_5,
        "--corpus",
        str(chorale_corpus_dir),
        "--output-dir",
        str(output),
        *CLI_FLAGS,
    ]
    log = (tmp_path / "log.txt").open("w")
    process = subprocess.Popen(command, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
    said = None
    while said not in ("IN STEP 5\n", ""):  # each read blocks until a line comes: the Trainer's logs, then ours
        said = process.stdout.readline()  # ("" once the process has ended)
    assert said == "IN STEP 5\n", (tmp_path / "log.txt").read_text()[-3000:]
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    process.stdin.close()
    process.stdout.close()
    assert not (output / "final").exists()
    assert checkpoints(output) == ["checkpoint-4"]  # killed in step 5: checkpoint-4 and nothing after it
    assert checkpoint_problem(output / "checkpoint-4") is None

    with caplog.at_level(logging.WARNING, logger="hf_music_xl.training.run"):
        train(settings(chorale_corpus_dir, output, resume=True))
    assert f"continuing from {output / 'checkpoint-4'}" in caplog.text
    assert_same_weights(final_weights(output), final_weights(straight_run))


class Killed(BaseException):
    """Stands for SIGKILL inside the process: nothing of ours catches it, so what is on disk when it is raised
    stays as a kill at that moment would leave it (no cleanup runs)."""


def test_kill_during_a_save_leaves_no_checkpoint_that_loads_wrongly(
    chorale_corpus_dir, straight_run, tmp_path, monkeypatch
):
    from transformers import Trainer

    output = tmp_path / "torn"
    save_rng_state = Trainer._save_rng_state

    def killed_at_step_8(self, output_dir):  # model, optimizer and scheduler of checkpoint-8 are written by now
        if self.state.global_step == 8:
            raise Killed
        save_rng_state(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", killed_at_step_8)
    with pytest.raises(Killed):
        train(settings(chorale_corpus_dir, output))
    monkeypatch.undo()
    assert checkpoints(output) == ["checkpoint-4"]  # no checkpoint-8 at all: it was still being written aside
    staged = output / "_saving" / "checkpoint-8"
    assert (staged / "model.safetensors").exists() and (staged / "optimizer.pt").exists()
    assert not (staged / "rng_state.pth").exists() and not (staged / "trainer_state.json").exists()

    result = train(settings(chorale_corpus_dir, output, resume=True))
    assert not (output / "_saving").exists()  # the leftover is cleaned up
    assert checkpoints(output) == ["checkpoint-8", "checkpoint-12"]
    assert_same_weights(final_weights(output), final_weights(straight_run))
    assert result.final_dir == output / "final"


def test_resume_skips_torn_checkpoints_with_a_clear_message(chorale_corpus_dir, straight_run, tmp_path, caplog):
    """Checkpoints torn some other way (an older version's non-atomic save, a full disk, a copy cut short):
    resume names the problem, sets them aside and continues from the newest complete one."""
    output = tmp_path / "run"
    output.mkdir()
    shutil.copytree(straight_run / "checkpoint-8", output / "checkpoint-8")
    for step, tear in [(9, "truncate weights"), (10, "no trainer state"), (11, "truncate optimizer")]:
        torn = output / f"checkpoint-{step}"
        shutil.copytree(straight_run / "checkpoint-8", torn)
        state = json.loads((torn / "trainer_state.json").read_text())
        (torn / "trainer_state.json").write_text(json.dumps({**state, "global_step": step}))
        if tear == "truncate weights":
            data = (torn / "model.safetensors").read_bytes()
            (torn / "model.safetensors").write_bytes(data[: len(data) // 2])
        elif tear == "no trainer state":
            (torn / "trainer_state.json").unlink()
        else:
            data = (torn / "optimizer.pt").read_bytes()
            (torn / "optimizer.pt").write_bytes(data[:-100])

    assert "model.safetensors is unreadable" in checkpoint_problem(output / "checkpoint-9")
    assert checkpoint_problem(output / "checkpoint-10") == "trainer_state.json is missing"
    assert "optimizer.pt is unreadable" in checkpoint_problem(output / "checkpoint-11")
    assert resumable_checkpoint(output, set_aside=False) == str(output / "checkpoint-8")

    with caplog.at_level(logging.WARNING, logger="hf_music_xl.training.run"):
        train(settings(chorale_corpus_dir, output, resume=True))
    messages = "\n".join(record.getMessage() for record in caplog.records)
    assert "checkpoint-11 is incomplete (optimizer.pt is unreadable" in messages
    assert "checkpoint-10 is incomplete (trainer_state.json is missing)" in messages
    assert "checkpoint-9 is incomplete (model.safetensors is unreadable" in messages
    assert f"continuing from {output / 'checkpoint-8'}" in messages
    assert sorted(p.name.rsplit("-", 2)[0] for p in (output / "_incomplete").iterdir()) == [
        "checkpoint-10",
        "checkpoint-11",
        "checkpoint-9",
    ]
    assert_same_weights(final_weights(output), final_weights(straight_run))


def test_nothing_complete_starts_from_scratch(tmp_path, caplog):
    (tmp_path / "checkpoint-3").mkdir()
    with caplog.at_level(logging.WARNING, logger="hf_music_xl.training.run"):
        assert resumable_checkpoint(tmp_path) is None
    assert "checkpoint-3 is incomplete (trainer_state.json is missing)" in caplog.text


def test_final_directory_is_replaced_atomically(straight_run, tmp_path, monkeypatch):
    """A kill while final/ is written leaves the previous final/ untouched (or none), never a mix."""
    from hf_music_xl import MusicXLForCausalLM, MusicXLTokenizerFast
    from hf_music_xl.training.run import save_final

    final = tmp_path / "final"
    shutil.copytree(straight_run / "final", final)
    before = {path.name: path.read_bytes() for path in final.iterdir()}
    model, tokenizer = MusicXLForCausalLM.from_pretrained(final), MusicXLTokenizerFast()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)  # new weights to save

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(MusicXLTokenizerFast, "save_pretrained", killed)  # the new weights are written by then
    with pytest.raises(Killed):
        save_final(model, tokenizer, final, {"eval_loss": 1.0}, TrainSettings())
    assert {path.name: path.read_bytes() for path in final.iterdir()} == before

    monkeypatch.undo()
    save_final(model, tokenizer, final, {"eval_loss": 1.0}, TrainSettings())
    assert json.loads((final / "training_summary.json").read_text())["eval"] == {"eval_loss": 1.0}
    saved = load_file(final / "model.safetensors")
    assert all(torch.equal(saved[name], tensor) for name, tensor in model.state_dict().items() if name in saved)
    assert not list(tmp_path.glob("_final*"))  # no staging left behind
