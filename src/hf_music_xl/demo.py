"""The main job, end to end (``hf-music-xl demo``, ``make demo``):

1. build the Bach chorale corpus from the installed music21 package (cached after the first run);
2. train the ``tiny`` model for a fixed number of steps (stream training, bf16 where the CPU has it), with
   progress: the same seed gives the same model on a busy machine as on an idle one, which is only slower;
3. print validation NLL per token and per note;
4. reload the saved model from its directory, continue the first bars of a validation chorale with the
   grammar processor on (several samples), and write each as MIDI, a piano-roll picture and audio (when a
   renderer and a local soundfont exist); the real chorale's same bars are written alike for comparison;
5. continue the first bars of each of ``check_prompts`` validation chorales once more (one sample each) and
   check that these continuations look like the chorales (``CHECKS``): their musical statistics next to the same
   bars of the training chorales (also ``statistics.json``). One chorale is not the population: bwv11.6, the
   first by name, is sparser than most (Bach's own bars 5-12 of it have 10.3 notes a bar against the corpus's
   16.5), so its continuations alone would fail a density check that Bach's would fail too. They are sampled
   with ``CHECK_PRESET``, the model's own distribution;
6. print where every output went, the checks and the time each part took (also saved as ``summary.json``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .models.music_xl import encoding

# Steps that an idle 2-core machine trains in about 5 minutes (BENCHMARKS.md, "Main job"), so that the whole job,
# install included, stays within 10 minutes there.
DEMO_STEPS = 600

# What the samples must look like next to the training chorales: (statistic, what is compared, allowed).
CHECKS = (
    ("polyphony", "difference", 1.0),  # mean notes sounding at once: within 1.0 of the chorales'
    ("pitch_class_entropy", "difference", 0.25),  # bits
    ("note_density", "relative", 0.30),  # notes per bar: within 30%
)
MAX_VALIDATION_NLL = 1.25  # nats per token
# The checked continuations sample the model's own distribution (temperature 1, top-k 40, top-p 0.95): a tempered
# preset such as "conservative" (0.8, top-k 20) cuts the chromatic tail, so it lowers pitch-class entropy whatever
# the model (by 0.3 to 0.5 bits on the demo's models, 0.12 on the released one), which a check of "looks like the
# chorales" must not measure. The three samples to listen to stay conservative.
CHECK_PRESET = "default"


@dataclass
class DemoSettings:
    output_dir: str = field(default="outputs/demo", metadata={"help": "where everything is written"})
    steps: int = field(
        default=DEMO_STEPS,
        metadata={
            "help": "optimizer steps: a fixed amount of work, so the result does not depend on the machine's load"
        },
    )
    max_minutes: float = field(
        default=0.0, metadata={"help": "also stop training at this wall-clock budget (steps fitted to it); 0: none"}
    )
    preset: str = field(default="tiny", metadata={"help": "model size"})
    batch_size: int = field(default=16, metadata={"help": "windows per step"})
    n_segments: int = field(default=4, metadata={"help": "segments per training window"})
    prompt_bars: int = field(default=4, metadata={"help": "bars of the validation chorale given as the prompt"})
    generate_bars: int = field(default=8, metadata={"help": "bars to generate after the prompt"})
    num_samples: int = field(default=3, metadata={"help": "continuations to generate (sample i uses seed + i - 1)"})
    check_prompts: int = field(
        default=16, metadata={"help": "validation chorales continued once each for the statistics and checks"}
    )
    piece: str = field(
        default="", metadata={"help": "validation chorale to continue (e.g. bwv153.1); default: the first"}
    )
    seed: int = field(default=0, metadata={"help": "random seed for training and sampling"})
    num_proc: int = field(default=2, metadata={"help": "processes for building the corpus"})
    threads: int = field(default=0, metadata={"help": "torch threads for training; 0: all available cores"})


def run_demo(settings: DemoSettings) -> dict:
    from .data.corpus import build_corpus, read_report
    from .evaluate import bars_excerpt, format_table, summarize, write_json
    from .generate import (
        GenerateSettings,
        generate_batch,
        generate_samples,
        load_model_and_tokenizer,
        prompt_ids,
    )
    from .render import render_outputs, split_notes
    from .training.run import train
    from .training.settings import TrainSettings

    started = time.perf_counter()
    # `make` sets OMP_NUM_THREADS=1 (right for tests running side by side); one training process wants every core.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(settings.threads or cores)
    output = Path(settings.output_dir)
    output.mkdir(parents=True, exist_ok=True)

    print("== 1/5 corpus: Bach chorales from the installed music21 package")
    corpus = build_corpus("bach-chorales", num_proc=settings.num_proc)
    corpus_dir = Path(corpus["train"].cache_files[0]["filename"]).parent.parent
    report = read_report(corpus)
    for split, stats in report["splits"].items():
        print(f"   {split}: {stats['pieces']} chorales, {stats['tokens']:,} tokens, {stats['notes']:,} notes")
    print(f"   (built in {report['build_seconds']} s, cached in {corpus_dir})")

    budget = f" (or {settings.max_minutes} minutes)" if settings.max_minutes else ""
    print(f"== 2/5 training the {settings.preset} model for {settings.steps} steps{budget}")
    run_dir = output / "run"
    corpus_seconds = time.perf_counter() - started
    result = train(
        TrainSettings(
            corpus=str(corpus_dir),
            output_dir=str(run_dir),
            preset=settings.preset,
            n_segments=settings.n_segments,
            batch_size=settings.batch_size,
            max_steps=settings.steps,
            max_minutes=settings.max_minutes,
            eval_steps=settings.steps,  # once, at the end
            save_steps=max(1, settings.steps // 3),  # --resume can pick a run up from a third of the way
            seed=settings.seed,
        )
    )
    metrics = result.metrics

    print("== 3/5 validation (every validation chorale whole, in segments with the memory carried)")
    print(f"   NLL per token {metrics['eval_nll_per_token']:.3f} nats (perplexity {metrics['eval_perplexity']:.2f})")
    print(f"   NLL per note  {metrics['eval_nll_per_note']:.3f} nats ({metrics['eval_notes']:,} notes)")
    print(f"   token accuracy {metrics['eval_token_accuracy']:.1%}; trained {result.train_seconds / 60:.1f} min")

    print(f"== 4/5 continuing a validation chorale ({settings.num_samples} samples)")
    model, _ = load_model_and_tokenizer(result.final_dir)  # what a user would load
    validation = corpus["validation"]
    names = validation["name"]
    index = names.index(settings.piece) if settings.piece else int(np.argmin(names))  # stable: first by name
    piece = np.asarray(validation[index]["input_ids"], dtype=np.int64)
    prompt = prompt_ids(piece, settings.prompt_bars)
    samples = generate_samples(
        model,
        prompt,
        GenerateSettings(
            bars=settings.generate_bars,
            num_samples=settings.num_samples,
            seed=settings.seed,
            output_dir=str(output),
            preset="conservative",
        ),
        prefix=names[index],
    )
    original = prompt_ids(piece, settings.prompt_bars + settings.generate_bars)
    original_files = render_outputs(
        original, len(prompt), output / f"{names[index]}-original", continuation_label="Bach's continuation"
    )
    for sample in samples:
        continuation = sample.ids[len(prompt) :]
        bad = encoding.first_invalid_position(sample.ids)
        print(
            f"   {names[index]} seed {sample.seed}: {settings.prompt_bars} bars of prompt ({len(prompt)} tokens) + "
            f"{len(continuation)} generated tokens, "
            f"{int(np.sum((continuation >= encoding.NOTE_OFFSET) & (continuation < encoding.DURATION_OFFSET)))} "
            f"notes, {'grammatical' if bad is None else f'ungrammatical at {bad}'}"
        )

    first, count = settings.prompt_bars, settings.generate_bars
    print(
        f"== 5/5 musical statistics: continuations of {settings.check_prompts} validation chorales (bars "
        f"{first + 1}-{first + count}) next to the same bars of the training chorales"
    )
    order = sorted(range(len(validation)), key=lambda i: names[i])[: settings.check_prompts]
    starts = [prompt_ids(np.asarray(validation[i]["input_ids"], dtype=np.int64), first) for i in order]
    seeds = list(range(settings.seed, settings.seed + len(starts)))
    request = GenerateSettings(bars=count, preset=CHECK_PRESET)  # every prompt in one batch, each from its seed
    continued = generate_batch(model, starts, request, seeds, progress=False)
    checked = [split_notes(ids, len(start))[1] for ids, start in zip(continued, starts)]
    training = [bars_excerpt(encoding.ids_to_notes(ids), first, count) for ids in corpus["train"]["input_ids"]]
    summaries = {
        "training chorales": summarize([notes for notes in training if len(notes)]),
        "generated": summarize(checked),
    }
    print(format_table(summaries))
    statistics_path = write_json(summaries, output / "statistics.json")
    checks = look_like_the_chorales(
        summaries["training chorales"], summaries["generated"], metrics["eval_nll_per_token"]
    )
    for name, check in checks.items():
        print(f"   {name}: {check['value']:.3f} against {check['target']} -> {'ok' if check['within'] else 'OUTSIDE'}")
    files = {}
    for sample in samples:
        for kind, path in sample.files.items():
            if path is not None:
                files[f"sample seed {sample.seed}: {kind}"] = path
    for kind, path in original_files.items():
        if path is not None:
            files[f"the real chorale, same bars: {kind}"] = path
    files["musical statistics"] = statistics_path

    summary = {
        "piece": names[index],
        "validation": {k.removeprefix("eval_"): v for k, v in metrics.items() if k.startswith("eval_")},
        "checks": checks,
        "looks_like_the_chorales": all(check["within"] for check in checks.values()),
        "steps": settings.steps,
        "corpus_minutes": round(corpus_seconds / 60, 2),
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
    print(
        f"== done in {summary['total_minutes']:.1f} min (corpus {summary['corpus_minutes']:.1f}, training "
        f"{summary['train_minutes']:.1f}); the samples "
        f"{'look' if summary['looks_like_the_chorales'] else 'do NOT look'} "
        f"like the chorales by every check; outputs:"
    )
    for what, where in {**summary["outputs"], "this summary": str(output / "summary.json")}.items():
        print(f"   {what:<44} {where}")
    return summary


def look_like_the_chorales(chorales: dict, generated: dict, validation_nll: float) -> dict:
    """Each ``CHECKS`` figure of the samples against the chorales', and the validation NLL against its ceiling:
    {name: {"value", "target", "within"}}."""
    from .evaluate import against_chorales

    checks = {}
    for statistic, found in against_chorales(generated, chorales, CHECKS).items():
        measure = "|samples / chorales - 1|" if found["kind"] == "relative" else "|samples - chorales|"
        target = f"{measure} <= {found['allowed']} (samples {found['samples']:.2f}, chorales {found['chorales']:.2f})"
        checks[statistic] = {"value": found["value"], "target": target, "within": found["within"]}
    checks["validation_nll_per_token"] = {
        "value": validation_nll,
        "target": f"<= {MAX_VALIDATION_NLL}",
        "within": bool(validation_nll <= MAX_VALIDATION_NLL),
    }
    return checks
