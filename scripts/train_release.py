"""The released model, from one command: train it from a seed, keep the best checkpoint, write the release folder.

    make release-model      # = train_release.py --threads 1 --anchor, then release_report.py: ~100 min on 2 cores
    .venv/bin/python scripts/train_release.py --steps 4 --eval-every 2 --out /tmp/r --release-dir /tmp/rel  # smoke

The recipe (``RECIPE``) and why (BENCHMARKS.md, "The released model", has the measurements):

- corpus: the Bach chorales of music21 only. Their encodings (Margaret Greentree's, distributed with music21 by
  permission) carry no use restriction and the music is in the public domain. Palestrina's encodings forbid derived
  electronic formats and Essen's folk songs are non-commercial, so a model trained on them could not be shared
  freely; the other folk collections are one-voice tunes, another style from the four-voice chorales.
- size: the ``medium`` preset (6 layers, width 256, 5.2M parameters). In a short sweep (the same wall clock for
  tiny, medium and small side by side) medium learned about as much per token as small at 0.6x its step time,
  and far more per token than tiny; two hours give it ~60 passes over the chorales in twelve keys, and the
  periodic evaluation keeps the best checkpoint should it start to overfit. Its weights are 21 MB in fp32.
- the same stream training, schedule and bf16 autocast as ``hf-music-xl train``; the periodic evaluation scores a
  fixed subset of the validation chorales (``eval_pieces``) and the final one the whole split.

The release folder is ``final/`` (weights, config, tokenizer, generation config and the remote code) with the
model card written from the training record; ``scripts/release_report.py`` adds the measured quality to it.
Weights are stored in bf16 only where that changes the validation NLL by less than ``BF16_TOLERANCE`` (measured
here and written to ``storage.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch

from hf_music_xl.release import RELEASE_DIR

RECIPE = dict(
    corpus="bach-chorales",
    preset="medium",
    n_segments=2,  # rows of 2 x 256 tokens
    batch_size=16,
    max_steps=1200,
    learning_rate=2e-3,
    eval_steps=100,
    save_steps=100,
    eval_pieces=16,
    keep_best=True,
    save_total_limit=2,
    logging_steps=25,
    seed=0,
)
ANCHOR_DIR = "runs/release-anchor"  # GPT-2 of the release's size, same streams and steps (release_report --anchor)
BF16_TOLERANCE = 1e-3  # relative change of the validation NLL per note that bf16 storage may cost


def start_anchor(steps: int) -> subprocess.Popen:
    """GPT-2 with the release's width, depth and parameter count, trained by quality_report.py on the same streams
    with the same schedule, batch and steps, in a process of its own (one thread)."""
    command = [
        sys.executable,
        str(Path(__file__).with_name("quality_report.py")),
        "--configs=gpt2",
        f"--seeds={RECIPE['seed']}",
        f"--steps={steps}",
        f"--preset={RECIPE['preset']}",
        f"--n-segments={RECIPE['n_segments']}",
        f"--batch-size={RECIPE['batch_size']}",
        f"--learning-rate={RECIPE['learning_rate']}",
        "--ood=",
        "--parallel=1",
        f"--out={ANCHOR_DIR}",
    ]
    Path(ANCHOR_DIR).mkdir(parents=True, exist_ok=True)
    log = open(Path(ANCHOR_DIR) / "anchor.log", "w")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})


def storage_dtype(model_dir: Path) -> dict:
    """Validation NLL per note of the weights as trained (fp32) and rounded to bf16 (computed in fp32 either way):
    bf16 storage if it costs less than BF16_TOLERANCE."""
    from hf_music_xl.data.corpus import load_corpus
    from hf_music_xl.evaluate import corpus_nll
    from hf_music_xl.generate import load_model_and_tokenizer

    validation = load_corpus(RECIPE["corpus"])["validation"]
    model, _ = load_model_and_tokenizer(str(model_dir))
    fp32 = corpus_nll(model.float(), validation, progress=False)["nll_per_note"]
    rounded = model.to(torch.bfloat16).float()
    bf16 = corpus_nll(rounded, validation, progress=False)["nll_per_note"]
    change = abs(bf16 - fp32) / fp32
    return {
        "nll_per_note_fp32": fp32,
        "nll_per_note_bf16": bf16,
        "relative_change": change,
        "dtype": "bfloat16" if change < BF16_TOLERANCE else "float32",
    }


def write_release(final_dir: Path, release_dir: Path) -> Path:
    """``final_dir`` as the release folder: weights in the measured storage dtype (computed in fp32 when loaded),
    the model card, ``storage.json``; replaces an earlier release."""
    from transformers import AutoModelForCausalLM

    from hf_music_xl.release import write_release_card

    storage = storage_dtype(final_dir)
    staged = release_dir.parent / f"_{release_dir.name}.partial"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(final_dir, staged)
    if storage["dtype"] == "bfloat16":
        model = AutoModelForCausalLM.from_pretrained(final_dir, trust_remote_code=True)
        model.to(torch.bfloat16).save_pretrained(staged)
        config = json.loads((staged / "config.json").read_text())
        config["dtype"] = "float32"  # stored in bf16, loaded and run in fp32 (bf16 generation is slower on CPU)
        (staged / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (staged / "storage.json").write_text(json.dumps(storage, indent=2) + "\n")
    write_release_card(staged)
    shutil.rmtree(release_dir, ignore_errors=True)
    staged.rename(release_dir)
    return release_dir


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/release", help="the training run (checkpoints, logs, final/)")
    parser.add_argument("--release-dir", default=str(RELEASE_DIR), help="the release folder written at the end")
    parser.add_argument("--steps", type=int, default=RECIPE["max_steps"], help="optimizer steps")
    parser.add_argument("--eval-every", type=int, default=RECIPE["eval_steps"], help="steps between evaluations")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: every core")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--export-only", action="store_true", help="write the release from --out/final")
    parser.add_argument(
        "--anchor", action="store_true", help=f"also train the report's GPT-2 (same size and steps) into {ANCHOR_DIR}"
    )
    args = parser.parse_args()
    anchor = start_anchor(args.steps) if args.anchor and not args.export_only else None

    from hf_music_xl.training.run import train
    from hf_music_xl.training.settings import TrainSettings

    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    final_dir = Path(args.out) / "final"
    if not args.export_only:
        recipe = {**RECIPE, "max_steps": args.steps, "eval_steps": args.eval_every, "save_steps": args.eval_every}
        settings = replace(TrainSettings(), output_dir=args.out, resume=args.resume, **recipe)
        result = train(settings)
        print(json.dumps({k: v for k, v in result.metrics.items() if k.startswith("eval_")}, indent=2))
        final_dir = result.final_dir
    if anchor is not None and anchor.wait() != 0:
        print(f"the GPT-2 anchor failed: see {ANCHOR_DIR}/gpt2-seed0.log")
    release = write_release(final_dir, Path(args.release_dir))
    print(f"release written to {release}; next: scripts/release_report.py")


if __name__ == "__main__":
    main()
