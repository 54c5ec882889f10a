"""Scale: a corpus far larger than the chorales, built and trained on in flat memory (issue 24).

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/bench_scale.py            # scaled down: about 8 minutes
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_scale.py --build-sizes 10000,50000,200000 \\
        --train-scales 1,10,100 --chorales 350                                   # the issue's full sizes

1. synthesize: ``--chorales`` Bach chorales from music21 (parsed at run time, never committed) cut into their 4/4
   bars; each synthetic piece is 8-24 random real bars, recombined across chorales, transposed (-5..+6, within
   21..108) and re-timed (a tempo of 60-140 qpm written into the MIDI file), written as MIDI bytes into parquet
   files (a temporary folder) of the largest size needed;
2. build throughput: ``build_corpus(PARQUET, limit=N, num_proc=P)`` for each size of ``--build-sizes`` and P = 1,
   2, each in a fresh process: pieces/s and the peak RSS the build added to the main process (VmHWM minus the RSS
   after imports) and the largest worker's peak; with this tree's code and with ``--build-baseline-ref`` (the
   build before its memory and worker changes);
3. training: ``train()`` (``hf-music-xl train``: tiny preset, 20 steps, batch 16, no evaluation or save inside the
   steps; steps/s from the end of the first step to the end of the last, so the evaluation of the validation split
   that the Trainer runs as the last step ends is left out) on corpora of ``--train-scales`` times the chorales'
   size (in pieces), each in a fresh process, with this tree's code and with ``--baseline-ref`` (the code whose
   streams held every token in RAM): peak RSS and steps/s; ratios against the 1x run of the same code. ``--repeats
   R`` runs the scales R times in turn (1x, 10x, 100x, 1x, ...) so that a swing of the shared machine does not land
   on one scale only.
Absolute times on a shared machine are noise; compare the ratios. Run it from the repository's root (the baselines
are ``git archive``d from there).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHORALES = 350  # the bundled corpus's chorales: the 1x of the training scales
ROWS_PER_FILE = 5000


def vm(field: str) -> float:
    """MB of a /proc/self/status field (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ----------------------------------------------------------------------------------------------------------
# 1. A synthetic corpus of real bars


def chorale_bars(count: int) -> list[list[tuple[int, int, int, int]]]:
    """The 4/4 bars of the first ``count`` chorales: each a list of (onset in bar, duration, pitch, velocity) in
    ticks of 480 a quarter."""
    from hf_music_xl.data import music21_source

    bars = []
    for path in music21_source.bach_chorale_paths()[:count]:
        score = music21_source.read_music21(path).resample(480)
        signatures = score.time_signatures
        if len(signatures) and (signatures[0].numerator, signatures[0].denominator) != (4, 4):
            continue
        by_bar: dict[int, list] = {}
        for track in score.tracks:
            for note in track.notes:
                by_bar.setdefault(note.time // 1920, []).append(
                    (note.time % 1920, note.duration, note.pitch, note.velocity)
                )
        bars.extend(notes for notes in by_bar.values() if notes)
    return bars


def synthesize(bars, count: int, folder: Path, seed: int = 0) -> list[str]:
    """``count`` pieces of recombined, transposed, re-timed real bars as MIDI bytes in parquet files."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import symusic

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files, names, blobs = [], [], []
    for index in range(count):
        chosen = rng.integers(0, len(bars), size=int(rng.integers(8, 25)))
        pitches = [pitch for bar in chosen for _, _, pitch, _ in bars[bar]]
        low, high = 21 - min(pitches), 108 - max(pitches)
        shift = int(rng.integers(max(-5, low), min(6, high) + 1))
        score = symusic.Score(480)
        score.tempos.append(symusic.Tempo(0, float(rng.integers(60, 141))))
        track = symusic.Track(program=0)
        for place, bar in enumerate(chosen):
            for onset, duration, pitch, velocity in bars[bar]:
                track.notes.append(symusic.Note(place * 1920 + onset, duration, pitch + shift, velocity))
        score.tracks.append(track)
        names.append(f"synthetic-{index}")
        blobs.append(score.dumps_midi())
        if len(names) == ROWS_PER_FILE or index == count - 1:
            path = folder / f"part-{len(files):05d}.parquet"
            pq.write_table(pa.table({"name": names, "midi": blobs}), path)
            files.append(str(path))
            names, blobs = [], []
    return files


# ----------------------------------------------------------------------------------------------------------
# 2. and 3. Measurements, each in a fresh process


class AnonPeak:
    """The peak of RssAnon (MB), sampled every 20 ms in a thread: the process's own memory, without the file-backed
    pages of memory-mapped Arrow files that VmHWM also counts."""

    def __init__(self):
        import threading

        self.peak, self.running = vm("RssAnon"), True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, vm("RssAnon"))
            time.sleep(0.02)

    def stop(self) -> float:
        self.running = False
        self.thread.join()
        return max(self.peak, vm("RssAnon"))


def build_child(source: str, limit: int, num_proc: int, cache: str) -> dict:
    import resource

    from hf_music_xl.data.corpus import build_corpus, read_report

    base, anon_base, anon = vm("VmRSS"), vm("RssAnon"), AnonPeak()
    started = time.perf_counter()
    corpus = build_corpus(source, limit=limit, num_proc=num_proc, cache_dir=cache, validation_fraction=0.02)
    seconds = time.perf_counter() - started
    kept = read_report(corpus)["pieces_kept"]
    worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "pieces": kept,
        "seconds": seconds,
        "added_mb": vm("VmHWM") - base,
        "worker_peak_mb": worker,
        "anon_added_mb": anon.stop() - anon_base,
    }  # a forked worker counts the parent's shared pages


def train_child(corpus: str, output: str) -> dict:
    import transformers

    from hf_music_xl.training.run import train
    from hf_music_xl.training.settings import TrainSettings

    step_ends = []  # the Trainer evaluates the validation split when the last step ends: steps/s leaves it out
    training_step = transformers.Trainer.training_step

    def timed_step(*args, **kwargs):
        loss = training_step(*args, **kwargs)
        step_ends.append(time.perf_counter())
        return loss

    transformers.Trainer.training_step = timed_step
    base, anon = vm("VmRSS"), AnonPeak()
    settings = TrainSettings(
        corpus=corpus, output_dir=output, preset="tiny", max_steps=20, batch_size=16, save_steps=1000,
        eval_steps=1000, logging_steps=1000, precision="fp32",
    )  # fmt: skip
    result = train(settings)
    peak = {"peak_mb": vm("VmHWM"), "added_mb": vm("VmHWM") - base, "anon_peak_mb": anon.stop()}
    steps_per_s = (len(step_ends) - 1) / (step_ends[-1] - step_ends[0])  # from the end of the first step
    return {"steps_per_s": steps_per_s, "train_seconds": result.train_seconds, **peak}


def in_child(function: str, *arguments, pythonpath: str | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    code = (
        f"import json, sys; sys.path.insert(0, {str(REPO / 'scripts')!r}); import bench_scale; "
        f"print('RESULT', json.dumps(bench_scale.{function}(*{list(arguments)!r})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tempfile.gettempdir()
    )
    if done.returncode:
        raise RuntimeError(f"{function}{arguments} failed:\n{done.stderr[-3000:]}")
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])


def baseline_tree(ref: str, folder: Path) -> str:
    """The ``src/`` of ``ref`` (today's code) extracted into ``folder``; returns its path for PYTHONPATH."""
    archive = subprocess.run(["git", "archive", ref, "src"], capture_output=True, check=True)
    (folder / ref).mkdir()
    subprocess.run(["tar", "-x", "-C", str(folder / ref)], input=archive.stdout, check=True)
    return str(folder / ref / "src")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chorales", type=int, default=60, help="chorales whose bars make the synthetic pieces")
    parser.add_argument("--build-sizes", default="2000,5000,10000", help="pieces per build (full: 10000,50000,200000)")
    parser.add_argument("--train-scales", default="1,10,30", help="training corpora, x 350 pieces (full: 1,10,100)")
    parser.add_argument("--baseline-ref", default="3ed14ff", help="git ref of the code with its streams in RAM")
    parser.add_argument("--build-baseline-ref", default="4336828", help="git ref of the build before issue 24's fixes")
    parser.add_argument("--repeats", type=int, default=1, help="training runs per scale and code, in turn")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--parts", default="build,train", help="what to measure: build, train or both")
    args = parser.parse_args()
    build_sizes = [int(size) for size in args.build_sizes.split(",")]
    scales = [int(scale) for scale in args.train_scales.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench_scale_") as scratch:
        scratch = Path(scratch)
        started = time.perf_counter()
        bars = chorale_bars(args.chorales)
        largest = max(build_sizes * ("build" in args.parts) + [scale * CHORALES for scale in scales])
        synthesize(bars, largest, scratch / "parquet")
        print(f"synthesized {largest:,} pieces from {len(bars):,} real bars in {time.perf_counter() - started:.0f} s")

        parts = args.parts.split(",")
        builds = {"this tree": None}
        if not args.skip_baseline:
            builds[f"baseline {args.build_baseline_ref}"] = baseline_tree(args.build_baseline_ref, scratch)
        print("\nbuild: pieces/s, peak RSS added (all; anonymous, without mapped files) and the largest worker's peak")
        for size in build_sizes if "build" in parts else []:
            for label, pythonpath in builds.items():
                rates = {}
                for num_proc in (1, 2):
                    cache = scratch / f"cache-build-{size}-{num_proc}-{label.split()[-1]}"
                    result = in_child(
                        "build_child", str(scratch / "parquet"), size, num_proc, str(cache), pythonpath=pythonpath
                    )
                    shutil.rmtree(cache)
                    rates[num_proc] = result["pieces"] / result["seconds"]
                    print(
                        f"  {label:>18}, {size:>8,} pieces, {num_proc} process(es): {rates[num_proc]:7.0f} pieces/s"
                        f"{'' if num_proc == 1 else f' ({rates[2] / rates[1]:.2f}x of 1)'},"
                        f" +{result['added_mb']:6.1f} MB (anonymous +{result['anon_added_mb']:5.1f} MB;"
                        f" worker peak {result['worker_peak_mb']:.0f} MB)", flush=True
                    )  # fmt: skip

        corpora = {}
        for scale in scales if "train" in parts else []:
            cache = scratch / f"cache-train-{scale}"
            in_child("build_child", str(scratch / "parquet"), scale * CHORALES, 2, str(cache))
            corpora[scale] = str(next(cache.iterdir()))
        trees = {"this tree": None}
        if not args.skip_baseline:
            trees[f"baseline {args.baseline_ref}"] = baseline_tree(args.baseline_ref, scratch)
        print("\ntrain, 20 steps (tiny, batch 16): peak RSS and steps/s")
        for repeat in range(args.repeats if "train" in parts else 0):
            for label, pythonpath in trees.items():
                first = None
                for scale in scales:
                    output = scratch / f"run-{label.split()[-1]}-{scale}-{repeat}"
                    result = in_child("train_child", corpora[scale], str(output), pythonpath=pythonpath)
                    shutil.rmtree(output, ignore_errors=True)
                    first = first or result
                    print(
                        f"  {label:>18}, {scale:>4}x ({scale * CHORALES:,} pieces): peak {result['peak_mb']:6.0f} MB "
                        f"({result['peak_mb'] - first['peak_mb']:+5.0f} MB vs 1x; anon {result['anon_peak_mb']:.0f} MB"
                        f", {result['anon_peak_mb'] - first['anon_peak_mb']:+5.0f}), {result['steps_per_s']:.2f} "
                        f"steps/s ({result['steps_per_s'] / first['steps_per_s']:.2f}x of 1x)", flush=True
                    )  # fmt: skip
        print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
