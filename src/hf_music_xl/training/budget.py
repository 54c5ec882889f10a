"""Fitting the number of optimizer steps to a wall-clock budget (``--max-minutes``): the speed of a step measured
on a copy of the model, so the one-cycle schedule still completes within the budget."""

from __future__ import annotations

import copy
import logging
import math
import statistics
import time

import torch
from transformers import TrainingArguments

from ..data.pieces import collate

logger = logging.getLogger(__name__)


def seconds_per_step(model, train_set, batch_size: int, grad_accum: int, repeats: int = 4, warmup: int = 2) -> float:
    """Measured seconds of one optimizer step (forward, backward, AdamW) on a copy of the model: the median of
    ``repeats`` steps after ``warmup`` (first steps allocate). On a shared machine this is only an estimate."""
    probe = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-5)
    batch = collate([train_set[i % len(train_set)] for i in range(batch_size)])
    timings = []
    for _ in range(warmup + repeats):
        started = time.perf_counter()
        probe(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings[warmup:]) * grad_accum


def steps_for_budget(seconds: float, step_seconds: float, steps_per_epoch: int, eval_seconds: float) -> int:
    """Optimizer steps that fit ``seconds`` including one evaluation and checkpoint per epoch, with 10% slack."""
    per_step = step_seconds + eval_seconds / steps_per_epoch
    return max(1, int(0.9 * seconds / per_step))


def fit_steps_to_budget(settings, model, train_set, eval_tokens: int, args: TrainingArguments) -> int:
    step_seconds = seconds_per_step(model, train_set, settings.batch_size, settings.grad_accum)
    world = args.world_size
    steps_per_epoch = max(1, math.ceil(len(train_set) / (settings.batch_size * world * settings.grad_accum)))
    step_tokens = settings.batch_size * settings.grad_accum * len(train_set[0]["input_ids"])
    eval_seconds = eval_tokens / world / step_tokens * step_seconds / 3 + 1.0  # a forward is about 1/3 of a step
    steps = steps_for_budget(settings.max_minutes * 60, step_seconds, steps_per_epoch, eval_seconds)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        agreed = torch.tensor([steps])
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)  # every rank the same count
        steps = int(agreed.item())
    logger.info(
        "%.2f s per step measured: %d steps (%.1f epochs) fit %.1f min",
        step_seconds,
        steps,
        steps / steps_per_epoch,
        settings.max_minutes,
    )
    return steps
