"""The task layouts (tasks_music_xl.py): written out by hand, read back by the position rule and the decoder, made
into training examples on the fly (seeded), written at generation by GivenNotesProcessor, and trained."""

import json

import numpy as np
import pytest
import torch
from helpers import dur, note

from hf_music_xl import MusicXLConfig
from hf_music_xl.data.streams import PieceStreams
from hf_music_xl.data.task_examples import parse_tasks, piece_notes, task_example
from hf_music_xl.hub.model_card import build_model_card
from hf_music_xl.models.music_xl import encoding as E
from hf_music_xl.models.music_xl import tasks_music_xl as T
from hf_music_xl.models.music_xl.generation_music_xl import GivenNotesProcessor, MusicGrammarProcessor
from hf_music_xl.models.music_xl.positions_music_xl import compute_positions

GIVEN, BACK, SEP, EOS = E.GIVEN_ID, E.BACK_ID, E.SEP_ID, E.EOS_ID
TS44 = E.meter_token(4, 4)


def two_voice_piece() -> E.Notes:
    """Three bars of 4/4: a melody (voice 0) of half notes over a bass (voice 1) of whole notes."""
    melody = [(0, 72), (8, 74), (16, 76), (24, 77), (32, 79), (40, 77)]
    bass = [(0, 48), (16, 43), (32, 48)]
    rows = sorted([(t, p, 8, 0) for t, p in melody] + [(t, p, 16, 1) for t, p in bass], key=lambda r: (r[0], -r[1]))
    onset, pitch, duration, voice = (np.array(column, np.int64) for column in zip(*rows))
    return E.Notes(onset, pitch, duration, voice=voice)


def test_infill_layout_written_out_by_hand():
    ids = T.infill_ids(two_voice_piece(), 1, 1)  # bar 2 of 3 (0-based 1): steps 16..32
    expected = (
        [E.BOS_ID, E.PAD_ID, E.INFILL_ID, TS44]
        + [GIVEN, SEP, dur(32), note(79), dur(8), note(48), dur(16), SEP, dur(8), note(77), dur(8), BACK]  # bar 3
        + [note(72), dur(8), note(48), dur(16), SEP, dur(8), note(74), dur(8), SEP, dur(8)]  # bar 1, wait to 16
        + [note(76), dur(8), note(43), dur(16), SEP, dur(8), note(77), dur(8), SEP, dur(8), EOS]  # bar 2, to 32
    )
    assert ids.tolist() == expected  # the right side given ahead (here from 0), the span after the left side


def test_the_right_side_is_given_a_few_bars_ahead(chorale_scores):
    notes = E.read_notes(chorale_scores[0][1])
    ids = T.infill_ids(notes, 6, 7)
    given_at = int(np.flatnonzero(ids == GIVEN)[0])
    assert E.ids_to_notes(ids[:given_at]).onset.max() < notes.bars().bar_time(6 - T.INFILL_AHEAD_BARS)
    assert E.ids_to_notes(ids[given_at:]).onset.max() < notes.bars().bar_time(8 + T.INFILL_CONTEXT_BARS)


def test_harmonize_layout_written_out_by_hand():
    notes = two_voice_piece()
    ids = T.harmonize_ids(notes, notes.voice == 0)

    def bar(first, second, bass):  # the bar's melody given, then the bar: each melody note given where it sounds
        block = [GIVEN, note(first), dur(8), SEP, dur(8), note(second), dur(8), BACK]
        return (
            block
            + [GIVEN, note(first), dur(8), BACK, note(bass), dur(16), SEP, dur(8)]
            + [
                GIVEN,
                note(second),
                dur(8),
                BACK,
                SEP,
                dur(8),
            ]
        )

    expected = [E.BOS_ID, E.PAD_ID, E.HARMONIZE_ID, TS44] + bar(72, 74, 48) + bar(76, 77, 43) + bar(79, 77, 48)
    assert ids.tolist() == expected + [EOS]


def test_a_meter_change_stands_where_the_plain_encoding_puts_it():
    notes = two_voice_piece()
    notes.meters = np.array([[0, 4, 4], [16, 3, 4]])  # 3/4 from bar 2: bars at 0, 16, 28, 40
    harmonized = T.harmonize_ids(notes, notes.voice == 0)
    ts34 = E.meter_token(3, 4)
    at = int(np.flatnonzero(harmonized == ts34)[0])
    assert harmonized[at + 1] == GIVEN and harmonized[at - 2 : at].tolist() == [SEP, dur(8)]  # after bar 1's wait
    prompt = T.harmonize_prompt(notes.select(notes.voice == 0))
    assert prompt.walls == [8, 16, 24, 28, 32, 40, 52]  # the melody's onsets and the bar lines
    assert prompt.blocks[1][:2] == [ts34, GIVEN] and prompt.blocks[-1] == [EOS]  # the sampler writes the change
    with pytest.raises(ValueError, match="time signature change"):
        T.span_times(notes, 0, 1)  # bars 1-2 would cross the change at bar 2
    assert T.span_times(notes, 1, 2) == (16, 40)  # a span may start one


def test_spans_outside_the_piece_are_refused():
    with pytest.raises(ValueError, match="not within the piece's bars 1-3"):
        T.span_times(two_voice_piece(), 2, 3)


@pytest.mark.parametrize("task", ["infill", "harmonize"])
def test_layout_notes_get_the_positions_and_times_of_the_plain_piece(chorale_scores, task):
    """Every note token of a layout has the position features (bar, beat, step) it has in the plain piece, and
    decoding the layout gives back its notes (an infilling's right side: the bars after the span up to
    INFILL_CONTEXT_BARS): xxback takes time back where it must."""
    config = MusicXLConfig.from_preset("tiny")
    for _, score in chorale_scores[:3]:
        notes = E.read_notes(score)
        plain = E.notes_to_ids(notes, add_eos=True)
        if task == "infill":
            ids = T.infill_ids(notes, 2, 5)
        else:
            ids = T.harmonize_ids(notes, notes.voice == T.melody_voice(notes))
        features = {}
        for sequence in (plain, ids):
            found, _ = compute_positions(torch.as_tensor(sequence)[None], config)
            is_note = (sequence >= E.NOTE_OFFSET) & (sequence < E.NOTE_OFFSET + E.NUM_PITCHES)
            features[len(features)] = sorted((int(sequence[i]), *found[0, i].tolist()) for i in np.flatnonzero(is_note))
        decoded = E.ids_to_notes(ids)
        decoded = np.unique(np.c_[decoded.onset, -decoded.pitch], axis=0)  # a harmonization gives the melody twice
        kept = notes.onset < (notes.bars().bar_time(6 + T.INFILL_CONTEXT_BARS) if task == "infill" else np.inf)
        assert set(features[1]) <= set(features[0])
        assert len(set(features[1])) == len({(int(o), int(p)) for o, p in zip(notes.onset[kept], notes.pitch[kept])})
        assert decoded.tolist() == np.c_[notes.onset, -notes.pitch][kept].tolist()
        assert E.first_invalid_position(ids) is None


def test_written_and_given_notes_of_a_layout(chorale_scores):
    notes = E.read_notes(chorale_scores[0][1])
    melody = notes.voice == T.melody_voice(notes)
    ids = T.harmonize_ids(notes, melody)
    given, written = T.given_notes(ids), T.written_notes(ids, 0)
    assert np.array_equal(given.onset, notes.onset[melody]) and np.array_equal(given.pitch, notes.pitch[melody])
    assert np.array_equal(written.pitch, notes.pitch[~melody])
    prompt, middle, start, end = T.infill_parts(notes, 1, 3)
    filled = T.written_notes(np.concatenate([prompt, middle]), len(prompt))
    inside = (notes.onset >= start) & (notes.onset < end)
    assert np.array_equal(filled.onset, notes.onset[inside]) and np.array_equal(filled.pitch, notes.pitch[inside])


def walk(layout: np.ndarray, prompt_length: int, processors) -> list[int]:
    """Feed ``layout`` token by token after its prompt through the processors (as generate() calls them, one growing
    sequence); return the positions where the layout's next token was not allowed."""
    refused = []
    for end in range(prompt_length, len(layout)):
        scores = torch.zeros(1, E.VOCAB_SIZE)
        for processor in processors:
            scores = processor(torch.as_tensor(layout[:end])[None], scores)
        if not torch.isfinite(scores[0, layout[end]]):
            refused.append(end)
    return refused


def test_processors_allow_the_harmonization_layout_and_write_its_given_tokens():
    """Walking the hand-checked layout: every token the model writes is allowed, and every given token is the only
    token allowed where it stands (the sampler writes it)."""
    config = MusicXLConfig.from_preset("tiny")
    notes = two_voice_piece()
    layout = T.harmonize_ids(notes, notes.voice == 0)
    prompt = T.harmonize_prompt(notes.select(notes.voice == 0))
    assert layout[: len(prompt.ids)].tolist() == prompt.ids.tolist()
    grammar = MusicGrammarProcessor(config, allow_end=False)
    given = GivenNotesProcessor(config, [prompt.walls], [prompt.blocks])
    assert walk(layout, len(prompt.ids), [grammar, given]) == []
    given = GivenNotesProcessor(config, [prompt.walls], [prompt.blocks])
    forced = []
    for end in range(len(prompt.ids), len(layout)):
        scores = given(torch.as_tensor(layout[:end])[None], torch.zeros(1, E.VOCAB_SIZE))
        if torch.isfinite(scores[0]).sum() == 1:
            forced.append(int(layout[end]))
    blocks = [token for block in prompt.blocks for token in block]
    assert forced == blocks  # bar 2's and bar 3's melody, then xxeos


def test_waits_may_not_cross_a_wall_and_time_signatures_come_only_given():
    config = MusicXLConfig.from_preset("tiny")
    notes = two_voice_piece()
    prompt = T.harmonize_prompt(notes.select(notes.voice == 0))
    given = GivenNotesProcessor(config, [prompt.walls], [prompt.blocks])
    sequence = np.concatenate([prompt.ids, [note(48), dur(16), SEP]])  # the bass, then a wait from step 0
    scores = given(torch.as_tensor(sequence)[None], torch.zeros(1, E.VOCAB_SIZE))[0]
    allowed_waits = [i - E.DURATION_OFFSET for i in range(E.DURATION_OFFSET, E.DURATION_OFFSET + E.NUM_DURATIONS)]
    allowed_waits = [wait for wait in allowed_waits if torch.isfinite(scores[E.DURATION_OFFSET + wait])]
    assert max(allowed_waits) == 8  # to the melody's next note, not past it
    assert not torch.isfinite(scores[E.METER_OFFSET : E.METER_OFFSET + len(E.METERS)]).any()


def test_task_mixing_weights():
    assert parse_tasks("continue,infill,harmonize") == pytest.approx(
        {"continue": 0.5, "infill": 0.25, "harmonize": 0.25}
    )
    assert parse_tasks("continue:1,infill:3") == pytest.approx({"continue": 0.25, "infill": 0.75})
    for bad, message in [("sing", "unknown task"), ("infill:0", "> 0"), ("infill:x", "a number"), ("", "no task")]:
        with pytest.raises(ValueError, match=message):
            parse_tasks(bad)


def test_a_piece_with_one_voice_is_never_harmonized():
    notes = two_voice_piece()
    ids = E.notes_to_ids(notes, add_eos=True)
    one_voice = np.where(E.token_voices(ids, notes.voice) >= 0, 0, -1)
    tasks = {task_example(ids, one_voice, {"harmonize": 1.0}, np.random.default_rng(seed))[1] for seed in range(20)}
    assert tasks == {"continue"}
    two = task_example(ids, E.token_voices(ids, notes.voice), {"harmonize": 1.0}, np.random.default_rng(0))
    assert two[1] == "harmonize" and two[0].tolist() == T.harmonize_ids(notes, notes.voice == 0).tolist()
    assert np.array_equal(piece_notes(ids, E.token_voices(ids, notes.voice)).voice, notes.voice)


def test_task_examples_are_a_function_of_seed_epoch_and_index(chorale_corpus):
    tasks = parse_tasks("continue,infill,harmonize")
    first, again = (PieceStreams(chorale_corpus["train"], 2, 128, seed=3, tasks=tasks) for _ in range(2))
    other = PieceStreams(chorale_corpus["train"], 2, 128, seed=4, tasks=tasks)
    order = list(range(len(first)))
    reads = [first[i]["input_ids"] for i in order]
    assert all(np.array_equal(again[i]["input_ids"], reads[i]) for i in reversed(order))  # any order of reading
    assert not all(np.array_equal(other[i]["input_ids"], reads[i]) for i in order)
    # the same piece at the same place of the deal: another seed draws other tasks and spans (not only another deal)
    places = [(piece, 0, 0, cursor) for cursor, piece in enumerate(range(len(chorale_corpus["train"])))]
    draws = [[streams.example(*place) for place in places] for streams in (first, again, other)]
    assert all(np.array_equal(a, b) for a, b in zip(draws[0], draws[1]))
    assert not all(np.array_equal(a, b) for a, b in zip(draws[0], draws[2]))
    seen = np.concatenate(reads)
    assert (seen == E.INFILL_ID).any() and (seen == E.HARMONIZE_ID).any() and (seen == E.BOS_ID).any()
    plain = PieceStreams(chorale_corpus["train"], 2, 128, seed=3)
    assert not np.isin(np.concatenate([plain[i]["input_ids"] for i in order]), [E.GIVEN_ID, E.BACK_ID]).any()


def test_config_tasks():
    assert MusicXLConfig().task_names == ["continue"] and MusicXLConfig().has_task_tokens
    assert MusicXLConfig(tasks="continue,infill").task_names == ["continue", "infill"]
    with pytest.raises(ValueError, match="tasks must name"):
        MusicXLConfig(tasks="sing")
    with pytest.raises(ValueError, match="need the task tokens"):
        MusicXLConfig(vocab_size=379, tasks="infill")  # a vocabulary saved before them
    assert not MusicXLConfig(vocab_size=379).has_task_tokens


def test_train_records_its_tasks(chorale_corpus_dir, tmp_path):
    from test_train_flags import train_command

    train_command(chorale_corpus_dir, tmp_path, "--max-steps", "2", "--tasks", "continue:2,infill,harmonize")
    config = json.loads((tmp_path / "final" / "config.json").read_text())
    assert config["tasks"] == "continue,infill,harmonize" and config["vocab_size"] == E.VOCAB_SIZE
    card = build_model_card(tmp_path / "final", "me/multitask").content
    assert (
        "Trained for the tasks continue, infill, harmonize" in card
        and "| tasks | `continue:2,infill,harmonize` |" in card
    )
    with pytest.raises(SystemExit, match="needs --train-mode stream"):  # the CLI prints the one line
        train_command(
            chorale_corpus_dir, tmp_path / "w", "--max-steps", "2", "--tasks", "infill", "--train-mode", "windows"
        )
