"""Hugging Face generation helpers for the musicautobot vocabulary: a grammar LogitsProcessor and a StoppingCriteria
by number of bars. Pass them to `generate(logits_processor=[...], stopping_criteria=[...])`."""

import torch
from transformers import GenerationConfig, LogitsProcessor, StoppingCriteria

from .configuration_music_xl import MusicXLConfig
from .positions_music_xl import (
    STATE_ANCHOR,
    STATE_BAR,
    STATE_METER,
    STATE_TIME,
    STATE_TOKEN,
    bar_and_beat_lengths,
    compute_positions,
)

PITCH_CLASSES = {
    "C": 0,
    "C#": 1,
    "Db": 1,
    "D": 2,
    "D#": 3,
    "Eb": 3,
    "E": 4,
    "F": 5,
    "F#": 6,
    "Gb": 6,
    "G": 7,
    "G#": 8,
    "Ab": 8,
    "A": 9,
    "A#": 10,
    "Bb": 10,
    "B": 11,
}
SCALE_STEPS = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}  # minor: natural minor


def scale_pitch_classes(scale: str):
    """Pitch classes (0-11) of "C major", "F# minor", ... or of an iterable of pitch classes (returned as a set)."""
    if not isinstance(scale, str):
        return {int(p) % 12 for p in scale}
    tonic, _, mode = scale.strip().partition(" ")
    if tonic not in PITCH_CLASSES or mode not in SCALE_STEPS:
        raise ValueError(f"scale must look like 'C major' or 'F# minor', got {scale!r}")
    return {(PITCH_CLASSES[tonic] + step) % 12 for step in SCALE_STEPS[mode]}


class PositionTracker:
    """The position state after the last token of each sequence, kept from call to call: when the sequences extend
    those of the call before (a generation step), only the new tokens are read, so a step costs the same however
    long the piece is; anything else (other sequences, beams reordered) is read whole."""

    def __init__(self, config):
        self.config = config
        self.ids = None  # (B, T) the sequences of the last call
        self.state = None  # (B, STATE_SIZE) the state after their last token

    def last_state(self, input_ids: torch.Tensor):
        """(B, STATE_SIZE) the position state after the last token of each row of `input_ids` (B, T)."""
        seen = 0 if self.ids is None else self.ids.shape[1]
        extends = (
            self.ids is not None
            and self.ids.shape[0] == input_ids.shape[0]
            and seen <= input_ids.shape[1]
            and torch.equal(input_ids[:, :seen], self.ids)
        )
        if not extends:
            seen, self.state = 0, None
        if input_ids.shape[1] > seen:
            _, states = compute_positions(input_ids[:, seen:], self.config, self.state)
            self.state = states[:, -1]
        self.ids = input_ids.clone()
        return self.state


def bar_clock(state, config: MusicXLConfig):
    """(B,) where the next token falls, in bars (bar index + the fraction of its bar gone), from position states
    (B, STATE_SIZE) of `compute_positions`: bars follow the time signatures."""
    bar_len, _ = bar_and_beat_lengths(config, state.device)
    length = bar_len[state[:, STATE_METER]]
    since = state[:, STATE_TIME] - state[:, STATE_ANCHOR]
    return state[:, STATE_BAR] + since // length + (since % length).double() / length


def at_bar_line(state, config: MusicXLConfig):
    """(B,) True where the next token falls on a bar line (position states (B, STATE_SIZE) of `compute_positions`)."""
    bar_len, _ = bar_and_beat_lengths(config, state.device)
    return (state[:, STATE_TIME] - state[:, STATE_ANCHOR]) % bar_len[state[:, STATE_METER]] == 0


class MusicGrammarProcessor(LogitsProcessor):
    """Only grammatical next tokens, with separate note and duration temperatures.

    Grammar (the tokenizer's): `xxbos xxpad`, then pairs; after a note or `xxsep` only a duration, never d0 (the
    encoder never writes it: a note of no length does not sound and a wait of 0 does not move); after a duration a
    note, `xxsep` or, if `allow_end`, `xxeos`; after the `xxpad` that follows `xxbos` a note or `xxsep`; after
    `xxeos` only `xxbos`, after `xxbos` only `xxpad`. A time signature (when the vocabulary has them) may come after
    that `xxpad` or after a duration, and only where a bar starts; after it a note or `xxsep`. The unused specials
    (xxs2scls, xxmask, xxcseq, xxmseq, xxnscls, xxunk) and the task tokens (xxgiven, xxback, xxinfill,
    xxharmonize: `GivenNotesProcessor` writes them in a task's layout) are never produced. After any other token
    (e.g. a prompt ending in `xxback` or an unused special) the next token is a note or `xxsep`.

    Args:
        config: a `MusicXLConfig` (for the vocabulary ids); the default vocabulary if None.
        note_temperature, duration_temperature: logits of note / duration tokens are divided by these. User
            processors run before generate's own temperature, so leave `temperature` at 1.0 when using these.
        pitch_range: (lowest, highest) MIDI pitch allowed, inclusive.
        scale: "C major", "A minor", ... or an iterable of allowed pitch classes (0 = C).
        allow_end: allow `xxeos` after a duration.
    """

    def __init__(
        self,
        config=None,
        note_temperature=1.0,
        duration_temperature=1.0,
        pitch_range=None,
        scale=None,
        allow_end=True,
    ):
        config = config if config is not None else MusicXLConfig()
        if note_temperature <= 0 or duration_temperature <= 0:
            raise ValueError("temperatures must be positive")
        vocab = config.vocab_size
        notes = torch.zeros(vocab, dtype=torch.bool)
        notes[config.note_offset : config.note_offset + 128] = True
        if pitch_range is not None:
            low, high = pitch_range
            pitches = torch.arange(vocab) - config.note_offset
            notes &= (pitches >= low) & (pitches <= high)
        if scale is not None:
            allowed = torch.tensor(sorted(scale_pitch_classes(scale)))
            notes &= torch.isin((torch.arange(vocab) - config.note_offset) % 12, allowed)
        if not notes.any():
            raise ValueError("pitch_range and scale leave no note")
        # d1..d160: d0 is in the vocabulary, but a note of no length does not sound and a wait of 0 does not move
        durations = torch.zeros(vocab, dtype=torch.bool)
        durations[config.duration_offset + 1 : config.duration_offset + config.num_durations] = True

        def only(*ids):
            row = torch.zeros(vocab, dtype=torch.bool)
            row[list(ids)] = True
            return row

        meters = torch.zeros(vocab, dtype=torch.bool)
        meters[config.meter_offset : config.meter_offset + len(config.meters)] = True
        after_duration = notes | only(config.sep_token_id) | meters
        if allow_end:
            after_duration |= only(config.eos_token_id)
        # allowed[previous token] -> (V,) bool: a transition table, so one gather per step
        allowed = (notes | only(config.sep_token_id)).expand(vocab, vocab).clone()
        allowed[config.note_offset : config.note_offset + 128] = durations
        allowed[config.sep_token_id] = durations
        allowed[config.duration_offset : config.duration_offset + config.num_durations] = after_duration
        allowed[config.pad_token_id] = notes | only(config.sep_token_id) | meters
        allowed[config.bos_token_id] = only(config.pad_token_id)
        allowed[config.eos_token_id] = only(config.bos_token_id)
        self.allowed = allowed  # (V, V)
        self.meters = meters  # (V,): allowed only where a bar starts
        self.config = config
        self.positions = PositionTracker(config)
        inverse_temperature = torch.ones(vocab)
        inverse_temperature[notes] = 1.0 / note_temperature
        inverse_temperature[durations] = 1.0 / duration_temperature
        self.inverse_temperature = inverse_temperature  # (V,)

    def __call__(self, input_ids, scores):
        # input_ids: (B, L); scores: (B, V) -> (B, V)
        if self.allowed.device != scores.device:
            self.allowed = self.allowed.to(scores.device)
            self.inverse_temperature = self.inverse_temperature.to(scores.device)
        allowed = self.allowed[input_ids[:, -1]]  # (B, V)
        if self.meters.any():
            if self.meters.device != scores.device:
                self.meters = self.meters.to(scores.device)
            could = (allowed & self.meters).any(dim=1)  # rows whose last token lets a time signature follow
            if could.any():
                mid_bar = could & ~at_bar_line(self.positions.last_state(input_ids), self.config)
                allowed = allowed & ~(mid_bar[:, None] & self.meters)
        scores = scores * self.inverse_temperature.to(scores.dtype)
        return scores.masked_fill(~allowed, float("-inf"))


class GivenNotesProcessor(LogitsProcessor):
    """Writes the given tokens of a task layout (`tasks_music_xl.py`) where they stand, and keeps the model's own
    tokens between them: when a row's time reaches its next wall (a grid step), the tokens of that wall are
    written one per step whatever the model predicts; a wait may not cross the next wall; time signatures come
    only with the given tokens. Run it after `MusicGrammarProcessor` (it overrides the grammar where it writes).

    Args:
        config: a `MusicXLConfig` (the vocabulary's ids).
        walls: per row, grid steps (increasing) at which given tokens are written.
        blocks: per row, the tokens written at each of its walls.
        prompt_lengths: per row, the length of its prompt; a row still inside its prompt (rows of different
            prompts are fed their prompts' last tokens one a step, see `sample_rows`) is left alone. None: every
            row's prompt is in the first call's input.
    `keep` drops rows that left the batch.
    """

    def __init__(self, config, walls, blocks, prompt_lengths=None):
        if len(walls) != len(blocks):
            raise ValueError(f"walls and blocks are per row: {len(walls)} rows of walls, {len(blocks)} of blocks")
        self.config = config
        self.walls, self.blocks = [list(row) for row in walls], [[list(block) for block in row] for row in blocks]
        self.prompt_lengths = list(prompt_lengths) if prompt_lengths is not None else [0] * len(walls)
        self.next_wall = [0] * len(walls)  # per row: the index of its next wall
        self.queue = [[] for _ in walls]  # per row: given tokens still to write
        self.positions = PositionTracker(config)
        self.meters = slice(config.meter_offset, config.meter_offset + len(config.meters))

    def keep(self, rows: list[int]) -> None:
        for name in ("walls", "blocks", "prompt_lengths", "next_wall", "queue"):
            setattr(self, name, [getattr(self, name)[row] for row in rows])

    def __call__(self, input_ids, scores):
        # input_ids: (B, L); scores: (B, V) -> (B, V)
        state = self.positions.last_state(input_ids)  # (B, STATE_SIZE)
        time, last = state[:, STATE_TIME].tolist(), state[:, STATE_TOKEN].tolist()
        config = self.config
        scores = scores.clone()
        scores[:, self.meters] = -float("inf")
        for row in range(input_ids.shape[0]):
            if input_ids.shape[1] < self.prompt_lengths[row]:  # still its prompt: the sampler writes it
                continue
            walls, wall = self.walls[row], self.next_wall[row]
            pair_open = config.note_offset <= last[row] < config.note_offset + 128 or last[row] == config.sep_token_id
            if not self.queue[row] and wall < len(walls) and time[row] >= walls[wall] and not pair_open:
                self.queue[row], self.next_wall[row] = list(self.blocks[row][wall]), wall + 1
            if self.queue[row]:
                token = self.queue[row].pop(0)
                scores[row] = -float("inf")
                scores[row, token] = 0.0
            elif last[row] == config.sep_token_id and wall < len(walls):
                room = walls[wall] - time[row]  # the longest wait that does not cross the wall
                scores[row, config.duration_offset + room + 1 : config.duration_offset + config.num_durations] = -float(
                    "inf"
                )
        return scores


class MaxBarsCriteria(StoppingCriteria):
    """Stop a sequence once time has advanced `num_bars` bars past the end of the prompt (or from 0), bars as the
    time signatures lay them out (`compute_positions`; 4/4 where there is none). Generation stops right after the
    wait that crosses the boundary, so every note starts inside the bars asked for.

    Args:
        num_bars: bars to generate: one number, or one per row.
        config: a `MusicXLConfig` (the vocabulary's ids); the default vocabulary if None.
        prompt_length: count bars from the end of the prompt (its first this many tokens) instead of from 0: one
            length, or one per row (rows of different prompts; a row whose prompt is not all there yet is not done).
    `keep` drops rows that left the batch.
    """

    def __init__(self, num_bars, config=None, prompt_length=None):
        self.num_bars = num_bars
        self.config = config if config is not None else MusicXLConfig()
        self.prompt_length = prompt_length
        self.positions = PositionTracker(self.config)
        self.prompt_positions = PositionTracker(self.config)
        self.prompt_clocks = None  # per row (lengths per row): the bar clock at the end of its prompt, once there

    def keep(self, rows: list[int]) -> None:
        if not isinstance(self.num_bars, (int, float)):
            self.num_bars = [self.num_bars[row] for row in rows]
        if self.prompt_length is not None and not isinstance(self.prompt_length, int):
            self.prompt_length = [self.prompt_length[row] for row in rows]
            if self.prompt_clocks is not None:
                self.prompt_clocks = self.prompt_clocks[rows]

    def __call__(self, input_ids, scores, **kwargs):
        bars = torch.as_tensor(self.num_bars, dtype=torch.double, device=input_ids.device)
        return self.bars_done(input_ids) >= bars  # (B,) bool (NaN, a prompt not all there: False)

    def bars_done(self, input_ids: torch.Tensor):
        """(B,) bars (with the fraction of the current one) from the end of the prompt to after the last token;
        NaN for a row whose prompt is longer than `input_ids`."""
        clock = bar_clock(self.positions.last_state(input_ids), self.config)
        if not self.prompt_length:
            return clock
        if isinstance(self.prompt_length, int):
            prompt = input_ids[:, : self.prompt_length]
            return clock - bar_clock(self.prompt_positions.last_state(prompt), self.config)
        return clock - self.prompt_ends(input_ids)

    def prompt_ends(self, input_ids: torch.Tensor):
        """(B,) the bar clock at the end of each row's prompt (its own length), NaN where it is not all there."""
        if self.prompt_clocks is None:
            self.prompt_clocks = torch.full((input_ids.shape[0],), float("nan"), dtype=torch.double)
        for row, length in enumerate(self.prompt_length):
            if torch.isnan(self.prompt_clocks[row]) and input_ids.shape[1] >= length:  # once per row
                _, states = compute_positions(input_ids[row : row + 1, :length], self.config)
                self.prompt_clocks[row] = bar_clock(states[:, -1], self.config)[0]
        return self.prompt_clocks.to(input_ids.device)


__all__ = [
    "GivenNotesProcessor",
    "MaxBarsCriteria",
    "MusicGrammarProcessor",
    "PositionTracker",
    "at_bar_line",
    "bar_clock",
    "scale_pitch_classes",
]


def generation_config_for(config: MusicXLConfig) -> GenerationConfig:
    """Sampling defaults for music: sampling (greedy decoding loops), top-k/top-p, the vocabulary's ids."""
    return GenerationConfig(
        do_sample=True,
        top_k=40,
        top_p=0.95,
        temperature=1.0,
        max_new_tokens=512,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
