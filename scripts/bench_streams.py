"""Cost of stream training against window training at the same segment length, through the real Trainer (CPU).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_streams.py            # about 2 minutes on a quiet machine
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_streams.py --steps 4 --rounds 1   # a quick check

Both modes train the same model (``--preset``, default ``tiny``) on the Bach chorales with the same rows, segments
per row and segment length, through ``build_trainer`` and ``training.run.training_data`` exactly as
``hf-music-xl train`` does (precision ``auto``): stream training (every row continues its stream, the memory
carried from step to step, so every segment attends to a memory) and window training (random windows, the first
segment of each without memory, pieces shorter than the window padded). Each round trains ``--steps`` steps in
each mode, alternately, to share the machine's load.

It reports tokens/s two ways: all tokens fed, and trained tokens (those with a target, i.e. not padding), which is
what a step buys. The model-only cost of carrying the memory is item 1s of ``scripts/bench_model.py``.
"""

import argparse
import time
from dataclasses import replace

import torch

from hf_music_xl.data.corpus import load_corpus
from hf_music_xl.data.pieces import IGNORE_INDEX, collate
from hf_music_xl.models.music_xl.configuration_music_xl import MusicXLConfig
from hf_music_xl.models.music_xl.modeling_music_xl import MusicXLForCausalLM
from hf_music_xl.training.run import training_data
from hf_music_xl.training.settings import TrainSettings
from hf_music_xl.training.trainer import build_trainer, training_arguments


class CountingCollate:
    """``data.collate`` that counts the tokens fed and the tokens with a target."""

    def __init__(self):
        self.fed = self.trained = 0

    def __call__(self, examples):
        batch = collate(examples)
        targets = batch.get("shift_labels", batch["labels"])
        self.fed += batch["input_ids"].numel()
        self.trained += int((targets != IGNORE_INDEX).sum())
        return batch


def train_steps(mode: str, settings: TrainSettings, corpus, steps: int, seed: int) -> tuple[float, int, int]:
    """(seconds, tokens fed, tokens trained) of ``steps`` optimizer steps in ``mode``."""
    settings = replace(settings, train_mode=mode, max_steps=steps, seed=seed)
    torch.manual_seed(seed)
    model = MusicXLForCausalLM(MusicXLConfig.from_preset(settings.preset))
    data, dataset = training_data(settings, corpus["train"], model.config, world_size=1)
    counter = CountingCollate()
    args = replace(
        training_arguments(settings, steps),
        eval_strategy="no",
        save_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
    )
    trainer = build_trainer(settings, model, args, data, dataset, data_collator=counter)
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started, counter.fed, counter.trained


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--n-segments", type=int, default=4)
    parser.add_argument("--steps", type=int, default=15, help="optimizer steps per mode per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output-dir", default="outputs/bench_streams")
    args = parser.parse_args()
    torch.set_num_threads(1)
    corpus = load_corpus("bach-chorales")
    settings = TrainSettings(
        output_dir=args.output_dir, preset=args.preset, batch_size=args.batch_size, n_segments=args.n_segments
    )
    config = MusicXLConfig.from_preset(args.preset)
    print(
        f"preset {args.preset}: {args.batch_size} rows x {args.n_segments} segments of {config.segment_len} tokens, "
        f"mem_len {config.mem_len}; {args.rounds} rounds of {args.steps} steps per mode"
    )
    totals = {mode: [0.0, 0, 0] for mode in ("stream", "windows")}
    for round_index in range(args.rounds):
        for mode in totals:
            seconds, fed, trained = train_steps(mode, settings, corpus, args.steps, seed=round_index)
            totals[mode] = [a + b for a, b in zip(totals[mode], (seconds, fed, trained))]
            print(
                f"round {round_index + 1} {mode}: {fed / seconds:.0f} tokens/s fed, {trained / seconds:.0f} trained "
                f"({trained / fed:.1%} of the fed tokens have a target)",
                flush=True,
            )
    rates = {mode: (fed / seconds, trained / seconds) for mode, (seconds, fed, trained) in totals.items()}
    print(
        f"stream / windows, tokens fed per second: {rates['stream'][0] / rates['windows'][0]:.2f}x; "
        f"trained tokens per second: {rates['stream'][1] / rates['windows'][1]:.2f}x"
    )


if __name__ == "__main__":
    main()
