"""The TransformerXL memory: one cache for training, evaluation and generation.

Read top to bottom: the fingerprint of a row's history, then `MusicXLCache` (what generate() asks of a cache,
the running position state, segments and the memory a chunk sees, writing and recording a chunk, saving it with a
training checkpoint).

This file is copied next to saved weights for `trust_remote_code` loading: it may import only torch, transformers,
numpy and its sibling files (relative imports), and must do nothing at import time beyond defining things.
"""

import torch

from .configuration_music_xl import MusicXLConfig
from .positions_music_xl import STATE_PIECE, STATE_SIZE, STATE_TIME, STATE_TOKEN

# A fingerprint of each row's whole history: sum over tokens of (id + 1) * P^t mod Q. Additive over chunks, so it
# costs one multiply-add per token, and it tells a cache apart from one that consumed other tokens (beam search
# returns its best sequences but leaves the cache on its final beams).
FINGERPRINT_BASE, FINGERPRINT_MODULUS = 1_000_003, 2**31 - 1


def fingerprint_terms(input_ids: torch.Tensor, start: int):
    """(B, T) terms (id + 1) * P^(start + t) mod Q of tokens at absolute positions start, start + 1, ..."""
    power, powers = pow(FINGERPRINT_BASE, start, FINGERPRINT_MODULUS), []
    for _ in range(input_ids.shape[1]):
        powers.append(power)
        power = power * FINGERPRINT_BASE % FINGERPRINT_MODULUS
    powers = torch.tensor(powers, dtype=torch.long, device=input_ids.device)
    return (input_ids.long() + 1) * powers % FINGERPRINT_MODULUS


def history_fingerprint(input_ids: torch.Tensor):
    """(B,) fingerprint of whole sequences, as `MusicXLCache.fingerprint()` keeps it for the tokens it consumed."""
    return fingerprint_terms(input_ids, 0).sum(dim=1) % FINGERPRINT_MODULUS


RECORDS = ("states", "valid", "fingerprints", "counts")  # what the cache keeps per token, besides keys and values


class MusicXLCache:
    """The TransformerXL memory, kept from one forward call to the next: by generate() as its cache, by stream
    training from one step to the next, and inside one call between its segments.

    Per layer it keeps the keys and values of the consumed tokens that a later token may still see (the mem_len
    tokens before the current segment and the segment so far, at most mem_len + segment_len - 1), in a buffer with
    room to spare: a step writes in place and the buffer is compacted only when full, so a step costs the same
    however long the sequence. Keys and values are kept rather than the hidden states they come from: a new token
    then costs O(memory * d) instead of re-projecting the memory at O(memory * d^2), and the memory is one object in
    training and generation. They are stored detached: no gradient flows into earlier steps (the paper's SG(.)).

    Per token it also keeps the position rule's state after it (`compute_positions`: the next grid step, the token,
    the meter in force), whether the token was padding (attention_mask 0), how many of the row's tokens so far were
    not (segments are counted in a row's own tokens, so a left-padded row sees what it sees alone), and the
    fingerprint of each row's history.
    So crop() (assisted and prompt-lookup decoding) restores exactly the state before the removed tokens, and resuming
    generate() with sequences this cache did not consume is caught (see `MusicXLForCausalLM`).
    """

    is_compileable = False
    is_croppable = True

    def __init__(self, config):
        self.mem_len = config.mem_len
        self.segment_len = config.segment_len
        self.n_head, self.d_head = config.n_head, config.d_head
        self.keys, self.values = [], []  # per layer (B, H, capacity, Dh), detached
        # per token: the position state after it (B, capacity, STATE_SIZE); not padding, the history fingerprint and
        # the count of the row's tokens up to it that are not padding (B, capacity) each
        self.states = self.valid = self.fingerprints = self.counts = None
        self.first = 0  # absolute index (tokens since the sequence began) of buffer slot 0
        self.length = 0  # slots in use
        self.relative = []  # per layer (H, R, Dh) projected relative encodings; inference only (weights fixed)

    # -- what generate() asks of a cache

    def get_seq_length(self, layer_idx: int = 0):
        """Tokens consumed so far (generate slices a resumed prompt with it)."""
        return self.first + self.length

    def reorder_cache(self, beam_idx: torch.Tensor):
        """Beam search: keep the rows (flattened batch x beams) that survive."""
        self.batch_select_indices(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor):
        self.keys = [key.index_select(0, indices) for key in self.keys]
        self.values = [value.index_select(0, indices) for value in self.values]
        if self.states is not None:
            for name in RECORDS:
                setattr(self, name, getattr(self, name).index_select(0, indices))

    def batch_repeat_interleave(self, repeats: int):
        if self.states is not None:
            self.batch_select_indices(
                torch.arange(self.states.shape[0], device=self.states.device).repeat_interleave(repeats)
            )

    def activate_past_recording(self):
        """Assisted decoding calls this before crop(); this cache always keeps what crop needs."""

    def crop(self, max_length: int):
        """Forget the last -max_length tokens (max_length <= 0, as generate() calls it) or all but the first
        max_length (> 0)."""
        keep = self.get_seq_length() + max_length if max_length <= 0 else max_length
        needed = max(0, self.first_seen(keep))  # the first token the token at `keep` may see
        if needed < self.first or keep > self.get_seq_length():
            raise ValueError(
                f"cannot crop a cache of {self.get_seq_length()} tokens to {keep}: the memory that "
                "token needs was already dropped"
            )
        self.length = keep - self.first

    # -- running state of the position rule

    def position_state(self):
        """(B, STATE_SIZE) the position rule's state after the last token consumed, or None."""
        return self.states[:, self.length - 1] if self.length else None

    def last_token(self):
        """(B,) the last token consumed, or None."""
        return self.states[:, self.length - 1, STATE_TOKEN] if self.length else None

    def next_position(self):
        """(B,) the grid position of the next token, or None."""
        return self.states[:, self.length - 1, STATE_TIME] if self.length else None

    def fingerprint(self):
        """(B,) fingerprint of each row's consumed tokens (0 before any)."""
        if not self.length:
            return None
        return self.fingerprints[:, self.length - 1]

    # -- segments and memory

    def memory_length(self):
        """Tokens the next token attends to besides itself."""
        return self.get_seq_length() - self.first - self.visible_start(self.get_seq_length())

    def visible_start(self, position: int):
        """Buffer slot of the first token a token at absolute `position` may see."""
        return max(0, self.first_seen(position) - self.first)

    def first_seen(self, position: int):
        """Absolute index of the first token a token at `position` may see: mem_len before its segment; a segment
        earlier when rows are padded, since a padded row counts its segments from its own first token, which can
        put its segment's start up to segment_len - 1 tokens before the batch's (the mask then picks each row's)."""
        segment_start = position // self.segment_len * self.segment_len
        return segment_start - self.mem_len - (self.segment_len if self.has_padding() else 0)

    def chunks(self, new_tokens: int):
        """(begin, end) of the pieces of `new_tokens` inputs that fall in one segment each."""
        bounds, position = [], self.get_seq_length()
        begin = 0
        while begin < new_tokens:
            end = min(new_tokens, begin + self.segment_len - (position + begin) % self.segment_len)
            bounds.append((begin, end))
            begin = end
        return bounds

    def make_room(self, new_tokens: int, batch: int, device: torch.device | str):
        """Before a chunk: room for `new_tokens` more slots. When the buffer is full, what no later token can see
        is dropped and the rest moved to the front. Returns the slot of the first memory token the chunk sees."""
        keep_from = self.visible_start(self.get_seq_length())
        capacity = 0 if self.states is None else self.states.shape[1]
        if self.length + new_tokens > capacity:
            kept = self.length - keep_from
            capacity = max(capacity, 2 * (self.mem_len + self.segment_len), kept + new_tokens)
            self.keys = [self._moved(key, keep_from, capacity) for key in self.keys]
            self.values = [self._moved(value, keep_from, capacity) for value in self.values]
            if self.states is None:
                self.states = torch.zeros(batch, 0, STATE_SIZE, dtype=torch.long, device=device)
                self.fingerprints = torch.zeros(batch, 0, dtype=torch.long, device=device)
                self.counts = torch.zeros(batch, 0, dtype=torch.long, device=device)
                self.valid = torch.zeros(batch, 0, dtype=torch.bool, device=device)
            for name in RECORDS:
                setattr(self, name, self._moved(getattr(self, name), keep_from, capacity, dim=1))
            self.first, self.length, keep_from = self.first + keep_from, kept, 0
        return keep_from

    def _moved(self, buffer, keep_from, capacity, dim=2):
        """A new buffer of `capacity` slots along `dim` holding buffer's slots keep_from..length at the front."""
        shape = list(buffer.shape)
        shape[dim] = capacity
        moved = buffer.new_empty(shape)  # slots past the kept ones are written before they are read
        moved.narrow(dim, 0, self.length - keep_from).copy_(buffer.narrow(dim, keep_from, self.length - keep_from))
        return moved

    def layer_slots(self, layer_idx: int, start: int, new_tokens: int, dtype: torch.dtype):
        """Keys and values (B, H, M+T, Dh) of one layer, views of its buffer: the memory a chunk sees (from slot
        `start` on), then T = `new_tokens` slots the chunk writes its own keys and values into (`MusicXLAttention`).
        The buffers are allocated on the first chunk, in `dtype` (the projections' compute dtype)."""
        if layer_idx == len(self.keys):
            shape = (self.states.shape[0], self.n_head, self.states.shape[1], self.d_head)  # (B, H, capacity, Dh)
            self.keys.append(torch.empty(shape, dtype=dtype, device=self.states.device))
            self.values.append(torch.empty(shape, dtype=dtype, device=self.states.device))
        end = self.length + new_tokens
        return self.keys[layer_idx][:, :, start:end], self.values[layer_idx][:, :, start:end]

    def append_tokens(
        self, input_ids: torch.Tensor, states: torch.Tensor, valid: torch.Tensor, counts: torch.Tensor | None = None
    ):
        """After a chunk has been written in every layer: record its tokens (B, T), the position states after them
        (B, T, STATE_SIZE), which are not padding (B, T) and their counts (`real_counts`, computed when not given),
        and move past them."""
        counts = self.real_counts(valid) if counts is None else counts
        end = self.length + input_ids.shape[1]
        terms = fingerprint_terms(input_ids, self.get_seq_length())
        previous = self.fingerprint() if self.length else torch.zeros_like(terms[:, 0])
        self.fingerprints[:, self.length : end] = (previous[:, None] + terms.cumsum(dim=1)) % FINGERPRINT_MODULUS
        self.states[:, self.length : end] = states
        self.valid[:, self.length : end] = valid
        self.counts[:, self.length : end] = counts
        self.length = end

    def real_counts(self, valid: torch.Tensor):
        """(B, T) for the next T tokens, not padding where `valid` (B, T): how many of the row's tokens up to each
        are not padding (a token's index in its row's own tokens is its count - 1)."""
        before = self.counts[:, self.length - 1, None] if self.length else 0
        return before + valid.long().cumsum(dim=1)

    def key_valid(self, start: int):
        """(B, M) False where a memory token from slot `start` on was padding."""
        return self.valid[:, start : self.length]

    def key_counts(self, start: int):
        """(B, M) the count (`real_counts`) of each memory token from slot `start` on."""
        return self.counts[:, start : self.length]

    def key_pieces(self, start: int):
        """(B, M) the piece (count of xxbos) of each memory token from slot `start` on."""
        return self.states[:, start : self.length, STATE_PIECE]

    def state(self):
        """Tensors (trimmed to the slots in use) and the absolute index of the first, to save this memory with a
        training checkpoint; `from_state` rebuilds it."""
        if self.states is None:
            return {}, 0
        tensors = {name: getattr(self, name)[:, : self.length].contiguous() for name in RECORDS}
        for i, (key, value) in enumerate(zip(self.keys, self.values)):
            tensors[f"keys.{i}"], tensors[f"values.{i}"] = (
                key[:, :, : self.length].contiguous(),
                value[:, :, : self.length].contiguous(),
            )
        return tensors, self.first

    @classmethod
    def from_state(cls, config: MusicXLConfig, tensors: dict[str, torch.Tensor], first: int):
        cache = cls(config)
        if tensors:
            if "counts" not in tensors:  # saved before the counts: by stream training, which pads nothing
                length = tensors["states"].shape[1]
                counts = torch.arange(first + 1, first + length + 1, device=tensors["states"].device)
                tensors = {**tensors, "counts": counts.expand(tensors["states"].shape[0], -1).contiguous()}
            for name in RECORDS:
                setattr(cache, name, tensors[name])
            layers = sum(name.startswith("keys.") for name in tensors)
            cache.keys = [tensors[f"keys.{i}"] for i in range(layers)]
            cache.values = [tensors[f"values.{i}"] for i in range(layers)]
            cache.first, cache.length = first, tensors["states"].shape[1]
        return cache

    def nbytes(self):
        """Bytes held: key/value buffers, per-token records and relative encodings (constant once allocated)."""
        tensors = [*self.keys, *self.values, *self.relative]
        if self.states is not None:
            tensors += [getattr(self, name) for name in RECORDS]
        return sum(t.numel() * t.element_size() for t in tensors)

    def has_padding(self):
        """Whether some row had padding (its count of tokens falls behind the tokens consumed), even padding that is
        no longer in the buffer: its segments stay shifted."""
        return bool(self.length) and bool((self.counts[:, self.length - 1] != self.get_seq_length()).any())


__all__ = ["MusicXLCache", "fingerprint_terms", "history_fingerprint"]
