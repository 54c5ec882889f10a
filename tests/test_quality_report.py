"""scripts/quality_report.py: one run per configuration (2 steps), GPT-2's parameter count, the table."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "quality_report.py"


@pytest.fixture(scope="module")
def quality_report():
    spec = importlib.util.spec_from_file_location("quality_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["windows", "gpt2"])
def test_run_one_trains_scores_and_saves(quality_report, chorale_corpus_dir, tmp_path, name):
    result = quality_report.run_one(
        name, seed=0, steps=2, out_dir=tmp_path / name, corpus=str(chorale_corpus_dir), n_segments=1, batch_size=2
    )
    assert result["train_tokens"] == 2 * 2 * 128
    assert 0 < result["validation"]["nll_per_token"] < 10 and result["validation"]["notes"] > 0
    assert ("validation_no_memory" in result) == (name != "gpt2")  # GPT-2 has no memory to switch off
    assert (tmp_path / name / "final" / "config.json").exists() and (tmp_path / name / "result.json").exists()


def test_gpt2_parameter_count_matches(quality_report):
    from hf_music_xl import MusicXLConfig, MusicXLForCausalLM

    config = MusicXLConfig.from_preset("tiny")
    target = quality_report.count(MusicXLForCausalLM(config))
    gpt2 = quality_report.gpt2_like(config, 256, target)
    assert abs(quality_report.count(gpt2) / target - 1) < 0.02
    assert (gpt2.config.n_embd, gpt2.config.n_layer, gpt2.config.n_head) == (
        config.d_model,
        config.n_layer,
        config.n_head,
    )


def test_markdown_reports_mean_and_half_range(quality_report):
    rows = [
        {
            "config": "full",
            "seed": seed,
            "steps": 10,
            "batch_size": 2,
            "window_len": 256,
            "train_tokens": 5120,
            "learning_rate": 0.002,
            "params": 1_000_000,
            "train_seconds": 60.0,
            "validation": {"nll_per_token": value, "nll_per_note": 2 * value},
        }
        for seed, value in ((0, 1.0), (1, 2.0))
    ]
    table = quality_report.markdown(rows, "cmd", 120.0)
    assert "| full | 1.00M | 1.500 ± 0.500 | 3.000 ± 1.000 | n/a |" in table and "2.0 min" in table


def test_held_out_sets_are_scored_by_meter(quality_report, chorale_corpus_dir, tmp_path):
    result = quality_report.run_one(
        "full",
        seed=0,
        steps=1,
        out_dir=tmp_path / "full",
        corpus=str(chorale_corpus_dir),
        n_segments=1,
        batch_size=2,
        held_out=str(chorale_corpus_dir),
    )
    held = result[f"held_out {chorale_corpus_dir}"]
    assert held["tokens"] == result["validation"]["tokens"]  # the same split, scored on its own
    assert held["by_meter"] == {}  # fewer than 20 pieces of any meter in one validation chorale
    table = quality_report.markdown([{**result, "train_seconds": 1.0}], "cmd", 1.0)
    assert "NLL per note on held-out validation splits" in table
