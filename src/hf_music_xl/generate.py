"""Generating music with a trained MusicXL model: prompts, sampling presets, long pieces in chunks, streaming.

    hf-music-xl generate runs/tiny/final --prompt bach.mid --prompt-bars 4 --bars 16 --num-samples 3
    hf-music-xl generate runs/tiny/final --bars 64 --preset adventurous --stream

- a prompt is the first N bars of a MIDI file (``prompt_ids``), or just ``xxbos xxpad``;
- the length is in bars (``MaxBarsCriteria``) or in tokens (``max_new_tokens``);
- every sample goes through ``MusicGrammarProcessor``, so every output decodes to valid notes;
- a long piece is generated in chunks of ``chunk_tokens``, each chunk resuming from the memory cache that the
  previous one returned: only new tokens are fed to the model, so a token costs the same at bar 64 as at bar 4
  (the cache keeps the last ``mem_len`` tokens), and progress is reported between chunks;
- sample ``i`` uses seed ``seed + i``, which its file name records, so any one output can be made again alone.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers.generation.streamers import BaseStreamer

from .models.music_xl import encoding
from .models.music_xl.batch_sampling_music_xl import TOKENS_PER_BAR_BOUND, fell_short, sample_rows
from .models.music_xl.sampling_music_xl import SamplingRequest, empty_prompt, prompt_ids
from .models.music_xl.tasks_music_xl import check_task
from .release import default_model, model_field
from .render import FileOptions, render_outputs

logger = logging.getLogger(__name__)


def midi_prompt(tokenizer, midi_path, bars: int) -> np.ndarray:
    """The first ``bars`` bars of a MIDI file, as ids starting ``xxbos xxpad`` (and its time signature, for a
    tokenizer whose vocabulary has them)."""
    return prompt_ids(tokenizer.encode_midi(midi_path), bars)


# ----------------------------------------------------------------------------------------------------------
# Streaming

PITCH_NAMES = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
DURATION_NAMES = {
    1: "16th",
    2: "8th",
    3: "dotted 8th",
    4: "quarter",
    6: "dotted quarter",
    8: "half",
    12: "dotted half",
    16: "whole",
}  # fmt: skip  (in 16th-note steps)


def pitch_name(pitch: int) -> str:
    """MIDI 60 -> 'C4'."""
    return f"{PITCH_NAMES[pitch % 12]}{pitch // 12 - 1}"


def duration_name(steps: int) -> str:
    return DURATION_NAMES.get(steps, f"{steps}/16")


def describe_note(bar: int, beat: float, pitch: int, duration: int) -> str:
    """'bar 3 beat 2.5: C4 (8th)': bar and beat counted from 0 here, printed from 1."""
    return f"bar {bar + 1} beat {beat + 1:g}: {pitch_name(pitch)} ({duration_name(duration)})"


class NoteStreamer(BaseStreamer):
    """Writes one line per note as generate() produces it ("bar 3 beat 2: C4 (quarter)").

    generate() first puts the whole input, then each new token, then calls end(). Over chunked generation
    each chunk puts the sequence so far again; only the first input is taken (it sets the running time), the
    later ones are skipped. Batch size 1 only (one sample at a time).

    Args:
        file: where lines go: a text file object (default stdout), flushed per note so ``tail -f`` follows.
    """

    def __init__(self, file=None):
        self.file = file if file is not None else sys.stdout
        self.ids: list[int] = []  # everything seen, for bars and beats by the tokenizer's rule (time signatures)
        self.input_pending = True  # the next put() is generate's input, not a new token

    def put(self, value):
        tokens = value.reshape(-1).tolist() if hasattr(value, "reshape") else [int(value)]
        if self.input_pending:
            self.input_pending = False
            if not self.ids:  # the prompt of the first chunk
                self.ids = tokens
            return
        if len(tokens) != 1:
            raise ValueError("NoteStreamer streams one sample at a time (batch size 1)")
        self.ids.extend(tokens)
        if len(self.ids) >= 2 and encoding.NOTE_OFFSET <= self.ids[-2] < encoding.DURATION_OFFSET:
            notes = encoding.ids_to_notes(self.ids[-2:])  # the note just completed (if its duration is > 0)
            if len(notes):
                bar, _, beat, in_beat = (int(column[-1]) for column in encoding.token_bars(self.ids))
                beat_length = encoding.beat_steps(*encoding.ids_to_notes(self.ids).meters[-1, 1:])
                print(
                    describe_note(bar, beat + in_beat / beat_length, int(notes.pitch[0]), int(notes.duration[0])),
                    file=self.file,
                    flush=True,
                )

    def end(self):
        self.input_pending = True


# ----------------------------------------------------------------------------------------------------------
# Generating


@torch.no_grad()
def generate_batch(
    model,
    prompts: list,
    request: SamplingRequest,
    seeds: list[int],
    streamer: BaseStreamer | None = None,
    progress: bool = True,
) -> list[np.ndarray]:
    """Each prompt followed by a continuation from its seed (ids), all sampled in one batch as ``request`` asks,
    with the grammar processor on (``sample_rows`` of batch_sampling_music_xl.py, with a progress bar); sample ``i``
    is the one its prompt and seed give alone.

    Args:
        model: a ``MusicXLForCausalLM`` (put in eval mode here).
        prompts: one per seed, ids starting ``xxbos xxpad`` (see ``prompt_ids``); ``[prompt] * n`` for the samples
            of one prompt.
        request: the length, sampling and constraints (its ``prompt_bars``, ``meter``, ``seed`` and
            ``num_samples`` are the caller's: the prompt is made, and the seeds are given).
        seeds: one per sample.
        streamer: receives tokens as they come (e.g. ``NoteStreamer``; one seed only).
    """
    unit, total = ("bar", request.bars) if request.bars else ("token", request.max_new_tokens)
    with tqdm(total=total, unit=unit, disable=not progress, leave=False) as bar:
        for rows, done in sample_rows(model, prompts, request, seeds, streamer):  # noqa: B007 - the last is kept
            bar.update(min(min(done), total) - bar.n)
    samples = [row.cpu().numpy() for row in rows]
    for ids, bars_done, seed in zip(samples, done, seeds):
        if fell_short(ids, bars_done, request.bars, model.config):
            budget = request.max_new_tokens or TOKENS_PER_BAR_BOUND * request.bars
            logger.warning(
                "seed %d stopped at the bound of %d new tokens after %d of %d bars; pass max_new_tokens to raise it",
                seed,
                budget,
                bars_done,
                request.bars,
            )
    return samples


def generate_continuation(
    model, prompt, request: SamplingRequest, seed: int | None = None, streamer=None, progress: bool = True
) -> np.ndarray:
    """``generate_batch`` of one seed (default ``request.seed``): the prompt followed by its continuation."""
    [ids] = generate_batch(model, [prompt], request, [request.seed if seed is None else seed], streamer, progress)
    return ids


# ----------------------------------------------------------------------------------------------------------
# Files


def output_stem(out_dir, prefix: str, index: int, seed: int) -> Path:
    """``OUT_DIR/<prefix>-<index>-seed<seed>``: the .mid, .png and .wav of one sample share it."""
    return Path(out_dir) / f"{prefix}-{index}-seed{seed}"


LINEAR_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def linears_field():
    """The ``linears`` field of a sampling command's settings (``for_generation``)."""
    help_text = (
        "dtype of the blocks' linear weights while sampling: auto (bfloat16 on a CPU with native bf16, where a step "
        "reads half the bytes and runs faster; as saved elsewhere), float32 or bfloat16"
    )
    return field(default="auto", metadata={"help": help_text, "choices": ["auto", *LINEAR_DTYPES]})


def for_generation(model, linears: str = "auto"):
    """``model`` with its linear weights stored as a sampling command asks (``MusicXLForCausalLM.store_linears_in``):
    "auto" stores them in bfloat16 on a CPU with native bf16 (AVX-512 BF16 or AMX; BENCHMARKS.md: 1.1x at one row to
    1.8x at 64, the released model's NLL +0.003%) and leaves them as saved elsewhere. Returns the model."""
    from .training.precision import cpu_has_native_bf16

    if linears not in ("auto", *LINEAR_DTYPES):
        raise ValueError(f"linears must be auto, float32 or bfloat16, got {linears!r}")
    if linears == "auto":
        if model.device.type != "cpu" or not cpu_has_native_bf16():
            return model
        linears = "bfloat16"
    return model.store_linears_in(LINEAR_DTYPES[linears])


@dataclass
class GenerateSettings(FileOptions, SamplingRequest):
    """Everything ``hf-music-xl generate`` needs: a ``SamplingRequest`` and where its prompt comes from and its
    files go; each field is a flag (``--prompt-bars``), ``model`` the positional argument."""

    model: str = model_field()
    linears: str = linears_field()
    prompt: str = field(
        default="", metadata={"help": "MIDI file whose first --prompt-bars bars start each sample; empty: from nothing"}
    )
    output_dir: str = field(default="outputs/generated", metadata={"help": "where files are written"})
    prefix: str = field(default="", metadata={"help": "file name prefix; default: the prompt file's stem, or 'sample'"})
    stream: str = field(
        default="",
        metadata={"help": "print notes as they come: '-' for stdout or a file to append to", "const": "-"},
    )


def load_model_and_tokenizer(name_or_path: str | None = None):
    """``from_pretrained`` of a directory or Hub id, by default the released model (``release.default_model``);
    offline, a Hub id must already be in the local cache. A Hub problem (unreachable address, bad token, no such
    repo) raises ``HubAccessError`` with one line."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .hub.errors import check_model_access, hub_errors

    name_or_path = name_or_path or default_model()
    local_files_only = Path(name_or_path).is_dir() or not is_repo_id(name_or_path) or check_model_access(name_or_path)
    try:
        with hub_errors(name_or_path):
            model = AutoModelForCausalLM.from_pretrained(name_or_path, local_files_only=local_files_only).eval()
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local_files_only)
    except OSError as error:  # e.g. a directory without a model: transformers says what is missing (first line)
        raise ValueError(f"cannot load model {name_or_path!r}: {str(error).splitlines()[0]}") from error
    return model, tokenizer


def is_repo_id(name: str) -> bool:
    """``name`` could be a Hub id (else it can only be a local path)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def load_pipeline(name_or_path: str | None = None, linears: str = "auto"):
    """A ``MusicXLPipeline`` (the ``music-generation`` pipeline) of this package's classes for a model directory
    or Hub id, by default the released model, its linears stored for sampling (``for_generation``); without the
    package, ``pipeline(model=..., trust_remote_code=True)`` gives the same with the weights as saved."""
    from .models.music_xl.pipeline_music_xl import MusicXLPipeline

    model, tokenizer = load_model_and_tokenizer(name_or_path)
    return MusicXLPipeline(model=for_generation(model, linears), tokenizer=tokenizer)


@dataclass
class Sample:
    """One generated piece: its ids (prompt first), where the prompt ends, its seed and its files."""

    ids: np.ndarray
    prompt_len: int
    seed: int
    files: dict  # "midi", "picture", "audio" -> Path or None


def generate_samples(model, prompt, settings: GenerateSettings, prefix: str) -> list[Sample]:
    """``settings.num_samples`` continuations of ``prompt`` (sample i with seed ``settings.seed + i - 1``), each
    written as ``OUTPUT_DIR/<prefix>-<i>-seed<seed>`` .mid/.png/.wav; the paths are printed. ``settings.model``
    and ``settings.prompt`` are not used (the caller has loaded them)."""
    stream_file = None
    if settings.stream:
        stream_file = sys.stdout if settings.stream == "-" else open(settings.stream, "a", encoding="utf-8")

    try:
        if stream_file:  # a streamer follows one sequence: one sample after another
            batches = [[seed] for seed in settings.seeds]
        else:
            batches = [settings.seeds]
        samples = []
        for seeds in batches:
            streamer = NoteStreamer(stream_file) if stream_file else None
            if stream_file:
                print(f"# {prefix}-{len(samples) + 1}-seed{seeds[0]}", file=stream_file, flush=True)
            progress = stream_file is not sys.stdout
            continued = generate_batch(model, [prompt] * len(seeds), settings, seeds, streamer, progress)
            for ids, seed in zip(continued, seeds):
                index = len(samples) + 1
                files = render_outputs(
                    ids,
                    len(prompt),
                    output_stem(settings.output_dir, prefix, index, seed),
                    picture=settings.picture,
                    audio=settings.audio,
                    soundfont=settings.soundfont or None,
                )
                samples.append(Sample(ids, len(prompt), seed, files))
                print("  ".join(str(path) for path in files.values() if path is not None))
    finally:
        if stream_file not in (None, sys.stdout):
            stream_file.close()
    return samples


def run_generate(settings: GenerateSettings) -> list[Sample]:
    """``hf-music-xl generate``: load the model and the prompt, then ``generate_samples``."""
    model, tokenizer = load_model_and_tokenizer(settings.model)
    for_generation(model, settings.linears)
    check_task(model.config, "continue")
    if settings.meter and settings.prompt:
        raise ValueError("--meter chooses the time signature of a piece started from nothing; a prompt brings its own")
    if settings.meter and not model.config.meters:
        raise ValueError("--meter: this model's vocabulary has no time signatures (it was saved before them)")
    if settings.prompt:
        prompt = midi_prompt(tokenizer, settings.prompt, settings.prompt_bars)
        prefix = settings.prefix or Path(settings.prompt).stem
    else:
        prompt, prefix = empty_prompt(settings.meter or None), settings.prefix or "sample"
    return generate_samples(model, prompt, settings, prefix)
