"""Train MusicXL with the Hugging Face Trainer.

    hf-music-xl train --corpus bach-chorales --preset tiny --output-dir runs/tiny
    torchrun --standalone --nproc_per_node 2 scripts/train.py --preset tiny ...      # DDP (gloo on CPU)
    accelerate launch --multi_gpu --num_processes 2 scripts/train.py --preset tiny ...

What the Trainer is given, and why:

- examples (``--train-mode stream``, the default): as TransformerXL trains, every batch row continues its own
  stream of whole pieces (``streams.PieceStreams``: shuffled each epoch from the seed, transposed on the fly), and
  ``MusicXLTrainer`` carries each row's memory (a ``MusicXLCache`` of detached keys/values) from one step to the
  next, through gradient accumulation too, so every token trains with a full memory. Each process of a DDP run has
  its own streams (the sequential sampler hands them out). ``--train-mode windows``: random augmented windows of
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

import copy
import json
import logging
import math
import os
import shutil
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import GenerationConfig, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from . import encoding
from .cache_music_xl import MusicXLCache
from .checkpoints import (
    STAGING_DIR,
    STREAM_MEMORY,
    checkpoint_max_steps,
    publish_directory,
    resumable_checkpoint,
    write_training_args,
)
from .configuration_music_xl import MusicXLConfig
from .corpus import DEFAULT_SOURCE, load_corpus
from .data import IGNORE_INDEX, TrainTransform, collate, eval_pieces
from .hub import describe as describe_push
from .hub import hub_training_arguments, push_after_training
from .modeling_music_xl import MusicXLForCausalLM
from .streams import PieceStreams
from .tokenization_music_xl_fast import MusicXLTokenizerFast

logger = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    """Everything a training run needs; each field is also a ``hf-music-xl train`` flag (``--n-segments``)."""

    corpus: str = field(
        default=DEFAULT_SOURCE, metadata={"help": "a corpus source (see build-corpus) or a built corpus directory"}
    )
    output_dir: str = field(default="runs/music-xl", metadata={"help": "checkpoints, logs and final/"})
    preset: str = field(default="tiny", metadata={"help": "model size: tiny, small or base"})
    model_overrides: str = field(default="", metadata={"help": "config fields, e.g. 'mask_p=0,dropout=0.2'"})
    train_mode: str = field(
        default="stream",
        metadata={
            "help": "stream: every row continues its stream of pieces with the memory carried from step to step; "
            "windows: random windows, each from no memory"
        },
    )
    n_segments: int = field(default=4, metadata={"help": "segments of segment_len tokens per row per step"})
    epochs: float = field(
        default=10.0, metadata={"help": "training epochs (ignored with --max-steps or --max-minutes)"}
    )
    max_steps: int = field(default=-1, metadata={"help": "optimizer steps; -1: from --epochs"})
    max_minutes: float = field(default=0.0, metadata={"help": "wall-clock budget for training; 0: none"})
    batch_size: int = field(default=16, metadata={"help": "windows per device per step"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    learning_rate: float = field(default=2e-3, metadata={"help": "peak learning rate of the one-cycle schedule"})
    warmup_fraction: float = field(default=0.25, metadata={"help": "share of steps rising to the peak"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    augment: bool = field(default=True, metadata={"help": "random transposition of each drawn piece"})
    transpose_p: float = field(default=0.5, metadata={"help": "probability of transposing a drawn piece"})
    plain_final_fraction: float = field(default=0.0, metadata={"help": "share of the last steps without transposition"})
    precision: str = field(default="auto", metadata={"help": "auto, fp32, bf16 or fp16 (CUDA only)"})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "recompute each block's activations in the backward pass (less memory, about a third more compute)"
        },
    )
    seed: int = field(default=42, metadata={"help": "random seed"})
    resume: bool = field(
        default=False,
        metadata={"help": "continue from the last complete checkpoint in --output-dir (incomplete ones are set aside)"},
    )
    logging_steps: int = field(default=10, metadata={"help": "log the training loss every this many steps"})
    save_steps: int = field(default=0, metadata={"help": "save a checkpoint every this many steps; 0: every epoch"})
    eval_steps: int = field(default=0, metadata={"help": "evaluate every this many steps; 0: every epoch"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept"})
    corpus_limit: int = field(default=0, metadata={"help": "read only this many files when building; 0: all"})
    num_proc: int = field(default=2, metadata={"help": "processes reading files when building the corpus"})
    hub_model_id: str = field(
        default="",
        metadata={
            "help": "push checkpoints as they are saved, then final/ with its model card, to this Hub repo; "
            "empty: no push"
        },
    )
    hub_strategy: str = field(
        default="checkpoint",
        metadata={
            "help": "what the Trainer pushes on save: every_save, checkpoint (also last-checkpoint/, resumable), "
            "all_checkpoints, end"
        },
    )
    hub_private: bool = field(default=False, metadata={"help": "create the Hub repo private"})


@dataclass
class TrainResult:
    final_dir: Path
    metrics: dict  # validation metrics of the final model
    train_seconds: float
    model: MusicXLForCausalLM  # the trained model, unwrapped


# ----------------------------------------------------------------------------------------------------------
# Metrics


def token_scores(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, L-1, 2): NLL and argmax correctness of each next-token prediction; keeps eval memory small."""
    if isinstance(logits, tuple):
        logits = logits[0]
    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    nll = F.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")
    correct = (logits.argmax(-1) == targets).float()
    return torch.stack([nll, correct], dim=-1)


def compute_metrics(eval_prediction) -> dict[str, float]:
    """Perplexity, token accuracy, NLL per token and per note over all labelled validation tokens."""
    scores, labels = eval_prediction.predictions, eval_prediction.label_ids
    targets = labels[:, 1:]
    counted = targets != IGNORE_INDEX
    is_note = counted & (targets >= encoding.NOTE_OFFSET) & (targets < encoding.NOTE_OFFSET + encoding.NUM_PITCHES)
    total_nll = float(scores[..., 0][counted].sum())
    tokens, notes = int(counted.sum()), int(is_note.sum())
    return {
        "nll_per_token": total_nll / max(tokens, 1),
        "perplexity": math.exp(total_nll / max(tokens, 1)),
        "token_accuracy": float(scores[..., 1][counted].sum()) / max(tokens, 1),
        "nll_per_note": total_nll / notes if notes else float("nan"),
        "tokens": tokens,
        "notes": notes,
    }


# ----------------------------------------------------------------------------------------------------------
# Trainer pieces


class MusicXLTrainer(Trainer):
    """The Trainer with stream memory, a one-cycle learning-rate schedule, atomic checkpoints and the training
    arguments as JSON instead of a pickle (see the module docstring).

    With ``carry_memory`` (stream training, ``train_dataset`` a ``PieceStreams``), each training step continues the
    memory the step before ended with: one ``MusicXLCache`` per process, its rows the process's streams. It starts
    empty with every epoch (new streams) and is saved with each checkpoint, so a resumed run continues exactly.
    """

    def __init__(self, *args, warmup_fraction: float = 0.25, carry_memory: bool = False, **kwargs):
        self.warmup_fraction = warmup_fraction
        self.carry_memory = carry_memory
        self.memory, self.memory_epoch = None, None  # the streams' MusicXLCache and the epoch it belongs to
        self._staging_root = None  # set while a checkpoint is being written
        self._push_pending = False
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not (self.carry_memory and model.training):  # evaluation scores each piece from its start
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        epoch = self.train_dataset.epoch
        if self.memory_epoch != epoch:  # a new epoch deals new streams: start them without memory
            self.memory, self.memory_epoch = None, epoch
        inputs = {**inputs, "past_key_values": self.memory, "use_cache": True}
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        self.memory = outputs.past_key_values  # detached: no gradient reaches back into this step
        return (loss, outputs) if return_outputs else loss

    def save_stream_memory(self, folder) -> None:
        if self.memory is None:
            return
        from safetensors.torch import save_file

        tensors, first = self.memory.state()
        metadata = {"epoch": str(self.memory_epoch), "first": str(first)}
        Path(folder).mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.cpu() for k, v in tensors.items()},
            str(Path(folder) / STREAM_MEMORY.format(self.args.process_index)),
            metadata,
        )

    def load_stream_memory(self, folder) -> None:
        from safetensors import safe_open

        path = Path(folder) / STREAM_MEMORY.format(self.args.process_index)
        if not path.is_file():
            return
        with safe_open(str(path), framework="pt", device=str(self.args.device)) as memory_file:
            metadata = memory_file.metadata()
            tensors = {name: memory_file.get_tensor(name) for name in memory_file.keys()}
        config = self.accelerator.unwrap_model(self.model).config
        self.memory = MusicXLCache.from_state(config, tensors, int(metadata["first"]))
        self.memory_epoch = int(metadata["epoch"])

    def _load_rng_state(self, checkpoint) -> None:
        # the Trainer calls this once when it resumes, at the step it resumes from: the memory goes with the RNG
        super()._load_rng_state(checkpoint)
        if self.carry_memory and checkpoint is not None:
            self.load_stream_memory(checkpoint)

    def _get_output_dir(self, trial) -> str:
        # While saving, the Trainer writes (and rotates) checkpoints in the staging directory.
        return self._staging_root if self._staging_root is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's save into ``OUTPUT_DIR/_saving/checkpoint-N``, then one rename to ``OUTPUT_DIR/checkpoint-N``
        once every rank has written its files; then the old checkpoints are rotated and the Hub push (if any) runs."""
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        self._staging_root = os.path.join(run_dir, STAGING_DIR)
        try:
            super()._save_checkpoint(model, trial)
            if self.carry_memory:
                self.save_stream_memory(Path(self._staging_root) / name)
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()  # every rank's rng_state_<rank>.pth (and memory) is in place
        target = os.path.join(run_dir, name)
        if self.args.should_save:
            publish_directory(Path(run_dir) / STAGING_DIR / name, Path(target))
            shutil.rmtree(Path(run_dir) / STAGING_DIR, ignore_errors=True)  # nothing else is in it
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()
        if self._push_pending:
            self._push_pending = False
            self._push_from_checkpoint(target)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if self._staging_root is not None:  # called inside the save: push once the checkpoint is in place
            self._push_pending = True
            return
        # The Trainer writes a pickled training_args.bin into OUTPUT_DIR before uploading it: give it a name the
        # upload skips ("_*") and delete it; training_args.json is uploaded instead.
        import transformers.trainer as trainer_module

        hidden, original = "_training_args.bin", trainer_module.TRAINING_ARGS_NAME
        write_training_args(self.args.output_dir, self.args)
        trainer_module.TRAINING_ARGS_NAME = hidden
        try:
            super()._push_from_checkpoint(checkpoint_folder)
        finally:
            trainer_module.TRAINING_ARGS_NAME = original
            Path(self.args.output_dir, hidden).unlink(missing_ok=True)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        if self.args.should_save:  # the arguments as JSON, not the Trainer's pickle
            write_training_args(output_dir if output_dir is not None else self.args.output_dir, self.args)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None and num_training_steps < 4:  # too short for a cycle: constant rate
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, lambda step: 1.0)
        elif self.lr_scheduler is None:
            self.lr_scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer or self.optimizer,
                max_lr=self.args.learning_rate,
                total_steps=num_training_steps,
                pct_start=max(self.warmup_fraction, 2 / num_training_steps),  # at least 1 step up (torch needs it)
                anneal_strategy="cos",
                div_factor=25.0,  # start at peak / 25
                final_div_factor=1e3,  # end at start / 1000
            )
        return self.lr_scheduler


class WallClockBudget(TrainerCallback):
    """Stop (saving a checkpoint) once training has run for ``seconds``; single process only, since ranks
    deciding on their own could stop on different steps and hang DDP."""

    def __init__(self, seconds: float):
        self.seconds, self.started = seconds, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if time.perf_counter() - self.started > self.seconds:
            logger.warning(
                "wall-clock budget of %.1f min reached at step %d: stopping", self.seconds / 60, state.global_step
            )
            control.should_training_stop = True
            control.should_save = True


class EpochSeed(TrainerCallback):
    """Tell the training data which epoch it draws for (``TrainTransform.seed``, ``PieceStreams``). ``state.epoch``
    is a whole number at the start of an epoch and fractional when a run resumes mid-epoch: its floor is the epoch
    either way."""

    def __init__(self, data: TrainTransform | PieceStreams):
        self.data = data

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.data.set_epoch(math.floor((state.epoch or 0) + 1e-9))


class PlainFinalSteps(TrainerCallback):
    """Turn transposition off for the last ``fraction`` of the steps (the reference's last epochs): windows from
    the step it starts, streams from that step of their data (a function of the step, so exact on resume)."""

    def __init__(self, data: TrainTransform | PieceStreams, fraction: float):
        self.data, self.fraction, self.initial = data, fraction, data.augment

    def on_train_begin(self, args, state, control, **kwargs):
        if isinstance(self.data, PieceStreams):
            self.data.plain_from_step = (
                math.ceil((1 - self.fraction) * state.max_steps) * args.gradient_accumulation_steps
            )

    def on_step_begin(self, args, state, control, **kwargs):
        if isinstance(self.data, TrainTransform):
            self.data.augment = self.initial and state.global_step < (1 - self.fraction) * state.max_steps


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matmuls run about twice as fast as fp32 (without them bf16 is slower)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own probes (private, so guarded)
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_precision(precision: str) -> dict[str, bool]:
    """TrainingArguments precision flags for what the hardware really supports. ``auto``: bf16 (or fp16) on CUDA,
    bf16 autocast on a CPU with native bf16 (AVX-512 BF16 or AMX), fp32 elsewhere; the choice is logged."""
    cuda = torch.cuda.is_available()
    if precision == "auto":
        if cuda:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            reason = "CUDA"
        else:
            precision = "bf16" if cpu_has_native_bf16() else "fp32"
            reason = (
                "this CPU has native bf16 (AVX-512 BF16/AMX)" if precision == "bf16" else "this CPU lacks native bf16"
            )
        logger.info("--precision auto: %s (%s)", precision, reason)
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"unknown precision {precision!r}; choose auto, fp32, bf16 or fp16")
    if precision == "fp16" and not cuda:
        raise ValueError(
            "fp16 needs a CUDA GPU: on CPU the Trainer accepts fp16=True and silently trains in fp32. "
            "Use --precision fp32 (or bf16, which autocasts on CPU)."
        )
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU does not support bf16; use --precision fp16 or fp32")
    if precision == "bf16" and not cuda and not cpu_has_native_bf16():
        warnings.warn("bf16 on CPU autocasts matmuls; without AMX/AVX512-BF16 it is slower than fp32", stacklevel=2)
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def parse_overrides(text: str) -> dict:
    """'mask_p=0,dropout=0.2' -> {'mask_p': 0, 'dropout': 0.2} (values read as JSON, else kept as text)."""
    overrides = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"model override {item!r} is not key=value")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value.strip()
    return overrides


def generation_config_for(config: MusicXLConfig) -> GenerationConfig:
    """Sampling defaults for music: sampling (greedy decoding loops), top-k/top-p, the vocabulary's ids."""
    return GenerationConfig(
        do_sample=True,
        top_k=40,
        top_p=0.95,
        temperature=1.0,
        max_new_tokens=512,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )


def training_arguments(settings: TrainSettings, max_steps: int) -> TrainingArguments:
    return TrainingArguments(
        # streams: rows keep their order (each process its own streams; accelerate deals out whole batches)
        train_sampling_strategy="sequential" if settings.train_mode == "stream" else "random",
        activation_checkpointing=settings.gradient_checkpointing,
        output_dir=settings.output_dir,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        num_train_epochs=settings.epochs,
        max_steps=max_steps,
        learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        eval_strategy="steps" if settings.eval_steps > 0 else "epoch",
        eval_steps=settings.eval_steps if settings.eval_steps > 0 else None,
        save_strategy="steps" if settings.save_steps > 0 else "epoch",
        save_steps=settings.save_steps if settings.save_steps > 0 else 500,
        save_total_limit=settings.save_total_limit,
        logging_steps=settings.logging_steps,
        remove_unused_columns=False,  # the transform needs the raw columns
        use_cpu=not torch.cuda.is_available(),  # also what makes torchrun on CPU real DDP (gloo)
        seed=settings.seed,
        report_to="none",
        **resolve_precision(settings.precision),
        **(
            hub_training_arguments(settings.hub_model_id, settings.hub_strategy, settings.hub_private or None)
            if settings.hub_model_id
            else {}
        ),
    )


# ----------------------------------------------------------------------------------------------------------
# Fitting the steps to a time budget


def seconds_per_step(model, train_set, batch_size: int, grad_accum: int, repeats: int = 4, warmup: int = 2) -> float:
    """Measured seconds of one optimizer step (forward, backward, AdamW) on a copy of the model: the median of
    ``repeats`` steps after ``warmup`` (first steps allocate). On a shared machine this is only an estimate."""
    probe = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-5)
    batch = collate([train_set[i % len(train_set)] for i in range(batch_size)])
    timings = []
    for _ in range(warmup + repeats):
        started = time.perf_counter()
        probe(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings[warmup:]) * grad_accum


def steps_for_budget(seconds: float, step_seconds: float, steps_per_epoch: int, eval_seconds: float) -> int:
    """Optimizer steps that fit ``seconds`` including one evaluation and checkpoint per epoch, with 10% slack."""
    per_step = step_seconds + eval_seconds / steps_per_epoch
    return max(1, int(0.9 * seconds / per_step))


def fit_steps_to_budget(settings, model, train_set, eval_tokens: int, args: TrainingArguments) -> int:
    step_seconds = seconds_per_step(model, train_set, settings.batch_size, settings.grad_accum)
    world = args.world_size
    steps_per_epoch = max(1, math.ceil(len(train_set) / (settings.batch_size * world * settings.grad_accum)))
    step_tokens = settings.batch_size * settings.grad_accum * len(train_set[0]["input_ids"])
    eval_seconds = eval_tokens / world / step_tokens * step_seconds / 3 + 1.0  # a forward is about 1/3 of a step
    steps = steps_for_budget(settings.max_minutes * 60, step_seconds, steps_per_epoch, eval_seconds)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        agreed = torch.tensor([steps])
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)  # every rank the same count
        steps = int(agreed.item())
    logger.info(
        "%.2f s per step measured: %d steps (%.1f epochs) fit %.1f min",
        step_seconds,
        steps,
        steps / steps_per_epoch,
        settings.max_minutes,
    )
    return steps


# ----------------------------------------------------------------------------------------------------------
# The run


def train(settings: TrainSettings) -> TrainResult:
    """Build or load the corpus, train, evaluate and save ``OUTPUT_DIR/final``."""
    started = time.perf_counter()
    args = training_arguments(settings, settings.max_steps)
    with args.main_process_first(desc="corpus", local=False):  # rank 0 builds the cache, the others load it
        corpus = load_corpus(settings.corpus, limit=settings.corpus_limit or None, num_proc=settings.num_proc)
    if len(corpus["validation"]) == 0:
        raise ValueError(f"corpus {settings.corpus!r} has no validation pieces")

    set_seed(settings.seed)  # the same initial weights on every rank
    config = MusicXLConfig.from_preset(settings.preset, **parse_overrides(settings.model_overrides))
    model = MusicXLForCausalLM(config)
    model.generation_config = generation_config_for(config)
    tokenizer = MusicXLTokenizerFast()

    train_data, train_set = training_data(settings, corpus["train"], config, args.world_size)
    eval_set = eval_pieces(corpus["validation"])

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
    callbacks = [EpochSeed(train_data)]
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

    trainer = MusicXLTrainer(
        model=model,
        args=args,
        data_collator=collate,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=token_scores,
        callbacks=callbacks,
        warmup_fraction=settings.warmup_fraction,
        carry_memory=settings.train_mode == "stream",
    )
    train_started = time.perf_counter()
    trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = time.perf_counter() - train_started
    metrics = final_metrics(trainer)
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
            split["input_ids"],
            settings.batch_size,
            step_tokens,
            world_size,
            settings.seed,
            settings.augment,
            settings.transpose_p,
        )
        return streams, streams
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


def final_metrics(trainer: Trainer) -> dict:
    """Validation metrics of the final weights: the last epoch's evaluation if it ran at the last step."""
    history = trainer.state.log_history
    last_eval = next((entry for entry in reversed(history) if "eval_loss" in entry), None)
    if last_eval is not None and last_eval.get("step") == trainer.state.global_step:
        return last_eval
    return trainer.evaluate()


def save_final(model, tokenizer, final_dir: Path, metrics: dict, settings: TrainSettings) -> None:
    """Model, tokenizer, generation config and their code in one directory for ``from_pretrained``; written next
    to it and renamed into place, so a kill during the save leaves the previous ``final_dir`` or none."""
    from .pipeline_music_xl import MusicXLPipeline

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


def weights_digest(model) -> str:
    """A hash of all parameters (compares DDP replicas)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(getattr(model, "module", model).state_dict().items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensor.detach().cpu().float().numpy()).tobytes())
    return digest.hexdigest()
