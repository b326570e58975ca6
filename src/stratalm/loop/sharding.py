"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for the one loop: `train.parallel=fsdp`.

Each block is its own FSDP unit (its parameters are all-gathered just before it runs and freed
after), the rest of the model (embeddings, tied heads, final norm) is the root unit. Parameters,
gradients and AdamW moments live sharded over the processes (nccl on CUDA, gloo on the CPU). With
bf16 precision (the default on CUDA) the units compute in bf16 and reduce gradients in fp32
(MixedPrecisionPolicy).

Checkpoints stay in the one native format (model.safetensors + optimizer.safetensors, full
tensors): at a save every process takes part in gathering the full state (DTensor's `full_tensor`
for the weights, torch's `get_optimizer_state_dict` with full_state_dict on the CPU) and the first
process writes it, so a run saved by N processes resumes on any number, with DDP or FSDP. The cost:
the full weights in every process's CPU memory and the full optimizer state in the first one's,
while it saves.

A run resumes as a plain one would (every process loads the full checkpoint into the unsharded
model and optimizer), and only then shards: `fully_shard` keeps each process's slice of the loaded
weights, and `set_optimizer_state_dict` slices the loaded moments the same way.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
from typing import Any, Iterator, Optional

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from ..checkpoint.weights import load_state_into, release_weights, unique_weights
from ..errors import ConfigError
from ..layers import Block

PARALLEL_MODES = ("ddp", "fsdp")
GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)


def check_parallel(parallel: str, optimizer: str) -> None:
    if parallel not in PARALLEL_MODES:
        raise ConfigError(f"train.parallel must be one of {', '.join(PARALLEL_MODES)}, not '{parallel}'.")
    if parallel == "fsdp" and optimizer != "adamw":
        # Muon orthogonalises whole matrices; on FSDP's row slices it would compute something else.
        raise ConfigError(f"train.parallel=fsdp needs train.optimizer=adamw (not {optimizer}); use parallel=ddp for it.")


def block_units(model: nn.Module) -> list[nn.Module]:
    """The blocks to shard one by one: every Block that runs once per forward (ALBERT's shared
    block runs at every depth, so it stays in the root unit)."""
    shared = {id(stack.blocks[i]) for stack in model.modules() if hasattr(stack, "layer_plan")
              for i in set(stack.layer_plan) if stack.layer_plan.count(i) > 1}
    return [m for m in model.modules() if isinstance(m, Block) and id(m) not in shared]


class OptimizerView:
    """A gathered (full, FQN-keyed) optimizer state dict, renumbered the way `optimizer.state_dict()`
    numbers parameters, so the native checkpoint writer saves it as it saves a plain optimizer."""

    def __init__(self, full: dict[str, Any]) -> None:
        order = {name: index for index, name in enumerate(n for g in full["param_groups"] for n in g["params"])}
        self.full = {"state": {order[name]: entry for name, entry in full["state"].items()},
                     "param_groups": [{**g, "params": [order[n] for n in g["params"]]} for g in full["param_groups"]]}

    def state_dict(self) -> dict[str, Any]:
        return self.full


class ShardedModel:
    """`model` sharded in place with FSDP2 over all processes, and the optimizer rebuilt over its
    sharded parameters (keeping every group's settings and any state already loaded)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, is_main: bool, bf16: bool) -> None:
        self.model, self.is_main = model, is_main
        # What the checkpoint writer reads besides weights (class, config, tokenizer, parts): a copy
        # of the model whose weights hold no memory until a save fills them in.
        self.template = copy.deepcopy(model)
        release_weights(self.template)
        name_of = {id(p): name for name, p in model.named_parameters()}
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [name_of[id(p)] for p in g["params"]]}
                  for g in optimizer.param_groups]
        loaded = optimizer.state_dict()  # full moments when resuming; empty otherwise
        position = [name for g in groups for name in g["params"]]
        full_state = {"state": {position[i]: entry for i, entry in loaded["state"].items()},
                      "param_groups": [{**saved, "params": g["params"]} for saved, g in zip(loaded["param_groups"], groups)]}

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
        for block in block_units(model):
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        params = dict(model.named_parameters())  # the sharded ones (DTensors), under the same names
        accepted = inspect.signature(type(optimizer)).parameters  # `defaults` holds more than the constructor takes
        self.optimizer = type(optimizer)([{**g, "params": [params[n] for n in g["params"]]} for g in groups],
                                         **{k: v for k, v in optimizer.defaults.items() if k in accepted})
        if full_state["state"]:
            set_optimizer_state_dict(model, self.optimizer, full_state, options=StateDictOptions(full_state_dict=True))

    def units(self) -> list[FSDPModule]:
        return [m for m in self.model.modules() if isinstance(m, FSDPModule)]

    @contextlib.contextmanager
    def gathered(self) -> Iterator[tuple[nn.Module, Optional[OptimizerView]]]:
        """(a model holding the full weights, the full optimizer state), the state on the first
        process only; every process must enter it (the gather is collective). The weights come to
        every process's CPU memory, one tensor at a time, so each can check them the same way
        before the first one writes; the larger optimizer state only to the first."""
        shards = unique_weights(self.model)  # a tied head once, under the embedding's name
        weights = {name: (t.full_tensor() if isinstance(t, DTensor) else t).detach().cpu() for name, t in shards.items()}
        optimizer = get_optimizer_state_dict(self.model, self.optimizer, options=GATHER)
        load_state_into(self.template, weights, "the sharded model", adopt=True)
        try:
            yield self.template, OptimizerView(optimizer) if self.is_main else None
        finally:
            release_weights(self.template)

    @contextlib.contextmanager
    def unsharded(self) -> Iterator[None]:
        """Every unit's full parameters, kept for the whole block: evaluation may run a different
        number of batches on each process, which the per-forward all-gathers cannot."""
        units = self.units()
        for unit in units:
            unit.set_reshard_after_forward(False, recurse=False)
            unit.unshard()
        try:
            yield
        finally:
            for unit in units:
                unit.reshard()
                unit.set_reshard_after_forward(True, recurse=False)
