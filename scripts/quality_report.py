"""Quality report: does each idea of the design earn its place? Ablations of MusicXL and HF GPT-2 on the chorales.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/quality_report.py                      # the whole table, ~50 min
    OMP_NUM_THREADS=1 .venv/bin/python scripts/quality_report.py --steps 2 --seeds 0  # smoke run, ~1 min
    # meters: chorales and folk tunes, scored on each corpus's validation split, by meter
    OMP_NUM_THREADS=1 .venv/bin/python scripts/quality_report.py --configs full,grid,no_beat,gpt2 --seeds 0,1 \
        --corpus bach-chorales,music21:essenFolksong,music21:ryansMammoth \
        --held-out music21:essenFolksong,music21:ryansMammoth,bach-chorales --ood "" --out outputs/meter

Every configuration x seed is trained with the SAME number of optimizer steps (so the same tokens: steps x batch x
n_segments x segment_len), not the same wall time, so the shared machine's load does not change the result; wall
time is recorded. Training goes through the training package's pieces (``training_data``: stream training by default,
``build_trainer``: ``MusicXLTrainer`` carrying the memory with the one-cycle schedule, ``collate``), GPT-2 included:
``GPT2LMHeadModel`` is trained by the same Trainer on the same streams (each step a window of its own: GPT-2 has
no memory) with the same schedule, batch, learning rate and dropout, its feed-forward width chosen so its parameter
count matches MusicXL's (within 2%).

Configurations: ``full`` (everything on: the defaults), ``windows`` (random windows, each from no memory, instead of
streams), ``bars_16`` (the bar index wrapped at 16 bars), ``bars_1024`` (wrapped at 1,024 bars; the default has no
bar embedding, max_bars=0), ``grid`` (positions of 16-step bars whatever the meter, as before time signatures),
``no_beat`` (no beat positions at all: encode_position=False), ``no_mask`` (mask_p=0), ``no_transpose`` (no
augmentation), ``no_memory`` (mem_len=0), ``fp32`` (precision fp32 where ``auto`` picks bf16), ``gpt2``.

Each final model is scored (``evaluate.corpus_nll``: every piece whole, in segments with the memory carried; GPT-2
in consecutive chunks of its training length) on
- the validation split of the training corpus (``--corpus``), and the same with the memory switched off at
  evaluation (mem_len 0; MusicXL only);
- the validation split of each ``--held-out`` source on its own, and of it the pieces of each meter (the meter a
  piece starts in) that has at least 20 of them;
- a corpus no model saw (``--ood``; default: the first 4 files of O'Neill's 1850 folk tunes in music21, all splits).

Runs go in subprocesses, ``--parallel`` at a time (one thread each). Results: OUT/results.json (every run),
OUT/report.md (mean ± spread over seeds; spread = half the range, i.e. ± to reach min and max), OUT/<run>/final
(the model, for generation and the evaluate command).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

CONFIGS = {
    "full": {},
    "windows": {"train_mode": "windows"},
    "bars_16": {"model_overrides": "max_bars=16"},
    "bars_1024": {"model_overrides": "max_bars=1024"},
    "grid": {"model_overrides": "position_scheme=grid"},
    "no_beat": {"model_overrides": "encode_position=false"},
    "no_mask": {"model_overrides": "mask_p=0"},
    "no_transpose": {"augment": False},
    "no_memory": {"model_overrides": "mem_len=0"},
    "fp32": {"precision": "fp32"},
    "gpt2": {"gpt2": True},
}
MIN_PIECES_PER_METER = 20  # a meter's own NLL is reported when a held-out set has this many pieces in it


def by_first_meter(split) -> dict:
    """{meter: the pieces of ``split`` that start in it} for meters with at least MIN_PIECES_PER_METER pieces."""
    from hf_music_xl.models.music_xl import encoding

    def first_meter(ids):
        ids = np.asarray(ids)
        found = ids[encoding.is_meter(ids)]
        return encoding.VOCAB[int(found[0])].removeprefix("ts") if len(found) else "none"

    meters = [first_meter(ids) for ids in split["input_ids"]]
    common = sorted({m for m in meters if meters.count(m) >= MIN_PIECES_PER_METER}, key=lambda m: -meters.count(m))
    return {meter: split.select([i for i, m in enumerate(meters) if m == meter]) for meter in common}


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def gpt2_like(config, n_positions: int, target_params: int):
    """GPT2LMHeadModel with MusicXL's width, depth, heads, dropout and vocabulary; the feed-forward width is set
    so the parameter count matches ``target_params`` (MusicXL's, beat embeddings included)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    def build(n_inner):
        return GPT2Config(
            vocab_size=config.vocab_size,
            n_positions=n_positions,
            n_embd=config.d_model,
            n_layer=config.n_layer,
            n_head=config.n_head,
            n_inner=n_inner,
            resid_pdrop=config.dropout,
            embd_pdrop=config.dropout,
            attn_pdrop=config.attn_dropout,
            bos_token_id=config.bos_token_id,
            eos_token_id=config.eos_token_id,
            pad_token_id=config.pad_token_id,
            tie_word_embeddings=True,
        )

    base = count(GPT2LMHeadModel(build(config.d_inner)))
    per_unit = 2 * config.d_model + 1  # one more hidden unit of the MLP, per layer
    n_inner = config.d_inner + round((target_params - base) / (per_unit * config.n_layer))
    return GPT2LMHeadModel(build(max(n_inner, 1)))


@torch.no_grad()
def gpt2_nll(model, split, batch_size: int) -> dict:
    """NLL of a GPT-2 on whole pieces, scored in consecutive chunks of its training length (it has no memory)."""
    from transformers import EvalPrediction

    from hf_music_xl.data.pieces import IGNORE_INDEX, collate
    from hf_music_xl.training.metrics import compute_metrics, token_scores

    length = model.config.n_positions
    chunks = [
        ids[begin : begin + length]
        for ids in split["input_ids"]
        for begin in range(0, len(ids), length - 1)
        if len(ids[begin : begin + length]) > 1
    ]  # overlapping by one token, so every token is predicted once
    scores, labels = [], []
    for start in range(0, len(chunks), batch_size):
        batch = collate([{"input_ids": c, "labels": c} for c in chunks[start : start + batch_size]])
        logits = model(input_ids=batch["input_ids"]).logits
        scores.append(token_scores(logits, batch["labels"]).numpy().reshape(-1, 2))
        labels.append(batch["labels"][:, 1:].numpy().reshape(-1))
    flat_labels = np.concatenate([[IGNORE_INDEX], np.concatenate(labels)])[None]
    metrics = compute_metrics(EvalPrediction(predictions=np.concatenate(scores)[None], label_ids=flat_labels))
    return {**metrics, "chunk_len": length}


def run_one(
    name: str,
    seed: int,
    steps: int,
    out_dir: Path,
    corpus: str = "bach-chorales",
    ood: str = "",
    ood_limit: int = 4,
    preset: str = "tiny",
    n_segments: int = 2,
    batch_size: int = 16,
    learning_rate: float = 2e-3,
    held_out: str = "",
) -> dict:
    """Train one configuration for ``steps`` optimizer steps, score it, save it to OUT_DIR/final; return a dict."""
    from datasets import concatenate_datasets
    from transformers import set_seed

    from hf_music_xl.data.corpus import load_corpus
    from hf_music_xl.evaluate import corpus_nll
    from hf_music_xl.models.music_xl.configuration_music_xl import MusicXLConfig
    from hf_music_xl.models.music_xl.generation_music_xl import generation_config_for
    from hf_music_xl.models.music_xl.modeling_music_xl import MusicXLForCausalLM
    from hf_music_xl.training.run import training_data
    from hf_music_xl.training.settings import TrainSettings, parse_overrides
    from hf_music_xl.training.trainer import build_trainer, training_arguments

    spec = dict(CONFIGS[name])
    is_gpt2 = spec.pop("gpt2", False)
    settings = replace(
        TrainSettings(
            corpus=corpus,
            output_dir=str(out_dir),
            preset=preset,
            n_segments=n_segments,
            max_steps=steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            seed=seed,
            logging_steps=max(1, steps // 10),
        ),
        **spec,
    )
    started = time.perf_counter()
    chorales = load_corpus(settings.corpus)
    set_seed(seed)
    config = MusicXLConfig.from_preset(preset, **parse_overrides(settings.model_overrides))
    xl = MusicXLForCausalLM(config)
    window_len = n_segments * config.segment_len
    if is_gpt2:
        full_params = count(MusicXLForCausalLM(MusicXLConfig.from_preset(preset)))
        set_seed(seed)
        model = gpt2_like(config, window_len, full_params)
    else:
        model = xl
        model.generation_config = generation_config_for(config)
    train_data, train_set = training_data(settings, chorales["train"], config, world_size=1)
    args = replace(training_arguments(settings, steps), eval_strategy="no", save_strategy="no")
    trainer = build_trainer(settings, model, args, train_data, train_set, carry_memory=False if is_gpt2 else None)
    train_started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - train_started
    model = trainer.model.eval()

    result = {
        "config": name,
        "seed": seed,
        "steps": steps,
        "params": count(model),
        "train_tokens": steps * batch_size * window_len,
        "train_seconds": round(train_seconds, 1),
        "final_train_loss": next((e["loss"] for e in reversed(trainer.state.log_history) if "loss" in e), None),
        "model_config": model.config.to_diff_dict()
        if is_gpt2
        else {
            k: getattr(config, k)
            for k in (
                "d_model",
                "n_layer",
                "n_head",
                "d_inner",
                "mem_len",
                "segment_len",
                "encode_position",
                "max_bars",
                "mask_p",
            )
        },
        "train_mode": "stream (no memory)" if is_gpt2 and settings.train_mode == "stream" else settings.train_mode,
        "augment": settings.augment,
        "window_len": window_len,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
    }
    score = (
        (lambda split: gpt2_nll(model, split, batch_size))
        if is_gpt2
        else (lambda split, **kw: corpus_nll(model, split, batch_size, progress=False, **kw))
    )
    result["validation"] = score(chorales["validation"])
    if not is_gpt2:
        result["validation_no_memory"] = score(chorales["validation"], mem_len=0)
    for source in filter(None, held_out.split(",")):
        split = load_corpus(source)["validation"]
        result[f"held_out {source}"] = {
            **score(split),
            "by_meter": {
                meter: {**score(pieces), "pieces": len(pieces)} for meter, pieces in by_first_meter(split).items()
            },
        }
    if ood:
        other = load_corpus(ood, limit=ood_limit or None, num_proc=1)
        pieces = concatenate_datasets([other[split] for split in other])
        result["ood"] = score(pieces)
        result["ood"]["source"] = f"{ood} (first {ood_limit} files)" if ood_limit else ood
    model.save_pretrained(out_dir / "final")
    if not is_gpt2:
        from hf_music_xl.models.music_xl.tokenization_music_xl_fast import MusicXLTokenizerFast

        MusicXLTokenizerFast().save_pretrained(out_dir / "final")
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    (out_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


# ----------------------------------------------------------------------------------------------------------
# The table


def spread(values: list[float]) -> tuple[float, float]:
    """(mean, half range)."""
    return statistics.fmean(values), (max(values) - min(values)) / 2


def markdown(results: list[dict], command: str, wall_seconds: float) -> str:
    by_config: dict[str, list[dict]] = {}
    for row in results:
        by_config.setdefault(row["config"], []).append(row)
    first = results[0]
    ood_source = next((r["ood"]["source"] for r in results if "ood" in r), "none")
    lines = [
        f"{len(results)} runs: {len(by_config)} configurations x seeds {sorted({r['seed'] for r in results})}; each "
        f"{first['steps']} optimizer steps of {first['batch_size']} rows x {first['window_len']} tokens "
        f"({first['train_tokens']:,} training tokens), one-cycle peak lr {first['learning_rate']}. "
        f"NLL in nats, mean ± half the range over seeds. Out-of-domain corpus: {ood_source}.",
        "",
        "| configuration | params | val NLL/token | val NLL/note | val NLL/note, no memory at evaluation | "
        "out-of-domain NLL/token | out-of-domain NLL/note | train min (mean) |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(rows, key, metric):
        values = [r[key][metric] for r in rows if key in r]
        if not values:
            return "n/a"
        mean, half = spread(values)
        return f"{mean:.3f} ± {half:.3f}"

    for name in CONFIGS:
        rows = by_config.get(name)
        if not rows:
            continue
        minutes = statistics.fmean(r["train_seconds"] for r in rows) / 60
        lines.append(
            f"| {name} | {rows[0]['params'] / 1e6:.2f}M | {cell(rows, 'validation', 'nll_per_token')} | "
            f"{cell(rows, 'validation', 'nll_per_note')} | {cell(rows, 'validation_no_memory', 'nll_per_note')} | "
            f"{cell(rows, 'ood', 'nll_per_token')} | {cell(rows, 'ood', 'nll_per_note')} | {minutes:.1f} |"
        )
    lines += held_out_table(by_config)
    lines += [
        "",
        f"Command: `{command}`; wall time of this invocation: {wall_seconds / 60:.1f} min"
        + (" (runs kept by --reuse not included)." if "--reuse" in command else "."),
    ]
    return "\n".join(lines) + "\n"


def held_out_table(by_config: dict) -> list[str]:
    """NLL per note on each held-out validation split, and on its pieces of each common meter (rows: configs)."""
    first = next(iter(by_config.values()))[0]
    sets = [key for key in first if key.startswith("held_out ")]
    if not sets:
        return []
    columns = [(key, None) for key in sets] + [(key, meter) for key in sets for meter in first[key]["by_meter"]]
    names = [
        key.removeprefix("held_out ") + (f" {meter} ({first[key]['by_meter'][meter]['pieces']})" if meter else "")
        for key, meter in columns
    ]
    lines = [
        "",
        "NLL per note on held-out validation splits (and their pieces by the meter they start in):",
        "",
        "| configuration | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name in CONFIGS:
        rows = by_config.get(name)
        if rows:
            cells = [
                cell_of([r[key] if meter is None else r[key]["by_meter"].get(meter) for r in rows if key in r])
                for key, meter in columns
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def cell_of(scores: list) -> str:
    values = [score["nll_per_note"] for score in scores if score]
    if not values:
        return "n/a"
    mean, half = spread(values)
    return f"{mean:.3f} ± {half:.3f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=180, help="optimizer steps per run (same for every run)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated, from: " + ", ".join(CONFIGS))
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--n-segments", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--corpus", default="bach-chorales", help="training corpus (sources joined by commas)")
    parser.add_argument(
        "--held-out", default="", help="sources whose validation splits are scored on their own, by meter"
    )
    parser.add_argument("--ood", default="music21:oneills1850", help="corpus no model trains on ('' : none)")
    parser.add_argument("--ood-limit", type=int, default=4, help="files of the out-of-domain source (0: all)")
    parser.add_argument("--out", default="outputs/quality")
    parser.add_argument(
        "--reuse", action="store_true", help="keep runs whose result.json has the same steps (adding seeds)"
    )
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # internal: run one configuration
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out)
    common = dict(
        corpus=args.corpus,
        held_out=args.held_out,
        ood=args.ood,
        ood_limit=args.ood_limit,
        preset=args.preset,
        n_segments=args.n_segments,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
    )

    if args.one:
        import torch

        torch.set_num_threads(1)
        run_one(args.one, args.seed, args.steps, out / f"{args.one}-seed{args.seed}", **common)
        return

    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configurations {sorted(unknown)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    out.mkdir(parents=True, exist_ok=True)
    # build the corpora once before the runs start (each run would otherwise race to build them)
    from hf_music_xl.data.corpus import load_corpus

    load_corpus(args.corpus)
    for source in filter(None, args.held_out.split(",")):
        load_corpus(source)
    if args.ood:
        load_corpus(args.ood, limit=args.ood_limit or None, num_proc=1)

    passthrough = [
        f"--steps={args.steps}",
        f"--preset={args.preset}",
        f"--n-segments={args.n_segments}",
        f"--batch-size={args.batch_size}",
        f"--learning-rate={args.learning_rate}",
        f"--ood={args.ood}",
        f"--ood-limit={args.ood_limit}",
        f"--out={args.out}",
        f"--corpus={args.corpus}",
        f"--held-out={args.held_out}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()

    def launch(job):
        name, seed = job
        done = out / f"{name}-seed{seed}" / "result.json"
        if args.reuse and done.exists() and json.loads(done.read_text())["steps"] == args.steps:
            print(f"{name} seed {seed}: kept from an earlier run", flush=True)
            return 0
        log = out / f"{name}-seed{seed}.log"
        t0 = time.perf_counter()
        with open(log, "w") as handle:
            code = subprocess.call(
                [sys.executable, __file__, f"--one={name}", f"--seed={seed}", *passthrough],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env,
            )
        print(
            f"{name} seed {seed}: exit {code} after {(time.perf_counter() - t0) / 60:.1f} min "
            f"(t+{(time.perf_counter() - started) / 60:.1f} min)",
            flush=True,
        )
        return code

    jobs = [(name, seed) for seed in seeds for name in configs]  # seed-major: a first full seed comes early
    with ThreadPoolExecutor(args.parallel) as pool:
        codes = list(pool.map(launch, jobs))
    wall = time.perf_counter() - started
    results = []
    for name, seed in jobs:
        path = out / f"{name}-seed{seed}" / "result.json"
        if path.exists():
            results.append(json.loads(path.read_text()))
    command = "OMP_NUM_THREADS=1 .venv/bin/python scripts/quality_report.py " + " ".join(sys.argv[1:])
    (out / "results.json").write_text(
        json.dumps({"command": command.strip(), "wall_seconds": round(wall, 1), "runs": results}, indent=2) + "\n"
    )
    if results:
        table = markdown(results, command.strip(), wall)
        (out / "report.md").write_text(table)
        print(table)
    if any(codes):
        sys.exit(f"{sum(1 for c in codes if c)} runs failed; see the logs in {out}")


if __name__ == "__main__":
    main()
