"""Muon for the hidden matrices and AdamW for the rest, stepped and checkpointed as one optimizer.

`torch.optim.Muon` takes 2-D matrices only (it orthogonalises each update with Newton-Schulz
steps), so embeddings, heads, norms and biases go to AdamW beside it (as in Keller Jordan's
modded-nanogpt). The loop and the checkpoint code see one optimizer: one list of param_groups
(Muon's, then AdamW's; the loop sets each one's lr) and one state_dict numbered as torch numbers a
single optimizer's parameters, so Muon's momentum buffers are saved and resumed by the same path
as AdamW's moments (checkpoint/training.py).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch


class MuonWithAdamW:
    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW) -> None:
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
