"""MusicXL: a TransformerXL (Dai et al. 2019) music language model over the musicautobot vocabulary.

Read top to bottom: beat positions from token ids, the attention mask (causal or training-time window mask),
sinusoidal relative encodings and the relative shift, the generation cache, the attention layer, the block,
the base model (segment recurrence with a per-layer memory) and the causal LM head.

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
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_music_xl import MusicXLConfig


# ----------------------------------------------------------------------------------------------------------------
# Beat positions


def compute_beat_positions(input_ids, config, start_position=None, previous_token=None):
    """Grid position of every token, by the tokenizer's rule, and the position the next token would get.

    A duration token directly after `xxsep` is a wait. A token's position is the sum of the waits strictly before
    it since the last `xxbos` (the `xxbos` itself is at 0), so `xxsep d2` keep the old position and the token after
    them carries the new one: `xxsep(0) d2(0) n71(2) d2(2) xxsep(2) d2(2) n71(4)`.

    `start_position` (B,) and `previous_token` (B,) continue a sequence whose earlier tokens were already consumed
    (the generation cache keeps both); without them the input starts at position 0.

    Returns positions (B, T) and next_position (B,), both long.
    """
    batch, length = input_ids.shape
    if previous_token is None:
        previous_token = input_ids.new_full((batch,), -1)
    previous = torch.cat([previous_token[:, None], input_ids[:, :-1]], dim=1)  # (B, T) token before each token
    duration = input_ids - config.duration_offset
    is_wait = (previous == config.sep_token_id) & (duration >= 0) & (duration < config.num_durations)
    waits = torch.where(is_wait, duration, 0)  # (B, T)
    before = waits.cumsum(dim=1) - waits  # sum of the waits strictly before each token
    if start_position is not None:
        before = before + start_position[:, None]
    # restart at every xxbos: subtract the running sum found at the latest xxbos at or before each token
    index = torch.arange(length, device=input_ids.device).expand(batch, length)
    last_bos = torch.where(input_ids == config.bos_token_id, index, -1).cummax(dim=1).values  # (B, T), -1 = none
    at_last_bos = before.gather(1, last_bos.clamp(min=0))
    positions = before - torch.where(last_bos >= 0, at_last_bos, 0)
    return positions, positions[:, -1] + waits[:, -1]


# ----------------------------------------------------------------------------------------------------------------
# Attention masks


def attention_block_mask(query_len, memory_len, window, device):
    """Where a query may NOT attend: (T, M + T) bool over [memory, current segment] keys.

    window == 0: the causal mask. window = s >= 1 (training only): the segment is cut into blocks of s positions
    and a query sees the memory and the earlier blocks but not its own block (musicautobot's window mask); the
    first position of the segment stays visible so that no query row is empty.
    """
    query = torch.arange(query_len, device=device)[:, None]
    key = torch.arange(query_len, device=device)[None, :]
    if window == 0:
        blocked = key > query
    else:
        blocked = key // window >= query // window
        blocked[:, 0] = False
    visible_memory = torch.zeros(query_len, memory_len, dtype=torch.bool, device=device)
    return torch.cat([visible_memory, blocked], dim=1)


# ----------------------------------------------------------------------------------------------------------------
# Relative positions


def sinusoid_encodings(length, d_model, device, dtype):
    """(length, d_model) sinusoidal encodings of the distances length-1, ..., 1, 0 (descending, the order the
    relative shift expects: the last K rows encode distances K-1..0)."""
    distance = torch.arange(length - 1, -1, -1, device=device, dtype=torch.float32)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d_model, 2, device=device, dtype=torch.float32) / d_model))
    angles = distance[:, None] * inv_freq[None, :]  # (length, d_model / 2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).to(dtype)


def relative_position_scores(query, relative):
    """Position scores of every query against every key: query (B, H, T, Dh) (bias added, pre-scaled), relative
    (H, K, Dh) encodings of the distances K-1..0 -> (B, H, T, K) with out[..., i, j] = query_i . R_(M+i-j), where the
    last T of the K keys are the queries and M = K - T. Entries for future keys (j > M + i) are garbage: mask them.

    Dai et al.'s relative shift: scores by distance with a zero column in front, read as (K+1, T) and cut, shift
    row i left by T-1-i. Here the zero column comes from a zero encoding row, so the shift is a free view.
    """
    batch, heads, query_len, _ = query.shape
    key_len = relative.shape[1]
    if query_len == 1:  # one query (generation): distance order is already key order
        return torch.matmul(query, relative.transpose(1, 2))
    padded = torch.matmul(query, F.pad(relative, (0, 0, 1, 0)).transpose(1, 2))  # (B, H, T, K+1), column 0 zero
    return padded.view(batch, heads, key_len + 1, query_len)[:, :, 1:].view(batch, heads, query_len, key_len)


# ----------------------------------------------------------------------------------------------------------------
# Memory: what a segment attends to besides itself


class SegmentMemory:
    """Training-time memory of one segment: per layer the keys/values (B, H, M, Dh) of the previous mem_len tokens,
    projected from their detached hidden states with the current weights."""

    def __init__(self, layer_kv):
        self.layer_kv = layer_kv

    def memory_length(self):
        return self.layer_kv[0][0].shape[2]

    def update(self, key, value, layer_idx):
        """Memory followed by the segment's keys/values: (B, H, T, Dh) -> (B, H, M+T, Dh)."""
        memory_key, memory_value = self.layer_kv[layer_idx]
        return torch.cat([memory_key, key], dim=2), torch.cat([memory_value, value], dim=2)


class MusicXLCache:
    """The TransformerXL memory as a generate() cache.

    Per layer it keeps the memory of the last `mem_len` tokens already projected to keys and values: the same
    memory as the training-time hidden states (k = W_k LN(h)), stored projected so that a new token costs
    O(mem_len * d) instead of re-projecting the memory at O(mem_len * d^2). The memory sits in a buffer with room
    for about 2 * mem_len tokens: a step writes its keys in place and the last mem_len are moved to the front only
    when the buffer is full, so a step copies O(1) memory rows amortised, not the whole memory.

    It also keeps the number of tokens consumed, the running beat position and the last token (for the position
    rule), and the projected relative encodings, which depend only on the weights and so are built once.
    Inference only: the buffers are written in place, so gradients do not flow through the cache.
    """

    is_compileable = False
    is_croppable = False

    def __init__(self, mem_len):
        self.mem_len = mem_len
        self.key_buffers = []  # per layer (B, H, capacity, Dh)
        self.value_buffers = []
        self.offset = 0  # the memory is buffer[:, :, offset : offset + length]
        self.length = 0
        self.relative = []  # per layer (H, R, Dh): projected encodings of distances R-1..0
        self.seen_tokens = 0
        self.next_position = None  # (B,) position of the next token
        self.last_token = None  # (B,) last token consumed

    def get_seq_length(self, layer_idx=0):
        """Tokens consumed so far (generate slices a resumed prompt with it)."""
        return self.seen_tokens

    def memory_length(self):
        return self.length

    def make_room(self, new_tokens):
        """Before a segment: make every buffer able to take new_tokens after the memory."""
        if not self.key_buffers or self.offset + self.length + new_tokens <= self.key_buffers[0].shape[2]:
            return
        keep = slice(self.offset, self.offset + self.length)
        capacity = max(self.key_buffers[0].shape[2], self.length + new_tokens)
        for buffers in (self.key_buffers, self.value_buffers):
            for i, buffer in enumerate(buffers):
                moved = buffer.new_empty(*buffer.shape[:2], capacity, buffer.shape[3])
                moved[:, :, : self.length] = buffer[:, :, keep]
                buffers[i] = moved
        self.offset = 0

    def update(self, key, value, layer_idx):
        """Append a segment's keys/values (B, H, T, Dh) to a layer's memory in place; return the memory followed by
        them (B, H, M+T, Dh), as views of the buffer."""
        if key.requires_grad:
            raise RuntimeError("MusicXLCache is an inference cache: use it under torch.no_grad()")
        end = self.offset + self.length + key.shape[2]
        if layer_idx == len(self.key_buffers):  # first segment: allocate
            capacity = max(2 * self.mem_len, end)
            self.key_buffers.append(key.new_empty(*key.shape[:2], capacity, key.shape[3]))
            self.value_buffers.append(value.new_empty(*value.shape[:2], capacity, value.shape[3]))
        key_buffer, value_buffer = self.key_buffers[layer_idx], self.value_buffers[layer_idx]
        key_buffer[:, :, self.offset + self.length : end] = key
        value_buffer[:, :, self.offset + self.length : end] = value
        return key_buffer[:, :, self.offset : end], value_buffer[:, :, self.offset : end]

    def advance(self, new_tokens):
        """After a segment: keep only the last mem_len tokens as memory."""
        total = self.length + new_tokens
        self.length = min(self.mem_len, total)
        self.offset += total - self.length

    def reorder_cache(self, beam_idx):
        """Beam search: select the rows (flattened batch x beams) that survive."""
        self.key_buffers = [k.index_select(0, beam_idx) for k in self.key_buffers]
        self.value_buffers = [v.index_select(0, beam_idx) for v in self.value_buffers]
        self.next_position = self.next_position.index_select(0, beam_idx)
        self.last_token = self.last_token.index_select(0, beam_idx)


# ----------------------------------------------------------------------------------------------------------------
# The transformer


class MusicXLAttention(nn.Module):
    """Multi-head attention with TransformerXL relative positions, on torch's scaled_dot_product_attention.

    score(i, j) = (q_i + u) . k_j + (q_i + v) . R_{i-j}: SDPA computes the content term (scaling it by
    1/sqrt(d_head)); the position term is computed for all distances, shifted to key order, pre-scaled and
    passed with the mask as SDPA's additive attn_mask.
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

    def project_memory(self, memory):
        """Keys and values (B, H, M, Dh) of normalised memory hidden states (B, M, D), with the K/V rows of the
        fused projection."""
        inner = self.n_head * self.d_head
        key, value = F.linear(memory, self.qkv_proj.weight[inner:]).chunk(2, dim=-1)
        return self.split_heads(key), self.split_heads(value)

    def project_positions(self, encodings):
        """(R, D) sinusoid encodings -> (H, R, Dh) projected relative encodings."""
        return self.position_proj(encodings).view(-1, self.n_head, self.d_head).transpose(0, 1)

    def forward(self, x, relative, content_bias, position_bias, mask, memory=None):
        # x: (B, T, D) normalised; relative: (H, M+T, Dh); biases u, v: (H, Dh); mask: (T, M+T) additive
        # (0 or -inf) or None; memory: SegmentMemory, MusicXLCache or None
        batch, length, _ = x.shape
        query, key, value = (self.split_heads(t) for t in self.qkv_proj(x).chunk(3, dim=-1))  # (B, H, T, Dh)
        if memory is not None:
            key, value = memory.update(key, value, self.layer_idx)  # (B, H, M+T, Dh)
        # SDPA scales q.k by 1/sqrt(d_head) but not attn_mask: pre-scale the (small) query of the position term
        scaled_query = (query + position_bias[:, None]) * (1.0 / math.sqrt(self.d_head))
        attn_bias = relative_position_scores(scaled_query, relative)  # (B, H, T, M+T)
        if mask is not None:
            attn_bias = attn_bias + mask
        out = F.scaled_dot_product_attention(
            query + content_bias[:, None],
            key,
            value,
            attn_mask=attn_bias,
            dropout_p=self.attn_dropout if self.training else 0.0,
        )  # (B, H, T, Dh)
        out = out.transpose(1, 2).reshape(batch, length, self.n_head * self.d_head)
        return self.out_proj(out)


class MusicXLBlock(nn.Module):
    """Pre-LayerNorm block (as GPT-2; the reference was post-LayerNorm): x + attn(LN(x)), then x + ff(LN(x))."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.attention = MusicXLAttention(config, layer_idx)
        self.ff_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.ff_in = nn.Linear(config.d_model, config.d_inner)
        self.ff_out = nn.Linear(config.d_inner, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def memory_keys_values(self, memory):
        """Keys and values of this layer's memory of input hidden states (B, M, D)."""
        return self.attention.project_memory(self.attn_norm(memory))

    def forward(self, x, relative, content_bias, position_bias, mask, memory=None):
        x = x + self.dropout(self.attention(self.attn_norm(x), relative, content_bias, position_bias, mask, memory))
        return x + self.dropout(self.ff_out(F.gelu(self.ff_in(self.ff_norm(x)))))


class MusicXLPreTrainedModel(PreTrainedModel):
    config_class = MusicXLConfig
    base_model_prefix = "transformer"
    main_input_name = "input_ids"
    _no_split_modules = ["MusicXLBlock"]
    _skip_keys_device_placement = ["past_key_values"]
    # forward takes **kwargs, so the Trainer passes num_items_in_batch (non -100 labels over the whole
    # accumulated, all-process batch) and the loss is sum / num_items_in_batch: an exact token mean under
    # gradient accumulation and DDP. Called directly (no num_items_in_batch) the loss is the plain token mean.
    accepts_loss_kwargs = True

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)  # linear and embedding weights N(0, initializer_range), LayerNorm 1/0
        if isinstance(module, MusicXLModel):
            init.zeros_(module.content_bias)
            init.zeros_(module.position_bias)
        if isinstance(module, MusicXLBlock):
            # GPT-2: scale the projections that write into the residual stream by 1/sqrt(number of them)
            std = self.config.initializer_range / math.sqrt(2 * self.config.n_layer)
            init.normal_(module.attention.out_proj.weight, mean=0.0, std=std)
            init.normal_(module.ff_out.weight, mean=0.0, std=std)

    @classmethod
    def _supports_default_dynamic_cache(cls):
        return False  # our cache is MusicXLCache, made by forward; generate must not build a DynamicCache


class MusicXLModel(MusicXLPreTrainedModel):
    """Token + beat-position embeddings, then the TransformerXL blocks run over segments with memory."""

    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        if config.encode_position:
            self.embed_beat = nn.Embedding(config.steps_per_bar, config.d_model)  # position within the bar
            self.embed_bar = nn.Embedding(config.max_bars, config.d_model)  # bar index, wrapped at max_bars
        self.content_bias = nn.Parameter(torch.zeros(config.n_head, config.d_head))  # u, shared by all layers
        self.position_bias = nn.Parameter(torch.zeros(config.n_head, config.d_head))  # v, shared by all layers
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(MusicXLBlock(config, i) for i in range(config.n_layer))
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def embed(self, input_ids, positions):
        """(B, T) ids and beat positions -> (B, T, D)"""
        x = self.embed_tokens(input_ids)
        if self.config.encode_position:
            steps = self.config.steps_per_bar
            x = x + self.embed_beat(positions % steps) + self.embed_bar(positions // steps % self.config.max_bars)
        return self.dropout(x)

    def sample_window(self):
        """Window-mask size for this batch: with probability mask_p in training 1..mask_steps, else 0 (causal)."""
        config = self.config
        if not self.training or config.mask_p == 0 or config.mask_steps == 0:
            return 0
        if torch.rand(()).item() >= config.mask_p:
            return 0
        return int(torch.randint(1, config.mask_steps + 1, ()).item())

    def relative_encodings(self, key_len, cache, dtype, device):
        """Per layer (H, key_len, Dh) projected encodings of distances key_len-1..0; kept in the cache, if any,
        and rebuilt only when a longer span is needed (so generation steps reuse them)."""
        if cache is not None and cache.relative and cache.relative[0].shape[1] >= key_len:
            return [table[:, -key_len:] for table in cache.relative]
        length = key_len if cache is None else max(key_len, self.config.mem_len + 1)
        encodings = sinusoid_encodings(length, self.config.d_model, device, dtype)  # (R, D)
        tables = [layer.attention.project_positions(encodings) for layer in self.layers]
        if cache is not None:
            cache.relative = [table.detach() for table in tables]
        return [table[:, -key_len:] for table in tables]

    def run_segment(self, x, memory, window, cache):
        """One segment through all blocks. x: (B, T, D); memory: SegmentMemory, MusicXLCache or None.
        Returns the output (B, T, D) and each layer's input (B, T, D) (the next segment's memory)."""
        memory_len = 0 if memory is None else memory.memory_length()
        query_len = x.shape[1]
        relative = self.relative_encodings(memory_len + query_len, cache, x.dtype, x.device)
        mask = None  # a single causal query may see everything
        if window or query_len > 1:
            blocked = attention_block_mask(query_len, memory_len, window, x.device)
            mask = torch.zeros(blocked.shape, dtype=x.dtype, device=x.device).masked_fill(blocked, float("-inf"))
        layer_inputs = []
        for layer, table in zip(self.layers, relative):
            layer_inputs.append(x)
            x = layer(x, table, self.content_bias, self.position_bias, mask, memory)
        return x, layer_inputs

    def forward(self, input_ids, beat_positions=None, past_key_values=None, use_cache=None, attention_mask=None, **kwargs):
        r"""
        input_ids (`torch.LongTensor` of shape `(batch, length)`): any length; runs in segments of
            `config.segment_len`, each attending to the memory of the previous `config.mem_len` tokens.
        beat_positions (`torch.LongTensor` of shape `(batch, length)`, *optional*): grid positions; computed from
            `input_ids` by the tokenizer's rule (continuing the cache's running position) when not given.
        past_key_values (`MusicXLCache`, *optional*): memory from a previous call (generation, inference only).
        use_cache (`bool`, *optional*, defaults to False): continue `past_key_values`, or a new `MusicXLCache`,
            and return it. generate() passes it explicitly (from `config.use_cache`).
        attention_mask: ignored, as are other keyword arguments generate() passes: xxpad is a real token of this
            vocabulary (pieces start `xxbos xxpad`), so every token is attended to; batch prompts of equal length.
            (Declared because generate() reads the signature: with it, resuming from a cache feeds only new tokens.)
        """
        config = self.config
        cache = past_key_values if use_cache or past_key_values is not None else None
        if cache is not None and not isinstance(cache, MusicXLCache):
            raise TypeError(f"past_key_values must be a MusicXLCache, got {type(cache).__name__}")
        if use_cache and cache is None:
            cache = MusicXLCache(config.mem_len)

        start = None if cache is None else cache.next_position
        previous = None if cache is None else cache.last_token
        computed_positions, next_position = compute_beat_positions(input_ids, config, start, previous)
        if beat_positions is None:
            beat_positions = computed_positions
        x = self.embed(input_ids, beat_positions)  # (B, L, D)

        window = self.sample_window()
        hidden_memory = None  # without a cache: per layer the detached inputs of the last mem_len tokens
        outputs = []
        for segment in x.split(config.segment_len, dim=1):
            if cache is not None:
                cache.make_room(segment.shape[1])
                memory = cache
            elif hidden_memory is not None:
                # project the memory with the current weights (as the paper: W_k, W_v also learn from memory keys)
                memory = SegmentMemory([layer.memory_keys_values(m) for layer, m in zip(self.layers, hidden_memory)])
            else:
                memory = None
            segment_out, layer_inputs = self.run_segment(segment, memory, window, cache)
            outputs.append(segment_out)
            if cache is not None:
                cache.advance(segment.shape[1])
            elif config.mem_len > 0:
                if hidden_memory is not None:
                    layer_inputs = [torch.cat([old, new], dim=1) for old, new in zip(hidden_memory, layer_inputs)]
                hidden_memory = [self.keep_last(h) for h in layer_inputs]

        if cache is not None:
            cache.seen_tokens += input_ids.shape[1]
            cache.next_position = next_position
            cache.last_token = input_ids[:, -1]
        hidden = self.norm(torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0])
        return BaseModelOutputWithPast(last_hidden_state=hidden, past_key_values=cache if use_cache else None)

    def keep_last(self, hidden):
        """The detached last mem_len positions of (B, L, D)."""
        return hidden[:, max(0, hidden.shape[1] - self.config.mem_len) :].detach()


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

    def forward(
        self,
        input_ids,
        beat_positions=None,
        past_key_values=None,
        use_cache=None,
        attention_mask=None,
        labels=None,
        logits_to_keep=0,
        **kwargs,
    ):
        r"""
        labels (`torch.LongTensor` of shape `(batch, length)`, *optional*): targets aligned with `input_ids`
            (shifted inside, -100 ignored). The loss is the token mean, or sum / `num_items_in_batch` when the
            Trainer passes it (exact under gradient accumulation and DDP).
        logits_to_keep (`int`): compute logits for the last this many positions only (0: all); generate uses 1.
        See `MusicXLModel.forward` for the other arguments.
        """
        out = self.transformer(input_ids, beat_positions, past_key_values, use_cache, **kwargs)
        hidden = out.last_hidden_state
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)  # (B, L, V)
        loss = None
        if labels is not None:
            num_items = kwargs.get("num_items_in_batch")
            loss = self.loss_function(logits, labels, self.config.vocab_size, num_items_in_batch=num_items)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values)


__all__ = [
    "MusicXLCache",
    "SegmentMemory",
    "MusicXLForCausalLM",
    "MusicXLModel",
    "MusicXLPreTrainedModel",
    "attention_block_mask",
    "compute_beat_positions",
]
