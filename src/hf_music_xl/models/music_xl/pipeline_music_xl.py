"""A `transformers` pipeline for MusicXL models: a MIDI file in, continued, infilled or harmonized pieces out.

    from transformers import pipeline

    pipe = pipeline(model="you/chorale-xl", trust_remote_code=True)    # or a local model directory
    [sample] = pipe("song.mid", bars=8, prompt_bars=4, preset="conservative", seed=0)
    open("continued.mid", "wb").write(sample["midi"])
    pipe(None, bars=4, num_samples=3)                                   # from nothing: three pieces
    pipe(["a.mid", b_bytes, a_score], bars=4)                           # a batch: one list of samples per prompt
    pipe("song.mid", task="infill", bars=(5, 8))                        # bars 5-8 written again, the rest kept
    pipe("melody.mid", task="harmonize")                                # the melody with voices under it

Every model that hf_music_xl saves carries this file and names it in config.json (``custom_pipelines``), so the
call above works where hf_music_xl is not installed. The file therefore imports only torch, transformers, numpy,
symusic and its sibling files, and only defines things when imported.

Its call parameters are the fields of ``SamplingRequest`` (sampling_music_xl.py), and ``sample_rows``
(batch_sampling_music_xl.py) samples: the CLI and the web app use the same request and the same sampling. The
samples of all prompts of a call are drawn in one batch, each row from its own seed, so a sample is the same asked
for alone or with others.
"""

import logging
from dataclasses import fields

import numpy as np
import symusic
import torch
from transformers import Pipeline

from .batch_sampling_music_xl import bars_done, fell_short, sample_rows
from .encoding import STEPS_PER_BEAT, decode_ids, encode_midi, ids_to_notes, load_score, read_notes
from .sampling_music_xl import MAX_PROMPT_BARS, SamplingRequest, empty_prompt, prompt_ids
from .task_midi_music_xl import melody_track, with_generated, with_tracks, without_span
from .tasks_music_xl import check_task, harmonize_prompt, infill_prompt, piece_bars, span_times, written_notes

TASK = "music-generation"


# ----------------------------------------------------------------------------------------------------------
# The pipeline


class MusicXLPipeline(Pipeline):
    """Continue a piece of music (or start one from nothing), fill some of its bars, or harmonize a melody.

    Input: a MIDI file path, MIDI bytes, a ``symusic.Score``, or ``None`` (continue from ``xxbos xxpad``); a list
    of these is a batch. ``task`` says what is done with it:

    - "continue" (default): its first ``prompt_bars`` bars are the prompt, ``bars`` bars follow;
    - "infill": ``bars=(first, last)`` (counted from 1, inclusive) are written again with the music on both sides
      in view; the piece comes back whole, every note outside those bars as it was (a note is inside when its
      onset, on the grid, falls in them; drum tracks stay whole);
    - "harmonize": the melody (a one-track file's track, else ``melody_track``, a track's name or index from 0,
      else the highest track by mean pitch) comes back as it was, with the other voices written under it.

    The model must have been trained for the task (``hf-music-xl train --tasks``, saved in its config); otherwise
    the call raises ValueError with one line naming the tasks it was trained with.

    Output: a list of ``num_samples`` samples (a list of such lists for a batch), each a dict:

    - ``midi``: the whole piece as a MIDI file (bytes). A continuation is the prompt, then the new bars, as the
      model's notes; an infilling or a harmonization is the input file's own notes (the notes outside the bars, or
      the melody track: same ticks, velocities and tracks, same tempos and time signatures) with the new notes in
      one added track, "Generated (bars 5-8)" or "Harmonization", at the input's ticks per quarter;
    - ``notes``: its notes, dicts of ``pitch`` (MIDI number), ``onset`` and ``duration`` (in grid steps,
      ``steps_per_beat`` per quarter note) and ``prompt`` (True for a note that was given: the prompt's, the kept
      ones of an infilling, the melody's; False for those the model wrote);
    - ``ids``: its token ids (for a task, its layout: see tasks_music_xl.py); ``prompt_length``: how many of them
      are the prompt;
    - ``bars``: whole bars written (fewer than asked if it ended early); ``seed``: its seed; ``task``: its task;
      an infilling's ``infill_bars``: (first, last) as asked.

    Call parameters (all optional) are the fields of ``SamplingRequest``, checked there:
        task (`str`, "continue"): "continue", "infill" or "harmonize".
        bars (`int`, 8): bars to generate; for "infill", `(first, last)`: the bars to fill.
        max_new_tokens (`int`): tokens to generate instead of bars (with ``bars`` too: a bound on the tokens).
        prompt_bars (`int`, 4): bars of the input kept as prompt (continue).
        melody_track (`str` or `int`): the melody to harmonize, a track's name or its index from 0.
        meter (`str`, e.g. "3/4"): the time signature of a piece started from nothing (a prompt brings its own);
            without it the model chooses.
        preset (`str`, "default"): "default", "conservative" or "adventurous"; note_temperature,
            duration_temperature, top_k, top_p override it.
        seed (`int`, 0): sample ``i`` uses ``seed + i``, as ``hf-music-xl generate`` does, so any sample can
            be made again alone. num_samples (`int`, 1): samples per prompt.
        scale (`str`, e.g. "D minor") and pitch_range (`(low, high)`): restrict the new notes.
        allow_end (`bool`, False): let the model end a continuation early. chunk_tokens (`int`): tokens per
            generate() call (default mem_len).
        progress_callback: called after each chunk with (done, total) counted over all samples of all prompts,
            in bars (or tokens when ``bars`` is not given); an exception raised in it stops generation.

    A list of prompts is sampled in one batch (``sample_rows``: all ``num_samples`` rows of every prompt at once,
    whatever ``batch_size``), and sample ``i`` of a prompt is the same whether it was asked for alone or in a batch:
    its own seed ``seed + i`` draws every token, and its row sees what it would see alone. The grammar processor is
    always on, so every sample decodes to valid notes.
    """

    _load_tokenizer = None  # optional: the tokenizer's MIDI methods when the repo has one, else the same encoding
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False

    def __call__(self, inputs=None, **kwargs):
        """``pipe()`` or ``pipe(None)`` starts from nothing; a list is one batch; see the class docstring."""
        if isinstance(inputs, list):
            return self.run_batch(inputs, **kwargs)
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(self, progress_callback=None, **parameters):
        names = [item.name for item in fields(SamplingRequest)]
        unknown = sorted(set(parameters) - set(names))
        if unknown:
            raise ValueError(f"unknown parameters {', '.join(unknown)}; the pipeline takes {', '.join(names)}")
        if isinstance(parameters.get("bars"), (tuple, list)):  # bars=(5, 8): the bars to fill
            if parameters.get("task") != "infill":
                raise ValueError("bars=(first, last) are bars to fill: pass task='infill' too")
            if parameters.get("infill_bars") is not None:
                raise ValueError("give the bars to fill once, as bars=(first, last)")
            parameters["infill_bars"] = parameters.pop("bars")
        if "max_new_tokens" in parameters and "bars" not in parameters:
            parameters["bars"] = 0  # the length in tokens
        request = SamplingRequest.from_fields({key: value for key, value in parameters.items() if value is not None})
        forward = {"request": request, "progress_callback": progress_callback}
        return {"request": request}, forward, {"request": request}

    @property
    def steps_per_beat(self) -> int:
        return getattr(self.tokenizer, "steps_per_beat", STEPS_PER_BEAT)

    def preprocess(self, inputs, request: SamplingRequest | None = None):
        request = request or SamplingRequest()
        check_task(self.model.config, request.task)  # before reading anything: the model may not do it at all
        if inputs is not None and not is_midi_source(inputs):
            raise ValueError(
                f"a prompt is a MIDI file path, MIDI bytes, a symusic.Score or None, not {type(inputs).__name__}"
            )
        if request.task != "continue":
            return self.task_inputs(inputs, request)
        meter = request.meter
        if meter and inputs is not None:
            raise ValueError(
                "meter chooses the time signature of a piece started from nothing; a prompt brings its own"
            )
        if meter and not self.model.config.meters:
            raise ValueError("this model's vocabulary has no time signatures (it was saved before them)")
        if inputs is None:
            prompt = empty_prompt(meter)
        else:
            # with time signatures only for a vocabulary that has them; MidiReadError (a ValueError) names the problem
            ids = encode_midi(inputs, steps_per_beat=self.steps_per_beat, meter=bool(self.model.config.meters))
            prompt = prompt_ids(ids, request.prompt_bars)
        return {"prompt": torch.as_tensor(prompt)}

    def task_inputs(self, inputs, request: SamplingRequest) -> dict:
        """An infilling's or a harmonization's ``TaskPrompt``, the notes given (on the grid), the score the
        generated notes join (the input's notes kept) and the name of their track."""
        if inputs is None:
            raise ValueError(f"{request.task} needs a piece: a MIDI file path, MIDI bytes or a symusic.Score")
        score = load_score(inputs)  # MidiReadError (a ValueError) names the problem
        notes = read_notes(score, self.steps_per_beat)
        if piece_bars(notes) > MAX_PROMPT_BARS:  # the whole piece is the prompt: bound its cost
            raise ValueError(f"the piece has {piece_bars(notes)} bars; a task takes at most {MAX_PROMPT_BARS}")
        if request.task == "infill":
            first, last = request.infill_bars
            start, end = span_times(notes, first - 1, last - 1)  # a span outside the piece: ValueError
            kept = without_span(score, start, end, self.steps_per_beat)
            given = notes.select((notes.onset < start) | (notes.onset >= end))
            task_prompt, name = infill_prompt(notes, first - 1, last - 1), f"Generated (bars {first}-{last})"
        else:
            kept = with_tracks(score, [melody_track(score, request.melody_track, notes)])
            given = read_notes(kept, self.steps_per_beat)  # the track alone: no note lost to another track's
            task_prompt, name = harmonize_prompt(given), "Harmonization"
        return {"task_prompt": task_prompt, "given": given, "score": kept, "track_name": name}

    def _forward(self, model_inputs, request: SamplingRequest | None = None, progress_callback=None):
        [outputs] = self.sample_prompts([model_inputs], request or SamplingRequest(), progress_callback)
        return outputs

    def sample_prompts(self, prompts: list[dict], request: SamplingRequest, progress_callback=None) -> list[dict]:
        """The samples of every prompt (``preprocess``'s outputs) in one batch: ``num_samples`` rows per prompt,
        row i of a prompt from seed ``seed + i``, each what its prompt and seed give alone (``sample_rows``)."""
        row_prompts, asked_bars, prompt_lengths = [], [], []
        for model_inputs in prompts:
            task_prompt = model_inputs.get("task_prompt")
            if task_prompt is not None:
                prompt, bars = task_prompt, task_prompt.bars
                prompt_lengths.append(len(task_prompt.ids))
            else:
                prompt, bars = model_inputs["prompt"].cpu().numpy(), request.bars
                prompt_lengths.append(len(prompt))
            row_prompts += [prompt] * request.num_samples
            asked_bars += [bars] * request.num_samples
        seeds = request.seeds * len(prompts)
        per_row = [bars or request.max_new_tokens for bars in asked_bars]
        for rows, done in sample_rows(self.model, row_prompts, request, seeds):  # noqa: B007 - the last is kept
            if progress_callback is not None:
                progress_callback(sum(min(d, total) for d, total in zip(done, per_row)), sum(per_row))
        outputs = []
        for number, model_inputs in enumerate(prompts):
            samples = []
            for index in range(request.num_samples):
                row = number * request.num_samples + index
                ids = rows[row].cpu().numpy()
                if fell_short(ids, done[row], asked_bars[row], self.model.config):
                    logging.getLogger(__name__).warning(
                        "sample %d stopped at its token bound after %d of %d bars", index, done[row], asked_bars[row]
                    )
                bars = bars_done(rows[row][None], prompt_lengths[number], self.model.config)
                samples.append((ids, seeds[row], bars))
            given = {key: value for key, value in model_inputs.items() if key != "prompt"}  # a task's inputs
            outputs.append({"samples": samples, "prompt_length": prompt_lengths[number], **given})
        return outputs

    def postprocess(self, model_outputs, request: SamplingRequest | None = None):
        request = request or SamplingRequest()
        prompt_length = model_outputs["prompt_length"]
        samples = []
        for ids, seed, bars in model_outputs["samples"]:
            if request.task == "continue":
                sample = self.describe_sample(ids, prompt_length, seed, bars)
            else:
                sample = self.describe_task_sample(ids, prompt_length, seed, bars, model_outputs)
            samples.append({**sample, "task": request.task})
            if request.task == "infill":
                samples[-1]["infill_bars"] = request.infill_bars
        return samples

    def describe_sample(self, ids: np.ndarray, prompt_length: int, seed: int, bars: int) -> dict:
        notes = ids_to_notes(ids)
        prompt_notes = len(ids_to_notes(ids[:prompt_length]))  # notes come in token order: the prompt's first
        score = decode_ids(ids, steps_per_beat=self.steps_per_beat)
        return {
            "midi": score.dumps_midi(),
            "notes": note_rows(notes.onset, notes.pitch, notes.duration, np.arange(len(notes)) < prompt_notes),
            "ids": ids.tolist(),
            "prompt_length": prompt_length,
            "bars": bars,
            "seed": seed,
        }

    def describe_task_sample(self, ids: np.ndarray, prompt_length: int, seed: int, bars: int, inputs: dict) -> dict:
        """A task's sample: the input's kept score with the notes the model wrote added as a track."""
        given, written = inputs["given"], written_notes(ids, prompt_length)
        score = with_generated(inputs["score"], written, inputs["track_name"], self.steps_per_beat)
        onset, pitch = np.r_[given.onset, written.onset], np.r_[given.pitch, written.pitch]
        order = np.lexsort((-pitch, onset))  # by onset, the highest first, as the encoding orders notes
        duration, is_given = np.r_[given.duration, written.duration], np.arange(len(onset)) < len(given)
        return {
            "midi": score.dumps_midi(),
            "notes": note_rows(onset[order], pitch[order], duration[order], is_given[order]),
            "ids": ids.tolist(),
            "prompt_length": prompt_length,
            "bars": bars,
            "seed": seed,
        }

    def run_batch(self, inputs: list, **kwargs) -> list[list[dict]]:
        """``pipe([a, b, ...])``: every prompt read, then the samples of all of them in one batch, then described.
        ``batch_size`` and ``num_workers`` change nothing (the whole list is one batch)."""
        kwargs.pop("batch_size", None), kwargs.pop("num_workers", None)
        preprocess, forward, postprocess = self._sanitize_parameters(**kwargs)
        preprocess = {**self._preprocess_params, **preprocess}
        forward = {**self._forward_params, **forward}
        postprocess = {**self._postprocess_params, **postprocess}
        prompts = [self.preprocess(item, **preprocess) for item in inputs]
        if not prompts:
            return []
        request = forward.get("request") or SamplingRequest()
        with self.device_placement(), torch.no_grad():
            outputs = self.sample_prompts(prompts, request, forward.get("progress_callback"))
        return [self.postprocess(output, **postprocess) for output in outputs]

    def get_iterator(self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params):
        # a dataset or a generator: one prompt at a time, whatever batch_size (a list is one batch: run_batch)
        return super().get_iterator(inputs, num_workers, 1, preprocess_params, forward_params, postprocess_params)


def is_midi_source(inputs) -> bool:
    """A MIDI file path, MIDI bytes or a ``symusic.Score``."""
    return isinstance(inputs, (str, bytes, bytearray, symusic.Score)) or hasattr(inputs, "__fspath__")


def note_rows(onset, pitch, duration, given) -> list[dict]:
    """A sample's ``notes``: one dict per note, ``prompt`` True for a given one."""
    return [
        {"pitch": int(p), "onset": int(o), "duration": int(d), "prompt": bool(g)}
        for o, p, d, g in zip(onset, pitch, duration, given)
    ]


__all__ = ["MusicXLPipeline", "TASK"]
