"""nn.Linear with a faster CPU path for inference on few rows (decoding steps, small batches).

nn.Linear computes x @ W^T with W stored (out, in). For a handful of rows of x that product is
bound by reading W, and on CPU the BLAS streams W in that orientation far below the machine's
bandwidth. Computed the other way round, (W @ x^T)^T, the same product takes the matrix-matrix
path that streams W at full speed, from two rows on; a single row is doubled to take it too (the
matrix-vector path is the slow one in both orientations). Measured on the benchmark machine
(2 cores, torch 2.13 CPU, MKL), the 25 weight matrices of a 6 x 384 GPT-2 with its 50,304-token
head, weights not in cache:

    rows of x            1      2      8     64
    F.linear, ms      11.3   24.9   20.2   39.1
    this path, ms      3.9    3.4    8.6   28.9

With hundreds of rows the product is bound by arithmetic instead, and there F.linear is as fast or
faster (all-MiniLM-L6-v2 encoding batches of 32 sentences ran 13% slower with this path at up to
1,024 rows). So this module takes the path for at most FEW_ROWS rows, on CPU, in float32 and without
autograd; everything else (training, GPUs, other dtypes) is plain nn.Linear. The parameters, their
names and the state dict are nn.Linear's, so checkpoints, LoRA and `transformers` interop are
unchanged.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

FEW_ROWS = 64  # decoding steps and beams; an encoder batch has more rows


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.linear(x, weight, bias), by the faster path where it applies (see above)."""
    if torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return F.linear(x, weight, bias)
    rows = x.numel() // max(1, x.shape[-1])
    if rows == 0 or rows > FEW_ROWS:
        return F.linear(x, weight, bias)
    flat = x.reshape(rows, x.shape[-1])
    if rows == 1:
        flat = flat.repeat(2, 1)  # a real second row: an expanded (stride 0) one falls back to the slow path
    out = weight @ flat.t() if bias is None else torch.addmm(bias[:, None], weight, flat.t())
    # Back to row-major: attention kernels and reductions over the last dimension want it, and the
    # copy is a few rows.
    return out.t()[:rows].contiguous().view(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
