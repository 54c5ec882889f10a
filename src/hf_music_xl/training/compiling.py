"""Whether a run trains with its attention compiled: what ``--compile/--no-compile`` (or neither: auto) asks of
``MusicXLPreTrainedModel.compile_training_attention``."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def resolve_compile(compile_attention: bool | None) -> bool:
    """``--compile`` (True) or ``--no-compile`` (False) as asked; neither (None): on CUDA, off on CPU, where the
    compiled attention measured slower than eager (BENCHMARKS.md, scripts/bench_compile.py). The choice is logged;
    where compiling fails at the first step, the model logs it and trains eager."""
    if compile_attention is not None:
        return compile_attention
    cuda = torch.cuda.is_available()
    logger.info(
        "compile: %s (%s)",
        "on" if cuda else "off",
        "CUDA" if cuda else "on CPU the compiled attention is slower than eager; --compile to force it",
    )
    return cuda
