"""Level 1: the pieces every Transformer is made of. Each module imports nothing above this level."""
from .attention import Attention, KVCache
from .block import Block
from .feedforward import FeedForward
from .linear import Linear
from .norms import make_norm
from .positions import AbsolutePositions, RelativePositionBias, RotaryEmbedding

__all__ = ["Attention", "KVCache", "Block", "FeedForward", "Linear", "make_norm", "AbsolutePositions", "RelativePositionBias", "RotaryEmbedding"]
