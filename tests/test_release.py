"""The released model in models/chorale-xl: it loads, matches its card, makes grammatical music, is the default of
every command, and loads through the pipeline without this package."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_music_xl.cli import main
from hf_music_xl.generate import GenerateSettings, generate_continuation, load_pipeline
from hf_music_xl.models.music_xl import encoding
from hf_music_xl.models.music_xl.sampling_music_xl import prompt_ids
from hf_music_xl.release import MODEL_ENV, RELEASE_DIR, RELEASE_REPO_ID, default_model

pytestmark = pytest.mark.skipif(not (RELEASE_DIR / "config.json").is_file(), reason="no release in the checkout")


@pytest.fixture(scope="module")
def release():
    return AutoModelForCausalLM.from_pretrained(RELEASE_DIR).eval()


def test_the_folder_holds_a_complete_small_release(release):
    files = {path.name for path in RELEASE_DIR.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"} <= files
    assert {"modeling_music_xl.py", "pipeline_music_xl.py", "storage.json"} <= files
    assert (RELEASE_DIR / "model.safetensors").stat().st_size <= 25 * 2**20  # the bound, ~25 MB
    assert next(release.parameters()).dtype == torch.float32  # stored in bf16 or fp32, computed in fp32
    assert not {name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl"))}  # no pickles


def test_the_card_matches_the_config(release):
    card = (RELEASE_DIR / "README.md").read_text()
    config = release.config
    assert card.startswith("---\n") and "library_name: transformers" in card
    described = re.search(r"TransformerXL with (\d+) layers, `d_model` (\d+), (\d+) heads of (\d+)", card)
    assert described, "the card does not describe the architecture"
    assert tuple(map(int, described.groups())) == (config.n_layer, config.d_model, config.n_head, config.d_head)
    params = int(re.search(r"; ([\d,]+) parameters", card)[1].replace(",", ""))
    assert params == sum(p.numel() for p in release.parameters())
    summary = json.loads((RELEASE_DIR / "training_summary.json").read_text())
    nll = summary["eval"]["eval_nll_per_note"]
    assert f"value: {round(nll, 4)}" in card  # the model-index holds the validation figure
    assert "Bach chorales" in card and "Palestrina" in card  # what was trained on, and what was not and why


def test_it_continues_a_chorale_grammatically(release, chorale_corpus):
    ids = np.asarray(chorale_corpus["validation"][0]["input_ids"])
    start = prompt_ids(ids, 2)
    sample = generate_continuation(release, start, GenerateSettings(bars=2), seed=0, progress=False)
    continuation = sample[len(start) :]
    assert encoding.first_invalid_position(sample) is None
    assert len(encoding.ids_to_notes(sample)) > len(encoding.ids_to_notes(start))  # it wrote notes
    assert ((continuation >= encoding.NOTE_OFFSET) & (continuation < encoding.DURATION_OFFSET)).sum() >= 4


def test_every_command_uses_it_when_no_model_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv(MODEL_ENV, raising=False)
    assert default_model() == str(RELEASE_DIR)
    monkeypatch.setenv(MODEL_ENV, "someone/else")
    assert default_model() == "someone/else"
    monkeypatch.delenv(MODEL_ENV)
    assert RELEASE_REPO_ID.endswith(RELEASE_DIR.name)

    main(["generate", "--bars", "1", "--output-dir", str(tmp_path), "--no-picture", "--no-audio"])
    [midi] = tmp_path.glob("*.mid")
    assert len(AutoTokenizer.from_pretrained(RELEASE_DIR).encode_midi(midi)) > 2
    pipe = load_pipeline()
    assert pipe.model.name_or_path == str(RELEASE_DIR)


def test_pipeline_loads_it_without_the_package(tmp_path):
    from helpers import run_without_package

    out = run_without_package(
        f"""
        from transformers import pipeline
        pipe = pipeline(model={str(RELEASE_DIR)!r}, trust_remote_code=True)
        [sample] = pipe(None, bars=1, seed=0)
        print("RESULT " + json.dumps({{"ids": sample["ids"], "bars": sample["bars"]}}, default=int))
        """,
        tmp_path,
    )
    assert encoding.first_invalid_position(np.asarray(out["ids"])) is None and out["bars"] >= 1


def test_push_publishes_the_folder_as_it_is(tmp_path):
    """`hf-music-xl push models/chorale-xl ORG/NAME` against the local Hub: every published file, and the folder's
    own card (with its measured quality) rather than one built again from the template."""
    from hub_helpers import TOKEN, hub_env, run_scenario
    from hub_server import LocalHub

    with LocalHub(tmp_path / "hub", token=TOKEN) as hub:
        [run] = run_scenario(
            "cli",
            hub_env(hub, tmp_path / "hf_home"),
            tmp_path,
            runs=[{"argv": ["push", str(RELEASE_DIR), "tester/chorale-xl"], "token": TOKEN}],
        )["results"]
        assert run["code"] == 0, run["message"] + run["stderr"][-2000:]
        published = set(hub.store.files("tester/chorale-xl"))
        assert hub.store.read("tester/chorale-xl", "README.md") == (RELEASE_DIR / "README.md").read_bytes()
    local = {path.name for path in RELEASE_DIR.iterdir() if path.is_file()}
    assert local <= published | {".gitattributes"}


def test_its_code_is_the_packages():
    """The folder's code files are the package's model files (as tokenizer/'s are): a change to the model's code
    reaches the release, which loads with trust_remote_code, by copying the file there."""
    from hf_music_xl.models import music_xl

    package = Path(music_xl.__file__).parent
    for path in RELEASE_DIR.glob("*.py"):
        assert path.read_text() == (package / path.name).read_text(), f"{path.name} differs from the package's"
