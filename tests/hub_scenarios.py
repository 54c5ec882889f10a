"""Scenarios that test_hub.py runs in fresh Python processes, so that the Hub settings in the environment
(HF_ENDPOINT, HF_HUB_DISABLE_XET, HF_HOME, HF_TOKEN) are read when huggingface_hub is first imported.

    python tests/hub_scenarios.py NAME JSON_ARGUMENTS        # prints "RESULT {json}" as its last line

Nothing heavy is imported at module level: ``load`` must run without hf_music_xl importable.
"""

from __future__ import annotations

import json
import sys

from helpers import block_package, weights_digest  # tests/ is this script's directory, so it is on sys.path

# ----------------------------------------------------------------------------------------------------------


def publish(v1: str, v2: str, repo_id: str) -> dict:
    """Push v1 to a new private repo, push it again (no change), push v2 over it, push v1 to a new branch ``dev``:
    all with the CLI."""
    import contextlib
    import io

    from hf_music_xl.cli import main

    lines = []
    for argv in (
        ["push", v1, repo_id, "--private", "--commit-message", "v1", "--dataset", "tester/chorales"],
        ["push", v1, repo_id, "--dataset", "tester/chorales"],
        ["push", v2, repo_id, "--commit-message", "v2", "--dataset", "tester/chorales"],
        ["push", v1, repo_id, "--revision", "dev", "--commit-message", "v1 on dev", "--dataset", "tester/chorales"],
    ):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            main(argv)
        lines.append(out.getvalue().strip())
    return {"lines": lines}


def cli(runs: list[dict]) -> dict:
    """``hf-music-xl`` commands in this process, each with its own HF_TOKEN (unset when None): exit status, the
    message it exited with, and what it printed."""
    import contextlib
    import io
    import os

    from hf_music_xl.cli import main

    results = []
    for run in runs:
        os.environ.pop("HF_TOKEN", None)
        if run.get("token"):
            os.environ["HF_TOKEN"] = run["token"]
        out, err, code, message = io.StringIO(), io.StringIO(), 0, ""
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(run["argv"])
            except SystemExit as exit:
                code, message = (1, exit.code) if isinstance(exit.code, str) else (exit.code or 0, "")
        results.append({"code": code, "message": message, "stdout": out.getvalue(), "stderr": err.getvalue()})
    return {"results": results}


def space_app(space_id: str, work: str) -> dict:
    """Download the Space as a Space would be checked out (no hf_music_xl installed: -I -S below)."""
    from huggingface_hub import snapshot_download

    return {"dir": snapshot_download(space_id, repo_type="space", local_dir=work)}


def load(repo_id: str, revisions: list[str]) -> dict:
    """Without hf_music_xl: tokenizer and model from the Hub with trust_remote_code; generate; weights per revision."""
    block_package()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    digests = {}
    for revision in revisions:
        model = AutoModelForCausalLM.from_pretrained(repo_id, revision=revision, trust_remote_code=True)
        digests[revision] = weights_digest(model)
    tokenizer = AutoTokenizer.from_pretrained(repo_id, trust_remote_code=True)
    torch.manual_seed(0)
    output = model.generate(
        torch.tensor([[tokenizer.bos_token_id, tokenizer.pad_token_id]]), max_new_tokens=12, do_sample=True
    )
    score = tokenizer.decode_midi(output[0])
    return {
        "digests": digests,
        "model_class": f"{type(model).__module__}.{type(model).__name__}",
        "tokenizer_class": f"{type(tokenizer).__module__}.{type(tokenizer).__name__}",
        "generated": output.shape[1] - 2,
        "ids": output[0].tolist(),  # of the last revision's model, seed 0
        "notes": sorted((note.time, note.duration, note.pitch) for track in score.tracks for note in track.notes),
    }


def trainer(corpus_dir: str, work: str, repo_id: str, overrides: str) -> dict:
    """A Trainer run pushing with hub_strategy="checkpoint" and stopped after its first checkpoint, as if
    interrupted; then, in a fresh directory, `hf-music-xl train --resume --hub-model-id` continues from the
    checkpoint downloaded from the Hub, pushing its checkpoints and finally final/ with our model card."""
    import dataclasses
    import shutil
    from pathlib import Path

    from huggingface_hub import snapshot_download
    from transformers import TrainerCallback

    from hf_music_xl.data.corpus import load_corpus
    from hf_music_xl.data.pieces import collate, eval_pieces
    from hf_music_xl.data.windows import TrainTransform
    from hf_music_xl.hub.push import hub_training_arguments
    from hf_music_xl.models.music_xl.configuration_music_xl import MusicXLConfig
    from hf_music_xl.models.music_xl.generation_music_xl import generation_config_for
    from hf_music_xl.models.music_xl.modeling_music_xl import MusicXLForCausalLM
    from hf_music_xl.models.music_xl.tokenization_music_xl_fast import MusicXLTokenizerFast
    from hf_music_xl.training.metrics import compute_metrics, token_scores
    from hf_music_xl.training.run import train
    from hf_music_xl.training.settings import TrainSettings, parse_overrides
    from hf_music_xl.training.trainer import MusicXLTrainer, training_arguments

    class StopAfterFirstSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            control.should_training_stop = True

    work = Path(work)
    settings = TrainSettings(
        corpus=corpus_dir,
        output_dir=str(work / "run"),
        model_overrides=overrides,
        n_segments=2,
        batch_size=4,
        max_steps=6,
        logging_steps=1,
        train_mode="windows",
    )
    args = dataclasses.replace(
        training_arguments(settings, settings.max_steps), **hub_training_arguments(repo_id, "checkpoint")
    )
    corpus = load_corpus(settings.corpus)
    config = MusicXLConfig.from_preset(settings.preset, **parse_overrides(settings.model_overrides))
    model = MusicXLForCausalLM(config)
    model.generation_config = generation_config_for(config)
    window = settings.n_segments * config.segment_len
    interrupted = MusicXLTrainer(
        model=model,
        args=args,
        data_collator=collate,
        processing_class=MusicXLTokenizerFast(),
        train_dataset=corpus["train"].with_transform(TrainTransform(window)),
        eval_dataset=eval_pieces(corpus["validation"]),
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=token_scores,
        callbacks=[StopAfterFirstSave()],
    )
    interrupted.train()

    # a fresh machine: the checkpoint from the Hub, then `hf-music-xl train --resume --hub-model-id ...`
    download = Path(snapshot_download(repo_id, allow_patterns=["last-checkpoint/*"], local_dir=work / "download"))
    state = json.loads((download / "last-checkpoint" / "trainer_state.json").read_text())
    resumed_dir = work / "resumed"
    shutil.copytree(download / "last-checkpoint", resumed_dir / f"checkpoint-{state['global_step']}")
    # asking for 9 steps: a resumed run keeps the checkpoint's 6 (one-cycle schedule), a fresh one would do 9
    resumed = train(
        dataclasses.replace(settings, output_dir=str(resumed_dir), resume=True, max_steps=9, hub_model_id=repo_id)
    )
    history = json.loads((resumed_dir / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    return {
        "interrupted_at": interrupted.state.global_step,
        "checkpoint_step": state["global_step"],
        "checkpoint_files": sorted(p.name for p in (download / "last-checkpoint").iterdir()),
        "resumed_steps": sorted({entry["step"] for entry in history if "loss" in entry}),
        "resumed_eval_loss": resumed.metrics["eval_loss"],
    }


def real_hub(model_dir: str, name: str) -> dict:
    """Against the real Hub: push to a new private repo of the token's user, load it back with trust_remote_code
    from a fresh cache, then delete the repo."""
    from huggingface_hub import HfApi
    from transformers import AutoModelForCausalLM

    from hf_music_xl.hub.push import push_to_hub

    api = HfApi()
    repo_id = f"{api.whoami()['name']}/{name}"
    try:
        result = push_to_hub(model_dir, repo_id, private=True, commit_message="hf_music_xl test")
        model = AutoModelForCausalLM.from_pretrained(repo_id, trust_remote_code=True)
        card = api.model_info(repo_id).card_data
        return {
            "url": result.repo_url,
            "class": type(model).__name__,
            "library_name": card.library_name if card else None,
        }
    finally:
        api.delete_repo(repo_id, missing_ok=True)


if __name__ == "__main__":
    name, arguments = sys.argv[1], json.loads(sys.argv[2])
    result = globals()[name](**arguments)
    print("RESULT " + json.dumps(result))
