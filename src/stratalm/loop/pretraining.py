"""Pretraining as a recipe of the one loop: random windows of a prepared folder -> an objective
(clm, mlm, nsp, sop, rtd, span, simcse or a mixture) -> the model; validation is the objective's
loss and metrics over the validation split. The run's settings are a `RunConfig` (run_config.py).
"""
from __future__ import annotations

import math
import os
from typing import Any, Optional

import torch

from ..checkpoint import load as load_checkpoint
from ..checkpoint.native import check_tokenizer
from ..data.tokens import RandomWindows, TokenData, sequential_windows
from ..errors import ConfigError
from ..families import preset
from ..models import build_model as model_from_config
from ..models.anatomy import HEAD_NAMES
from ..objectives import get_objective
from ..tokenize import Tokenizer
from .recipe import Part, Recipe, scored_per_row
from .run_config import (PRETRAINING_RUN, RunConfig, build_run_config, config_help,  # noqa: F401 (the pretraining API)
                         resume_conflicts, run_values)
from .trainer import Loop, run as run_loop


def build_model(run: RunConfig, data: TokenData, tokenizer: Tokenizer) -> torch.nn.Module:
    """A fresh model from a preset, or the weights of a checkpoint folder to continue from."""
    source = run.model_source
    if os.path.isdir(source):
        model = load_checkpoint(source)
        if run.model_overrides():
            raise ConfigError("model fields cannot be overridden when starting from a checkpoint folder.")
    else:
        overrides = run.model_overrides()
        overrides.setdefault("vocab_size", data.vocab_size)
        model = model_from_config(preset(source, **overrides))
    model.tokenizer = tokenizer
    check_tokenizer(model.tokenizer, model.config, run.data)
    return model


# Heads an objective may leave idle; a decoder's LM head is what every decoder objective trains.
OPTIONAL_HEADS = tuple(name for name in HEAD_NAMES if name != "lm_head")


def freeze_unused_heads(model: torch.nn.Module, used: tuple[str, ...]) -> None:
    """Heads the objective does not train (mlm leaves BERT's pooler and next-sentence head idle)
    keep their weights and get no gradient, so the optimizer and DDP leave them alone. A tensor
    tied to a trained part (the MLM decoder is the embedding) stays trainable. `model` may hold
    several encoders (ELECTRA's generator and discriminator)."""
    owners = [m for m in model.modules() if any(hasattr(m, name) for name in OPTIONAL_HEADS)]
    idle = [getattr(m, name) for m in owners for name in OPTIONAL_HEADS
            if name not in used and getattr(m, name, None) is not None]
    idle_ids = {id(p) for module in idle for p in module.parameters()}
    trained = {id(p) for name, p in model.named_parameters() if id(p) not in idle_ids}
    for module in idle:
        for param in module.parameters():
            if id(param) not in trained:
                param.requires_grad_(False)


def describe_scores(scores: dict[str, float]) -> str:
    """One line for the console: the validation loss, perplexity where the loss is a token
    cross-entropy, and the objective's own metrics (an MLM run's masked accuracy, ...)."""
    shown = [f"validation loss {scores['val_loss']:.4f}"]
    if "val_perplexity" in scores:
        shown.append(f"perplexity {scores['val_perplexity']:.2f}")
    shown += [f"{k[4:]} {v:.4f}" for k, v in scores.items()
              if k.endswith(("accuracy", "recall", "cosine", "alignment", "uniformity", "spearman"))]
    return ", ".join(shown)


def loss_of(objective):
    """The objective's loss alone (its metrics are for evaluation and the log)."""
    return lambda model, inputs, targets: objective.compute(model, inputs, targets)[0]


class PretrainRecipe(Recipe):
    kind = PRETRAINING_RUN
    shardable = True

    def __init__(self, run: RunConfig) -> None:
        if not run.data or not run.out:
            raise ConfigError("both --data (a prepared folder) and --out (the run folder) are required.")
        if run.train.max_steps < 1:
            raise ConfigError("train.batch_size, train.grad_accum and train.max_steps must be at least 1.")
        self.run, self.cfg = run, run.train
        self.result: dict[str, float] = {}

    def setup(self, loop: Loop) -> None:
        run, cfg = self.run, self.cfg
        self.data = TokenData(run.data)
        tokenizer = self.data.tokenizer()
        self.objective = get_objective(run.objective, tokenizer, run)
        torch.manual_seed(cfg.seed)  # the initial weights depend on the seed only
        model = build_model(run, self.data, tokenizer)
        self.objective.check(model.config, self.data)
        self.model = self.objective.wrap(model)
        self.window = self.model.config.max_seq_len + self.objective.extra_tokens
        self.micro_size = cfg.batch_size // cfg.grad_accum  # sequences per micro-step, all processes
        self.sampler = RandomWindows(self.data, "train", self.window, cfg.seed + 1)
        self.objective_rng = torch.Generator().manual_seed(cfg.seed + 2)
        torch.manual_seed(cfg.seed + 3 + loop.dist.rank)  # dropout differs between processes
        freeze_unused_heads(self.model, self.objective.heads)
        self.model_dict = self.model.config.to_dict()

    def total_steps(self) -> int:
        return self.cfg.max_steps

    def settings(self) -> dict[str, Any]:
        return {**self.run.to_dict(), "resolved_model": self.model_dict}

    def identity(self) -> dict[str, Any]:
        return {"resolved_model": self.model_dict}

    def changed_settings(self, saved: dict[str, Any]) -> list[tuple[str, Any, Any]]:
        """Every setting of the run against the saved one (the schedule and cadence may change): the
        one check, whether the run came from the command line's --resume or the Python API."""
        return resume_conflicts(run_values(saved), self.run.to_dict(), saved.get("resolved_model") or {})

    # -- batches --------------------------------------------------------------------------------
    def micro_batch(self, step: int, index: int, count: int) -> list[Part]:
        # Every process prepares the whole micro-batch (masks, pairs, spans) and keeps its rows.
        windows, offsets = self.sampler.next_batch(self.micro_size)
        inputs, targets = self.objective.prepare(windows, self.objective_rng, self._documents(offsets))
        return [Part(inputs, targets, loss_of(objective), scored_per_row(targets["labels"]), weight, key=str(i))
                for i, (objective, weight, inputs, targets) in enumerate(self.objective.parts(inputs, targets))]

    def _documents(self, offsets: torch.Tensor) -> Optional[torch.Tensor]:
        """The document of each window's first token, for objectives that pair segments across documents."""
        return self.data.document_of(offsets) if self.objective.needs_documents else None

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(self, loop: Loop) -> tuple[dict[str, Any], str]:
        """Mean loss and metrics over every predicted token of the validation split (or
        eval_windows of it), summed over processes."""
        names: list[str] = []
        totals = torch.zeros(32, dtype=torch.float64, device=loop.device)  # count, then each metric's weighted sum
        rng = torch.Generator().manual_seed(0)  # the same masks at every evaluation
        stride = self.window - self.objective.overlap
        for windows, offsets in sequential_windows(self.data, "validation", self.window, stride, self.cfg.eval_batch_size,
                                                   self.cfg.eval_windows or None, loop.dist.rank, loop.dist.world_size,
                                                   interleave=self.objective.needs_documents):
            inputs, targets = self.objective.prepare(windows, rng, self._documents(offsets))
            inputs = {k: v.to(loop.device) for k, v in inputs.items()}
            targets = {k: v.to(loop.device) for k, v in targets.items()}
            with loop.autocast():
                _, metrics = self.objective.compute(loop.model, inputs, targets)
            names = sorted(metrics)[:len(totals) - 1]
            count = int((targets["labels"] != -100).sum())  # metrics are means over the scored tokens
            totals[0] += count
            totals[1:1 + len(names)] += torch.tensor([float(metrics[n]) * count for n in names], dtype=torch.float64)
        totals = loop.dist.sum(totals)
        if totals[0] == 0:
            return {}, ""
        scores = {f"val_{name}": float(totals[1 + i] / totals[0]) for i, name in enumerate(names)}
        # Whole-split measures (SimCSE's Spearman on a scored pairs file), on every process alike.
        with loop.autocast():
            extra = self.objective.validation_scores(loop.model, self.cfg.eval_batch_size)
        scores.update({f"val_{k}": v for k, v in extra.items()})
        if self.objective.reports_perplexity:  # the loss is a mean token cross-entropy
            scores["val_perplexity"] = math.exp(min(scores["val_loss"], 50.0))
        self.result.update(scores)
        return scores, describe_scores(scores)

    # -- state and reporting ----------------------------------------------------------------------
    def state(self, step: int) -> dict[str, Any]:
        return {"tokens_seen": step * self.cfg.batch_size * self.model.config.max_seq_len,
                "data_position": {"sampler": "random_windows", "batches_drawn": step * self.cfg.grad_accum}}

    def rng_states(self) -> dict[str, torch.Tensor]:
        return {"sampler": self.sampler.generator.get_state(), "objective": self.objective_rng.get_state()}

    def restore(self, state: dict[str, Any], rngs: dict[str, torch.Tensor]) -> None:
        self.sampler.generator.set_state(rngs["sampler"])
        self.objective_rng.set_state(rngs["objective"])

    def throughput(self, steps: int, seconds: float) -> dict[str, float]:
        return {"tokens_per_s": round(self.cfg.batch_size * self.model.config.max_seq_len * steps / seconds, 1)}

    def describe(self, loop: Loop) -> str:
        counts = self.model.parameter_counts()
        return (f"model: {self.run.model_source}, {counts['total'] / 1e6:.2f}M parameters "
                f"({counts['non_embedding'] / 1e6:.2f}M without embeddings) on {loop.device}"
                + (f", {loop.dist.world_size} processes" if loop.dist.enabled else ""))

    def finish(self, loop: Loop) -> dict[str, Any]:
        if self.last_loss is not None:
            self.result["loss"] = self.last_loss
        return self.result


def pretraining_loop(run: RunConfig, resume: bool = False, overwrite: bool = False, observers=()) -> Loop:
    """The loop of a pretraining run, built and ready to `fit()` (then `close()`)."""
    return Loop(PretrainRecipe(run), run.train, run.out, resume, overwrite, observers)


def pretrain(run: RunConfig, resume: bool = False, overwrite: bool = False, observers=()) -> dict[str, float]:
    """Train as `run` says; returns the final metrics (loss, val_loss, val_perplexity). `observers`
    measure the model as it trains (stratalm.lens.dynamics.LayerDynamics for `lens.every`)."""
    return run_loop(PretrainRecipe(run), run.train, run.out, resume, overwrite, observers)
