"""Which precision a run trains in: what ``--precision auto`` picks for the hardware, and the refusals of what it
does not support (fp16 on a CPU trains silently in fp32 otherwise)."""

from __future__ import annotations

import logging
import warnings

import torch

logger = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matmuls run about twice as fast as fp32 (without them bf16 is slower)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own probes (private, so guarded)
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_precision(precision: str) -> dict[str, bool]:
    """TrainingArguments precision flags for what the hardware really supports. ``auto``: bf16 (or fp16) on CUDA,
    bf16 autocast on a CPU with native bf16 (AVX-512 BF16 or AMX), fp32 elsewhere; the choice is logged."""
    cuda = torch.cuda.is_available()
    if precision == "auto":
        if cuda:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            reason = "CUDA"
        else:
            precision = "bf16" if cpu_has_native_bf16() else "fp32"
            reason = (
                "this CPU has native bf16 (AVX-512 BF16/AMX)" if precision == "bf16" else "this CPU lacks native bf16"
            )
        logger.info("--precision auto: %s (%s)", precision, reason)
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"unknown precision {precision!r}; choose auto, fp32, bf16 or fp16")
    if precision == "fp16" and not cuda:
        raise ValueError(
            "fp16 needs a CUDA GPU: on CPU the Trainer accepts fp16=True and silently trains in fp32. "
            "Use --precision fp32 (or bf16, which autocasts on CPU)."
        )
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU does not support bf16; use --precision fp16 or fp32")
    if precision == "bf16" and not cuda and not cpu_has_native_bf16():
        warnings.warn("bf16 on CPU autocasts matmuls; without AMX/AVX512-BF16 it is slower than fp32", stacklevel=2)
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}
