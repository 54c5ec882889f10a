"""The released model's measured quality: the figures of BENCHMARKS.md ("The released model") and of its card.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/release_report.py      # after scripts/train_release.py, ~10 min

1. NLL per note on the validation chorales (every piece whole, the memory carried: ``evaluate.corpus_nll``) of the
   release, of the demo's model (``hf-music-xl demo``: ``--demo-model``) and of GPT-2 of the release's size trained
   on the same streams for the same steps (``scripts/quality_report.py --configs gpt2``: ``--anchor``).
2. Musical statistics of ``--samples`` continuations, ``--bars`` bars each, of the first ``--prompt-bars`` bars of
   held-out chorales (the validation split, by name; sample i with seed i and the ``--preset``), against the same
   bars (after the prompt's) of every training chorale, and against Bach's own bars of the same prompts. The
   targets (``TARGETS``) are the release issue's.
3. The samples' MIDI files and piano rolls go to ``--out``, to look at and listen to.

Writes ``release_report.json`` (figures and a markdown table) into the model folder and rewrites its card.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from hf_music_xl.data.corpus import load_corpus
from hf_music_xl.evaluate import (
    STATISTICS,
    against_chorales,
    bars_excerpt,
    corpus_nll,
    musical_statistics,
    summarize,
    write_json,
)
from hf_music_xl.generate import GenerateSettings, generate_batch, load_model_and_tokenizer
from hf_music_xl.models.music_xl import encoding
from hf_music_xl.models.music_xl.sampling_music_xl import prompt_ids
from hf_music_xl.release import RELEASE_DIR, write_release_card
from hf_music_xl.render import render_outputs, split_notes

# (statistic, how it is compared, allowed): the samples' mean against the training chorales' same bars
TARGETS = (
    ("polyphony", "difference", 0.5),
    ("pitch_class_entropy", "difference", 0.15),
    ("scale_consistency", "difference", 0.05),
    ("note_density", "relative", 0.15),
    ("top_voice_steps", "difference", 0.10),
)


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def nll_figures(model_dir: Path, demo_model: Path, anchor: Path, validation) -> dict:
    figures = {}
    model, _ = load_model_and_tokenizer(str(model_dir))
    figures["release"] = {**corpus_nll(model, validation, progress=False), "params": count(model)}
    if (demo_model / "config.json").is_file():
        demo, _ = load_model_and_tokenizer(str(demo_model))
        figures["demo model"] = {**corpus_nll(demo, validation, progress=False), "params": count(demo)}
    if anchor.is_file():
        result = json.loads(anchor.read_text())
        figures["GPT-2, same size, tokens and steps"] = {
            **result["validation"],
            "params": result["params"],
            "steps": result["steps"],
            "train_tokens": result["train_tokens"],
        }
    return figures


def sample_continuations(model, validation, args, out: Path) -> tuple[list, list]:
    """(continuation notes of each sample, Bach's notes of the same bars), for the first ``args.samples``
    validation chorales by name with notes in those bars, all continued in one batch (sample i from seed i, as it
    would be alone)."""
    order = sorted(range(len(validation)), key=lambda i: validation[i]["name"])
    chosen, originals = [], []
    for index in order:
        if len(chosen) == args.samples:
            break
        piece = np.asarray(validation[index]["input_ids"], dtype=np.int64)
        bach = bars_excerpt(encoding.ids_to_notes(piece), args.prompt_bars, args.bars)
        if len(bach):  # else shorter than its prompt
            chosen.append((index, prompt_ids(piece, args.prompt_bars)))
            originals.append(bach)
    request = GenerateSettings(bars=args.bars, preset=args.preset, prompt_bars=args.prompt_bars)
    prompts = [prompt for _, prompt in chosen]
    continued = generate_batch(model, prompts, request, list(range(len(prompts))), progress=False)
    samples = []
    for seed, ((index, prompt), ids) in enumerate(zip(chosen, continued)):
        samples.append(split_notes(ids, len(prompt))[1])
        if seed < args.render:
            render_outputs(ids, len(prompt), out / f"{validation[index]['name']}-seed{seed}", audio=False)
        print(f"  sample {seed + 1}/{args.samples}: {validation[index]['name']}, {len(samples[-1])} notes", flush=True)
    return samples, originals


def markdown(nll: dict, summaries: dict, found: dict, args, command: str) -> str:
    lines = [
        f"Measured by `{command}`.",
        "",
        "| model | parameters | NLL per note (nats) | NLL per token |",
        "|---|---|---|---|",
    ]
    for name, figures in nll.items():
        params = f"{figures['params']:,}" if "params" in figures else ""
        lines.append(f"| {name} | {params} | {figures['nll_per_note']:.3f} | {figures['nll_per_token']:.3f} |")
    names = list(summaries)
    lines += [
        "",
        f"Musical statistics of {summaries['samples']['pieces']} continuations of {args.bars} bars (preset "
        f"`{args.preset}`, seeds 0..{summaries['samples']['pieces'] - 1}) of the first {args.prompt_bars} bars of "
        f"held-out chorales, against the same bars of the training chorales and Bach's own bars after the same "
        f"prompts (mean ± std over pieces):",
        "",
        "| statistic | " + " | ".join(f"{name} ({summaries[name]['pieces']})" for name in names) + " | target | met |",
        "|---|" + "---|" * (len(names) + 2),
    ]
    for statistic in STATISTICS:
        cells = [f"{summaries[n][statistic]['mean']:.3f} ± {summaries[n][statistic]['std']:.3f}" for n in names]
        target, met = "", ""
        if statistic in found:
            check = found[statistic]
            unit = "%" if check["kind"] == "relative" else ""
            allowed = check["allowed"] * (100 if unit else 1)
            target = f"within {allowed:g}{unit} of the training chorales"
            met = "yes" if check["within"] else "**no**"
        lines.append(f"| {statistic} | " + " | ".join(cells) + f" | {target} | {met} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(RELEASE_DIR))
    parser.add_argument("--demo-model", default="outputs/demo/run/final", help="the model hf-music-xl demo trained")
    parser.add_argument("--anchor", default="runs/release-anchor/gpt2-seed0/result.json", help="the GPT-2 run")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--bars", type=int, default=16)
    parser.add_argument("--prompt-bars", type=int, default=4)
    parser.add_argument("--preset", default="default", help="sampling preset (default: the model's own distribution)")
    parser.add_argument("--render", type=int, default=6, help="samples written as MIDI and piano roll")
    parser.add_argument("--out", default="outputs/release-report")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus("bach-chorales")

    print("== NLL on the validation chorales")
    nll = nll_figures(Path(args.model), Path(args.demo_model), Path(args.anchor), corpus["validation"])
    for name, figures in nll.items():
        print(f"  {name}: {figures['nll_per_note']:.3f} nats per note")

    print(f"== {args.samples} samples of {args.bars} bars")
    model, _ = load_model_and_tokenizer(args.model)
    samples, originals = sample_continuations(model, corpus["validation"], args, out)
    training = [encoding.ids_to_notes(ids) for ids in corpus["train"]["input_ids"]]
    training = [bars_excerpt(notes, args.prompt_bars, args.bars) for notes in training]
    summaries = {
        "samples": summarize(samples),
        "training chorales, same bars": summarize([notes for notes in training if len(notes)]),
        "Bach after the same prompts": summarize(originals),
    }
    found = against_chorales(summaries["samples"], summaries["training chorales, same bars"], TARGETS)
    command = "OMP_NUM_THREADS=1 .venv/bin/python scripts/release_report.py"
    table = markdown(nll, summaries, found, args, command)
    print(table)
    per_sample = [musical_statistics(notes) for notes in samples]
    report = {
        "nll": nll,
        "statistics": summaries,
        "checks": found,
        "per_sample": per_sample,
        "settings": vars(args),
        "seconds": round(time.perf_counter() - started, 1),
        "markdown": table,
    }
    write_json(report, Path(args.model) / "release_report.json")
    write_release_card(args.model)
    print(f"== written: {Path(args.model) / 'release_report.json'}, its card, samples in {out}")


if __name__ == "__main__":
    main()
