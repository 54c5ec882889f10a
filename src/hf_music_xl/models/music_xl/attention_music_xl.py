"""The relative attention of MusicXL (Dai et al. 2019's TransformerXL attention), as `modeling_music_xl.py` uses it.

Read top to bottom: the attention mask, sinusoidal relative encodings and the relative shift, the attention of
queries over a memory and a chunk (tensors in, tensors out, so torch.compile takes it whole for training), the
Linear that computes in its weight's dtype, and the attention layer.

This file is copied next to saved weights for `trust_remote_code` loading: it may import only torch,
transformers, numpy and its sibling files (relative imports), and must do nothing at import time beyond
defining classes and functions.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import logging

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
        logging.get_logger(__name__).warning(  # got here: remote code may call nothing at import
            "torch.compile of the attention failed (%s: %s): training continues eager",
            type(error).__name__,
            message[0] if message else "",
        )
        _compiled_attention = relative_attention
        return relative_attention(*inputs)


# ----------------------------------------------------------------------------------------------------------------
# The attention layer


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


__all__ = [
    "Linear",
    "MusicXLAttention",
    "attention_block_mask",
    "relative_attention",
    "relative_position_scores",
    "sinusoid_encodings",
]
