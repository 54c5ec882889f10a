"""The model card of a pushed model: metadata from what training wrote (``training_summary.json``, else the Trainer's
``all_results.json`` / ``eval_results.json`` / ``trainer_state.json``), rendered into the ``model_card.md``
template, with a model-index of the validation figures.

Card metadata: ``library_name: transformers``, since the model loads with plain ``transformers``
(``trust_remote_code``) and the Hub's loading snippet, download counting and tags key on a library it knows; the
tags ``hf_music_xl`` and ``custom_code`` say where the code comes from.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData, constants

TAGS = ["music", "midi", "symbolic-music", "transformer-xl", "hf_music_xl", "custom_code"]
PIPELINE_TAG = "text-generation"
LIBRARY_NAME = "transformers"
DEFAULT_LICENSE = "mit"
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
    "tasks",
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
    tasks = [task.strip() for task in str(config.get("tasks", "continue")).split(",") if task.strip()]
    if tasks != ["continue"]:  # a multitask model: say what it can do beyond continuing
        examples = {
            "infill": '`pipe("song.mid", task="infill", bars=(5, 8))`',
            "harmonize": '`pipe("melody.mid", task="harmonize")`',
        }
        description += (
            f" Trained for the tasks {', '.join(tasks)} (`hf-music-xl train --tasks`): "
            + ", ".join(examples[task] for task in tasks if task in examples)
            + "."
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
