"""Tokenizer throughput against MidiTok (REMI and TSD) on the same real MIDI files, in one run.

    python scripts/bench_tokenizer.py [--pieces 100] [--repeats 5]

The files are Bach chorales from the installed music21 package, written to MIDI with symusic into a temporary
folder (never committed). Each tokenizer encodes every file from its path (MIDI parsing included) and decodes
its own tokens back to a ``symusic.Score``; the best of ``--repeats`` interleaved runs counts. MidiTok REMI and TSD are
set to the same 16th-note grid, full pitch range and no velocities (the same work); "REMI default" is MidiTok's
REMI as `REMI(TokenizerConfig())` gives it. Prints notes/s and the ratios.
"""

import argparse
import tempfile
import time
from pathlib import Path

import symusic
from miditok import REMI, TSD, TokenizerConfig

from hf_music_xl import MusicXLTokenizerFast
from hf_music_xl.data import music21_source


def write_chorales(folder: Path, count: int) -> list[Path]:
    paths = []
    for source in music21_source.bach_chorale_paths()[:count]:
        path = folder / f"{source.stem}.mid"
        music21_source.read_music21(source).dump_midi(str(path))
        paths.append(path)
    return paths


def measure(tokenizers: dict, paths: list[Path], repeats: int) -> dict:
    """Best encode and decode seconds per tokenizer over all files. Runs are interleaved (each repeat runs
    every tokenizer once) so that a noisy moment of a shared machine does not favour one of them."""
    tokens = {name: [encode(path) for path in paths] for name, (encode, _) in tokenizers.items()}  # warm-up
    best = {name: {"encode": float("inf"), "decode": float("inf")} for name in tokenizers}
    for _ in range(repeats):
        for name, (encode, decode) in tokenizers.items():
            start = time.perf_counter()
            for path in paths:
                encode(path)
            middle = time.perf_counter()
            for sequence in tokens[name]:
                decode(sequence)
            best[name]["encode"] = min(best[name]["encode"], middle - start)
            best[name]["decode"] = min(best[name]["decode"], time.perf_counter() - middle)
    return best


def count_tokens(encoded) -> int:
    # MidiTok without programs returns one token sequence per voice (track); we return one id list.
    return sum(len(sequence.ids) for sequence in encoded) if hasattr(encoded[0], "ids") else len(encoded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pieces", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    ours = MusicXLTokenizerFast()
    # MidiTok at the same 16th-note grid, pitch range and no velocities, so every tokenizer keeps the same notes.
    config = dict(pitch_range=(0, 127), beat_res={(0, 4): 4, (4, 40): 4}, use_velocities=False)
    remi, tsd = REMI(TokenizerConfig(**config)), TSD(TokenizerConfig(**config))
    remi_default = REMI(TokenizerConfig())  # what `REMI()` users get: velocities, time signatures, 32nd grid

    tokenizers = {
        "hf_music_xl": (ours.encode_midi, ours.decode_midi),
        "MidiTok REMI": (remi.encode, remi.decode),
        "MidiTok TSD": (tsd.encode, tsd.decode),
        "REMI default": (remi_default.encode, remi_default.decode),
    }
    with tempfile.TemporaryDirectory() as folder:
        paths = write_chorales(Path(folder), args.pieces)
        notes = sum(symusic.Score(str(path)).note_num() for path in paths)
        tokens = {name: sum(count_tokens(encode(path)) for path in paths) for name, (encode, _) in tokenizers.items()}
        print(f"{len(paths)} chorales, {notes} notes in 4 voices; best of {args.repeats} interleaved runs\n")
        best = measure(tokenizers, paths, args.repeats)

    print(f"{'tokenizer':<14}{'encode notes/s':>16}{'decode notes/s':>16}{'tokens/note':>13}")
    for name, seconds in best.items():
        print(
            f"{name:<14}{notes / seconds['encode']:>16,.0f}{notes / seconds['decode']:>16,.0f}"
            f"{tokens[name] / notes:>13.2f}"
        )
    ours_best = best["hf_music_xl"]
    for name in ("MidiTok REMI", "MidiTok TSD", "REMI default"):
        print(
            f"\nhf_music_xl vs {name}: encode {best[name]['encode'] / ours_best['encode']:.1f}x, "
            f"decode {best[name]['decode'] / ours_best['decode']:.1f}x faster"
        )


if __name__ == "__main__":
    main()
