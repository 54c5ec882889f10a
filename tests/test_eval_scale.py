"""Evaluation that scales: a fixed, seeded subset of the validation split for the Trainer's periodic evaluation
(``--eval-pieces``) with the whole split at the end, and ``hf-music-xl evaluate --max-pieces``."""

import json

import pytest
from test_training import small_settings

from hf_music_xl.cli import main
from hf_music_xl.data.corpus import build_corpus
from hf_music_xl.data.pieces import seeded_subset
from hf_music_xl.evaluate import corpus_nll
from hf_music_xl.generate import load_model_and_tokenizer
from hf_music_xl.training.run import train


def scored_tokens(split) -> int:
    return sum(len(ids) - 1 for ids in split["input_ids"])  # every token but each piece's first is predicted


def test_seeded_subset_is_fixed_by_the_seed_and_keeps_corpus_order(chorale_corpus):
    split = chorale_corpus["train"]
    chosen = seeded_subset(split, 4, seed=3)
    assert len(chosen) == 4 and chosen["source"] == seeded_subset(split, 4, seed=3)["source"]
    order = {source: index for index, source in enumerate(split["source"])}
    assert [order[source] for source in chosen["source"]] == sorted(order[source] for source in chosen["source"])
    assert {tuple(seeded_subset(split, 4, seed=s)["source"]) for s in range(6)} != {tuple(chosen["source"])}
    assert seeded_subset(split, 0) is split and seeded_subset(split, len(split)) is split


@pytest.fixture(scope="module")
def half_validation(tmp_path_factory):
    """12 chorales, about half of them in validation: room for a subset."""
    cache = tmp_path_factory.mktemp("corpora")
    built = build_corpus("bach-chorales", limit=12, validation_fraction=0.5, cache_dir=cache, output=cache / "half")
    assert len(built["validation"]) >= 3
    return cache / "half", built


def test_periodic_evaluation_scores_the_subset_and_the_end_the_whole_split(half_validation, tmp_path):
    corpus_dir, built = half_validation
    result = train(small_settings(corpus_dir, tmp_path / "run", eval_pieces=2, eval_steps=3, max_steps=6))
    subset = seeded_subset(built["validation"], 2, seed=42)  # TrainSettings' default seed
    periodic = [entry for entry in result_history(tmp_path / "run") if "eval_tokens" in entry]
    assert periodic and all(entry["eval_tokens"] == scored_tokens(subset) for entry in periodic)
    assert result.metrics["eval_tokens"] == scored_tokens(built["validation"]) > scored_tokens(subset)


def result_history(run_dir) -> list[dict]:
    last = max(run_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    return json.loads((last / "trainer_state.json").read_text())["log_history"]


def test_evaluate_max_pieces_scores_that_many_pieces(tiny_model_dir, half_validation, tmp_path):
    corpus_dir, built = half_validation
    output = tmp_path / "evaluation.json"
    main(["evaluate", "--model", str(tiny_model_dir), "--corpus", str(corpus_dir), "--split", "train",
          "--max-pieces", "3", "--seed", "5", "--output", str(output)])  # fmt: skip
    results = json.loads(output.read_text())
    model, _ = load_model_and_tokenizer(str(tiny_model_dir))
    expected = corpus_nll(model, seeded_subset(built["train"], 3, seed=5), progress=False)
    assert results["pieces"] == results["nll"]["pieces"] == 3
    assert results["statistics"]["corpus train"]["pieces"] == 3
    assert results["nll"]["nll_per_token"] == pytest.approx(expected["nll_per_token"])
    assert results["nll"]["tokens"] == expected["tokens"] < scored_tokens(built["train"])
