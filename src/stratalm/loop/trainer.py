"""The one training loop, for pretraining and fine-tuning alike: device, torchrun, autocast,
compile, gradient accumulation, the schedule, clipping, the log / evaluation / save cadence and
exact resume of the step, the training time and every random generator; and its faults
(faults.py): a stop signal saves and exits, a non-finite step is skipped or stops the run, and
non-finite weights are never saved.

What differs between runs is a `Recipe` (recipe.py): how a step's batches are drawn, the loss of
each, how to evaluate and what to keep afterwards, and any state of its own. Pretraining is one
recipe (data + objective, pretraining.py), fine-tuning on a task another (tasks/finetune.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import time
from typing import Any, Callable, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..checkpoint.fault_points import pause_point
from ..checkpoint.training import decode_rng, encode_rng, resume_training_checkpoint, save_training_checkpoint
from ..errors import CheckpointError, ConfigError
from ..models.stack import use_activation_checkpointing
from ..precision import autocast, choose_precision
from .config import TrainConfig
from .distributed import Distributed, setup_distributed, teardown_distributed
from .faults import NonFiniteError, RunInterrupted, StopSignals, first_nonfinite_weight, gradient_norm, nonfinite_reason
from .optim import Schedule, make_optimizer
from .recipe import Part, Recipe
from .run_folder import MetricsLog, claim_folder, clear_run_files, refuse_changed_settings, write_run_config
from .sharding import ShardedModel, check_parallel


def resolve_device(name: str, dist: Distributed) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and dist.enabled:
        name = f"cuda:{dist.local_rank}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("the device asks for CUDA but no CUDA device is available; use device=cpu.")
    return torch.device(name)


def check_loop_settings(cfg: TrainConfig) -> None:
    if cfg.batch_size < 1 or cfg.grad_accum < 1 or cfg.max_steps < 0 or cfg.log_every < 1:
        raise ConfigError("batch_size, grad_accum and log_every must be at least 1, and max_steps not negative.")
    choose_precision(cfg.precision, "cpu")  # refuses an unknown name before anything is built
    check_parallel(cfg.parallel, cfg.optimizer)


class Loop:
    """Runs `recipe` under the loop settings `cfg`, writing into the folder `out`."""

    def __init__(self, recipe: Recipe, cfg: TrainConfig, out: str, resume: bool = False, overwrite: bool = False,
                 observers: Sequence[Any] = ()) -> None:
        """`observers` watch the run from above the loop (the layer lens's training dynamics): each
        has `observe(loop) -> dict`, called after every step, whose numbers (if any) are logged."""
        check_loop_settings(cfg)
        checkpoint_dir = os.path.join(out, recipe.checkpoint_subdir) if recipe.checkpoint_subdir else out
        refuse_changed_settings(out, checkpoint_dir, resume, overwrite, recipe.changed_settings, recipe.kind)  # before any work
        self.recipe, self.cfg, self.out, self.observers = recipe, cfg, out, list(observers)
        self.checkpoint_dir = checkpoint_dir
        self.dist, self.stop_signals = Distributed(), StopSignals()
        with self.stop_signals as stop:
            stop.at_once = True  # nothing is written yet: a stop signal ends the run at once, the folder as it was
            try:
                self._build()
                stop.at_once = False  # the folder is being set up: a stop signal waits until it is consistent
            except RunInterrupted:
                teardown_distributed(self.dist)
                raise
            self._open_folder(resume, overwrite)
            self._place_on_processes()
        signum = stop.agreed(self.dist, self.device)  # every process stops, or none
        if signum:
            self.close()
            raise self._stopped_before_first_step(signum)

    def _stopped_before_first_step(self, signum: int) -> RunInterrupted:
        return RunInterrupted(f"stopped by {signal.Signals(signum).name} before the first step; '{self.out}' is ready, "
                              f"and --resume continues the run{f' from step {self.step}' if self.resuming else ''}.", signum)

    def _build(self) -> None:
        """Processes, device, the recipe's data and model, the optimizer: all that can fail on user
        input (data, model, options), before the folder is touched."""
        recipe, cfg = self.recipe, self.cfg
        wants_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
        self.dist = setup_distributed("cuda" if wants_cuda else "cpu")
        self.device = resolve_device(cfg.device, self.dist)
        self.precision, self.precision_reason = choose_precision(cfg.precision, self.device.type)
        parts = cfg.grad_accum * self.dist.world_size
        if cfg.batch_size % parts:
            raise ConfigError(f"batch_size ({cfg.batch_size}) must be divisible by grad_accum x processes ({parts}).")

        if self.dist.enabled and cfg.parallel == "fsdp" and not recipe.shardable:
            raise ConfigError(f"train.parallel=fsdp is for pretraining; a {recipe.kind} trains with parallel=ddp.")
        recipe.setup(self)
        pause_point("built", 0)
        self.model = recipe.model.to(self.device)
        use_activation_checkpointing(self.model, cfg.activation_checkpointing)
        self.total_steps = recipe.total_steps()
        if self.total_steps < 1:
            raise ConfigError("the run has no step to take; max_steps must be at least 1.")
        self.schedule = Schedule(dataclasses.replace(cfg, max_steps=self.total_steps))
        self.stretched = ""  # how the schedule was stretched, when a resumed run changed its length
        self.optimizer = make_optimizer(self.model, self.schedule.config, self.device, recipe.parameter_groups())

    def _open_folder(self, resume: bool, overwrite: bool) -> None:
        """Claim the output folder: resume from its checkpoint, or start it afresh."""
        recipe, cfg, out = self.recipe, self.cfg, self.out
        self.resuming = claim_folder(out, self.checkpoint_dir, resume, overwrite, recipe.identity(), recipe.kind)
        self.dist.barrier()  # every process has looked at the folder before the first one writes to it
        self.step, self.train_seconds = 0, 0.0  # time in training steps (evaluation and saving excluded)
        self.skipped_steps, self.skipped_last = 0, False  # steps left out for a non-finite loss or gradient
        self.saved_step: "int | None" = None  # the step of the latest checkpoint on disk
        self.fallback = ""  # why the run resumed from an earlier checkpoint than the latest
        self.metrics = MetricsLog(out, self.dist.is_main, cfg.tensorboard)
        if self.dist.is_main:
            os.makedirs(out, exist_ok=True)
            if not self.resuming:
                clear_run_files(out)  # a restart without a checkpoint starts its metrics again too
        self.dist.barrier()
        if self.resuming:
            state, self.fallback = resume_training_checkpoint(self.checkpoint_dir, self.model, self.optimizer)
            self._restore(state)
            self.saved_step = self.step
            self.metrics.truncate_after(self.step)
            # Where the run resumed (`stratalm plot` marks it), how its schedule was stretched, which bad checkpoint it passed over.
            self.metrics.write({"step": self.step, "event": "resume", **({"schedule": self.stretched} if self.stretched else {}),
                                **({"fallback": self.fallback} if self.fallback else {})})
        else:
            for record in recipe.start_records():
                self.metrics.write(record)
        if self.dist.is_main:
            write_run_config(out, {**recipe.settings(), "schedule": self.schedule.to_dict(),
                                   "precision": {"chosen": self.precision, "reason": self.precision_reason}})
        pause_point("opened", 0)

    def _place_on_processes(self) -> None:
        """Shard (FSDP2), wrap (DDP) or compile the model for the steps."""
        recipe, cfg = self.recipe, self.cfg
        self.sharded = None  # FSDP2 (sharding.py): after the restore, since a checkpoint loads full and then shards
        if self.dist.enabled and cfg.parallel == "fsdp":
            self.dist.broadcast_parameters(self.model)  # every process starts equal, as DDP's constructor ensures
            self.sharded = ShardedModel(self.model, self.optimizer, self.dist.is_main, self.precision == "bf16")
            self.optimizer = self.sharded.optimizer
        self.forward_model: torch.nn.Module = torch.compile(self.model) if cfg.compile else self.model
        self.hand_synced = self.dist.enabled and not recipe.ddp_wrapper and self.sharded is None
        if self.dist.enabled and recipe.ddp_wrapper and self.sharded is None:
            self.forward_model = DistributedDataParallel(
                self.forward_model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        elif self.hand_synced:
            self.dist.broadcast_parameters(self.model)  # what DDP's constructor does: every process starts equal
        self.autocast: Callable[[], Any] = lambda: autocast(self.precision, self.device.type)
        self.say = tqdm.write if self.dist.is_main else (lambda *_: None)

    # -- state ------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        rng = {"torch": encode_rng(torch.get_rng_state())}
        if self.device.type == "cuda":
            rng["cuda"] = encode_rng(torch.cuda.get_rng_state(self.device))
        rng.update({name: encode_rng(state) for name, state in self.recipe.rng_states().items()})
        return {"step": self.step, **self.recipe.state(self.step), "world_size": self.dist.world_size,
                "train_s": self.train_seconds, "skipped_steps": self.skipped_steps, "schedule": self.schedule.to_dict(),
                "rng": rng}

    def _restore(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        if self.step > self.total_steps:
            raise ConfigError(f"the run in '{self.out}' is already at step {self.step}, past the {self.total_steps} steps "
                              f"asked for; give a larger max_steps to continue it.")
        self._restore_schedule(state.get("schedule"))
        self.train_seconds = float(state.get("train_s", 0.0))  # older checkpoints lack it
        self.skipped_steps = int(state.get("skipped_steps", 0))
        rng = state["rng"]
        torch.set_rng_state(decode_rng(rng["torch"]))
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(decode_rng(rng["cuda"]), self.device)
        self.recipe.restore(state, {name: decode_rng(text) for name, text in rng.items() if name not in ("torch", "cuda")})

    def _restore_schedule(self, saved: Any) -> None:
        """The checkpoint's schedule; stretched from this step if the run's length changed (a
        checkpoint of an older stratalm has none saved: the current one is taken as it)."""
        if not saved:
            return
        schedule = Schedule.from_dict(saved, self.schedule.config)
        if schedule.config.max_steps != self.total_steps:
            before = schedule.config.max_steps
            schedule = schedule.stretched(self.step, self.total_steps)
            self.stretched = f"the run's length changed from {before} to {self.total_steps} steps: {schedule.describe()}"
        self.schedule = schedule

    def save(self) -> None:
        """Checkpoint the run, keeping the `keep_checkpoints - 1` before; never with non-finite
        weights, which would replace a good checkpoint with one no run can continue from."""
        # Under FSDP every process gathers the full state and the first one writes it (sharding.py).
        whole = self.sharded.gathered() if self.sharded else contextlib.nullcontext((self.model, self.optimizer))
        with whole as (model, optimizer):
            bad = first_nonfinite_weight(model)  # the same on every process, so all of them stop alike
            if bad is not None:
                raise NonFiniteError(f"the weights after step {self.step} hold non-finite values (first: '{bad}'), so no "
                                     f"checkpoint was written; {self._last_good()}.")
            failure = self._write_checkpoint(model, optimizer) if self.dist.is_main else None
        self._stop_on_any_failure(failure)
        self.saved_step = self.step

    def _write_checkpoint(self, model: torch.nn.Module, optimizer: Any) -> "Exception | None":
        """The first process writes the checkpoint; what went wrong is returned, for every process to learn."""
        try:
            save_training_checkpoint(self.checkpoint_dir, model, optimizer, self._state(), self.cfg.keep_checkpoints)
        except Exception as exc:  # noqa: BLE001 (raised again below, once every process knows)
            return exc
        return None

    def _stop_on_any_failure(self, failure: "Exception | None") -> None:
        """Every process learns whether the first one's save failed (instead of waiting at a barrier
        for a process that has left) and stops with one sentence; the first gives the reason."""
        if self.dist.any(failure is not None, self.device):
            if failure is not None:
                raise failure
            raise CheckpointError(f"the first process could not write the checkpoint of step {self.step} into "
                                  f"'{self.checkpoint_dir}' (its message says why), so this one stopped too; "
                                  f"{self._last_good()}.")

    def _last_good(self) -> str:
        if self.saved_step is None:
            return "the run has no checkpoint yet"
        return f"the last good checkpoint, of step {self.saved_step}, is in '{self.checkpoint_dir}' and --resume continues from it"

    def full_weights(self) -> contextlib.AbstractContextManager:
        """Evaluation and observers run on full parameters (FSDP's gathered for the while)."""
        return self.sharded.unsharded() if self.sharded else contextlib.nullcontext()

    # -- one step -----------------------------------------------------------------------------
    def rows(self, count: int) -> slice:
        """This process's rows of a micro-batch of `count` rows (every process prepares all of
        them, so N processes see exactly the examples one process would)."""
        return slice(self.dist.rank * count // self.dist.world_size, (self.dist.rank + 1) * count // self.dist.world_size)

    def train_step(self) -> torch.Tensor:
        """One optimizer step over grad_accum micro-batches; returns the mean loss over all processes."""
        lr = self.schedule.lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        micro_batches = [self.recipe.micro_batch(self.step, m, self.cfg.grad_accum) for m in range(self.cfg.grad_accum)]
        # Each loss is a mean over its scored targets; weighting it by its share of all scored
        # targets of the step (every process, every micro-batch) makes the sum the mean loss of the
        # whole batch, however masking or padding spread the targets.
        scored: dict[str, float] = {}
        for parts in micro_batches:
            for part in parts:
                scored[part.key] = scored.get(part.key, 0.0) + float(part.scored.sum())
        single = all(len(parts) == 1 for parts in micro_batches)
        total = torch.zeros((), device=self.device)
        for m, parts in enumerate(micro_batches):
            for part in parts:
                total += self._backward(part, scored[part.key], last=m == self.cfg.grad_accum - 1 and single)
        if self.dist.enabled and self.sharded is None and (self.hand_synced or not single):
            # A mixture's components each leave some parameters idle (simcse never uses the MLM head),
            # which DDP's own hooks cannot handle, and a task may call the model several times a step:
            # those gradients were accumulated without syncing and are averaged here instead.
            self.dist.average_gradients(self.model)
        norm = gradient_norm([p for p in self.model.parameters() if p.grad is not None], self.cfg.grad_clip)
        loss = self.dist.mean(total)
        pause_point("step", self.step)
        # Every process sees the same mean loss and the same (averaged) gradients, so all decide alike.
        problem = nonfinite_reason(loss, norm)
        self.skipped_last = bool(problem)
        if problem:
            self._nonfinite_step(problem)
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss

    def _nonfinite_step(self, problem: str) -> None:
        """train.nonfinite: skip the update (counted in metrics.jsonl), or stop before making it."""
        step = self.step + 1
        if self.cfg.nonfinite == "stop":
            self.optimizer.zero_grad(set_to_none=True)
            self.metrics.write({"step": step, "event": "nonfinite", "action": "stop", "reason": problem})
            raise NonFiniteError(f"in step {step} {problem}, so the run stopped before updating the weights; "
                                 f"{self._last_good()} (with a lower learning rate, or nonfinite=skip to pass over such steps).")
        self.skipped_steps += 1
        self.metrics.write({"step": step, "event": "skipped", "reason": problem, "skipped_steps": self.skipped_steps})
        self.say(f"step {step} skipped: {problem}")

    def _backward(self, part: Part, step_scored: float, last: bool) -> torch.Tensor:
        count = int(part.scored.shape[0])
        rows, factor = self.rows(count), 0.0
        if rows.start == rows.stop:  # fewer rows than processes: join the step with a zero-weight row
            rows = slice(0, 1)
        elif step_scored > 0:
            factor = self.dist.world_size * float(part.scored[rows].sum()) / step_scored
        inputs = {k: v[rows].to(self.device, non_blocking=True) for k, v in part.inputs.items()}
        targets = {k: v[rows].to(self.device, non_blocking=True) for k, v in part.targets.items()}
        # DDP syncs on the last micro-batch of a single loss; otherwise gradients are averaged by hand.
        ddp = isinstance(self.forward_model, DistributedDataParallel)
        sync = self.forward_model.no_sync() if ddp and not last else contextlib.nullcontext()
        with sync:
            with self.autocast():
                loss = part.compute(self.forward_model, inputs, targets) * (factor * part.weight)
            loss.backward()
        return loss.detach()

    # -- the run ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """The recipe's evaluation, logged. Randomness inside (ELECTRA's sampled replacements)
        comes from a fixed seed and leaves the training run's random state untouched, so a run
        resumes exactly."""
        pause_point("evaluating", self.step)
        devices = [self.device] if self.device.type == "cuda" else []
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=devices), self.full_weights():
                torch.manual_seed(0)
                record, line = self.recipe.evaluate(self)
        finally:
            self.model.train()
        if record:
            self.metrics.write({"step": self.step, "train_s": round(self.train_seconds, 3), **record})
            self.say(f"step {self.step}: {line}")
        return record

    @torch.no_grad()
    def observe(self) -> None:
        """Let each observer measure the model, in evaluation mode and with the training run's
        random state untouched (like `evaluate`)."""
        devices = [self.device] if self.device.type == "cuda" else []
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=devices), self.full_weights():
                records = [observer.observe(self) for observer in self.observers]
        finally:
            self.model.train()
        merged = {k: v for record in records if record for k, v in record.items()}
        if merged:
            self.metrics.write({"step": self.step, "train_s": round(self.train_seconds, 3), **merged})

    def fit(self) -> dict[str, Any]:
        self.started = time.perf_counter()  # wall time of this invocation (evaluation included)
        self.say(self.recipe.describe(self))
        self.say(f"precision {self.precision} ({self.precision_reason})")
        if self.resuming:
            self.say(f"resuming from step {self.step} in {self.out}")
            if self.fallback and self.dist.is_main:
                tqdm.write(f"warning: {self.fallback}", file=sys.stderr)
            if self.stretched:
                self.say(self.stretched)
        # From here to the end, a stop signal waits for the work in hand: the first evaluation, a
        # step, or writing the result.
        with self.stop_signals as stop:
            if self.recipe.evaluate_at_start and self.step == 0:
                self.evaluate()  # the starting point of the dev curves
                signum = stop.agreed(self.dist, self.device)
                if signum:
                    raise self._stopped_before_first_step(signum)
            return self._train(stop)

    def _train(self, stop: StopSignals) -> dict[str, Any]:
        """Steps to the end (or to a stop signal), then the recipe's result."""
        cfg = self.cfg
        bar = tqdm(total=self.total_steps, initial=self.step, desc=self.recipe.progress_label, unit="step",
                   disable=not (cfg.progress and self.dist.is_main), dynamic_ncols=True)
        self.model.train()
        window_loss, window_steps, window_time = 0.0, 0, 0.0  # since the last metrics line
        window_losses = 0  # steps of the window with a loss (skipped ones have none)
        while self.step < self.total_steps:
            started = time.perf_counter()
            loss = float(self.train_step())  # float() waits for the step, so the time is honest
            seconds = time.perf_counter() - started
            window_time += seconds
            self.train_seconds += seconds
            if not self.skipped_last:
                window_loss += loss
                window_losses += 1
            window_steps += 1
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                record = {"step": self.step, **({"loss": window_loss / window_losses} if window_losses else {}),
                          "lr": self.schedule.lr(self.step - 1), **self.recipe.throughput(window_steps, max(window_time, 1e-9)),
                          "train_s": round(self.train_seconds, 3), **({"skipped_steps": self.skipped_steps} if self.skipped_steps else {})}
                self.metrics.write(record)
                if window_losses:
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                    self.recipe.last_loss = record["loss"]
                window_loss, window_steps, window_time, window_losses = 0.0, 0, 0.0, 0
            if self.observers:
                self.observe()
            evaluated = self.recipe.should_evaluate(self.step, self.total_steps, cfg.eval_every)
            if evaluated:
                self.evaluate()
            if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == self.total_steps \
                    or (evaluated and self.recipe.save_at_evaluation):
                self.save()
            signum = stop.agreed(self.dist, self.device)
            if signum and self.step < self.total_steps:
                bar.close()
                self._stop_for(signum)
        bar.close()
        return self.recipe.finish(self)

    def _stop_for(self, signum: int) -> None:
        """A stop signal (preemption, Ctrl-C): checkpoint the step just finished, then end the run."""
        if self.saved_step != self.step:
            self.save()
        name = signal.Signals(signum).name
        self.metrics.write({"step": self.step, "event": "stopped", "signal": name})
        raise RunInterrupted(f"stopped by {name} after step {self.step} of {self.total_steps}; its checkpoint is saved in "
                             f"'{self.checkpoint_dir}', and --resume continues the run from it.", signum)

    def close(self) -> None:
        self.metrics.close()
        teardown_distributed(self.dist)


def run(recipe: Recipe, cfg: TrainConfig, out: str, resume: bool = False, overwrite: bool = False,
        observers: Sequence[Any] = ()) -> dict[str, Any]:
    """Build the loop for `recipe`, train to the end, and return the recipe's result."""
    loop = Loop(recipe, cfg, out, resume, overwrite, observers)
    try:
        return loop.fit()
    finally:
        loop.close()
