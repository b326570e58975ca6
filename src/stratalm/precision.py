"""Which number format the matrix products run in: fp32, or bf16 autocast, and why.

bf16 autocast pays where the hardware multiplies bf16 natively: CUDA GPUs, and CPUs with AMX
tiles, where a 2048 x 2048 bf16 matmul measured 3.1x fp32 (788 against 226-258 GFLOP/s on an Intel
Xeon, 2 cores) and a gpt2-mini pretraining run 1.76x, to the same validation loss to 3 decimals.
Elsewhere on CPU bf16 is converted to fp32 and back around every product, so it is slower and less
exact, and "auto" keeps fp32. Training, generation, encoding and serving all resolve "auto" here.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager

from .errors import ConfigError
from .machine import has_amx

PRECISIONS = ("auto", "fp32", "bf16")


def choose_precision(requested: str, device_type: str) -> tuple[str, str]:
    """("fp32" or "bf16", the reason in a few words) for `requested` on a device of `device_type`."""
    if requested not in PRECISIONS:
        raise ConfigError(f"precision must be auto, fp32 or bf16; got '{requested}'.")
    if requested != "auto":
        return requested, "as configured"
    if device_type == "cuda":
        return "bf16", "auto: CUDA multiplies bf16 natively"
    if device_type == "cpu" and has_amx():
        return "bf16", "auto: the CPU has AMX, where bf16 matrix products run about 3x fp32"
    return "fp32", f"auto: {'the CPU has no AMX' if device_type == 'cpu' else device_type}, so bf16 would be slower"


def autocast(precision: str, device_type: str) -> ContextManager:
    """bf16 autocast for a resolved "bf16", nothing for "fp32"."""
    if precision == "bf16":
        import torch

        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
