"""Corpus build speed and peak memory, against peers in the same run (CPU, one process each).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_corpus.py                        # about 5 minutes
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_corpus.py --sizes 200,800 --chorales 30   # quick

1. chorales: ``build_corpus("bach-chorales", limit=N)`` (music21 parse, part extraction, encoding, dedup, split,
   Arrow save) vs music21's ``corpus.parse(forceSource=True)`` of the same N files alone (the parsing floor);
2. a folder of MIDI files: the first ``--chorales`` chorales written to MIDI in a temporary folder (never
   committed), replicated to each of ``--sizes`` files by transposition (-20..+20) and dropping one voice, so
   every file has different tokens and deduplication keeps them all. For each size, in a fresh subprocess:
   - ours: ``build_corpus(folder, num_proc=1)``;
   - naive: the same files encoded by our encoder into Python lists, then ``Dataset.from_dict`` (the usual
     "lists in RAM" build);
   - streamed: the same encoding written row by row with ``Dataset.from_generator`` (Arrow on disk as it goes; what
     a flat-memory build looks like);
   - MidiTok REMI (16th grid, no velocities) tokenizing every file (speed peer only; sizes <= --miditok-max);
   pieces/s, and peak RSS (VmHWM) minus the RSS after imports, i.e. what the build itself added; and the time
   the cache key takes (every file's bytes hashed), the price of a cache hit.
Prints ratios; absolute times on a shared machine are noise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def vm(field: str) -> float:
    """MB of a /proc/self/status field (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(method: str, folder: str, cache: str) -> dict:
    """Run one build in this (fresh) process; report pieces, seconds and memory."""
    import numpy as np  # noqa: F401  (imports first, so the baseline RSS includes them)
    from datasets import Dataset  # noqa: F401

    from hf_music_xl.data import corpus
    from hf_music_xl.models.music_xl import encoding

    paths = sorted(Path(folder).glob("*.mid"))
    if method == "miditok":
        from miditok import REMI, TokenizerConfig

        tokenizer = REMI(TokenizerConfig(beat_res={(0, 16): 4}, use_velocities=False, pitch_range=(0, 127)))
    baseline = vm("VmRSS")
    started = time.perf_counter()
    if method == "ours":
        built = corpus.build_corpus(folder, num_proc=1, cache_dir=cache, rebuild=True)
        pieces = sum(len(split) for split in built.values())
    elif method == "naive":
        rows = {"input_ids": [], "source": [], "n_notes": []}
        for path in paths:
            ids = encoding.encode_midi(path.read_bytes(), add_bos=True, add_eos=True)
            rows["input_ids"].append(ids.tolist())
            rows["source"].append(str(path))
            rows["n_notes"].append(int(((ids >= encoding.NOTE_OFFSET) & (ids < encoding.NOTE_OFFSET + 128)).sum()))
        dataset = Dataset.from_dict(rows)
        dataset.save_to_disk(str(Path(cache) / "naive"))
        pieces = len(dataset)
    elif method == "generator":
        from datasets import Features, Sequence, Value

        def rows():
            for path in paths:
                ids = encoding.encode_midi(path.read_bytes(), add_bos=True, add_eos=True)
                n_notes = int(((ids >= encoding.NOTE_OFFSET) & (ids < encoding.NOTE_OFFSET + 128)).sum())
                yield {"input_ids": ids.astype("int16"), "source": str(path), "n_notes": n_notes}

        features = Features(
            {"input_ids": Sequence(Value("int16")), "source": Value("string"), "n_notes": Value("int32")}
        )
        dataset = Dataset.from_generator(rows, features=features, cache_dir=str(Path(cache) / "generator"))
        pieces = len(dataset)
    elif method == "miditok":
        tokens = [tokenizer.encode(path) for path in paths]
        pieces = len(tokens)
    else:
        raise ValueError(method)
    seconds = time.perf_counter() - started
    return {
        "method": method,
        "files": len(paths),
        "pieces": pieces,
        "seconds": seconds,
        "baseline_mb": baseline,
        "peak_mb": vm("VmHWM"),
        "added_mb": vm("VmHWM") - baseline,
    }


def run_child(method: str, folder: Path, cache: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", method, str(folder), str(cache)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_folder(folder: Path, scores: list, size: int) -> None:
    """``size`` MIDI files: chorale i, transposed by t, with voice v dropped (v = 0: all voices)."""
    folder.mkdir(parents=True, exist_ok=True)
    variants = [(t, v) for v in range(5) for t in range(-20, 21)]
    written = 0
    for t, v in variants:
        for index, score in enumerate(scores):
            if written == size:
                return
            variant = score.copy()
            if v:
                del variant.tracks[v - 1]
            variant.shift_pitch(t, inplace=True)
            variant.dump_midi(str(folder / f"c{index:03d}-t{t + 20:02d}-v{v}.mid"))
            written += 1
    raise ValueError(f"at most {len(variants) * len(scores)} distinct files from {len(scores)} chorales")


def cache_key_seconds(folder: Path) -> float:
    """What deciding whether a folder's corpus is cached costs: its files listed and hashed (best of 3)."""
    from hf_music_xl.data import corpus

    items = corpus.list_items(str(folder))
    times = []
    for _ in range(3):
        started = time.perf_counter()
        corpus.cache_key(str(folder), items, 4, None, 0.1)
        times.append(time.perf_counter() - started)
    return min(times)


def bench_chorales(count: int, cache: Path) -> dict:
    from music21 import corpus as m21corpus

    from hf_music_xl.data import corpus, music21_source

    paths = music21_source.bach_chorale_paths()[:count]
    started = time.perf_counter()
    built = corpus.build_corpus("bach-chorales", limit=count, num_proc=1, cache_dir=cache, rebuild=True)
    ours = time.perf_counter() - started
    started = time.perf_counter()
    for path in paths:
        m21corpus.parse(str(path), forceSource=True)
    parse = time.perf_counter() - started
    pieces = sum(len(split) for split in built.values())
    return {"files": count, "pieces": pieces, "ours_seconds": ours, "parse_seconds": parse}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chorales", type=int, default=60, help="chorales for part 1 and as the folder's seeds")
    parser.add_argument("--sizes", default="500,2000,8000", help="MIDI folder sizes")
    parser.add_argument("--miditok-max", type=int, default=2000, help="largest size MidiTok tokenizes")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return

    import torch

    torch.set_num_threads(1)
    from hf_music_xl.data import music21_source

    with tempfile.TemporaryDirectory(prefix="bench-corpus-") as tmp:
        tmp = Path(tmp)
        chorales = bench_chorales(args.chorales, tmp / "cache-chorales")
        c = chorales
        print(
            f"1. chorales ({c['files']} files -> {c['pieces']} pieces): build {c['pieces'] / c['ours_seconds']:.1f} "
            f"pieces/s; music21 parse alone {c['files'] / c['parse_seconds']:.1f} files/s; build / parse time "
            f"{c['ours_seconds'] / c['parse_seconds']:.2f}x"
        )

        scores = [music21_source.read_music21(p) for p in music21_source.bach_chorale_paths()[: args.chorales]]
        rows = []
        for size in [int(s) for s in args.sizes.split(",")]:
            folder = tmp / f"midi-{size}"
            write_folder(folder, scores, size)
            print(f"   cache key of {size} files (the sha1 of each): {cache_key_seconds(folder):.2f} s", flush=True)
            methods = ["ours", "naive", "generator"] + (["miditok"] if size <= args.miditok_max else [])
            found = {m: run_child(m, folder, tmp / f"cache-{size}-{m}") for m in methods}
            rows.append((size, found))
            ours, naive = found["ours"], found["naive"]
            line = (
                f"2. MIDI folder of {size} files: ours {ours['pieces'] / ours['seconds']:.0f} pieces/s, "
                f"+{ours['added_mb']:.1f} MB peak RSS; naive lists+from_dict {naive['pieces'] / naive['seconds']:.0f} "
                f"pieces/s, +{naive['added_mb']:.1f} MB; speed ours/naive {naive['seconds'] / ours['seconds']:.2f}x"
            )
            gen = found["generator"]
            line += (
                f"; streamed from_generator {gen['pieces'] / gen['seconds']:.0f} pieces/s, +{gen['added_mb']:.1f} MB"
            )
            if "miditok" in found:
                tok = found["miditok"]
                line += f"; MidiTok REMI {tok['pieces'] / tok['seconds']:.0f} files/s"
                line += f", ours/MidiTok {tok['seconds'] / ours['seconds']:.2f}x"
            print(line, flush=True)
            import shutil

            shutil.rmtree(folder)
        (s0, f0), (s1, f1) = rows[0], rows[-1]
        for method in ("ours", "naive", "generator"):
            growth = (f1[method]["added_mb"] - f0[method]["added_mb"]) / (s1 - s0) * 1000
            print(
                f"3. {method}: peak RSS added {f0[method]['added_mb']:.1f} MB at {s0} files -> "
                f"{f1[method]['added_mb']:.1f} MB at {s1} files ({growth:.2f} MB per 1,000 files; "
                f"RSS after imports {f1[method]['baseline_mb']:.0f} MB)"
            )


if __name__ == "__main__":
    main()
