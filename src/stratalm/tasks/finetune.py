"""The fine-tuning loop: the task's batches -> loss -> AdamW, evaluated on the dev file, with the
best weights kept and exact resume — the optimizer, schedule, checkpoints and metrics log of
pretraining (train/optim.py, train/state.py, train/run_folder.py).

The output folder DIR holds the best-by-dev weights as a fine-tuned folder (folder.py), run.yaml
(these settings), metrics.jsonl (`stratalm plot DIR` draws it) and DIR/last/, the training
checkpoint `--resume` continues from (weights, AdamW state, RNG, best score so far). Data order is
a permutation per epoch drawn from the seed, so the step number alone says where the data stands.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch
import yaml
from tqdm import tqdm

from ..config_fields import setting
from ..errors import ConfigError, DataError, OutputExistsError
from ..io import PENDING, recover
from ..train.config import TrainConfig
from ..train.distributed import Distributed
from ..train.optim import learning_rate, make_optimizer
from ..train.run_folder import METRICS, RUN_CONFIG, MetricsLog, folder_to_continue
from ..train.state import decode_rng, encode_rng, has_checkpoint, load_training_checkpoint, save_training_checkpoint
from ..train.trainer import resolve_device
from . import task_class
from .base import model_tokenizer
from .folder import TASK_FILE, save_finetuned
from .lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoraConfig, add_lora, merged_copy
from .partial import freeze, layer_decay_groups, parameter_counts

LAST = "last"  # DIR/last: the training checkpoint to resume from
OUTPUT_FILES = (RUN_CONFIG, METRICS, TASK_FILE, "config.json", "model.safetensors", "tokenizer.json",
                ADAPTER_WEIGHTS, ADAPTER_CONFIG, LAST, PENDING)
# Settings a resumed run may change; every other one must match the saved run.
MAY_CHANGE = ("epochs", "max_steps", "eval_every", "save_every", "log_every", "eval_batch_size", "device", "progress")


@dataclass(frozen=True)
class FinetuneConfig:
    task: str = setting("classification", "the task (stratalm.tasks.task_names())")
    model: str = setting("", "pretrained model folder (stratalm or Hugging Face), or for seq2seq a preset name with tokenizer_from_train")
    train: str = setting("", "training data file")
    dev: Optional[str] = setting(None, "dev data file: evaluated every eval_every steps; its best score picks the weights kept")
    out: str = setting("", "output folder")
    task_options: dict = setting({}, "the task's own options (see its OPTIONS)")
    epochs: float = setting(3.0, "passes over the training data (fractions allowed)")
    max_steps: int = setting(0, "optimizer steps (0 = as many as `epochs` takes)")
    batch_size: int = setting(32, "examples per optimizer step")
    lr: float = setting(5e-5, "peak learning rate")
    warmup: float = setting(0.1, "warmup: a fraction of the steps if below 1, else a number of steps")
    weight_decay: float = setting(0.01, "AdamW weight decay on matrices")
    grad_clip: float = setting(1.0, "clip the gradient norm to this (0 = off)")
    max_length: int = setting(128, "tokens per input (longer inputs are truncated; at most the model's context)")
    max_train_examples: int = setting(0, "use only the first N training examples (0 = all)")
    seed: int = setting(42, "seed of the head's initialisation, data order and dropout")
    eval_every: int = setting(0, "steps between dev evaluations (0 = at the end of each epoch)")
    save_every: int = setting(0, "steps between resume checkpoints besides those at each evaluation (0 = none)")
    log_every: int = setting(10, "steps between training-loss lines of metrics.jsonl")
    eval_batch_size: int = setting(64, "examples per evaluation batch")
    best_metric: Optional[str] = setting(None, "dev metric that picks the weights kept (None = the task's main metric)")
    device: str = setting("auto", "cpu, cuda, cuda:N or auto")
    train_only: Optional[str] = setting(None, "'head': train only the task head")
    freeze_embeddings: bool = setting(False, "keep the embeddings fixed")
    freeze_layers: int = setting(0, "keep the lowest N blocks fixed")
    layer_decay: Optional[float] = setting(None, "layer-wise learning-rate decay factor (head lr, top block lr*F, ...)")
    lora_rank: int = setting(0, "LoRA rank (0 = no LoRA: full fine-tuning)")
    lora_alpha: float = setting(16.0, "LoRA alpha (the update is scaled by alpha / rank)")
    lora_dropout: float = setting(0.0, "dropout on the LoRA branch's input")
    lora_targets: str = setting("q,v", "comma-separated projections to adapt: q,k,v,o,gate,up,down")
    merge_lora: bool = setting(False, "save the LoRA adapters merged into the weights")
    progress: bool = setting(True, "show a progress bar")

    def lora(self) -> Optional[LoraConfig]:
        if not self.lora_rank:
            return None
        return LoraConfig(self.lora_rank, self.lora_alpha, self.lora_dropout, LoraConfig.parse_targets(self.lora_targets))


def usable_length(config) -> int:
    """The longest input the position table allows: RoBERTa's positions start after the padding
    index, so 514 rows hold 512 tokens."""
    return config.max_seq_len - (config.pad_token_id + 1 if config.padding_positions else 0)


def _check_settings(cfg: FinetuneConfig) -> None:
    if not (cfg.model and cfg.train and cfg.out):
        raise ConfigError("--model, --train and --out are all required.")
    if os.path.abspath(cfg.out) == os.path.abspath(cfg.model):
        raise ConfigError("--out must differ from --model, or the pretrained weights would be overwritten.")
    if cfg.batch_size < 1 or cfg.max_steps < 0 or cfg.epochs <= 0 or cfg.max_length < 2 or cfg.log_every < 1:
        raise ConfigError("--batch-size and --log-every must be at least 1, --epochs positive, --max-steps not negative and --max-length at least 2.")
    if cfg.train_only and cfg.lora_rank:
        raise ConfigError("--train-only head and LoRA exclude each other; LoRA already trains only the adapters and the head.")


def _check_out_folder(cfg: FinetuneConfig, resume: bool, overwrite: bool) -> bool:
    """Decide what to do with DIR before anything is written; True = resume from DIR/last."""
    out = cfg.out
    if not folder_to_continue(out, resume, overwrite, "fine-tuning run"):
        return False
    with open(os.path.join(out, RUN_CONFIG)) as handle:
        saved = yaml.safe_load(handle) or {}
    now = dataclasses.asdict(cfg)
    changed = sorted(k for k in now if k not in MAY_CHANGE and saved.get(k) != now[k])
    if changed:
        key = changed[0]
        raise OutputExistsError(f"'{out}' holds a run with {key} = {saved.get(key)!r}, not {now[key]!r}; resume with "
                                f"the same settings, or pass --overwrite.")
    last = os.path.join(out, LAST)
    if os.path.isdir(last):
        recover(last)
    return has_checkpoint(last)


class FineTuner:
    def __init__(self, cfg: FinetuneConfig, resume: bool = False, overwrite: bool = False) -> None:
        _check_settings(cfg)
        self.cfg = cfg
        self.task = task_class(cfg.task)(cfg.task_options)
        self.resuming = _check_out_folder(cfg, resume, overwrite)
        self.lora = cfg.lora()

        # Everything that can fail on user input happens before the output folder is touched.
        base = self.task.load_base(cfg.model, cfg.train)
        self.task.check_model(base.config)
        tokenizer = model_tokenizer(base)
        train = self.task.read(cfg.train)
        if cfg.max_train_examples:
            train = train[:cfg.max_train_examples]
        self.task.learn(train)
        self.dev = self.task.read(cfg.dev) if cfg.dev else None
        self.max_length = min(cfg.max_length, usable_length(base.config))
        self.features = self.task.encode(train, tokenizer, self.max_length)
        self.dev_features = self.task.encode(self.dev, tokenizer, self.max_length) if self.dev else None
        if not self.features:
            raise DataError(f"'{cfg.train}' gave no training examples.")

        torch.manual_seed(cfg.seed)  # the new head (and LoRA's A matrices) depend on the seed only
        self.model, self.head = self.task.prepare_model(base)
        self.model.tokenizer = tokenizer
        if self.lora is not None:
            add_lora(self.model, self.lora)
            for name, param in self.model.named_parameters():
                if name.split(".")[0] in self.head:
                    param.requires_grad_(True)
        freeze(self.model, self.head, cfg.train_only, cfg.freeze_embeddings, cfg.freeze_layers)
        self.counts = parameter_counts(self.model)
        if not self.counts["trainable"]:
            raise ConfigError("these options leave no parameter to train; freeze less.")
        self.device = resolve_device(cfg.device, Distributed())
        self.model.to(self.device)

        self.steps_per_epoch = math.ceil(len(self.features) / cfg.batch_size)
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        warmup = int(cfg.warmup * self.total_steps) if cfg.warmup < 1 else int(cfg.warmup)
        # The pretraining schedule with the fine-tuning recipe: warmup, then cosine decay to 0.
        self.schedule = TrainConfig(max_steps=self.total_steps, batch_size=cfg.batch_size, lr=cfg.lr, min_lr=0.0,
                                    warmup_steps=warmup, weight_decay=cfg.weight_decay, beta2=0.999,
                                    grad_clip=cfg.grad_clip, seed=cfg.seed, device=str(self.device))
        if cfg.layer_decay is not None:
            groups = layer_decay_groups(self.model, cfg.weight_decay, cfg.layer_decay)
            self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8,
                                               fused=self.device.type in ("cpu", "cuda"))
        else:
            self.optimizer = make_optimizer(self.model, self.schedule, self.device)

        self.metric = cfg.best_metric or self.task.main_metric
        self.step, self.best, self.best_step, self.best_scores = 0, -math.inf, -1, {}
        self.last = os.path.join(cfg.out, LAST)
        self.metrics = MetricsLog(cfg.out, True)
        if self.resuming:
            self._restore(load_training_checkpoint(self.last, self.model, self.optimizer))
            self.metrics.truncate_after(self.step)
        else:
            self._start_folder()
        self._order: dict[int, torch.Tensor] = {}

    # -- folder and state --------------------------------------------------------------------
    def _start_folder(self) -> None:
        os.makedirs(self.cfg.out, exist_ok=True)
        for name in OUTPUT_FILES:  # only files a fine-tuning run writes; the user's own files stay
            path = os.path.join(self.cfg.out, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
        with open(os.path.join(self.cfg.out, RUN_CONFIG), "w") as handle:
            yaml.safe_dump(dataclasses.asdict(self.cfg), handle, sort_keys=False)
        self.metrics.write({"step": 0, "trainable_parameters": self.counts["trainable"],
                            "total_parameters": self.counts["total"]})

    def _state(self) -> dict[str, Any]:
        rng = {"torch": encode_rng(torch.get_rng_state())}
        if self.device.type == "cuda":
            rng["cuda"] = encode_rng(torch.cuda.get_rng_state(self.device))
        return {"step": self.step, "examples_seen": self.step * self.cfg.batch_size, "best": self.best,
                "best_step": self.best_step, "best_scores": self.best_scores, "metric": self.metric, "rng": rng}

    def _restore(self, state: dict[str, Any]) -> None:
        self.step, self.best_step = int(state["step"]), int(state["best_step"])
        self.best, self.best_scores = float(state["best"]), state.get("best_scores", {})
        torch.set_rng_state(decode_rng(state["rng"]["torch"]))
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(decode_rng(state["rng"]["cuda"]), self.device)

    def save_checkpoint(self) -> None:
        save_training_checkpoint(self.last, self.model, self.optimizer, self._state())

    def save_best(self, scores: dict[str, float]) -> None:
        info = {"max_length": self.max_length, "metric": self.metric, "best_step": self.step, "dev": scores,
                "parameters": self.counts, "base_model": self.cfg.model,
                "lora": dataclasses.asdict(self.lora) if self.lora else None, "lora_merged": bool(self.lora and self.cfg.merge_lora)}
        if self.lora is not None and self.cfg.merge_lora:
            save_finetuned(self.cfg.out, merged_copy(self.model), self.task, info)
        else:
            save_finetuned(self.cfg.out, self.model, self.task, info, self.lora)

    # -- loop ----------------------------------------------------------------------------------
    def batch_indices(self, step: int) -> torch.Tensor:
        """The examples of `step`: epoch e shuffles with seed + e, so any step can be found again."""
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch not in self._order:
            self._order = {epoch: torch.randperm(len(self.features), generator=torch.Generator().manual_seed(self.cfg.seed + epoch))}
        start = position * self.cfg.batch_size
        return self._order[epoch][start:start + self.cfg.batch_size]

    def train_step(self) -> float:
        lr = learning_rate(self.step, self.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        batch = self.task.collate([self.features[i] for i in self.batch_indices(self.step).tolist()])
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        loss = self.task.loss(self.model, batch)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return float(loss.detach())

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The task's metrics on the dev file, and the mean dev loss."""
        self.model.eval()
        try:
            total, count = 0.0, 0
            for start in range(0, len(self.dev_features), self.cfg.eval_batch_size):
                chunk = self.dev_features[start:start + self.cfg.eval_batch_size]
                batch = {k: v.to(self.device) for k, v in self.task.collate(chunk).items()}
                total += float(self.task.loss(self.model, batch)) * len(chunk)
                count += len(chunk)
            predictions = self.task.predict(self.model, self.dev, self.max_length, self.cfg.eval_batch_size)
            scores = {"loss": total / max(count, 1), **self.task.score(self.dev, predictions)}
        finally:
            self.model.train()
        if self.metric not in scores:
            raise ConfigError(f"the {self.task.name} task reports no dev metric '{self.metric}'; choose --best-metric "
                              f"from {', '.join(k for k in scores if k != 'loss')}.")
        return scores

    def _evaluate_and_keep(self, say) -> dict[str, float]:
        scores = self.evaluate()
        self.metrics.write({"step": self.step, **{f"val_{k}": v for k, v in scores.items()}})
        improved = scores[self.metric] > self.best
        say(f"step {self.step}: dev " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
            + (" (best so far)" if improved else ""))
        if improved:
            self.best, self.best_step, self.best_scores = scores[self.metric], self.step, scores
            self.save_best(scores)
        return scores

    def fit(self) -> dict[str, Any]:
        cfg, say = self.cfg, tqdm.write
        counts = self.counts
        say(f"{self.task.name}: {len(self.features):,} training features, {self.total_steps:,} steps of {cfg.batch_size} "
            f"on {self.device}; trainable parameters {counts['trainable']:,} of {counts['total']:,} "
            f"({100 * counts['trainable'] / counts['total']:.2f}%)")
        if self.resuming:
            say(f"resuming from step {self.step} in {cfg.out}")
        started = time.perf_counter()
        scores: dict[str, float] = {}
        if self.dev and self.step == 0:
            scores = self._evaluate_and_keep(say)  # the starting point of the dev curves
        bar = tqdm(total=self.total_steps, initial=self.step, desc="fine-tuning", unit="step",
                   disable=not cfg.progress, dynamic_ncols=True)
        self.model.train()
        window, window_steps, window_time = 0.0, 0, 0.0
        while self.step < self.total_steps:
            tick = time.perf_counter()
            window += self.train_step()
            window_time += time.perf_counter() - tick
            window_steps += 1
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                record = {"step": self.step, "loss": window / window_steps, "lr": learning_rate(self.step - 1, self.schedule),
                          "examples_per_s": round(cfg.batch_size * window_steps / max(window_time, 1e-9), 1)}
                self.metrics.write(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                window, window_steps, window_time = 0.0, 0, 0.0
            end_of_epoch = self.step % self.steps_per_epoch == 0
            evaluate = self.step == self.total_steps or (cfg.eval_every and self.step % cfg.eval_every == 0) \
                or (not cfg.eval_every and end_of_epoch)
            if self.dev and evaluate:
                scores = self._evaluate_and_keep(say)
            if evaluate or (cfg.save_every and self.step % cfg.save_every == 0):
                self.save_checkpoint()
        bar.close()
        if not self.dev:
            self.best_step = self.step
            self.save_best({})  # no dev file: the last weights are the ones kept
        say(f"kept the weights of step {self.best_step}" + (f" (dev {self.metric} {self.best:.4f})" if self.dev else "")
            + f" in {cfg.out}")
        return {"metric": self.metric, "best_step": self.best_step, "best": self.best_scores, "last": scores,
                "steps": self.step, "seconds": round(time.perf_counter() - started, 2),
                "trainable_parameters": counts["trainable"], "total_parameters": counts["total"]}


def finetune(cfg: FinetuneConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune as `cfg` says; returns the best dev score, its step, the last dev scores, timing
    and parameter counts."""
    return FineTuner(cfg, resume, overwrite).fit()
