"""Fine-tuning as a recipe of the one loop (loop/trainer.py): the task's batches -> loss -> AdamW,
evaluated on the dev file, with the best weights kept. Device, torchrun, accumulation, bf16,
compile, the schedule, checkpoints and exact resume are the loop's, as in pretraining.

The output folder DIR holds the best-by-dev weights as a fine-tuned folder (folder.py), run.yaml
(these settings), metrics.jsonl (`stratalm plot DIR` draws it) and DIR/last/, the training
checkpoint `--resume` continues from (weights, AdamW state, RNG, best score so far; a LoRA run's
checkpoint keeps only the weights it trains, as its folder refers to the base). Data order is
a permutation per epoch drawn from the seed, so the step number alone says where the data stands.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Optional

import torch

from ..checkpoint.base_reference import reference_to, weights_from_base
from ..checkpoint.training import FROZEN_FROM_BASE
from ..errors import CheckpointError, ConfigError, DataError
from ..loop.recipe import Part, Recipe, scored_per_row
from ..loop.run_folder import differences
from ..loop.trainer import Loop, run
from ..models.lora import add_lora, merged_copy
from . import task_class
from .common import model_tokenizer, pad_id_of
from .folder import save_finetuned
from .finetune_config import (FINETUNE_LOOP, LORA_LR, LOOP_MAY_CHANGE, MAY_CHANGE, FinetuneConfig,  # noqa: F401 (the API)
                              build_finetune_config, finetune_config_help, finetune_loop)
from .partial import freeze, layer_decay_groups, parameter_counts

LAST = "last"  # DIR/last: the training checkpoint to resume from


def usable_length(config) -> int:
    """The longest input the position table allows: RoBERTa's positions start after the padding
    index, so 514 rows hold 512 tokens."""
    return config.max_seq_len - (config.pad_token_id + 1 if config.padding_positions else 0)


def _check_settings(cfg: FinetuneConfig) -> None:
    if not (cfg.model and cfg.train and cfg.out):
        raise ConfigError("--model, --train and --out are all required.")
    if os.path.abspath(cfg.out) == os.path.abspath(cfg.model):
        raise ConfigError("--out must differ from --model, or the pretrained weights would be overwritten.")
    if cfg.loop.batch_size < 1 or cfg.loop.max_steps < 0 or cfg.epochs <= 0 or cfg.max_length < 2 or cfg.loop.log_every < 1:
        raise ConfigError("--batch-size and --log-every must be at least 1, --epochs positive, --max-steps not negative and --max-length at least 2.")
    if cfg.train_only and cfg.lora_rank:
        raise ConfigError("--train-only head and LoRA exclude each other; LoRA already trains only the adapters and the head.")


class FinetuneRecipe(Recipe):
    kind = "fine-tuning run"
    progress_label = "fine-tuning"
    checkpoint_subdir = LAST
    save_at_evaluation = True  # the best score so far must survive a kill with the weights it kept
    # A task may run the model several times a step (retrieval embeds queries and targets), which
    # DDP's hooks do not allow; the loop averages gradients after backward instead.
    ddp_wrapper = False

    def __init__(self, cfg: FinetuneConfig) -> None:
        _check_settings(cfg)
        self.cfg, self.loop_cfg = cfg, cfg.loop
        self.task = task_class(cfg.task)(cfg.task_options)
        self.lora = cfg.lora()
        self.metric = cfg.best_metric or self.task.main_metric
        self.best, self.best_step, self.best_scores, self.last_scores = -math.inf, -1, {}, {}
        self._order: dict[int, torch.Tensor] = {}

    def setup(self, loop: Loop) -> None:
        cfg, task = self.cfg, self.task
        base = task.load_base(cfg.model, cfg.train)
        task.check_model(base.config)
        tokenizer = model_tokenizer(base)
        self.pad_id = pad_id_of(tokenizer)
        train = task.read(cfg.train)
        if cfg.max_train_examples:
            train = train[:cfg.max_train_examples]
        task.learn(train)
        self.dev = task.read(cfg.dev) if cfg.dev else None
        self.evaluate_at_start = bool(self.dev)
        self.max_length = min(cfg.max_length, usable_length(base.config))
        self.features = task.encode(train, tokenizer, self.max_length)
        self.dev_features = task.encode(self.dev, tokenizer, self.max_length) if self.dev else None
        if not self.features:
            raise DataError(f"'{cfg.train}' gave no training examples.")

        torch.manual_seed(self.loop_cfg.seed)  # the new head (and LoRA's A matrices) depend on the seed only
        self.model, self.head = task.prepare_model(base)
        self.model.tokenizer = tokenizer
        if self.lora is not None:
            add_lora(self.model, self.lora)
            for name, param in self.model.named_parameters():
                if name.split(".")[0] in self.head:
                    param.requires_grad_(True)
        freeze(self.model, self.head, cfg.train_only, cfg.freeze_embeddings, cfg.freeze_layers)
        self._refer_to_base(base)
        self.counts = parameter_counts(self.model)
        if not self.counts["trainable"]:
            raise ConfigError("these options leave no parameter to train; freeze less.")
        if loop.dist.enabled:
            torch.manual_seed(self.loop_cfg.seed + 3 + loop.dist.rank)  # dropout differs between processes
        self.steps_per_epoch = math.ceil(len(self.features) / self.loop_cfg.batch_size)
        self.out = cfg.out

    def _refer_to_base(self, base: torch.nn.Module) -> None:
        """A LoRA run keeps its frozen weights in the base folder, not in its own: the output folder
        refers to the base (unless lora_copy_base), and DIR/last/ keeps only the trainable weights,
        since a resumed run reads the base again in `setup` (checked by its sha256 in `restore`)."""
        self.base_ref, self.from_base = None, frozenset()
        if self.lora is None:
            return
        self.base_ref = reference_to(self.cfg.model)  # None: a base built from a preset, not read from a folder
        if self.base_ref is not None:
            self.from_base = frozenset(weights_from_base(base, self.model))
            setattr(self.model, FROZEN_FROM_BASE, True)

    def total_steps(self) -> int:
        return self.loop_cfg.max_steps or max(1, math.ceil(self.cfg.epochs * self.steps_per_epoch))

    def parameter_groups(self) -> Optional[list[dict]]:
        if self.cfg.layer_decay is None:
            return None
        return layer_decay_groups(self.model, self.loop_cfg.weight_decay, self.cfg.layer_decay)

    def settings(self) -> dict[str, Any]:
        return self.cfg.to_dict()

    def identity(self) -> dict[str, Any]:
        now = {k: v for k, v in self.cfg.to_dict().items() if k not in MAY_CHANGE}
        now["loop"] = {k: v for k, v in now["loop"].items() if k not in LOOP_MAY_CHANGE}
        return now

    def changed_settings(self, saved: dict[str, Any]) -> list[tuple[str, Any, Any]]:
        """The settings that may not change, against the saved run.yaml's, before the data and model
        are loaded: all of them are the config's own (identity() needs nothing built). A section an
        older run.yaml lacks is left to the loop's check after the build, whose error says so."""
        return [(key, old, new) for key, old, new in differences(saved, self.identity()) if key.split(".")[0] in saved]

    # -- batches --------------------------------------------------------------------------------
    def batch_indices(self, step: int) -> torch.Tensor:
        """The examples of `step`: epoch e shuffles with seed + e, so any step can be found again."""
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch not in self._order:
            generator = torch.Generator().manual_seed(self.loop_cfg.seed + epoch)
            self._order = {epoch: torch.randperm(len(self.features), generator=generator)}
        start = position * self.loop_cfg.batch_size
        return self._order[epoch][start:start + self.loop_cfg.batch_size]

    def micro_batch(self, step: int, index: int, count: int) -> list[Part]:
        chosen = torch.tensor_split(self.batch_indices(step), count)[index].tolist()
        batch = self.task.collate([self.features[i] for i in chosen], self.pad_id)
        # A token-level loss (tagging, seq2seq) is a mean over its scored tokens; others over rows.
        scored = scored_per_row(batch["labels"]) if "labels" in batch else torch.ones(len(chosen), dtype=torch.long)
        return [Part(batch, {}, self._loss, scored)]

    def _loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.task.loss(model, inputs)

    # -- evaluation -----------------------------------------------------------------------------
    def should_evaluate(self, step: int, total: int, eval_every: int) -> bool:
        if not self.dev:
            return False
        end_of_epoch = step % self.steps_per_epoch == 0
        return step == total or (eval_every > 0 and step % eval_every == 0) or (not eval_every and end_of_epoch)

    def dev_scores(self, loop: Loop) -> dict[str, float]:
        """The task's metrics on the dev file, and the mean dev loss."""
        total, count, size = 0.0, 0, self.loop_cfg.eval_batch_size
        with loop.autocast():
            for start in range(0, len(self.dev_features), size):
                chunk = self.dev_features[start:start + size]
                batch = {k: v.to(loop.device) for k, v in self.task.collate(chunk, self.pad_id).items()}
                total += float(self.task.loss(loop.model, batch)) * len(chunk)
                count += len(chunk)
            predictions = self.task.predict(loop.model, self.dev, self.max_length, size)
        scores = {"loss": total / max(count, 1), **self.task.score(self.dev, predictions)}
        if self.metric not in scores:
            raise ConfigError(f"the {self.task.name} task reports no dev metric '{self.metric}'; choose --best-metric "
                              f"from {', '.join(k for k in scores if k != 'loss')}.")
        return scores

    def evaluate(self, loop: Loop) -> tuple[dict[str, Any], str]:
        if not loop.dist.is_main:
            return {}, ""  # the dev set is scored once, by the process that writes the folder
        scores = self.last_scores = self.dev_scores(loop)
        improved = scores[self.metric] > self.best
        if improved:
            self.best, self.best_step, self.best_scores = scores[self.metric], loop.step, scores
            self.save_best(loop.step, scores)
        line = "dev " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()) + (" (best so far)" if improved else "")
        return {f"val_{k}": v for k, v in scores.items()}, line

    def save_best(self, step: int, scores: dict[str, float]) -> None:
        info = {"max_length": self.max_length, "lr": self.loop_cfg.lr, "metric": self.metric, "best_step": step,
                "dev": scores, "parameters": self.counts, "base_model": self.cfg.model,
                "lora": dataclasses.asdict(self.lora) if self.lora else None, "lora_merged": bool(self.lora and self.cfg.merge_lora)}
        if self.lora is not None and self.cfg.merge_lora:
            save_finetuned(self.out, merged_copy(self.model), self.task, info)
        elif self.base_ref is not None and not self.cfg.lora_copy_base:
            save_finetuned(self.out, self.model, self.task, info, self.lora, self.base_ref, self.from_base)
        else:
            save_finetuned(self.out, self.model, self.task, info, self.lora)

    # -- state and reporting ----------------------------------------------------------------------
    def state(self, step: int) -> dict[str, Any]:
        return {"examples_seen": step * self.loop_cfg.batch_size, "best": self.best, "best_step": self.best_step,
                "best_scores": self.best_scores, "metric": self.metric,
                **({"base_sha256": self.base_ref.sha256} if self.base_ref else {})}

    def restore(self, state: dict[str, Any], rngs: dict[str, torch.Tensor]) -> None:
        if self.base_ref and state.get("base_sha256", self.base_ref.sha256) != self.base_ref.sha256:
            raise CheckpointError(f"the base model '{self.base_ref.path}' changed since this LoRA run started (its weights' "
                                  f"sha256 differs), so its checkpoint no longer applies; restore the base, or start "
                                  f"again with --overwrite.")
        self.best_step, self.best = int(state["best_step"]), float(state["best"])
        self.best_scores = state.get("best_scores", {})

    def start_records(self) -> list[dict[str, Any]]:
        return [{"step": 0, "trainable_parameters": self.counts["trainable"], "total_parameters": self.counts["total"]}]

    def throughput(self, steps: int, seconds: float) -> dict[str, float]:
        return {"examples_per_s": round(self.loop_cfg.batch_size * steps / seconds, 1)}

    def describe(self, loop: Loop) -> str:
        counts = self.counts
        return (f"{self.task.name}: {len(self.features):,} training features, {loop.total_steps:,} steps of "
                f"{self.loop_cfg.batch_size} on {loop.device}" + (f" x {loop.dist.world_size} processes" if loop.dist.enabled else "")
                + f"; trainable parameters {counts['trainable']:,} of {counts['total']:,} "
                f"({100 * counts['trainable'] / counts['total']:.2f}%); lr {self.loop_cfg.lr:g}" + self._lr_note())

    def _lr_note(self) -> str:
        """Why a LoRA run has its lr, or a warning: at full fine-tuning's rates the adapters barely move."""
        if not self.lora:
            return ""
        if self.loop_cfg.lr == LORA_LR:
            return " (LoRA's default; --lr sets another)"
        if self.loop_cfg.lr <= LORA_LR / 10:
            return f" (low for LoRA: a short run may stay at chance; LoRA's default is {LORA_LR:g})"
        return ""

    def finish(self, loop: Loop) -> dict[str, Any]:
        if not self.dev and loop.dist.is_main:
            self.best_step = loop.step
            self.save_best(loop.step, {})  # no dev file: the last weights are the ones kept
        loop.dist.barrier()
        loop.say(f"kept the weights of step {self.best_step}" + (f" (dev {self.metric} {self.best:.4f})" if self.dev else "")
                 + f" in {self.out}")
        return {"metric": self.metric, "best_step": self.best_step, "best": self.best_scores, "last": self.last_scores,
                "steps": loop.step, "seconds": round(time.perf_counter() - loop.started, 2), "train_s": round(loop.train_seconds, 2),
                "trainable_parameters": self.counts["trainable"], "total_parameters": self.counts["total"]}


def finetune(cfg: FinetuneConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune as `cfg` says; returns the best dev score, its step, the last dev scores, timing
    and parameter counts."""
    return run(FinetuneRecipe(cfg), cfg.loop, cfg.out, resume, overwrite)


def finetuning_loop(cfg: FinetuneConfig, resume: bool = False, overwrite: bool = False) -> Loop:
    """The loop of a fine-tuning run, built and ready to `fit()` (then `close()`)."""
    return Loop(FinetuneRecipe(cfg), cfg.loop, cfg.out, resume, overwrite)
