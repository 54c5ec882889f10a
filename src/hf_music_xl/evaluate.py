"""Evaluating a model and its music: NLL on a corpus split, and musical statistics next to the corpus's.

    hf-music-xl evaluate --model runs/tiny/final --corpus bach-chorales --generated outputs/generated

NLL uses the training evaluation exactly (``data.eval_pieces``, ``training.token_scores`` and
``training.compute_metrics``): every piece whole, in consecutive segments with the memory carried across them, per
token and per note (total NLL / note tokens, comparable across tokenizations). ``--mem-len N`` scores with another
memory length than the model was trained with (0: each segment on its own).

Musical statistics follow MusPy's definitions, on the 16th-note grid (``Notes``), one value per piece:

- pitch-class entropy: Shannon entropy (bits) of the pitch-class histogram of the notes (0..log2(12)=3.58);
- scale consistency: the largest share of notes inside one of the 24 major / natural-minor scales;
- groove consistency: 1 - mean Hamming distance between the onset patterns (one flag per grid step) of
  consecutive bars, divided by the steps in a bar (a shorter bar's pattern padded to the longest);
- polyphony: mean number of notes sounding at the grid steps where at least one sounds;
- note density: notes per bar; pitch range: highest - lowest pitch (semitones); unique pitches;
- top-voice steps: of the top voice's moves (the highest sounding pitch, from one onset to the next, where it
  changes), the share by step (1 or 2 semitones); a soprano moves mostly by step, a melody that leaps between
  registers does not.

Bars are the piece's own (its time signatures; 4/4 where it has none), counted from the bar of the first onset
to the bar of the last, so a continuation whose prompt was removed is measured over its own bars.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .models.music_xl import encoding
from .models.music_xl.generation_music_xl import SCALE_STEPS

STATISTICS = (
    "pitch_class_entropy",
    "scale_consistency",
    "groove_consistency",
    "polyphony",
    "note_density",
    "pitch_range",
    "unique_pitches",
    "top_voice_steps",
)


# ----------------------------------------------------------------------------------------------------------
# Musical statistics of one piece


def _pitch_class_counts(notes: encoding.Notes) -> np.ndarray:
    return np.bincount(notes.pitch % 12, minlength=12)  # (12,)


def pitch_class_entropy(notes: encoding.Notes) -> float:
    counts = _pitch_class_counts(notes)
    share = counts[counts > 0] / counts.sum()
    return float(-(share * np.log2(share)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


# (24, 12): row r is the indicator of one scale; the 12 major scales, then the 12 natural-minor ones
SCALE_MASKS = np.array(
    [[(pc - root) % 12 in SCALE_STEPS[mode] for pc in range(12)] for mode in ("major", "minor") for root in range(12)]
)


def scale_consistency(notes: encoding.Notes) -> float:
    counts = _pitch_class_counts(notes)
    return float((SCALE_MASKS @ counts).max() / counts.sum())


def _bar_span(notes: encoding.Notes) -> tuple[int, int]:
    """(first bar, number of bars) from the bar of the first onset to the bar of the last (bars as the piece's
    time signatures lay them out)."""
    bar, _, _ = notes.bars().locate(notes.onset[[0, -1]])
    return int(bar[0]), int(bar[1] - bar[0]) + 1


def groove_consistency(notes: encoding.Notes) -> float:
    first, n_bars = _bar_span(notes)
    if n_bars < 2:
        return float("nan")  # no pair of bars to compare
    bar, step, length = notes.bars().locate(notes.onset)
    patterns = np.zeros((n_bars, int(length.max())), dtype=bool)  # (bars, steps) onset flags (short bars padded)
    patterns[bar - first, step] = True
    return float(1.0 - (patterns[1:] != patterns[:-1]).mean())


def polyphony(notes: encoding.Notes) -> float:
    change = np.zeros(int((notes.onset + notes.duration).max()) + 1, dtype=np.int64)
    np.add.at(change, notes.onset, 1)
    np.add.at(change, notes.onset + notes.duration, -1)
    sounding = np.cumsum(change)[:-1]  # notes sounding at each grid step
    return float(sounding[sounding > 0].mean())


def note_density(notes: encoding.Notes) -> float:
    return len(notes) / _bar_span(notes)[1]


def top_voice_steps(notes: encoding.Notes) -> float:
    onsets = np.unique(notes.onset)  # (m,)
    sounding = (notes.onset[None, :] <= onsets[:, None]) & (onsets[:, None] < (notes.onset + notes.duration)[None, :])
    top = np.where(sounding, notes.pitch[None, :], -1).max(axis=1)  # (m,) highest pitch sounding at each onset
    moves = np.abs(np.diff(top))
    moves = moves[moves > 0]
    return float(np.mean(moves <= 2)) if len(moves) else float("nan")


def musical_statistics(notes: encoding.Notes) -> dict[str, float]:
    """Every statistic of one piece; all NaN for a piece without notes."""
    if not len(notes):
        return dict.fromkeys(STATISTICS, float("nan"))
    return {
        "pitch_class_entropy": pitch_class_entropy(notes),
        "scale_consistency": scale_consistency(notes),
        "groove_consistency": groove_consistency(notes),
        "polyphony": polyphony(notes),
        "note_density": note_density(notes),
        "pitch_range": float(notes.pitch.max() - notes.pitch.min()),
        "unique_pitches": float(len(np.unique(notes.pitch))),
        "top_voice_steps": top_voice_steps(notes),
    }


# ----------------------------------------------------------------------------------------------------------
# Statistics of sets of pieces


def bars_excerpt(notes: encoding.Notes, first_bar: int, n_bars: int) -> encoding.Notes:
    """The notes starting in bars ``first_bar .. first_bar + n_bars - 1`` (0-based, the piece's own bars): the
    bars of a corpus piece that a continuation of its first ``first_bar`` bars is compared with."""
    bar = notes.bars().locate(notes.onset)[0]
    return notes.select((bar >= first_bar) & (bar < first_bar + n_bars))


def summarize(pieces: list[encoding.Notes], desc: str | None = None) -> dict:
    """{"pieces": n, statistic: {"mean", "std"}} over the pieces (NaN values, e.g. one-bar grooves, left out)."""
    rows = [musical_statistics(notes) for notes in tqdm(pieces, desc=desc, disable=desc is None, leave=False)]
    summary = {"pieces": len(pieces)}
    for name in STATISTICS:
        values = np.array([row[name] for row in rows], dtype=np.float64)
        values = values[~np.isnan(values)]
        summary[name] = {
            "mean": float(values.mean()) if len(values) else float("nan"),
            "std": float(values.std()) if len(values) else float("nan"),
        }
    return summary


def against_chorales(generated: dict, chorales: dict, targets) -> dict:
    """Each target ``(statistic, kind, allowed)`` of the samples' mean against the chorales' (summaries as
    ``summarize`` makes them): kind "difference" compares |samples - chorales|, "relative" |samples / chorales - 1|,
    with ``allowed``. Returns {statistic: {"samples", "chorales", "value", "allowed", "kind", "within"}}."""
    found = {}
    for statistic, kind, allowed in targets:
        ours, theirs = generated[statistic]["mean"], chorales[statistic]["mean"]
        value = abs(ours / theirs - 1) if kind == "relative" else abs(ours - theirs)
        found[statistic] = {"samples": ours, "chorales": theirs, "value": value, "allowed": allowed, "kind": kind}
        found[statistic]["within"] = bool(value <= allowed)
    return found


def format_table(summaries: dict[str, dict]) -> str:
    """A plain-text table: one row per statistic, one column (mean ± std) per set of pieces."""
    names = list(summaries)
    header = ["statistic"] + [f"{name} ({summaries[name]['pieces']})" for name in names]
    rows = [
        [stat] + [f"{summaries[n][stat]['mean']:.3f} ± {summaries[n][stat]['std']:.3f}" for n in names]
        for stat in STATISTICS
    ]
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in [header] + rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def corpus_pieces(split) -> list[encoding.Notes]:
    """Notes of every piece of a corpus split (rows with ``input_ids``)."""
    return [encoding.ids_to_notes(ids) for ids in split["input_ids"]]


def midi_files(paths) -> list[Path]:
    """``.mid``/``.midi`` files among ``paths``: files as given, directories searched recursively, sorted."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in (".mid", ".midi"))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or directory: {path}")
    if not found:
        raise ValueError(f"no MIDI files in {', '.join(map(str, paths))}")
    return found


def midi_pieces(paths, skip_bars: int = 0) -> list[encoding.Notes]:
    """Notes of MIDI files (read as the tokenizer reads them), without those starting in the first
    ``skip_bars`` bars (e.g. the prompt of generated continuations)."""
    pieces = []
    for path in midi_files(paths):
        notes = encoding.score_to_notes(encoding.load_score(path))
        keep = notes.bars().locate(notes.onset)[0] >= skip_bars
        pieces.append(notes.select(keep))
    return pieces


def compare_with_corpus(samples, split, path=None, corpus_name: str = "training data") -> dict:
    """Statistics of generated continuations (``generate.Sample``s, prompt notes left out) next to those of a
    corpus split; prints the table and writes ``path`` (JSON) if given. Returns {name: summary}."""
    from .render import split_notes

    continuations = [split_notes(sample.ids, sample.prompt_len)[1] for sample in samples]
    summaries = {
        corpus_name: summarize(corpus_pieces(split), desc=f"{corpus_name} statistics"),
        "generated": summarize(continuations),
    }
    print(format_table(summaries))
    if path is not None:
        write_json(summaries, path)
    return summaries


# ----------------------------------------------------------------------------------------------------------
# NLL on a corpus split


@torch.no_grad()
def corpus_nll(model, split, batch_size: int = 8, mem_len: int | None = None, progress: bool = True) -> dict:
    """NLL per token and per note (and perplexity, token accuracy) of ``model`` on a corpus split: every piece
    whole, run in segments of ``segment_len`` with the memory of the ``mem_len`` tokens before each (default: the
    model's own ``mem_len``; 0 scores every segment on its own)."""
    from transformers import EvalPrediction

    from .data.pieces import IGNORE_INDEX, collate, eval_pieces
    from .training.metrics import compute_metrics, token_scores

    pieces = eval_pieces(split)
    if not len(pieces):
        raise ValueError("the split has no pieces to evaluate")
    trained_mem_len = model.config.mem_len
    model.config.mem_len = trained_mem_len if mem_len is None else mem_len
    model.eval()
    try:
        scores, labels = [], []
        for start in tqdm(
            range(0, len(pieces), batch_size), desc="NLL", unit="batch", disable=not progress, leave=False
        ):
            batch = collate([pieces[i] for i in range(start, min(start + batch_size, len(pieces)))])
            batch = {key: value.to(model.device) for key, value in batch.items()}
            logits = model(input_ids=batch["input_ids"]).logits
            scores.append(token_scores(logits, batch["labels"]).cpu().numpy().reshape(-1, 2))
            labels.append(batch["labels"][:, 1:].cpu().numpy().reshape(-1))
    finally:
        model.config.mem_len = trained_mem_len
    # one row of all scored positions (pieces differ in length), as compute_metrics reads (B, L) arrays
    flat_scores, flat_labels = np.concatenate(scores)[None], np.concatenate(labels)
    flat_labels = np.concatenate([[IGNORE_INDEX], flat_labels])[None]  # compute_metrics drops each row's first label
    metrics = compute_metrics(EvalPrediction(predictions=flat_scores, label_ids=flat_labels))
    return {
        **metrics,
        "mem_len": model.config.mem_len if mem_len is None else mem_len,
        "segment_len": model.config.segment_len,
        "pieces": len(pieces),
    }


# ----------------------------------------------------------------------------------------------------------
# The command


@dataclass
class EvaluateSettings:
    model: str = field(default="", metadata={"help": "model directory or Hub id for NLL; default: the released model"})
    statistics_only: bool = field(default=False, metadata={"help": "no NLL, no model: musical statistics only"})
    corpus: str = field(default="bach-chorales", metadata={"help": "a corpus source or a built corpus directory"})
    split: str = field(default="validation", metadata={"help": "corpus split to score and to compare with"})
    generated: list[str] = field(
        default_factory=list, metadata={"help": "generated MIDI files or directories", "metavar": "PATH"}
    )
    skip_bars: int = field(
        default=0, metadata={"help": "ignore notes of generated files starting in the first N bars (the prompt)"}
    )
    mem_len: int | None = field(
        default=None, metadata={"help": "memory length for NLL (0: none); default: the model's"}
    )
    batch_size: int = field(default=8, metadata={"help": "pieces per NLL batch"})
    max_pieces: int = field(
        default=0, metadata={"help": "score and compare this many pieces of the split (fixed by --seed); 0: all"}
    )
    seed: int = field(default=0, metadata={"help": "draws the --max-pieces subset"})
    midi_column: str = field(default="", metadata={"help": "dataset corpora: the column of MIDI bytes or note tables"})
    note_tempo: float = field(
        default=120.0, metadata={"help": "tempo (quarter notes a minute) of note tables without one"}
    )
    streaming: bool = field(default=False, metadata={"help": "hf:ORG/NAME corpora: encode as it streams, no download"})
    output: str = field(default="evaluation.json", metadata={"help": "JSON file for the results"})


def run_evaluate(settings: EvaluateSettings) -> dict:
    """NLL (with a model), statistics of the corpus split and of the generated files; print, write JSON."""
    from .data.corpus import load_corpus
    from .data.pieces import seeded_subset

    corpus = load_corpus(
        settings.corpus, midi_column=settings.midi_column, note_tempo=settings.note_tempo, streaming=settings.streaming
    )
    if settings.split not in corpus:
        raise ValueError(f"corpus has no split {settings.split!r}; it has {', '.join(corpus)}")
    split = seeded_subset(corpus[settings.split], settings.max_pieces, settings.seed)
    results: dict = {"corpus": settings.corpus, "split": settings.split, "pieces": len(split)}
    generated = midi_files(settings.generated) if settings.generated else []  # a missing file fails before the model
    if not settings.statistics_only:
        from .generate import load_model_and_tokenizer

        model, _ = load_model_and_tokenizer(settings.model or None)
        nll = corpus_nll(model, split, settings.batch_size, settings.mem_len)
        results["nll"] = nll
        print(
            f"{settings.split}: NLL per token {nll['nll_per_token']:.3f} nats (perplexity {nll['perplexity']:.2f}), "
            f"per note {nll['nll_per_note']:.3f} nats; {nll['tokens']:,} tokens, {nll['notes']:,} notes; "
            f"memory {nll['mem_len']} tokens, segments of {nll['segment_len']}"
        )

    summaries = {f"corpus {settings.split}": summarize(corpus_pieces(split), desc="corpus statistics")}
    if generated:
        pieces = midi_pieces(generated, settings.skip_bars)
        summaries["generated"] = summarize(pieces, desc="generated statistics")
    results["statistics"] = summaries
    print(format_table(summaries))
    if settings.output:
        write_json(results, settings.output)
        print(f"results: {settings.output}")
    return results


def write_json(data: dict, path) -> Path:
    """JSON with NaN written as null (NaN is not JSON)."""

    def clean(value):
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item) for item in value]
        if isinstance(value, float) and math.isnan(value):
            return None
        return value

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(data), indent=2) + "\n")
    return path
