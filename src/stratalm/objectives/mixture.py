"""Weighted sums of objectives: `--objective mlm+simcse:0.1` trains both on every batch, each loss
times its weight (1 when not given).

Each component reads the same windows (cut to its own length) and runs its own forward, and the
trainer back-propagates the components one after another, so memory holds one component's
activations at a time and DDP synchronises gradients once, after the last.
(BERT's `mlm+nsp` and ALBERT's `mlm+sop` are not mixtures: the paper's recipe masks the pair's own
tokens and shares one forward; see pairs.py.)
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import ConfigError
from ..model_config import ModelConfig
from .base import Objective


class Mixture(Objective):
    def __init__(self, components: list[tuple[Objective, float]]) -> None:
        names = [c.name for c, _ in components]
        if len(set(names)) != len(names):
            raise ConfigError(f"objective '{'+'.join(names)}' names a component twice.")
        for component, _ in components:
            if not component.mixable:
                raise ConfigError(f"{component.name} already combines its own losses and cannot be mixed with other objectives.")
        self.components = components
        self.name = "+".join(f"{c.name}:{w:g}" for c, w in components)
        self.extra_tokens = min(c.extra_tokens for c, _ in components)
        self.needs_documents = any(c.needs_documents for c, _ in components)
        self.heads = tuple(dict.fromkeys(h for c, _ in components for h in c.heads))

    def check(self, config: ModelConfig, data) -> None:
        for component, _ in self.components:
            component.check(config, data)

    def prepare(self, windows: torch.Tensor, rng: torch.Generator, documents: Optional[torch.Tensor] = None):
        inputs, targets = {}, {}
        for i, (component, _) in enumerate(self.components):
            width = windows.shape[1] - self.extra_tokens + component.extra_tokens
            part_inputs, part_targets = component.prepare(windows[:, :width], rng, documents)
            inputs.update({f"{i}.{k}": v for k, v in part_inputs.items()})
            targets.update({f"{i}.{k}": v for k, v in part_targets.items()})
        targets["labels"] = targets["0.labels"]  # what the trainer counts: the first component's targets
        return inputs, targets

    def parts(self, inputs, targets):
        out = []
        for i, (component, weight) in enumerate(self.components):
            prefix = f"{i}."
            out.append((component, weight, {k[len(prefix):]: v for k, v in inputs.items() if k.startswith(prefix)},
                        {k[len(prefix):]: v for k, v in targets.items() if k.startswith(prefix)}))
        return out

    def compute(self, model: torch.nn.Module, inputs, targets):
        """The weighted loss and every component's metrics (as `<name>_<metric>`) in one call."""
        total, metrics = 0.0, {}
        for component, weight, part_inputs, part_targets in self.parts(inputs, targets):
            loss, part_metrics = component.compute(model, part_inputs, part_targets)
            total = total + weight * loss
            metrics.update({f"{component.name}_{k}": v for k, v in part_metrics.items()})
        metrics["loss"] = total.detach()
        return total, metrics

    def validation_scores(self, model: torch.nn.Module, batch_size: int = 64) -> dict[str, float]:
        """Every component's whole-split measures, as `<name>_<measure>` like its batch metrics."""
        return {f"{component.name}_{k}": v for component, _ in self.components
                for k, v in component.validation_scores(model, batch_size).items()}

    def loss(self, output, targets):
        raise ConfigError("a mixture of objectives computes its loss per component; call compute().")
