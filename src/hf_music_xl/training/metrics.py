"""Validation metrics of next-token prediction, shared by the Trainer's evaluation and ``hf-music-xl evaluate``:
per-token scores computed as the logits come (``token_scores``, so evaluation keeps two numbers a token, not the
logits), then perplexity, token accuracy and NLL per token and per note over every labelled token
(``compute_metrics``; NLL per note divides by the note tokens, comparable across tokenizations)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data.pieces import IGNORE_INDEX
from ..models.music_xl import encoding


def token_scores(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, L-1, 2): NLL and argmax correctness of each next-token prediction; keeps eval memory small."""
    if isinstance(logits, tuple):
        logits = logits[0]
    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    nll = F.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")
    correct = (logits.argmax(-1) == targets).float()
    return torch.stack([nll, correct], dim=-1)


def compute_metrics(eval_prediction) -> dict[str, float]:
    """Perplexity, token accuracy, NLL per token and per note over all labelled validation tokens."""
    scores, labels = eval_prediction.predictions, eval_prediction.label_ids
    targets = labels[:, 1:]
    counted = targets != IGNORE_INDEX
    is_note = counted & (targets >= encoding.NOTE_OFFSET) & (targets < encoding.NOTE_OFFSET + encoding.NUM_PITCHES)
    total_nll = float(scores[..., 0][counted].sum())
    tokens, notes = int(counted.sum()), int(is_note.sum())
    return {
        "nll_per_token": total_nll / max(tokens, 1),
        "perplexity": math.exp(total_nll / max(tokens, 1)),
        "token_accuracy": float(scores[..., 1][counted].sum()) / max(tokens, 1),
        "nll_per_note": total_nll / notes if notes else float("nan"),
        "tokens": tokens,
        "notes": notes,
    }
