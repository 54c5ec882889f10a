"""Piano-roll pictures and audio. Audio tests run only where a renderer and a local soundfont are installed."""

import logging
import wave

import numpy as np
import pytest

from hf_music_xl import render
from hf_music_xl.generate import prompt_ids
from hf_music_xl.models.music_xl import encoding


@pytest.fixture(scope="module")
def piece(chorale_midi_files):
    """A real chorale as (ids, prompt length): its first 2 bars play the prompt's part."""
    ids = encoding.encode_midi(chorale_midi_files[0])[:300]
    return ids, len(prompt_ids(ids, 2))


def test_split_notes_keeps_the_time_line(piece):
    ids, prompt_len = piece
    prompt, continuation = render.split_notes(ids, prompt_len)
    whole = encoding.ids_to_notes(ids)
    assert len(prompt) + len(continuation) == len(whole) and len(prompt) and len(continuation)
    assert prompt.onset.max() < 32 <= continuation.onset.min()
    assert np.array_equal(np.r_[prompt.onset, continuation.onset], whole.onset)


def test_piano_roll_is_a_png_with_both_colours(piece, tmp_path):
    import matplotlib.image

    ids, prompt_len = piece
    path = render.piano_roll(ids, prompt_len, tmp_path / "roll.png", title="test")
    image = matplotlib.image.imread(path)  # (H, W, 4) floats
    assert image.shape[0] > 300 and image.shape[1] > 500
    pixels = np.round(image[..., :3] * 255).astype(int)  # (H, W, 3)
    for hex_colour in (render.PROMPT_COLOUR, render.CONTINUATION_COLOUR):
        rgb = [int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]
        assert (pixels == rgb).all(axis=-1).sum() > 100  # many pixels of each colour
    # edge cases: only a prompt, or nothing at all
    assert render.piano_roll(ids, len(ids), tmp_path / "prompt-only.png").is_file()
    assert render.piano_roll(encoding.notes_to_ids(encoding.ids_to_notes([])), 2, tmp_path / "empty.png").is_file()


def test_without_a_renderer_the_other_files_are_written_and_one_line_says_how(piece, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(render, "find_renderer", lambda: None)
    monkeypatch.setattr(render, "_already_told", set())
    ids, prompt_len = piece
    with caplog.at_level(logging.WARNING, logger="hf_music_xl.render"):
        first = render.render_outputs(ids, prompt_len, tmp_path / "a-1-seed0")
        second = render.render_outputs(ids, prompt_len, tmp_path / "a-2-seed1")
    assert first["midi"].is_file() and first["picture"].is_file() and first["audio"] is None
    assert second["audio"] is None and not (tmp_path / "a-1-seed0.wav").exists()
    told = [record.getMessage() for record in caplog.records]
    assert len(told) == 1 and "apt-get install fluidsynth" in told[0] and "pip install midirenderer" in told[0]
    # the MIDI reads back to the same notes
    written = encoding.score_to_notes(encoding.load_score(first["midi"]))
    assert np.array_equal(written.pitch, encoding.ids_to_notes(ids).pitch)


def test_soundfont_lookup(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="soundfont"):
        render.find_soundfont(tmp_path / "missing.sf2")
    font = tmp_path / "mine.sf2"
    font.write_bytes(b"RIFF")
    assert render.find_soundfont(font) == font
    monkeypatch.setenv(render.SOUNDFONT_ENV, str(font))
    assert render.find_soundfont() == font
    monkeypatch.setenv(render.SOUNDFONT_ENV, str(tmp_path / "gone.sf2"))
    with pytest.raises(FileNotFoundError):
        render.find_soundfont()


def available_renderers():
    found = []
    if render.shutil.which("fluidsynth"):
        found.append("fluidsynth")
    if render.importlib.util.find_spec("midirenderer") is not None:
        found.append("midirenderer")
    return found


@pytest.mark.parametrize(
    "renderer", available_renderers() or [pytest.param(None, marks=pytest.mark.skip("no audio renderer installed"))]
)
def test_audio_is_rendered_with_a_local_soundfont(renderer, piece, tmp_path, monkeypatch):
    monkeypatch.delenv(render.SOUNDFONT_ENV, raising=False)
    if render.find_soundfont() is None:
        pytest.skip("no local soundfont")
    ids, _ = piece
    midi = tmp_path / "piece.mid"
    encoding.decode_ids(ids[:80]).dump_midi(str(midi))  # a few bars: rendering is quick
    path = render.render_wav(midi, tmp_path / "piece.wav", renderer=renderer)
    with wave.open(str(path)) as audio:
        seconds = audio.getnframes() / audio.getframerate()
        samples = np.frombuffer(audio.readframes(audio.getnframes()), dtype=np.int16)
    notes = encoding.ids_to_notes(ids[:80])
    music_seconds = (notes.onset + notes.duration).max() / encoding.STEPS_PER_BEAT / 2  # 120 quarter notes a minute
    assert music_seconds <= seconds <= music_seconds + 5  # plus the release tail
    assert np.abs(samples).max() > 500  # not silence
