"""Where each token falls in the music: its time and its meter, by the tokenizer's rule, as the model embeds them.

Read top to bottom: time from the waits since the last `xxbos`, then the meter (time signature tokens), bars and
beats, as position features (bar, beat within the bar, step within the beat) and a running state that continues a
sequence across calls (the cache keeps it per token).

This file is copied next to saved weights for `trust_remote_code` loading: it may import only torch, transformers,
numpy and its sibling files (relative imports), and must do nothing at import time beyond defining things.
"""

import torch

from .configuration_music_xl import MusicXLConfig


def compute_beat_positions(
    input_ids: torch.Tensor,
    config: MusicXLConfig,
    start_position: torch.Tensor | None = None,
    previous_token: torch.Tensor | None = None,
):
    """Grid position of every token, by the tokenizer's rule, and the position the next token would get.

    A duration token directly after `xxsep` is a wait. A token's position is the sum of the waits strictly before
    it since the last `xxbos` (the `xxbos` itself is at 0), so `xxsep d2` keep the old position and the token after
    them carries the new one: `xxsep(0) d2(0) n71(2) d2(2) xxsep(2) d2(2) n71(4)`.

    `start_position` (B,) and `previous_token` (B,) continue a sequence whose earlier tokens were already consumed
    (the cache keeps both); without them the input starts at position 0.

    Returns positions (B, T) and next_position (B,), both long.
    """
    waits = token_waits(input_ids, config, previous_token)  # (B, T)
    positions = times_from_waits(input_ids, waits, config, start_position)
    return positions, positions[:, -1] + waits[:, -1]


def times_from_waits(
    input_ids: torch.Tensor, waits: torch.Tensor, config: MusicXLConfig, start_position: torch.Tensor | None
):
    """(B, T) the grid position of every token from the waits (B, T) of `token_waits`: the sum of the waits strictly
    before it since the last `xxbos`, from `start_position` (B,) (None: 0)."""
    before = waits.cumsum(dim=1) - waits  # sum of the waits strictly before each token
    if start_position is not None:
        before = before + start_position[:, None]
    is_bos = input_ids == config.bos_token_id
    if not bool(is_bos.any()):  # a generation step: no restart to find
        return before
    # restart at every xxbos: subtract the running sum found at the latest xxbos at or before each token
    batch, length = input_ids.shape
    index = torch.arange(length, device=input_ids.device).expand(batch, length)
    last_bos = torch.where(is_bos, index, -1).cummax(dim=1).values  # (B, T), -1 = none
    at_last_bos = before.gather(1, last_bos.clamp(min=0))
    return before - torch.where(last_bos >= 0, at_last_bos, 0)


def token_waits(input_ids: torch.Tensor, config: MusicXLConfig, previous_token: torch.Tensor | None = None):
    """(B, T) the steps each token moves time on: its duration if it follows `xxsep`, else 0. `previous_token`
    (B,) is the token before the first (None: no token)."""
    if previous_token is None:
        previous_token = input_ids.new_full((input_ids.shape[0],), -1)
    previous = torch.cat([previous_token[:, None], input_ids[:, :-1]], dim=1)  # (B, T) token before each token
    duration = input_ids - config.duration_offset
    is_wait = (previous == config.sep_token_id) & (duration >= 0) & (duration < config.num_durations)
    return torch.where(is_wait, duration, 0)


# The running state of the position rule after a token, one row of STATE_SIZE per sequence: the grid step of the next
# token, the token itself (a wait is a duration after xxsep), the time signature in force (its token id), where that
# meter took effect (its time, a bar line, and the bar index there), the piece the token belongs to (the number
# of xxbos so far: a token attends only to its own piece), and what the last open xxgiven saved (its time, -1 when
# none is open, and the meter, anchor and bar there), which xxback returns to.
STATE_TIME, STATE_TOKEN, STATE_METER, STATE_ANCHOR, STATE_BAR, STATE_PIECE = range(6)
STATE_SAVED_TIME, STATE_SAVED_METER, STATE_SAVED_ANCHOR, STATE_SAVED_BAR = range(6, 10)
STATE_SIZE = 10


def initial_state(batch: int, device) -> torch.Tensor:
    """(B, STATE_SIZE) the state before a sequence's first token: time 0, no token before, 4/4, nothing given."""
    state = torch.zeros(batch, STATE_SIZE, dtype=torch.long, device=device)
    state[:, STATE_TOKEN] = -1
    state[:, STATE_SAVED_TIME] = -1
    return state


def meter_lengths(config: MusicXLConfig):
    """(grid steps of a bar, of a beat) of each time signature of the vocabulary, in id order. A beat is the
    denominator's note, or three of them in compound meters (6/8, 9/8, 12/8), so that 3/4 and 6/8 differ."""
    whole = 4 * config.steps_per_beat  # grid steps in a whole note
    lengths = []
    for num, den in config.meters:
        compound = den >= 8 and num > 3 and num % 3 == 0
        lengths.append((max(1, round(num * whole / den)), max(1, round((3 if compound else 1) * whole / den))))
    return lengths


def bar_and_beat_lengths(config: MusicXLConfig, device: torch.device | str):
    """(V,) grid steps of a bar and of a beat for each token id: the meter's for time signature tokens, 4/4's for
    every other id (so a state without a time signature yet reads as 4/4). Built once per vocabulary and device,
    since every generation step reads them (rebuilding them was a twentieth of a one-row step); callers must not
    write into them."""
    key = (config.vocab_size, config.meter_offset, config.steps_per_beat, str(device))
    if key not in LENGTH_TABLES:
        whole = 4 * config.steps_per_beat
        bar = torch.full((config.vocab_size,), whole, dtype=torch.long, device=device)
        beat = torch.full((config.vocab_size,), whole // 4, dtype=torch.long, device=device)
        lengths = meter_lengths(config)
        if lengths:
            meters = slice(config.meter_offset, config.meter_offset + len(lengths))
            bar[meters] = torch.tensor([b for b, _ in lengths], dtype=torch.long, device=device)
            beat[meters] = torch.tensor([b for _, b in lengths], dtype=torch.long, device=device)
        LENGTH_TABLES[key] = bar, beat
    return LENGTH_TABLES[key]


LENGTH_TABLES = {}  # (vocab_size, meter_offset, steps_per_beat, device) -> the (bar, beat) tables


def position_table_sizes(config: MusicXLConfig):
    """(beats in the longest bar, steps in the longest beat) over the vocabulary's meters (4/4's at least): the
    sizes of the beat and step embeddings of the meter scheme."""
    lengths = meter_lengths(config) + [(4 * config.steps_per_beat, config.steps_per_beat)]
    return max(bar // beat for bar, beat in lengths), max(beat for _, beat in lengths)


def compute_positions(input_ids: torch.Tensor, config: MusicXLConfig, state=None):
    """Position features of every token and the running state after each, by the tokenizer's rule.

    Time: `compute_beat_positions` (waits since the last `xxbos`). Meter: a piece starts in 4/4 at bar 0; a time
    signature token takes effect at its own time, where a bar starts (the bars before it counted up, a short last
    one included), and the token itself counts in the new meter; `xxbos` starts over. Given notes (the task
    layouts of `tasks_music_xl.py`): `xxgiven` saves the time and the meter where it stands, and the next `xxback`
    takes both back there (an `xxback` with no open `xxgiven` does nothing), so the notes written after it sound
    in the same bars as the given ones. The features are, with `config.position_scheme` "meter", (bar, beat within
    the bar, step within the beat), and with "grid" (bar of `steps_per_bar` steps, step within it, 0).

    state: (B, STATE_SIZE) long, the state after the last token consumed (the cache keeps it), or None at a start.
    Returns features (B, T, 3) and states (B, T, STATE_SIZE), both long.
    """
    batch, length = input_ids.shape
    device = input_ids.device
    if state is None:
        state = initial_state(batch, device)
    waits = token_waits(input_ids, config, state[:, STATE_TOKEN])  # (B, T)
    times = times_from_waits(input_ids, waits, config, state[:, STATE_TIME])
    bar_len, beat_len = bar_and_beat_lengths(config, device)
    is_bos = input_ids == config.bos_token_id
    is_meter = (input_ids >= config.meter_offset) & (input_ids < config.meter_offset + len(config.meters))
    is_event = is_bos | is_meter
    is_given = is_back = torch.zeros_like(is_bos)
    if config.has_task_tokens:
        is_given, is_back = input_ids == config.given_token_id, input_ids == config.back_token_id
        is_event = is_event | is_given | is_back
    # the meter, its time, its bar, the time taken back and the saved state only change at xxbos, time signatures,
    # xxgiven and xxback: walk those columns only (few; none in most generation steps)
    meter, anchor, bar = state[:, STATE_METER], state[:, STATE_ANCHOR], state[:, STATE_BAR]
    meter = torch.where(meter >= config.meter_offset, meter, 0)  # 0: not a meter token, read as 4/4
    rewound = torch.zeros_like(meter)  # steps xxback has taken time back within this call
    saved = state[:, STATE_SAVED_TIME : STATE_SAVED_BAR + 1]  # (B, 4) time, meter, anchor, bar at the open xxgiven
    in_force = [torch.cat([torch.stack([meter, anchor, bar, rewound], dim=1), saved], dim=1)]  # (B, 8) per event
    event_columns = is_event.any(dim=0)  # (T,)
    for column in event_columns.nonzero().flatten().tolist():
        time = times[:, column] - rewound
        bars_so_far = bar + torch.div(time - anchor + bar_len[meter] - 1, bar_len[meter], rounding_mode="floor")
        here_meter, here_bos = is_meter[:, column], is_bos[:, column]
        meter = torch.where(here_meter, input_ids[:, column], torch.where(here_bos, 0, meter))
        anchor = torch.where(here_meter, time, torch.where(here_bos, 0, anchor))
        bar = torch.where(here_meter, bars_so_far, torch.where(here_bos, 0, bar))
        saved = torch.where(is_given[:, column, None], torch.stack([time, meter, anchor, bar], dim=1), saved)
        back = is_back[:, column] & (saved[:, 0] >= 0)  # (B,) rows whose xxback closes an open xxgiven
        rewound = torch.where(back, rewound + time - saved[:, 0], rewound)
        meter, anchor, bar = (torch.where(back, saved[:, k], value) for k, value in ((1, meter), (2, anchor), (3, bar)))
        closed = torch.where(back | here_bos, -1, saved[:, 0])  # xxbos starts a piece with nothing given
        saved = torch.cat([closed[:, None], saved[:, 1:]], dim=1)
        rewound = torch.where(here_bos, 0, rewound)  # the raw times restart at xxbos too
        in_force.append(torch.cat([torch.stack([meter, anchor, bar, rewound], dim=1), saved], dim=1))
    if len(in_force) == 1:  # no event: one entry in force for every token
        forced = in_force[0][:, None].expand(batch, length, 8)  # (B, T, 8)
    else:
        which = event_columns.long().cumsum(dim=0)  # (T,) entry of in_force for each token
        forced = torch.stack(in_force, dim=1)[:, which]  # (B, T, 8)
    meter, anchor, bar, rewound = forced[..., :4].unbind(dim=-1)  # each (B, T)
    times = times - rewound
    since = times - anchor
    bar_steps, beat_steps = bar_len[meter], beat_len[meter]  # (B, T) each
    bars, steps = bar + since // bar_steps, since % bar_steps  # (B, T)
    if config.position_scheme == "meter":
        features = torch.stack([bars, steps // beat_steps, steps % beat_steps], dim=-1)
    else:
        grid = config.steps_per_bar
        features = torch.stack([times // grid, times % grid, torch.zeros_like(times)], dim=-1)
    after = times + waits  # time after each token (an xxbos next resets it)
    piece = state[:, STATE_PIECE, None] + is_bos.long().cumsum(dim=1)  # an xxbos opens its own piece
    states = torch.cat([torch.stack([after, input_ids, meter, anchor, bar, piece], dim=-1), forced[..., 4:]], dim=-1)
    return features, states


__all__ = [
    "STATE_ANCHOR",
    "STATE_BAR",
    "STATE_METER",
    "STATE_PIECE",
    "STATE_SAVED_ANCHOR",
    "STATE_SAVED_BAR",
    "STATE_SAVED_METER",
    "STATE_SAVED_TIME",
    "STATE_SIZE",
    "STATE_TIME",
    "STATE_TOKEN",
    "bar_and_beat_lengths",
    "compute_beat_positions",
    "compute_positions",
    "initial_state",
    "meter_lengths",
    "position_table_sizes",
    "times_from_waits",
    "token_waits",
]
