"""Choose between computations that give the same numbers by timing them here, in real use.

Which kernel is fastest depends on the machine more than on the code: MKL's few-row product is
slow on AMD CPUs and fast on Intel's, so a path tuned on one can be 2-3x slower on the other. And
timing a kernel alone misleads: on an AMD EPYC (AVX2, 2 threads) the block matrices of a GPT-2
timed one by one at one row favoured F.linear 2:1, hot or with the caches evicted, yet run in
sequence, as decoding runs them, the other path was faster (9.2 against 10.8 ms for the 24) and
decoding with it ran at 69 tokens/s against 45; even each call timed in place, inside real
decoding, still favoured F.linear for three of the four block shapes. So a `PathChoice` times work
at the level that decides, and keeps the fastest (by its best time) for the rest of the process.
Decoding chooses whole steps (layers/linear.py's run_step: every product of a step on one path,
21.6 against 25.5 ms a step there), its first steps taking the paths in turn; single products
(prefill, encoders, beams) choose per shape, timing both paths on the first call's inputs before
answering, so a model gives equal outputs for equal inputs from its first call on. The first candidate is the safe
reference, which another must beat by `margin`, so timing noise on a busy machine cannot leave a
path slower than plain torch in place.

STRATALM_PATHS=name:candidate,... fixes a choice without measuring (for benchmarks and tests).
"""
from __future__ import annotations

import os
import time
from typing import Callable, Hashable, Mapping, Optional, Sequence, TypeVar

ENVIRONMENT = "STRATALM_PATHS"
T = TypeVar("T")


def fixed_choices() -> dict[str, str]:
    """The choices STRATALM_PATHS fixes, e.g. "linear:plain" -> {"linear": "plain"}."""
    pairs = [item.split(":", 1) for item in os.environ.get(ENVIRONMENT, "").split(",") if ":" in item]
    return {name.strip(): candidate.strip() for name, candidate in pairs}


class PathChoice:
    """Candidates by name; `trials` timed calls of each per key before the choice is made."""

    def __init__(self, name: str, candidates: Sequence[str], trials: int = 4, margin: float = 0.1,
                 timer: Callable[[], float] = time.perf_counter,
                 available: Optional[Callable[[str], bool]] = None) -> None:
        """`available`, if given, says on first use which candidates can run here at all (a
        compiled kernel may not build); the others are never timed."""
        self.name, self.trials, self.margin, self.timer = name, trials, margin, timer
        self._all, self._available, self._candidates = tuple(candidates), available, None
        self.chosen: dict[Hashable, str] = {}
        self.timings: dict[Hashable, dict[str, list[float]]] = {}  # seconds of each timed call, for reports and tests

    @property
    def candidates(self) -> tuple[str, ...]:
        if self._candidates is None:
            self._candidates = tuple(c for c in self._all if self._available is None or self._available(c))
        return self._candidates

    def call(self, key: Hashable, paths: Mapping[str, Callable[[], T]]) -> T:
        """Compute by the path chosen for `key` (e.g. a shape). The first call times every
        candidate on these very inputs (`trials` runs each, in turn) before it answers, so every
        answer, the first one too, comes from the same path: equal inputs give equal outputs."""
        chosen = self._chosen(key)
        if chosen is None:
            for _ in range(self.trials):
                for candidate in self.candidates:
                    self._timed(key, candidate, paths[candidate])
            chosen = self.chosen[key] = self._pick(self.timings[key])
        return paths[chosen]()

    def call_in_turn(self, key: Hashable, paths: Mapping[str, Callable[[], T]]) -> T:
        """Like `call`, for work that cannot run twice (a decoding step grows its cache): the
        first calls of `key` take the candidates in turn (`upcoming` says which), each timed where
        it runs, and then the fastest is kept. Those first answers come from different paths, which
        agree to rounding."""
        chosen = self._chosen(key)
        if chosen is not None:
            return paths[chosen]()
        times = self.timings.setdefault(key, {candidate: [] for candidate in self.candidates})
        done = sum(len(t) for t in times.values())
        candidate = self.upcoming(key)
        out = self._timed(key, candidate, paths[candidate])
        if done + 1 == self.trials * len(self.candidates):
            self.chosen[key] = self._pick(times)
        return out

    def is_chosen(self, key: Hashable) -> bool:
        """Whether `key` has its path (measured, or fixed by STRATALM_PATHS)."""
        return self._chosen(key) is not None

    def upcoming(self, key: Hashable) -> str:
        """The candidate the next `call_in_turn` of `key` runs: the chosen one, or while timing, each
        candidate `trials` times in a row (a candidate that must set something up first, such as
        a weight layout, then pays for it once rather than on every turn)."""
        chosen = self._chosen(key)
        if chosen is not None:
            return chosen
        done = sum(len(t) for t in self.timings.get(key, {}).values())
        return self.candidates[min(done // self.trials, len(self.candidates) - 1)]

    def _chosen(self, key: Hashable) -> Optional[str]:
        chosen = self.chosen.get(key)
        if chosen is None:
            chosen = self._fixed()
            if chosen is not None:
                self.chosen[key] = chosen
        return chosen

    def _timed(self, key: Hashable, candidate: str, run: Callable[[], T]) -> T:
        start = self.timer()
        out = run()
        self.timings.setdefault(key, {c: [] for c in self.candidates})[candidate].append(self.timer() - start)
        return out

    def _fixed(self) -> Optional[str]:
        candidate = fixed_choices().get(self.name)
        return candidate if candidate in self.candidates else None

    def _pick(self, times: dict[str, list[float]]) -> str:
        best = {candidate: min(t) for candidate, t in times.items()}  # the best run: noise only adds time
        reference = self.candidates[0]
        fastest = min(best, key=best.get)
        return fastest if best[fastest] < (1 - self.margin) * best[reference] else reference

    def reset(self) -> None:
        self.chosen.clear()
        self.timings.clear()
