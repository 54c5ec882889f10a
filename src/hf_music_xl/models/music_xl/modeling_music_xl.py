"""MusicXL: a TransformerXL (Dai et al. 2019) music language model over the musicautobot vocabulary.

Read top to bottom: the block, the base model (positions, then segments with memory) and the causal LM head. The
relative attention (masks, relative encodings and shift, the attention layer) is in `attention_music_xl.py`, beat
positions from token ids in `positions_music_xl.py`, the memory (one cache for training, evaluation and
generation) in `cache_music_xl.py`.

What a token sees is one rule, everywhere: a sequence is cut into segments of `segment_len` tokens counted from
its first token (padding is not counted, so a left-padded row sees what it sees alone), and a token attends to the
earlier tokens of its segment and to the `mem_len` tokens before the segment (TransformerXL's memory). Whether a
sequence is fed in one call, in chunks resuming a `MusicXLCache`, one token at a time by `generate()` or step after
step by stream training, every token gets the same context, so the cache equals a full recomputation at any
length.

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

from .attention_music_xl import Linear, MusicXLAttention, attention_block_mask, sinusoid_encodings
from .cache_music_xl import MusicXLCache, history_fingerprint
from .configuration_music_xl import MusicXLConfig
from .positions_music_xl import STATE_PIECE, compute_positions, position_table_sizes

# ----------------------------------------------------------------------------------------------------------------
# The transformer


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


__all__ = ["MusicXLForCausalLM", "MusicXLModel", "MusicXLPreTrainedModel"]
