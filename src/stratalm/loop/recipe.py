"""What a run plugs into the one loop (trainer.py): a recipe.

The loop owns the device, processes, precision, optimizer, schedule, cadence, checkpoints and the
random generators it knows of; a recipe says what is trained and on what:

    setup(loop)            build data and model (`self.model`); runs before the folder is touched
    total_steps()          optimizer steps of the run
    micro_batch(step, m, n) the Parts of micro-batch m of n in `step` (every process's rows)
    evaluate(loop)         (record for metrics.jsonl, console line); may keep the best weights
    settings() / identity() what run.yaml records / what a resumed run must share with it
    changed_settings(saved) settings given otherwise than run.yaml's that may not change (before setup)
    state(step) / rng_states() / restore(state, rngs)   the recipe's own part of a checkpoint
    finish(loop)           the run's result (after the last step)
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

# Methods receive the running loop (trainer.Loop: its device, processes, model, step, autocast);
# it is not imported here, since the loop imports this module.
Loop = Any


@dataclass
class Part:
    """One loss of a micro-batch. Tensors hold the rows of every process (rows first); the loop
    keeps this process's rows, moves them to the device and calls `compute(model, inputs,
    targets)`, which returns the mean loss over the scored targets of the rows it is given.
    `scored` (one count per row) weighs that mean against the other rows, processes and
    micro-batches of the step; parts with the same `key` (one objective of a mixture) are weighed
    together, each scaled by `weight`."""

    inputs: dict[str, torch.Tensor]
    targets: dict[str, torch.Tensor]
    compute: Callable[[nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor]], torch.Tensor]
    scored: torch.Tensor
    weight: float = 1.0
    key: str = ""


def scored_per_row(labels: torch.Tensor, ignore: int = -100) -> torch.Tensor:
    """How many targets of each row count in the loss: labels other than `ignore`."""
    return (labels != ignore).reshape(labels.shape[0], -1).sum(dim=1)


class Recipe(ABC):
    kind: str = "stratalm run"          # named in errors about the output folder
    progress_label: str = "training"
    checkpoint_subdir: str = ""         # where the resume checkpoint lives inside OUT ("": OUT itself)
    save_at_evaluation: bool = False    # checkpoint at every evaluation (the best-so-far must survive a kill)
    evaluate_at_start: bool = False
    ddp_wrapper: bool = True            # False: gradients are averaged by hand after backward
    shardable: bool = False             # may run under train.parallel=fsdp (its evaluation and results read no weights by hand)
    model: nn.Module
    last_loss: Optional[float] = None   # the loop's latest logged training loss

    @abstractmethod
    def setup(self, loop: Loop) -> None:
        """Read data and build `self.model` (on the CPU); called once, before the folder is touched."""

    @abstractmethod
    def total_steps(self) -> int: ...

    def parameter_groups(self) -> Optional[list[dict]]:
        """AdamW groups (each may carry `lr_scale`), or None for decay on matrices only."""
        return None

    @abstractmethod
    def micro_batch(self, step: int, index: int, count: int) -> list[Part]: ...

    @abstractmethod
    def evaluate(self, loop: Loop) -> tuple[dict[str, Any], str]: ...

    def should_evaluate(self, step: int, total: int, eval_every: int) -> bool:
        return step == total or bool(eval_every and step % eval_every == 0)

    @abstractmethod
    def settings(self) -> dict[str, Any]: ...

    @abstractmethod
    def identity(self) -> dict[str, Any]: ...

    def changed_settings(self, saved: dict[str, Any]) -> list[tuple[str, Any, Any]]:
        """(key, saved value, value now) for each setting of a resumed run that differs from the saved
        run.yaml's (`saved`) and may not change, found before `setup` builds anything (identity(),
        which may need the built model, is compared after it)."""
        return []

    def state(self, step: int) -> dict[str, Any]:
        return {}

    def rng_states(self) -> dict[str, torch.Tensor]:
        return {}

    def restore(self, state: dict[str, Any], rngs: dict[str, torch.Tensor]) -> None:
        pass

    def start_records(self) -> list[dict[str, Any]]:
        return []

    @abstractmethod
    def throughput(self, steps: int, seconds: float) -> dict[str, float]: ...

    @abstractmethod
    def describe(self, loop: Loop) -> str: ...

    @abstractmethod
    def finish(self, loop: Loop) -> dict[str, Any]: ...
