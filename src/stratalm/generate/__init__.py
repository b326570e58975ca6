"""Decoding: greedy, temperature sampling, top-k / top-p, streamed through a KV cache."""
from .sampling import generate, pick_next, stream_tokens

__all__ = ["generate", "pick_next", "stream_tokens"]
