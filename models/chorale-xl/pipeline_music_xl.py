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

Its call parameters are the fields of ``SamplingRequest`` (sampling_music_xl.py, where sampling lives for the whole
package: the CLI and the web app use the same request and the same ``sample_rows``). The samples of one prompt are
drawn in one batch, each row from its own seed, so a sample is the same asked for alone or with others.
"""

import logging
from dataclasses import fields

import numpy as np
import symusic
import torch
from transformers import Pipeline

from .encoding import STEPS_PER_BEAT, decode_ids, encode_midi, ids_to_notes
from .sampling_music_xl import SamplingRequest, bars_done, empty_prompt, fell_short, prompt_ids, sample_rows

TASK = "music-generation"


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

    Call parameters (all optional) are the fields of ``SamplingRequest``, checked there:
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

    def _sanitize_parameters(self, progress_callback=None, **parameters):
        names = [item.name for item in fields(SamplingRequest)]
        unknown = sorted(set(parameters) - set(names))
        if unknown:
            raise ValueError(f"unknown parameters {', '.join(unknown)}; the pipeline takes {', '.join(names)}")
        if "max_new_tokens" in parameters and "bars" not in parameters:
            parameters["bars"] = 0  # the length in tokens
        request = SamplingRequest.from_fields({key: value for key, value in parameters.items() if value is not None})
        return {"request": request}, {"request": request, "progress_callback": progress_callback}, {}

    @property
    def steps_per_beat(self) -> int:
        return getattr(self.tokenizer, "steps_per_beat", STEPS_PER_BEAT)

    def preprocess(self, inputs, request: SamplingRequest | None = None):
        request = request or SamplingRequest()
        meter = request.meter
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
            prompt = prompt_ids(ids, request.prompt_bars)
        else:
            raise ValueError(
                f"a prompt is a MIDI file path, MIDI bytes, a symusic.Score or None, not {type(inputs).__name__}"
            )
        return {"prompt": torch.as_tensor(prompt)}

    def _forward(self, model_inputs, request: SamplingRequest | None = None, progress_callback=None):
        request = request or SamplingRequest()
        prompt = model_inputs["prompt"].cpu().numpy()
        per_sample = request.bars or request.max_new_tokens
        # every sample of the prompt in one batch; each row draws from its own seed, as it would alone
        for rows, done in sample_rows(self.model, prompt, request, request.seeds):  # noqa: B007 - the last is kept
            if progress_callback is not None:
                progress_callback(sum(min(d, per_sample) for d in done), request.num_samples * per_sample)
        samples = []
        for index, (row, seed) in enumerate(zip(rows, request.seeds)):
            ids = row.cpu().numpy()
            if fell_short(ids, done[index], request.bars, self.model.config):
                logging.getLogger(__name__).warning(
                    "sample %d stopped at its token bound after %d of %d bars", index, done[index], request.bars
                )
            samples.append((ids, seed, bars_done(row[None], len(prompt), self.model.config)))
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


__all__ = ["MusicXLPipeline", "TASK"]
