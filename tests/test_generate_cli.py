"""Generation: MIDI prompts, chunked generation over the memory cache, streaming, and `hf-music-xl generate`."""

import io
import logging

import numpy as np
import pytest
import symusic
import torch
from transformers import AutoModelForCausalLM

from hf_music_xl.cli import main
from hf_music_xl.generate import (
    TOKENS_PER_BAR_BOUND,
    NoteStreamer,
    describe_note,
    empty_prompt,
    generate_continuation,
    prompt_ids,
)
from hf_music_xl.models.music_xl import encoding
from hf_music_xl.models.music_xl.generation_music_xl import MaxBarsCriteria
from hf_music_xl.models.music_xl.sampling_music_xl import SamplingRequest, sampling_settings


def tokens(count: int, **fields) -> SamplingRequest:
    """A request for ``count`` new tokens (no bars)."""
    return SamplingRequest(bars=0, max_new_tokens=count, **fields)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


@pytest.fixture(scope="module")
def chorale_ids(chorale_midi_files):
    return encoding.encode_midi(chorale_midi_files[0])


def test_prompt_is_the_first_bars_of_the_piece(chorale_ids):
    prompt = prompt_ids(chorale_ids, 2)
    assert prompt[:2].tolist() == [encoding.BOS_ID, encoding.PAD_ID]
    assert encoding.first_invalid_position(prompt) is None
    inside, after = encoding.ids_to_notes(prompt), encoding.ids_to_notes(chorale_ids[len(prompt) :])
    assert len(inside) and inside.onset.max() < 32
    # the rest of the piece, on the piece's time line, starts at or after the bar line
    whole = encoding.ids_to_notes(chorale_ids)
    assert len(inside) + len(after) == len(whole) and whole.onset[len(inside)] >= 32
    assert prompt_ids(chorale_ids, 0).tolist() == empty_prompt().tolist()
    everything = prompt_ids(chorale_ids, 10_000)
    assert (
        everything.tolist() == chorale_ids[:-1].tolist() if chorale_ids[-1] == encoding.EOS_ID else chorale_ids.tolist()
    )
    with pytest.raises(ValueError):
        prompt_ids(chorale_ids, -1)


def test_chunked_generation_equals_one_call_and_feeds_each_token_once(model, chorale_ids):
    prompt = prompt_ids(chorale_ids, 2)
    fed = []
    hook = model.transformer.register_forward_pre_hook(lambda module, args: fed.append(args[0].shape[1]))
    try:
        chunked = generate_continuation(model, prompt, tokens(70, chunk_tokens=16), seed=3, progress=False)
        chunk_calls = list(fed)
        fed.clear()
        one_call = generate_continuation(model, prompt, tokens(70, chunk_tokens=1000), seed=3, progress=False)
    finally:
        hook.remove()
    assert np.array_equal(chunked, one_call) and len(chunked) == len(prompt) + 70
    assert len(prompt) + 70 > 4 * model.config.mem_len  # well past the memory
    # the cache is reused across chunks: every token is fed once (the last sampled one is never fed)
    assert sum(chunk_calls) == len(prompt) + 70 - 1
    assert chunk_calls[0] == len(prompt) and set(chunk_calls[1:]) == {1}
    assert encoding.first_invalid_position(chunked) is None  # the grammar processor is on


def test_length_in_bars_and_different_seeds(model, chorale_ids, caplog):
    prompt = prompt_ids(chorale_ids, 2)
    # two allowed pitches make xxsep likely, so a random model does move through time
    request = SamplingRequest(bars=2, chunk_tokens=8, pitch_range=(60, 61))
    stop = MaxBarsCriteria(2, model.config, prompt_length=len(prompt))
    for seed in range(3):
        ids = generate_continuation(model, prompt, request, seed=seed, progress=False)
        assert encoding.first_invalid_position(ids) is None
        assert len(ids) - len(prompt) < 2 * TOKENS_PER_BAR_BOUND  # stopped by the bars, not by the bound
        sequence = torch.as_tensor(ids)[None]
        assert stop(sequence, None).item() and not stop(sequence[:, :-1], None).item()
        assert set(encoding.ids_to_notes(ids[len(prompt) :]).pitch.tolist()) <= {60, 61}
    assert not np.array_equal(ids, generate_continuation(model, prompt, request, seed=0, progress=False))
    # a length in bars with a token bound too small for it: stops at the bound and says so
    with caplog.at_level(logging.WARNING, logger="hf_music_xl.generate"):
        short = generate_continuation(model, prompt, SamplingRequest(bars=4, max_new_tokens=6), seed=0, progress=False)
    assert len(short) == len(prompt) + 6 and "stopped at the bound of 6 new tokens" in caplog.text
    with pytest.raises(ValueError, match="give the length"):
        SamplingRequest(bars=0)


def test_streamer_prints_each_note_with_bar_and_beat():
    out = io.StringIO()
    streamer = NoteStreamer(out)
    prompt = [encoding.BOS_ID, encoding.PAD_ID, 9 + 60, 137 + 4, encoding.SEP_ID, 137 + 20]  # C4, then 20 steps
    streamer.put(torch.tensor([prompt]))  # generate's input: taken as context, not printed
    for token in [9 + 64, 137 + 4, encoding.SEP_ID, 137 + 2, 9 + 67, 137 + 2]:
        streamer.put(torch.tensor([token]))
    streamer.end()
    streamer.put(torch.tensor([prompt + [9 + 64, 137 + 4]]))  # a resumed chunk puts the whole sequence again
    streamer.put(torch.tensor([9 + 72]))
    streamer.put(torch.tensor([137 + 16]))
    assert out.getvalue().splitlines() == [
        "bar 2 beat 2: E4 (quarter)",
        "bar 2 beat 2.5: G4 (8th)",
        "bar 2 beat 2.5: C5 (whole)",
    ]
    assert describe_note(2, 0.75, 61, 5) == "bar 3 beat 1.75: C#4 (5/16)"
    # beats of the meter: in 6/8 a beat is a dotted quarter (6 steps), so step 9 is beat 2.5
    six_eight = [encoding.BOS_ID, encoding.PAD_ID, encoding.TOKEN_TO_ID["ts6/8"], encoding.SEP_ID, 137 + 9]
    out = io.StringIO()
    streamer = NoteStreamer(out)
    streamer.put(torch.tensor([six_eight]))
    for token in (9 + 62, 137 + 3):
        streamer.put(torch.tensor([token]))
    assert out.getvalue().splitlines() == ["bar 1 beat 2.5: D4 (dotted 8th)"]


def test_presets():
    assert sampling_settings("conservative").note_temperature < 1 < sampling_settings("adventurous").note_temperature
    assert sampling_settings("default", top_k=7).top_k == 7
    with pytest.raises(ValueError, match="conservative"):
        sampling_settings("wild")


@pytest.mark.slow
def test_generate_command_writes_named_files_that_read_back(tiny_model_dir, chorale_midi_files, tmp_path, capsys):
    prompt_file = chorale_midi_files[1]
    stream_file = tmp_path / "notes.txt"
    common = [
        "generate",
        str(tiny_model_dir),
        "--prompt",
        str(prompt_file),
        "--prompt-bars",
        "2",
        "--bars",
        "2",
        "--chunk-tokens",
        "16",
        "--no-audio",
    ]
    main(
        common
        + ["--num-samples", "2", "--seed", "5", "--output-dir", str(tmp_path / "out"), "--stream", str(stream_file)]
    )
    stem = prompt_file.stem
    for index, seed in ((1, 5), (2, 6)):
        for suffix in (".mid", ".png"):
            assert (tmp_path / "out" / f"{stem}-{index}-seed{seed}{suffix}").is_file()
    printed = capsys.readouterr().out
    assert f"{stem}-2-seed6.mid" in printed and f"{stem}-2-seed6.png" in printed

    # the MIDI starts with exactly the prompt's notes, then the continuation
    prompt = encoding.ids_to_notes(prompt_ids(encoding.encode_midi(prompt_file), 2))
    written = encoding.score_to_notes(symusic.Score(str(tmp_path / "out" / f"{stem}-1-seed5.mid")))
    assert len(written) > len(prompt)
    assert np.array_equal(written.onset[: len(prompt)], prompt.onset)
    assert np.array_equal(written.pitch[: len(prompt)], prompt.pitch)
    assert (tmp_path / "out" / f"{stem}-1-seed5.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    streamed = stream_file.read_text().splitlines()
    assert streamed[0] == f"# {stem}-1-seed5" and f"# {stem}-2-seed6" in streamed
    assert all(line.startswith("bar ") for line in streamed if not line.startswith("#"))

    # a file name says how to make it again: seed 6 alone gives sample 2
    main(common + ["--seed", "6", "--output-dir", str(tmp_path / "again")])
    again = (tmp_path / "again" / f"{stem}-1-seed6.mid").read_bytes()
    assert again == (tmp_path / "out" / f"{stem}-2-seed6.mid").read_bytes()


def test_generate_from_nothing_in_tokens_and_bad_input(tiny_model_dir, tmp_path):
    main(
        [
            "generate",
            str(tiny_model_dir),
            "--max-new-tokens",
            "20",
            "--no-picture",
            "--no-audio",
            "--output-dir",
            str(tmp_path),
        ]
    )
    ids = encoding.encode_midi(tmp_path / "sample-1-seed0.mid")
    assert len(encoding.ids_to_notes(ids)) >= 1 and not (tmp_path / "sample-1-seed0.png").exists()
    with pytest.raises(SystemExit, match="cannot load model"):
        main(["generate", str(tmp_path / "no-such-model")])
    with pytest.raises(SystemExit, match="no-such.mid"):
        main(
            ["generate", str(tiny_model_dir), "--prompt", str(tmp_path / "no-such.mid"), "--output-dir", str(tmp_path)]
        )
    # with --bars, --max-new-tokens bounds the tokens (as in the pipeline): 5 tokens, then it stops
    main(["generate", str(tiny_model_dir), "--bars", "2", "--max-new-tokens", "5", "--output-dir", str(tmp_path / "b")])
    assert len(encoding.encode_midi(tmp_path / "b" / "sample-1-seed0.mid")) <= 2 + 5 + 1
    with pytest.raises(SystemExit, match="temperature must be a finite number"):
        main(["generate", str(tiny_model_dir), "--note-temperature", "nan", "--output-dir", str(tmp_path)])


def test_a_batch_of_samples_is_one_batch_and_each_row_is_its_sample_alone(model, chorale_ids, monkeypatch):
    """Four seeds in one batch: each row equals the sample its seed gives alone, rows of different lengths stop
    on their own (bars, or the token bound), and the model runs once per chunk for all of them, not once per
    sample; a finished row leaves the batch."""
    from hf_music_xl.generate import generate_batch

    prompt = prompt_ids(chorale_ids, 2)
    request = SamplingRequest(bars=2, chunk_tokens=12, preset="adventurous")
    alone = [generate_continuation(model, prompt, request, seed=seed, progress=False) for seed in range(4)]
    assert len({len(ids) for ids in alone}) > 1  # the rows do end at different lengths

    batch_rows, original = [], type(model).generate

    def recording_generate(self, input_ids, **kwargs):
        batch_rows.append(input_ids.shape[0])
        return original(self, input_ids, **kwargs)

    monkeypatch.setattr(type(model), "generate", recording_generate)
    together = generate_batch(model, [prompt] * 4, request, seeds=[0, 1, 2, 3], progress=False)
    for ids, single in zip(together, alone):
        assert ids.tolist() == single.tolist()
        bars = MaxBarsCriteria(2, model.config, prompt_length=len(prompt)).bars_done(torch.as_tensor(ids)[None])
        if len(ids) - len(prompt) < TOKENS_PER_BAR_BOUND * 2:  # not stopped by the token bound (the tiny model
            assert bars >= 2 and encoding.first_invalid_position(ids) is None  # may never move time forward)
    assert batch_rows[0] == 4 and batch_rows == sorted(batch_rows, reverse=True)  # rows leave as they finish
    longest = max(len(ids) for ids in alone) - len(prompt)
    assert len(batch_rows) == -(-longest // 12)  # one call per chunk of the longest row, whatever the batch
