"""Trainer callbacks of a run: the wall-clock safety net, the epoch that seeds the training data, and the plain
(untransposed) final steps."""

from __future__ import annotations

import logging
import math
import time

from transformers import TrainerCallback

from ..data.streams import PieceStreams
from ..data.windows import TrainTransform

logger = logging.getLogger(__name__)


class WallClockBudget(TrainerCallback):
    """Stop (saving a checkpoint) once training has run for ``seconds``; single process only, since ranks
    deciding on their own could stop on different steps and hang DDP."""

    def __init__(self, seconds: float):
        self.seconds, self.started = seconds, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if time.perf_counter() - self.started > self.seconds:
            logger.warning(
                "wall-clock budget of %.1f min reached at step %d: stopping", self.seconds / 60, state.global_step
            )
            control.should_training_stop = True
            control.should_save = True


class EpochSeed(TrainerCallback):
    """Tell the training data which epoch it draws for (``TrainTransform.seed``, ``PieceStreams``). ``state.epoch``
    is a whole number at the start of an epoch and fractional when a run resumes mid-epoch: its floor is the epoch
    either way."""

    def __init__(self, data: TrainTransform | PieceStreams):
        self.data = data

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.data.set_epoch(math.floor((state.epoch or 0) + 1e-9))


class PlainFinalSteps(TrainerCallback):
    """Turn transposition off for the last ``fraction`` of the steps (the reference's last epochs): windows from
    the step it starts, streams from that step of their data (a function of the step, so exact on resume)."""

    def __init__(self, data: TrainTransform | PieceStreams, fraction: float):
        self.data, self.fraction, self.initial = data, fraction, data.augment

    def on_train_begin(self, args, state, control, **kwargs):
        if isinstance(self.data, PieceStreams):
            self.data.plain_from_step = (
                math.ceil((1 - self.fraction) * state.max_steps) * args.gradient_accumulation_steps
            )

    def on_step_begin(self, args, state, control, **kwargs):
        if isinstance(self.data, TrainTransform):
            self.data.augment = self.initial and state.global_step < (1 - self.fraction) * state.max_steps
