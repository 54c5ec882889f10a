"""Sampling for the whole package: what a person asks for (``SamplingRequest``) and the prompt it starts from; the
rows are sampled by ``batch_sampling_music_xl.sample_rows``.

Read top to bottom: the presets and the request (one object that travels from the CLI, the app and the pipeline
to the sampling loop, checked once when it is made), then prompts cut at a bar line.

This file is copied next to saved weights (the pipeline imports it), so it may import only torch, transformers,
numpy and its sibling files, and does nothing at import time beyond defining things.
"""

import math
from dataclasses import dataclass, field, fields, replace

import numpy as np

from .configuration_music_xl import TASKS
from .encoding import BOS_ID, EOS_ID, NOTE_OFFSET, NUM_PITCHES, PAD_ID, SEP_ID, is_meter, meter_token, token_bars

# ----------------------------------------------------------------------------------------------------------
# Presets and the request


@dataclass
class SamplingSettings:
    """How tokens are drawn. Temperatures apply to note and duration tokens separately (grammar processor);
    generate's own temperature stays at 1.0. ``top_k=0`` and ``top_p=1.0`` switch those filters off."""

    note_temperature: float = 1.0
    duration_temperature: float = 1.0
    top_k: int = 40
    top_p: float = 0.95


# name -> fields that differ from SamplingSettings' defaults (plain dicts: nothing runs at import)
SAMPLING_PRESETS = {
    "default": {},
    # close to the training data: repeats typical rhythms and voice-leading
    "conservative": dict(note_temperature=0.8, duration_temperature=0.7, top_k=20, top_p=0.9),
    # freer pitch choices; durations stay near 1.0 because wild rhythms sound broken before wild notes do
    "adventurous": dict(note_temperature=1.2, duration_temperature=1.05, top_k=0, top_p=0.98),
}


def sampling_settings(preset: str = "default", **overrides) -> SamplingSettings:
    """A preset with any field replaced by a keyword that is not None."""
    if preset not in SAMPLING_PRESETS:
        raise ValueError(f"unknown sampling preset {preset!r}; choose from {', '.join(SAMPLING_PRESETS)}")
    settings = SamplingSettings(**SAMPLING_PRESETS[preset])
    return replace(settings, **{key: value for key, value in overrides.items() if value is not None})


# The most prompt bars kept, shared by the pipeline, the CLI and the app: one long prompt ran past 150 s for
# 16 new tokens (issue 25); 256 bars is far more than any model here attends to.
MAX_PROMPT_BARS = 256


def bar_range(text: str) -> tuple[int, int]:
    """'5-8' -> (5, 8), '5' -> (5, 5): the bars to fill as ``hf-music-xl infill --bars`` reads them (the request
    checks them)."""
    first, dash, last = str(text).partition("-")
    return int(first), int(last if dash else first)


@dataclass
class SamplingRequest:
    """What to sample: the prompt's bars, the length, how tokens are drawn, seeds and constraints. The CLI builds
    its flags from these fields (``hf-music-xl generate --prompt-bars``), the pipeline takes them as call
    parameters and the app from its controls; every value is checked here, once, so each of them refuses the same
    bad number with the same message.

    The length is ``bars`` (``max_new_tokens`` is then a bound on the tokens, default ``TOKENS_PER_BAR_BOUND`` a
    bar), or ``max_new_tokens`` tokens when ``bars`` is 0. Sample ``i`` uses seed ``seed + i``.

    ``task`` is what is asked of the input (``tasks_music_xl.py``): "continue" it, "infill" the bars
    ``infill_bars`` (first and last, counted from 1, inclusive) or "harmonize" its melody (``melody_track``). A
    field's metadata ``tasks`` names the tasks it is for (all when absent): a command has the flags of its task."""

    prompt_bars: int = field(default=4, metadata={"help": "bars of the prompt kept", "tasks": ("continue",)})
    bars: int = field(
        default=8, metadata={"help": "bars to generate (0: use --max-new-tokens)", "tasks": ("continue",)}
    )
    max_new_tokens: int = field(
        default=0, metadata={"help": "tokens to generate when --bars is 0 (else a bound)", "tasks": ("continue",)}
    )
    preset: str = field(default="default", metadata={"help": "sampling preset", "choices": tuple(SAMPLING_PRESETS)})
    note_temperature: float | None = field(default=None, metadata={"help": "overrides the preset"})
    duration_temperature: float | None = field(default=None, metadata={"help": "overrides the preset"})
    top_k: int | None = field(default=None, metadata={"help": "overrides the preset (0: off)"})
    top_p: float | None = field(default=None, metadata={"help": "overrides the preset (1.0: off)"})
    num_samples: int = field(default=1, metadata={"help": "pieces to generate; sample i uses seed + i"})
    seed: int = field(default=0, metadata={"help": "seed of the first sample"})
    chunk_tokens: int = field(default=0, metadata={"help": "tokens per generate() call resuming the cache; 0: mem_len"})
    allow_end: bool = field(
        default=False, metadata={"help": "let the model end a piece early with xxeos", "tasks": ("continue",)}
    )
    pitch_range: tuple[int, int] | None = field(
        default=None, metadata={"help": "lowest and highest MIDI pitch of new notes", "metavar": ("LOW", "HIGH")}
    )
    scale: str = field(default="", metadata={"help": "keep new notes in a scale, e.g. 'D minor'"})
    meter: str = field(
        default="",
        metadata={
            "help": "time signature of a piece started from nothing, e.g. '3/4' (a prompt brings its own)",
            "tasks": ("continue",),
        },
    )
    task: str = field(
        default="continue",
        metadata={"help": "what to do with the input", "choices": TASKS, "tasks": ()},  # a command is one task
    )
    infill_bars: tuple[int, int] | None = field(
        default=None,
        metadata={
            "help": "the bars to fill, first and last (counted from 1, inclusive), e.g. 5-8",
            "tasks": ("infill",),
            "flag": "bars",
            "type": bar_range,
            "metavar": "FIRST-LAST",
        },
    )
    melody_track: str | int | None = field(
        default=None,
        metadata={
            "help": "the melody: a track's name, or its index among the file's tracks (from 0); default: the only "
            "track, else the highest by mean pitch",
            "tasks": ("harmonize",),
        },
    )

    def __post_init__(self):
        for name in ("prompt_bars", "bars", "max_new_tokens", "num_samples", "seed", "chunk_tokens"):
            setattr(self, name, _whole_number(name, getattr(self, name)))
        for name in ("prompt_bars", "bars", "max_new_tokens", "chunk_tokens", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.prompt_bars > MAX_PROMPT_BARS:  # a prompt's cost grows with its length: bound it for every caller
            raise ValueError(f"prompt_bars must be at most {MAX_PROMPT_BARS}, got {self.prompt_bars}")
        if self.bars == 0 and self.max_new_tokens == 0:
            raise ValueError("give the length as bars or as max_new_tokens")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {self.num_samples}")
        for name in ("note_temperature", "duration_temperature"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if self.top_k is not None:
            self.top_k = _whole_number("top_k", self.top_k)
            if self.top_k < 0:
                raise ValueError(f"top_k must be >= 0 (0: off), got {self.top_k}")
        if self.top_p is not None and not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1] (1.0: off), got {self.top_p!r}")
        if self.pitch_range is not None:
            low, high = (_whole_number("pitch_range", value) for value in self.pitch_range)
            if not 0 <= low <= high <= 127:
                raise ValueError(f"pitch_range must be LOW <= HIGH within 0..127, got {self.pitch_range}")
            self.pitch_range = (low, high)
        self.check_task_fields()
        self.sampling = sampling_settings(  # also refuses an unknown preset
            self.preset,
            note_temperature=self.note_temperature,
            duration_temperature=self.duration_temperature,
            top_k=self.top_k,
            top_p=self.top_p,
        )

    def check_task_fields(self) -> None:
        """The task, and each task's own fields given only to it (a harmonization has no bars to fill)."""
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose from {', '.join(TASKS)}")
        if self.task == "infill":
            self.infill_bars = _bars_to_fill(self.infill_bars)
        elif self.infill_bars is not None:
            raise ValueError(f"infill_bars are the bars an infilling fills, not a {self.task} task's")
        if self.melody_track in ("", None):
            self.melody_track = None
        elif self.task != "harmonize":
            raise ValueError(f"melody_track chooses the melody of a harmonization, not of a {self.task} task")
        elif not isinstance(self.melody_track, str):
            self.melody_track = _whole_number("melody_track", self.melody_track)
            if self.melody_track < 0:
                raise ValueError(f"melody_track is a track's name or its index from 0, got {self.melody_track}")
        if self.allow_end and self.task != "continue":
            raise ValueError(f"allow_end lets a continuation end early; a {self.task} task ends where its input ends")

    @property
    def seeds(self) -> list[int]:
        return [self.seed + index for index in range(self.num_samples)]

    @classmethod
    def from_fields(cls, values: dict) -> "SamplingRequest":
        """The request of the fields among ``values`` that are a request's (others, e.g. a CLI's ``output_dir``,
        are left out); a missing field keeps its default."""
        names = {item.name for item in fields(SamplingRequest)}
        return SamplingRequest(**{key: value for key, value in values.items() if key in names})


def task_fields(task: str) -> list[str]:
    """The request fields ``task`` takes (a field's metadata ``tasks``; every task's where it has none): a command's
    flags, and what it passes on to the pipeline."""
    return [item.name for item in fields(SamplingRequest) if task in item.metadata.get("tasks", TASKS)]


def _bars_to_fill(value) -> tuple[int, int]:
    """``value`` as (first, last), the bars an infilling fills: whole numbers with 1 <= first <= last."""
    if value is None:
        raise ValueError("infill needs the bars to fill, first and last (counted from 1), e.g. (5, 8)")
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"the bars to fill are two whole numbers, first and last, e.g. (5, 8); got {value!r}")
    first, last = (_whole_number("a bar to fill", bar) for bar in value)
    if not 1 <= first <= last:
        raise ValueError(f"the bars to fill need 1 <= first <= last (bars count from 1), got {first}-{last}")
    return first, last


def _whole_number(name: str, value) -> int:
    """``value`` as an int if it is a whole number (``3`` or ``3.0``, not ``nan``, ``inf``, ``2.5`` or ``"3"``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------------------------------------
# Prompts


def empty_prompt(meter: str | None = None) -> np.ndarray:
    """The start of every piece: ``xxbos xxpad``, and with ``meter`` ("3/4", "6/8", ...) its time signature (for
    models whose vocabulary has them; without, the model chooses)."""
    head = [BOS_ID, PAD_ID]
    if meter:
        num, _, den = str(meter).partition("/")
        if not (num.isdigit() and den.isdigit() and int(num) > 0 and int(den) > 0):
            raise ValueError(f"a meter looks like '3/4' or '6/8', got {meter!r}")
        head.append(meter_token(int(num), int(den)))
    return np.array(head, dtype=np.int64)


def prompt_ids(ids: np.ndarray | list[int], bars: int) -> np.ndarray:
    """The tokens of the first ``bars`` bars of an encoded piece (bars as its time signatures lay them out):
    everything before the first note, ``xxsep`` or time signature that falls in bar ``bars`` or later. A shorter
    piece is kept whole, without its ``xxeos`` (a prompt that ends the piece would leave nothing to continue)."""
    if bars < 0:
        raise ValueError(f"prompt bars must be >= 0, got {bars}")
    ids = np.asarray(ids, dtype=np.int64)
    is_note = (ids >= NOTE_OFFSET) & (ids < NOTE_OFFSET + NUM_PITCHES)
    opens = is_note | (ids == SEP_ID) | is_meter(ids)
    later = np.flatnonzero(opens & (token_bars(ids)[0] >= bars))
    end = int(later[0]) if len(later) else len(ids)
    prompt = ids[:end]
    return prompt[: len(prompt) - 1] if len(prompt) and prompt[-1] == EOS_ID else prompt
