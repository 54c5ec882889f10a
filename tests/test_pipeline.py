"""The `music-generation` pipeline: saved with the model, loaded with `pipeline(model=..., trust_remote_code=True)`
in a fresh interpreter without hf_music_xl, on real chorale MIDI files."""

import json

import numpy as np
import pytest
import symusic
from helpers import run_without_package
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_music_xl import MidiReadError
from hf_music_xl.generate import generate_continuation, load_pipeline, midi_prompt
from hf_music_xl.models.music_xl import encoding
from hf_music_xl.models.music_xl.sampling_music_xl import SamplingRequest


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    """With the package: its own MusicXLPipeline class (the remote-code one is tested in a fresh interpreter)."""
    return load_pipeline(str(tiny_model_dir))


def expected_ids(model_dir, prompt, seed, **kwargs):
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    return generate_continuation(model, prompt, SamplingRequest(**kwargs), seed=seed, progress=False).tolist()


def test_saved_model_names_its_pipeline(tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["custom_pipelines"] == {
        "music-generation": {"impl": "pipeline_music_xl.MusicXLPipeline", "pt": ["AutoModelForCausalLM"]}
    }
    assert {"pipeline_music_xl.py", "generation_music_xl.py", "encoding.py"} <= {
        p.name for p in tiny_model_dir.iterdir()
    }


def test_pipeline_without_the_package_in_a_fresh_interpreter(tiny_model_dir, chorale_midi_files, tmp_path):
    """-I -S hides the editable install (as in test_modeling); the pipeline comes from the model directory."""
    midi = str(chorale_midi_files[0])
    out = run_without_package(
        f"""
        import symusic
        from transformers import pipeline
        pipe = pipeline(model={str(tiny_model_dir)!r}, trust_remote_code=True)
        score = symusic.Score({midi!r})
        data = open({midi!r}, "rb").read()
        from_path = pipe({midi!r}, bars=1, prompt_bars=2, seed=5, num_samples=2, preset="conservative")
        batch = pipe([data, score, None], bars=1, prompt_bars=2, seed=5, batch_size=2, preset="conservative")
        nothing = pipe(max_new_tokens=12, seed=1)
        print("RESULT " + json.dumps({{
            "class": type(pipe).__module__ + "." + type(pipe).__name__,
            "from_path": [{{k: v for k, v in s.items() if k != "midi"}} for s in from_path],
            "midi": [[n.pitch for t in symusic.Score.from_midi(s["midi"]).tracks for n in t.notes] for s in from_path],
            "batch": [[s["ids"] for s in samples] for samples in batch],
            "nothing": nothing[0]["ids"],
        }}, default=int))
        """,
        tmp_path,
    )
    assert out["class"].startswith("transformers_modules.") and out["class"].endswith(
        "pipeline_music_xl.MusicXLPipeline"
    )

    # the samples are what `hf-music-xl generate --seed 5 --num-samples 2` makes
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = midi_prompt(tokenizer, midi, 2)
    first, second = out["from_path"]
    kwargs = dict(bars=1, preset="conservative")
    assert first["ids"] == expected_ids(tiny_model_dir, prompt, 5, **kwargs)
    assert second["ids"] == expected_ids(tiny_model_dir, prompt, 6, **kwargs)
    assert (first["seed"], second["seed"]) == (5, 6) and first["prompt_length"] == len(prompt)

    # notes: the decoded ids, the prompt's flagged; the MIDI bytes hold them
    notes = encoding.ids_to_notes(np.array(first["ids"]))
    assert [(n["onset"], n["pitch"], n["duration"]) for n in first["notes"]] == list(
        zip(notes.onset, notes.pitch, notes.duration)
    )
    assert sum(n["prompt"] for n in first["notes"]) == len(encoding.ids_to_notes(prompt)) > 0
    assert sorted(out["midi"][0]) == sorted(n["pitch"] for n in first["notes"])

    # a batch: bytes and a Score of the same file give the sample of the path; None starts from xxbos xxpad
    assert out["batch"][0] == [first["ids"]] and out["batch"][1] == [first["ids"]]
    assert out["batch"][2][0][:2] == [encoding.BOS_ID, encoding.PAD_ID]
    assert out["nothing"] == expected_ids(tiny_model_dir, [encoding.BOS_ID, encoding.PAD_ID], 1, max_new_tokens=12)


def test_progress_callback_reports_and_can_stop(pipe):
    seen = []
    pipe(
        None,
        max_new_tokens=40,
        chunk_tokens=10,
        num_samples=2,
        progress_callback=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(20, 80), (40, 80), (60, 80), (80, 80)]  # both samples in one batch: 10 tokens each a chunk

    class Stop(Exception):
        pass

    def stop_after_two(done, total):
        if done >= 20:
            raise Stop

    with pytest.raises(Stop):
        pipe(None, max_new_tokens=1000, chunk_tokens=10, progress_callback=stop_after_two)


def test_bad_prompts_are_refused_clearly(pipe, tmp_path):
    with pytest.raises(MidiReadError, match="not a readable MIDI file"):
        pipe(b"this is not a MIDI file")
    empty = tmp_path / "empty.mid"
    empty.write_bytes(b"")
    with pytest.raises(MidiReadError, match="empty"):
        pipe(str(empty))
    with pytest.raises(FileNotFoundError):
        pipe(str(tmp_path / "missing.mid"))
    with pytest.raises(ValueError, match="a prompt is a MIDI file path"):
        pipe(12)
    with pytest.raises(ValueError, match="unknown sampling preset"):
        pipe(None, preset="wild")
    with pytest.raises(ValueError, match="num_samples"):
        pipe(None, num_samples=0)


def test_every_sample_decodes_and_keeps_to_scale_and_range(pipe, chorale_midi_files):
    samples = pipe(
        symusic.Score(str(chorale_midi_files[1])),
        bars=2,
        num_samples=2,
        scale="D minor",
        pitch_range=(50, 74),
        preset="adventurous",
        seed=11,
    )
    for sample in samples:
        new = [n for n in sample["notes"] if not n["prompt"]]
        assert new and all(50 <= n["pitch"] <= 74 and n["pitch"] % 12 in {2, 4, 5, 7, 9, 10, 0} for n in new)
        assert encoding.first_invalid_position(np.array(sample["ids"])) is None
        assert symusic.Score.from_midi(sample["midi"]).note_num() == len(sample["notes"])
