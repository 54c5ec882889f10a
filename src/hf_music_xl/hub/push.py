"""Publish a trained model to the Hugging Face Hub with a model card.

    hf-music-xl push runs/tiny/final you/music-xl-tiny [--private] [--revision BRANCH] [--commit-message ...]
    hf-music-xl train ... --hub-model-id you/music-xl-tiny [--hub-strategy checkpoint]   # push while training

``push_to_hub(model_dir, repo_id)`` uploads, in one commit: the weights (safetensors), ``config.json``,
``generation_config.json``, the tokenizer files, the code files named by ``auto_map`` (so
``trust_remote_code=True`` loads the model without this package) and ``README.md``, a model card rendered from
the ``model_card.md`` template with metadata from what training wrote (``training_summary.json``, else
``all_results.json``/``eval_results.json``/``trainer_state.json``), or the directory's own ``README.md`` where it
has one with card metadata (the released model's, which ``scripts/release_report.py`` writes with its measured
quality: the folder is published as it is). Files that did not change are skipped by
``huggingface_hub``; a push with nothing new makes no commit. The card itself is ``model_card.py``'s.

The Hub address is ``huggingface_hub``'s: ``HF_ENDPOINT`` (read when ``huggingface_hub`` is imported) or its
default; the token is ``HF_TOKEN`` or the one saved by ``hf auth login``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    ModelCard,
)

from .errors import hub_errors
from .model_card import DEFAULT_LICENSE, build_model_card

logger = logging.getLogger(__name__)

# Top-level files of a model directory that are published; anything else (pickles such as optimizer.pt or
# training_args.bin, checkpoints) stays local; a README.md is published only if it is a model card (``own_card``).
PUBLISHED = re.compile(r"[^/]+\.(json|safetensors|py|txt|model)")


@dataclass
class PushResult:
    repo_url: str  # the repository's address as the Hub returned it
    revision: str  # the branch pushed to
    commit_oid: str  # the head of that branch after the push
    commit_url: str
    changed: bool  # False: nothing differed from the branch, no commit was made
    files: list[str] = field(default_factory=list)  # paths in the repository that were considered
    deleted: list[str] = field(default_factory=list)  # files of an earlier push that no longer belong to the model
    pr_url: str | None = None  # the pull request opened instead of committing to the branch (create_pr)


# ----------------------------------------------------------------------------------------------------------
# Checking and completing a model directory


def _auto_map_modules(config_file: Path) -> list[str]:
    if not config_file.exists():
        return []
    auto_map = json.loads(config_file.read_text()).get("auto_map", {})
    references = [ref for value in auto_map.values() for ref in (value if isinstance(value, list) else [value]) if ref]
    return sorted({ref.split("--")[-1].rsplit(".", 1)[0] + ".py" for ref in references})


def missing_pieces(model_dir: Path) -> list[str]:
    """What a directory lacks for ``from_pretrained(..., trust_remote_code=True)`` + ``generate`` on the Hub."""
    missing = []
    if not list(model_dir.glob("*.safetensors")):
        missing.append("safetensors weights")
    for name in ("generation_config.json", "tokenizer_config.json", "tokenizer.json"):
        if not (model_dir / name).exists():
            missing.append(name)
    config_modules = _auto_map_modules(model_dir / "config.json")
    tokenizer_modules = _auto_map_modules(model_dir / "tokenizer_config.json")
    if not config_modules:
        missing.append("auto_map in config.json")
    if (model_dir / "tokenizer_config.json").exists() and not tokenizer_modules:
        missing.append("auto_map in tokenizer_config.json")
    missing += [name for name in config_modules + tokenizer_modules if not (model_dir / name).exists()]
    pipelines = (
        json.loads((model_dir / "config.json").read_text()).get("custom_pipelines", {})
        if (model_dir / "config.json").exists()
        else {}
    )
    if not pipelines:
        missing.append("custom_pipelines in config.json")
    missing += [
        f"{info['impl'].rsplit('.', 1)[0]}.py"
        for info in pipelines.values()
        if not (model_dir / f"{info['impl'].rsplit('.', 1)[0]}.py").exists()
    ]
    return missing


def complete_model_dir(model_dir: Path, staging: Path) -> Path:
    """``model_dir`` itself if it is complete, else a copy in ``staging`` re-saved with this package through
    ``MusicXLPipeline``: safetensors weights, the code files and ``auto_map``, the pipeline and
    ``custom_pipelines``, the default tokenizer if there is none, a generation config."""
    config_file = model_dir / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{model_dir} has no config.json: not a saved model directory")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != "music_xl":
        raise ValueError(f"{model_dir} holds a {model_type!r} model, not a MusicXL (music_xl) one")
    missing = missing_pieces(model_dir)
    if not missing:
        return model_dir
    logger.warning("%s lacks %s: re-saving it with hf_music_xl before pushing", model_dir, ", ".join(missing))
    from ..models.music_xl.generation_music_xl import generation_config_for
    from ..models.music_xl.modeling_music_xl import MusicXLForCausalLM
    from ..models.music_xl.pipeline_music_xl import MusicXLPipeline
    from ..models.music_xl.tokenization_music_xl_fast import MusicXLTokenizerFast

    for path in model_dir.iterdir():  # keep the records (training_summary.json, ...)
        if path.is_file() and PUBLISHED.fullmatch(path.name):
            shutil.copy2(path, staging / path.name)
    model = MusicXLForCausalLM.from_pretrained(model_dir)
    if not (model_dir / "generation_config.json").exists():
        model.generation_config = generation_config_for(model.config)
    try:
        tokenizer = MusicXLTokenizerFast.from_pretrained(model_dir)
    except (OSError, ValueError):
        tokenizer = MusicXLTokenizerFast()
    # safetensors, code files and auto_map of model and tokenizer, the pipeline (registered in hf_music_xl/__init__)
    MusicXLPipeline(model=model, tokenizer=tokenizer).save_pretrained(staging)
    for stale in ("pytorch_model.bin", "README.md"):
        (staging / stale).unlink(missing_ok=True)
    return staging


# ----------------------------------------------------------------------------------------------------------
# Pushing


def push_to_hub(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    license: str = DEFAULT_LICENSE,
    datasets: list[str] | None = None,
    tags: list[str] | None = None,
    token: str | None = None,
    template: str | None = None,
    create_pr: bool = False,
) -> PushResult:
    """Create ``repo_id`` if needed (``private`` applies only then), create branch ``revision`` from ``main`` if
    needed, and commit the model directory with its model card there, or open a pull request against that
    branch with ``create_pr``. Files an earlier push left on the branch that this model no longer has (e.g. the
    shards of a model now saved whole) are deleted in the same commit. Hub problems raise ``HubAccessError``
    with one line. Returns what happened."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    with tempfile.TemporaryDirectory(prefix="hf_music_xl_push_") as tmp, hub_errors(repo_id):
        source = complete_model_dir(model_dir, Path(tmp))
        card = own_card(model_dir) if template is None else None
        if card is None:
            card = build_model_card(source, repo_id, license=license, datasets=datasets, tags=tags, template=template)
        return commit_model_dir(
            HfApi(token=token),
            source,
            card,
            repo_id,
            private=private,
            revision=revision,
            create_pr=create_pr,
            commit_message=commit_message or f"Upload {model_dir.name} with hf_music_xl",
        )


def own_card(model_dir: Path) -> ModelCard | None:
    """The directory's ``README.md`` if it is a model card (YAML front matter with metadata), else None."""
    readme = model_dir / "README.md"
    if not readme.is_file() or not readme.read_text(encoding="utf-8").startswith("---\n"):
        return None
    card = ModelCard.load(readme)
    return card if card.data.to_dict() else None


def commit_model_dir(
    api: HfApi, source: Path, card: ModelCard, repo_id: str, *, private, revision, create_pr, commit_message
) -> PushResult:
    """The Hub side of ``push_to_hub``: repo, branch, one commit (or pull request) of the files and the card."""
    api.whoami()  # first: a missing or refused token, or a wrong address, fails here in one line
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
    repo_id = repo_url.repo_id  # with the namespace the Hub resolved
    branch = revision or "main"
    if branch != "main":
        api.create_branch(repo_id, branch=branch, exist_ok=True)
    info = api.repo_info(repo_id, revision=branch)
    if private is not None and info.private is not None and info.private != private:
        logger.warning(
            "%s already exists and is %s: --private applies only when a repo is created",
            repo_id,
            "private" if info.private else "public",
        )
    head_before = info.sha
    operations = [
        CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=str(path))
        for path in sorted(source.iterdir())
        if path.is_file() and PUBLISHED.fullmatch(path.name)
    ]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode()))
    stale = left_behind([sibling.rfilename for sibling in info.siblings or []], {op.path_in_repo for op in operations})
    operations += [CommitOperationDelete(path_in_repo=path) for path in stale]
    commit = api.create_commit(repo_id, operations, commit_message=commit_message, revision=branch, create_pr=create_pr)
    return PushResult(
        repo_url=str(repo_url),
        revision=branch,
        commit_oid=commit.oid,
        commit_url=commit.commit_url,
        changed=create_pr or commit.oid != head_before,
        files=[op.path_in_repo for op in operations if isinstance(op, CommitOperationAdd)],
        deleted=stale,
        pr_url=commit.pr_url,
    )


def left_behind(repo_files: list[str], pushed: set[str]) -> list[str]:
    """Top-level files of the kinds a push writes (weights, configs, tokenizer, code) that this push does not:
    an earlier push's. Folders (``last-checkpoint/`` of the Trainer), ``.gitattributes`` and other files stay."""
    return sorted(path for path in repo_files if PUBLISHED.fullmatch(path) and path not in pushed)


# ----------------------------------------------------------------------------------------------------------
# During and after training


def hub_training_arguments(
    repo_id: str, strategy: str = "checkpoint", private: bool | None = None, revision: str | None = None
) -> dict:
    """``TrainingArguments`` fields that make the Trainer push as it saves: the model files at every save and, with
    ``strategy="checkpoint"``, the latest checkpoint (optimizer, scheduler, RNG states) as ``last-checkpoint/``,
    which ``--resume`` can continue from. The Trainer creates the repo when it starts (rank 0)."""
    if strategy not in ("every_save", "checkpoint", "all_checkpoints", "end"):
        raise ValueError(f"unknown hub strategy {strategy!r}; choose every_save, checkpoint, all_checkpoints or end")
    return {
        "push_to_hub": True,
        "hub_model_id": repo_id,
        "hub_strategy": strategy,
        "hub_private_repo": private,
        "hub_revision": revision,
    }


def push_after_training(trainer, final_dir: str | Path, **push_kwargs) -> PushResult | None:
    """The final push of a run: ``final_dir`` with our model card to the Trainer's repo, after its checkpoint
    pushes (``Trainer.train`` waits for them before returning). Use this, not ``trainer.push_to_hub()``, which
    would upload the Trainer's generic card. Rank 0 pushes; other ranks return None."""
    if not trainer.is_world_process_zero():
        return None
    repo_id = getattr(trainer, "hub_model_id", None) or trainer.args.hub_model_id
    if not repo_id:
        raise ValueError("the Trainer has no Hub repo: train with hub_training_arguments(...) or pass hub_model_id")
    push_kwargs.setdefault("commit_message", "End of training")
    push_kwargs.setdefault("revision", trainer.args.hub_revision)
    return push_to_hub(final_dir, repo_id, **push_kwargs)


def describe_push(result: PushResult) -> str:
    if result.pr_url:
        return f"opened a pull request on {result.repo_url} ({result.revision}): {result.pr_url}"
    if not result.changed:
        return (
            f"{result.repo_url} ({result.revision}) already holds these files: no new commit (head {result.commit_oid})"
        )
    return f"pushed to {result.repo_url} ({result.revision}): {result.commit_url}"
