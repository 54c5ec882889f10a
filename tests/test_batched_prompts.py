"""Several prompts in one batch (``sample_rows``, the pipeline's list): each row is what its prompt and seed give
alone, token for token, with prompts of different lengths and meters, rows that end at different lengths, and
pieces that run far past the memory (so a row's segments must fall where they fall alone)."""

import numpy as np
import pytest
import torch
from helpers import BOS, PAD, SEP, dur, note, recorded_batches
from transformers import AutoModelForCausalLM

from hf_music_xl import MusicXLConfig
from hf_music_xl.generate import generate_batch, load_pipeline
from hf_music_xl.models.music_xl import batch_sampling_music_xl, encoding
from hf_music_xl.models.music_xl.batch_sampling_music_xl import Row, sample_rows
from hf_music_xl.models.music_xl.generation_music_xl import MaxBarsCriteria
from hf_music_xl.models.music_xl.sampling_music_xl import SamplingRequest, empty_prompt, prompt_ids


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    """mem_len = segment_len = 16: a token sees everything before it only in the first 32; every row here runs far
    past that."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert model.config.mem_len == model.config.segment_len == 16
    return model


@pytest.fixture(scope="module")
def prompts(chorale_midi_files):
    """Prompts of different lengths and meters: 4/4 chorale openings of 1 and 2 bars, a 3/4 chorale's first bar,
    and pieces started from nothing in 3/4, 6/8 and the model's choice."""
    four_four, three_four = (encoding.encode_midi(chorale_midi_files[index]) for index in (0, 6))
    return [
        prompt_ids(four_four, 2),
        empty_prompt("3/4"),
        prompt_ids(three_four, 1),
        empty_prompt("6/8"),
        prompt_ids(four_four, 1),
        empty_prompt(),
    ]


def last(chunks):
    for rows, done in chunks:  # noqa: B007 - the last is kept
        pass
    return [row.tolist() for row in rows], done


@pytest.mark.parametrize("length", ["bars", "tokens"])
def test_prompts_of_different_lengths_and_meters_in_one_batch_equal_each_alone(model, prompts, monkeypatch, length):
    # three pitches: xxsep (a wait) is one choice in four, so the random model (whose waits are of any length,
    # five bars on average) moves time, and its rows end apart
    request = SamplingRequest(bars=32, chunk_tokens=10, preset="conservative", pitch_range=(60, 62))
    if length == "tokens":
        request = SamplingRequest(bars=0, max_new_tokens=70, chunk_tokens=10)
    seeds = [3, 1, 4, 1, 5, 9]
    alone = [last(sample_rows(model, [prompt], request, [seed])) for prompt, seed in zip(prompts, seeds)]
    assert len({len(prompt) for prompt in prompts}) == 5 and max(map(len, prompts)) < 128  # 3/4 and 6/8: 3 each

    counted_from = []  # the prompt lengths the batch's MaxBarsCriteria counts each row's bars from

    class RecordingBars(MaxBarsCriteria):
        def __init__(self, num_bars, config=None, prompt_length=None):
            if isinstance(prompt_length, list):  # (bars_done() counts one finished row with an int)
                counted_from.append(prompt_length)
            super().__init__(num_bars, config, prompt_length)

    monkeypatch.setattr(batch_sampling_music_xl, "MaxBarsCriteria", RecordingBars)
    calls = recorded_batches(model, monkeypatch)
    together, done = last(sample_rows(model, prompts, request, seeds))
    if length == "bars":  # (the random model's rows jump many bars at once: a wrong prompt end may not show)
        assert [sorted(lengths) for lengths in counted_from] == [sorted(map(len, prompts))]
    for row, prompt, (single, single_done), bars_done in zip(together, prompts, alone, done):
        assert row == single[0] and bars_done == single_done[0]
        assert row[: len(prompt)] == prompt.tolist()
        if length == "bars":  # (a row stopped by its token bound may end inside a pair)
            assert encoding.first_invalid_position(np.array(row)) is None
    if length == "bars":
        assert len({len(row) - len(prompt) for row, prompt in zip(together, prompts)}) > 2  # end apart
        assert min(done) >= 32
    else:
        assert [len(row) - len(prompt) for row, prompt in zip(together, prompts)] == [70] * len(prompts)
    assert sum(len(row) > 2 * 32 for row in together) >= 3  # far past what a token sees whole
    assert calls[0] == len(prompts) and calls == sorted(calls, reverse=True)  # one batch; rows leave as they end
    # one generate() call per chunk of 10 tokens, from the shortest prompt's end to the longest row's end
    assert len(calls) == -(-(max(map(len, together)) - min(map(len, prompts))) // 10)
    # generate_batch (the CLI's, and the demo's statistics over several chorales) is the same batch
    assert [ids.tolist() for ids in generate_batch(model, prompts, request, seeds, progress=False)] == together


def test_each_row_counts_its_bars_from_its_own_prompt_s_end():
    """Rows of one batch with prompts of 6, 2 and 10 tokens (4/4: a wait of d16 is a bar): bars are counted from
    each row's own prompt end, and a row still inside its prompt is not done."""
    config = MusicXLConfig()
    rows = torch.tensor(
        [
            [BOS, PAD, note(60), dur(16), SEP, dur(16), SEP, dur(16)],  # prompt: 1 bar, then 1 more
            [BOS, PAD, SEP, dur(16), SEP, dur(16), SEP, dur(16)],  # prompt: nothing, then 3 bars
            [BOS, PAD, SEP, dur(16), SEP, dur(16), SEP, dur(16)],  # prompt: 10 tokens, 2 still to come
        ]
    )
    criteria = MaxBarsCriteria([1, 3, 1], config, prompt_length=[6, 2, 10])
    assert criteria.bars_done(rows)[:2].tolist() == [1.0, 3.0] and criteria.bars_done(rows)[2].isnan()
    assert criteria(rows, None).tolist() == [True, True, False]
    assert MaxBarsCriteria(2, config, prompt_length=[6, 2, 10])(rows, None).tolist() == [False, True, False]
    criteria.keep([1])
    assert criteria(rows[1:2], None).tolist() == [True] and criteria.bars_done(rows[1:2]).tolist() == [3.0]


def test_prompts_far_apart_in_length_go_in_separate_batches(model, prompts, monkeypatch):
    """A long prompt's last tokens are fed one a step: past MAX_FED_TOKENS apart, prompts wait for their own
    batch (shortest first), and every row is still what it gives alone."""
    request = SamplingRequest(bars=0, max_new_tokens=12, chunk_tokens=12)
    seeds = list(range(len(prompts)))
    together, _ = last(sample_rows(model, prompts, request, seeds))
    monkeypatch.setattr(batch_sampling_music_xl, "MAX_FED_TOKENS", 10)
    calls = recorded_batches(model, monkeypatch)
    apart, _ = last(sample_rows(model, prompts, request, seeds))
    assert apart == together
    lengths = sorted(map(len, prompts))  # [2, 3, 3, 23, 43, 63]: the short ones, then each chorale alone
    groups = batch_sampling_music_xl.batches([Row(torch.zeros(n), 0, None, 1, None) for n in lengths])
    assert [len(group) for group in groups] == [3, 1, 1, 1]
    assert calls == [3, 2, 1, 1, 1]  # the rows of 3 prompt tokens end a token after the other: one call more


def test_a_streamer_takes_one_row(model, prompts):
    with pytest.raises(ValueError, match="a streamer follows one sample"):
        next(sample_rows(model, prompts[:2], SamplingRequest(), [0, 1], streamer=object()))


def test_the_pipeline_samples_a_list_of_prompts_in_one_batch(tiny_model_dir, chorale_midi_files, monkeypatch):
    """``pipe([a, b, None], num_samples=2)``: six rows in one generate() batch; each prompt's samples are those
    it gives alone (the same seeds), and progress counts every sample of every prompt."""
    pipe = load_pipeline(str(tiny_model_dir))
    inputs = [str(chorale_midi_files[0]), None, str(chorale_midi_files[6])]
    kwargs = dict(bars=1, prompt_bars=1, num_samples=2, seed=7, chunk_tokens=8)
    alone = [pipe(item, **kwargs) for item in inputs]
    calls, seen = recorded_batches(pipe.model, monkeypatch), []
    together = pipe(inputs, progress_callback=lambda done, total: seen.append((done, total)), **kwargs)
    assert calls[0] == 6
    assert [[(s["ids"], s["seed"], s["bars"]) for s in samples] for samples in together] == [
        [(s["ids"], s["seed"], s["bars"]) for s in samples] for samples in alone
    ]
    assert [s["seed"] for s in together[1]] == [7, 8] and {s["prompt_length"] for s in together[1]} == {2}
    assert seen[-1][1] == 6 and [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert pipe([], **kwargs) == []
