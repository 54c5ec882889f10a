"""generate() with the memory as cache, the grammar LogitsProcessor and the bars StoppingCriteria."""

import pytest
import torch

from hf_music_xl import MaxBarsCriteria, MusicGrammarProcessor, MusicXLConfig, MusicXLForCausalLM
from hf_music_xl.generation_music_xl import scale_pitch_classes

from helpers import BOS, DURATIONS, EOS, NOTES, PAD, SEP, dur, note, tiny_model


PROMPTS = torch.tensor(
    [
        [BOS, PAD, note(60), dur(4), note(55), dur(8), SEP, dur(4), note(62), dur(4)],
        [BOS, PAD, note(67), dur(2), SEP, dur(2), note(69), dur(2), SEP, dur(2)],
    ]
)


# ---------------------------------------------------------------------------------------------------------------
# The cache


def test_cached_greedy_equals_uncached_when_the_memory_covers_the_context():
    # segment_len 16 < context: uncached generation re-runs the whole sequence in segments with memory
    model = tiny_model(mem_len=128, segment_len=16)
    cached = model.generate(PROMPTS, max_new_tokens=60, do_sample=False)
    uncached = model.generate(PROMPTS, max_new_tokens=60, do_sample=False, use_cache=False)
    assert cached.shape == (2, 70)
    assert torch.equal(cached, uncached)


def test_cached_sampling_equals_uncached_with_the_same_seed():
    model = tiny_model(mem_len=128, segment_len=16)
    runs = []
    for use_cache in (True, False, True):
        torch.manual_seed(3)
        runs.append(model.generate(PROMPTS, max_new_tokens=40, do_sample=True, top_k=50, use_cache=use_cache))
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    assert ((runs[0] >= 0) & (runs[0] < 299)).all()


def test_beam_search_with_cache_equals_without():
    model = tiny_model(mem_len=128, segment_len=16)
    kwargs = dict(max_new_tokens=24, num_beams=3, num_return_sequences=2, do_sample=False)
    cached = model.generate(PROMPTS, **kwargs)
    uncached = model.generate(PROMPTS, use_cache=False, **kwargs)
    assert cached.shape == (4, 34)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("mem_len", [16, 128])
def test_resuming_from_a_returned_cache_equals_one_long_generate(mem_len):
    model = tiny_model(mem_len=mem_len, segment_len=16)
    first = model.generate(PROMPTS, max_new_tokens=25, do_sample=False, return_dict_in_generate=True)
    cache = first.past_key_values
    assert cache.get_seq_length() == PROMPTS.shape[1] + 25 - 1  # the last sampled token is not consumed yet
    resumed = model.generate(first.sequences, past_key_values=cache, max_new_tokens=25, do_sample=False)
    assert torch.equal(resumed, model.generate(PROMPTS, max_new_tokens=50, do_sample=False))


def test_cache_keeps_running_positions_and_bounded_memory():
    model = tiny_model(mem_len=8, segment_len=4)
    ids = torch.tensor([[BOS, PAD] + [note(60), dur(2), SEP, dur(3)] * 6])
    with torch.no_grad():
        cache = None
        for t in range(ids.shape[1]):
            cache = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True).past_key_values
    assert cache.next_position.tolist() == [18] and cache.memory_length() == 8
    assert cache.key_buffers[0].shape[2] == 16  # 2 x mem_len of room, written in place


# ---------------------------------------------------------------------------------------------------------------
# Grammar


def grammar_errors(sequence, prompt_length):
    """Ungrammatical generated tokens of one sequence (stops at the first xxeos: generate pads after it)."""
    errors = []
    for i in range(prompt_length, len(sequence)):
        previous, token = sequence[i - 1], sequence[i]
        if previous in NOTES or previous == SEP:
            ok = token in DURATIONS and token != dur(0)
        elif previous in DURATIONS:
            ok = token in NOTES or token in (SEP, EOS)
        elif previous == PAD:
            ok = token in NOTES or token == SEP
        elif previous == BOS:
            ok = token == PAD
        elif previous == EOS:
            break
        else:
            ok = token in NOTES or token == SEP
        if not ok:
            errors.append((i, previous, token))
    return errors


def test_grammar_processor_makes_every_sampled_token_grammatical():
    model = tiny_model()
    processor = MusicGrammarProcessor(model.config)
    groups = [[BOS], [BOS, PAD, note(60)], [BOS, PAD, note(60), dur(4)], [BOS, PAD, note(60), dur(4), SEP]]
    counted = 0
    for seed, prompt in enumerate(groups):
        torch.manual_seed(seed)
        prompts = torch.tensor([prompt] * 8)
        out = model.generate(prompts, max_new_tokens=150, do_sample=True, temperature=1.5, logits_processor=[processor])
        for row in out.tolist():
            assert grammar_errors(row, len(prompt)) == []
            counted += len(row) - len(prompt)
    assert counted >= 32 * 50
    # without the processor a random model is ungrammatical almost at once
    torch.manual_seed(0)
    free = model.generate(torch.tensor([groups[2]] * 8), max_new_tokens=40, do_sample=True)
    assert all(grammar_errors(row, 4) for row in free.tolist())


def test_grammar_processor_temperatures_and_restrictions():
    config = MusicXLConfig()
    processor = MusicGrammarProcessor(config, note_temperature=2.0, duration_temperature=0.5, pitch_range=(48, 72),
                                      scale="D major")  # fmt: skip
    scores = torch.ones(2, 299)
    out = processor(torch.tensor([[BOS, PAD, note(60), dur(4)], [BOS, PAD, SEP, dur(4)]]), scores)
    d_major = scale_pitch_classes("D major")
    assert d_major == {2, 4, 6, 7, 9, 11, 1}
    allowed_notes = [p for p in range(128) if 48 <= p <= 72 and p % 12 in d_major]
    finite = torch.isfinite(out[0]).nonzero().flatten().tolist()
    assert finite == [EOS, SEP] + [note(p) for p in allowed_notes]
    assert out[0, note(62)] == 0.5 and out[0, SEP] == 1.0  # notes divided by 2
    durations = processor(torch.tensor([[note(60)]]), torch.ones(1, 299))
    assert torch.isfinite(durations[0]).nonzero().flatten().tolist() == list(DURATIONS)[1:]  # never d0
    assert durations[0, dur(3)] == 2.0  # durations divided by 0.5
    waits = processor(torch.tensor([[SEP]]), torch.ones(1, 299))
    assert torch.isinf(waits[0, dur(0)]) and torch.isfinite(waits[0, dur(1)])
    closed = MusicGrammarProcessor(config, allow_end=False)(torch.tensor([[dur(2)]]), torch.ones(1, 299))
    assert torch.isinf(closed[0, EOS])
    with pytest.raises(ValueError):
        MusicGrammarProcessor(config, pitch_range=(61, 61), scale="C major")


def test_sampled_notes_respect_pitch_range_and_scale():
    model = tiny_model()
    processor = MusicGrammarProcessor(model.config, pitch_range=(60, 71), scale=[0, 4, 7], note_temperature=0.8)
    torch.manual_seed(1)
    out = model.generate(PROMPTS, max_new_tokens=120, do_sample=True, logits_processor=[processor])
    pitches = [t - 9 for t in out[:, PROMPTS.shape[1] :].flatten().tolist() if t in NOTES]
    assert pitches and set(pitches) <= {60, 64, 67}


# ---------------------------------------------------------------------------------------------------------------
# Stopping by bars


def test_bars_criteria_on_a_hand_example():
    config = MusicXLConfig()
    ids = torch.tensor([[BOS, PAD, note(60), dur(4), SEP, dur(16), note(62), dur(4), SEP, dur(15), note(64), dur(1)]])
    two_bars = MaxBarsCriteria(2, config)
    assert [two_bars(ids[:, :n], None).item() for n in (6, 9, 10, 12)] == [False, False, False, False]
    more = torch.cat([ids, torch.tensor([[SEP, dur(1)]])], dim=1)  # 16 + 15 + 1 = 32 steps: two bars
    assert two_bars(more[:, :-1], None).tolist() == [False] and two_bars(more, None).tolist() == [True]
    one_more = MaxBarsCriteria(1, config, prompt_length=6)  # counted from the end of the prompt, at step 16
    assert one_more(more, None).tolist() == [True] and one_more(ids, None).tolist() == [False]


def test_generation_stops_right_after_the_wait_that_ends_the_bars():
    model = tiny_model()
    config = model.config
    processor = MusicGrammarProcessor(config, pitch_range=(60, 62), allow_end=False)  # xxsep is likely
    torch.manual_seed(0)
    prompts = torch.tensor([[BOS, PAD, note(60), dur(4), SEP, dur(8)]] * 6)
    out = model.generate(prompts, max_new_tokens=300, do_sample=True, logits_processor=[processor],
                         stopping_criteria=[MaxBarsCriteria(1, config, prompt_length=6)])  # fmt: skip
    stopped = 0
    for row in out.tolist():
        while row[-1] == PAD:  # generate pads rows that finished early
            row.pop()
        ids = torch.tensor([row])
        if len(row) == 6 + 300:
            continue
        stopped += 1
        assert row[-2] == SEP and row[-1] in DURATIONS
        assert MaxBarsCriteria(1, config, prompt_length=6)(ids, None).item()
        assert not MaxBarsCriteria(1, config, prompt_length=6)(ids[:, :-1], None).item()
    assert stopped >= 3
