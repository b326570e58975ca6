"""What the loop does when a run meets a fault: a stop signal (preemption), a non-finite loss or
gradient, non-finite weights about to be saved. Kills and failed writes need nothing here: the
checkpoint transaction and the kept checkpoints (checkpoint/) make them safe to resume."""
from __future__ import annotations

import signal
import threading
from typing import Any, Optional

import torch

from ..checkpoint.fault_points import wake
from ..errors import StratalmError
from .distributed import Distributed
from .startup import STOP_SIGNALS, handler_before_guard, stopped_before_training


class RunInterrupted(StratalmError):
    """A stop signal ended the run after a checkpoint; `exit_status` is the shell's 128 + signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_status = 128 + signum


class NonFiniteError(StratalmError):
    """The loss, a gradient or a weight stopped being a finite number."""


class StopSignals:
    """While active (in the main thread), SIGTERM or SIGINT asks the run to stop at the end of the
    current step instead of dying mid-step; the handler steps aside at once, so a second signal
    acts as it would have without it (Ctrl-C twice stops at once). With `at_once` (while the run is
    still being built and nothing is written) the signal raises RunInterrupted where it lands."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self.at_once = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        self.received, self.at_once = None, False
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            # The command's early guard (startup.py) is over once the loop holds the signals: they go
            # back to what they were before it.
            self._previous = {sig: handler_before_guard(sig, signal.signal(sig, self._handle)) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
        wake()  # a test holding the run at a pause point lets it go on to stop
        if self.at_once:
            raise RunInterrupted(stopped_before_training(signum), signum)

    def agreed(self, dist: Distributed, device: torch.device) -> Optional[int]:
        """The signal to stop for, the same on every process (any one of them received it: torchrun
        forwards a SIGTERM to all, but not always within the same step)."""
        if not dist.enabled:
            return self.received
        flag = dist.sum(torch.tensor([float(self.received or 0)], device=device))
        return int(self.received or signal.SIGTERM) if float(flag) > 0 else None


def gradient_norm(params: list[torch.nn.Parameter], clip: float) -> torch.Tensor:
    """The total gradient norm, after clipping the gradients to `clip` when it is positive."""
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_(params, clip)
    return torch.nn.utils.get_total_norm([p.grad for p in params])


def nonfinite_reason(loss: torch.Tensor, norm: torch.Tensor) -> str:
    """'' for a sound step, else what was not finite (one host sync for both checks)."""
    if hasattr(norm, "full_tensor"):  # FSDP's clipping returns the norm as a DTensor
        norm = norm.full_tensor()
    sound = torch.stack([torch.isfinite(loss).all(), torch.isfinite(norm).all()]).tolist()
    if all(sound):
        return ""
    return f"the loss is {float(loss)}" if not sound[0] else f"the gradient norm is {float(norm)}"


def first_nonfinite_weight(model: torch.nn.Module) -> Optional[str]:
    """The name of the first weight holding a NaN or an infinity, or None."""
    named = [(name, tensor) for name, tensor in model.state_dict().items() if tensor.is_floating_point()]
    if not named:
        return None
    sound = torch.stack([torch.isfinite(tensor).all() for _, tensor in named]).tolist()
    return next((name for (name, _), ok in zip(named, sound) if not ok), None)
