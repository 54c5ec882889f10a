"""MusicXL model: shapes, loss, embeddings, masks, relative attention, memory recurrence, saving and remote code
(the position rule: test_positions.py; the cache object: test_cache.py)."""

import math
import os
import subprocess
import sys
import sysconfig
import textwrap

import pytest
import torch
import torch.nn.functional as F
from helpers import BOS, EOS, PAD, SEP, dur, note, tiny_model
from transformers import AutoConfig, AutoModelForCausalLM

from hf_music_xl import MusicXLCache, MusicXLConfig, MusicXLForCausalLM, MusicXLModel
from hf_music_xl.models.music_xl.attention_music_xl import (
    attention_block_mask,
    relative_position_scores,
    sinusoid_encodings,
)
from hf_music_xl.models.music_xl.positions_music_xl import STATE_SIZE, compute_positions

V = 383  # the vocabulary: ids 0..298 of the reference, then time signatures and task tokens


def random_ids(batch, length, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(9, 298, (batch, length), generator=generator)


# ---------------------------------------------------------------------------------------------------------------
# Config and presets


def test_presets_sizes_and_aliases():
    expected = {"tiny": (0.8e6, 1.3e6), "small": (8e6, 12e6), "base": (50e6, 60e6)}
    for name, (low, high) in expected.items():
        config = MusicXLConfig.from_preset(name)
        with torch.device("meta"):
            count = sum(p.numel() for p in MusicXLForCausalLM(config).parameters())
        assert low < count < high, (name, count)
    base = MusicXLConfig.from_preset("base", mem_len=256)
    assert (base.n_layer, base.d_model, base.n_head, base.d_inner, base.mem_len) == (16, 512, 8, 2048, 256)
    assert (base.num_hidden_layers, base.hidden_size, base.num_attention_heads) == (16, 512, 8)
    assert (
        base.vocab_size == 383 and base.tie_word_embeddings and base.mask_p == 0.2 and base.position_scheme == "meter"
    )
    with pytest.raises(ValueError):
        MusicXLConfig.from_preset("huge")


def test_tied_embeddings():
    model = tiny_model()
    assert model.lm_head.weight.data_ptr() == model.transformer.embed_tokens.weight.data_ptr()


# ---------------------------------------------------------------------------------------------------------------
# Masks and relative attention


def test_causal_and_window_masks():
    causal = attention_block_mask(4, 2, 0, "cpu")
    assert causal.int().tolist() == [
        [0, 0, 0, 1, 1, 1],
        [0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 0, 1],
        [0, 0, 0, 0, 0, 0],
    ]
    # window 2: queries see the memory and earlier blocks, not their own block; the first position stays visible
    window = attention_block_mask(5, 1, 2, "cpu")
    assert window.int().tolist() == [
        [0, 0, 1, 1, 1, 1],
        [0, 0, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 1],
        [0, 0, 0, 1, 1, 1],
        [0, 0, 0, 0, 0, 1],
    ]
    # window 1: everything strictly before, not itself
    assert attention_block_mask(3, 0, 1, "cpu").int().tolist() == [[0, 1, 1], [0, 1, 1], [0, 0, 1]]
    # padding keys (attention_mask 0) are never seen, but a query whose every key is padding sees itself
    valid = torch.tensor([[False, True, False, True, True], [False, False, False, True, True]])  # memory of 2
    padded = attention_block_mask(3, 2, 0, "cpu", key_valid=valid)
    assert padded[0].int().tolist() == [
        [1, 0, 1, 1, 1],
        [1, 0, 1, 0, 1],
        [1, 0, 1, 0, 0],
    ]
    assert padded[1].int().tolist() == [
        [1, 1, 0, 1, 1],  # nothing visible but padding: itself
        [1, 1, 1, 0, 1],
        [1, 1, 1, 0, 0],
    ]


def test_relative_shift_reindexes_by_key():
    batch, heads, queries, memory, d_head = 2, 3, 5, 4, 8
    keys = memory + queries
    query = torch.randn(batch, heads, queries, d_head)
    relative = torch.randn(heads, keys, d_head)  # row r encodes distance keys-1-r
    scores = relative_position_scores(query, relative)
    for i in range(queries):
        for j in range(memory + i + 1):  # past and present keys; the rest is masked
            distance = memory + i - j
            expected = (query[:, :, i] * relative[:, keys - 1 - distance]).sum(-1)
            torch.testing.assert_close(scores[:, :, i, j], expected)
    one = relative_position_scores(query[:, :, -1:], relative)  # a single query: the last of the keys
    torch.testing.assert_close(one[:, :, 0, : memory + queries], scores[:, :, -1])


def test_attention_matches_the_relative_position_formula():
    """score(i, j) = (q_i + u).k_j + (q_i + v).W_r sin(i - j), computed here naively by (i, j) loops."""
    model = tiny_model(n_layer=1)
    base = model.transformer
    attention = base.layers[0].attention
    torch.nn.init.normal_(base.content_bias, std=0.5)
    torch.nn.init.normal_(base.position_bias, std=0.5)
    heads, d_head, d_model = attention.n_head, attention.d_head, model.config.d_model
    memory_len, length = 3, 4
    x = torch.randn(2, length, d_model)
    memory_states = torch.randn(2, memory_len, d_model)
    for window in (0, 2):
        blocked = attention_block_mask(length, memory_len, window, "cpu")
        with torch.no_grad():
            split_memory = lambda t: t.view(2, -1, heads, d_head).transpose(1, 2)  # noqa: E731
            _, memory_keys, memory_values = attention.qkv_proj(memory_states).chunk(3, dim=-1)
            cache = MusicXLCache(model.config)  # holding the memory's keys and values in layer 0
            cache.make_room(memory_len + length, 2, "cpu")
            memory_slots = cache.layer_slots(0, 0, memory_len, torch.float32)
            memory_slots[0].copy_(split_memory(memory_keys)), memory_slots[1].copy_(split_memory(memory_values))
            memory_ids = torch.full((2, memory_len), 9)
            cache.append_tokens(memory_ids, torch.zeros(2, memory_len, STATE_SIZE, dtype=torch.long), memory_ids > 0)
            slots = cache.layer_slots(0, 0, length, torch.float32)
            keys = memory_len + length
            table = attention.project_positions(sinusoid_encodings(keys, d_model, "cpu", torch.float32))
            got, probabilities = attention(
                x, table, base.content_bias, base.position_bias, blocked, slots, output_attentions=window == 2
            )

            q, k, v = attention.qkv_proj(torch.cat([memory_states, x], dim=1)).chunk(3, dim=-1)
            split = lambda t: t.view(2, -1, heads, d_head).transpose(1, 2)  # noqa: E731
            q, k, v = split(q)[:, :, memory_len:], split(k), split(v)
            scores = torch.empty(2, heads, length, keys)
            for i in range(length):
                for j in range(keys):
                    distance = memory_len + i - j
                    angles = distance * (1.0 / 10000 ** (torch.arange(0, d_model, 2) / d_model))
                    r = attention.position_proj(torch.cat([angles.sin(), angles.cos()])).view(heads, d_head)
                    content = ((q[:, :, i] + base.content_bias) * k[:, :, j]).sum(-1)
                    position = ((q[:, :, i] + base.position_bias) * r).sum(-1)
                    scores[:, :, i, j] = (content + position) / math.sqrt(d_head)
            scores = scores.masked_fill(blocked, float("-inf"))
            expected = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, length, heads * d_head)
            expected = attention.out_proj(expected)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        if window == 2:  # the hand-written path that returns the probabilities computes the same scores
            torch.testing.assert_close(probabilities, scores.softmax(-1), atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Forward and loss


def test_forward_shapes_and_loss():
    model = tiny_model()
    ids = random_ids(2, 40)
    out = model(ids, labels=ids)
    assert out.logits.shape == (2, 40, V)
    assert out.past_key_values is None  # no cache unless asked
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    assert abs(out.loss.item() - math.log(V)) < 1.0  # near uniform at init
    assert model(ids, logits_to_keep=1).logits.shape == (2, 1, V)
    hidden = MusicXLModel(model.config)(ids).last_hidden_state
    assert hidden.shape == (2, 40, model.config.d_model)


def test_loss_ignores_minus_100_and_uses_num_items_in_batch():
    model = tiny_model()
    ids = random_ids(2, 30)
    labels = ids.clone()
    labels[0, 5:12] = -100
    labels[1, 20:] = -100
    out = model(ids, labels=labels)
    targets = labels[:, 1:].reshape(-1)
    logits = out.logits[:, :-1].reshape(-1, V)
    keep = targets != -100
    torch.testing.assert_close(out.loss, F.cross_entropy(logits[keep], targets[keep]))
    # the Trainer passes the valid-label count of the whole accumulated batch: the loss becomes sum / count
    summed = F.cross_entropy(logits[keep], targets[keep], reduction="sum")
    torch.testing.assert_close(model(ids, labels=labels, num_items_in_batch=torch.tensor(100)).loss, summed / 100)


def test_micro_batches_with_num_items_add_up_to_the_full_batch_gradient():
    """Gradient accumulation: micro-batches normalised by the total count give the full-batch mean gradient."""
    model = tiny_model(mask_p=0.0)
    model.train()
    ids = random_ids(4, 24)
    labels = ids.clone()
    labels[0, 3:] = -100  # very uneven valid counts per micro-batch
    model.zero_grad()
    model(ids, labels=labels).loss.backward()
    full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    total = (labels[:, 1:] != -100).sum()
    for part in (slice(0, 1), slice(1, 4)):
        model(ids[part], labels=labels[part], num_items_in_batch=total).loss.backward()
    for whole, accumulated in zip(full, (p.grad for p in model.parameters())):
        torch.testing.assert_close(accumulated, whole, atol=1e-6, rtol=1e-4)


def test_segmented_loss_equals_the_per_segment_computation():
    """A long input runs in segments with memory; feeding the segments by hand with the cache gives the same
    logits, and the loss over the concatenated logits is the one loss."""
    model = tiny_model(segment_len=8, mem_len=12)
    ids = random_ids(2, 30)
    labels = ids.clone()
    labels[:, :3] = -100
    with torch.no_grad():
        out = model(ids, labels=labels)
        cache, pieces = None, []
        for segment in ids.split(8, dim=1):
            step = model(segment, past_key_values=cache, use_cache=True)
            cache, pieces = step.past_key_values, pieces + [step.logits]
    by_hand = torch.cat(pieces, dim=1)
    torch.testing.assert_close(out.logits, by_hand, atol=1e-5, rtol=1e-4)
    keep = labels[:, 1:] != -100
    expected = F.cross_entropy(by_hand[:, :-1][keep], labels[:, 1:][keep])
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)
    # token 30 would start segment 3 (tokens 24..31) and see the 12 tokens before it and tokens 24..29
    assert cache.get_seq_length() == 30 and cache.memory_length() == 12 + 6


def test_every_way_of_feeding_a_sequence_gives_the_same_logits():
    """One context rule: a token sees its segment so far and mem_len tokens before the segment (segments counted
    from the first token). So one call, token by token with the cache, or any chunks agree at any length, far
    past the memory, and the memory is really used."""
    model = tiny_model(segment_len=8, mem_len=6)
    ids = random_ids(2, 45)
    with torch.no_grad():
        whole = model(ids).logits
        alone = model(ids[:, 8:16]).logits  # the second segment without its memory
        cache, steps = None, []
        for t in range(45):
            step = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            cache, steps = step.past_key_values, steps + [step.logits]
        cache, chunks = None, []
        for begin, end in [(0, 3), (3, 19), (19, 20), (20, 45)]:  # chunks that cross segment boundaries
            step = model(ids[:, begin:end], past_key_values=cache, use_cache=True)
            cache, chunks = step.past_key_values, chunks + [step.logits]
    assert not torch.allclose(whole[:, 8:16], alone, atol=1e-3)
    torch.testing.assert_close(torch.cat(steps, dim=1), whole, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.cat(chunks, dim=1), whole, atol=1e-5, rtol=1e-4)
    # segment 1 (tokens 8..15) sees tokens 2..7 and itself: with one layer, token 1 changes nothing there
    changed = ids.clone()
    changed[:, 1] = (changed[:, 1] + 1 - 9) % 128 + 9
    one_layer = tiny_model(segment_len=8, mem_len=6, n_layer=1)
    with torch.no_grad():
        before, after = one_layer(ids).logits, one_layer(changed).logits
    assert not torch.allclose(before[:, 1:8], after[:, 1:8], atol=1e-4)  # same segment
    torch.testing.assert_close(before[:, 8:], after[:, 8:])  # token 1 is more than mem_len before segment 1


def test_memory_length_zero_is_segments_on_their_own():
    model = tiny_model(segment_len=8, mem_len=0)
    ids = random_ids(1, 24)
    with torch.no_grad():
        whole = model(ids).logits
        separately = torch.cat([model(part).logits for part in ids.split(8, dim=1)], dim=1)
    torch.testing.assert_close(whole, separately, atol=1e-5, rtol=1e-4)


def test_memory_is_detached_from_the_step_that_wrote_it():
    """Stream training carries the cache from one step to the next: step 2's loss must have no gradient path into
    step 1 (the memory is detached), so its gradients equal those with a memory written under no_grad."""
    model = tiny_model(segment_len=8, mem_len=8, mask_p=0.0).train()
    ids = random_ids(2, 16)
    first, second = ids[:, :8], ids[:, 8:]
    carried = model(first, labels=first, use_cache=True).past_key_values  # written with gradients on
    assert not any(key.requires_grad for key in carried.keys)
    model.zero_grad()
    model(second, labels=second, past_key_values=carried, use_cache=True).loss.backward()
    through_carried = {name: p.grad.clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        detached = model(first, use_cache=True).past_key_values
    model.zero_grad()
    model(second, labels=second, past_key_values=detached, use_cache=True).loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(through_carried[name], p.grad, msg=name)
    # and that step reads the memory at all
    with torch.no_grad():
        fresh = model(first, use_cache=True).past_key_values
        assert not torch.equal(model(second, past_key_values=fresh).logits, model(second).logits)


def test_residual_projections_start_scaled_as_gpt2():
    """out_proj and ff_out write into the residual stream: std initializer_range / sqrt(2 n_layer), the rest 0.02.
    (A branch on the block in _init_weights never runs: transformers skips modules without direct parameters.)"""
    torch.manual_seed(0)
    config = MusicXLConfig.from_preset("tiny", n_layer=8)
    model = MusicXLForCausalLM(config)
    expected = 0.02 / math.sqrt(2 * 8)
    for layer in model.transformer.layers:
        for projection in (layer.attention.out_proj.weight, layer.ff_out.weight):
            assert abs(projection.std().item() - expected) < 0.08 * expected
        assert abs(layer.attention.qkv_proj.weight.std().item() - 0.02) < 0.08 * 0.02
    saved_and_loaded = MusicXLForCausalLM.from_pretrained(_saved(model))  # loading keeps the weights as saved
    torch.testing.assert_close(
        saved_and_loaded.transformer.layers[0].ff_out.weight, model.transformer.layers[0].ff_out.weight
    )


def _saved(model):
    import tempfile

    folder = tempfile.mkdtemp()
    model.save_pretrained(folder)
    return folder


def test_window_mask_in_training_only():
    ids = random_ids(2, 20)
    windowed = tiny_model(mask_p=1.0, mask_steps=3)
    plain = tiny_model(mask_p=0.0)
    with torch.no_grad():
        evaluated = windowed(ids).logits
        torch.testing.assert_close(evaluated, plain(ids).logits)  # eval ignores the window mask
        windowed.train()
        plain.train()  # dropout is 0, so train mode differs only by the mask
        torch.testing.assert_close(plain(ids).logits, evaluated)
        trained = windowed(ids, labels=ids)
    assert not torch.allclose(trained.logits, evaluated, atol=1e-4)
    assert torch.isfinite(trained.loss)  # the first position stays visible: no empty rows, no NaN
    sizes = [windowed.transformer.sample_window() for _ in range(200)]
    assert set(sizes) <= {1, 2, 3} and len(set(sizes)) == 3
    half = tiny_model(mask_p=0.5, mask_steps=2).train()
    sizes = [half.transformer.sample_window() for _ in range(400)]
    assert 140 < sizes.count(0) < 260
    switched_off = tiny_model(mask_p=0.0).train()
    assert {switched_off.transformer.sample_window() for _ in range(50)} == {0}


def test_encode_position_switch():
    ids = torch.tensor([[BOS, PAD, note(60), dur(4), SEP, dur(4), note(62), dur(4)]])
    with_positions, without = tiny_model(max_bars=16), tiny_model(encode_position=False)
    assert not hasattr(without.transformer, "embed_bar") and not hasattr(without.transformer, "embed_beat")
    one_bar = torch.tensor([1, 0, 0])
    with torch.no_grad():
        features = compute_positions(ids, with_positions.config)[0]
        explicit = with_positions(ids, beat_positions=features + one_bar).logits  # one bar later
        assert not torch.allclose(explicit, with_positions(ids).logits)
        torch.testing.assert_close(without(ids, beat_positions=features + one_bar).logits, without(ids).logits)
        # no maximum length: the bar index wraps at max_bars (16: a phrase)
        wrapped = 3 * with_positions.config.max_bars * one_bar
        torch.testing.assert_close(
            with_positions(ids, beat_positions=features + wrapped).logits, with_positions(ids).logits
        )
    no_bar = tiny_model()  # the default: no bar embedding
    assert not hasattr(no_bar.transformer, "embed_bar") and hasattr(no_bar.transformer, "embed_step")


def test_training_backward_reaches_every_parameter():
    model = tiny_model(segment_len=8, mem_len=8, mask_p=1.0, dropout=0.1).train()
    ids = random_ids(2, 24)
    model(ids, labels=ids).loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_cache_with_gradients_trains_and_continues():
    """model(ids, use_cache=True) in training returns the memory, and the next step continues from it."""
    model = tiny_model(segment_len=8, mem_len=8).train()
    ids = random_ids(2, 12)
    out = model(ids, labels=ids, use_cache=True)
    out.loss.backward()
    assert isinstance(out.past_key_values, MusicXLCache) and out.past_key_values.get_seq_length() == 12
    following = model(random_ids(2, 5, seed=2), past_key_values=out.past_key_values, use_cache=True)
    assert following.past_key_values.get_seq_length() == 17
    with pytest.raises(TypeError):
        model(random_ids(1, 4), past_key_values=(torch.zeros(1),))


def test_return_dict_false_gives_a_tuple():
    model = tiny_model()
    ids = random_ids(2, 10)
    loss, logits = model(ids, labels=ids, return_dict=False)
    expected = model(ids, labels=ids)
    torch.testing.assert_close(loss, expected.loss)
    torch.testing.assert_close(logits, expected.logits)
    (hidden,) = model.transformer(ids, return_dict=False)
    assert hidden.shape == (2, 10, model.config.d_model)


def test_shift_labels_are_the_targets_as_given():
    """Context-parallel training and stream training pass the targets already shifted."""
    model = tiny_model()
    ids = random_ids(2, 10)
    targets = random_ids(2, 10, seed=5)
    targets[0, 3] = -100
    out = model(ids, labels=ids, shift_labels=targets)
    keep = targets.reshape(-1) != -100
    expected = F.cross_entropy(out.logits.reshape(-1, V)[keep], targets.reshape(-1)[keep])
    torch.testing.assert_close(out.loss, expected)
    assert not torch.allclose(out.loss, model(ids, labels=ids).loss)


def test_hidden_states_and_attentions_are_returned():
    model = tiny_model(segment_len=8, mem_len=4)
    ids = random_ids(2, 12)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True, output_attentions=True)
    config = model.config
    assert len(out.hidden_states) == config.n_layer + 1
    assert all(h.shape == (2, 12, config.d_model) for h in out.hidden_states)
    assert len(out.attentions) == config.n_layer
    assert all(a.shape == (2, config.n_head, 12, 12) for a in out.attentions)
    for attention in out.attentions:
        torch.testing.assert_close(attention.sum(-1), torch.ones(2, config.n_head, 12))
        assert (attention.triu(1) == 0).all()  # causal
        assert (attention[:, :, 8:, :4] == 0).all()  # segment 2 (tokens 8..11) sees 4 memory tokens: 4..7
        assert (attention[:, :, 8:, 4:8] > 0).all()
    # the last hidden state is the final output; the first is the embedding
    with torch.no_grad():
        plain = model.transformer(ids)
        torch.testing.assert_close(out.hidden_states[-1], plain.last_hidden_state)
        next_layer_input = model.transformer.layers[0](out.hidden_states[0][:, :8], *_layer_inputs(model, 8))[0]
    torch.testing.assert_close(out.hidden_states[1][:, :8], next_layer_input, atol=1e-5, rtol=1e-4)
    # the same probabilities with the SDPA path (no output_attentions) give the same logits
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, model(ids, output_attentions=True).logits, atol=1e-5, rtol=1e-4)


def _layer_inputs(model, length, batch=2):
    """relative, u, v, the causal mask and empty memory slots for a first segment of `length` tokens."""
    base = model.transformer
    table = base.layers[0].attention.project_positions(
        sinusoid_encodings(length, model.config.d_model, "cpu", torch.float32)
    )
    cache = MusicXLCache(model.config)
    slots = cache.layer_slots(0, cache.make_room(length, batch, "cpu"), length, torch.float32)
    return table, base.content_bias, base.position_bias, attention_block_mask(length, 0, 0, "cpu"), slots


def test_left_padding_changes_nothing_for_the_real_tokens():
    """attention_mask 0 marks padding: never attended to, no beat position moved, nothing left in the cache. (The
    prompts here continue a piece, no xxbos: before an xxbos the padding would be another piece anyway.)"""
    model = tiny_model(segment_len=16, mem_len=16)
    short = torch.tensor([[note(60), dur(4), SEP, dur(4), note(64), dur(2), SEP, dur(2)]])
    long = torch.tensor([[note(67), dur(8), SEP, dur(8), note(69), dur(4), SEP, dur(4), note(71), dur(4), SEP, dur(4)]])
    padded = torch.cat([torch.full((1, 4), PAD), short], dim=1)
    batch = torch.cat([long, padded])
    mask = torch.ones_like(batch)
    mask[1, :4] = 0
    with torch.no_grad():
        together = model(batch, attention_mask=mask, use_cache=True)
        alone = model(short, use_cache=True)
        assert not torch.allclose(model(batch).logits[1, -1], alone.logits[0, -1], atol=1e-4)  # padding matters...
        torch.testing.assert_close(together.logits[1, 4:], alone.logits[0])  # ...unless masked
        torch.testing.assert_close(together.logits[0], model(long).logits[0])
        # the caches continue alike: the next token sees the same context and the same beat position
        step = torch.tensor([[SEP], [SEP]])
        next_together = model(
            step,
            attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1),
            past_key_values=together.past_key_values,
            use_cache=True,
        )
        next_alone = model(step[1:], past_key_values=alone.past_key_values, use_cache=True)
    torch.testing.assert_close(next_together.logits[1], next_alone.logits[0])
    assert together.past_key_values.next_position().tolist() == [16, 6]


def test_a_token_sees_only_its_own_piece():
    """Stream training runs piece after piece in one row: a piece starts from nothing, as it is evaluated and
    generated, whatever came before its xxbos (even within the memory or the same segment)."""
    model = tiny_model(segment_len=8, mem_len=8)
    first = [BOS, PAD, note(60), dur(4), SEP, dur(4), note(64), dur(2), EOS]
    second = [BOS, PAD, note(67), dur(8), SEP, dur(8), note(69), dur(4)]
    with torch.no_grad():
        after = model(torch.tensor([first + second])).logits[0, len(first) :]
        alone = model(torch.tensor([second])).logits[0]
        other = model(torch.tensor([[BOS, PAD, note(50), dur(2), SEP, dur(2), note(52), dur(2), EOS] + second])).logits[
            0, 9:
        ]
    torch.testing.assert_close(after, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(other, alone, atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_model(segment_len=8, mem_len=8, mask_p=0.0).train()
    assert model.supports_gradient_checkpointing
    ids = random_ids(2, 20)
    memory = model(ids[:, :8], use_cache=True).past_key_values
    model.zero_grad()
    model(ids, labels=ids, past_key_values=memory).loss.backward()
    plain = {name: p.grad.clone() for name, p in model.named_parameters()}
    memory = model(ids[:, :8], use_cache=True).past_key_values
    model.activation_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.transformer.layers)
    model.zero_grad()
    model(ids, labels=ids, past_key_values=memory).loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[name], atol=1e-6, rtol=1e-4, msg=name)


def test_inputs_embeds_is_refused_clearly():
    model = tiny_model()
    with pytest.raises(ValueError, match="beat positions from token ids"):
        model(inputs_embeds=torch.randn(1, 4, model.config.d_model))


# ---------------------------------------------------------------------------------------------------------------
# Saving and loading


def test_save_and_load_round_trip_safetensors_only(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "model.safetensors" in files and not any(name.endswith((".bin", ".pt")) for name in files)
    assert {"configuration_music_xl.py", "modeling_music_xl.py"} <= set(files)
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.auto_map["AutoModelForCausalLM"] == "modeling_music_xl.MusicXLForCausalLM"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)  # registered: no remote code needed
    assert type(loaded) is MusicXLForCausalLM
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.embed_tokens.weight.data_ptr()
    ids = random_ids(2, 20)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    prompt = torch.tensor([[BOS, PAD, note(60), dur(4)]])
    assert torch.equal(loaded.generate(prompt, max_new_tokens=16), model.generate(prompt, max_new_tokens=16))


@pytest.mark.slow
def test_trust_remote_code_in_a_fresh_interpreter_without_the_package(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "model")
    prompt = [[BOS, PAD, note(60), dur(4)]]
    expected = model.generate(torch.tensor(prompt), max_new_tokens=16).tolist()
    # -I -S: no PYTHONPATH, no user site and no .pth files, so the editable install of hf_music_xl is invisible;
    # the venv's site-packages is added as a plain path for torch and transformers
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.append({sysconfig.get_paths()["purelib"]!r})
        try:
            import hf_music_xl
        except ImportError:
            print("no hf_music_xl")
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
        print(type(model).__module__)
        print(model.generate(torch.tensor({prompt}), max_new_tokens=16).tolist())
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "no hf_music_xl"
    assert lines[1].startswith("transformers_modules.")
    assert lines[2] == str(expected)


def test_the_last_beat_of_the_longest_bar_has_its_own_embedding():
    """16/4 has the most beats of the vocabulary's meters: its last beat uses the last row of the beat table (the
    clamp that guards the table must not fold it onto the beat before)."""
    from hf_music_xl.models.music_xl import encoding

    model = tiny_model()
    ids = [BOS, PAD, encoding.meter_token(16, 4)] + [note(60), dur(4), SEP, dur(4)] * 16
    seen = []
    handle = model.transformer.embed_beat.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    with torch.no_grad():
        model(torch.tensor([ids]))
    handle.remove()
    assert model.transformer.embed_beat.num_embeddings == 16
    assert sorted(seen[0].unique().tolist()) == list(range(16))


def test_attention_dropout_acts_in_training_only():
    ids = torch.tensor([[BOS, PAD, note(60), dur(4), SEP, dur(4), note(64), dur(2)]])
    for attn_dropout in (0.0, 0.5):
        model = tiny_model(attn_dropout=attn_dropout, mask_p=0.0)  # no window masks: the only randomness is dropout
        with torch.no_grad():
            assert torch.equal(model(ids).logits, model(ids).logits)  # eval: no dropout
            model.train()
            first, second = model(ids).logits, model(ids).logits
        assert torch.equal(first, second) == (attn_dropout == 0.0)
