"""MusicXL: a TransformerXL (Dai et al. 2019) music language model over the musicautobot vocabulary.

Read top to bottom: beat positions from token ids, the attention mask, sinusoidal relative encodings and the
relative shift, the memory (one cache for training, evaluation and generation), the attention layer, the block,
the base model (segments with memory) and the causal LM head.

What a token sees is one rule, everywhere: a sequence is cut into segments of `segment_len` tokens counted from
its first token, and a token attends to the earlier tokens of its segment and to the `mem_len` tokens before the
segment (TransformerXL's memory). Whether a sequence is fed in one call, in chunks resuming a `MusicXLCache`, one
token at a time by `generate()` or step after step by stream training, every token gets the same context, so
the cache equals a full recomputation at any length.

This file is copied next to saved weights for `trust_remote_code` loading: it may import only torch,
transformers, numpy and its sibling files (relative imports), and must do nothing at import time beyond
defining classes and functions.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils.generic import can_return_tuple

from .configuration_music_xl import MusicXLConfig


# ----------------------------------------------------------------------------------------------------------------
# Beat positions


def compute_beat_positions(input_ids, config, start_position=None, previous_token=None):
    """Grid position of every token, by the tokenizer's rule, and the position the next token would get.

    A duration token directly after `xxsep` is a wait. A token's position is the sum of the waits strictly before
    it since the last `xxbos` (the `xxbos` itself is at 0), so `xxsep d2` keep the old position and the token after
    them carries the new one: `xxsep(0) d2(0) n71(2) d2(2) xxsep(2) d2(2) n71(4)`.

    `start_position` (B,) and `previous_token` (B,) continue a sequence whose earlier tokens were already consumed
    (the cache keeps both); without them the input starts at position 0.

    Returns positions (B, T) and next_position (B,), both long.
    """
    batch, length = input_ids.shape
    waits = token_waits(input_ids, config, previous_token)  # (B, T)
    before = waits.cumsum(dim=1) - waits  # sum of the waits strictly before each token
    if start_position is not None:
        before = before + start_position[:, None]
    # restart at every xxbos: subtract the running sum found at the latest xxbos at or before each token
    index = torch.arange(length, device=input_ids.device).expand(batch, length)
    last_bos = torch.where(input_ids == config.bos_token_id, index, -1).cummax(dim=1).values  # (B, T), -1 = none
    at_last_bos = before.gather(1, last_bos.clamp(min=0))
    positions = before - torch.where(last_bos >= 0, at_last_bos, 0)
    return positions, positions[:, -1] + waits[:, -1]


def token_waits(input_ids, config, previous_token=None):
    """(B, T) the steps each token moves time on: its duration if it follows `xxsep`, else 0. `previous_token`
    (B,) is the token before the first (None: no token)."""
    if previous_token is None:
        previous_token = input_ids.new_full((input_ids.shape[0],), -1)
    previous = torch.cat([previous_token[:, None], input_ids[:, :-1]], dim=1)  # (B, T) token before each token
    duration = input_ids - config.duration_offset
    is_wait = (previous == config.sep_token_id) & (duration >= 0) & (duration < config.num_durations)
    return torch.where(is_wait, duration, 0)


# The running state of the position rule after a token, one row of 5 per sequence: the grid step of the next token,
# the token itself (a wait is a duration after xxsep), the time signature in force (its token id), and where that
# meter took effect: its time (a bar line) and the bar index there.
STATE_TIME, STATE_TOKEN, STATE_METER, STATE_ANCHOR, STATE_BAR = range(5)


def meter_lengths(config):
    """(grid steps of a bar, of a beat) of each time signature of the vocabulary, in id order. A beat is the
    denominator's note, or three of them in compound meters (6/8, 9/8, 12/8), so that 3/4 and 6/8 differ."""
    whole = 4 * config.steps_per_beat  # grid steps in a whole note
    lengths = []
    for num, den in config.meters:
        compound = den >= 8 and num > 3 and num % 3 == 0
        lengths.append((max(1, round(num * whole / den)), max(1, round((3 if compound else 1) * whole / den))))
    return lengths


def bar_and_beat_lengths(config, device):
    """(V,) grid steps of a bar and of a beat for each token id: the meter's for time signature tokens, 4/4's for
    every other id (so a state without a time signature yet reads as 4/4)."""
    whole = 4 * config.steps_per_beat
    bar = torch.full((config.vocab_size,), whole, dtype=torch.long, device=device)
    beat = torch.full((config.vocab_size,), whole // 4, dtype=torch.long, device=device)
    lengths = meter_lengths(config)
    if lengths:
        meters = slice(config.meter_offset, config.meter_offset + len(lengths))
        bar[meters] = torch.tensor([b for b, _ in lengths], dtype=torch.long, device=device)
        beat[meters] = torch.tensor([b for _, b in lengths], dtype=torch.long, device=device)
    return bar, beat


def position_table_sizes(config):
    """(beats in the longest bar, steps in the longest beat) over the vocabulary's meters (4/4's at least): the
    sizes of the beat and step embeddings of the meter scheme."""
    lengths = meter_lengths(config) + [(4 * config.steps_per_beat, config.steps_per_beat)]
    return max(bar // beat for bar, beat in lengths), max(beat for _, beat in lengths)


def compute_positions(input_ids, config, state=None):
    """Position features of every token and the running state after each, by the tokenizer's rule.

    Time: `compute_beat_positions` (waits since the last `xxbos`). Meter: a piece starts in 4/4 at bar 0; a time
    signature token takes effect at its own time, where a bar starts (the bars before it counted up, a short last
    one included), and the token itself counts in the new meter; `xxbos` starts over. The features are, with
    `config.position_scheme` "meter", (bar, beat within the bar, step within the beat), and with "grid" (bar of
    `steps_per_bar` steps, step within it, 0).

    state: (B, 5) long, the state after the last token consumed (the cache keeps it), or None at a start.
    Returns features (B, T, 3) and states (B, T, 5), both long.
    """
    batch, length = input_ids.shape
    device = input_ids.device
    if state is None:
        state = torch.zeros(batch, 5, dtype=torch.long, device=device)
        state[:, STATE_TOKEN] = -1
    times, _ = compute_beat_positions(input_ids, config, state[:, STATE_TIME], state[:, STATE_TOKEN])
    bar_len, beat_len = bar_and_beat_lengths(config, device)
    is_bos = input_ids == config.bos_token_id
    is_meter = (input_ids >= config.meter_offset) & (input_ids < config.meter_offset + len(config.meters))
    # the meter, its time and its bar only change at xxbos and time signatures: walk those columns only (few)
    meter, anchor, bar = state[:, STATE_METER], state[:, STATE_ANCHOR], state[:, STATE_BAR]
    meter = torch.where(meter >= config.meter_offset, meter, 0)  # 0: not a meter token, read as 4/4
    in_force = [torch.stack([meter, anchor, bar], dim=1)]  # (B, 3) before each event column, then after it
    event_columns = (is_bos | is_meter).any(dim=0)
    for column in event_columns.nonzero().flatten().tolist():
        time = times[:, column]
        bars_so_far = bar + torch.div(time - anchor + bar_len[meter] - 1, bar_len[meter], rounding_mode="floor")
        here_meter, here_bos = is_meter[:, column], is_bos[:, column]
        meter = torch.where(here_meter, input_ids[:, column], torch.where(here_bos, 0, meter))
        anchor = torch.where(here_meter, time, torch.where(here_bos, 0, anchor))
        bar = torch.where(here_meter, bars_so_far, torch.where(here_bos, 0, bar))
        in_force.append(torch.stack([meter, anchor, bar], dim=1))
    which = event_columns.long().cumsum(dim=0)  # (T,) entry of in_force for each token
    meter, anchor, bar = torch.stack(in_force, dim=1)[:, which].unbind(dim=-1)  # each (B, T)
    since = times - anchor
    bars, steps = bar + since // bar_len[meter], since % bar_len[meter]  # (B, T)
    if config.position_scheme == "meter":
        features = torch.stack([bars, steps // beat_len[meter], steps % beat_len[meter]], dim=-1)
    else:
        grid = config.steps_per_bar
        features = torch.stack([times // grid, times % grid, torch.zeros_like(times)], dim=-1)
    after = times + token_waits(input_ids, config, state[:, STATE_TOKEN])  # time after each token (an xxbos next resets it)
    states = torch.stack([after, input_ids, meter, anchor, bar], dim=-1)
    return features, states


# ----------------------------------------------------------------------------------------------------------------
# Attention masks


def attention_block_mask(query_len, memory_len, window, device, key_valid=None):
    """Where a query may NOT attend: (T, M + T) bool over [memory, current chunk] keys, or (B, T, M + T) with
    `key_valid` (B, M + T) (False for padding, i.e. attention_mask 0).

    window == 0: the causal mask. window = s >= 1 (training only): the chunk is cut into blocks of s positions and
    a query sees the memory and the earlier blocks but not its own block (musicautobot's window mask); the first
    position of the chunk stays visible. Padding keys are never seen, except that a query always sees itself, so
    that no row is empty (a padded query's output is never used).
    """
    query = torch.arange(query_len, device=device)[:, None]
    key = torch.arange(query_len, device=device)[None, :]
    if window == 0:
        blocked = key > query
    else:
        blocked = key // window >= query // window
        blocked[:, 0] = False
    visible_memory = torch.zeros(query_len, memory_len, dtype=torch.bool, device=device)
    blocked = torch.cat([visible_memory, blocked], dim=1)  # (T, M+T)
    if key_valid is None:
        return blocked
    blocked = blocked | ~key_valid[:, None, :]  # (B, T, M+T)
    is_self = torch.zeros_like(blocked[0])
    is_self[:, memory_len:] = torch.eye(query_len, dtype=torch.bool, device=device)
    return blocked & ~(is_self & blocked.all(dim=-1, keepdim=True))


# ----------------------------------------------------------------------------------------------------------------
# Relative positions


def sinusoid_encodings(length, d_model, device, dtype):
    """(length, d_model) sinusoidal encodings of the distances length-1, ..., 1, 0 (descending, the order the
    relative shift expects: the last K rows encode distances K-1..0)."""
    distance = torch.arange(length - 1, -1, -1, device=device, dtype=torch.float32)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d_model, 2, device=device, dtype=torch.float32) / d_model))
    angles = distance[:, None] * inv_freq[None, :]  # (length, d_model / 2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).to(dtype)


class RelativeShift(torch.autograd.Function):
    """(B, H, T, K+1) scores by distance, whose first row holds a zero column -> (B, H, T, K) by key: the flat
    buffer read as (K+1, T) without its first row (a free view). Its backward writes the gradient back into that
    layout with one copy; autograd's own backward of the slice would first zero the whole (B, H, T, K+1) buffer."""

    @staticmethod
    def forward(ctx, padded):
        batch, heads, query_len, width = padded.shape
        return padded.view(batch, heads, width, query_len)[:, :, 1:].view(batch, heads, query_len, width - 1)

    @staticmethod
    def backward(ctx, grad):
        batch, heads, query_len, key_len = grad.shape
        grad_padded = grad.new_empty(batch, heads, key_len + 1, query_len)
        grad_padded[:, :, 0].zero_()  # the dropped row: garbage of the shift, no gradient
        grad_padded[:, :, 1:].copy_(grad.reshape(batch, heads, key_len, query_len))
        return grad_padded.view(batch, heads, query_len, key_len + 1)


def relative_position_scores(query, relative):
    """Position scores of every query against every key: query (B, H, T, Dh) (bias added, pre-scaled), relative
    (H, K, Dh) encodings of the distances K-1..0 -> (B, H, T, K) with out[..., i, j] = query_i . R_(M+i-j), where the
    last T of the K keys are the queries and M = K - T. Entries for future keys (j > M + i) are garbage: mask them.

    Dai et al.'s relative shift: scores by distance with a zero column in front, read as (K+1, T) and cut, shift
    row i left by T-1-i. Here the zero column comes from a zero encoding row, so the shift is a free view.
    """
    if query.shape[2] == 1:  # one query (generation): distance order is already key order
        return torch.matmul(query, relative.transpose(1, 2))
    padded = torch.matmul(query, F.pad(relative, (0, 0, 1, 0)).transpose(1, 2))  # (B, H, T, K+1), column 0 zero
    return RelativeShift.apply(padded)


# ----------------------------------------------------------------------------------------------------------------
# The memory


# A fingerprint of each row's whole history: sum over tokens of (id + 1) * P^t mod Q. Additive over chunks, so it
# costs one multiply-add per token, and it tells a cache apart from one that consumed other tokens (beam search
# returns its best sequences but leaves the cache on its final beams).
FINGERPRINT_BASE, FINGERPRINT_MODULUS = 1_000_003, 2**31 - 1


def fingerprint_terms(input_ids, start):
    """(B, T) terms (id + 1) * P^(start + t) mod Q of tokens at absolute positions start, start + 1, ..."""
    power, powers = pow(FINGERPRINT_BASE, start, FINGERPRINT_MODULUS), []
    for _ in range(input_ids.shape[1]):
        powers.append(power)
        power = power * FINGERPRINT_BASE % FINGERPRINT_MODULUS
    powers = torch.tensor(powers, dtype=torch.long, device=input_ids.device)
    return (input_ids.long() + 1) * powers % FINGERPRINT_MODULUS


def history_fingerprint(input_ids):
    """(B,) fingerprint of whole sequences, as `MusicXLCache.fingerprint()` keeps it for the tokens it consumed."""
    return fingerprint_terms(input_ids, 0).sum(dim=1) % FINGERPRINT_MODULUS


RECORDS = ("states", "valid", "fingerprints")  # what the cache keeps per token, besides keys and values


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
    the meter in force), whether the token was padding (attention_mask 0), and the fingerprint of each row's history. So crop()
    (assisted and prompt-lookup decoding) restores exactly the state before the removed tokens, and resuming
    generate() with sequences this cache did not consume is caught (see `MusicXLForCausalLM`).
    """

    is_compileable = False
    is_croppable = True

    def __init__(self, config):
        self.mem_len = config.mem_len
        self.segment_len = config.segment_len
        self.keys, self.values = [], []  # per layer (B, H, capacity, Dh), detached
        # per token: the position state after it (B, capacity, 5), not padding and the history fingerprint so far
        # (B, capacity) each
        self.states = self.valid = self.fingerprints = None
        self.first = 0  # absolute index (tokens since the sequence began) of buffer slot 0
        self.length = 0  # slots in use
        self.relative = []  # per layer (H, R, Dh) projected relative encodings; inference only (weights fixed)

    # -- what generate() asks of a cache

    def get_seq_length(self, layer_idx=0):
        """Tokens consumed so far (generate slices a resumed prompt with it)."""
        return self.first + self.length

    def reorder_cache(self, beam_idx):
        """Beam search: keep the rows (flattened batch x beams) that survive."""
        self.batch_select_indices(beam_idx)

    def batch_select_indices(self, indices):
        self.keys = [key.index_select(0, indices) for key in self.keys]
        self.values = [value.index_select(0, indices) for value in self.values]
        if self.states is not None:
            for name in RECORDS:
                setattr(self, name, getattr(self, name).index_select(0, indices))

    def batch_repeat_interleave(self, repeats):
        if self.states is not None:
            self.batch_select_indices(torch.arange(self.states.shape[0], device=self.states.device).repeat_interleave(repeats))

    def activate_past_recording(self):
        """Assisted decoding calls this before crop(); this cache always keeps what crop needs."""

    def crop(self, max_length):
        """Forget the last -max_length tokens (max_length <= 0, as generate() calls it) or all but the first
        max_length (> 0)."""
        keep = self.get_seq_length() + max_length if max_length <= 0 else max_length
        needed = max(0, keep // self.segment_len * self.segment_len - self.mem_len)  # first token `keep` sees
        if needed < self.first or keep > self.get_seq_length():
            raise ValueError(f"cannot crop a cache of {self.get_seq_length()} tokens to {keep}: the memory that "
                             "token needs was already dropped")  # fmt: skip
        self.length = keep - self.first

    # -- running state of the position rule

    def position_state(self):
        """(B, 5) the position rule's state after the last token consumed, or None."""
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

    def visible_start(self, position):
        """Buffer slot of the first token seen by a token at absolute `position`: mem_len before its segment."""
        segment_start = position // self.segment_len * self.segment_len
        return max(0, segment_start - self.mem_len - self.first)

    def chunks(self, new_tokens):
        """(begin, end) of the pieces of `new_tokens` inputs that fall in one segment each."""
        bounds, position = [], self.get_seq_length()
        begin = 0
        while begin < new_tokens:
            end = min(new_tokens, begin + self.segment_len - (position + begin) % self.segment_len)
            bounds.append((begin, end))
            begin = end
        return bounds

    def make_room(self, new_tokens, batch, device):
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
                self.states = torch.zeros(batch, 0, 5, dtype=torch.long, device=device)
                self.fingerprints = torch.zeros(batch, 0, dtype=torch.long, device=device)
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

    def layer_memory(self, layer_idx, start):
        """Keys and values (B, H, M, Dh) of the memory a chunk sees in one layer (views), or None."""
        if start == self.length or layer_idx >= len(self.keys):
            return None
        return self.keys[layer_idx][:, :, start : self.length], self.values[layer_idx][:, :, start : self.length]

    def write(self, layer_idx, key, value):
        """Store a chunk's keys and values (B, H, T, Dh) after the memory of one layer (detached)."""
        if layer_idx == len(self.keys):  # first chunk: allocate like the keys
            capacity = self.states.shape[1]
            self.keys.append(key.new_empty(*key.shape[:2], capacity, key.shape[3]))
            self.values.append(value.new_empty(*value.shape[:2], capacity, value.shape[3]))
        end = self.length + key.shape[2]
        self.keys[layer_idx][:, :, self.length : end] = key.detach()
        self.values[layer_idx][:, :, self.length : end] = value.detach()

    def append_tokens(self, input_ids, states, valid):
        """After a chunk has been written in every layer: record its tokens (B, T), the position states after them
        (B, T, 5) and which are not padding (B, T), and move past them."""
        end = self.length + input_ids.shape[1]
        terms = fingerprint_terms(input_ids, self.get_seq_length())
        previous = self.fingerprint() if self.length else torch.zeros_like(terms[:, 0])
        self.fingerprints[:, self.length : end] = (previous[:, None] + terms.cumsum(dim=1)) % FINGERPRINT_MODULUS
        self.states[:, self.length : end] = states
        self.valid[:, self.length : end] = valid
        self.length = end

    def key_valid(self, start):
        """(B, M) False where a memory token from slot `start` on was padding."""
        return self.valid[:, start : self.length]

    def state(self):
        """Tensors (trimmed to the slots in use) and the absolute index of the first, to save this memory with a
        training checkpoint; `from_state` rebuilds it."""
        if self.states is None:
            return {}, 0
        tensors = {name: getattr(self, name)[:, : self.length].contiguous() for name in RECORDS}
        for i, (key, value) in enumerate(zip(self.keys, self.values)):
            tensors[f"keys.{i}"], tensors[f"values.{i}"] = key[:, :, : self.length].contiguous(), value[:, :, : self.length].contiguous()
        return tensors, self.first

    @classmethod
    def from_state(cls, config, tensors, first):
        cache = cls(config)
        if tensors:
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
        return bool(self.length) and not bool(self.valid[:, : self.length].all())


# ----------------------------------------------------------------------------------------------------------------
# The transformer


class MusicXLAttention(nn.Module):
    """Multi-head attention with TransformerXL relative positions, written out.

    score(i, j) = ((q_i + u) . k_j + (q_i + v) . R_{i-j}) / sqrt(d_head). The position term is computed for all
    distances and shifted to key order (`relative_position_scores`); the content term is added to it in the same
    batched matmul (baddbmm); the softmax runs in float32 whatever the compute dtype.

    Written out rather than through torch's scaled_dot_product_attention: the relative term is a full (T, M+T) bias
    per head, which sends SDPA to its unfused math kernel, and there, measured on CPU (scripts/bench_model.py),
    this path is faster in float32 and much faster in bfloat16 (SDPA's math kernel computes a bf16 bias in
    float32); on a GPU it is the usual eager attention. It also gives the probabilities for output_attentions.
    """

    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.d_head = config.n_head, config.d_head
        inner = config.n_head * config.d_head
        self.qkv_proj = nn.Linear(config.d_model, 3 * inner, bias=False)
        self.position_proj = nn.Linear(config.d_model, inner, bias=False)  # W_{k,R} of the paper
        self.out_proj = nn.Linear(inner, config.d_model, bias=False)
        self.attn_dropout = config.attn_dropout

    def split_heads(self, x):
        """(B, T, H * Dh) -> (B, H, T, Dh)"""
        return x.view(x.shape[0], x.shape[1], self.n_head, self.d_head).transpose(1, 2)

    def project_positions(self, encodings):
        """(R, D) sinusoid encodings -> (H, R, Dh) projected relative encodings."""
        return self.position_proj(encodings).view(-1, self.n_head, self.d_head).transpose(0, 1)

    def forward(self, x, relative, content_bias, position_bias, mask, memory=None, output_attentions=False):
        # x: (B, T, D) normalised; relative: (H, M+T, Dh); biases u, v: (H, Dh); mask: (T, M+T) or (B, 1, T, M+T)
        # bool, True where a key is not seen, or None; memory: keys and values (B, H, M, Dh) of earlier tokens.
        # Returns the output (B, T, D), this chunk's keys and values (for the memory) and the probabilities or None.
        batch, length, _ = x.shape
        query, key, value = (self.split_heads(t) for t in self.qkv_proj(x).chunk(3, dim=-1))  # (B, H, T, Dh)
        keys, values = key, value
        if memory is not None:
            keys = torch.cat([memory[0].to(key.dtype), key], dim=2)  # (B, H, M+T, Dh)
            values = torch.cat([memory[1].to(value.dtype), value], dim=2)
        scale = 1.0 / math.sqrt(self.d_head)
        # biases u, v are float32 parameters: cast them so the matmuls stay in the compute dtype (bf16 autocast)
        position_query = (query + position_bias[:, None].to(query.dtype)) * scale
        content_query = (query + content_bias[:, None].to(query.dtype)) * scale
        scores = relative_position_scores(position_query, relative).to(query.dtype)  # (B, H, T, M+T)
        key_len = keys.shape[2]
        scores = torch.baddbmm(scores.reshape(-1, length, key_len), content_query.reshape(-1, length, self.d_head),
                               keys.reshape(-1, key_len, self.d_head).transpose(1, 2))  # fmt: skip
        scores = scores.view(batch, self.n_head, length, key_len)
        if mask is not None:
            scores.masked_fill_(mask, float("-inf"))  # in place: baddbmm's backward does not need its output
        if scores.dtype == torch.float32:
            probabilities = scores.softmax(dim=-1)  # (B, H, T, M+T) (with dtype= torch would copy even here)
        else:  # bf16/fp16 autocast: the softmax in float32, its result back in the compute dtype
            probabilities = torch.softmax(scores, dim=-1, dtype=torch.float32).to(values.dtype)
        if self.training and self.attn_dropout:
            probabilities = F.dropout(probabilities, self.attn_dropout, training=True)
        out = torch.matmul(probabilities, values)  # (B, H, T, Dh)
        out = out.transpose(1, 2).reshape(batch, length, self.n_head * self.d_head)  # (B, T, H * Dh)
        return self.out_proj(out), (key, value), probabilities if output_attentions else None


class MusicXLBlock(GradientCheckpointingLayer):
    """Pre-LayerNorm block (as GPT-2; the reference was post-LayerNorm): x + attn(LN(x)), then x + ff(LN(x)).
    The memory comes in as plain tensors and the block writes nothing, so gradient checkpointing can replay it."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.attention = MusicXLAttention(config, layer_idx)
        self.ff_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.ff_in = nn.Linear(config.d_model, config.d_inner)
        self.ff_out = nn.Linear(config.d_inner, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        # GPT-2's init: the two projections that write into the residual stream start smaller (_init_weights)
        self.attention.out_proj.writes_residual = True
        self.ff_out.writes_residual = True

    def forward(self, x, relative, content_bias, position_bias, mask, memory=None, output_attentions=False):
        attended, key_value, probabilities = self.attention(self.attn_norm(x), relative, content_bias, position_bias,
                                                            mask, memory, output_attentions)  # fmt: skip
        x = x + self.dropout(attended)
        x = x + self.dropout(self.ff_out(F.gelu(self.ff_in(self.ff_norm(x)))))
        return x, key_value, probabilities


class MusicXLPreTrainedModel(PreTrainedModel):
    config_class = MusicXLConfig
    base_model_prefix = "transformer"
    main_input_name = "input_ids"
    _no_split_modules = ["MusicXLBlock"]
    _skip_keys_device_placement = ["past_key_values"]
    supports_gradient_checkpointing = True
    # forward takes **kwargs, so the Trainer passes num_items_in_batch (non -100 labels over the whole
    # accumulated, all-process batch) and the loss is sum / num_items_in_batch: an exact token mean under
    # gradient accumulation and DDP. Called directly (no num_items_in_batch) the loss is the plain token mean.
    accepts_loss_kwargs = True

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)  # linear and embedding weights N(0, initializer_range), LayerNorm 1/0
        if getattr(module, "writes_residual", False):
            # GPT-2: scale the projections that write into the residual stream by 1/sqrt(number of them). Flagged on
            # the Linear itself: transformers skips modules that own no parameters directly (the block) in
            # custom code, so a branch on MusicXLBlock would never run.
            std = self.config.initializer_range / math.sqrt(2 * self.config.n_layer)
            init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, MusicXLModel):
            init.zeros_(module.content_bias)
            init.zeros_(module.position_bias)

    @classmethod
    def _supports_default_dynamic_cache(cls):
        return False  # our cache is MusicXLCache; generate must not build a DynamicCache


class MusicXLModel(MusicXLPreTrainedModel):
    """Token + beat-position embeddings, then the TransformerXL blocks run over segments with memory."""

    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        if config.encode_position and config.position_scheme == "meter":
            beats, steps = position_table_sizes(config)
            self.embed_beat = nn.Embedding(beats, config.d_model)  # beat within the bar
            self.embed_step = nn.Embedding(steps, config.d_model)  # step within the beat
        elif config.encode_position:
            self.embed_beat = nn.Embedding(config.steps_per_bar, config.d_model)  # step within a grid bar
        if config.encode_position and config.max_bars:
            self.embed_bar = nn.Embedding(config.max_bars, config.d_model)  # bar of the piece, wrapped at max_bars
        self.content_bias = nn.Parameter(torch.zeros(config.n_head, config.d_head))  # u, shared by all layers
        self.position_bias = nn.Parameter(torch.zeros(config.n_head, config.d_head))  # v, shared by all layers
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(MusicXLBlock(config, i) for i in range(config.n_layer))
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def embed(self, input_ids, features):
        """(B, T) ids and (B, T, 3) position features (`compute_positions`) -> (B, T, D)"""
        x = self.embed_tokens(input_ids)
        if self.config.encode_position:
            bar, beat, step = features.unbind(dim=-1)
            x = x + self.embed_beat(beat.clamp(0, self.embed_beat.num_embeddings - 1))
            if self.config.position_scheme == "meter":
                x = x + self.embed_step(step.clamp(0, self.embed_step.num_embeddings - 1))
            if self.config.max_bars:
                x = x + self.embed_bar(bar % self.config.max_bars)
        return self.dropout(x)

    def sample_window(self):
        """Window-mask size for this batch: with probability mask_p in training 1..mask_steps, else 0 (causal)."""
        config = self.config
        if not self.training or config.mask_p == 0 or config.mask_steps == 0:
            return 0
        if torch.rand(()).item() >= config.mask_p:
            return 0
        return int(torch.randint(1, config.mask_steps + 1, ()).item())

    def relative_encodings(self, cache, dtype, device):
        """Per layer (H, R, Dh) projected encodings of the distances R-1..0, R = mem_len + segment_len (the longest
        span a token sees). Kept in the cache when no gradient is needed, so generation steps reuse them."""
        if cache.relative and not torch.is_grad_enabled():
            return cache.relative
        encodings = sinusoid_encodings(self.config.mem_len + self.config.segment_len, self.config.d_model, device, dtype)
        tables = [layer.attention.project_positions(encodings) for layer in self.layers]
        if not torch.is_grad_enabled():
            cache.relative = tables
        return tables

    def chunk_mask(self, query_len, memory_len, window, key_valid, device):
        """Keys a chunk's queries do not see: (T, M+T) or (B, 1, T, M+T) bool, or None when they see every key."""
        if not window and query_len == 1 and key_valid is None:
            return None
        blocked = attention_block_mask(query_len, memory_len, window, device, key_valid)
        return blocked[:, None] if blocked.dim() == 3 else blocked  # (B, 1, T, M+T): one mask for all heads

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        past_key_values=None,
        use_cache=None,
        beat_positions=None,
        inputs_embeds=None,
        output_attentions=None,
        output_hidden_states=None,
        **kwargs,
    ):
        r"""
        input_ids (`torch.LongTensor` of shape `(batch, length)`): any length; runs in segments of
            `config.segment_len` (counted from the sequence's first token), each attending to the memory of the
            `config.mem_len` tokens before it.
        attention_mask (`torch.LongTensor` of shape `(batch, past + length)` or `(batch, length)`, *optional*): 0 for
            padding (e.g. left padding of batched prompts). Padding is never attended to and moves no beat position.
        past_key_values (`MusicXLCache`, *optional*): the memory of earlier calls, continued in place: a generation
            cache, or stream training's memory from the previous step.
        use_cache (`bool`, *optional*, defaults to False): return the memory (`past_key_values`, a new
            `MusicXLCache` when none was given) to continue from. generate() passes it from `config.use_cache`.
        beat_positions (`torch.LongTensor` of shape `(batch, length, 3)`, *optional*): position features (bar, beat
            within the bar, step within the beat; `compute_positions`, the tokenizer's `beat_positions`); computed
            from `input_ids` by the tokenizer's rule (continuing the cache's running state) when not given.
        output_attentions, output_hidden_states (`bool`, *optional*): also return every layer's attention
            probabilities (over the keys from the first memory token this call sees to its last token) and every
            layer's input plus the final output.
        """
        config = self.config
        if inputs_embeds is not None:
            raise ValueError("MusicXL computes beat positions from token ids: pass input_ids, not inputs_embeds")
        if input_ids is None:
            raise ValueError("input_ids is required")
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        if past_key_values is not None and not isinstance(past_key_values, MusicXLCache):
            raise TypeError(f"past_key_values must be a MusicXLCache, got {type(past_key_values).__name__}")
        cache = past_key_values if past_key_values is not None else MusicXLCache(config)
        batch, length = input_ids.shape

        valid = None  # (B, L) False for padding, or None: no padding anywhere
        if attention_mask is not None:
            valid = attention_mask[:, -length:].bool()
        has_padding = (valid is not None and not bool(valid.all())) or cache.has_padding()
        if valid is None:
            valid = torch.ones_like(input_ids, dtype=torch.bool)
        # padding is not a wait and is no token before a wait: read it as xxpad for the position rule
        rule_ids = input_ids.masked_fill(~valid, config.pad_token_id)
        features, states = compute_positions(rule_ids, config, cache.position_state())  # (B, L, 3), (B, L, 5)
        x = self.embed(input_ids, features if beat_positions is None else beat_positions)  # (B, L, D)

        window = self.sample_window()
        relative = self.relative_encodings(cache, x.dtype, x.device)
        outputs, layer_inputs, attentions = [], [], []
        for begin, end in cache.chunks(length):
            chunk = x[:, begin:end]  # (B, T, D)
            start = cache.make_room(end - begin, batch, x.device)
            memory_len = cache.length - start
            key_valid = torch.cat([cache.key_valid(start), valid[:, begin:end]], dim=1) if has_padding else None
            mask = self.chunk_mask(end - begin, memory_len, window, key_valid, x.device)
            key_start = cache.first + start  # absolute index of the chunk's first key (for attention outputs)
            chunk_inputs, chunk_attentions = [], []
            for i, layer in enumerate(self.layers):
                chunk_inputs.append(chunk)
                table = relative[i][:, -(memory_len + end - begin) :]
                chunk, key_value, probabilities = layer(chunk, table, self.content_bias, self.position_bias, mask,
                                                        cache.layer_memory(i, start), output_attentions)  # fmt: skip
                cache.write(i, *key_value)
                chunk_attentions.append(probabilities)
            cache.append_tokens(input_ids[:, begin:end], states[:, begin:end], valid[:, begin:end])
            outputs.append(chunk)
            layer_inputs.append(chunk_inputs)
            attentions.append((key_start, chunk_attentions))

        hidden = self.norm(joined(outputs))  # (B, L, D)
        hidden_states = None
        if output_hidden_states:
            per_layer = zip(*layer_inputs)  # layer -> its input of every chunk
            hidden_states = tuple(joined(inputs) for inputs in per_layer) + (hidden,)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden,
            past_key_values=cache if use_cache or past_key_values is not None else None,
            hidden_states=hidden_states,
            attentions=self.gather_attentions(attentions) if output_attentions else None,
        )

    def gather_attentions(self, attentions):
        """Per layer (B, H, L, K): each chunk's probabilities placed at the columns of its keys, over the keys from
        the first one this call saw to the last token; keys a chunk could not see are 0. (One chunk: its own
        probabilities, in the autograd graph; several: a copy assembled from theirs.)"""
        if len(attentions) == 1:
            return tuple(attentions[0][1])
        first_key = attentions[0][0]
        last_start, last_chunk = attentions[-1]
        key_len = last_start + last_chunk[0].shape[-1] - first_key  # the last chunk's keys end at the last token
        per_layer = []
        for layer in range(len(self.layers)):
            rows = []
            for key_start, chunk_attentions in attentions:
                probabilities = chunk_attentions[layer]  # (B, H, T, K_chunk)
                before = key_start - first_key
                after = key_len - before - probabilities.shape[-1]
                rows.append(F.pad(probabilities, (before, after)))
            per_layer.append(torch.cat(rows, dim=2))
        return tuple(per_layer)


def joined(chunks):
    """Chunk outputs (B, T, ...) joined along the sequence; a single chunk as it is (still the graph's tensor)."""
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)


class MusicXLForCausalLM(MusicXLPreTrainedModel, GenerationMixin):
    """MusicXL with the tied output projection, the causal LM loss and generate() with the memory as cache."""

    _tied_weights_keys = {"lm_head.weight": "transformer.embed_tokens.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.transformer = MusicXLModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        past_key_values=None,
        use_cache=None,
        beat_positions=None,
        labels=None,
        logits_to_keep=0,
        inputs_embeds=None,
        output_attentions=None,
        output_hidden_states=None,
        **kwargs,
    ):
        r"""
        labels (`torch.LongTensor` of shape `(batch, length)`, *optional*): targets aligned with `input_ids`
            (shifted inside, -100 ignored), or with `shift_labels` (keyword) the targets of every position as given
            (stream training passes the token after each segment's last one this way). The loss is the token mean,
            or sum / `num_items_in_batch` when the Trainer passes it (exact under gradient accumulation and DDP).
        logits_to_keep (`int`): compute logits for the last this many positions only (0: all); generate uses 1.
        See `MusicXLModel.forward` for the other arguments.
        """
        out = self.transformer(input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                               use_cache=use_cache, beat_positions=beat_positions, inputs_embeds=inputs_embeds,
                               output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                               return_dict=True)  # fmt: skip
        hidden = out.last_hidden_state
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)  # (B, L, V)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                      hidden_states=out.hidden_states, attentions=out.attentions)  # fmt: skip

    # -- generate()

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        """The memory cache exists before the first step (assisted decoding asks for it then)."""
        if model_kwargs.get("past_key_values") is None and generation_config.use_cache is not False:
            model_kwargs["past_key_values"] = MusicXLCache(self.config)

    def _prepare_attention_mask_for_generation(self, inputs_tensor, generation_config, model_kwargs):
        """xxpad is a real token here (every piece starts `xxbos xxpad`), so only the xxpad run before a row's first
        other token is padding (left padding), not every xxpad as generate() would assume."""
        pad = self.config.pad_token_id
        if pad is None or inputs_tensor.dim() != 2:
            return torch.ones(inputs_tensor.shape[:2], dtype=torch.long, device=inputs_tensor.device)
        return (inputs_tensor != pad).long().cummax(dim=1).values

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, is_first_iteration=False, **kwargs):
        if is_first_iteration and isinstance(past_key_values, MusicXLCache) and past_key_values.get_seq_length():
            self.match_cache_to_history(past_key_values, input_ids)
        return super().prepare_inputs_for_generation(input_ids, past_key_values=past_key_values,
                                                     is_first_iteration=is_first_iteration, **kwargs)  # fmt: skip

    @staticmethod
    def match_cache_to_history(cache, input_ids):
        """Resuming generate() from a cache: its rows must have consumed the first tokens of these sequences. After
        beam search the cache holds the final beams while the returned sequences are the best ones, so rows are
        matched by history fingerprint and the cache reordered; a sequence no row has consumed is an error."""
        seen = cache.get_seq_length()
        if input_ids.shape[1] <= seen:
            raise ValueError(f"the cache has consumed {seen} tokens: pass the sequences it continues (longer)")
        wanted = history_fingerprint(input_ids[:, :seen])  # (B,)
        held = cache.fingerprint()  # (B',)
        if held.shape == wanted.shape and torch.equal(held, wanted):
            return
        matches = wanted[:, None] == held[None, :]  # (B, B')
        if not matches.any(dim=1).all():
            raise ValueError("this cache did not consume these sequences (a cache returned by beam search holds the "
                             "final beams, which may not be the returned sequences): generate again from the "
                             "sequences without past_key_values")  # fmt: skip
        cache.batch_select_indices(matches.float().argmax(dim=1))


__all__ = [
    "MusicXLCache",
    "MusicXLForCausalLM",
    "MusicXLModel",
    "MusicXLPreTrainedModel",
    "attention_block_mask",
    "compute_beat_positions",
    "compute_positions",
]
