"""The knobs of the one training loop, shared by pretraining (the `train` section of its config)
and fine-tuning (the `loop` section): steps, batch, optimizer, schedule, cadence, device, precision.
Each recipe fills in its own defaults (fine-tuning starts from lr 5e-5, BERT's recipe)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config_fields import above, at_least, device_name, from_to, one_of, setting, within

# The loop settings a resumed run may change, for pretraining and fine-tuning alike: its length, its
# cadence, where and how it runs (device, processes, compile, recomputed activations: none of them
# changes what a step computes beyond rounding). Every other one must equal the saved run's.
MAY_CHANGE_ON_RESUME = ("max_steps", "save_every", "log_every", "eval_every", "eval_windows", "eval_batch_size",
                        "progress", "device", "compile", "tensorboard", "parallel", "activation_checkpointing",
                        "keep_checkpoints", "nonfinite")


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = setting(1000, "optimizer steps to run", at_least(0))
    batch_size: int = setting(16, "sequences per optimizer step, over all processes and accumulation steps", at_least(1))
    grad_accum: int = setting(1, "micro-batches per optimizer step (gradient accumulation)", at_least(1))
    lr: float = setting(1e-3, "peak learning rate", above(0))
    min_lr: float = setting(1e-4, "learning rate at the end of the cosine decay", at_least(0))
    warmup_steps: float = setting(100, "linear warmup from 0 to lr: a number of steps, or a fraction of max_steps if below 1", at_least(0))
    decay_steps: Optional[int] = setting(None, "step where the cosine decay reaches min_lr (None = max_steps)", at_least(1))
    schedule: str = setting("cosine", "learning-rate shape after the warmup: cosine (decay to min_lr at decay_steps) or wsd (warmup-stable-decay: flat at lr, then a linear decay to min_lr over the last decay_fraction)", one_of("cosine", "wsd"))
    decay_fraction: float = setting(0.2, "wsd: share of the steps after the warmup spent in the final linear decay", from_to(0, 1))
    weight_decay: float = setting(0.1, "AdamW weight decay, applied to matrices only (not biases or norms)", at_least(0))
    optimizer: str = setting("adamw", "adamw for every parameter, or muon: Muon (torch.optim.Muon) for the blocks' 2-D matrices and AdamW for embeddings, heads, norms and biases", one_of("adamw", "muon"))
    muon_lr: float = setting(0.02, "muon: peak learning rate of the blocks' matrices (scheduled like lr; Keller Jordan's shape adjustment)", above(0))
    muon_momentum: float = setting(0.95, "muon: momentum of the blocks' matrices (Nesterov)", within(0, 1))
    muon_precision: str = setting("auto", "muon: number format of its Newton-Schulz steps: bf16 (torch's), fp32, or auto (bf16 on CUDA and AMX CPUs, fp32 on other CPUs, where bf16 products are slow)", one_of("auto", "bf16", "fp32"))
    embed_lr: Optional[float] = setting(None, "peak learning rate of the embeddings (None = lr)", at_least(0))
    head_lr: Optional[float] = setting(None, "peak learning rate of an untied output head (None = lr; a tied head is the embedding)", at_least(0))
    beta1: float = setting(0.9, "AdamW beta1", within(0, 1))
    beta2: float = setting(0.95, "AdamW beta2", within(0, 1))
    eps: float = setting(1e-8, "AdamW epsilon", above(0))
    grad_clip: float = setting(1.0, "clip the gradient norm to this (0 = no clipping)", at_least(0))
    eval_every: int = setting(200, "steps between validation passes (0 = only at the end)", at_least(0))
    eval_windows: int = setting(0, "validation windows per pass (0 = the whole validation split)", at_least(0))
    eval_batch_size: int = setting(32, "windows per validation batch", at_least(1))
    save_every: int = setting(0, "steps between checkpoints (0 = only at the end)", at_least(0))
    log_every: int = setting(10, "steps between lines of metrics.jsonl", at_least(1))
    seed: int = setting(1337, "seed of initialisation, data order, dropout and masking")
    device: str = setting("auto", "cpu, cuda, cuda:N, or auto (cuda when present)", device_name)
    precision: str = setting("auto", "fp32, bf16 (autocast), or auto (bf16 on CUDA and on CPUs with AMX, fp32 on other CPUs)", one_of("auto", "fp32", "bf16"))
    parallel: str = setting("ddp", "under torchrun: ddp (each process holds the whole model) or fsdp (FSDP2: weights, gradients "
                                   "and AdamW state sharded over the processes, one unit per block; pretraining only)")
    activation_checkpointing: bool = setting(False, "recompute each block's activations in the backward pass instead of "
                                                    "keeping them: less memory, about a third more compute")
    compile: bool = setting(False, "torch.compile the model (costs 20-30 s at start, faster steps after)")
    progress: bool = setting(True, "show a progress bar")
    tensorboard: bool = setting(False, "also write the metrics as TensorBoard events in OUT/tensorboard (the tensorboard extra)")
    keep_checkpoints: int = setting(2, "training checkpoints kept: the latest, and the ones before it in checkpoints/ "
                                       "(--resume falls back on them when the latest is truncated or corrupt)", at_least(1))
    nonfinite: str = setting("stop", "a step with a non-finite loss or gradient: 'skip' it (no update, counted in "
                                     "metrics.jsonl) or 'stop' the run, its last good checkpoint kept", one_of("skip", "stop"))

    def warmup(self, total_steps: int) -> int:
        """Warmup in steps: warmup_steps itself, or that fraction of the run when below 1."""
        return int(self.warmup_steps * total_steps) if self.warmup_steps < 1 else int(self.warmup_steps)
