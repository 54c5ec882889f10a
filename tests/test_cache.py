"""MusicXLCache (cache_music_xl.py): reordering, cropping, saved state, repeated rows, size."""

import torch
from helpers import tiny_model

from hf_music_xl import MusicXLCache


def random_ids(batch, length, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(9, 298, (batch, length), generator=generator)


def test_cache_reorder_and_crop():
    model = tiny_model(segment_len=4, mem_len=4)
    ids, following = random_ids(3, 10), random_ids(3, 1, seed=9)
    rows = torch.tensor([2, 2, 0])
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
        cache.reorder_cache(rows)  # beam search keeps rows 2, 2 and 0
        reordered = model(following[rows], past_key_values=cache, use_cache=True).logits
        fresh = model(torch.cat([ids[rows], following[rows]], dim=1)).logits[:, -1:]
    torch.testing.assert_close(reordered, fresh, atol=1e-5, rtol=1e-4)
    # crop(-n) forgets the last n tokens: running on after it equals never having seen them
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
        cache.crop(-3)
        assert cache.get_seq_length() == 7 and cache.last_token().tolist() == ids[:, 6].tolist()
        again = model(ids[:, 7:], past_key_values=cache, use_cache=True).logits
    torch.testing.assert_close(again, model(ids).logits[:, 7:], atol=1e-5, rtol=1e-4)
    # crop(n), n > 0, keeps the first n tokens (n = 1 included)
    for keep in (1, 5):
        with torch.no_grad():
            cache = model(ids, use_cache=True).past_key_values
            cache.crop(keep)
            assert cache.get_seq_length() == keep and cache.last_token().tolist() == ids[:, keep - 1].tolist()
            again = model(ids[:, keep:], past_key_values=cache, use_cache=True).logits
        torch.testing.assert_close(again, model(ids).logits[:, keep:], atol=1e-5, rtol=1e-4)


def test_cache_state_round_trip_repeat_rows_and_size():
    """What stream training saves with a checkpoint (state, from_state), what sampling several sequences per prompt
    does to a cache (batch_repeat_interleave), and what it holds (nbytes)."""
    model = tiny_model(segment_len=4, mem_len=4)
    ids, following = random_ids(2, 10), random_ids(2, 3, seed=5)
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
        tensors, first = cache.state()
        restored = MusicXLCache.from_state(model.config, tensors, first)
        assert restored.get_seq_length() == 10 and len(restored.keys) == model.config.n_layer
        torch.testing.assert_close(
            model(following, past_key_values=restored).logits,
            model(torch.cat([ids, following], dim=1)).logits[:, 10:],
            atol=1e-5,
            rtol=1e-4,
        )
        assert MusicXLCache.from_state(model.config, {}, 0).get_seq_length() == 0  # a memory not written yet
        # a checkpoint saved before the caches kept counts of real tokens (stream training pads nothing)
        older = {name: tensor for name, tensor in tensors.items() if name != "counts"}
        restored_older = MusicXLCache.from_state(model.config, older, first)
        assert torch.equal(restored_older.counts, tensors["counts"]) and not restored_older.has_padding()
        cache = model(ids, use_cache=True).past_key_values
        cache.batch_repeat_interleave(2)  # rows 0, 0, 1, 1
        repeated = model(following.repeat_interleave(2, dim=0), past_key_values=cache).logits
        torch.testing.assert_close(
            repeated,
            model(torch.cat([ids, following], dim=1)).logits[:, 10:].repeat_interleave(2, dim=0),
            atol=1e-5,
            rtol=1e-4,
        )
        empty = MusicXLCache(model.config)
        empty.batch_repeat_interleave(3)  # nothing consumed yet: nothing to repeat
        assert empty.get_seq_length() == 0 and empty.nbytes() == 0
    held = [*cache.keys, *cache.values, *cache.relative, cache.states, cache.valid, cache.fingerprints, cache.counts]
    assert cache.nbytes() == sum(t.numel() * t.element_size() for t in held) > 0
