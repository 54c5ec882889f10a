"""Sampling rows in one batch: one continuation per (prompt, seed), each row what its prompt and seed give alone,
in chunks that each resume the memory cache, with the grammar processor always on.

Read top to bottom: the per-row sampler and token budget, the rows and how they are put in batches, then
``sample_rows`` (what the pipeline, the CLI and the app call) and ``sample_batch`` (one batch's loop).

This file is copied next to saved weights (the pipeline imports it), so it may import only torch, transformers,
numpy and its sibling files, and does nothing at import time beyond defining things.
"""

from dataclasses import dataclass

import numpy as np
import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from .configuration_music_xl import MusicXLConfig
from .generation_music_xl import GivenNotesProcessor, MaxBarsCriteria, MusicGrammarProcessor
from .sampling_music_xl import SamplingRequest
from .tasks_music_xl import TaskPrompt

# Bars asked for, tokens allowed: chorales average about 30 tokens a bar, busy four-voice 16th-note writing
# about 70; the bound only stops a model that never moves time forward.
TOKENS_PER_BAR_BOUND = 160


# Rows of different prompts start together (see `sample_rows`): a longer prompt's last tokens are fed one a step,
# which costs a step of the whole batch each; prompts whose lengths differ by more than this are sampled in
# separate batches (about four bars of a chorale: a batch of such prompts still pays, see BENCHMARKS.md).
MAX_FED_TOKENS = 128


class RowSampler(LogitsProcessor):
    """Draws each row's next token from its own generator, seeded with that sample's seed, after top-k and top-p,
    and leaves only the drawn token possible (so generate()'s greedy pick takes it): sample ``i`` of a batch is
    the sample its seed gives alone, and rows can leave the batch as they finish. A row whose prompt (``prompts``,
    1-D tensors) is longer than the sequence so far is given its prompt's next token instead, drawing nothing."""

    def __init__(self, seeds: list[int], top_k: int, top_p: float, device, prompts: list[torch.Tensor]):
        self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
        self.prompts = list(prompts)
        self.filters = ([TopKLogitsWarper(top_k)] if top_k else []) + ([TopPLogitsWarper(top_p)] if top_p < 1 else [])

    def keep(self, rows: list[int]) -> None:
        self.generators = [self.generators[row] for row in rows]
        self.prompts = [self.prompts[row] for row in rows]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for keep_likely in self.filters:
            scores = keep_likely(input_ids, scores)
        probs = torch.softmax(scores.float(), dim=-1)  # (B, V)
        length = input_ids.shape[1]
        drawn = torch.stack(
            [
                prompt[length : length + 1] if length < len(prompt) else torch.multinomial(row, 1, generator=g)
                for row, g, prompt in zip(probs, self.generators, self.prompts)
            ]
        )  # (B, 1)
        return torch.full_like(scores, -float("inf")).scatter_(1, drawn, 0.0)  # (B, V): only the drawn ids


class TokenBudget(StoppingCriteria):
    """Stops each row once it has ``budgets[row]`` tokens after its prompt (``prompt_lengths[row]`` tokens)."""

    def __init__(self, prompt_lengths: list[int], budgets: list[int]):
        self.prompt_lengths, self.budgets = list(prompt_lengths), list(budgets)

    def keep(self, rows: list[int]) -> None:
        self.prompt_lengths = [self.prompt_lengths[row] for row in rows]
        self.budgets = [self.budgets[row] for row in rows]

    def __call__(self, input_ids, scores, **kwargs):
        ends = [length + budget for length, budget in zip(self.prompt_lengths, self.budgets)]
        return input_ids.shape[1] >= torch.tensor(ends, device=input_ids.device)  # (B,) bool


@dataclass
class Row:
    """One sample to draw: its prompt (ids), its seed, the bars it is to have (None: ``budget`` tokens) and, for
    a task, the given tokens and their walls."""

    prompt: torch.Tensor  # (P,)
    seed: int
    bars: int | None
    budget: int
    task: TaskPrompt | None


def sampling_rows(model, prompts: list, request: SamplingRequest, seeds: list[int]) -> list[Row]:
    """A ``Row`` per (prompt, seed): a task's prompt (``TaskPrompt``) brings its own bars and given tokens."""
    rows = []
    for prompt, seed in zip(prompts, seeds, strict=True):
        task = prompt if isinstance(prompt, TaskPrompt) else None
        ids, bars = (task.ids, task.bars) if task is not None else (prompt, request.bars or None)
        budget = request.max_new_tokens or TOKENS_PER_BAR_BOUND * bars
        if task is not None:  # the given tokens are written on top of the model's own
            budget += sum(len(block) for block in task.blocks)
        ids = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=model.device)
        rows.append(Row(ids, seed, bars, budget, task))
    return rows


def batches(rows: list[Row]) -> list[list[int]]:
    """Indices of ``rows`` in batches whose prompts differ in length by at most ``MAX_FED_TOKENS`` (shortest first)."""
    groups = []
    for index in sorted(range(len(rows)), key=lambda k: len(rows[k].prompt)):
        if not groups or len(rows[index].prompt) - len(rows[groups[-1][0]].prompt) > MAX_FED_TOKENS:
            groups.append([])
        groups[-1].append(index)
    return groups


def sample_rows(model, prompts: list, request: SamplingRequest, seeds: list[int], streamer=None):
    """Sample one continuation of ``prompts[i]`` from ``seeds[i]`` for every i, in one batch, as ``request`` asks,
    with the grammar processor on. A prompt is ids starting ``xxbos xxpad``, or a task's prompt (``TaskPrompt``,
    whose given tokens are written at their walls and whose bars replace the request's); the same prompt may come
    several times (the samples of one prompt).

    Row i is what ``prompts[i]`` and ``seeds[i]`` give alone: every row starts at the batch's first column (no
    padding: exact too, but a padded batch attends to a segment more of memory), the shortest prompt is read in one
    forward and each longer one's remaining tokens are fed one a step while the rows before it already sample; each row
    draws from its own generator, counts its bars from its own prompt's end and leaves the batch when it has its
    bars or ends, so the others do not carry it. Prompts whose lengths differ by more than ``MAX_FED_TOKENS``
    go in separate batches, one after another.

    Sampling runs in chunks of ``request.chunk_tokens`` (default ``mem_len``) generated tokens, each resuming the
    memory cache the previous chunk returned, so only new tokens are fed to the model. After each chunk yields
    ``(rows, done)``: per row, its prompt and what has been sampled so far (a 1-D tensor), and the bars (rows with
    bars) or tokens done. A caller may stop iterating at any chunk boundary; ``streamer`` (one row only) receives
    tokens as they come."""
    rows = sampling_rows(model, prompts, request, seeds)
    if streamer is not None and len(rows) != 1:
        raise ValueError("a streamer follows one sample: pass one prompt and one seed")
    sequences, done = [row.prompt for row in rows], [0] * len(rows)
    for batch in batches(rows):
        for batch_sequences, batch_done in sample_batch(model, [rows[k] for k in batch], request, streamer):
            for k, sequence, row_done in zip(batch, batch_sequences, batch_done):
                sequences[k], done[k] = sequence, row_done
            yield sequences, done


def sample_batch(model, rows: list[Row], request: SamplingRequest, streamer=None):
    """``sample_rows`` of one batch: yields per row its sequence so far and the bars or tokens done."""
    config, sampling = model.config, request.sampling
    chunk_tokens = request.chunk_tokens or max(config.mem_len, 16)
    lengths = [len(row.prompt) for row in rows]
    grammar = MusicGrammarProcessor(
        config,
        sampling.note_temperature,
        sampling.duration_temperature,
        pitch_range=request.pitch_range,
        scale=request.scale or None,
        allow_end=request.allow_end,
    )
    seeds, prompts = [row.seed for row in rows], [row.prompt for row in rows]
    sampler = RowSampler(seeds, sampling.top_k, sampling.top_p, model.device, prompts)
    tasks = [row.task for row in rows]
    given = None
    if any(task is not None for task in tasks):
        walls = [task.walls if task is not None else [] for task in tasks]
        given = GivenNotesProcessor(config, walls, [task.blocks if task is not None else [] for task in tasks], lengths)
    # every row has bars, or none has (a request's length is bars or tokens; a task's is bars)
    stop_at_bars = MaxBarsCriteria([row.bars for row in rows], config, lengths) if rows[0].bars else None
    budget = TokenBudget(lengths, [row.budget for row in rows])
    stateful = [processor for processor in (sampler, given, stop_at_bars, budget) if processor is not None]
    model.eval()

    sequence, cache = torch.stack([row.prompt[: min(lengths)] for row in rows]), None  # (B, L): rows still sampled
    active = list(range(len(rows)))  # their indices in `rows`
    sequences, done = [row.prompt for row in rows], [0] * len(rows)
    while active:
        to_go = max(lengths[k] + rows[k].budget for k in active) - sequence.shape[1]
        with torch.no_grad():
            out = model.generate(
                sequence,
                # every row starts xxbos: no padding (the mask the model would make); given, so that generate()
                # does not take the xxpad ending an empty prompt for right padding and warn
                attention_mask=torch.ones_like(sequence),
                past_key_values=cache,
                generation_config=GenerationConfig(
                    max_new_tokens=min(chunk_tokens, to_go),
                    do_sample=False,  # the RowSampler has drawn: greedy takes its token
                    top_k=50,  # unused by a greedy pick (the RowSampler filters); generate()'s defaults, so that
                    top_p=1.0,  # it neither fills in the model's sampling values nor warns about them
                    eos_token_id=config.eos_token_id,
                    pad_token_id=config.pad_token_id,  # after a row ends; the grammar never samples it there
                    return_dict_in_generate=True,
                ),
                logits_processor=LogitsProcessorList([grammar] + ([given] if given else []) + [sampler]),
                stopping_criteria=StoppingCriteriaList(([stop_at_bars] if stop_at_bars else []) + [budget]),
                streamer=streamer,
            )
        sequence, cache = out.sequences, out.past_key_values
        finished = []
        for k, index in enumerate(active):
            row, length = rows[index], lengths[index]
            sequences[index] = without_trailing_pads(sequence[k], length, config)
            generated = len(sequences[index]) - length
            if generated <= 0:  # still its prompt
                finished.append(False)
                continue
            done[index] = bars_done(sequences[index][None], length, config) if row.bars else generated
            finished.append(
                len(sequences[index]) < sequence.shape[1]  # padded: generate() saw it end
                or sequences[index][-1] == config.eos_token_id
                or (row.bars is not None and done[index] >= row.bars)
                or generated >= row.budget
            )
        yield sequences, done
        keep = [k for k, ended in enumerate(finished) if not ended]
        if len(keep) < len(active):
            if keep:
                index = torch.tensor(keep, device=sequence.device)
                sequence = sequence[index]
                cache.batch_select_indices(index)
                for processor in stateful:
                    processor.keep(keep)
            active = [active[k] for k in keep]


def without_trailing_pads(row: torch.Tensor, prompt_length: int, config: MusicXLConfig) -> torch.Tensor:
    """``row`` (1-D) up to its last generated token: generate() pads a row that ended while others went on (the
    grammar never samples ``xxpad`` after the prompt, so a pad there is padding)."""
    generated = row[prompt_length:]
    real = torch.nonzero(generated != config.pad_token_id)
    return row[: prompt_length + (int(real[-1]) + 1 if len(real) else 0)]


def sample_chunks(model, prompt: np.ndarray | list[int], request: SamplingRequest, seed: int, streamer=None):
    """``sample_rows`` of one prompt and one seed: yields ``(sequence, done)``, the prompt and what has been sampled
    so far as a (1, L) tensor and the bars or tokens done."""
    for rows, done in sample_rows(model, [prompt], request, [seed], streamer):
        yield rows[0][None], done[0]


def bars_done(sequence: torch.Tensor, prompt_length: int, config: MusicXLConfig) -> int:
    """Whole bars the first sequence has advanced past the end of the prompt (as MaxBarsCriteria counts them)."""
    return max(0, int(MaxBarsCriteria(0, config, prompt_length).bars_done(sequence[:1])[0]))


def fell_short(ids: np.ndarray | list[int], done: int, bars: int | None, config: MusicXLConfig) -> bool:
    """True when sampling for ``bars`` bars hit its token bound first (rather than the bars or the end)."""
    return bool(bars) and done < bars and int(ids[-1]) != config.eos_token_id
