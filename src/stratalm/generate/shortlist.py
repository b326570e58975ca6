"""Greedy decoding's next token from a shortlist: the head read in int8 first, and exact float32
logits only for the few tokens that can still be the largest.

At temperature 0 a decoding step needs one fact from the head: which logit is largest. The head is
the largest matrix of a small model (77 of the 119 MB a step of a 6 x 384 GPT-2 with its 50,304
tokens reads), and a step is bound by reading the weights, so a first pass reads an int8 copy of it
(a quarter of the bytes, kept beside the model) and rules out every token that cannot win:

- each row j of the head W is stored as q_j = round(W_j / s_j) with s_j = max_k |W_jk| / 127, so
  |W_jk - s_j q_jk| <= s_j / 2 and the first pass's logit a_j = s_j q_j . h lies within
  s_j ||h||_1 / 2 of the float32 logit W_j . h, give or take the float32 rounding of the two sums
  (each within in_features * 2^-24 of the sum of |terms| <= 127 s_j ||h||_1): within e_j = SLACK s_j ||h||_1;
- a token whose a_j + e_j is below max_i (a_i - e_i) has a logit below another token's, so it is
  not the argmax; the others (a handful) get their float32 logits from the real weights, and every
  other logit is -inf. The argmax is the argmax of the full logits, ties too (a token tied with
  the largest passes the same test), so decoding gives the same tokens; only two logits closer than
  float32 rounding can come out in either order, as between any two of layers/linear.py's paths.

Whether this is faster depends on the machine (the int8 pass is compute-bound at 8 rows here), so
decoding times it against the full head once its linear path is chosen (HEAD_CHOICE), and it is
a candidate only for a CausalLM on the CPU in float32 whose head is a plain bias-free layers.Linear
without a logit soft-cap, where the compiled kernels run (layers/native.py). The int8 copy is made
again when the head's weights change (training between generations).
"""
from __future__ import annotations

import weakref
from typing import Callable, Hashable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Linear, native
from ..layers.linear import STEP_CHOICE, run_step
from ..layers.path_choice import PathChoice
from ..models import CausalLM

# "full" (the reference) first; "shortlist" only where the kernels run.
HEAD_CHOICE = PathChoice("greedy_head", ("full", "shortlist"),
                         available=lambda candidate: candidate == "full" or native.available())
QUANTIZE_ROWS = 4096
MOST_CANDIDATES = 1 / 16  # of the vocabulary: beyond it the full head costs less than the shortlist
_SHORTLISTS: "weakref.WeakKeyDictionary[nn.Module, Shortlist]" = weakref.WeakKeyDictionary()


class Shortlist:
    """The int8 copy of a head's weight, and the float32 logits of the tokens that can be largest."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight, self.made_from = weight, (weight.data_ptr(), weight._version)
        with torch.no_grad():
            w = weight.detach()
            self.scale = torch.empty(w.shape[0], dtype=torch.float32)
            self.quantized = torch.empty(w.shape, dtype=torch.int8)
            for start in range(0, w.shape[0], QUANTIZE_ROWS):  # in slices: no float copy of the whole head
                rows = slice(start, start + QUANTIZE_ROWS)
                self.scale[rows] = w[rows].abs().amax(dim=1) / 127
                divisor = torch.where(self.scale[rows] > 0, self.scale[rows], 1.0)[:, None]
                self.quantized[rows] = torch.round(w[rows] / divisor).clamp_(-127, 127)
        # 1/2 for the rounding to int8; twice the float32 rounding of both sums; a margin on top.
        self.slack = 0.5 + 4 * 127 * weight.shape[1] * 2.0 ** -24 + 1e-3

    def current(self, weight: torch.Tensor) -> bool:
        return weight is self.weight and (weight.data_ptr(), weight._version) == self.made_from

    def logits(self, hidden: torch.Tensor) -> Optional[torch.Tensor]:
        """(B, V) logits of `hidden` (B, C): float32 where a token can be the largest, -inf
        elsewhere; None when the shortlist is too long to gain (or `hidden` is not finite)."""
        if hidden.dtype != torch.float32:
            return None
        hidden = hidden.contiguous()
        first = native.int8_rows_linear(hidden, self.quantized, self.scale)  # (B, V)
        reach = self.scale * (self.slack * hidden.abs().sum(dim=-1, keepdim=True))  # (B, V): each a_j's e_j
        floor = (first - reach).amax(dim=-1, keepdim=True)  # (B, 1): below this no token can be largest
        if not bool(torch.isfinite(floor).all()):
            return None
        candidates = first + reach >= floor  # (B, V)
        union = candidates.any(dim=0).nonzero().squeeze(1)  # (U,) ascending, as the argmax breaks ties
        if union.numel() > MOST_CANDIDATES * first.shape[1]:
            return None
        exact = F.linear(hidden, self.weight[union])  # (B, U)
        logits = torch.full_like(first, float("-inf"))
        logits[:, union] = exact.masked_fill(~candidates[:, union], float("-inf"))
        return logits


def can_shortlist(model: nn.Module) -> bool:
    """Whether greedy decoding of `model` may take its next token from a shortlist: a CausalLM
    (whose logits are its head applied to its stack's output) with a plain bias-free float32 head
    on the CPU, no autocast (the full head's logits would be bf16 ones) and no soft-cap (tanh can
    tie logits that were not tied), where the kernels run."""
    head = getattr(model, "lm_head", None)
    return (isinstance(model, CausalLM) and type(head) is Linear and head.bias is None
            and model.config.logit_softcap <= 0 and head.weight.device.type == "cpu"
            and head.weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and "shortlist" in HEAD_CHOICE.candidates)


def shortlist_for(model: nn.Module) -> Optional[Shortlist]:
    """The model's shortlist, or None where it cannot have one (see can_shortlist)."""
    return _current_shortlist(model) if can_shortlist(model) else None


def _current_shortlist(model: nn.Module) -> Shortlist:
    """The shortlist of a model that can_shortlist: made now, or again when its head changed."""
    weight = model.lm_head.weight
    shortlist = _SHORTLISTS.get(model)
    if shortlist is None or not shortlist.current(weight):
        shortlist = _SHORTLISTS[model] = Shortlist(weight)
    return shortlist


def greedy_step(key: Hashable, model: nn.Module, full_step: Callable[[], torch.Tensor],
                hidden_step: Callable[[], torch.Tensor]) -> torch.Tensor:
    """One decoding step's logits for greedy decoding of a model that can_shortlist: `full_step`
    gives the (B, V) logits, `hidden_step` the (B, C) last hidden states for the shortlist. The
    linear path is chosen first (on full steps, as other decoding does), then the head's; the int8
    copy is made only when the shortlist first runs."""
    if not STEP_CHOICE.is_chosen(key):
        return run_step(key, full_step, model)

    def shortlisted() -> torch.Tensor:
        hidden = hidden_step()
        logits = _current_shortlist(model).logits(hidden)  # eligibility was checked before decoding
        return logits if logits is not None else model.lm_head(hidden)

    return HEAD_CHOICE.call_in_turn(key, {"full": lambda: run_step(key, full_step, model),
                                          "shortlist": lambda: run_step(key, shortlisted, model)})
