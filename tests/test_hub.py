"""Publishing to the Hub, tested with the real huggingface_hub client (unpatched) against a local Hub server.

The server (tests/hub_server.py) runs in this process on 127.0.0.1; the client runs in fresh processes
(tests/hub_scenarios.py) whose environment points huggingface_hub at it before it is imported:
HF_ENDPOINT, HF_HUB_DISABLE_XET=1 (legacy LFS uploads), a temporary HF_HOME and HF_TOKEN. The assertions read
what the server stored: commits, LFS objects, the model card.

test_real_hub runs against the real Hub only when HF_TOKEN_REAL holds a write token and the Hub answers:

    HF_TOKEN_REAL=hf_... .venv/bin/python -m pytest tests/test_hub.py -k real_hub
"""

import hashlib
import json
import os
import re
import urllib.request
import uuid
from pathlib import Path

import pytest
import torch
import yaml
from hub_helpers import SMALL, TOKEN, hub_env, run_scenario
from hub_scenarios import weights_digest
from hub_server import LocalHub

HERE = Path(__file__).resolve().parent
REPO = "tester/music-xl-tiny"
TAGS = ["music", "midi", "symbolic-music", "transformer-xl", "hf_music_xl", "custom_code"]
METRICS = {
    "v1": {
        "eval_loss": 4.56,
        "eval_perplexity": 95.74,
        "eval_token_accuracy": 0.135,
        "eval_nll_per_token": 4.56,
        "eval_nll_per_note": 12.98,
        "eval_tokens": 726,
        "eval_notes": 255,
        "epoch": 2.0,
        "step": 6,
    },
    "v2": {
        "eval_loss": 3.9,
        "eval_perplexity": 49.4,
        "eval_token_accuracy": 0.2,
        "eval_nll_per_token": 3.9,
        "eval_nll_per_note": 11.1,
        "eval_tokens": 726,
        "eval_notes": 255,
        "epoch": 4.0,
        "step": 12,
    },
}
PIPELINE_FILES = {"pipeline_music_xl.py", "generation_music_xl.py"}
CODE_FILES = {
    "configuration_music_xl.py",
    "modeling_music_xl.py",
    "tokenization_music_xl.py",
    "tokenization_music_xl_fast.py",
    "encoding.py",
}


def front_matter(readme: bytes) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", readme.decode(), re.S)
    assert match, "README.md has no YAML front matter"
    return yaml.safe_load(match[1])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with LocalHub(tmp_path_factory.mktemp("hub"), token=TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Two small models saved as `hf-music-xl train` saves its final directory (v1, v2: different weights)."""
    from hf_music_xl import MusicXLConfig, MusicXLForCausalLM, MusicXLTokenizerFast
    from hf_music_xl.models.music_xl.generation_music_xl import generation_config_for
    from hf_music_xl.training.run import save_final
    from hf_music_xl.training.settings import TrainSettings, parse_overrides

    root = tmp_path_factory.mktemp("models")
    config = MusicXLConfig.from_preset("tiny", **parse_overrides(SMALL))
    dirs = {}
    for seed, name in enumerate(("v1", "v2")):
        torch.manual_seed(seed)
        model = MusicXLForCausalLM(config)
        model.generation_config = generation_config_for(config)
        settings = TrainSettings(
            corpus="bach-chorales", output_dir=str(root / name), model_overrides=SMALL, max_steps=METRICS[name]["step"]
        )
        save_final(model, MusicXLTokenizerFast(), root / name / "final", METRICS[name], settings)
        (root / name / "final" / "training_args.bin").write_bytes(b"a pickle that must not be published")
        dirs[name] = root / name / "final"
    return dirs


@pytest.fixture(scope="module")
def published(hub, model_dirs, tmp_path_factory):
    """With the CLI: v1 to a new private repo, v1 again, v2, then v1 to a new branch `dev`."""
    work = tmp_path_factory.mktemp("publish")
    result = run_scenario(
        "publish",
        hub_env(hub, work / "hf_home"),
        work,
        v1=str(model_dirs["v1"]),
        v2=str(model_dirs["v2"]),
        repo_id=REPO,
    )
    main = hub.store.history(REPO, "main")  # newest first: v2, v1, the repo's initial commit
    return {"lines": result["lines"], "v1": main[1], "v2": main[0], "dev": hub.store.history(REPO, "dev")[0]}


# ----------------------------------------------------------------------------------------------------------
# Publishing with `hf-music-xl push`


def test_push_creates_a_private_repo_and_prints_the_url_from_the_client(hub, published):
    assert hub.store.load(REPO)["private"]
    assert published["lines"][0] == f"pushed to {hub.url}/{REPO} (main): {hub.url}/{REPO}/commit/{published['v1']}"


def test_push_uploads_model_tokenizer_code_and_card_with_weights_through_lfs(hub, published, model_dirs):
    files = hub.store.files(REPO, published["v1"])
    local = model_dirs["v1"]
    # training's final directory gets the pipeline added (complete_model_dir) before it is pushed
    expected = (
        {path.name for path in local.iterdir()} - {"training_args.bin"}
        | {"README.md", ".gitattributes"}
        | PIPELINE_FILES
    )
    assert set(files) == expected
    assert CODE_FILES | {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    } <= set(files)

    weights = files["model.safetensors"]
    assert weights["lfs"]["oid"] == sha256(local / "model.safetensors")  # stored as an LFS object...
    assert weights["lfs"]["oid"] in hub.server.lfs_uploads  # ...that went through the LFS batch + PUT
    assert hub.store.lfs_path(weights["lfs"]["oid"]).read_bytes() == (local / "model.safetensors").read_bytes()
    resaved = {"config.json", "tokenizer_config.json"}  # written again with custom_pipelines by complete_model_dir
    for name in expected - {"README.md", ".gitattributes", "model.safetensors"} - resaved - PIPELINE_FILES:
        assert "lfs" not in files[name], name
        assert hub.store.read(REPO, name, published["v1"]) == (local / name).read_bytes(), name


def test_model_card_metadata_is_what_we_meant(hub, published):
    readme = hub.store.read(REPO, "README.md", published["v1"])
    metrics = METRICS["v1"]
    names = [
        ("nll_per_note", "NLL per note (nats)", "eval_nll_per_note"),
        ("nll_per_token", "NLL per token (nats)", "eval_nll_per_token"),
        ("perplexity", "Perplexity", "eval_perplexity"),
        ("accuracy", "Token accuracy", "eval_token_accuracy"),
        ("loss", "Loss", "eval_loss"),
    ]
    assert front_matter(readme) == {
        "library_name": "transformers",
        "license": "mit",
        "pipeline_tag": "text-generation",
        "tags": TAGS,
        "datasets": ["tester/chorales"],
        "model-index": [
            {
                "name": "music-xl-tiny",
                "results": [
                    {
                        "task": {"type": "text-generation", "name": "Symbolic music generation"},
                        "dataset": {
                            "name": "Bach chorales (music21 corpus)",
                            "type": "tester/chorales",
                            "split": "validation",
                        },
                        "metrics": [{"type": kind, "value": metrics[key], "name": name} for kind, name, key in names],
                    }
                ],
            }
        ],
    }
    text = readme.decode()
    assert "{{" not in text
    assert f'AutoModelForCausalLM.from_pretrained("{REPO}", trust_remote_code=True)' in text
    assert "| preset | `tiny` |" in text and f"| model_overrides | `{SMALL}` |" in text
    assert "| Perplexity | 95.7400 |" in text
    assert str(Path.home()) not in text and "/tmp" not in text  # no local paths


def test_pushing_again_without_changes_makes_no_commit(hub, published):
    assert "no new commit" in published["lines"][1] and published["v1"] in published["lines"][1]
    assert [hub.store.load(REPO)["commits"][sha]["summary"] for sha in hub.store.history(REPO, "main")] == [
        "v2",
        "v1",
        "initial commit",
    ]


def test_revision_option_pushes_to_a_new_branch_from_main(hub, published):
    assert hub.store.history(REPO, "dev")[1:] == hub.store.history(REPO, "main")
    assert published["lines"][3].startswith(f"pushed to {hub.url}/{REPO} (dev): ")


def test_loads_from_the_hub_without_the_package_pins_revisions_and_generates(hub, published, model_dirs, tmp_path):
    from transformers import AutoModelForCausalLM

    local = {name: weights_digest(AutoModelForCausalLM.from_pretrained(path)) for name, path in model_dirs.items()}
    assert local["v1"] != local["v2"]
    result = run_scenario(
        "load", hub_env(hub, tmp_path / "hf_home"), tmp_path, repo_id=REPO, revisions=["main", published["v1"], "dev"]
    )
    assert result["digests"] == {"main": local["v2"], published["v1"]: local["v1"], "dev": local["v1"]}
    assert result["model_class"].startswith("transformers_modules.") and result["model_class"].endswith(
        ".MusicXLForCausalLM"
    )
    assert result["tokenizer_class"].startswith("transformers_modules.")
    assert result["generated"] == 12
    # the model from the Hub samples what the local one samples, and the remote tokenizer decodes it as we do
    torch.manual_seed(0)
    local = AutoModelForCausalLM.from_pretrained(model_dirs["v1"]).generate(
        torch.tensor([[0, 1]]), max_new_tokens=12, do_sample=True
    )
    assert result["ids"] == local[0].tolist()
    from hf_music_xl.models.music_xl import encoding

    decoded = encoding.decode_ids(local[0])
    assert result["notes"] == sorted(
        [note.time, note.duration, note.pitch] for track in decoded.tracks for note in track.notes
    )


# ----------------------------------------------------------------------------------------------------------
# Preparing a push (no network)


def test_an_incomplete_model_directory_is_completed_before_pushing(model_dirs, tmp_path):
    from hf_music_xl.hub.push import complete_model_dir, missing_pieces

    bare = tmp_path / "bare"
    bare.mkdir()
    config = json.loads((model_dirs["v1"] / "config.json").read_text())
    del config["auto_map"]
    (bare / "config.json").write_text(json.dumps(config))
    (bare / "model.safetensors").write_bytes((model_dirs["v1"] / "model.safetensors").read_bytes())
    assert {"generation_config.json", "tokenizer.json", "auto_map in config.json"} <= set(missing_pieces(bare))

    staging, again = tmp_path / "staging", tmp_path / "again"
    staging.mkdir()
    again.mkdir()
    assert missing_pieces(model_dirs["v1"]) == []  # save_final writes the pipeline too
    assert complete_model_dir(bare, staging) == staging
    assert missing_pieces(staging) == [] and CODE_FILES | PIPELINE_FILES <= {path.name for path in staging.iterdir()}
    assert complete_model_dir(staging, again) == staging  # complete: pushed as it is


def test_model_directories_that_cannot_be_pushed_are_refused(tmp_path):
    from hf_music_xl.hub.push import push_to_hub

    with pytest.raises(FileNotFoundError):
        push_to_hub(tmp_path / "missing", "tester/x")
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ValueError, match="not a MusicXL"):
        push_to_hub(tmp_path, "tester/x")


def test_a_card_without_a_training_record_has_no_model_index(model_dirs, tmp_path):
    from hf_music_xl.hub.push import build_model_card

    for path in model_dirs["v1"].iterdir():
        if path.name != "training_summary.json":
            (tmp_path / path.name).write_bytes(path.read_bytes())
    card = build_model_card(tmp_path, "tester/plain", license="apache-2.0")
    assert card.data.to_dict() == {
        "library_name": "transformers",
        "license": "apache-2.0",
        "pipeline_tag": "text-generation",
        "tags": TAGS,
    }
    assert "No evaluation results were recorded" in card.text and "tester/plain" in card.text


# ----------------------------------------------------------------------------------------------------------
# Training with checkpoint pushes


def test_trainer_pushes_a_resumable_last_checkpoint_and_training_ends_with_our_card(hub, chorale_corpus_dir, tmp_path):
    repo = "tester/trainer-run"
    result = run_scenario(
        "trainer",
        hub_env(hub, tmp_path / "hf_home"),
        tmp_path,
        corpus_dir=str(chorale_corpus_dir),
        work=str(tmp_path),
        repo_id=repo,
        overrides=SMALL,
    )
    assert result["interrupted_at"] == result["checkpoint_step"] == 3  # the first epoch's checkpoint
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= set(
        result["checkpoint_files"]
    )
    assert result["resumed_steps"] == [1, 2, 3, 4, 5, 6]  # steps 1-3 from the checkpoint; its 6-step schedule kept

    summaries = [hub.store.load(repo)["commits"][sha]["summary"] for sha in hub.store.history(repo)]
    assert summaries[0] == "End of training" and summaries[-1] == "initial commit"
    assert {"Training in progress, epoch 1, checkpoint", "Training in progress, epoch 2, checkpoint"} <= set(summaries)
    files = hub.store.files(repo)
    assert "lfs" in files["last-checkpoint/optimizer.pt"] and "lfs" in files["model.safetensors"]
    assert json.loads(hub.store.read(repo, "last-checkpoint/trainer_state.json"))["global_step"] == 6
    assert CODE_FILES <= set(files)
    readme = hub.store.read(repo, "README.md")
    card = front_matter(readme)
    assert card["library_name"] == "transformers" and card["tags"] == TAGS  # ours, not the Trainer's generic card
    assert card["model-index"][0]["results"][0]["dataset"]["type"] == "bach-chorales"
    assert b"Corpus: Bach chorales (music21 corpus). Train: 11 pieces" in readme  # from the corpus' report.json


# ----------------------------------------------------------------------------------------------------------
# The real Hub


def real_hub_reachable() -> bool:
    try:
        urllib.request.urlopen("https://huggingface.co/api/whoami-v2", timeout=5)
    except urllib.error.HTTPError:
        return True  # it answered (401 without a token)
    except OSError:
        return False
    return True


@pytest.mark.skipif(
    not os.environ.get("HF_TOKEN_REAL"), reason="set HF_TOKEN_REAL to a write token to test against the real Hub"
)
def test_real_hub(model_dirs, tmp_path):
    if not real_hub_reachable():
        pytest.skip("the real Hub is not reachable")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_TOKEN=os.environ["HF_TOKEN_REAL"], HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_PROGRESS_BARS="1"
    )
    result = run_scenario(
        "real_hub", env, tmp_path, model_dir=str(model_dirs["v1"]), name=f"hf-music-xl-test-{uuid.uuid4().hex[:8]}"
    )
    assert result["class"] == "MusicXLForCausalLM" and result["library_name"] == "transformers"
