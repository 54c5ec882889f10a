"""Whole pieces as examples: evaluation scores every validation piece whole (``eval_pieces``), in one forward call
that runs it in consecutive segments with the memory carried across them, as TransformerXL evaluates; ``collate``
pads a batch of examples (pieces, windows or stream steps) to its longest."""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset

from ..models.music_xl import encoding

IGNORE_INDEX = -100  # labels the loss skips (padding), as transformers' loss functions expect


def padded(values: np.ndarray, length: int, fill: int) -> np.ndarray:
    """``values`` cut or padded with ``fill`` to ``length``."""
    out = np.full(length, fill, dtype=np.int64)
    out[: min(length, len(values))] = values[:length]
    return out


def eval_pieces(split: Dataset) -> Dataset:
    """Every piece of a split as one example (``input_ids`` and ``labels``), longest first so that a batch pads
    little; nothing random. The pieces stay in the split's memory-mapped Arrow file: the lengths come from its
    offsets, and each example is read when it is asked for (a validation split of 10^4 long pieces is 10^8 tokens:
    gigabytes as Python lists)."""
    from .streams import ArrowPieces

    lengths = ArrowPieces(split).lengths
    ordered = split.select(np.argsort(-lengths, kind="stable")).select_columns(["input_ids"])
    return ordered.with_transform(as_example)


def as_example(batch: dict) -> dict:
    """A batch of pieces as examples: each piece's labels are its own tokens."""
    return {"input_ids": batch["input_ids"], "labels": batch["input_ids"]}


def seeded_subset(split: Dataset, max_pieces: int, seed: int = 0) -> Dataset:
    """``max_pieces`` pieces of ``split`` drawn once from ``seed`` (kept in corpus order), or the whole split if it
    has no more than that or ``max_pieces`` is 0: the same pieces every time, so evaluations compare."""
    if not max_pieces or max_pieces >= len(split):
        return split
    chosen = np.random.default_rng(seed).choice(len(split), size=max_pieces, replace=False)
    return split.select(np.sort(chosen))


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack examples into LongTensors, padding to the longest: ``input_ids`` with xxpad, ``labels`` and
    ``shift_labels`` with -100 (padding comes after the real tokens, so no real token attends to it);
    ``beat_positions`` (equal lengths: windows) are stacked as they are."""
    fills = {"input_ids": encoding.PAD_ID, "labels": IGNORE_INDEX, "shift_labels": IGNORE_INDEX}
    length = max(len(example["input_ids"]) for example in examples)
    batch = {
        key: np.stack([padded(np.asarray(example[key]), length, fills[key]) for example in examples])
        for key in fills
        if key in examples[0]
    }
    if "beat_positions" in examples[0]:
        batch["beat_positions"] = np.stack([np.asarray(example["beat_positions"]) for example in examples])
    return {key: torch.as_tensor(value, dtype=torch.long) for key, value in batch.items()}
