"""Decoding: greedy, temperature sampling, top-k / top-p, streamed through a KV cache; batched
greedy and beam search for decoders and encoder-decoders; `generate` (text in, text out, with stop
strings, a repetition penalty and several samples) and `fill_mask` (a masked-LM encoder's guesses
for each [MASK])."""
from .beam import Hypothesis, beam_search, greedy_search
from .fill_mask import fill_mask
from .sampling import penalize_repeats, pick_next, stream_tokens
from .text import check_generation_options, choose_device, generate

__all__ = ["generate", "fill_mask", "pick_next", "stream_tokens", "penalize_repeats", "beam_search", "greedy_search",
           "Hypothesis", "check_generation_options", "choose_device"]
