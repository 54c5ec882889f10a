"""The ``hf-music-xl`` command.

    hf-music-xl build-corpus bach-chorales --output data/chorales
    hf-music-xl train --preset tiny --max-minutes 8 --output-dir runs/tiny
    hf-music-xl demo
    hf-music-xl push runs/tiny/final you/music-xl-tiny
    hf-music-xl generate runs/tiny/final --prompt piece.mid --bars 16 --num-samples 3
    hf-music-xl infill runs/tasks/final piece.mid --bars 5-8 --output filled.mid
    hf-music-xl harmonize runs/tasks/final melody.mid --output harmonized.mid
    hf-music-xl evaluate --model runs/tiny/final --generated outputs/generated --skip-bars 4
    hf-music-xl app runs/tiny/final
    hf-music-xl push-space you/music-xl-tiny you/music-xl-tiny-demo

Each subcommand is one ``add_<name>(subparsers)`` function that declares its flags and sets ``run`` to its
handler (``command_<name>``); to add a subcommand, write one and list it in ``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from .flags import add_dataclass_arguments, dataclass_from_args, not_flags_of

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
    parser.add_argument(
        "--time-limit",
        type=float,
        help="seconds to read one file before it counts as hung and is skipped (default: 600; 0: no limit)",
    )
    parser.set_defaults(run=command_build_corpus)


def command_build_corpus(args) -> None:
    from .data.corpus import DEFAULT_TIME_LIMIT, build_corpus, read_report

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
        time_limit=DEFAULT_TIME_LIMIT if args.time_limit is None else args.time_limit or None,
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
    parser.set_defaults(run=command_train)


def command_train(args) -> None:
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
    parser.set_defaults(run=command_demo)


def command_demo(args) -> None:
    from .demo import DemoSettings, run_demo

    run_demo(dataclass_from_args(DemoSettings, args))


# ----------------------------------------------------------------------------------------------------------
# generate


def add_generate(subparsers) -> None:
    from .generate import GenerateSettings

    parser = subparsers.add_parser(
        "generate",
        help="sample pieces (MIDI, piano-roll PNG, WAV when possible) from a trained model",
        description="Continue the first bars of a MIDI file, or start from nothing. Sample i uses seed + i and is "
        "written as OUTPUT_DIR/<prefix>-<i>-seed<seed>.mid/.png/.wav. --max-new-tokens with the default --bars gives "
        "the length in tokens.",
    )
    add_dataclass_arguments(parser, GenerateSettings, skip=not_flags_of("continue"))
    parser.set_defaults(run=command_generate)


def command_generate(args) -> None:
    from .generate import GenerateSettings, run_generate

    if args.max_new_tokens and args.bars == GenerateSettings.bars:
        args.bars = 0  # --max-new-tokens without --bars: the length in tokens (--bars has a default)
    run_generate(dataclass_from_args(GenerateSettings, args))


# ----------------------------------------------------------------------------------------------------------
# infill, harmonize


def add_task_command(subparsers, task: str, **texts) -> argparse.ArgumentParser:
    """The subcommand of a task: the request flags of the task (``--bars`` of an infilling) and the files'."""
    from .tasks import TaskSettings

    parser = subparsers.add_parser(task, **texts)
    add_dataclass_arguments(parser, TaskSettings, skip=not_flags_of(task))
    parser.set_defaults(run=command_task, task=task)
    return parser


def add_infill(subparsers) -> None:
    add_task_command(
        subparsers,
        "infill",
        help="write some bars of a MIDI file again, keeping every other note (a model trained with --tasks ...,infill)",
        description="Fill bars FIRST-LAST of FILE (counted from 1) with the music on both sides in view; OUTPUT is "
        "FILE's own notes outside those bars with the new ones in an added track (OUT_1.mid, OUT_2.mid, ... for "
        "several samples; sample i uses seed + i), next to a piano roll (given notes grey) and a WAV when possible.",
    )


def add_harmonize(subparsers) -> None:
    add_task_command(
        subparsers,
        "harmonize",
        help="write the other voices under a melody (a model trained with --tasks ...,harmonize)",
        description="The melody is FILE's only track, else --melody-track (a name or an index from 0), else its "
        "highest track by mean pitch; OUTPUT is that track as it was with the new voices in an added track "
        "(OUT_1.mid, OUT_2.mid, ... for several samples), next to a piano roll (the melody grey) and a WAV when "
        "possible.",
    )


def command_task(args) -> None:
    from .tasks import TaskSettings, run_task

    run_task(dataclass_from_args(TaskSettings, args))


# ----------------------------------------------------------------------------------------------------------
# evaluate


def add_evaluate(subparsers) -> None:
    from .evaluate import EvaluateSettings

    parser = subparsers.add_parser(
        "evaluate",
        help="NLL per token and per note on a corpus split; musical statistics of generated pieces next to the corpus",
    )
    add_dataclass_arguments(parser, EvaluateSettings)
    parser.set_defaults(run=command_evaluate)


def command_evaluate(args) -> None:
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
    parser.set_defaults(run=command_push)


def command_push(args) -> None:
    from .hub.push import describe_push, push_to_hub

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
    print(describe_push(result))


# ----------------------------------------------------------------------------------------------------------
# app


def add_app(subparsers) -> None:
    from .app import AppSettings

    parser = subparsers.add_parser(
        "app",
        help="a web page to continue MIDI files with a model (needs the app extra: pip install 'hf_music_xl[app]')",
        description="Serve a Gradio page: upload a MIDI prompt or start from nothing, choose bars, preset, "
        "temperature, seed and scale, press Generate; see the piano roll, hear it, download the MIDI file.",
    )
    add_dataclass_arguments(parser, AppSettings)
    parser.set_defaults(run=command_app)


def command_app(args) -> None:
    try:
        import gradio  # noqa: F401
    except ImportError:
        sys.exit("hf-music-xl app: error: the app needs Gradio: pip install 'hf_music_xl[app]'")
    from .app import AppSettings, run_app

    run_app(dataclass_from_args(AppSettings, args))


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
    parser.set_defaults(run=command_push_space)


def command_push_space(args) -> None:
    from .hub.space import describe_space, push_space

    print(describe_space(push_space(args.model_repo_id, args.space_id, private=args.private)))


SUBCOMMANDS = [
    add_build_corpus,
    add_train,
    add_demo,
    add_generate,
    add_infill,
    add_harmonize,
    add_evaluate,
    add_push,
    add_app,
    add_push_space,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-music-xl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> None:
    from .data.atomic import CorpusWriteError
    from .hub.errors import HubAccessError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one INFO line per HTTP request otherwise
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, HubAccessError, CorpusWriteError) as error:  # one clear line
        sys.exit(f"hf-music-xl {args.command}: error: {error}")


if __name__ == "__main__":
    main()
