"""The ``hf-music-xl`` command.

    hf-music-xl build-corpus bach-chorales --output data/chorales
    hf-music-xl train --preset tiny --max-minutes 8 --output-dir runs/tiny
    hf-music-xl demo
    hf-music-xl push runs/tiny/final you/music-xl-tiny
    hf-music-xl generate runs/tiny/final --prompt piece.mid --bars 16 --num-samples 3
    hf-music-xl evaluate --model runs/tiny/final --generated outputs/generated --skip-bars 4
    hf-music-xl app runs/tiny/final
    hf-music-xl push-space you/music-xl-tiny you/music-xl-tiny-demo

Each subcommand is one ``add_<name>(subparsers)`` function that declares its flags and sets ``run`` to its
handler; to add a subcommand, write one and list it in ``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
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
            parser.add_argument(
                flag, dest=item.name, action=argparse.BooleanOptionalAction, default=item.default, help=help_text
            )
        else:
            parser.add_argument(flag, dest=item.name, type=kind, default=item.default, help=help_text)


def dataclass_from_args(cls, args: argparse.Namespace):
    return cls(**{item.name: getattr(args, item.name) for item in dataclasses.fields(cls)})


# ----------------------------------------------------------------------------------------------------------
# build-corpus


def add_build_corpus(subparsers) -> None:
    parser = subparsers.add_parser(
        "build-corpus", help="encode a music collection into a cached train/validation DatasetDict"
    )
    parser.add_argument(
        "source",
        nargs="?",
        default="bach-chorales",
        help="bach-chorales, music21:FOLDER, a directory, a glob or a file; a .parquet file, folder or glob, a "
        "save_to_disk folder or hf:ORG/NAME (a column of MIDI bytes or note tables)",
    )
    parser.add_argument("--output", help="also save the DatasetDict and report.json here")
    parser.add_argument("--validation-fraction", type=float, default=0.1)
    parser.add_argument("--steps-per-beat", type=int, default=4, help="grid steps per quarter note")
    parser.add_argument("--limit", type=int, help="read only the first N files")
    parser.add_argument("--num-proc", type=int, default=2, help="reading processes")
    parser.add_argument("--cache-dir", help="default: $HF_MUSIC_XL_CACHE/corpora or ~/.cache/hf_music_xl/corpora")
    parser.add_argument("--rebuild", action="store_true", help="ignore a cached build")
    parser.add_argument("--midi-column", default="", help="dataset sources: the column of MIDI bytes or note tables")
    parser.add_argument("--note-tempo", type=float, default=120.0, help="tempo (qpm) of note tables without one")
    parser.add_argument("--streaming", action="store_true", help="hf:ORG/NAME: encode as it streams, no download")
    parser.set_defaults(run=run_build_corpus)


def run_build_corpus(args) -> None:
    from .data.corpus import build_corpus, read_report

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
        midi_column=args.midi_column,
        note_tempo=args.note_tempo,
        streaming=args.streaming,
    )
    report = read_report(corpus)
    location = args.output or corpus["train"].cache_files[0]["filename"].rsplit("/", 2)[0]
    for name, stats in report.get("splits", {}).items():
        print(f"{name:>10}: {stats['pieces']} pieces, {stats['tokens']} tokens, {stats['notes']} notes")
    meters = report.get("meters", {})
    if meters:
        counts = ", ".join(f"{meter} {count}" for meter, count in meters["first_meter"].items())
        print(f"meters (at the start): {counts}; {meters['pieces_changing_meter']} pieces change meter")
    print(f"skipped {len(report.get('skipped', []))} files, {len(report.get('duplicates', []))} duplicates")
    print(f"corpus: {location}  (report: {location}/report.json; {time.perf_counter() - started:.1f} s)")


# ----------------------------------------------------------------------------------------------------------
# train


def add_train(subparsers) -> None:
    from .training.settings import TrainSettings

    parser = subparsers.add_parser("train", help="train a model with the Hugging Face Trainer")
    add_dataclass_arguments(parser, TrainSettings)
    parser.set_defaults(run=run_train)


def run_train(args) -> None:
    from .training.run import train
    from .training.settings import TrainSettings

    result = train(dataclass_from_args(TrainSettings, args))
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun/accelerate only the first process reports
        return
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


# ----------------------------------------------------------------------------------------------------------
# generate


def add_generate(subparsers) -> None:
    from .generate import PRESETS

    parser = subparsers.add_parser(
        "generate",
        help="sample pieces (MIDI, piano-roll PNG, WAV when possible) from a trained model",
        description="Continue the first bars of a MIDI file, or start from nothing. Sample i uses seed + i and is "
        "written as OUTPUT_DIR/<prefix>-<i>-seed<seed>.mid/.png/.wav.",
    )
    parser.add_argument("model", help="a model directory (e.g. runs/tiny/final) or Hub id")
    parser.add_argument("--prompt", default="", help="MIDI file whose first --prompt-bars bars start each sample")
    parser.add_argument("--prompt-bars", type=int, default=4, help="bars of the prompt file to keep (default: 4)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--bars", type=int, default=8, help="bars to generate (default: 8)")
    length.add_argument("--max-new-tokens", type=int, default=0, help="tokens to generate, instead of --bars")
    parser.add_argument("--preset", default="default", choices=list(PRESETS), help="sampling preset (default: default)")
    parser.add_argument("--note-temperature", type=float, help="overrides the preset")
    parser.add_argument("--duration-temperature", type=float, help="overrides the preset")
    parser.add_argument("--top-k", type=int, help="overrides the preset (0: off)")
    parser.add_argument("--top-p", type=float, help="overrides the preset (1.0: off)")
    parser.add_argument("--num-samples", type=int, default=1, help="pieces to generate (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first sample (default: 0)")
    parser.add_argument(
        "--chunk-tokens",
        type=int,
        default=0,
        help="tokens per generate() call, resuming the memory cache (default: mem_len)",
    )
    parser.add_argument("--allow-end", action="store_true", help="let the model end a piece early with xxeos")
    parser.add_argument(
        "--pitch-range", type=int, nargs=2, metavar=("LOW", "HIGH"), help="MIDI pitches allowed for new notes"
    )
    parser.add_argument("--scale", default="", help="keep new notes in a scale, e.g. 'D minor' or 'F# major'")
    parser.add_argument(
        "--meter",
        default="",
        help="time signature of a piece started from nothing, e.g. '3/4' (a prompt brings its own)",
    )
    parser.add_argument("--output-dir", default="outputs/generated", help="where files go (default: outputs/generated)")
    parser.add_argument("--prefix", default="", help="file name prefix (default: the prompt's file stem, or 'sample')")
    parser.add_argument(
        "--stream",
        nargs="?",
        const="-",
        default="",
        metavar="FILE",
        help="print notes as they are generated (or append them to FILE)",
    )
    parser.add_argument(
        "--picture", action=argparse.BooleanOptionalAction, default=True, help="piano-roll PNG (default: on)"
    )
    parser.add_argument(
        "--audio",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="WAV when a renderer and a local soundfont exist (default: on)",
    )
    parser.add_argument("--soundfont", default="", help="a local .sf2 file (also $HF_MUSIC_XL_SOUNDFONT)")
    parser.set_defaults(run=run_generate)


def run_generate(args) -> None:
    from .generate import GenerateSettings, run_generate

    if args.max_new_tokens:
        args.bars = 0  # the two are exclusive; --bars has a default
    run_generate(dataclass_from_args(GenerateSettings, args))


# ----------------------------------------------------------------------------------------------------------
# evaluate


def add_evaluate(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="NLL per token and per note on a corpus split; musical statistics of generated pieces next to the corpus",
    )
    parser.add_argument("--model", default="", help="model directory or Hub id for NLL (default: statistics only)")
    parser.add_argument(
        "--corpus", default="bach-chorales", help="a corpus source or built corpus directory (default: bach-chorales)"
    )
    parser.add_argument("--split", default="validation", help="corpus split (default: validation)")
    parser.add_argument(
        "--generated", nargs="+", default=[], metavar="PATH", help="generated MIDI files or directories"
    )
    parser.add_argument(
        "--skip-bars", type=int, default=0, help="ignore notes of generated files in their first N bars (the prompt)"
    )
    parser.add_argument(
        "--mem-len", type=int, default=None, help="memory length for NLL, 0 for none (default: the model's own)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="pieces per NLL batch (default: 8)")
    parser.add_argument("--output", default="evaluation.json", help="JSON results (default: evaluation.json)")
    # until evaluate's flags come from EvaluateSettings: its newer fields by hand
    parser.add_argument("--max-pieces", type=int, default=0, help="this many pieces of the split (fixed by --seed)")
    parser.add_argument("--seed", type=int, default=0, help="draws the --max-pieces subset")
    parser.add_argument("--midi-column", default="", help="dataset corpora: the column of MIDI bytes or note tables")
    parser.add_argument("--note-tempo", type=float, default=120.0, help="tempo (qpm) of note tables without one")
    parser.add_argument("--streaming", action="store_true", help="hf:ORG/NAME corpora: encode as it streams")
    parser.set_defaults(run=run_evaluate)


def run_evaluate(args) -> None:
    from .evaluate import EvaluateSettings, run_evaluate

    run_evaluate(dataclass_from_args(EvaluateSettings, args))


# ----------------------------------------------------------------------------------------------------------
# push


def add_push(subparsers) -> None:
    parser = subparsers.add_parser(
        "push",
        help="publish a model directory (weights, config, tokenizer, code, model card) to the Hugging Face Hub",
        description="Upload MODEL_DIR to REPO_ID in one commit with a model card built from what training wrote; "
        "files an earlier push left there that the model no longer has are deleted. "
        "The Hub is $HF_ENDPOINT (default huggingface.co); the token is $HF_TOKEN or the one saved by `hf auth login`.",
    )
    parser.add_argument("model_dir", help="a saved model directory, e.g. runs/tiny/final")
    parser.add_argument("repo_id", help="namespace/name (or name, in your namespace)")
    parser.add_argument(
        "--private",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="visibility of a new repo (default: the Hub's)",
    )
    parser.add_argument(
        "--revision", default=None, help="branch to push to, created from main if needed (default: main)"
    )
    parser.add_argument("--commit-message", default=None, help="default: 'Upload <dir> with hf_music_xl'")
    parser.add_argument("--license", default="mit", help="license in the model card (default: mit)")
    parser.add_argument(
        "--dataset", dest="datasets", action="append", default=[], help="Hub dataset id trained on (repeatable)"
    )
    parser.add_argument("--tag", dest="tags", action="append", default=[], help="extra model card tag (repeatable)")
    parser.add_argument(
        "--create-pr", action="store_true", help="open a pull request against the branch instead of committing to it"
    )
    parser.set_defaults(run=run_push)


def run_push(args) -> None:
    from .hub.push import describe, push_to_hub

    result = push_to_hub(  # a Hub problem raises HubAccessError: one line from main()
        args.model_dir,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        license=args.license,
        datasets=args.datasets,
        tags=args.tags,
        create_pr=args.create_pr,
    )
    print(describe(result))


# ----------------------------------------------------------------------------------------------------------
# app


def add_app(subparsers) -> None:
    from .app import MAX_UPLOAD_BYTES

    parser = subparsers.add_parser(
        "app",
        help="a web page to continue MIDI files with a model (needs the app extra: pip install 'hf_music_xl[app]')",
        description="Serve a Gradio page: upload a MIDI prompt or start from nothing, choose bars, preset, "
        "temperature, seed and scale, press Generate; see the piano roll, hear it, download the MIDI file.",
    )
    parser.add_argument("model", help="a model directory (e.g. runs/tiny/final) or Hub id")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 for all)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument(
        "--max-upload-bytes",
        type=int,
        default=MAX_UPLOAD_BYTES,
        help=f"largest prompt file accepted (default: {MAX_UPLOAD_BYTES})",
    )
    parser.add_argument("--output-dir", default="", help="where generated files go (default: a temporary directory)")
    parser.set_defaults(run=run_app)


def run_app(args) -> None:
    try:
        import gradio  # noqa: F401
    except ImportError:
        sys.exit("hf-music-xl app: error: the app needs Gradio: pip install 'hf_music_xl[app]'")
    from .app import AppSettings, run_app

    run_app(AppSettings(args.model, args.host, args.port, args.max_upload_bytes, args.output_dir))


# ----------------------------------------------------------------------------------------------------------
# push-space


def add_push_space(subparsers) -> None:
    parser = subparsers.add_parser(
        "push-space",
        help="create or update a Gradio Space running the web app for a model on the Hub",
        description="Push app.py, the package files it imports, requirements.txt and a Space card to SPACE_ID; "
        "the Space loads MODEL_REPO_ID from the Hub. The Hub and token are found as for push.",
    )
    parser.add_argument("model_repo_id", help="the model on the Hub, e.g. you/chorale-xl (push it first)")
    parser.add_argument("space_id", help="namespace/name of the Space (or name, in your namespace)")
    parser.add_argument(
        "--private",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="visibility of a new Space (default: the Hub's)",
    )
    parser.set_defaults(run=run_push_space)


def run_push_space(args) -> None:
    from .hub.space import describe, push_space

    print(describe(push_space(args.model_repo_id, args.space_id, private=args.private)))


SUBCOMMANDS = [add_build_corpus, add_train, add_demo, add_generate, add_evaluate, add_push, add_app, add_push_space]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-music-xl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> None:
    from .hub.errors import HubAccessError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one INFO line per HTTP request otherwise
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, HubAccessError) as error:  # bad input, Hub problems: one clear line
        sys.exit(f"hf-music-xl {args.command}: error: {error}")


if __name__ == "__main__":
    main()
