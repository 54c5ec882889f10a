"""The measuring half of ``tasks_report.py``: NLL of the filled bars and of the lower voices, with and without
their condition, and the harmony of sampled harmonizations against Bach's own (see that script's docstring)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from hf_music_xl import harmony
from hf_music_xl.data.corpus import load_corpus
from hf_music_xl.data.task_examples import piece_notes
from hf_music_xl.models.music_xl import encoding as E
from hf_music_xl.models.music_xl import tasks_music_xl as T
from hf_music_xl.models.music_xl.batch_sampling_music_xl import sample_rows
from hf_music_xl.models.music_xl.modeling_music_xl import MusicXLForCausalLM
from hf_music_xl.models.music_xl.sampling_music_xl import SamplingRequest


def token_nll(model, ids: np.ndarray) -> np.ndarray:
    """(T,) the NLL of each token given the tokens before it (the first: 0), the whole piece in one forward call
    (run in segments with the memory carried, as the Trainer evaluates)."""
    with torch.no_grad():
        logits = model(torch.as_tensor(np.asarray(ids, dtype=np.int64))[None]).logits[0, :-1].float()  # (T-1, V)
    nll = torch.nn.functional.cross_entropy(logits, torch.as_tensor(ids[1:], dtype=torch.long), reduction="none")
    return np.r_[0.0, nll.numpy()]


def note_tokens(ids: np.ndarray, pitch_tokens: np.ndarray) -> np.ndarray:
    """(T,) bool: the chosen pitch tokens and the duration token of each."""
    chosen = np.zeros(len(ids), bool)
    chosen[pitch_tokens] = chosen[pitch_tokens + 1] = True
    return chosen


def is_pitch(ids: np.ndarray) -> np.ndarray:
    return (ids >= E.NOTE_OFFSET) & (ids < E.NOTE_OFFSET + E.NUM_PITCHES)


def infill_scores(model, ids: np.ndarray, notes: E.Notes, span: tuple[int, int]) -> tuple[float, float, int]:
    """(NLL of the span's notes given both sides, given the left side only, notes): each note's own pitch and
    duration tokens, the notes the model writes after the prompt (the two layouts write the waits differently
    at the span's edges, so waits are left out of both)."""
    prompt, middle, _, _ = T.infill_parts(notes, *span)
    layout = np.concatenate([prompt, middle])
    written = np.flatnonzero(is_pitch(layout) & (np.arange(len(layout)) >= len(prompt)))  # the span's notes
    both = token_nll(model, layout)[note_tokens(layout, written)].sum()
    start, end = T.span_times(notes, *span)
    times = E.beat_positions(ids)
    inside = np.flatnonzero(is_pitch(ids) & (times >= start) & (times < end))
    left = token_nll(model, ids)[note_tokens(ids, inside)].sum()
    return float(both), float(left), len(inside)


def harmonize_scores(model, ids: np.ndarray, voices: np.ndarray, notes: E.Notes, melody: int):
    """(NLL of the lower voices' notes given the soprano bar by bar, of the same notes in the plain piece, notes)."""
    layout = T.harmonize_ids(notes, notes.voice == melody)
    written = np.flatnonzero(is_pitch(layout) & ~T.given_tokens(layout))
    given = token_nll(model, layout)[note_tokens(layout, written)].sum()
    lower = np.flatnonzero(is_pitch(ids) & (voices != melody))
    plain = token_nll(model, ids)[note_tokens(ids, lower)].sum()
    return float(given), float(plain), len(lower)


def sampled_harmony(model, notes: E.Notes, melody: int, seed: int, key) -> tuple[dict, bool, int]:
    """(the harmony report of one sampled harmonization of the soprano, whether the soprano came back note for
    note, tokens sampled)."""
    soprano = notes.select(notes.voice == melody)
    prompt = T.harmonize_prompt(soprano)
    for rows, _ in sample_rows(model, [prompt], SamplingRequest(bars=1), [seed]):  # noqa: B007 - the last is kept
        pass
    ids = rows[0].numpy()
    given, written = T.given_notes(ids), T.written_notes(ids, len(prompt.ids))
    kept = np.array_equal(given.onset, soprano.onset) and np.array_equal(given.pitch, soprano.pitch)
    table = [np.r_[given.onset, written.onset], np.r_[given.pitch, written.pitch]]
    table += [np.r_[given.duration, written.duration], np.r_[np.ones(len(given), bool), np.zeros(len(written), bool)]]
    report = harmony.harmony_report(*table, bar_steps=bar_steps(notes), key=key)
    return report, kept, len(ids) - len(prompt.ids)


def bar_steps(notes: E.Notes) -> int:
    _, num, den = notes.meters[0]
    return E.bar_steps(int(num), int(den))


def infill_span(notes: E.Notes, piece: int, span_bars: int) -> tuple[int, int] | None:
    """A span of ``span_bars`` bars at a place seeded by the piece's index, with at least a bar on each side."""
    bars = T.piece_bars(notes)
    if bars < span_bars + 2:
        return None
    first = int(np.random.default_rng([piece, 22]).integers(1, bars - span_bars))
    try:
        T.span_times(notes, first, first + span_bars - 1)
    except ValueError:  # a meter change inside
        return None
    return first, first + span_bars - 1


def measure_model(folder: Path, split, pieces: int, samples: int, span_bars: int) -> dict:
    model = MusicXLForCausalLM.from_pretrained(folder / "final").eval()
    tasks = model.config.task_names
    totals = dict.fromkeys(
        ["infill_both", "infill_left", "infill_notes", "harm_given", "harm_plain", "harm_notes"], 0.0
    )
    harmonies, bach, kept, sampled, started = [], [], 0, 0, time.perf_counter()
    for index in range(pieces or len(split)):
        ids, voices = (np.asarray(split[index][column], np.int64) for column in ("input_ids", "voices"))
        notes = piece_notes(ids, voices)
        span = infill_span(notes, index, span_bars)
        if span is not None:
            both, left, count = infill_scores(model, ids, notes, span)
            totals["infill_both"] += both
            totals["infill_left"] += left
            totals["infill_notes"] += count
        melody = T.melody_voice(notes)
        if melody is None:
            continue
        given, plain, count = harmonize_scores(model, ids, voices, notes, melody)
        totals["harm_given"] += given
        totals["harm_plain"] += plain
        totals["harm_notes"] += count
        key = harmony.estimate_key(notes.pitch, notes.duration)
        bach.append(
            harmony.harmony_report(
                notes.onset, notes.pitch, notes.duration, notes.voice == melody, bar_steps(notes), key
            )
        )
        if "harmonize" in tasks:
            for sample in range(samples):
                report, came_back, tokens = sampled_harmony(model, notes, melody, 1000 * index + sample, key)
                harmonies.append(report)
                kept += came_back
                sampled += tokens
    result = {
        "tasks": tasks,
        "eval_nll_per_note": eval_nll(folder),
        "infill_nll_per_note_both_sides": totals["infill_both"] / totals["infill_notes"],
        "infill_nll_per_note_left_only": totals["infill_left"] / totals["infill_notes"],
        "infill_notes": int(totals["infill_notes"]),
        "lower_voices_nll_per_note_given_soprano": totals["harm_given"] / totals["harm_notes"],
        "lower_voices_nll_per_note_plain": totals["harm_plain"] / totals["harm_notes"],
        "lower_voice_notes": int(totals["harm_notes"]),
        "bach_harmony": strip(harmony.pooled(bach)),
    }
    if harmonies:
        result.update(
            sampled_harmony=strip(harmony.pooled(harmonies)),
            samples=len(harmonies),
            soprano_kept=kept,
            sampled_tokens=sampled,
        )
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def eval_nll(folder: Path) -> float:
    import json

    return json.loads((folder / "final" / "training_summary.json").read_text())["eval"]["eval_nll_per_note"]


def strip(report: dict) -> dict:
    """The rates of a pooled harmony report (its counts left out), rounded."""
    return {key: round(float(value), 4) for key, value in report.items() if isinstance(value, (int, float))}


def measure_all(out: Path, models: dict, seeds, pieces: int, samples: int, span_bars: int) -> dict:
    split = load_corpus("bach-chorales")["validation"]
    runs = {}
    for seed in seeds:
        for name in models:  # a few minutes each (a multitask model samples a harmonization of every soprano)
            run = f"{name}-seed{seed}"
            runs[run] = measure_model(out / run, split, pieces, samples, span_bars)
            print(f"measured {run} in {runs[run]['seconds']:.0f} s", flush=True)
    summary = {}
    for name in models:
        values = [runs[f"{name}-seed{seed}"] for seed in seeds]
        summary[name] = {
            key: [round(value[key], 4) for value in values] for key in values[0] if isinstance(values[0][key], float)
        }
    return {"validation_pieces": pieces or len(split), "span_bars": span_bars, "runs": runs, "summary": summary}
