"""The knobs of the one training loop, shared by pretraining (the `train` section of its config)
and fine-tuning (the `loop` section): steps, batch, optimizer, schedule, cadence, device, precision.
Each recipe fills in its own defaults (fine-tuning starts from lr 5e-5, BERT's recipe)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config_fields import setting


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = setting(1000, "optimizer steps to run")
    batch_size: int = setting(16, "sequences per optimizer step, over all processes and accumulation steps")
    grad_accum: int = setting(1, "micro-batches per optimizer step (gradient accumulation)")
    lr: float = setting(1e-3, "peak learning rate")
    min_lr: float = setting(1e-4, "learning rate at the end of the cosine decay")
    warmup_steps: float = setting(100, "linear warmup from 0 to lr: a number of steps, or a fraction of max_steps if below 1")
    decay_steps: Optional[int] = setting(None, "step where the cosine decay reaches min_lr (None = max_steps)")
    weight_decay: float = setting(0.1, "AdamW weight decay, applied to matrices only (not biases or norms)")
    beta1: float = setting(0.9, "AdamW beta1")
    beta2: float = setting(0.95, "AdamW beta2")
    eps: float = setting(1e-8, "AdamW epsilon")
    grad_clip: float = setting(1.0, "clip the gradient norm to this (0 = no clipping)")
    eval_every: int = setting(200, "steps between validation passes (0 = only at the end)")
    eval_windows: int = setting(0, "validation windows per pass (0 = the whole validation split)")
    eval_batch_size: int = setting(32, "windows per validation batch")
    save_every: int = setting(0, "steps between checkpoints (0 = only at the end)")
    log_every: int = setting(10, "steps between lines of metrics.jsonl")
    seed: int = setting(1337, "seed of initialisation, data order, dropout and masking")
    device: str = setting("auto", "cpu, cuda, cuda:N, or auto (cuda when present)")
    precision: str = setting("auto", "fp32, bf16 (autocast), or auto (bf16 on CUDA and on CPUs with AMX, fp32 on other CPUs)")
    compile: bool = setting(False, "torch.compile the model (costs 20-30 s at start, faster steps after)")
    progress: bool = setting(True, "show a progress bar")
    tensorboard: bool = setting(False, "also write the metrics as TensorBoard events in OUT/tensorboard (the tensorboard extra)")

    def warmup(self, total_steps: int) -> int:
        """Warmup in steps: warmup_steps itself, or that fraction of the run when below 1."""
        return int(self.warmup_steps * total_steps) if self.warmup_steps < 1 else int(self.warmup_steps)
