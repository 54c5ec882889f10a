"""Publish a trained model to the Hugging Face Hub with a model card.

    hf-music-xl push runs/tiny/final you/music-xl-tiny [--private] [--revision BRANCH] [--commit-message ...]
    hf-music-xl train ... --hub-model-id you/music-xl-tiny [--hub-strategy checkpoint]   # push while training

``push_to_hub(model_dir, repo_id)`` uploads, in one commit: the weights (safetensors), ``config.json``,
``generation_config.json``, the tokenizer files, the code files named by ``auto_map`` (so
``trust_remote_code=True`` loads the model without this package) and ``README.md``, a model card rendered from
the ``model_card.md`` template with metadata from what training wrote (``training_summary.json``, else
``all_results.json``/``eval_results.json``/``trainer_state.json``). Files that did not change are skipped by
``huggingface_hub``; a push with nothing new makes no commit.

The Hub address is ``huggingface_hub``'s: ``HF_ENDPOINT`` (read when ``huggingface_hub`` is imported) or its
default; the token is ``HF_TOKEN`` or the one saved by ``hf auth login``.

Card metadata: ``library_name: transformers``, since the model loads with plain ``transformers``
(``trust_remote_code``) and the Hub's loading snippet, download counting and tags key on a library it knows; the
tags ``hf_music_xl`` and ``custom_code`` say where the code comes from.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    EvalResult,
    HfApi,
    ModelCard,
    ModelCardData,
    constants,
)

from .errors import hub_errors

logger = logging.getLogger(__name__)

TAGS = ["music", "midi", "symbolic-music", "transformer-xl", "hf_music_xl", "custom_code"]
PIPELINE_TAG = "text-generation"
LIBRARY_NAME = "transformers"
DEFAULT_LICENSE = "mit"
# Top-level files of a model directory that are published; anything else (pickles such as optimizer.pt or
# training_args.bin, a README.md of its own, checkpoints) stays local.
PUBLISHED = re.compile(r"[^/]+\.(json|safetensors|py|txt|model)")
# metric key in the training record -> (metric type on the Hub, display name)
METRICS = {
    "eval_nll_per_note": ("nll_per_note", "NLL per note (nats)"),
    "eval_nll_per_token": ("nll_per_token", "NLL per token (nats)"),
    "eval_perplexity": ("perplexity", "Perplexity"),
    "eval_token_accuracy": ("accuracy", "Token accuracy"),
    "eval_loss": ("loss", "Loss"),
}
CORPUS_NAMES = {"bach-chorales": "Bach chorales (music21 corpus)"}
# settings shown in the card's training configuration (machine-specific ones such as paths are left out)
CARD_SETTINGS = (
    "preset",
    "model_overrides",
    "n_segments",
    "epochs",
    "max_steps",
    "max_minutes",
    "batch_size",
    "grad_accum",
    "learning_rate",
    "warmup_fraction",
    "weight_decay",
    "max_grad_norm",
    "augment",
    "transpose_p",
    "plain_final_fraction",
    "precision",
    "seed",
)


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
# What training wrote


@dataclass
class TrainingRecord:
    settings: dict  # TrainSettings fields, {} if unknown
    metrics: dict  # validation metrics (eval_* keys), {} if unknown
    source: str | None  # the file they came from
    corpus_report: dict = field(default_factory=dict)  # report.json of a built corpus directory, if still there

    @property
    def corpus(self) -> str | None:
        """The corpus source (``bach-chorales``, ``music21:...``, a path), also for a built corpus directory."""
        return self.corpus_report.get("source") or self.settings.get("corpus")


def read_training_record(model_dir: str | Path) -> TrainingRecord:
    """Settings and validation metrics from ``training_summary.json`` (written by ``hf-music-xl train``), else
    from the Trainer's ``all_results.json`` / ``eval_results.json`` / ``trainer_state.json``."""
    model_dir = Path(model_dir)
    summary = model_dir / "training_summary.json"
    if summary.exists():
        data = json.loads(summary.read_text())
        settings = data.get("settings", {})
        report = Path(settings.get("corpus", "")).expanduser() / "report.json"
        corpus_report = json.loads(report.read_text()) if settings.get("corpus") and report.is_file() else {}
        return TrainingRecord(settings, data.get("eval", {}), summary.name, corpus_report)
    for name in ("all_results.json", "eval_results.json"):
        path = model_dir / name
        if path.exists():
            metrics = {
                k: v for k, v in json.loads(path.read_text()).items() if k.startswith("eval_") or k in ("epoch", "step")
            }
            if any(k.startswith("eval_") for k in metrics):
                return TrainingRecord({}, metrics, name)
    state = model_dir / "trainer_state.json"
    if state.exists():
        history = json.loads(state.read_text()).get("log_history", [])
        last_eval = next((entry for entry in reversed(history) if "eval_loss" in entry), None)
        if last_eval is not None:
            return TrainingRecord({}, last_eval, state.name)
    return TrainingRecord({}, {}, None)


def corpus_label(corpus: str) -> str:
    """A name for the corpus that does not leak local paths."""
    if corpus in CORPUS_NAMES:
        return CORPUS_NAMES[corpus]
    if corpus.startswith("music21:"):
        return f"music21 corpus: {corpus.removeprefix('music21:')}"
    return Path(corpus.rstrip("/")).name or corpus


def corpus_id(corpus: str) -> str:
    """A short identifier for the corpus (the model-index ``dataset.type``): a Hub-style id, never a path."""
    if corpus in CORPUS_NAMES:
        return corpus
    if corpus.startswith("music21:"):
        return "music21-" + corpus.removeprefix("music21:").replace("/", "-")
    return re.sub(r"[^\w.-]+", "-", Path(corpus.rstrip("/")).name) or "local"


def count_parameters(model_dir: Path) -> int | None:
    """Parameters stored in the safetensors files (read from their headers, without loading the weights)."""
    total, found = 0, False
    for path in sorted(model_dir.glob("*.safetensors")):
        with open(path, "rb") as file:
            header = json.loads(file.read(int.from_bytes(file.read(8), "little")))
        for name, info in header.items():
            if name != "__metadata__":
                count = 1
                for dim in info["shape"]:
                    count *= dim
                total, found = total + count, True
    return total if found else None


# ----------------------------------------------------------------------------------------------------------
# The model card


def default_template() -> str:
    """``model_card.md``, shipped as package data (in the source tree a link to the top-level template)."""
    return resources.files("hf_music_xl").joinpath("model_card.md").read_text()


def render(template: str, values: dict[str, str]) -> str:
    """Fill ``{{name}}`` placeholders; every placeholder must have a value."""
    missing = set(re.findall(r"{{\s*(\w+)\s*}}", template)) - set(values)
    if missing:
        raise ValueError(f"model card template has placeholders without values: {sorted(missing)}")
    return re.sub(r"{{\s*(\w+)\s*}}", lambda match: values[match[1]], template)


def card_data_for(
    repo_id: str, record: TrainingRecord, license: str, datasets: list[str], tags: list[str]
) -> ModelCardData:
    model_name = repo_id.split("/")[-1]
    corpus = record.corpus
    dataset_name = corpus_label(corpus) if corpus else (datasets[0] if datasets else "validation set")
    dataset_type = datasets[0] if datasets else corpus_id(corpus) if corpus else "unknown"
    eval_results = [
        EvalResult(
            task_type=PIPELINE_TAG,
            task_name="Symbolic music generation",
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_split="validation",
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=round(float(record.metrics[key]), 4),
        )
        for key, (metric_type, metric_name) in METRICS.items()
        if isinstance(record.metrics.get(key), (int, float)) and record.metrics[key] == record.metrics[key]  # not NaN
    ]
    return ModelCardData(
        library_name=LIBRARY_NAME,
        license=license,
        tags=list(dict.fromkeys(TAGS + tags)),
        pipeline_tag=PIPELINE_TAG,
        datasets=datasets or None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )


def _markdown_table(rows: list[tuple[str, str]], header: tuple[str, str]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    return "\n".join(lines)


def build_model_card(
    model_dir: str | Path,
    repo_id: str,
    *,
    license: str = DEFAULT_LICENSE,
    datasets: list[str] | None = None,
    tags: list[str] | None = None,
    template: str | None = None,
) -> ModelCard:
    """The model card for ``model_dir`` published as ``repo_id``: metadata, architecture, data, training
    configuration, validation metrics, and how to load and generate."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    record = read_training_record(model_dir)
    datasets = list(datasets or [])
    card_data = card_data_for(repo_id, record, license, datasets, list(tags or []))

    parameters = count_parameters(model_dir)
    description = (
        f"`MusicXLForCausalLM`: a TransformerXL with {config.get('n_layer')} layers, "
        f"`d_model` {config.get('d_model')}, "
        f"{config.get('n_head')} heads of {config.get('d_head')}, feed-forward {config.get('d_inner')}, "
        f"segments of {config.get('segment_len')} tokens with a memory of {config.get('mem_len')}; "
        f"a vocabulary of {config.get('vocab_size')} tokens"
        + (f"; {parameters:,} parameters (safetensors, {config.get('dtype', 'float32')})." if parameters else ".")
    )
    corpus = record.corpus
    data_lines = [
        f"Corpus: {corpus_label(corpus)}." if corpus else "The training corpus was not recorded with the model."
    ]
    for split, stats in record.corpus_report.get("splits", {}).items():
        data_lines.append(
            f"{split.capitalize()}: {stats['pieces']:,} pieces, {stats['tokens']:,} tokens, {stats['notes']:,} notes."
        )
    if datasets:
        data_lines.append(
            "Datasets: " + ", ".join(f"[{name}]({constants.ENDPOINT}/datasets/{name})" for name in datasets) + "."
        )
    if "eval_tokens" in record.metrics and not record.corpus_report:
        data_lines.append(
            f"Validation: {record.metrics['eval_tokens']:,} tokens, {record.metrics.get('eval_notes', 0):,} notes."
        )
    settings_rows = [
        (name, f"`{record.settings[name]}`" if record.settings[name] != "" else "none")
        for name in CARD_SETTINGS
        if name in record.settings
    ]
    for key in ("step", "epoch"):
        if key in record.metrics:
            settings_rows.append((f"trained {key}s", f"`{record.metrics[key]}`"))
    training_config = (
        "Trained with `hf-music-xl train` (Hugging Face Trainer, one-cycle learning-rate schedule):\n\n"
        + _markdown_table(settings_rows, ("setting", "value"))
        if settings_rows
        else "No training configuration was recorded with the model."
    )
    metric_rows = [
        (name, f"{record.metrics[key]:.4f}")
        for key, (_, name) in METRICS.items()
        if isinstance(record.metrics.get(key), (int, float))
    ]
    eval_results = (
        f"On the validation split ({record.source}):\n\n" + _markdown_table(metric_rows, ("metric", "value"))
        if metric_rows
        else "No evaluation results were recorded with the model."
    )
    content = render(
        template if template is not None else default_template(),
        {
            "card_data": card_data.to_yaml(),
            "model_name": repo_id.split("/")[-1],
            "model_description": description,
            "training_data": " ".join(data_lines),
            "training_config": training_config,
            "eval_results": eval_results,
            "repo_id": repo_id,
        },
    )
    return ModelCard(content)


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
