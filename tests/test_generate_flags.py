"""`hf-music-xl generate` flags as a user types them: --scale, --pitch-range, --preset, the temperatures, --top-k,
--top-p, --stream - and audio that needs no network."""

import socket
import wave

import numpy as np
import pytest
import symusic

from hf_music_xl.cli import main
from hf_music_xl.generate import describe_note
from hf_music_xl.models.music_xl import encoding
from hf_music_xl.models.music_xl.generation_music_xl import scale_pitch_classes


def generate(model_dir, out_dir, *flags, tokens=40, seed=0):
    """Run the command from nothing (no picture, no audio unless asked) and return the notes of its MIDI file."""
    main(
        [
            "generate",
            str(model_dir),
            "--max-new-tokens",
            str(tokens),
            "--seed",
            str(seed),
            "--no-picture",
            "--no-audio",
            "--output-dir",
            str(out_dir),
            *flags,
        ]
    )
    return encoding.score_to_notes(symusic.Score(str(out_dir / f"sample-1-seed{seed}.mid")))


def as_rows(notes):
    return list(zip(notes.onset.tolist(), notes.pitch.tolist(), notes.duration.tolist()))


def test_scale_and_pitch_range_keep_every_new_note_inside(tiny_model_dir, tmp_path):
    notes = generate(tiny_model_dir, tmp_path, "--scale", "D minor", "--pitch-range", "60", "72", tokens=80)
    assert len(notes) >= 8
    assert set(notes.pitch.tolist()) <= {p for p in range(60, 73) if p % 12 in scale_pitch_classes("D minor")}
    free = generate(tiny_model_dir, tmp_path / "free", tokens=80)  # without the flags a random model strays
    assert not set(free.pitch.tolist()) <= set(range(60, 73))


def test_top_k_and_top_p_flags_reach_the_sampler(tiny_model_dir, tmp_path):
    # top-k 1 keeps only the best grammatical token: every seed gives the same piece
    first = as_rows(generate(tiny_model_dir, tmp_path / "k1", "--top-k", "1", seed=0))
    assert as_rows(generate(tiny_model_dir, tmp_path / "k1", "--top-k", "1", seed=1)) == first
    # so does a tiny top-p (it always keeps the most likely token)
    assert as_rows(generate(tiny_model_dir, tmp_path / "p", "--top-p", "0.0001", seed=3)) == first
    # and without them two seeds differ
    assert as_rows(generate(tiny_model_dir, tmp_path / "free", seed=0)) != as_rows(
        generate(tiny_model_dir, tmp_path / "free", seed=1)
    )


def test_preset_and_the_flags_that_override_it(tiny_model_dir, tmp_path):
    conservative = as_rows(generate(tiny_model_dir, tmp_path / "c", "--preset", "conservative"))
    # the preset is exactly its four settings, each given as a flag
    spelled_out = ["--note-temperature", "0.8", "--duration-temperature", "0.7", "--top-k", "20", "--top-p", "0.9"]
    assert as_rows(generate(tiny_model_dir, tmp_path / "s", *spelled_out)) == conservative
    default = as_rows(generate(tiny_model_dir, tmp_path / "d"))
    assert default != conservative
    # flags win over the preset: conservative with the default's settings is the default
    back = ["--note-temperature", "1.0", "--duration-temperature", "1.0", "--top-k", "40", "--top-p", "0.95"]
    assert as_rows(generate(tiny_model_dir, tmp_path / "b", "--preset", "conservative", *back)) == default
    # each temperature on its own changes the piece (0.01: that kind of token is all but chosen by argmax)
    for flag in ("--note-temperature", "--duration-temperature"):
        assert (
            as_rows(generate(tiny_model_dir, tmp_path / flag, "--preset", "conservative", flag, "0.01")) != conservative
        )


def test_stream_to_stdout_prints_each_new_note_as_the_file_has_it(tiny_model_dir, tmp_path, capsys):
    notes = generate(tiny_model_dir, tmp_path, "--stream", "-", tokens=60)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "# sample-1-seed0"
    assert printed[-1] == str(tmp_path / "sample-1-seed0.mid")  # then the file written
    bar, beat, in_beat = notes.bars().beat_of(notes.onset)
    beat_length = notes.bars().beats[np.maximum(np.searchsorted(notes.meters[:, 0], notes.onset, side="right") - 1, 0)]
    expected = [
        describe_note(int(b), float(k + s / n), int(p), int(d))
        for b, k, s, n, p, d in zip(bar, beat, in_beat, beat_length, notes.pitch, notes.duration)
    ]
    streamed = printed[1:-1]
    assert len(notes) >= 5 and all(line.startswith("bar ") for line in streamed)
    # every note the file holds, streamed as it came (a note sampled twice at one onset is one in the file,
    # the longest: so compare where and which, and count at least as many lines)
    assert {line.rsplit(" (", 1)[0] for line in streamed} == {line.rsplit(" (", 1)[0] for line in expected}
    assert set(expected) <= set(streamed) and len(streamed) >= len(expected)


def test_audio_is_written_without_any_network_connection(tiny_model_dir, tmp_path, monkeypatch):
    """README: audio never downloads anything. Every way out of this process is closed while the command runs;
    it still writes a WAV that sounds (midirenderer with the soundfont inside pretty_midi, the audio extra)."""
    pytest.importorskip("midirenderer")
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("HF_MUSIC_XL_SOUNDFONT", raising=False)
    main(["generate", str(tiny_model_dir), "--max-new-tokens", "40", "--no-picture", "--output-dir", str(tmp_path)])
    assert attempts == []
    with wave.open(str(tmp_path / "sample-1-seed0.wav")) as audio:
        samples = np.frombuffer(audio.readframes(audio.getnframes()), dtype=np.int16)
    assert audio.getnframes() > audio.getframerate() // 2 and np.abs(samples).max() > 500  # half a second, not silence
