"""The main job, end to end (``hf-music-xl demo``, ``make demo``):

1. build the Bach chorale corpus from the installed music21 package (cached after the first run);
2. train the ``tiny`` model for a bounded wall time, with progress;
3. print validation NLL per token and per note;
4. reload the saved model from its directory, continue the first bars of a validation chorale with the
   grammar processor on, and write the MIDI files;
5. print where every output went (also saved as ``summary.json``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import encoding
from .data import bar_starts


@dataclass
class DemoSettings:
    output_dir: str = field(default="outputs/demo", metadata={"help": "where everything is written"})
    max_minutes: float = field(default=6.0, metadata={"help": "wall-clock budget for training (the whole demo takes about 2-3 min more)"})
    preset: str = field(default="tiny", metadata={"help": "model size"})
    batch_size: int = field(default=16, metadata={"help": "windows per step"})
    n_segments: int = field(default=4, metadata={"help": "segments per training window"})
    prompt_bars: int = field(default=4, metadata={"help": "bars of the validation chorale given as the prompt"})
    generate_bars: int = field(default=8, metadata={"help": "bars to generate after the prompt"})
    piece: str = field(default="", metadata={"help": "validation chorale to continue (e.g. bwv153.1); default: the first"})
    seed: int = field(default=0, metadata={"help": "random seed for training and sampling"})
    num_proc: int = field(default=2, metadata={"help": "processes for building the corpus"})
    threads: int = field(default=0, metadata={"help": "torch threads for training; 0: all available cores"})


def prompt_ids(ids: np.ndarray, bars: int, steps_per_bar: int = encoding.STEPS_PER_BAR) -> np.ndarray:
    """The tokens of the first ``bars`` bars (cut at the first chord on or after that bar line)."""
    starts = bar_starts(ids, steps_per_bar)
    positions = encoding.beat_positions(ids)[starts]
    later = starts[positions >= bars * steps_per_bar]
    end = int(later[0]) if len(later) else len(ids) - 1  # a piece shorter than the prompt: all but xxeos
    return ids[:end]


def run_demo(settings: DemoSettings) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList, StoppingCriteriaList

    from .corpus import build_corpus, read_report
    from .generation_music_xl import MaxBarsCriteria, MusicGrammarProcessor
    from .training import TrainSettings, train

    started = time.perf_counter()
    # `make` sets OMP_NUM_THREADS=1 (right for tests running side by side); one training process wants every core.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(settings.threads or cores)
    output = Path(settings.output_dir)
    output.mkdir(parents=True, exist_ok=True)

    print("== 1/4 corpus: Bach chorales from the installed music21 package")
    corpus = build_corpus("bach-chorales", num_proc=settings.num_proc)
    corpus_dir = Path(corpus["train"].cache_files[0]["filename"]).parent.parent
    report = read_report(corpus)
    for split, stats in report["splits"].items():
        print(f"   {split}: {stats['pieces']} chorales, {stats['tokens']:,} tokens, {stats['notes']:,} notes")
    print(f"   (built in {report['build_seconds']} s, cached in {corpus_dir})")

    print(f"== 2/4 training the {settings.preset} model for at most {settings.max_minutes} minutes")
    run_dir = output / "run"
    result = train(
        TrainSettings(
            corpus=str(corpus_dir),
            output_dir=str(run_dir),
            preset=settings.preset,
            n_segments=settings.n_segments,
            batch_size=settings.batch_size,
            max_minutes=settings.max_minutes,
            seed=settings.seed,
        )
    )
    metrics = result.metrics

    print("== 3/4 validation (fixed windows over the validation chorales)")
    print(f"   NLL per token {metrics['eval_nll_per_token']:.3f} nats (perplexity {metrics['eval_perplexity']:.2f})")
    print(f"   NLL per note  {metrics['eval_nll_per_note']:.3f} nats ({metrics['eval_notes']:,} notes)")
    print(f"   token accuracy {metrics['eval_token_accuracy']:.1%}; trained {result.train_seconds / 60:.1f} min")

    print("== 4/4 continuing a validation chorale")
    model = AutoModelForCausalLM.from_pretrained(result.final_dir).eval()  # what a user would load
    tokenizer = AutoTokenizer.from_pretrained(result.final_dir)
    validation = corpus["validation"]
    names = validation["name"]
    index = names.index(settings.piece) if settings.piece else int(np.argmin(names))  # stable: first by name
    piece = np.asarray(validation[index]["input_ids"], dtype=np.int64)
    prompt = prompt_ids(piece, settings.prompt_bars)
    torch.manual_seed(settings.seed)
    generated = model.generate(
        torch.tensor(prompt)[None],
        logits_processor=LogitsProcessorList([MusicGrammarProcessor(model.config)]),
        stopping_criteria=StoppingCriteriaList([MaxBarsCriteria(settings.generate_bars, model.config, len(prompt))]),
        max_new_tokens=64 * settings.generate_bars,  # a safety bound: chorales average about 30 tokens a bar
    )[0].numpy()
    continuation = generated[len(prompt) :]
    original_end = prompt_ids(piece, settings.prompt_bars + settings.generate_bars)

    files = {
        f"MIDI: the prompt ({settings.prompt_bars} bars)": tokenizer.save_midi(prompt, output / "prompt.mid"),
        "MIDI: prompt + generated continuation": tokenizer.save_midi(generated, output / "continuation.mid"),
        "MIDI: the real chorale, same bars": tokenizer.save_midi(original_end, output / "original.mid"),
    }
    bad = encoding.first_invalid_position(generated)
    print(f"   {names[index]}: {settings.prompt_bars} bars of prompt ({len(prompt)} tokens) + {len(continuation)} "
          f"generated tokens, {int(np.sum((continuation >= 9) & (continuation < 137)))} notes, "
          f"{'grammatical' if bad is None else f'ungrammatical at {bad}'}")

    summary = {
        "piece": names[index],
        "validation": {k.removeprefix("eval_"): v for k, v in metrics.items() if k.startswith("eval_")},
        "train_minutes": round(result.train_seconds / 60, 2),
        "total_minutes": round((time.perf_counter() - started) / 60, 2),
        "outputs": {
            "corpus (cached DatasetDict)": str(corpus_dir),
            "corpus report": str(corpus_dir / "report.json"),
            "checkpoints and trainer logs": str(run_dir),
            "model + tokenizer + generation config": str(result.final_dir),
            **{name: str(path) for name, path in files.items()},
        },
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"== done in {summary['total_minutes']:.1f} min; outputs:")
    for what, where in {**summary["outputs"], "this summary": str(output / "summary.json")}.items():
        print(f"   {what:<40} {where}")
    return summary
