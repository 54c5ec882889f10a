"""MusicXL: a TransformerXL (Dai et al. 2019) music language model over the musicautobot vocabulary.

Read top to bottom: the attention mask, sinusoidal relative encodings and the relative shift, the attention layer,
the block, the base model (positions, then segments with memory) and the causal LM head. Beat positions from
token ids are in `positions_music_xl.py`, the memory (one cache for training, evaluation and generation) in
`cache_music_xl.py`.

What a token sees is one rule, everywhere: a sequence is cut into segments of `segment_len` tokens counted from
its first token (padding is not counted, so a left-padded row sees what it sees alone), and a token attends to the
earlier tokens of its segment and to the `mem_len` tokens before the segment (TransformerXL's memory). Whether a sequence is fed in one call, in chunks resuming a `MusicXLCache`, one
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
from transformers.utils import logging
from transformers.utils.generic import can_return_tuple

from .cache_music_xl import MusicXLCache, history_fingerprint
from .configuration_music_xl import MusicXLConfig
from .positions_music_xl import STATE_PIECE, compute_positions, position_table_sizes

logger = logging.get_logger(__name__)

# ----------------------------------------------------------------------------------------------------------------
# Attention masks


def attention_block_mask(
    query_len: int,
    memory_len: int,
    window: int,
    device: torch.device | str,
    key_valid: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
):
    """Where a query may NOT attend: (T, M + T) bool over [memory, current chunk] keys, or (B, T, M + T) with
    `key_valid` (B, M + T) (False for padding, i.e. attention_mask 0) or `allowed` (B, T, M + T) (False where a
    key is not the query's to see: it belongs to another piece (an earlier one, before the query's `xxbos`), or,
    in a padded row, it lies before the memory of the query's own segment).

    window == 0: the causal mask. window = s >= 1 (training only): the chunk is cut into blocks of s positions and
    a query sees the memory and the earlier blocks but not its own block (musicautobot's window mask); the first
    position of the chunk stays visible. Padding keys and keys of another piece are never seen, except that a query
    always sees itself, so that no row is empty (a padded query's output is never used).
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
    if key_valid is None and allowed is None:
        return blocked
    if key_valid is not None:
        blocked = blocked | ~key_valid[:, None, :]  # (B, T, M+T)
    if allowed is not None:
        blocked = blocked | ~allowed  # (B, T, M+T)
    is_self = torch.zeros_like(blocked[0])
    is_self[:, memory_len:] = torch.eye(query_len, dtype=torch.bool, device=device)
    return blocked & ~(is_self & blocked.all(dim=-1, keepdim=True))


# ----------------------------------------------------------------------------------------------------------------
# Relative positions


def sinusoid_encodings(length: int, d_model: int, device: torch.device | str, dtype: torch.dtype):
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
    def forward(ctx, padded: torch.Tensor):
        batch, heads, query_len, width = padded.shape
        return padded.view(batch, heads, width, query_len)[:, :, 1:].view(batch, heads, query_len, width - 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        batch, heads, query_len, key_len = grad.shape
        grad_padded = grad.new_empty(batch, heads, key_len + 1, query_len)
        grad_padded[:, :, 0].zero_()  # the dropped row: garbage of the shift, no gradient
        grad_padded[:, :, 1:].copy_(grad.reshape(batch, heads, key_len, query_len))
        return grad_padded.view(batch, heads, query_len, key_len + 1)


def relative_position_scores(query: torch.Tensor, relative: torch.Tensor):
    """Position scores of every query against every key: query (B, H, T, Dh) (bias added, pre-scaled), relative
    (H, K, Dh) encodings of the distances K-1..0 -> (B, H, T, K) with out[..., i, j] = query_i . R_(M+i-j), where the
    last T of the K keys are the queries and M = K - T. Entries for future keys (j > M + i) are garbage: mask them.

    Dai et al.'s relative shift: scores by distance with a zero column in front, read as (K+1, T) and cut, shift
    row i left by T-1-i. Here the zero column comes from a zero encoding row, so the shift is a free view.
    """
    if query.shape[2] == 1:  # one query (generation): distance order is already key order
        # one bmm over heads with the rows as its M dimension: (H, B, Dh) x (H, Dh, K) -> (H, B, K). torch.matmul of
        # (B, H, 1, Dh) x (H, Dh, K) would broadcast (copy) the whole table to every row first (57% of a 16-row step)
        scores = torch.bmm(query[:, :, 0].transpose(0, 1), relative.transpose(1, 2))  # (H, B, K)
        return scores.transpose(0, 1)[:, :, None]  # (B, H, 1, K)
    padded = torch.matmul(query, F.pad(relative, (0, 0, 1, 0)).transpose(1, 2))  # (B, H, T, K+1), column 0 zero
    return RelativeShift.apply(padded)


def flat_mask(mask: torch.Tensor, heads: int, query_len: int, key_len: int):
    """A (T, K) mask as it is (it broadcasts), a (B, 1, T, K) one repeated over heads: (B * H, T, K), to mask the
    (B * H, T, K) scores of a batched matmul."""
    if mask.dim() == 2:
        return mask
    return mask.expand(-1, heads, -1, -1).reshape(-1, query_len, key_len)


def relative_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    relative: torch.Tensor,
    content_bias: torch.Tensor,
    position_bias: torch.Tensor,
    mask: torch.Tensor | None,
    dropout: float,
):
    """The attention of queries (B, H, T, Dh) over keys and values (B, H, M+T, Dh) with relative encodings
    (H, M+T, Dh), biases u, v (H, Dh) and the mask (T, M+T) or (B, 1, T, M+T) (True: not seen) or None -> the
    output (B, T, H * Dh) and the probabilities (B, H, T, M+T). Tensors in, tensors out: `torch.compile` takes it
    whole (`compiled_attention`)."""
    batch, heads, length, d_head = query.shape
    scale = 1.0 / math.sqrt(d_head)
    # biases u, v are float32 parameters: cast them so the matmuls stay in the compute dtype (bf16 autocast)
    position_query = (query + position_bias[:, None].to(query.dtype)) * scale
    content_query = (query + content_bias[:, None].to(query.dtype)) * scale
    scores = relative_position_scores(position_query, relative).to(query.dtype)  # (B, H, T, M+T)
    key_len = keys.shape[2]
    scores = torch.baddbmm(
        scores.reshape(-1, length, key_len),
        content_query.reshape(-1, length, d_head),
        keys.reshape(-1, key_len, d_head).transpose(1, 2),
    )
    if mask is not None:  # in place (baddbmm's backward does not need its output), on baddbmm's own tensor:
        # on a view of it, autograd would replay the view in the backward (a clone and two copies of the scores)
        scores.masked_fill_(flat_mask(mask, heads, length, key_len), float("-inf"))
    scores = scores.view(batch, heads, length, key_len)
    if scores.dtype == torch.float32:
        probabilities = scores.softmax(dim=-1)  # (B, H, T, M+T) (with dtype= torch would copy even here)
    else:  # bf16/fp16 autocast: the softmax in float32, its result back in the compute dtype
        probabilities = torch.softmax(scores, dim=-1, dtype=torch.float32).to(values.dtype)
    if dropout:
        probabilities = F.dropout(probabilities, dropout, training=True)
    out = torch.matmul(probabilities, values)  # (B, H, T, Dh)
    return out.transpose(1, 2).reshape(batch, length, heads * d_head), probabilities  # (B, T, H * Dh)


QUERY_BLOCKS = 2  # more measured no faster (BENCHMARKS.md): smaller matmuls, more calls


def attention_in_query_blocks(attend, query, keys, values, relative, content_bias, position_bias, mask, dropout):
    """`relative_attention` (or its compiled form, `attend`) of a training chunk, its queries in QUERY_BLOCKS
    blocks, each over the keys up to its own last query: no mask of training lets a query see a later key (causal,
    window, padding and piece masks all hide them), so the scores of the later keys are -inf and the same
    attention costs 1/8 (a chunk after a memory as long) to 1/4 (no memory) fewer scores than all queries over all
    keys. Returns the output (B, T, H * Dh)."""
    length = query.shape[2]
    memory_len = keys.shape[2] - length
    block_len = -(-length // QUERY_BLOCKS)  # rounded up
    outputs = []
    for begin in range(0, length, block_len):
        end = min(length, begin + block_len)
        seen = memory_len + end  # the block's queries are the last of these keys, as relative_attention expects
        block_mask = None if mask is None else mask[..., begin:end, :seen]
        out, _ = attend(
            query[:, :, begin:end],
            keys[:, :, :seen],
            values[:, :, :seen],
            relative[:, -seen:],
            content_bias,
            position_bias,
            block_mask,
            dropout,
        )
        outputs.append(out)  # (B, T / QUERY_BLOCKS, H * Dh)
    return torch.cat(outputs, dim=1)  # (B, T, H * Dh)


_compiled_attention = None  # torch.compile(relative_attention), made on first use


def compiled_attention(*inputs):
    """`relative_attention` through torch.compile: one graph per shape, shared by every layer (it takes tensors
    only), static shapes (training chunks have fixed lengths). Where no compiler works (the first call raises), one
    warning and `relative_attention` eager from then on."""
    global _compiled_attention
    if _compiled_attention is None:
        _compiled_attention = torch.compile(relative_attention, dynamic=False)
    try:
        return _compiled_attention(*inputs)
    except Exception as error:  # e.g. no C++ compiler for inductor on CPU, no triton on a GPU
        if _compiled_attention is relative_attention:  # an error of the eager function itself
            raise
        message = str(error).strip().splitlines()
        logger.warning(
            "torch.compile of the attention failed (%s: %s): training continues eager",
            type(error).__name__,
            message[0] if message else "",
        )
        _compiled_attention = relative_attention
        return relative_attention(*inputs)


# ----------------------------------------------------------------------------------------------------------------
# The transformer


class Linear(nn.Linear):
    """nn.Linear that computes in its weight's dtype and returns its input's: with the weights stored in bfloat16
    (`MusicXLForCausalLM.store_linears_in`) a generation step reads half the bytes, while the residual stream, the
    attention and its memory, the embeddings and the output head stay float32. With matching dtypes (training,
    autocast) it is nn.Linear."""

    def forward(self, x: torch.Tensor):
        if x.dtype == self.weight.dtype or torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        return super().forward(x.to(self.weight.dtype)).to(x.dtype)


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
        self.qkv_proj = Linear(config.d_model, 3 * inner, bias=False)
        self.position_proj = Linear(config.d_model, inner, bias=False)  # W_{k,R} of the paper
        self.out_proj = Linear(inner, config.d_model, bias=False)
        self.attn_dropout = config.attn_dropout
        self.compile_training = False  # training chunks through `compiled_attention` (`compile_training_attention`)

    def split_heads(self, x: torch.Tensor):
        """(B, T, H * Dh) -> (B, H, T, Dh)"""
        return x.view(x.shape[0], x.shape[1], self.n_head, self.d_head).transpose(1, 2)

    def project_positions(self, encodings: torch.Tensor):
        """(R, D) sinusoid encodings -> (H, R, Dh) projected relative encodings."""
        return self.position_proj(encodings).view(-1, self.n_head, self.d_head).transpose(0, 1)

    def forward(
        self,
        x: torch.Tensor,
        relative: torch.Tensor,
        content_bias: torch.Tensor,
        position_bias: torch.Tensor,
        mask: torch.Tensor,
        slots,
        output_attentions: bool = False,
    ):
        # x: (B, T, D) normalised; relative: (H, M+T, Dh); biases u, v: (H, Dh); mask: (T, M+T) or (B, 1, T, M+T)
        # bool, True where a key is not seen, or None; slots: keys and values (B, H, M+T, Dh), views of the
        # cache's buffers: the memory of earlier tokens, then T slots for this chunk's own.
        # Returns the output (B, T, D) and the probabilities or None.
        batch, length, _ = x.shape
        query, key, value = (self.split_heads(t) for t in self.qkv_proj(x).chunk(3, dim=-1))  # (B, H, T, Dh)
        keys, values = slots
        # this chunk's keys and values go straight into the memory (detached: no gradient into later chunks, the
        # paper's SG(.)), so a generation step attends to the buffer as it is, without a `cat` of the memory.
        # Gradient checkpointing replays this with the same views and writes the same values again.
        keys[:, :, -length:], values[:, :, -length:] = key.detach(), value.detach()
        if key.requires_grad:  # training: this chunk's own keys and values stay in the graph
            keys = torch.cat([keys[:, :, :-length].to(key.dtype), key], dim=2)
            values = torch.cat([values[:, :, :-length].to(value.dtype), value], dim=2)
        dropout = self.attn_dropout if self.training else 0.0
        inputs = (query, keys, values, relative, content_bias, position_bias, mask, dropout)
        if key.requires_grad and not output_attentions:  # training
            attend = compiled_attention if self.compile_training else relative_attention
            return self.out_proj(attention_in_query_blocks(attend, *inputs)), None
        out, probabilities = relative_attention(*inputs)
        return self.out_proj(out), probabilities if output_attentions else None


class MusicXLBlock(GradientCheckpointingLayer):
    """Pre-LayerNorm block (as GPT-2; the reference was post-LayerNorm): x + attn(LN(x)), then x + ff(LN(x)).
    The block writes its keys and values into the memory slots it is given (views), so gradient checkpointing can
    replay it."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.attention = MusicXLAttention(config, layer_idx)
        self.ff_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.ff_in = Linear(config.d_model, config.d_inner)
        self.ff_out = Linear(config.d_inner, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        # GPT-2's init: the two projections that write into the residual stream start smaller (_init_weights)
        self.attention.out_proj.writes_residual = True
        self.ff_out.writes_residual = True

    def forward(
        self,
        x: torch.Tensor,
        relative: torch.Tensor,
        content_bias: torch.Tensor,
        position_bias: torch.Tensor,
        mask: torch.Tensor,
        slots,
        output_attentions: bool = False,
    ):
        attended, probabilities = self.attention(
            self.attn_norm(x), relative, content_bias, position_bias, mask, slots, output_attentions
        )
        x = x + self.dropout(attended)
        x = x + self.dropout(self.ff_out(F.gelu(self.ff_in(self.ff_norm(x)))))
        return x, probabilities


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

    def compile_training_attention(self, enabled: bool = True):
        """Run the attention of training chunks through torch.compile (`compiled_attention`), or eager again.
        Evaluation and generation (no gradient) stay eager."""
        for module in self.modules():
            if isinstance(module, MusicXLAttention):
                module.compile_training = enabled

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

    def embed(self, input_ids: torch.Tensor, features: torch.Tensor):
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

    def relative_encodings(self, cache: MusicXLCache, dtype: torch.dtype, device: torch.device | str):
        """Per layer (H, R, Dh) projected encodings of the distances R-1..0, R = mem_len + 2 segment_len (the longest
        span of keys a chunk is given: a segment more than a token sees when rows are padded, see
        `MusicXLCache.first_seen`). Kept in the cache when no gradient is needed, so generation steps reuse them."""
        if cache.relative and not torch.is_grad_enabled():
            return cache.relative
        encodings = sinusoid_encodings(
            self.config.mem_len + 2 * self.config.segment_len, self.config.d_model, device, dtype
        )
        tables = [layer.attention.project_positions(encodings) for layer in self.layers]
        if not torch.is_grad_enabled():
            cache.relative = tables
        return tables

    def chunk_mask(
        self,
        query_len: int,
        memory_len: int,
        window: int,
        key_valid: torch.Tensor,
        allowed: torch.Tensor,
        device: torch.device | str,
    ):
        """Keys a chunk's queries do not see: (T, M+T) or (B, 1, T, M+T) bool, or None when they see every key."""
        if not window and query_len == 1 and key_valid is None and allowed is None:
            return None
        blocked = attention_block_mask(query_len, memory_len, window, device, key_valid, allowed)
        return blocked[:, None] if blocked.dim() == 3 else blocked  # (B, 1, T, M+T): one mask for all heads

    def in_reach(self, memory_counts: torch.Tensor, chunk_counts: torch.Tensor):
        """(B, T, M+T) True where a key lies within the reach of a query of a padded batch: the query's own segment
        and the mem_len tokens before it, counted in the row's own tokens (padding is not counted), so that a row
        sees what it sees alone wherever the batch's segments fall. Counts (`MusicXLCache.real_counts`) of the
        memory's keys (B, M) and the chunk's tokens (B, T)."""
        key_index = torch.cat([memory_counts, chunk_counts], dim=1) - 1  # (B, M+T) index in the row's own tokens
        query_index = chunk_counts - 1  # (B, T)
        segment = self.config.segment_len
        reach = query_index // segment * segment - self.config.mem_len  # (B, T) first index each query sees
        return key_index[:, None, :] >= reach[:, :, None]

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: MusicXLCache | None = None,
        use_cache: bool | None = None,
        beat_positions: torch.Tensor | None = None,
        inputs_embeds=None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
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
        counts = cache.real_counts(valid)  # (B, L) each token's count of its row's tokens that are not padding
        x = self.embed(input_ids, features if beat_positions is None else beat_positions)  # (B, L, D)

        window = self.sample_window()
        # the memory is kept in the dtype the projections compute in (bfloat16 under bf16 autocast)
        autocast = torch.is_autocast_enabled(x.device.type)
        memory_dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype
        relative = self.relative_encodings(cache, x.dtype, x.device)
        outputs, layer_inputs, attentions = [], [], []
        for begin, end in cache.chunks(length):
            chunk = x[:, begin:end]  # (B, T, D)
            start = cache.make_room(end - begin, batch, x.device)
            memory_len = cache.length - start
            key_valid = allowed = None
            if has_padding:
                key_valid = torch.cat([cache.key_valid(start), valid[:, begin:end]], dim=1)  # (B, M+T)
                allowed = self.in_reach(cache.key_counts(start), counts[:, begin:end])  # (B, T, M+T)
            # a token sees only its own piece: stream training runs piece after piece, and a piece starts from
            # nothing (as it is evaluated and generated); pieces never decrease, so one row spans one piece when
            # its first key and its last query agree
            query_piece = states[:, begin:end, STATE_PIECE]  # (B, T)
            first_piece = cache.key_pieces(start)[:, 0] if memory_len else query_piece[:, 0]  # (B,) first key's
            if bool((first_piece != query_piece[:, -1]).any()):
                key_piece = torch.cat([cache.key_pieces(start), query_piece], dim=1)  # (B, M+T)
                same_piece = key_piece[:, None, :] == query_piece[:, :, None]  # (B, T, M+T)
                allowed = same_piece if allowed is None else allowed & same_piece
            mask = self.chunk_mask(end - begin, memory_len, window, key_valid, allowed, x.device)
            key_start = cache.first + start  # absolute index of the chunk's first key (for attention outputs)
            chunk_inputs, chunk_attentions = [], []
            for i, layer in enumerate(self.layers):
                chunk_inputs.append(chunk)
                table = relative[i][:, -(memory_len + end - begin) :]
                slots = cache.layer_slots(i, start, end - begin, memory_dtype)
                chunk, probabilities = layer(
                    chunk, table, self.content_bias, self.position_bias, mask, slots, output_attentions
                )
                chunk_attentions.append(probabilities)
            cache.append_tokens(
                input_ids[:, begin:end], states[:, begin:end], valid[:, begin:end], counts[:, begin:end]
            )
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
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: MusicXLCache | None = None,
        use_cache: bool | None = None,
        beat_positions: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        logits_to_keep=0,
        inputs_embeds=None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
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
        out = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
            beat_positions=beat_positions,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden = out.last_hidden_state
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)  # (B, L, V)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )

    def store_linears_in(self, dtype: torch.dtype = torch.bfloat16):
        """Store the blocks' linear weights (every projection but the output head, which is tied to the embeddings)
        in `dtype`, for generation: inputs are cast to it and outputs back (`Linear`), so everything else keeps its
        dtype. On a CPU a step is bound by the bytes it reads, and bfloat16 weights on one with native bf16 make
        generation faster (`scripts/bench_generate.py --variants`; float32 at `dtype` undoes it). Not for training,
        which keeps float32 weights. Returns the model."""
        for module in self.modules():
            if isinstance(module, Linear):
                module.to(dtype)
        return self

    def linears_dtype(self) -> torch.dtype:
        """The dtype the blocks' linear weights are stored in (`store_linears_in`)."""
        return self.transformer.layers[0].ff_in.weight.dtype

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

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.Tensor,
        past_key_values: MusicXLCache | None = None,
        is_first_iteration: bool = False,
        **kwargs,
    ):
        if is_first_iteration and isinstance(past_key_values, MusicXLCache) and past_key_values.get_seq_length():
            self.match_cache_to_history(past_key_values, input_ids)
        return super().prepare_inputs_for_generation(
            input_ids, past_key_values=past_key_values, is_first_iteration=is_first_iteration, **kwargs
        )

    @staticmethod
    def match_cache_to_history(cache: MusicXLCache, input_ids: torch.Tensor):
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
            raise ValueError(
                "this cache did not consume these sequences (a cache returned by beam search holds the "
                "final beams, which may not be the returned sequences): generate again from the "
                "sequences without past_key_values"
            )
        cache.batch_select_indices(matches.float().argmax(dim=1))


__all__ = ["MusicXLForCausalLM", "MusicXLModel", "MusicXLPreTrainedModel", "attention_block_mask"]
