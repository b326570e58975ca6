"""Muon for the hidden matrices and AdamW for the rest, stepped and checkpointed as one optimizer.

`torch.optim.Muon` takes 2-D matrices only (it orthogonalises each update with Newton-Schulz
steps), so embeddings, heads, norms and biases go to AdamW beside it (as in Keller Jordan's
modded-nanogpt). The loop and the checkpoint code see one optimizer: one list of param_groups
(Muon's, then AdamW's; the loop sets each one's lr) and one state_dict numbered as torch numbers a
single optimizer's parameters, so Muon's momentum buffers are saved and resumed by the same path
as AdamW's moments (checkpoint/training.py).

torch runs Muon's Newton-Schulz steps in bf16: fast on GPUs and on CPUs that multiply bf16 natively
(AMX), but on a CPU without it every bf16 product is converted around, and a speedrun step with
Muon cost 2.3x an AdamW step on an AMD EPYC (AVX2). `Muon` below runs the same steps in fp32 there:
the matrices are small, so fp32 costs little and is the more exact of the two.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch

from ..precision import choose_precision


def newton_schulz_dtype(requested: str, device_type: str) -> torch.dtype:
    """The dtype of Muon's Newton-Schulz steps: the rule of precision=auto (bf16 where the hardware
    multiplies it natively: CUDA, AMX), or what is asked."""
    return torch.bfloat16 if choose_precision(requested, device_type)[0] == "bf16" else torch.float32


def orthogonalised(update: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                   dtype: torch.dtype) -> torch.Tensor:
    """The quintic Newton-Schulz iteration of torch.optim.Muon (Keller Jordan's), in `dtype`: about
    U V^T of the update's SVD U S V^T, its singular values pushed into roughly (0.5, 1.5)."""
    a, b, c = coefficients
    x = update.to(dtype)
    wide = x.shape[0] <= x.shape[1]
    x = x if wide else x.T  # the Gram matrix of the shorter side is the cheaper one
    x = x / x.norm().clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x if wide else x.T).to(update.dtype)


def shape_scale(shape: torch.Size, adjust_lr_fn: Optional[str]) -> float:
    """torch.optim.Muon's learning-rate factor for a matrix of `shape` (its two rules)."""
    rows, cols = shape[:2]
    if adjust_lr_fn in (None, "original"):
        return math.sqrt(max(1.0, rows / cols))
    return 0.2 * math.sqrt(max(rows, cols)) if adjust_lr_fn == "match_rms_adamw" else 1.0


class Muon(torch.optim.Muon):
    """torch.optim.Muon (its groups, hyperparameters and `momentum_buffer` state, so checkpoints are
    the same) with the Newton-Schulz steps in `ns_dtype`; bf16 is torch's own step unchanged."""

    def __init__(self, params: Any, ns_dtype: torch.dtype = torch.bfloat16, **options: Any) -> None:
        super().__init__(params, **options)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        if self.ns_dtype == torch.bfloat16:
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            buffers: list[torch.Tensor] = []
            self._init_group(group, params, grads, buffers)
            momentum = group["momentum"]
            for param, grad, buffer in zip(params, grads, buffers):
                buffer.lerp_(grad, 1 - momentum)
                update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                update = orthogonalised(update, group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype)
                param.mul_(1 - group["lr"] * group["weight_decay"])  # decoupled weight decay, as torch's
                param.add_(update, alpha=-group["lr"] * shape_scale(param.shape, group["adjust_lr_fn"]))
        return loss


class MuonWithAdamW:
    def __init__(self, muon: Muon, adamw: torch.optim.AdamW) -> None:
        self.parts = (muon, adamw)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for part in self.parts for group in part.param_groups]

    @property
    def state(self) -> dict[torch.Tensor, dict[str, Any]]:
        return {**self.parts[0].state, **self.parts[1].state}

    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = closure() if closure is not None else None
        for part in self.parts:
            part.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """Both parts' states, AdamW's parameter indices after Muon's."""
        state: dict[int, Any] = {}
        groups: list[dict[str, Any]] = []
        offset = 0
        for part in self.parts:
            saved = part.state_dict()
            state.update({index + offset: entry for index, entry in saved["state"].items()})
            groups += [{**group, "params": [i + offset for i in group["params"]]} for group in saved["param_groups"]]
            offset += sum(len(group["params"]) for group in part.param_groups)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        if len(saved["param_groups"]) != len(self.param_groups):
            raise ValueError(f"{len(saved['param_groups'])} parameter groups saved, {len(self.param_groups)} here")
        start, offset = 0, 0
        for part in self.parts:
            groups = saved["param_groups"][start:start + len(part.param_groups)]
            count = sum(len(group["params"]) for group in groups)
            part.load_state_dict({
                "state": {i - offset: entry for i, entry in saved["state"].items() if offset <= i < offset + count},
                "param_groups": [{**group, "params": [i - offset for i in group["params"]]} for group in groups],
            })
            start, offset = start + len(groups), offset + count
