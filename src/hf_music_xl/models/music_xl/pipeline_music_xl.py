"""A `transformers` pipeline for MusicXL models: a MIDI prompt in, continued pieces out.

    from transformers import pipeline

    pipe = pipeline(model="you/chorale-xl", trust_remote_code=True)    # or a local model directory
    [sample] = pipe("song.mid", bars=8, prompt_bars=4, preset="conservative", seed=0)
    open("continued.mid", "wb").write(sample["midi"])
    pipe(None, bars=4, num_samples=3)                                   # from nothing: three pieces
    pipe(["a.mid", b_bytes, a_score], bars=4)                           # a batch: one list of samples per prompt

Every model that hf_music_xl saves carries this file and names it in config.json (``custom_pipelines``), so the
call above works where hf_music_xl is not installed. The file therefore imports only torch, transformers, numpy,
symusic and its sibling files, and only defines things when imported.

It is also where sampling lives for the whole package (``hf_music_xl.generate`` and the web app call
``sample_chunks``): prompts cut at a bar line, sampling presets, and a continuation sampled in chunks that each
resume the memory cache, with the grammar processor always on.
"""

import logging
from dataclasses import dataclass, replace

import numpy as np
import symusic
import torch
from transformers import LogitsProcessorList, Pipeline, StoppingCriteriaList, set_seed

from .encoding import (
    BOS_ID,
    EOS_ID,
    NOTE_OFFSET,
    NUM_PITCHES,
    PAD_ID,
    SEP_ID,
    STEPS_PER_BEAT,
    decode_ids,
    encode_midi,
    ids_to_notes,
    is_meter,
    meter_token,
    token_bars,
)
from .generation_music_xl import MaxBarsCriteria, MusicGrammarProcessor

TASK = "music-generation"
DEFAULT_BARS = 8  # the length when neither bars nor max_new_tokens is given

# ----------------------------------------------------------------------------------------------------------
# Sampling settings


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


def prompt_ids(ids, bars: int) -> np.ndarray:
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


# ----------------------------------------------------------------------------------------------------------
# Sampling in chunks

# Bars asked for, tokens allowed: chorales average about 30 tokens a bar, busy four-voice 16th-note writing
# about 70; the bound only stops a model that never moves time forward.
TOKENS_PER_BAR_BOUND = 160


def sample_chunks(
    model,
    prompt,
    bars: int | None = None,
    max_new_tokens: int | None = None,
    sampling: SamplingSettings | None = None,
    seed: int = 0,
    chunk_tokens: int | None = None,
    allow_end: bool = False,
    pitch_range: tuple[int, int] | None = None,
    scale=None,
    streamer=None,
):
    """Sample a continuation of ``prompt`` (ids starting ``xxbos xxpad``) with the grammar processor on, in
    chunks of ``chunk_tokens`` (default ``mem_len``) that each resume the memory cache the previous chunk
    returned, so only new tokens are fed to the model. After each chunk yields ``(sequence, done)``: the prompt
    and what has been sampled so far as a (1, L) tensor, and the bars (when ``bars`` is given) or tokens done.
    A caller may stop iterating at any chunk boundary.

    ``bars``: stop once the continuation spans this many bars (``max_new_tokens`` is then a safety bound,
    default ``TOKENS_PER_BAR_BOUND`` a bar); else ``max_new_tokens`` is the length. ``seed`` seeds python, numpy
    and torch first. ``allow_end`` lets the model end the piece with ``xxeos``; ``pitch_range`` (lowest,
    highest) and ``scale`` ("D minor") restrict new notes; ``streamer`` receives tokens as they come."""
    if bars is None and max_new_tokens is None:
        raise ValueError("give the length as bars or as max_new_tokens")
    if bars is not None and bars < 1 or max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError("the length must be at least 1 bar or 1 token")
    config = model.config
    sampling = sampling or SamplingSettings()
    budget = max_new_tokens if max_new_tokens is not None else TOKENS_PER_BAR_BOUND * bars
    chunk_tokens = chunk_tokens or max(config.mem_len, 16)
    prompt = torch.as_tensor(np.asarray(prompt, dtype=np.int64), device=model.device)[None]  # (1, P)
    grammar = MusicGrammarProcessor(
        config,
        sampling.note_temperature,
        sampling.duration_temperature,
        pitch_range=pitch_range,
        scale=scale,
        allow_end=allow_end,
    )
    stop_at_bars = MaxBarsCriteria(bars, config, prompt_length=prompt.shape[1]) if bars else None
    model.eval()
    set_seed(seed)

    sequence, cache, new_tokens = prompt, None, 0
    while new_tokens < budget:
        with torch.no_grad():
            out = model.generate(
                sequence,
                past_key_values=cache,
                max_new_tokens=min(chunk_tokens, budget - new_tokens),
                do_sample=True,
                temperature=1.0,  # temperatures are the grammar processor's
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                logits_processor=LogitsProcessorList([grammar]),
                stopping_criteria=StoppingCriteriaList([stop_at_bars] if stop_at_bars else []),
                eos_token_id=config.eos_token_id,
                pad_token_id=config.pad_token_id,
                streamer=streamer,
                return_dict_in_generate=True,
            )
        sequence, cache = out.sequences, out.past_key_values
        new_tokens = sequence.shape[1] - prompt.shape[1]
        yield sequence, bars_done(sequence, prompt.shape[1], config) if bars else new_tokens
        if sequence[0, -1] == config.eos_token_id or (stop_at_bars and stop_at_bars(sequence, None).all()):
            return


def bars_done(sequence: torch.Tensor, prompt_length: int, config) -> int:
    """Whole bars the first sequence has advanced past the end of the prompt (as MaxBarsCriteria counts them)."""
    return max(0, int(MaxBarsCriteria(0, config, prompt_length).bars_done(sequence[:1])[0]))


def fell_short(ids, done: int, bars: int | None, config) -> bool:
    """True when sampling for ``bars`` bars hit its token bound first (rather than the bars or the end)."""
    return bool(bars) and done < bars and int(ids[-1]) != config.eos_token_id


# ----------------------------------------------------------------------------------------------------------
# The pipeline


class MusicXLPipeline(Pipeline):
    """Continue a piece of music, or start one from nothing.

    Input: a MIDI file path, MIDI bytes, a ``symusic.Score``, or ``None`` (start from ``xxbos xxpad``); a list
    of these is a batch. Its first ``prompt_bars`` bars are the prompt. Output: a list of ``num_samples``
    samples (a list of such lists for a batch), each a dict:

    - ``midi``: the whole piece (prompt, then continuation) as a MIDI file (bytes);
    - ``notes``: its notes, dicts of ``pitch`` (MIDI number), ``onset`` and ``duration`` (in grid steps,
      ``steps_per_beat`` per quarter note) and ``prompt`` (True for the prompt's notes);
    - ``ids``: its token ids; ``prompt_length``: how many of them are the prompt;
    - ``bars``: whole bars the continuation spans (fewer than asked if it ended early); ``seed``: its seed.

    Call parameters (all optional):
        bars (`int`, 8): bars to generate. max_new_tokens (`int`): tokens to generate instead of bars (with
            ``bars`` too: a bound on the tokens). prompt_bars (`int`, 4): bars of the input kept as prompt.
        meter (`str`, e.g. "3/4"): the time signature of a piece started from nothing (a prompt brings its own);
            without it the model chooses.
        preset (`str`, "default"): "default", "conservative" or "adventurous"; note_temperature,
            duration_temperature, top_k, top_p override it.
        seed (`int`, 0): sample ``i`` uses ``seed + i``, as ``hf-music-xl generate`` does, so any sample can
            be made again alone. num_samples (`int`, 1): samples per prompt.
        scale (`str`, e.g. "D minor") and pitch_range (`(low, high)`): restrict the new notes.
        allow_end (`bool`, False): let the model end a piece early. chunk_tokens (`int`): tokens per
            generate() call (default mem_len).
        progress_callback: called after each chunk with (done, total) counted over all samples of a prompt,
            in bars (or tokens when ``bars`` is not given); an exception raised in it stops generation.

    Prompts of a batch are generated one after another (whatever ``batch_size``), so that sample ``i`` of a prompt
    is the same whether it was asked for alone or in a batch (its own seed ``seed + i`` draws every token). The
    grammar processor is always on, so every sample decodes to valid notes.
    """

    _load_tokenizer = None  # optional: the tokenizer's MIDI methods when the repo has one, else the same encoding
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False

    def __call__(self, inputs=None, **kwargs):
        """``pipe()`` or ``pipe(None)`` starts from nothing; see the class docstring."""
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(
        self,
        prompt_bars=None,
        bars=None,
        max_new_tokens=None,
        preset=None,
        note_temperature=None,
        duration_temperature=None,
        top_k=None,
        top_p=None,
        seed=None,
        num_samples=None,
        scale=None,
        pitch_range=None,
        allow_end=None,
        chunk_tokens=None,
        progress_callback=None,
        meter=None,
    ):
        preprocess = {
            key: value for key, value in dict(prompt_bars=prompt_bars, meter=meter).items() if value is not None
        }
        forward = {
            key: value
            for key, value in dict(
                bars=bars,
                max_new_tokens=max_new_tokens,
                preset=preset,
                note_temperature=note_temperature,
                duration_temperature=duration_temperature,
                top_k=top_k,
                top_p=top_p,
                seed=seed,
                num_samples=num_samples,
                scale=scale,
                pitch_range=pitch_range,
                allow_end=allow_end,
                chunk_tokens=chunk_tokens,
                progress_callback=progress_callback,
            ).items()
            if value is not None
        }
        return preprocess, forward, {}

    @property
    def steps_per_beat(self) -> int:
        return getattr(self.tokenizer, "steps_per_beat", STEPS_PER_BEAT)

    def preprocess(self, inputs, prompt_bars: int = 4, meter: str | None = None):
        if meter and inputs is not None:
            raise ValueError(
                "meter chooses the time signature of a piece started from nothing; a prompt brings its own"
            )
        if meter and not self.model.config.meters:
            raise ValueError("this model's vocabulary has no time signatures (it was saved before them)")
        if inputs is None:
            prompt = empty_prompt(meter)
        elif isinstance(inputs, (str, bytes, bytearray, symusic.Score)) or hasattr(inputs, "__fspath__"):
            # with time signatures only for a vocabulary that has them; MidiReadError (a ValueError) names the problem
            ids = encode_midi(inputs, steps_per_beat=self.steps_per_beat, meter=bool(self.model.config.meters))
            prompt = prompt_ids(ids, prompt_bars)
        else:
            raise ValueError(
                f"a prompt is a MIDI file path, MIDI bytes, a symusic.Score or None, not {type(inputs).__name__}"
            )
        return {"prompt": torch.as_tensor(prompt)}

    def _forward(
        self,
        model_inputs,
        bars: int | None = None,
        max_new_tokens: int | None = None,
        preset: str = "default",
        note_temperature=None,
        duration_temperature=None,
        top_k=None,
        top_p=None,
        seed: int = 0,
        num_samples: int = 1,
        scale=None,
        pitch_range=None,
        allow_end: bool = False,
        chunk_tokens=None,
        progress_callback=None,
    ):
        if bars is None and max_new_tokens is None:
            bars = DEFAULT_BARS
        if num_samples < 1:
            raise ValueError("num_samples must be at least 1")
        sampling = sampling_settings(
            preset,
            note_temperature=note_temperature,
            duration_temperature=duration_temperature,
            top_k=top_k,
            top_p=top_p,
        )
        prompt = model_inputs["prompt"].cpu().numpy()
        per_sample = bars if bars else max_new_tokens
        samples = []
        for index in range(num_samples):
            for sequence, done in sample_chunks(  # noqa: B007 - the last chunk's sequence is the result
                self.model,
                prompt,
                bars=bars,
                max_new_tokens=max_new_tokens,
                sampling=sampling,
                seed=seed + index,
                chunk_tokens=chunk_tokens,
                allow_end=allow_end,
                pitch_range=pitch_range,
                scale=scale,
            ):
                if progress_callback is not None:
                    progress_callback(index * per_sample + min(done, per_sample), num_samples * per_sample)
            ids = sequence[0].cpu().numpy()
            if fell_short(ids, done, bars, self.model.config):
                logging.getLogger(__name__).warning(
                    "sample %d stopped at its token bound after %d of %d bars", index, done, bars
                )
            samples.append((ids, seed + index, bars_done(sequence, len(prompt), self.model.config)))
        return {"samples": samples, "prompt_length": len(prompt)}

    def postprocess(self, model_outputs):
        prompt_length = model_outputs["prompt_length"]
        return [self.describe_sample(ids, prompt_length, seed, bars) for ids, seed, bars in model_outputs["samples"]]

    def describe_sample(self, ids: np.ndarray, prompt_length: int, seed: int, bars: int) -> dict:
        notes = ids_to_notes(ids)
        prompt_notes = len(ids_to_notes(ids[:prompt_length]))  # notes come in token order: the prompt's first
        score = decode_ids(ids, steps_per_beat=self.steps_per_beat)
        return {
            "midi": score.dumps_midi(),
            "notes": [
                {"pitch": int(pitch), "onset": int(onset), "duration": int(duration), "prompt": index < prompt_notes}
                for index, (onset, pitch, duration) in enumerate(zip(notes.onset, notes.pitch, notes.duration))
            ],
            "ids": ids.tolist(),
            "prompt_length": prompt_length,
            "bars": bars,
            "seed": seed,
        }

    def get_iterator(self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params):
        # one prompt at a time, whatever batch_size (see the class docstring)
        return super().get_iterator(inputs, num_workers, 1, preprocess_params, forward_params, postprocess_params)


__all__ = [
    "MusicXLPipeline",
    "SAMPLING_PRESETS",
    "SamplingSettings",
    "TASK",
    "empty_prompt",
    "prompt_ids",
    "sample_chunks",
    "sampling_settings",
]
