"""Weight helpers shared by every format: each tensor once, loading without two copies, and
errors that name the weight that does not fit."""
from __future__ import annotations

import torch

from ..errors import CheckpointError


def unique_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters and persistent buffers, each once, under the name model_state uses."""
    out, seen = {}, set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            out[name] = tensor
    return out


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights to save, each tensor once: a tied head is the embedding, stored under the
    embedding's name (the first name a shared tensor has in the module tree)."""
    return {name: tensor.detach().contiguous() for name, tensor in unique_weights(model).items()}


def release_weights(model: torch.nn.Module) -> None:
    """Swap every weight for a stand-in of the same shape and dtype that holds no memory: a
    checkpoint is about to replace them all, and keeping the random ones meanwhile would hold the
    model twice while it loads."""
    with torch.no_grad():
        for tensor in unique_weights(model).values():
            tensor.data = torch.zeros((), dtype=tensor.dtype, device=tensor.device).expand(tensor.shape)


def load_state_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, adopt: bool = False) -> None:
    """Copy `state` into `model`, naming any weight that is missing, unexpected or mis-shaped.
    With `adopt`, the model takes the tensors of `state` themselves (emptying the dict) instead of
    copying them, so loading never holds two copies (see release_weights)."""
    expected = unique_weights(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"'{source}' does not match its config: missing weights {missing[:5]}, unexpected weights {unexpected[:5]}."
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"weight '{name}' in '{source}' has shape {tuple(tensor.shape)}, the config needs {tuple(expected[name].shape)}."
            )
    if not adopt:
        model.load_state_dict(state, strict=False)
        return
    with torch.no_grad():
        for name in list(state):
            target = expected[name]
            target.data = state.pop(name).to(device=target.device, dtype=target.dtype).contiguous()
