"""nn.Linear with a second CPU path for inference on few rows (decoding steps, small batches),
taken where it measures faster on this machine.

nn.Linear computes x @ W^T with W stored (out, in). For a handful of rows of x that product is
bound by reading W, and how fast the BLAS streams W in that orientation depends on the CPU. On an
AMD EPYC with MKL (which takes a slow matrix-vector path on AMD CPUs), the other orientation,
(W @ x^T)^T, was 3x faster: the 25 weight matrices of a 6 x 384 GPT-2 with its 50,304-token head
took 11.3 ms at one row with F.linear and 3.9 ms this way. On an Intel Xeon with AMX the same
products took 7.3 ms with F.linear and 17.3 ms this way. So neither is assumed: the first product
of each shape (rows in buckets, since decoding repeats the same few) times both paths on its own
inputs and keeps the faster, F.linear unless the other wins clearly; decoding steps are chosen
whole instead (run_step; path_choice.py says why). A single row is doubled
for the transposed path (the matrix-vector path is the slow one in both orientations).

With hundreds of rows the product is bound by arithmetic and F.linear is as fast or faster, so
only up to FEW_ROWS rows are considered, on CPU, in float32 and without autograd; everything else
(training, GPUs, other dtypes) is plain nn.Linear. The parameters, their names and the state dict
are nn.Linear's, so checkpoints, LoRA and `transformers` interop are unchanged.
"""
from __future__ import annotations

from typing import Callable, Hashable, Optional, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from .path_choice import PathChoice

T = TypeVar("T")
FEW_ROWS = 64  # decoding steps and beams; an encoder batch has more rows
ROW_BUCKETS = (1, 4, 16, FEW_ROWS)  # products of up to this many rows share a choice

CHOICE = PathChoice("linear", ("plain", "transposed"))
# Decoding steps are chosen whole (see run_step): timed one by one, products can rank the paths the
# other way round from what a step of all of them measures (path_choice.py).
STEP_CHOICE = PathChoice("linear", ("plain", "transposed"))
_FORCED: list[Optional[str]] = [None]  # the path every product takes inside run_step, if any


def transposed(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """F.linear(x, weight, bias) as (weight @ x^T)^T, for 2-D x of few rows."""
    rows = x.shape[0]
    if rows == 1:
        x = x.repeat(2, 1)  # a real second row: an expanded (stride 0) one falls back to the slow path
    out = weight @ x.t() if bias is None else torch.addmm(bias[:, None], weight, x.t())
    # Back to row-major: attention kernels and reductions over the last dimension want it, and the
    # copy is a few rows.
    return out.t()[:rows].contiguous()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.linear(x, weight, bias), by the faster path on this machine where there is a choice."""
    if (torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32
            or torch.compiler.is_compiling()):  # a compiled graph picks its own kernels; timing has no place in it
        return F.linear(x, weight, bias)
    rows = x.numel() // max(1, x.shape[-1])
    if rows == 0 or rows > FEW_ROWS:
        return F.linear(x, weight, bias)
    flat = x.reshape(rows, x.shape[-1])
    paths = {"plain": lambda: F.linear(flat, weight, bias), "transposed": lambda: transposed(flat, weight, bias)}
    if _FORCED[0] is not None:
        return paths[_FORCED[0]]().view(*x.shape[:-1], weight.shape[0])
    bucket = next(b for b in ROW_BUCKETS if rows <= b)
    out = CHOICE.call((bucket, tuple(weight.shape), bias is not None), paths)
    return out.view(*x.shape[:-1], weight.shape[0])


def run_step(key: Hashable, step: Callable[[], T]) -> T:
    """Run `step` (a whole forward pass, e.g. one decoding step) with every few-row product on one
    path: the first steps of each `key` alternate, timed, and then the faster is kept."""
    def on(path: str) -> Callable[[], T]:
        def run() -> T:
            _FORCED[0] = path
            try:
                return step()
            finally:
                _FORCED[0] = None
        return run

    return STEP_CHOICE.call_in_turn(key, {path: on(path) for path in STEP_CHOICE.candidates})


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
