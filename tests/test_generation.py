"""generate() with the memory as cache, the grammar LogitsProcessor and the bars StoppingCriteria."""

import pytest
import torch
from helpers import BOS, DURATIONS, EOS, NOTES, PAD, SEP, dur, note, tiny_model

from hf_music_xl import MaxBarsCriteria, MusicGrammarProcessor, MusicXLConfig
from hf_music_xl.models.music_xl import encoding
from hf_music_xl.models.music_xl.generation_music_xl import scale_pitch_classes

METERS = range(299, 379)
V = 383  # with the task tokens (379..382)


PROMPTS = torch.tensor(
    [
        [BOS, PAD, note(60), dur(4), note(55), dur(8), SEP, dur(4), note(62), dur(4)],
        [BOS, PAD, note(67), dur(2), SEP, dur(2), note(69), dur(2), SEP, dur(2)],
    ]
)


# ---------------------------------------------------------------------------------------------------------------
# The cache


@pytest.mark.parametrize("mem_len", [8, 128])
def test_cached_greedy_equals_uncached_at_any_length(mem_len):
    # uncached generation re-runs the whole sequence in segments with memory; far past the memory (mem_len 8,
    # 70 tokens) the cache still gives every token the same context
    model = tiny_model(mem_len=mem_len, segment_len=16)
    cached = model.generate(PROMPTS, max_new_tokens=60, do_sample=False)
    uncached = model.generate(PROMPTS, max_new_tokens=60, do_sample=False, use_cache=False)
    assert cached.shape == (2, 70)
    assert torch.equal(cached, uncached)


def test_cached_sampling_equals_uncached_with_the_same_seed():
    model = tiny_model(mem_len=8, segment_len=16)
    runs = []
    for use_cache in (True, False, True):
        torch.manual_seed(3)
        runs.append(model.generate(PROMPTS, max_new_tokens=40, do_sample=True, top_k=50, use_cache=use_cache))
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    torch.manual_seed(4)
    assert not torch.equal(model.generate(PROMPTS, max_new_tokens=40, do_sample=True, top_k=50), runs[0])


def test_beam_search_with_cache_equals_without():
    model = tiny_model(mem_len=8, segment_len=16)
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


def test_resuming_after_beam_search_continues_the_returned_sequences():
    """Beam search returns its best sequences but leaves the cache on its final beams (another order, more
    rows): resuming matches each sequence to the row that consumed it, or refuses clearly."""
    model = tiny_model(mem_len=8, segment_len=16)
    beams = model.generate(PROMPTS, max_new_tokens=12, num_beams=3, do_sample=False, return_dict_in_generate=True)
    assert beams.past_key_values.fingerprint().shape == (6,)  # batch x beams rows
    resumed = model.generate(beams.sequences, past_key_values=beams.past_key_values, max_new_tokens=10, do_sample=False)
    assert torch.equal(resumed, model.generate(beams.sequences, max_new_tokens=10, do_sample=False))
    other = model.generate(PROMPTS.flip(0), max_new_tokens=12, do_sample=False, return_dict_in_generate=True)
    with pytest.raises(
        ValueError,
        match=r"did not consume these sequences \(a cache returned by beam search holds "
        r"the final beams, which may not be the returned sequences\): generate again from the sequences",
    ):
        model.generate(beams.sequences, past_key_values=other.past_key_values, max_new_tokens=4)
    consumed = beams.past_key_values.get_seq_length()
    with pytest.raises(ValueError, match=f"the cache has consumed {consumed} tokens: pass the sequences it continues"):
        model.generate(beams.sequences[:, :consumed], past_key_values=beams.past_key_values, max_new_tokens=4)


def test_prompt_lookup_and_assisted_decoding_equal_greedy():
    """Both verify several candidate tokens in one forward and crop the rejected ones from the cache."""
    model = tiny_model(mem_len=8, segment_len=16)
    prompt = PROMPTS[:1]  # (assisted decoding takes one sequence at a time)
    greedy = model.generate(prompt, max_new_tokens=50, do_sample=False)
    lookup = model.generate(prompt, max_new_tokens=50, do_sample=False, prompt_lookup_num_tokens=4)
    assistant = tiny_model(mem_len=8, segment_len=16, n_layer=1)
    assisted = model.generate(prompt, max_new_tokens=50, do_sample=False, assistant_model=assistant)
    assert torch.equal(lookup, greedy) and torch.equal(assisted, greedy)


@pytest.mark.parametrize("pads", [3, 5, 8, 11])
def test_left_padding_shifts_no_segment_far_past_the_memory(pads):
    # segments are counted in a row's own tokens: a row padded by any amount sees, at every token, the context it
    # sees alone (with pads not a multiple of segment_len the batch's segments fall elsewhere in its tokens), in
    # one forward of the whole batch and when generate() continues it step by step far past mem_len + segment_len
    model = tiny_model(mem_len=16, segment_len=8)
    row = torch.tensor([[BOS, PAD] + [t for i in range(21) for t in (note(60 + i % 7), dur(1 + i % 3))]])  # 44 tokens
    batch = torch.cat([torch.cat([torch.full((1, pads), PAD), row], dim=1), torch.cat([row, row[:, :pads]], dim=1)])
    mask = torch.ones_like(batch)
    mask[0, :pads] = 0
    with torch.no_grad():
        alone = model(row).logits[0]
        together = model(batch, attention_mask=mask).logits
    torch.testing.assert_close(together[0, pads:], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together[1, : row.shape[1]], alone, atol=1e-5, rtol=1e-5)
    generated = model.generate(batch, attention_mask=mask, max_new_tokens=40, do_sample=False)
    assert torch.equal(generated[0, pads:], model.generate(row, max_new_tokens=40, do_sample=False)[0])


def test_left_padded_batch_generates_as_each_prompt_alone():
    model = tiny_model(mem_len=16, segment_len=8)
    short = torch.tensor([[BOS, PAD, note(64), dur(2)]])
    padded = torch.cat([torch.full((1, 6), PAD), short], dim=1)
    batch = torch.cat([PROMPTS[:1], padded])
    mask = torch.ones_like(batch)
    mask[1, :6] = 0
    together = model.generate(batch, attention_mask=mask, max_new_tokens=30, do_sample=False)
    assert torch.equal(together[1, 6:], model.generate(short, max_new_tokens=30, do_sample=False)[0])
    assert torch.equal(together[0], model.generate(PROMPTS[:1], max_new_tokens=30, do_sample=False)[0])
    # without a mask, only the xxpad run before a row's first token is padding: xxbos xxpad stays a real pair
    assert torch.equal(model.generate(batch, max_new_tokens=30, do_sample=False), together)


@pytest.mark.parametrize("mode", ["greedy", "sample", "beam", "beam_sample"])
def test_generate_returns_scores_hidden_states_and_attentions(mode):
    model = tiny_model(mem_len=8, segment_len=16)
    config = model.config
    beams = 2 if mode.startswith("beam") else 1
    torch.manual_seed(0)
    out = model.generate(
        PROMPTS,
        max_new_tokens=5,
        do_sample=mode in ("sample", "beam_sample"),
        num_beams=beams,
        return_dict_in_generate=True,
        output_scores=True,
        output_hidden_states=True,
        output_attentions=True,
    )
    rows = 2 * beams
    assert len(out.scores) == len(out.attentions) == len(out.hidden_states) == 5
    prompt_length = PROMPTS.shape[1]
    for step, (attentions, hidden_states) in enumerate(zip(out.attentions, out.hidden_states)):
        assert len(attentions) == config.n_layer and len(hidden_states) == config.n_layer + 1
        queries = prompt_length if step == 0 else 1
        assert hidden_states[0].shape == (rows, queries, config.d_model)
        assert attentions[0].shape[:3] == (rows, config.n_head, queries)
        torch.testing.assert_close(attentions[-1].sum(-1), torch.ones(rows, config.n_head, queries))
    assert out.attentions[-1][0].shape[-1] == prompt_length + 4  # the last token sees everything before it


def test_cache_keeps_running_positions_and_bounded_memory():
    model = tiny_model(mem_len=8, segment_len=4)
    ids = torch.tensor([[BOS, PAD] + [note(60), dur(2), SEP, dur(3)] * 60])
    with torch.no_grad():
        cache = None
        for t in range(ids.shape[1]):
            cache = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True).past_key_values
            assert cache.memory_length() <= 8 + 3
    assert cache.next_position().tolist() == [180] and cache.get_seq_length() == 242
    assert cache.keys[0].shape[2] == 2 * (8 + 4)  # room for 2 x (mem_len + segment_len), written in place


# ---------------------------------------------------------------------------------------------------------------
# Grammar


def grammar_errors(sequence, prompt_length):
    """Ungrammatical generated tokens of one sequence (stops at the first xxeos: generate pads after it)."""
    errors = []
    step_in_bar = encoding.token_bars(sequence)[1]
    for i in range(prompt_length, len(sequence)):
        previous, token = sequence[i - 1], sequence[i]
        at_bar_line_meter = token in METERS and step_in_bar[i] == 0
        if previous in NOTES or previous == SEP:
            ok = token in DURATIONS and token != dur(0)
        elif previous in DURATIONS:
            ok = token in NOTES or token in (SEP, EOS) or at_bar_line_meter
        elif previous == PAD:
            ok = token in NOTES or token == SEP or at_bar_line_meter
        elif previous in METERS:
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
    processor = MusicGrammarProcessor(
        config, note_temperature=2.0, duration_temperature=0.5, pitch_range=(48, 72), scale="D major"
    )
    scores = torch.ones(2, V)
    out = processor(torch.tensor([[BOS, PAD, note(60), dur(4)], [BOS, PAD, SEP, dur(4)]]), scores)
    d_major = scale_pitch_classes("D major")
    assert d_major == {2, 4, 6, 7, 9, 11, 1}
    allowed_notes = [p for p in range(128) if 48 <= p <= 72 and p % 12 in d_major]
    finite = torch.isfinite(out[0]).nonzero().flatten().tolist()
    assert finite == [EOS, SEP] + [note(p) for p in allowed_notes] + list(METERS)  # at step 0: a bar line
    assert out[0, note(62)] == 0.5 and out[0, SEP] == 1.0  # notes divided by 2
    # a time signature only where a bar starts: not 4 steps into a bar, but 16, and after it a note or xxsep
    three_four = encoding.TOKEN_TO_ID["ts3/4"]
    for waited, meter_allowed in ((4, False), (16, True)):
        ids = torch.tensor([[BOS, PAD, note(60), dur(4), SEP, dur(waited), note(62), dur(4)]])
        assert bool(torch.isfinite(processor(ids, torch.ones(1, V))[0, three_four])) == meter_allowed
    after = processor(torch.tensor([[BOS, PAD, three_four]]), torch.ones(1, V))
    assert torch.isfinite(after[0]).nonzero().flatten().tolist() == [SEP] + [note(p) for p in allowed_notes]
    # in 3/4 a bar is 12 steps: after 12 a time signature may come, after 16 not
    for waited, meter_allowed in ((12, True), (16, False)):
        ids = torch.tensor([[BOS, PAD, three_four, note(60), dur(4), SEP, dur(waited), note(62), dur(4)]])
        assert bool(torch.isfinite(processor(ids, torch.ones(1, V))[0, three_four])) == meter_allowed
    durations = processor(torch.tensor([[note(60)]]), torch.ones(1, V))
    assert torch.isfinite(durations[0]).nonzero().flatten().tolist() == list(DURATIONS)[1:]  # never d0
    assert durations[0, dur(3)] == 2.0  # durations divided by 0.5
    waits = processor(torch.tensor([[SEP]]), torch.ones(1, V))
    assert torch.isinf(waits[0, dur(0)]) and torch.isfinite(waits[0, dur(1)])
    closed = MusicGrammarProcessor(config, allow_end=False)(torch.tensor([[dur(2)]]), torch.ones(1, V))
    assert torch.isinf(closed[0, EOS])
    with pytest.raises(ValueError):
        MusicGrammarProcessor(config, pitch_range=(61, 61), scale="C major")


def expected_next_tokens(previous, allow_end=True):
    """The grammar written out by hand: the tokens that may follow `previous` at a bar line."""
    notes_or_wait = set(NOTES) | {SEP}
    if previous == BOS:
        return {PAD}
    if previous == EOS:
        return {BOS}
    if previous == PAD:
        return notes_or_wait | set(METERS)
    if previous in NOTES or previous == SEP:
        return set(DURATIONS) - {dur(0)}
    if previous in DURATIONS:
        return notes_or_wait | set(METERS) | ({EOS} if allow_end else set())
    return notes_or_wait  # after a time signature, an unused special or xxunk


@pytest.mark.parametrize("allow_end", [True, False])
def test_grammar_processor_allows_exactly_the_grammar_after_every_token(allow_end):
    """Every row of the transition table, the specials included (xxeos never after xxpad, only xxbos after xxeos)."""
    processor = MusicGrammarProcessor(MusicXLConfig(), allow_end=allow_end)
    previous = torch.arange(V)[:, None]  # one sequence per token, each a single token: time 0, a bar line
    out = processor(previous, torch.zeros(V, V))
    for token in range(V):
        allowed = set(torch.isfinite(out[token]).nonzero().flatten().tolist())
        assert allowed == expected_next_tokens(token, allow_end), encoding.VOCAB[token]


def allowed_after_a_duration(processor):
    scores = processor(torch.tensor([[BOS, PAD, note(60), dur(4)]]), torch.zeros(1, V))
    return [token - note(0) for token in torch.isfinite(scores[0]).nonzero().flatten().tolist() if token in NOTES]


def test_pitch_range_is_inclusive_and_scales_are_pitch_classes():
    assert allowed_after_a_duration(MusicGrammarProcessor(pitch_range=(60, 72))) == list(range(60, 73))
    assert allowed_after_a_duration(MusicGrammarProcessor(scale=[0, 4, 7])) == [
        p for p in range(128) if p % 12 in (0, 4, 7)
    ]
    assert scale_pitch_classes([0, 4, 19, -1, 26]) == {0, 4, 7, 11, 2}  # any integers, taken modulo 12
    assert scale_pitch_classes(" F# minor ") == {6, 8, 9, 11, 1, 2, 4}
    for bad in ("H major", "C dorian", "C", ""):
        with pytest.raises(ValueError, match="scale must look like 'C major' or 'F# minor', got"):
            scale_pitch_classes(bad)
    with pytest.raises(ValueError, match="pitch_range and scale leave no note"):
        MusicGrammarProcessor(pitch_range=(61, 61), scale="C major")


def test_temperatures_default_to_one_and_must_be_positive():
    scores = torch.randn(1, V, generator=torch.Generator().manual_seed(0))
    out = MusicGrammarProcessor()(torch.tensor([[BOS, PAD, note(60), dur(4)]]), scores.clone())  # default vocabulary
    finite = torch.isfinite(out[0])
    assert finite.sum() > 100 and torch.equal(out[0, finite], scores[0, finite])  # allowed scores untouched
    for temperatures in ((0.0, 1.0), (1.0, 0.0), (-1.0, 1.0)):
        with pytest.raises(ValueError, match="temperatures must be positive"):
            MusicGrammarProcessor(note_temperature=temperatures[0], duration_temperature=temperatures[1])


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


def test_bars_done_counts_fractions_of_bars_from_a_meter_change():
    # 4/4 for a bar, then 3/4 from step 16: 12-step bars counted from there
    three_four = encoding.TOKEN_TO_ID["ts3/4"]
    ids = torch.tensor(
        [
            [
                BOS,
                PAD,
                note(60),
                dur(4),
                SEP,
                dur(16),
                three_four,
                note(62),
                dur(4),
                SEP,
                dur(6),
                note(64),
                dur(2),
                SEP,
                dur(14),
            ]
        ]
    )
    criteria = MaxBarsCriteria(3)  # the default vocabulary
    done = [criteria.bars_done(ids[:, :n]).item() for n in (4, 6, 11, 15)]
    assert done == pytest.approx([0.0, 1.0, 1.5, 1 + 20 / 12])  # steps 0, 16, 22 and 36
    from_prompt = MaxBarsCriteria(1, prompt_length=11)  # from step 22 (bar 1.5) to step 36 (bar 2.67)
    assert from_prompt.bars_done(ids).item() == pytest.approx(20 / 12 - 0.5)
    assert criteria(ids, None).tolist() == [False] and MaxBarsCriteria(2)(ids, None).tolist() == [True]
    # bars follow the vocabulary's grid: with 8 steps a quarter, a 4/4 bar is 32 steps
    fine = MaxBarsCriteria(1, MusicXLConfig(steps_per_beat=8))
    plain = torch.tensor([[BOS, PAD, note(60), dur(4), SEP, dur(16)]])
    assert fine.bars_done(plain).item() == pytest.approx(0.5) and MaxBarsCriteria(1).bars_done(plain).item() == 1.0


def test_bars_follow_the_time_signature():
    config = MusicXLConfig()
    three_four = encoding.TOKEN_TO_ID["ts3/4"]
    ids = torch.tensor([[BOS, PAD, three_four, note(60), dur(4), SEP, dur(12), note(62), dur(4), SEP, dur(12)]])
    assert MaxBarsCriteria(2, config)(ids, None).tolist() == [True]  # 24 steps: two bars of 3/4
    assert MaxBarsCriteria(2, config)(ids[:, :-1], None).tolist() == [False]
    model = tiny_model(mem_len=32, segment_len=16)
    torch.manual_seed(0)
    out = model.generate(
        torch.tensor([[BOS, PAD, three_four]] * 3),
        max_new_tokens=400,
        do_sample=True,
        logits_processor=[MusicGrammarProcessor(config, allow_end=False)],
        stopping_criteria=[MaxBarsCriteria(3, config, prompt_length=3)],
    )
    for row in out.tolist():
        while row[-1] == PAD:
            row.pop()
        bars, step_in_bar, _, _ = encoding.token_bars(row)
        if len(row) < 403:  # stopped by the bars: right after the wait that reaches bar 3 of 3/4 (36 steps)
            assert row[-2] == SEP and encoding.beat_positions(row + [SEP])[-1] >= 36 > encoding.beat_positions(row)[-1]
        meters = [i for i, token in enumerate(row) if token in METERS]
        assert all(step_in_bar[i] == 0 for i in meters)  # any time signature it chose stands on a bar line


def test_generation_stops_right_after_the_wait_that_ends_the_bars():
    model = tiny_model()
    config = model.config
    processor = MusicGrammarProcessor(config, pitch_range=(60, 62), allow_end=False)  # xxsep is likely
    torch.manual_seed(0)
    prompts = torch.tensor([[BOS, PAD, note(60), dur(4), SEP, dur(8)]] * 6)
    out = model.generate(
        prompts,
        max_new_tokens=300,
        do_sample=True,
        logits_processor=[processor],
        stopping_criteria=[MaxBarsCriteria(1, config, prompt_length=6)],
    )
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


def test_position_tracker_reads_only_new_tokens_and_equals_a_full_read(monkeypatch):
    """Extended sequences are read from where the last call stopped; reordered or other ones whole. Either way the
    state is that of reading everything (meter changes included)."""
    import hf_music_xl.models.music_xl.generation_music_xl as generation_module
    from hf_music_xl.models.music_xl.positions_music_xl import compute_positions

    config = MusicXLConfig()
    generator = torch.Generator().manual_seed(3)
    pool = torch.tensor([SEP, SEP, note(60), note(67), dur(2), dur(4), dur(6), 299 + 2 + 16 * 2, 299 + 5 + 16 * 3])
    ids = torch.cat([torch.tensor([[BOS, PAD]] * 3), pool[torch.randint(len(pool), (3, 60), generator=generator)]], 1)
    read = []  # tokens read by each compute_positions call

    def counting(input_ids, *args, **kwargs):
        read.append(input_ids.shape[1])
        return compute_positions(input_ids, *args, **kwargs)

    monkeypatch.setattr(generation_module, "compute_positions", counting)
    tracker = generation_module.PositionTracker(config)
    for length, rows, tokens_read in (
        (10, [0, 1, 2], 10),
        (11, [0, 1, 2], 1),
        (30, [0, 1, 2], 19),
        (30, [0, 1, 2], None),
        (31, [2, 0, 1], 31),
        (62, [2, 0, 1], 31),
    ):
        read.clear()
        state = tracker.last_state(ids[rows, :length])
        assert read == ([] if tokens_read is None else [tokens_read])
        assert torch.equal(state, compute_positions(ids[rows, :length], config)[1][:, -1])
