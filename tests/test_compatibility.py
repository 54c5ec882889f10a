"""Models saved before time signatures load and generate as before (tests/fixtures/legacy_model: a tiny random model
written by hf_music_xl at commit 0af996d, with the logits and greedy ids it gave then)."""

import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from hf_music_xl import MusicGrammarProcessor, MusicXLConfig
from hf_music_xl.generate import generate_continuation
from hf_music_xl.models.music_xl import encoding
from hf_music_xl.models.music_xl.positions_music_xl import compute_positions
from hf_music_xl.models.music_xl.sampling_music_xl import SamplingRequest

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy_model"


def test_an_old_checkpoint_loads_with_its_grid_positions_and_generates_as_before():
    expected = json.loads((LEGACY / "expected.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(LEGACY).eval()
    config = model.config
    assert config.position_scheme == "grid" and config.vocab_size == 299 and config.meters == []
    assert model.transformer.embed_beat.num_embeddings == 16 and not hasattr(model.transformer, "embed_step")
    prompt = torch.tensor([expected["prompt"]])
    with torch.no_grad():
        logits = model(prompt).logits[0, -1]
    np.testing.assert_allclose(logits.numpy(), expected["last_logits"], atol=2e-4)
    greedy = model.generate(prompt, max_new_tokens=30, do_sample=False, pad_token_id=1)
    assert greedy[0].tolist() == expected["greedy"]
    # its positions are the grid's: (bar of 16 steps, step within it, 0)
    features, _ = compute_positions(prompt, config)
    times = torch.tensor(encoding.beat_positions(prompt[0].numpy()))
    assert features[0].tolist() == torch.stack([times // 16, times % 16, torch.zeros_like(times)], dim=1).tolist()


def test_old_vocabularies_never_sample_time_signatures():
    model = AutoModelForCausalLM.from_pretrained(LEGACY).eval()
    grammar = MusicGrammarProcessor(model.config)
    assert grammar.allowed.shape == (299, 299) and not grammar.meters.any()
    ids = generate_continuation(model, np.array([0, 1]), SamplingRequest(bars=4), seed=0, progress=False)
    assert ids.max() < 299 and encoding.first_invalid_position(ids) is None


def test_new_configs_say_meter_and_old_ones_grid():
    assert MusicXLConfig().position_scheme == "meter"
    saved = json.loads((LEGACY / "config.json").read_text())
    assert "position_scheme" not in saved and MusicXLConfig.from_dict(saved).position_scheme == "grid"
