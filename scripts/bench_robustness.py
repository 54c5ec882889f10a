"""What bounding the work and surviving the readers cost (issue 25), for the source tree on PYTHONPATH.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_robustness.py                    # about 3 minutes
    OMP_NUM_THREADS=1 PYTHONPATH=/elsewhere/src .venv/bin/python scripts/bench_robustness.py   # another tree

1. hostile files: the 45-byte file of one long rest (2 ticks a quarter, a note, a delta of 2**28 - 1 ticks, a
   note), and 960 KB of 120,000 time signatures (in the table: 3/4 and 5/8 in turn; outside it: 17/8 .. 216/8),
   encoded: tokens and seconds (best of 2);
2. the cache key of a folder of MIDI files (``--files``, written from the chorales as bench_corpus.py writes
   them): seconds (best of 3): what a cache hit costs on top of listing the files;
3. ``build_corpus`` of that folder at ``--num-proc`` 1 and 2, ``--rounds`` times each in a fresh process:
   pieces/s and CPU seconds (the build's process and its readers), medians.
Run it for two trees in turn to compare them; on a shared machine only the medians mean anything.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fuzz_midi  # beside this script: the MIDI bytes it writes


def midi(events, division: int = 480) -> bytes:
    """A one-track file from (delta ticks, event bytes) pairs (fuzz_midi.py, beside this script, writes the bytes)."""
    return fuzz_midi.midi(fuzz_midi.track(*events), division=division)


def long_rest() -> bytes:
    return midi([(0, [0x90, 60, 80]), (1, [0x80, 60, 0]), (0x0FFFFFFF, [0x90, 62, 80]), (1, [0x80, 62, 0])], 2)


def many_meters(inside: bool, count: int = 119_990) -> bytes:
    events = [(0, [0x90, 60, 80]), (480, [0x80, 60, 0])]
    for index in range(count):
        num, power = ((3, 2) if index % 2 else (5, 3)) if inside else (17 + index % 200, 3)
        events.append((1, [0xFF, 0x58, 0x04, num, power, 24, 8]))
    return midi(events + [(0, [0x90, 62, 80]), (480, [0x80, 62, 0])])


def encode_timed(data: bytes) -> tuple[int, float]:
    from hf_music_xl.models.music_xl import encoding

    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        ids = encoding.encode_midi(data)
        best = min(best, time.perf_counter() - started)
    return len(ids), best


def cache_key_seconds(folder: Path) -> float:
    from hf_music_xl.data import corpus

    items = corpus.list_items(str(folder))
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        corpus.cache_key(str(folder), items, 4, None, 0.1)
        best = min(best, time.perf_counter() - started)
    return best


def build_child(folder: str, num_proc: int, cache: str) -> None:
    """One build in this fresh process: pieces, seconds, CPU seconds of this process and its readers."""
    from hf_music_xl.data import corpus

    def cpu() -> float:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime

    started, cpu_before = time.perf_counter(), cpu()
    built = corpus.build_corpus(folder, num_proc=num_proc, cache_dir=cache, rebuild=True)
    seconds, cpu_seconds = time.perf_counter() - started, cpu() - cpu_before
    print(json.dumps({"pieces": sum(len(split) for split in built.values()), "seconds": seconds, "cpu": cpu_seconds}))


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000, help="MIDI files of the folder (parts 2 and 3)")
    parser.add_argument("--rounds", type=int, default=5, help="builds per --num-proc (part 3)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        build_child(args.child[0], int(args.child[1]), args.child[2])
        return

    for name, data in [("one long rest", long_rest()), ("time signatures in the table", many_meters(True))]:
        tokens, seconds = encode_timed(data)
        print(f"1. {name}: {len(data):,} bytes -> {tokens:,} tokens in {seconds:.3f} s", flush=True)
    tokens, seconds = encode_timed(many_meters(False))
    print(f"1. time signatures outside the table: {tokens:,} tokens in {seconds:.3f} s", flush=True)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_corpus import write_folder

    from hf_music_xl.data import music21_source

    with tempfile.TemporaryDirectory(prefix="bench-robustness-") as tmp:
        folder = Path(tmp) / "midi"
        scores = [music21_source.read_music21(path) for path in music21_source.bach_chorale_paths()[:60]]
        write_folder(folder, scores, args.files)
        print(f"2. cache key of {args.files:,} files: {cache_key_seconds(folder):.2f} s", flush=True)
        for num_proc in (1, 2):
            rates, cpus = [], []
            for round_ in range(args.rounds):
                command = [sys.executable, __file__, "--child", str(folder), str(num_proc), f"{tmp}/cache-{round_}"]
                out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
                found = json.loads(out.strip().splitlines()[-1])
                rates.append(found["pieces"] / found["seconds"])
                cpus.append(found["cpu"])
            print(
                f"3. build, --num-proc {num_proc}: {median(rates):.0f} pieces/s, {median(cpus):.2f} s CPU "
                f"(medians of {args.rounds}: {', '.join(f'{rate:.0f}' for rate in rates)} pieces/s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
