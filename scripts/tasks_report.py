"""What each task earns (issue 22): multitask models against continuation-only models of the same budget, on the
held-out (validation) chorales.

    python scripts/tasks_report.py --train        # trains 2 x 2 tiny models into runs/tasks-report (about 50 min)
    python scripts/tasks_report.py                # measures them; writes runs/tasks-report/report.json

Every model is trained by ``hf-music-xl train`` with the same recipe (steps, tokens a step, seed), differing only
in ``--tasks``. The measures, per model, pooled over the validation chorales:

- infilling: NLL per note of the filled bars (the notes written after ``xxback``, their waits and the closing
  wait, not ``xxeos``) given both sides, against the same notes scored as a continuation of the left side only
  (the plain piece, the tokens of the same bars), by the same model and by the continuation-only models; spans of
  4 bars at seeded places;
- harmonization: NLL per note of the alto, tenor and bass given the soprano (the tokens written after each
  ``xxback``), against the same model scoring the whole piece unconditioned (the plain encoding's tokens of
  every note that is not the soprano's: its pair and the waits before it); and sampled harmonizations of the
  held-out sopranos measured by ``harmony.py`` against Bach's own voices of the same chorales;
- continuation: the plain validation NLL per note (the Trainer's metric) of every model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "tasks-report"
SEEDS = (0, 1)
MODELS = {"multitask": "continue,infill,harmonize", "continue": "continue"}  # the default weights: 2:1:1
RECIPE = dict(preset="tiny", batch_size=8, n_segments=2, max_steps=1600, eval_steps=800, save_steps=800)
SPAN_BARS = 4


def run_dir(name: str, seed: int) -> Path:
    return OUT / f"{name}-seed{seed}"


def train_one(name: str, seed: int) -> float:
    """Train one model with the recipe; returns the seconds it took (the log is in its folder)."""
    folder = run_dir(name, seed)
    folder.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "hf_music_xl.cli", "train", "--corpus", "bach-chorales", "--output-dir", str(folder)]
    argv += ["--tasks", MODELS[name], "--seed", str(seed)]
    for key, value in RECIPE.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    started = time.perf_counter()
    with open(folder / "train.log", "w") as log:
        subprocess.run(
            argv, check=True, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
    return time.perf_counter() - started


def train_all(jobs: int, names: list[str]) -> None:
    from hf_music_xl.data.corpus import load_corpus

    load_corpus("bach-chorales")  # built once here, before the runs load it side by side
    runs = [(name, seed) for seed in SEEDS for name in names]
    with ThreadPoolExecutor(jobs) as pool:
        for (name, seed), seconds in zip(runs, pool.map(lambda run: train_one(*run), runs)):
            print(f"{name} seed {seed}: {seconds / 60:.1f} min", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", action="store_true", help="train the models (else measure them)")
    parser.add_argument("--jobs", type=int, default=2, help="trainings run side by side (one thread each)")
    parser.add_argument("--models", default=",".join(MODELS), help="which models to train, of " + ", ".join(MODELS))
    parser.add_argument("--pieces", type=int, default=0, help="validation chorales measured (0: all)")
    parser.add_argument("--samples", type=int, default=1, help="sampled harmonizations per held-out soprano")
    args = parser.parse_args()
    if args.train:
        train_all(args.jobs, args.models.split(","))
        return
    from tasks_measures import measure_all  # noqa: PLC0415 - the measuring half, beside this script

    report = measure_all(OUT, MODELS, SEEDS, args.pieces, args.samples, SPAN_BARS)
    (OUT / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
