"""Training dynamics seen by the layer lens: every `lens.every` steps of a pretraining run, on the
same validation windows each time, the per-layer logit-lens KL to the final distribution, the mean
attention entropy of each layer's heads, and each layer's linear CKA to itself at the previous
measure (how much the layer's representation moved). The loop calls `observe` (loop/trainer.py);
the numbers go to metrics.jsonl as `lens.kl.<layer>`, `lens.entropy.<layer>`, `lens.cka_prev.<layer>`.

A resumed run starts without a previous measure, so its first CKA after the resume is missing.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..data.tokens import sequential_windows
from ..errors import StratalmError
from .logit_lens import lens_head, lens_points
from .points import named_stacks
from .similarity import linear_cka
from .trace import trace


class LayerDynamics:
    def __init__(self, every: int, windows: int = 8) -> None:
        self.every, self.windows = every, windows
        self.inputs: Optional[dict[str, torch.Tensor]] = None
        self.previous: Optional[list[torch.Tensor]] = None

    def _first_windows(self, loop: Any) -> dict[str, torch.Tensor]:
        recipe = loop.recipe
        window = recipe.model.config.max_seq_len
        batch, _ = next(iter(sequential_windows(recipe.data, "validation", window, window, self.windows, self.windows)))
        return {"input_ids": batch}

    def observe(self, loop: Any) -> dict[str, float]:
        if not self.every or loop.step % self.every:
            return {}
        model = loop.model
        if model.config.stack == "encoder-decoder":
            raise StratalmError("lens.every reads a decoder or encoder stack; T5 runs are not measured yet.")
        if self.inputs is None:
            self.inputs = self._first_windows(loop)
        head = lens_head(model)
        stack = named_stacks(model)[head.prefix]
        streams = lens_points(model, head)
        patterns = [f"{head.prefix}blocks.{i}.attn.pattern" for i in range(len(stack.layer_plan))]
        with loop.autocast():
            captured = trace(model, self.inputs, streams + patterns)
            logits = [head.apply(captured[p]).float() for p in streams]
        final = F.log_softmax(logits[-1], dim=-1)
        record: dict[str, float] = {}
        for depth, layer_logits in enumerate(logits):
            kl = (final.exp() * (final - F.log_softmax(layer_logits, dim=-1))).sum(-1)
            record[f"lens.kl.{depth}"] = round(float(kl.mean()), 5)
        for layer, name in enumerate(patterns):
            p = captured[name].float().clamp_min(1e-12)
            record[f"lens.entropy.{layer}"] = round(float(-(p * p.log()).sum(-1).mean()), 5)
        features = [captured[p].flatten(0, 1).float().cpu() for p in streams]  # (windows x T, d) per depth
        if self.previous is not None:
            for depth, (now, before) in enumerate(zip(features, self.previous)):
                record[f"lens.cka_prev.{depth}"] = round(linear_cka(now, before), 5)
        self.previous = features
        return record
