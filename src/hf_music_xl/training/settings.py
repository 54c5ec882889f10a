"""What a training run is asked to do: ``TrainSettings`` (each field is also a ``hf-music-xl train`` flag) and the
``--model-overrides`` it parses into config fields."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..data.corpus import DEFAULT_SOURCE


@dataclass
class TrainSettings:
    """Everything a training run needs; each field is also a ``hf-music-xl train`` flag (``--n-segments``)."""

    corpus: str = field(
        default=DEFAULT_SOURCE, metadata={"help": "a corpus source (see build-corpus) or a built corpus directory"}
    )
    output_dir: str = field(default="runs/music-xl", metadata={"help": "checkpoints, logs and final/"})
    preset: str = field(default="tiny", metadata={"help": "model size: tiny, medium, small or base"})
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
    tasks: str = field(
        default="continue",
        metadata={
            "help": "what each streamed piece is turned into, with mixing weights: e.g. 'continue,infill,harmonize' "
            "(equal) or 'continue:2,infill:1,harmonize:1'; saved in the model's config (stream training only)"
        },
    )
    plain_final_fraction: float = field(default=0.0, metadata={"help": "share of the last steps without transposition"})
    precision: str = field(default="auto", metadata={"help": "auto, fp32, bf16 or fp16 (CUDA only)"})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "recompute each block's activations in the backward pass (less memory, about a third more compute)"
        },
    )
    compile: bool | None = field(
        default=None,
        metadata={
            "help": "torch.compile the attention of training steps (--compile/--no-compile); neither: on with CUDA, "
            "off on CPU (slower there, BENCHMARKS.md); where compiling fails, one warning and eager"
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
    keep_best: bool = field(
        default=False,
        metadata={
            "help": "keep the checkpoint with the lowest validation NLL per note and end with its weights "
            "(final/ is the best checkpoint, not the last); --save-steps a multiple of --eval-steps"
        },
    )
    corpus_limit: int = field(default=0, metadata={"help": "read only this many files when building; 0: all"})
    num_proc: int = field(default=2, metadata={"help": "processes reading files when building the corpus"})
    midi_column: str = field(
        default="", metadata={"help": "dataset corpora: the column of MIDI bytes or note tables; empty: found"}
    )
    note_tempo: float = field(
        default=120.0, metadata={"help": "tempo (quarter notes a minute) of note tables without one"}
    )
    streaming: bool = field(default=False, metadata={"help": "hf:ORG/NAME corpora: encode as it streams, no download"})
    eval_pieces: int = field(
        default=0,
        metadata={
            "help": "periodic evaluation on this many validation pieces (a fixed subset drawn from --seed), the "
            "whole split at the end; 0: the whole split every time"
        },
    )
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
