"""Decoding: greedy, temperature sampling, top-k / top-p, streamed through a KV cache; batched
greedy and beam search for decoders and encoder-decoders."""
from .beam import Hypothesis, beam_search, greedy_search
from .sampling import generate, pick_next, stream_tokens

__all__ = ["generate", "pick_next", "stream_tokens", "beam_search", "greedy_search", "Hypothesis"]
