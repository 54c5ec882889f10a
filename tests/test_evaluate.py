"""Musical statistics (MusPy definitions) on hand examples and real chorales; NLL on a corpus split; the command."""

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_music_xl.cli import main
from hf_music_xl.evaluate import (
    compare_with_corpus,
    corpus_nll,
    format_table,
    groove_consistency,
    musical_statistics,
    pitch_class_entropy,
    polyphony,
    scale_consistency,
    summarize,
    top_voice_steps,
)
from hf_music_xl.models.music_xl import encoding
from hf_music_xl.models.music_xl.positions_music_xl import compute_positions


def notes(onset, pitch, duration):
    return encoding.Notes(*(np.asarray(column, dtype=np.int64) for column in (onset, pitch, duration)))


def test_statistics_on_hand_examples():
    c_major_run = notes(range(0, 32, 4), [60, 62, 64, 65, 67, 69, 71, 72], [4] * 8)
    assert scale_consistency(c_major_run) == 1.0
    assert pitch_class_entropy(c_major_run) == pytest.approx(-(6 / 8 * math.log2(1 / 8) + 2 / 8 * math.log2(2 / 8)))
    assert groove_consistency(c_major_run) == 1.0  # both bars: onsets on every beat
    assert polyphony(c_major_run) == 1.0
    chromatic = notes(range(12), range(60, 72), [1] * 12)
    assert pitch_class_entropy(chromatic) == pytest.approx(math.log2(12))
    assert scale_consistency(chromatic) == pytest.approx(7 / 12)

    # a held triad with one moving voice: 3 sounding for 8 steps, then 2 for 4 steps
    triad = notes([0, 0, 0, 8], [67, 64, 60, 65], [8, 8, 12, 4])
    assert polyphony(triad) == pytest.approx((3 * 8 + 2 * 4) / 12)
    # bar 1 onsets at steps 0 and 8, bar 2 at step 0 only: one of 16 flags differs
    assert groove_consistency(notes([0, 8, 16], [60, 62, 64], [8, 8, 8])) == pytest.approx(1 - 1 / 16)
    stats = musical_statistics(notes([16, 20, 36], [60, 64, 79], [4, 4, 4]))
    assert stats["note_density"] == 1.5 and stats["pitch_range"] == 19 and stats["unique_pitches"] == 3
    assert all(math.isnan(value) for value in musical_statistics(notes([], [], [])).values())
    # top voice C4 D4 (held over an inner A3 -> C4 move) G4 F4: moves +2, +5, -2 by the highest sounding pitch
    melody = notes([0, 4, 4, 6, 12, 16], [60, 62, 57, 60, 67, 65], [4, 8, 2, 2, 4, 4])
    assert top_voice_steps(melody) == pytest.approx(2 / 3)
    assert math.isnan(top_voice_steps(notes([0, 4], [60, 60], [4, 4])))  # no move
    assert math.isnan(groove_consistency(notes([0], [60], [4])))  # one bar: nothing to compare


def test_chorales_look_like_bach_and_random_notes_do_not(chorale_scores):
    # reference (MusPy definitions, 100 Bach pieces vs random notes): entropy 2.97 vs 3.58 bits,
    # scale consistency 0.94 vs 0.60, unique pitches 28 vs 66
    bach = [encoding.score_to_notes(score) for _, score in chorale_scores]
    rng = np.random.default_rng(0)
    random = []
    for piece in bach:
        n = len(piece)
        random.append(
            notes(np.sort(rng.integers(0, piece.onset.max() + 1, n)), rng.integers(36, 100, n), rng.integers(1, 9, n))
        )
    bach_stats, random_stats = summarize(bach), summarize(random)
    assert 2.8 < bach_stats["pitch_class_entropy"]["mean"] < 3.2 < 3.4 < random_stats["pitch_class_entropy"]["mean"]
    assert random_stats["scale_consistency"]["mean"] < 0.7 < 0.88 < bach_stats["scale_consistency"]["mean"]
    assert random_stats["groove_consistency"]["mean"] < 0.65 < 0.75 < bach_stats["groove_consistency"]["mean"]
    assert 3.5 < bach_stats["polyphony"]["mean"] <= 4.2  # four voices, sometimes fewer
    assert 20 < bach_stats["unique_pitches"]["mean"] < 35 < 50 < random_stats["unique_pitches"]["mean"]
    assert random_stats["top_voice_steps"]["mean"] < 0.3 < 0.6 < bach_stats["top_voice_steps"]["mean"]  # sopranos
    table = format_table({"bach": bach_stats, "random": random_stats})
    assert "bach (12)" in table.splitlines()[0] and len(table.splitlines()) == 2 + 8


def test_corpus_nll_is_the_model_loss_over_whole_pieces(tiny_model_dir, chorale_corpus):
    """Each piece whole, in segments with memory: the loss of one forward call over it; --mem-len changes it."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()  # segment_len 16, mem_len 16
    split = chorale_corpus["validation"].select([0])
    ids = torch.tensor(split[0]["input_ids"])[None]
    result = corpus_nll(model, split, progress=False)
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert result["pieces"] == 1 and result["tokens"] == ids.shape[1] - 1 and result["mem_len"] == 16
    assert result["nll_per_token"] == pytest.approx(loss, rel=1e-5)
    assert result["notes"] == split[0]["n_notes"]
    assert result["nll_per_note"] == pytest.approx(loss * result["tokens"] / result["notes"], rel=1e-5)
    assert abs(result["nll_per_token"] - math.log(299)) < 0.5  # random weights: about uniform
    without = corpus_nll(model, split, mem_len=0, progress=False)
    assert without["mem_len"] == 0 and without["nll_per_token"] != pytest.approx(loss, rel=1e-4)
    positions, _ = compute_positions(ids, model.config)  # the piece's own, in every segment
    with torch.no_grad():  # mem_len 0: the segments on their own (each segment's last token still predicts the next)
        logits = torch.cat(
            [
                model(part, beat_positions=where).logits
                for part, where in zip(ids.split(16, dim=1), positions.split(16, dim=1))
            ],
            dim=1,
        )
    expected = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item()
    assert without["nll_per_token"] == pytest.approx(expected, rel=1e-5)
    assert model.config.mem_len == 16  # restored
    # several pieces of different lengths in one batch: the padding is not scored
    three = chorale_corpus["train"].select([0, 1, 2])
    batched, one_by_one = (
        corpus_nll(model, three, batch_size=8, progress=False),
        corpus_nll(model, three, batch_size=1, progress=False),
    )
    assert batched["tokens"] == one_by_one["tokens"] == sum(len(x) - 1 for x in three["input_ids"])
    assert batched["nll_per_token"] == pytest.approx(one_by_one["nll_per_token"], rel=1e-5)


def test_evaluate_command_prints_a_table_and_writes_json(
    tiny_model_dir, chorale_corpus_dir, chorale_midi_files, tmp_path, capsys
):
    output = tmp_path / "results" / "evaluation.json"
    main(
        [
            "evaluate",
            "--model",
            str(tiny_model_dir),
            "--corpus",
            str(chorale_corpus_dir),
            "--generated",
            *map(str, chorale_midi_files[:3]),
            "--skip-bars",
            "1",
            "--output",
            str(output),
        ]
    )
    printed = capsys.readouterr().out
    results = json.loads(output.read_text())
    assert results["nll"]["tokens"] > 0 and results["nll"]["nll_per_note"] > results["nll"]["nll_per_token"]
    assert results["nll"]["mem_len"] == 16  # the model's own
    main(
        [
            "evaluate",
            "--model",
            str(tiny_model_dir),
            "--corpus",
            str(chorale_corpus_dir),
            "--mem-len",
            "0",
            "--output",
            str(output),
        ]
    )
    without_memory = json.loads(output.read_text())["nll"]
    assert without_memory["mem_len"] == 0 and without_memory["nll_per_token"] != results["nll"]["nll_per_token"]
    statistics = results["statistics"]
    assert statistics["generated"]["pieces"] == 3 and statistics["corpus validation"]["pieces"] >= 1
    assert 0.8 < statistics["generated"]["scale_consistency"]["mean"] <= 1.0
    assert "NLL per token" in printed and "scale_consistency" in printed and str(output) in printed
    with pytest.raises(SystemExit, match="no such file"):
        main(["evaluate", "--corpus", str(chorale_corpus_dir), "--generated", str(tmp_path / "nothing.mid")])
    main(["evaluate", "--statistics-only", "--corpus", str(chorale_corpus_dir), "--output", str(output)])
    assert "nll" not in json.loads(output.read_text())  # no model loaded


def test_compare_with_corpus_leaves_the_prompt_out(tiny_model_dir, chorale_corpus, tmp_path, capsys):
    from hf_music_xl.generate import GenerateSettings, generate_samples, prompt_ids

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompt = prompt_ids(chorale_corpus["train"][0]["input_ids"], 2)
    settings = GenerateSettings(
        max_new_tokens=40, bars=0, num_samples=2, output_dir=str(tmp_path), audio=False, picture=False
    )
    samples = generate_samples(model, prompt, settings, prefix="demo")
    assert [sample.seed for sample in samples] == [0, 1] and samples[1].files["midi"].name == "demo-2-seed1.mid"
    summaries = compare_with_corpus(samples, chorale_corpus["train"], tmp_path / "statistics.json")
    assert summaries["generated"]["pieces"] == 2 and summaries["training data"]["pieces"] == len(
        chorale_corpus["train"]
    )
    # 40 tokens are at most 20 new notes: nothing of the prompt is counted
    assert summaries["generated"]["unique_pitches"]["mean"] <= 20
    assert json.loads((tmp_path / "statistics.json").read_text())["generated"]["pieces"] == 2
    assert "training data" in capsys.readouterr().out
