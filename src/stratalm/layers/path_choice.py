"""Choose between computations that give the same numbers by timing them here, on the real shapes.

Which kernel is fastest depends on the machine more than on the code: MKL's few-row product is
slow on AMD CPUs and fast on Intel's, so a path tuned on one can be 2-3x slower on the other. A
`PathChoice` therefore times its candidates the first time it meets a shape (a few runs each, a
few milliseconds in all), keeps the fastest for that shape for the rest of the process, and
takes the safe first candidate unless another wins by a clear margin, so timing noise on a busy
machine cannot leave a path slower than plain torch in place.

STRATALM_PATHS=name:candidate,... fixes a choice without measuring (for benchmarks and tests).
"""
from __future__ import annotations

import os
import time
from typing import Callable, Hashable, Optional, Sequence

ENVIRONMENT = "STRATALM_PATHS"


def fixed_choices() -> dict[str, str]:
    """The choices STRATALM_PATHS fixes, e.g. "linear:plain" -> {"linear": "plain"}."""
    pairs = [item.split(":", 1) for item in os.environ.get(ENVIRONMENT, "").split(",") if ":" in item]
    return {name.strip(): candidate.strip() for name, candidate in pairs}


class PathChoice:
    """Candidates by name; the first is the reference that another must beat by `margin`."""

    def __init__(self, name: str, candidates: Sequence[str], runs: int = 3, margin: float = 0.1,
                 timer: Callable[[], float] = time.perf_counter) -> None:
        self.name, self.candidates, self.runs, self.margin, self.timer = name, tuple(candidates), runs, margin, timer
        self.chosen: dict[Hashable, str] = {}
        self.timings: dict[Hashable, dict[str, float]] = {}  # seconds per candidate, for reports and tests

    def choose(self, key: Hashable, run: Callable[[str], object]) -> str:
        """The candidate for `key` (e.g. a shape); `run(candidate)` computes it once."""
        chosen = self.chosen.get(key)
        if chosen is None:
            chosen = self.chosen[key] = self._fixed() or self._measure(key, run)
        return chosen

    def _fixed(self) -> Optional[str]:
        candidate = fixed_choices().get(self.name)
        return candidate if candidate in self.candidates else None

    def _measure(self, key: Hashable, run: Callable[[str], object]) -> str:
        best = {candidate: float("inf") for candidate in self.candidates}
        for candidate in self.candidates:  # warm-up: first calls pay for allocation and code loading
            run(candidate)
        for _ in range(self.runs):  # alternate, so a burst of other work hits every candidate alike
            for candidate in self.candidates:
                start = self.timer()
                run(candidate)
                best[candidate] = min(best[candidate], self.timer() - start)
        self.timings[key] = best
        reference = self.candidates[0]
        fastest = min(best, key=best.get)
        return fastest if best[fastest] < (1 - self.margin) * best[reference] else reference

    def reset(self) -> None:
        self.chosen.clear()
        self.timings.clear()
