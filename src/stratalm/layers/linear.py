"""nn.Linear with other CPU paths for inference on few rows (decoding steps, small batches),
taken where they measure faster on this machine.

nn.Linear computes x @ W^T with W stored (out, in). For a handful of rows of x that product is
bound by reading W, and how fast the BLAS streams W depends on the CPU and on how W lies in memory.
Seven paths give the same numbers (to rounding):
- "plain": F.linear on W as stored, row by row;
- "transposed": (W @ x^T)^T. On one AMD EPYC with MKL (which takes a slow matrix-vector path on AMD
  CPUs) this was 3x faster: the 25 weight matrices of a 6 x 384 GPT-2 with its 50,304-token head
  took 11.3 ms at one row with F.linear and 3.9 ms this way. On an Intel Xeon with AMX the same
  products took 7.3 ms with F.linear and 17.3 ms this way;
- "columns": F.linear on W laid out by columns in memory (W^T contiguous, the tensor still (out, in),
  as GPT-2's Conv1D keeps it). On another AMD EPYC (AVX2, MKL) the 50,304 x 384 head at one row took
  5.7 ms this way against 13.7 ms plain and 13.3 ms transposed (one thread), and on 2 threads a
  decoding step of that GPT-2 at batch 1 took 11.6 ms this way, 12.2 transposed and 17.1 plain
  (at batch 8, transposed won: 20.6 against 29.3 and 31.5 ms). The layout is changed in place (store_by_columns), so it costs no
  memory; saving writes every tensor contiguous, so checkpoints do not change.
- "columns_split" and "transposed_split": those two paths, with each product whose weight is larger
  than SPLIT_MIN_BYTES cut into slices of its outputs, run as one batched product. MKL streams a
  few-row product through one core, so a matrix far larger than the caches (the 77 MB head) is read
  at one core's bandwidth; as a batch, each core reads its own slices. On that AMD EPYC (2 threads,
  20 GB/s read) the head at one row took 3.5 ms by columns in 4 slices against 6.2 whole, and at
  eight rows 9.6 ms transposed in 2 slices against 14.3 whole; for the blocks' 0.6-2.4 MB matrices
  the batched call cost more than it saved (5.0-5.5 against 4.5 ms for the 24), so they stay whole.
  At those widths the numbers are the unsplit path's bit for bit (slices of a few columns round
  differently in the kernels' tails). In whole decoding steps of that GPT-2 (tokens/s, 4 alternating
  runs of 128 tokens, a busy machine): batch 1 columns 51-55, columns_split 53-65; batch 8
  transposed 205-270, transposed_split 218-265.
- "native" and "native_split": a compiled kernel that streams each matrix once on all threads,
  where MKL reads it on one core (native.py has the figures); with "_split" the matrices beyond
  SPLIT_MIN_BYTES (the head) lie by columns and take the columns_split product instead, which on
  that AMD EPYC read the head in 2.7-3.4 ms against 4.4-5.1 ms by the kernel.
So none is assumed. Decoding steps are chosen whole (run_step; path_choice.py says why), the
weights taking the layout of the path being timed; the first single product of each shape (rows
in buckets, since decoding repeats the same few) times plain against transposed on its own inputs
and keeps the faster, F.linear unless the other wins clearly. A single row is doubled for the
transposed path (the matrix-vector path is the slow one in both orientations).

With hundreds of rows the product is bound by arithmetic and F.linear is as fast or faster, so
only up to FEW_ROWS rows are considered, on CPU, in float32 and without autograd; everything else
(training, GPUs, other dtypes) is plain nn.Linear. The parameters, their names and the state dict
are nn.Linear's, so checkpoints, LoRA and `transformers` interop are unchanged.
"""
from __future__ import annotations

import contextlib
import ctypes
import weakref
from typing import Callable, Hashable, Optional, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from .native import available as kernel_runs_here, few_rows_linear
from .path_choice import PathChoice

T = TypeVar("T")
FEW_ROWS = 64  # decoding steps and beams; an encoder batch has more rows
ROW_BUCKETS = (1, 4, 16, FEW_ROWS)  # products of up to this many rows share a choice

CHOICE = PathChoice("linear", ("plain", "transposed"))
# Decoding steps are chosen whole (see run_step): timed one by one, products can rank the paths the
# other way round from what a step of all of them measures (path_choice.py).
# Ordered by layout (by rows, by columns, then native_split's head by columns and the rest by rows),
# so that timing them relays the weights out twice and the likeliest winner on AMD CPUs, where the
# faster paths are needed, is timed last and keeps its layout.
# The native paths are candidates only where the kernel builds and runs (native.available).
STEP_CHOICE = PathChoice("linear", ("plain", "transposed", "transposed_split", "native", "columns", "columns_split",
                                    "native_split"),
                         available=lambda candidate: not candidate.startswith("native") or kernel_runs_here())
SPLIT_MIN_BYTES = 16 * 2**20  # far beyond the caches: a product this large is bound by one core's reads
SPLIT_PARTS = {"columns": 4, "transposed": 2}  # measured on the head, each the better of 2 and 4 slices
_FORCED: list[Optional[str]] = [None]  # the path every product takes inside run_step, if any
# The layout run_step last gave each model's weights (see columns_from). Weights swapped in from
# outside afterwards keep their own layout: the numbers are the same, only the speed differs.
_LAID_OUT: "weakref.WeakKeyDictionary[nn.Module, float]" = weakref.WeakKeyDictionary()


def columns_from(path: str) -> float:
    """The size in bytes from which a weight lies by columns on `path`: every weight for the columns
    paths, only those split by columns for native_split, none for the others."""
    if path.startswith("columns"):
        return 0
    return SPLIT_MIN_BYTES if path == "native_split" else float("inf")


def transposed(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """F.linear(x, weight, bias) as (weight @ x^T)^T, for 2-D x of few rows."""
    rows = x.shape[0]
    if rows == 1:
        x = torch.cat((x, x))  # a real second row: an expanded (stride 0) one falls back to the slow path
    out = weight @ x.t() if bias is None else torch.addmm(bias[:, None], weight, x.t())
    # Back to row-major: attention kernels and reductions over the last dimension want it, and the
    # copy is a few rows.
    return out.t()[:rows].contiguous()


def split_outputs(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], parts: int) -> torch.Tensor:
    """F.linear(x, weight, bias) for 2-D x as `parts` slices of the outputs in one batched product
    (bmm runs the slices on separate cores): x @ slice^T where the weight lies by columns (see
    store_by_columns), (slice @ x^T)^T as `transposed` where it lies by rows. Outputs beyond a
    multiple of `parts` (a vocabulary of 50,257) are one small product more."""
    out_features, in_features = weight.shape
    rows, width = x.shape[0], out_features // parts
    if width == 0:
        return F.linear(x, weight, bias)
    cut = parts * width
    if weight.is_contiguous():
        slices = weight[:cut].view(parts, width, in_features)
        inputs = (torch.cat((x, x)) if rows == 1 else x).t()  # one row would take the slow matrix-vector path
        inputs = inputs.expand(parts, *inputs.shape)
        out = (torch.bmm(slices, inputs) if bias is None else
               torch.baddbmm(bias[:cut].view(parts, width, 1), slices, inputs))  # (parts, width, rows)
        out = out.permute(2, 0, 1)[:rows]
    else:
        slices = weight.t().as_strided((parts, in_features, width), (width, out_features, 1))
        inputs = x.expand(parts, *x.shape)
        out = (torch.bmm(inputs, slices) if bias is None else
               torch.baddbmm(bias[:cut].view(parts, 1, width), inputs, slices))  # (parts, rows, width)
        out = out.transpose(0, 1)
    out = out.reshape(rows, cut).contiguous()  # a single row can come back as a strided view
    if cut == out_features:
        return out
    rest = F.linear(x, weight[cut:], None if bias is None else bias[cut:])
    return torch.cat([out, rest], dim=1)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.linear(x, weight, bias), by the faster path on this machine where there is a choice."""
    if (torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32
            or torch.compiler.is_compiling()):  # a compiled graph picks its own kernels; timing has no place in it
        return F.linear(x, weight, bias)
    width = x.shape[-1]
    rows = x.numel() // max(1, width)
    forced = _FORCED[0]
    if rows == 0 or rows > FEW_ROWS or forced == "plain":  # plain: nothing to reshape (a decoding step's commonest)
        return F.linear(x, weight, bias)
    flat = x.reshape(rows, width)
    if forced is not None:
        out = forced_product(forced, flat, weight, bias)
    else:
        bucket = next(b for b in ROW_BUCKETS if rows <= b)
        out = CHOICE.call((bucket, tuple(weight.shape), bias is not None),
                          {"plain": lambda: F.linear(flat, weight, bias), "transposed": lambda: transposed(flat, weight, bias)})
    return out.view(*x.shape[:-1], weight.shape[0])


def forced_product(path: str, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """x (rows, in) times `weight` by the step path `path` (the weights in its layout)."""
    base, split = path.removesuffix("_split"), path.endswith("_split")
    if split and weight.numel() * weight.element_size() >= SPLIT_MIN_BYTES:
        return split_outputs(x, weight, bias, SPLIT_PARTS["columns" if base == "native" else base])
    if base == "transposed":
        return transposed(x, weight, bias)
    if base == "native" and weight.is_contiguous() and (bias is None or bias.is_contiguous()):
        return few_rows_linear(x.contiguous(), weight, bias)
    return F.linear(x, weight, bias)  # columns is plain on its layout


def store_by_columns(model: nn.Module, by_columns: bool) -> None:
    """Lay every nn.Linear weight of `model` out in memory by columns (W^T contiguous) or back by
    rows, in place: values, shapes, parameters and the tied head stay what they are."""
    lay_out(model, 0 if by_columns else float("inf"))


def lay_out(model: nn.Module, columns_from: float) -> None:
    """Lay the nn.Linear weights of `model` of at least `columns_from` bytes out by columns and
    the others by rows (see store_by_columns)."""
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None) if isinstance(module, nn.Linear) else None
            if weight is None or weight.dim() != 2 or min(weight.shape) == 1 or weight.device.type == "meta":
                continue  # a single row or column lies the same both ways
            by_columns = weight.numel() * weight.element_size() >= columns_from
            if weight.is_contiguous() == by_columns:  # a tied weight met twice is already done
                weight.data = weight.data.t().contiguous().t() if by_columns else weight.data.contiguous()


def give_back_freed_memory() -> None:
    """Return the heap's free pages to the system (glibc's malloc_trim). A relayout frees the old
    copies of the weights; the block matrices (0.6-2.4 MB in a GPT-2 small) come from the heap, which
    keeps freed pages resident: without this a step chooser's two relayouts left a 6 x 384 GPT-2's
    peak memory 79 MB higher. Elsewhere than glibc nothing happens."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def run_step(key: Hashable, step: Callable[[], T], model: nn.Module) -> T:
    """Run `step` (a whole forward pass of `model`, e.g. one decoding step) with every few-row
    product on one path: the first steps of each `key` try each path in turn, timed, and then the
    faster is kept. The weights of `model` take the layout of the path (see store_by_columns)."""
    layout = columns_from(STEP_CHOICE.upcoming(key))
    if _LAID_OUT.get(model) != layout:  # walking every module each step would cost ~1% of a step
        lay_out(model, layout)
        _LAID_OUT[model] = layout
        give_back_freed_memory()

    def on(forced: str) -> Callable[[], T]:
        def run() -> T:
            _FORCED[0] = "plain" if forced == "columns" else forced  # columns is plain on its layout
            try:
                return step()
            finally:
                _FORCED[0] = None
        return run

    return STEP_CHOICE.call_in_turn(key, {candidate: on(candidate) for candidate in STEP_CHOICE.candidates})


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
