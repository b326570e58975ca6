"""The training loop: batches -> objective -> model -> loss -> AdamW, with evaluation,
checkpoints, exact resume and DistributedDataParallel."""
from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Any, Optional

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..data.tokens import RandomWindows, TokenData, sequential_windows
from ..errors import ConfigError
from ..families import preset
from ..io import check_tokenizer, load as load_checkpoint
from ..models import build_model as model_from_config
from ..objectives import get_objective
from ..tokenize import Tokenizer
from .config import RunConfig
from .distributed import Distributed, setup_distributed, teardown_distributed
from .optim import learning_rate, make_optimizer
from .run_folder import MetricsLog, check_out_folder, clear_run_files, write_run_config
from .state import decode_rng, encode_rng, load_training_checkpoint, save_training_checkpoint


def resolve_device(name: str, dist: Distributed) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and dist.enabled:
        name = f"cuda:{dist.local_rank}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("train.device asks for CUDA but no CUDA device is available; use train.device=cpu.")
    return torch.device(name)


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


ENCODER_HEADS = ("mlm_head", "pooler", "nsp_head", "rtd_head", "classifier", "token_classifier", "qa_head")


def freeze_unused_heads(model: torch.nn.Module, used: tuple[str, ...]) -> None:
    """Heads the objective does not train (mlm leaves BERT's pooler and next-sentence head idle)
    keep their weights and get no gradient, so the optimizer and DDP leave them alone. A tensor
    tied to a trained part (the MLM decoder is the embedding) stays trainable. `model` may hold
    several encoders (ELECTRA's generator and discriminator)."""
    encoders = [m for m in model.modules() if any(hasattr(m, name) for name in ENCODER_HEADS)]
    idle = [getattr(m, name) for m in encoders for name in ENCODER_HEADS if name not in used and getattr(m, name) is not None]
    idle_ids = {id(p) for module in idle for p in module.parameters()}
    trained = {id(p) for name, p in model.named_parameters() if id(p) not in idle_ids}
    for module in idle:
        for param in module.parameters():
            if id(param) not in trained:
                param.requires_grad_(False)


def describe_scores(scores: dict[str, float]) -> str:
    """One line for the console: the validation loss, then perplexity or the objective's own metrics."""
    shown = [f"validation loss {scores['val_loss']:.4f}"]
    if "val_perplexity" in scores:
        shown.append(f"perplexity {scores['val_perplexity']:.2f}")
    else:
        shown += [f"{k[4:]} {v:.4f}" for k, v in scores.items() if k.endswith(("accuracy", "recall", "cosine"))]
    return ", ".join(shown)


class Trainer:
    def __init__(self, run: RunConfig, resume: bool = False, overwrite: bool = False) -> None:
        if not run.data or not run.out:
            raise ConfigError("both --data (a prepared folder) and --out (the run folder) are required.")
        self.run, self.cfg = run, run.train
        if self.cfg.batch_size < 1 or self.cfg.grad_accum < 1 or self.cfg.max_steps < 1:
            raise ConfigError("train.batch_size, train.grad_accum and train.max_steps must be at least 1.")
        wants_cuda = self.cfg.device.startswith("cuda") or (self.cfg.device == "auto" and torch.cuda.is_available())
        self.dist = setup_distributed("cuda" if wants_cuda else "cpu")
        self.device = resolve_device(self.cfg.device, self.dist)
        parts = self.cfg.grad_accum * self.dist.world_size
        if self.cfg.batch_size % parts:
            raise ConfigError(
                f"train.batch_size ({self.cfg.batch_size}) must be divisible by grad_accum x processes ({parts})."
            )
        self.micro_batch = self.cfg.batch_size // self.cfg.grad_accum  # sequences per micro-step, all processes
        self.rows = slice(self.dist.rank * self.micro_batch // self.dist.world_size,
                          (self.dist.rank + 1) * self.micro_batch // self.dist.world_size)

        self.data = TokenData(run.data)
        tokenizer = self.data.tokenizer()
        self.objective = get_objective(run.objective, tokenizer, run)
        torch.manual_seed(self.cfg.seed)  # the initial weights depend on the seed only
        model = build_model(run, self.data, tokenizer)
        self.objective.check(model.config, self.data)
        self.model = self.objective.wrap(model).to(self.device)
        self.window = self.model.config.max_seq_len + self.objective.extra_tokens
        self.sampler = RandomWindows(self.data, "train", self.window, self.cfg.seed + 1)
        self.objective_rng = torch.Generator().manual_seed(self.cfg.seed + 2)
        torch.manual_seed(self.cfg.seed + 3 + self.dist.rank)  # dropout differs between processes
        freeze_unused_heads(self.model, self.objective.heads)
        self.optimizer = make_optimizer(self.model, self.cfg, self.device)

        model_dict = self.model.config.to_dict()
        self.resuming = check_out_folder(run.out, resume, overwrite, model_dict)
        self.dist.barrier()  # every process has looked at the folder before the first one writes to it
        self.step = 0
        self.train_seconds = 0.0  # time in training steps (evaluation and saving excluded), kept across resumes
        self.metrics = MetricsLog(run.out, self.dist.is_main)
        if self.dist.is_main:
            os.makedirs(run.out, exist_ok=True)
            if overwrite and not self.resuming:
                clear_run_files(run.out)
            write_run_config(run.out, run.to_dict(), model_dict)
        self.dist.barrier()
        if self.resuming:
            self._restore(load_training_checkpoint(run.out, self.model, self.optimizer))
            self.metrics.truncate_after(self.step)

        self.forward_model: torch.nn.Module = self.model
        if self.cfg.compile:
            self.forward_model = torch.compile(self.model)
        if self.dist.enabled:
            self.forward_model = DistributedDataParallel(
                self.forward_model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        use_bf16 = self.cfg.precision == "bf16" or (self.cfg.precision == "auto" and self.device.type == "cuda")
        if self.cfg.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"train.precision must be auto, fp32 or bf16; got '{self.cfg.precision}'.")
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext

    # -- state ------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        rng = {"sampler": encode_rng(self.sampler.generator.get_state()),
               "objective": encode_rng(self.objective_rng.get_state()),
               "torch": encode_rng(torch.get_rng_state())}
        if self.device.type == "cuda":
            rng["cuda"] = encode_rng(torch.cuda.get_rng_state(self.device))
        return {"step": self.step, "tokens_seen": self.step * self.cfg.batch_size * self.model.config.max_seq_len,
                "data_position": {"sampler": "random_windows", "batches_drawn": self.step * self.cfg.grad_accum},
                "world_size": self.dist.world_size, "train_s": self.train_seconds, "rng": rng}

    def _restore(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.train_seconds = float(state.get("train_s", 0.0))  # older checkpoints lack it
        rng = state["rng"]
        self.sampler.generator.set_state(decode_rng(rng["sampler"]))
        self.objective_rng.set_state(decode_rng(rng["objective"]))
        torch.set_rng_state(decode_rng(rng["torch"]))
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(decode_rng(rng["cuda"]), self.device)

    def save(self) -> None:
        if self.dist.is_main:
            save_training_checkpoint(self.run.out, self.model, self.optimizer, self._state())
        self.dist.barrier()

    # -- loop -------------------------------------------------------------------------------
    def train_step(self) -> torch.Tensor:
        """One optimizer step over grad_accum micro-batches; returns the mean loss over all processes."""
        lr = learning_rate(self.step, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for micro in range(self.cfg.grad_accum):
            # Every process prepares the whole micro-batch (masks, pairs, spans) and keeps its rows, so
            # N processes see exactly the examples one process would.
            windows, offsets = self.sampler.next_batch(self.micro_batch)
            inputs, targets = self.objective.prepare(windows, self.objective_rng, self._documents(offsets))
            parts = self.objective.parts(inputs, targets)  # one backward per mixed objective
            for objective, weight, inputs, targets in parts:
                share = self._share_of_scored(targets["labels"])
                inputs = {k: v[self.rows].to(self.device, non_blocking=True) for k, v in inputs.items()}
                targets = {k: v[self.rows].to(self.device, non_blocking=True) for k, v in targets.items()}
                # DDP syncs on the last micro-batch of a single objective; mixtures sync by hand below.
                last = micro == self.cfg.grad_accum - 1 and len(parts) == 1
                sync = contextlib.nullcontext() if last or not self.dist.enabled else self.forward_model.no_sync()
                with sync:
                    with self.autocast():
                        loss, _ = objective.compute(self.forward_model, inputs, targets)
                        loss = loss * (share * weight)
                    (loss / self.cfg.grad_accum).backward()
                total += loss.detach()
        if self.dist.enabled and len(parts) > 1:
            # A mixture's components each leave some parameters idle (simcse never uses the MLM head),
            # which DDP's own hooks cannot handle: every component ran under no_sync, and the
            # accumulated gradients are averaged here instead.
            self.dist.average_gradients(self.model)
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return self.dist.mean(total / self.cfg.grad_accum)

    def _documents(self, offsets: torch.Tensor) -> Optional[torch.Tensor]:
        """The document of each window's first token, for objectives that pair segments across documents."""
        return self.data.document_of(offsets) if self.objective.needs_documents else None

    def _share_of_scored(self, labels: torch.Tensor) -> float:
        """world x (this process's scored targets) / (all scored targets). A loss that is a mean
        over this process's targets, scaled by it, averages over processes into the mean over all
        targets, even when masking scores a different number of tokens in each process's rows."""
        if not self.dist.enabled:
            return 1.0
        scored = labels != -100
        total = int(scored.sum())
        return self.dist.world_size * int(scored[self.rows].sum()) / total if total else 1.0

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss over every predicted token of the validation split (or eval_windows of it).
        Randomness inside the model (ELECTRA's sampled replacements) comes from a fixed seed and
        leaves the training run's random state untouched, so a run resumes exactly."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            return self._evaluate()

    def _evaluate(self) -> dict[str, float]:
        self.forward_model.eval()
        names: list[str] = []
        totals = torch.zeros(32, dtype=torch.float64, device=self.device)  # count, then each metric's weighted sum
        rng = torch.Generator().manual_seed(0)  # the same masks at every evaluation
        stride = self.window - self.objective.overlap
        for windows, offsets in sequential_windows(self.data, "validation", self.window, stride, self.cfg.eval_batch_size,
                                                   self.cfg.eval_windows or None, self.dist.rank, self.dist.world_size,
                                                   interleave=self.objective.needs_documents):
            inputs, targets = self.objective.prepare(windows, rng, self._documents(offsets))
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            targets = {k: v.to(self.device) for k, v in targets.items()}
            with self.autocast():
                _, metrics = self.objective.compute(self.model, inputs, targets)
            names = sorted(metrics)[:len(totals) - 1]
            count = int((targets["labels"] != -100).sum())  # metrics are means over the scored tokens
            totals[0] += count
            totals[1:1 + len(names)] += torch.tensor([float(metrics[n]) * count for n in names], dtype=torch.float64)
        totals = self.dist.sum(totals)
        self.forward_model.train()
        if totals[0] == 0:
            return {}
        scores = {f"val_{name}": float(totals[1 + i] / totals[0]) for i, name in enumerate(names)}
        if self.objective.reports_perplexity:  # the loss is a mean token cross-entropy
            scores["val_perplexity"] = math.exp(min(scores["val_loss"], 50.0))
        return scores

    def fit(self) -> dict[str, float]:
        cfg, out = self.cfg, self.run.out
        counts = self.model.parameter_counts()
        say = tqdm.write if self.dist.is_main else (lambda *_: None)
        say(f"model: {self.run.model_source}, {counts['total'] / 1e6:.2f}M parameters "
            f"({counts['non_embedding'] / 1e6:.2f}M without embeddings) on {self.device}"
            + (f", {self.dist.world_size} processes" if self.dist.enabled else ""))
        if self.resuming:
            say(f"resuming from step {self.step} in {out}")
        tokens_per_step = cfg.batch_size * self.model.config.max_seq_len
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="training", unit="step",
                   disable=not (cfg.progress and self.dist.is_main), dynamic_ncols=True)
        self.forward_model.train()
        result: dict[str, float] = {}
        window_loss, window_steps, window_time = 0.0, 0, 0.0  # since the last metrics line
        while self.step < cfg.max_steps:
            started = time.perf_counter()
            loss = float(self.train_step())  # float() waits for the step, so the time is honest
            step_seconds = time.perf_counter() - started
            window_time += step_seconds
            self.train_seconds += step_seconds
            window_loss += loss
            window_steps += 1
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                speed = tokens_per_step * window_steps / max(window_time, 1e-9)
                record = {"step": self.step, "loss": window_loss / window_steps, "lr": learning_rate(self.step - 1, cfg),
                          "tokens_per_s": round(speed, 1), "train_s": round(self.train_seconds, 3)}
                self.metrics.write(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{speed:,.0f}")
                result["loss"] = record["loss"]
                window_loss, window_steps, window_time = 0.0, 0, 0.0
            if (cfg.eval_every and self.step % cfg.eval_every == 0) or self.step == cfg.max_steps:
                scores = self.evaluate()
                if scores:
                    self.metrics.write({"step": self.step, "train_s": round(self.train_seconds, 3), **scores})
                    say(f"step {self.step}: {describe_scores(scores)}")
                    result.update(scores)
            if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.max_steps:
                self.save()
        bar.close()
        return result

    def close(self) -> None:
        teardown_distributed(self.dist)


def pretrain(run: RunConfig, resume: bool = False, overwrite: bool = False) -> dict[str, float]:
    """Train as `run` says; returns the final metrics (loss, val_loss, val_perplexity)."""
    trainer = Trainer(run, resume, overwrite)
    try:
        return trainer.fit()
    finally:
        trainer.close()
