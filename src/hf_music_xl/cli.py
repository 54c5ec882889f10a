"""The ``hf-music-xl`` command.

    hf-music-xl build-corpus bach-chorales --output data/chorales
    hf-music-xl train --preset tiny --max-minutes 8 --output-dir runs/tiny
    hf-music-xl demo

Each subcommand is one ``add_<name>(subparsers)`` function that declares its flags and sets ``run`` to its
handler; to add a subcommand, write one and list it in ``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
import typing


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One ``--field-name`` flag per dataclass field, with its default and ``metadata['help']``."""
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        flag = "--" + item.name.replace("_", "-")
        kind = hints[item.name]
        help_text = f"{item.metadata.get('help', '')} (default: {item.default})"
        if kind is bool:
            parser.add_argument(flag, dest=item.name, action=argparse.BooleanOptionalAction, default=item.default, help=help_text)
        else:
            parser.add_argument(flag, dest=item.name, type=kind, default=item.default, help=help_text)


def dataclass_from_args(cls, args: argparse.Namespace):
    return cls(**{item.name: getattr(args, item.name) for item in dataclasses.fields(cls)})


# ----------------------------------------------------------------------------------------------------------
# build-corpus


def add_build_corpus(subparsers) -> None:
    parser = subparsers.add_parser("build-corpus", help="encode a music collection into a cached train/validation DatasetDict")
    parser.add_argument("source", nargs="?", default="bach-chorales", help="bach-chorales, music21:FOLDER, a directory, a glob or a file")
    parser.add_argument("--output", help="also save the DatasetDict and report.json here")
    parser.add_argument("--validation-fraction", type=float, default=0.1)
    parser.add_argument("--steps-per-beat", type=int, default=4, help="grid steps per quarter note")
    parser.add_argument("--limit", type=int, help="read only the first N files")
    parser.add_argument("--num-proc", type=int, default=2, help="reading processes")
    parser.add_argument("--cache-dir", help="default: $HF_MUSIC_XL_CACHE/corpora or ~/.cache/hf_music_xl/corpora")
    parser.add_argument("--rebuild", action="store_true", help="ignore a cached build")
    parser.set_defaults(run=run_build_corpus)


def run_build_corpus(args) -> None:
    from .corpus import build_corpus, read_report

    started = time.perf_counter()
    corpus = build_corpus(
        args.source,
        output=args.output,
        steps_per_beat=args.steps_per_beat,
        validation_fraction=args.validation_fraction,
        limit=args.limit,
        num_proc=args.num_proc,
        cache_dir=args.cache_dir,
        rebuild=args.rebuild,
    )
    report = read_report(corpus)
    location = args.output or corpus["train"].cache_files[0]["filename"].rsplit("/", 2)[0]
    for name, stats in report.get("splits", {}).items():
        print(f"{name:>10}: {stats['pieces']} pieces, {stats['tokens']} tokens, {stats['notes']} notes")
    print(f"skipped {len(report.get('skipped', []))} files, {len(report.get('duplicates', []))} duplicates")
    print(f"corpus: {location}  (report: {location}/report.json; {time.perf_counter() - started:.1f} s)")


# ----------------------------------------------------------------------------------------------------------
# train


def add_train(subparsers) -> None:
    from .training import TrainSettings

    parser = subparsers.add_parser("train", help="train a model with the Hugging Face Trainer")
    add_dataclass_arguments(parser, TrainSettings)
    parser.set_defaults(run=run_train)


def run_train(args) -> None:
    from .training import TrainSettings, train

    result = train(dataclass_from_args(TrainSettings, args))
    print(json.dumps({k: v for k, v in result.metrics.items() if k.startswith("eval_")}, indent=2))
    print(f"final model, tokenizer and generation config: {result.final_dir}")


# ----------------------------------------------------------------------------------------------------------
# demo


def add_demo(subparsers) -> None:
    from .demo import DemoSettings

    parser = subparsers.add_parser("demo", help="the main job: corpus, bounded training, NLL, a generated continuation")
    add_dataclass_arguments(parser, DemoSettings)
    parser.set_defaults(run=run_demo)


def run_demo(args) -> None:
    from .demo import DemoSettings, run_demo

    run_demo(dataclass_from_args(DemoSettings, args))


SUBCOMMANDS = [add_build_corpus, add_train, add_demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-music-xl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as error:  # bad input: one clear line, no traceback
        sys.exit(f"hf-music-xl {args.command}: error: {error}")


if __name__ == "__main__":
    main()
