"""Level 2: stacks of blocks and the heads on top of them."""
from .causal_lm import CausalLM
from .output import ModelOutput
from .stack import TransformerStack

__all__ = ["CausalLM", "ModelOutput", "TransformerStack"]
