"""Configuration of the MusicXL model: a TransformerXL over the musicautobot vocabulary.

This file is copied next to saved weights for `trust_remote_code` loading: it may import only torch,
transformers, numpy and its sibling files (relative imports), and must do nothing at import time beyond
defining classes.
"""

from transformers import PretrainedConfig

from .vocabulary_music_xl import (
    BACK_ID,
    BOS_ID,
    DURATION_OFFSET,
    EOS_ID,
    GIVEN_ID,
    MAX_METER_NUMERATOR,
    METER_DENOMINATORS,
    METER_OFFSET,
    NOTE_OFFSET,
    NUM_DURATIONS,
    PAD_ID,
    SEP_ID,
    TASK_OFFSET,
    TASK_TOKENS,
    VOCAB_SIZE,
)

TASKS = ("continue", "infill", "harmonize")  # what a model can be trained for (tasks_music_xl.py)

# name -> overrides of the defaults; parameter counts are with the default vocabulary and max_bars
MODEL_PRESETS = {
    # ~0.90M parameters: CPU demos and tests
    "tiny": dict(d_model=128, n_layer=4, n_head=4, d_head=32, d_inner=512, mem_len=128, segment_len=128),
    # ~4.9M parameters: the released model (what 2 CPU cores train well in two hours, BENCHMARKS.md)
    "medium": dict(d_model=256, n_layer=6, n_head=4, d_head=64, d_inner=1024, mem_len=256, segment_len=256),
    # ~9.3M parameters: CPU training runs
    "small": dict(d_model=384, n_layer=6, n_head=6, d_head=64, d_inner=1024, mem_len=256, segment_len=256),
    # ~55M parameters: the reference musicautobot model (16 layers, 512 wide, 8 heads, mem_len 512, bptt 512)
    "base": dict(d_model=512, n_layer=16, n_head=8, d_head=64, d_inner=2048, mem_len=512, segment_len=512),
}


class MusicXLConfig(PretrainedConfig):
    r"""
    Configuration of [`MusicXLModel`] and [`MusicXLForCausalLM`]. Build one from a size preset with
    `MusicXLConfig.from_preset("tiny" | "medium" | "small" | "base", **overrides)`.

    Architecture:
        vocab_size (`int`, defaults to 383): ids 0-8 specials, 9-136 notes n0..n127, 137-297 durations d0..d160,
            298 xxunk, 299-378 time signatures ts1/1..ts16/16, 379-382 task tokens (xxgiven, xxback, xxinfill,
            xxharmonize). Models saved before time signatures have 299, before the task tokens 379.
        d_model (`int`, defaults to 512): width of the residual stream (alias `hidden_size`).
        n_layer (`int`, defaults to 16): number of transformer blocks (alias `num_hidden_layers`).
        n_head (`int`, defaults to 8): attention heads (alias `num_attention_heads`).
        d_head (`int`, defaults to `d_model // n_head`): width of one head.
        d_inner (`int`, defaults to 2048): hidden width of the feed-forward block (alias `intermediate_size`).
        dropout (`float`, defaults to 0.1): dropout on embeddings, attention output and feed-forward output.
        attn_dropout (`float`, defaults to 0.0): dropout on attention probabilities.
        layer_norm_epsilon (`float`, defaults to 1e-5): LayerNorm epsilon (blocks are pre-LayerNorm).
        initializer_range (`float`, defaults to 0.02): std of the normal init of linear and embedding weights.
        tie_word_embeddings (`bool`, defaults to True): the output projection shares the token embedding matrix.

    TransformerXL memory:
        mem_len (`int`, defaults to 512): hidden states kept per layer as memory (training and generation).
        segment_len (`int`, defaults to 512): a training input longer than this is run in segments of this
            length, each attending to the detached memory of the previous ones.
        use_cache (`bool`, defaults to True): generate() keeps the memory in a `MusicXLCache` and feeds one token
            per step (a direct forward call returns a cache only when passed use_cache=True).

    Beat positions (see `modeling_music_xl.compute_positions`):
        encode_position (`bool`, defaults to True): add beat-position embeddings to the tokens; False for ablations.
        position_scheme (`str`, defaults to "meter"): "meter": bars follow the time signature tokens (4/4 until the
            first), and a token gets the embeddings of its beat within the bar, its step within the beat and its
            bar, so 3/4 (three beats of 4 steps) and 6/8 (two of 6) differ; "grid": every bar is `steps_per_bar`
            steps whatever the meter, a token gets its step within that bar and its bar (models saved before
            time signatures; their config.json has no position_scheme and loads as "grid").
        steps_per_bar (`int`, defaults to 16): grid steps (16th notes) in a bar of the "grid" scheme.
        steps_per_beat (`int`, defaults to 4): grid steps per quarter note (bar and beat lengths of the meters).
        max_bars (`int`, defaults to 0): with N > 0, the bar of the piece (counted from its `xxbos`, in training as
            in generation) is embedded modulo N (every row reached in training when N is a phrase, say 16; no
            maximum length). 0: no bar embedding, the beat within the bar only, which measured best (BENCHMARKS.md
            compares 0, 16 and the 1,024 of models saved before).

    Window masks (training only, see `attention_music_xl.attention_block_mask`):
        mask_p (`float`, defaults to 0.2): probability per training batch of a window mask instead of the causal
            mask; 0 switches window masks off.
        mask_steps (`int`, defaults to 4): window sizes are drawn uniformly from 1..mask_steps.

    Tasks (see `tasks_music_xl.py`):
        tasks (`str`, defaults to "continue"): the tasks the model was trained for, comma-separated, from "continue",
            "infill" and "harmonize" (`hf-music-xl train --tasks`); the pipeline refuses any other task.

    Vocabulary ids (fixed by the tokenizer): bos_token_id 0 (xxbos), pad_token_id 1 (xxpad),
    eos_token_id 2 (xxeos), sep_token_id 8 (xxsep), note_offset 9, duration_offset 137, num_durations 161,
    meter_offset 299, given_token_id 379 (xxgiven), back_token_id 380 (xxback).
    """

    model_type = "music_xl"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "intermediate_size": "d_inner",
    }

    vocab_size: int = VOCAB_SIZE
    d_model: int = 512
    n_layer: int = 16
    n_head: int = 8
    d_head: int | None = None
    d_inner: int = 2048
    dropout: float = 0.1
    attn_dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    mem_len: int = 512
    segment_len: int = 512
    encode_position: bool = True
    position_scheme: str = "meter"
    steps_per_bar: int = 16
    steps_per_beat: int = 4
    max_bars: int = 0
    mask_p: float = 0.2
    mask_steps: int = 4
    use_cache: bool = True
    tie_word_embeddings: bool = True
    bos_token_id: int | None = BOS_ID
    pad_token_id: int | None = PAD_ID
    eos_token_id: int | None = EOS_ID
    sep_token_id: int = SEP_ID
    note_offset: int = NOTE_OFFSET
    duration_offset: int = DURATION_OFFSET
    num_durations: int = NUM_DURATIONS
    meter_offset: int = METER_OFFSET
    given_token_id: int = GIVEN_ID
    back_token_id: int = BACK_ID
    tasks: str = "continue"

    def __post_init__(self, **kwargs):
        if self.d_head is None:
            self.d_head = self.d_model // self.n_head
        super().__post_init__(**kwargs)
        self.check()

    def check(self):
        """Raise ValueError on settings the model cannot run with."""
        if self.mem_len < 0 or self.segment_len < 1:
            raise ValueError(f"need mem_len >= 0 and segment_len >= 1, got {self.mem_len}, {self.segment_len}")
        if self.d_model % 2:
            raise ValueError(f"d_model must be even (sinusoidal relative encodings), got {self.d_model}")
        if not 0.0 <= self.mask_p <= 1.0 or self.mask_steps < 0:
            raise ValueError(f"need 0 <= mask_p <= 1 and mask_steps >= 0, got {self.mask_p}, {self.mask_steps}")
        if self.max_bars < 0:
            raise ValueError(f"max_bars must be >= 0 (0: no bar embedding), got {self.max_bars}")
        if self.duration_offset + self.num_durations > self.vocab_size:
            raise ValueError("duration ids run past vocab_size")
        if self.position_scheme not in ("meter", "grid"):
            raise ValueError(f"position_scheme must be 'meter' or 'grid', got {self.position_scheme!r}")
        unknown = [task for task in self.task_names if task not in TASKS]
        if unknown or not self.task_names:
            raise ValueError(f"tasks must name some of {', '.join(TASKS)}, got {self.tasks!r}")
        if self.task_names != ["continue"] and not self.has_task_tokens:
            raise ValueError(f"tasks {self.tasks!r} need the task tokens: vocab_size {TASK_OFFSET + len(TASK_TOKENS)}")

    @property
    def task_names(self) -> list[str]:
        """The tasks the model was trained for, in the order given."""
        return [task.strip() for task in str(self.tasks).split(",") if task.strip()]

    @property
    def has_task_tokens(self) -> bool:
        """Whether the vocabulary has xxgiven, xxback and the task tokens (models saved before them do not)."""
        return self.vocab_size >= TASK_OFFSET + len(TASK_TOKENS)

    @property
    def meters(self) -> list[tuple[int, int]]:
        """(numerator, denominator) of each time signature token, in id order from `meter_offset`; none when the
        vocabulary predates them."""
        if self.vocab_size < self.meter_offset + len(METER_DENOMINATORS) * MAX_METER_NUMERATOR:
            return []
        return [(num, den) for den in METER_DENOMINATORS for num in range(1, MAX_METER_NUMERATOR + 1)]

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        # config.json of a model saved before time signatures has no position_scheme: its positions are the grid's
        if "position_scheme" not in config_dict and "position_scheme" not in kwargs:
            config_dict = {**config_dict, "position_scheme": "grid"}
        return super().from_dict(config_dict, **kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "MusicXLConfig":
        """A config of a named size ("tiny", "medium", "small", "base"), with any field overridden by keyword."""
        if name not in MODEL_PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(MODEL_PRESETS)}")
        return cls(**{**MODEL_PRESETS[name], **overrides})


__all__ = ["MODEL_PRESETS", "TASKS", "MusicXLConfig"]
