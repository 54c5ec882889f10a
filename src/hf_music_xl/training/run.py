"""Train MusicXL with the Hugging Face Trainer.

    hf-music-xl train --corpus bach-chorales --preset tiny --output-dir runs/tiny
    torchrun --standalone --nproc_per_node 2 scripts/train.py --preset tiny ...      # DDP (gloo on CPU)
    accelerate launch --multi_gpu --num_processes 2 scripts/train.py --preset tiny ...

What the Trainer is given, and why:

- examples (``--train-mode stream``, the default): as TransformerXL trains, every batch row continues its own
  stream of whole pieces (``streams.PieceStreams``: shuffled each epoch from the seed, transposed on the fly), and
  ``MusicXLTrainer`` carries each row's memory (a ``MusicXLCache`` of detached keys/values) from one step to the
  next, through gradient accumulation too, so every token trains with a full memory. Each process of a DDP run has
  its own streams (the sequential sampler hands them out). With ``--tasks`` each piece entering a stream becomes
  an example of a drawn task (``data.task_examples``: infilling, harmonization), and the config records the tasks.
  ``--train-mode windows``: random augmented windows of
  ``n_segments * segment_len`` tokens drawn on the fly (``data.TrainTransform`` through ``with_transform``, hence
  ``remove_unused_columns=False``), each starting without memory, for comparison.
- evaluation: every validation piece whole, run in consecutive segments with the memory carried across them
  (``data.eval_pieces``), as TransformerXL evaluates.
- schedule: torch ``OneCycleLR`` (warm up to ``learning_rate``, then cosine down), created in
  ``MusicXLTrainer.create_scheduler`` from the exact number of optimizer steps the Trainer computed. This is
  the Trainer's documented hook for a custom scheduler; unlike ``optimizers=(opt, sched)`` it needs no step
  count worked out by hand, and it is restored from a checkpoint on resume like any scheduler.
- gradient clipping at ``max_grad_norm``; precision ``auto`` picks bf16/fp16 on CUDA, bf16 on a CPU with native bf16
  (AVX-512 BF16, AMX) and fp32 on other CPUs, and
  ``fp16`` on CPU is refused (the Trainer would silently train in fp32).
- evaluation and a checkpoint every epoch (``--eval-steps N``, ``--save-steps N``: every N steps instead);
  metrics: loss, perplexity, token accuracy, NLL per token and per note (total NLL / number of note tokens,
  comparable across tokenizations).
- checkpoints are atomic: the Trainer writes ``checkpoint-N`` into ``OUTPUT_DIR/_saving/`` and it is renamed into
  place only once every file (and every rank's RNG state) is written, so a kill during a save leaves no
  ``checkpoint-N`` at all. ``final/`` is written the same way.
- ``--resume`` continues from the last *complete* checkpoint in the output directory: every file the Trainer
  loads must be there and readable (``checkpoint_problem``); an incomplete one (e.g. written by another tool, or
  cut by a full disk) is moved to ``OUTPUT_DIR/_incomplete/`` with a warning naming what is wrong, and the one
  before it is used. Resuming, even mid-epoch, reaches the same weights as an uninterrupted run with the same seed
  on CPU: the Trainer restores the data order (seeded per epoch), skips the batches already seen and restores the
  torch RNG (dropout); streams and windows do not use that RNG but generators seeded by (seed, epoch, piece),
  since the Trainer fetches batches ahead and, on a mid-epoch resume, before it restores the RNG. Stream training
  also saves each process's memory in the checkpoint (``stream_memory-rank<N>.safetensors``) and restores it.
  (``--plain-final-fraction`` switches window augmentation at a step, which that look-ahead can blur by one batch
  across a resume; streams switch at a fixed step of the data, exactly.)
- no pickles: weights are safetensors; the training arguments are written as ``training_args.json`` instead of
  the Trainer's pickled ``training_args.bin``; the Trainer's resumable state (``optimizer.pt``, ``scheduler.pt``,
  ``rng_state.pth``) are torch files, which it loads with ``weights_only=True`` (as does ``checkpoint_problem``).
- ``--hub-model-id USER/NAME`` pushes to the Hub as the Trainer saves (``--hub-strategy checkpoint`` also uploads
  ``last-checkpoint/``, which ``--resume`` continues from once put back as ``checkpoint-N``), then ``final/``
  with its model card (``hub.push_after_training``).
- ``--max-minutes`` fits the number of steps to a wall-clock budget (measured speed, so the one-cycle
  schedule still completes) and stops at the budget as a safety net.
- at the end, ``OUTPUT_DIR/final`` holds model, tokenizer and generation config (with the code, for
  ``trust_remote_code``), ready for ``from_pretrained`` and ``generate``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from transformers import Trainer, set_seed

from ..data.corpus import load_corpus
from ..data.pieces import eval_pieces, seeded_subset
from ..data.streams import PieceStreams
from ..data.task_examples import parse_tasks
from ..data.windows import TrainTransform
from ..hub.push import describe_push, push_after_training
from ..models.music_xl.configuration_music_xl import MusicXLConfig
from ..models.music_xl.generation_music_xl import generation_config_for
from ..models.music_xl.modeling_music_xl import MusicXLForCausalLM
from ..models.music_xl.tokenization_music_xl_fast import MusicXLTokenizerFast
from .budget import fit_steps_to_budget
from .callbacks import PlainFinalSteps, WallClockBudget
from .checkpoints import STAGING_DIR, checkpoint_max_steps, publish_directory, resumable_checkpoint
from .compiling import resolve_compile
from .settings import TrainSettings, parse_overrides
from .trainer import build_trainer, training_arguments

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    final_dir: Path
    metrics: dict  # validation metrics of the final model
    train_seconds: float
    model: MusicXLForCausalLM  # the trained model, unwrapped


def train(settings: TrainSettings) -> TrainResult:
    """Build or load the corpus, train, evaluate and save ``OUTPUT_DIR/final``."""
    started = time.perf_counter()
    args = training_arguments(settings, settings.max_steps)
    with args.main_process_first(desc="corpus", local=False):  # rank 0 builds the cache, the others load it
        corpus = load_corpus(
            settings.corpus,
            limit=settings.corpus_limit or None,
            num_proc=settings.num_proc,
            midi_column=settings.midi_column,
            note_tempo=settings.note_tempo,
            streaming=settings.streaming,
        )
    if len(corpus["validation"]) == 0:
        raise ValueError(f"corpus {settings.corpus!r} has no validation pieces")

    set_seed(settings.seed)  # the same initial weights on every rank
    tasks = parse_tasks(settings.tasks)
    config = MusicXLConfig.from_preset(
        settings.preset, **{"tasks": ",".join(tasks), **parse_overrides(settings.model_overrides)}
    )
    model = MusicXLForCausalLM(config)
    model.compile_training_attention(resolve_compile(settings.compile))
    model.generation_config = generation_config_for(config)
    tokenizer = MusicXLTokenizerFast()

    train_data, train_set = training_data(settings, corpus["train"], config, args.world_size)
    full_eval_set = eval_pieces(corpus["validation"])
    periodic = seeded_subset(corpus["validation"], settings.eval_pieces, settings.seed)
    eval_set = full_eval_set if periodic is corpus["validation"] else eval_pieces(periodic)

    checkpoint = None
    if settings.resume and os.path.isdir(settings.output_dir):
        with args.main_process_first(desc="checkpoint", local=False):  # rank 0 sets incomplete ones aside first
            checkpoint = resumable_checkpoint(settings.output_dir, set_aside=args.process_index == 0)
    if settings.resume:
        if checkpoint is None:
            logger.warning("--resume: no complete checkpoint in %s, starting from scratch", settings.output_dir)
        else:
            logger.warning("--resume: continuing from %s", checkpoint)
    if args.process_index == 0:  # what a save killed before its rename left behind
        shutil.rmtree(Path(settings.output_dir) / STAGING_DIR, ignore_errors=True)
    callbacks = []
    if checkpoint is not None:
        # A one-cycle schedule cannot be stretched: a resumed run keeps the step count it was started with.
        steps = checkpoint_max_steps(checkpoint)
        if settings.max_steps > 0 and settings.max_steps != steps:
            logger.warning(
                "--resume: keeping the checkpoint's %d steps (one-cycle schedule), not %d", steps, settings.max_steps
            )
        args = training_arguments(settings, steps)
    elif settings.max_minutes > 0:
        eval_tokens = sum(len(ids) for ids in eval_set["input_ids"])
        args = training_arguments(settings, fit_steps_to_budget(settings, model, train_set, eval_tokens, args))
    if settings.max_minutes > 0 and args.world_size == 1:
        callbacks.append(WallClockBudget(settings.max_minutes * 60))
    if settings.plain_final_fraction > 0:
        callbacks.append(PlainFinalSteps(train_data, settings.plain_final_fraction))

    trainer = build_trainer(settings, model, args, train_data, train_set, eval_set, tokenizer, callbacks)
    train_started = time.perf_counter()
    trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = time.perf_counter() - train_started
    rescore = settings.keep_best or eval_set is not full_eval_set  # the best weights, or the whole split
    metrics = final_metrics(trainer, full_eval_set if rescore else None)
    final_dir = Path(settings.output_dir) / "final"
    if trainer.is_world_process_zero():
        save_final(trainer.model, tokenizer, final_dir, metrics, settings)
        if settings.hub_model_id:  # our model card, not the Trainer's generic one
            logger.info("%s", describe_push(push_after_training(trainer, final_dir)))
    trainer.accelerator.wait_for_everyone()
    logger.info("training done in %.1f s (%.1f s in total)", train_seconds, time.perf_counter() - started)
    return TrainResult(final_dir, metrics, train_seconds, trainer.accelerator.unwrap_model(trainer.model))


def training_data(settings: TrainSettings, split, config: MusicXLConfig, world_size: int):
    """(what draws the examples, the dataset the Trainer iterates): ``PieceStreams`` twice for stream training, or a
    ``TrainTransform`` and the split with it as transform for window training."""
    step_tokens = settings.n_segments * config.segment_len
    if settings.train_mode == "stream":
        streams = PieceStreams(
            split,  # read from its Arrow file as the streams need the pieces
            settings.batch_size,
            step_tokens,
            world_size,
            settings.seed,
            settings.augment,
            settings.transpose_p,
            tasks=parse_tasks(settings.tasks),
        )
        return streams, streams
    if set(parse_tasks(settings.tasks)) != {"continue"}:
        raise ValueError(f"--tasks {settings.tasks} needs --train-mode stream (windows are cut from plain pieces)")
    if settings.train_mode == "windows":
        transform = TrainTransform(
            step_tokens,
            augment=settings.augment,
            transpose_p=settings.transpose_p,
            meter=config.position_scheme == "meter",
            seed=settings.seed,
        )
        return transform, split.with_transform(transform)
    raise ValueError(f"unknown train mode {settings.train_mode!r}; choose stream or windows")


def final_metrics(trainer: Trainer, full_eval_set=None) -> dict:
    """Validation metrics of the final weights: the last epoch's evaluation if it ran at the last step on the whole
    split, else an evaluation on ``full_eval_set`` (the whole split, when the periodic ones score a subset)."""
    if full_eval_set is not None:
        return trainer.evaluate(eval_dataset=full_eval_set)
    history = trainer.state.log_history
    last_eval = next((entry for entry in reversed(history) if "eval_loss" in entry), None)
    if last_eval is not None and last_eval.get("step") == trainer.state.global_step:
        return last_eval
    return trainer.evaluate()


def save_final(model, tokenizer, final_dir: Path, metrics: dict, settings: TrainSettings) -> None:
    """Model, tokenizer, generation config and their code in one directory for ``from_pretrained``; written next
    to it and renamed into place, so a kill during the save leaves the previous ``final_dir`` or none."""
    from ..models.music_xl.pipeline_music_xl import MusicXLPipeline

    model = getattr(model, "module", model)  # unwrap DDP if needed
    final_dir = Path(final_dir)
    staged = final_dir.parent / f"_{final_dir.name}.partial"
    shutil.rmtree(staged, ignore_errors=True)
    # through the pipeline: safetensors, tokenizer, and the code + auto_map + custom_pipelines (registered in
    # hf_music_xl/__init__), so pipeline(model=final_dir, trust_remote_code=True) works without this package
    MusicXLPipeline(model=model, tokenizer=tokenizer).save_pretrained(staged)
    summary = {"settings": asdict(settings), "eval": metrics}
    (staged / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    publish_directory(staged, final_dir)
