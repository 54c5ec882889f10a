"""The position rule (positions_music_xl.py): beat positions and running state, meters, waits, across any split."""

import pytest
import torch
from helpers import BOS, PAD, SEP, dur, note

from hf_music_xl import MusicXLConfig
from hf_music_xl.models.music_xl.positions_music_xl import compute_beat_positions, compute_positions


def test_positions_hand_example():
    config = MusicXLConfig()
    ids = torch.tensor([[SEP, dur(2), note(71), dur(2), SEP, dur(2), note(71)]])
    positions, next_position = compute_beat_positions(ids, config)
    assert positions.tolist() == [[0, 0, 2, 2, 2, 2, 4]]
    assert next_position.tolist() == [4]
    # the xxbos resets to 0 at itself; a note duration is not a wait
    ids = torch.tensor([[BOS, PAD, note(60), dur(4), SEP, dur(4), note(62), dur(8), SEP, dur(3), BOS, PAD, note(60)]])
    positions, next_position = compute_beat_positions(ids, config)
    assert positions.tolist() == [[0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 0, 0, 0]]
    assert next_position.tolist() == [0]


def test_positions_continue_across_any_split():
    config = MusicXLConfig()
    generator = torch.Generator().manual_seed(0)
    # a grammar-free mix with many separators, durations and a few xxbos
    pool = torch.tensor([BOS, SEP, SEP, SEP, note(60), note(64), dur(0), dur(1), dur(3), dur(16), dur(160)])
    ids = pool[torch.randint(len(pool), (3, 60), generator=generator)]
    whole, whole_next = compute_beat_positions(ids, config)
    for split in range(1, 60):
        first, start = compute_beat_positions(ids[:, :split], config)
        second, end = compute_beat_positions(ids[:, split:], config, start, ids[:, split - 1])
        assert torch.equal(torch.cat([first, second], dim=1), whole)
        assert torch.equal(end, whole_next)


METER_POOL = [
    BOS,
    PAD,
    SEP,
    SEP,
    SEP,
    note(60),
    note(67),
    dur(0),
    dur(2),
    dur(5),
    dur(32),
    299 + 2 + 16 * 2,
    299 + 5 + 16 * 3,
    299 + 1 + 16,
]  # ts3/4, ts6/8, ts2/2 among notes, waits and pieces


def test_positions_match_the_tokenizer():
    encoding = pytest.importorskip("hf_music_xl.models.music_xl.encoding")
    generator = torch.Generator().manual_seed(1)
    pool = torch.tensor(METER_POOL)
    ids = pool[torch.randint(len(pool), (8, 120), generator=generator)]
    for scheme in ("meter", "grid"):
        features, states = compute_positions(ids, MusicXLConfig(position_scheme=scheme))
        for row, expected in zip(ids, features):
            assert encoding.position_features(row.numpy(), meter=scheme == "meter").tolist() == expected.tolist()
    times, _ = compute_beat_positions(ids, MusicXLConfig())
    not_before_bos = ids[:, 1:] != BOS  # the state after a token holds the next token's time (xxbos resets it)
    assert torch.equal(states[..., 0][:, :-1][not_before_bos], times[:, 1:][not_before_bos])


def test_meter_positions_continue_across_any_split():
    config = MusicXLConfig()
    generator = torch.Generator().manual_seed(2)
    ids = torch.tensor(METER_POOL)[torch.randint(len(METER_POOL), (3, 70), generator=generator)]
    whole, states = compute_positions(ids, config)
    for split in range(1, 70):
        first, first_states = compute_positions(ids[:, :split], config)
        second, second_states = compute_positions(ids[:, split:], config, first_states[:, -1])
        assert torch.equal(torch.cat([first, second], dim=1), whole)
        assert torch.equal(torch.cat([first_states, second_states], dim=1), states)


def test_three_four_and_six_eight_differ_in_beats_not_bars():
    three, six = [BOS, PAD, 299 + 2 + 16 * 2], [BOS, PAD, 299 + 5 + 16 * 3]
    body = [note(60), dur(2), SEP, dur(6), note(62), dur(2), SEP, dur(6), note(64), dur(2)]
    features = [compute_positions(torch.tensor([head + body]), MusicXLConfig())[0][0] for head in (three, six)]
    notes = [3, 7, 11]  # the notes at steps 0, 6 and 12
    assert features[0][notes].tolist() == [[0, 0, 0], [0, 1, 2], [1, 0, 0]]  # 3/4: beats of 4 steps
    assert features[1][notes].tolist() == [[0, 0, 0], [0, 1, 0], [1, 0, 0]]  # 6/8: beats of 6 steps


def test_beats_of_simple_and_compound_meters():
    """A beat is the denominator's note, or three of them in compound meters (6/8, 9/8, 12/8, 9/16): 3/8 and 3/16
    are three beats, not one."""
    from hf_music_xl.models.music_xl.positions_music_xl import meter_lengths

    config = MusicXLConfig.from_preset("tiny")
    lengths = dict(zip(config.meters, meter_lengths(config)))  # (bar, beat) in sixteenths
    expected = {
        (3, 4): (12, 4),
        (6, 8): (12, 6),
        (3, 8): (6, 2),
        (9, 8): (18, 6),
        (12, 8): (24, 6),
        (2, 2): (16, 8),
        (3, 16): (3, 1),
        (9, 16): (9, 3),
        (5, 4): (20, 4),
        (1, 1): (16, 16),
    }
    assert {meter: lengths[meter] for meter in expected} == expected


def test_only_a_duration_after_xxsep_is_a_wait():
    """The id right past the durations (the first time signature) after xxsep moves no time."""
    from hf_music_xl.models.music_xl.positions_music_xl import token_waits

    config = MusicXLConfig.from_preset("tiny")
    past_durations = config.duration_offset + config.num_durations
    ids = torch.tensor([[BOS, PAD, SEP, dur(4), SEP, past_durations, SEP, config.duration_offset]])
    assert token_waits(ids, config).tolist() == [[0, 0, 0, 4, 0, 0, 0, 0]]
