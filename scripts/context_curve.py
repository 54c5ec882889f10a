"""The context curve: what the TransformerXL memory buys. NLL per note on long held-out pieces as a function of the
memory length at evaluation, for stream-trained and window-trained models of the same size, steps and tokens.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/context_curve.py                 # 4 trainings + evaluation: ~1.5 h here
    OMP_NUM_THREADS=1 .venv/bin/python scripts/context_curve.py --steps 4 --seeds 0 --eval-limit 2   # smoke run

1. Corpora, from the installed music21 package: ``music21:palestrina`` (1,318 Humdrum mass movements; train and
   validation split by content hash), and ``music21:beethoven`` (string quartet movements), which no model trains
   on. Haydn, Mozart and Monteverdi are never read.
2. Training, through the real command (``hf-music-xl train``, one process per run, ``--parallel`` at a time, one
   thread each): ``--train-mode stream`` and ``--train-mode windows``, each with ``--seeds``, the same preset,
   memory, rows, segments per row and steps, so the same tokens.
3. Evaluation (``evaluate.corpus_nll``: each piece whole, in segments with the memory carried) of each final model
   at every ``--mem-lens`` value on two held-out sets: the Palestrina validation movements of at least
   ``--min-tokens`` tokens (the longest held out), and the Beethoven movements.

Writes OUT/results.json, OUT/report.md (the tables) and OUT/context_curve.png (the plot).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TRAIN_CORPUS = "music21:palestrina"
QUARTETS = "music21:beethoven"
MODES = ("stream", "windows")


def held_out_sets(min_tokens: int, limit: int = 0) -> dict:
    """{name: split} of the long held-out pieces."""
    from datasets import concatenate_datasets

    from hf_music_xl.data.corpus import load_corpus

    palestrina = load_corpus(TRAIN_CORPUS)["validation"]
    long_ones = palestrina.filter(lambda row: len(row["input_ids"]) >= min_tokens)
    quartets = load_corpus(QUARTETS)
    quartets = concatenate_datasets([quartets[name] for name in quartets])  # none trained on: all of them
    if limit:
        long_ones, quartets = (
            long_ones.select(range(min(limit, len(long_ones)))),
            quartets.select(range(min(limit, len(quartets)))),
        )
    return {f"Palestrina validation, >= {min_tokens} tokens": long_ones, "Beethoven quartets": quartets}


def train_run(mode: str, seed: int, args, out: Path) -> int:
    run_dir = out / f"{mode}-seed{seed}"
    if (run_dir / "final" / "model.safetensors").exists() and args.reuse:
        print(f"{mode} seed {seed}: kept from an earlier run", flush=True)
        return 0
    command = [
        sys.executable,
        "-m",
        "hf_music_xl.cli",
        "train",
        "--corpus",
        TRAIN_CORPUS,
        "--train-mode",
        mode,
        "--preset",
        args.preset,
        "--model-overrides",
        args.model_overrides,
        "--batch-size",
        str(args.batch_size),
        "--n-segments",
        str(args.n_segments),
        "--max-steps",
        str(args.steps),
        "--seed",
        str(seed),
        "--eval-steps",
        str(args.steps),
        "--save-steps",
        str(args.steps),
        "--logging-steps",
        "50",
        "--output-dir",
        str(run_dir),
    ]
    started = time.perf_counter()
    with open(out / f"{mode}-seed{seed}.log", "w") as log:
        code = subprocess.call(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"},
        )
    print(f"{mode} seed {seed}: exit {code} after {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    return code


def evaluate_run(run_dir: Path, sets: dict, mem_lens: list[int], batch_size: int) -> dict:
    import torch

    from hf_music_xl.evaluate import corpus_nll
    from hf_music_xl.generate import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(str(run_dir / "final"))
    results = {}
    with torch.no_grad():
        for name, split in sets.items():
            results[name] = {str(m): corpus_nll(model, split, batch_size, mem_len=m, progress=False) for m in mem_lens}
    return {"trained_mem_len": model.config.mem_len, "segment_len": model.config.segment_len, "nll": results}


def report(results: dict, args, sets: dict, wall: float) -> str:
    """The markdown tables: NLL per note (mean over seeds, and each seed) per memory length, per held-out set."""
    lines = [
        f"Trained on {TRAIN_CORPUS} (train split), preset {args.preset} ({args.model_overrides}), "
        f"{args.steps} steps of {args.batch_size} rows x {args.n_segments} segments; seeds {args.seeds}. "
        "NLL per note in nats (lower is better); columns: memory length at evaluation.",
        "",
    ]
    for name, split in sets.items():
        tokens = sum(len(ids) for ids in split["input_ids"])
        lines += [
            f"**{name}** ({len(split)} pieces, {tokens:,} tokens)",
            "",
            "| training | " + " | ".join(f"mem {m}" for m in args.mem_lens) + " | 1,024 vs 0 |",
            "|---|" + "---|" * (len(args.mem_lens) + 1),
        ]
        for mode in MODES:
            runs = [results[f"{mode}-seed{seed}"] for seed in args.seed_list if f"{mode}-seed{seed}" in results]
            if not runs:
                continue
            per_mem = [[run["nll"][name][str(m)]["nll_per_note"] for run in runs] for m in args.mem_lens]
            means = [statistics.fmean(values) for values in per_mem]
            cells = [f"{mean:.3f} ({' / '.join(f'{v:.3f}' for v in values)})" for mean, values in zip(means, per_mem)]
            change = means[-1] / means[0] - 1
            lines.append(f"| {mode} | " + " | ".join(cells) + f" | {change:+.1%} |")
        lines.append("")
    lines.append(f"Wall time of this invocation: {wall / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def plot(results: dict, args, sets: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4.2), squeeze=False)
    for axis, name in zip(axes[0], sets):
        for mode, color in zip(MODES, ("tab:blue", "tab:orange")):
            for seed in args.seed_list:
                run = results.get(f"{mode}-seed{seed}")
                if run:
                    values = [run["nll"][name][str(m)]["nll_per_note"] for m in args.mem_lens]
                    axis.plot(
                        range(len(args.mem_lens)),
                        values,
                        "o-",
                        color=color,
                        alpha=0.8,
                        label=f"{mode}-trained" if seed == args.seed_list[0] else None,
                    )
        axis.set_xticks(range(len(args.mem_lens)), [str(m) for m in args.mem_lens])
        axis.set_xlabel("memory length at evaluation (tokens)")
        axis.set_ylabel("NLL per note (nats)")
        axis.set_title(name, fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--model-overrides", default="mem_len=256", help="config overrides of every run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--n-segments", type=int, default=4)
    parser.add_argument("--mem-lens", default="0,64,128,256,512,1024")
    parser.add_argument("--min-tokens", type=int, default=2000, help="held-out Palestrina movements at least this long")
    parser.add_argument("--eval-limit", type=int, default=0, help="pieces per held-out set (0: all)")
    parser.add_argument("--eval-batch-size", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--reuse", action="store_true", help="keep trained runs found in OUT")
    parser.add_argument("--out", default="outputs/context_curve")
    args = parser.parse_args()
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    args.mem_lens = [int(m) for m in args.mem_lens.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    from hf_music_xl.data.corpus import load_corpus

    load_corpus(TRAIN_CORPUS)  # build both once, before the runs race to
    load_corpus(QUARTETS)
    jobs = [(mode, seed) for seed in args.seed_list for mode in MODES]
    with ThreadPoolExecutor(args.parallel) as pool:
        codes = list(pool.map(lambda job: train_run(*job, args, out), jobs))
    if any(codes):
        sys.exit(f"{sum(map(bool, codes))} trainings failed; see the logs in {out}")

    sets = held_out_sets(args.min_tokens, args.eval_limit)
    names = [f"{mode}-seed{seed}" for mode, seed in jobs]
    with ThreadPoolExecutor(args.parallel) as pool:  # torch releases the GIL: one thread per run, as training
        evaluations = pool.map(lambda name: evaluate_run(out / name, sets, args.mem_lens, args.eval_batch_size), names)
    results = dict(zip(names, evaluations))
    for name in names:
        print(
            f"{name}: "
            + "; ".join(
                f"{s}: " + " ".join(f"{r['nll_per_note']:.3f}" for r in by_mem.values())
                for s, by_mem in results[name]["nll"].items()
            ),
            flush=True,
        )
    wall = time.perf_counter() - started
    command = "OMP_NUM_THREADS=1 .venv/bin/python scripts/context_curve.py " + " ".join(sys.argv[1:])
    (out / "results.json").write_text(
        json.dumps({"command": command.strip(), "wall_seconds": round(wall, 1), "runs": results}, indent=2) + "\n"
    )
    table = report(results, args, sets, wall)
    (out / "report.md").write_text(table)
    plot(results, args, sets, out / "context_curve.png")
    print(table)
    print(f"plot: {out / 'context_curve.png'}")


if __name__ == "__main__":
    main()
