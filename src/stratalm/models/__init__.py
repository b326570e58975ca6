"""Level 2: stacks of blocks and the heads on top of them."""
from .causal_lm import CausalLM
from .encoder import EncoderModel
from .output import ModelOutput
from .stack import TransformerStack

__all__ = ["CausalLM", "EncoderModel", "build_model", "ModelOutput", "TransformerStack"]


def build_model(config):
    """The model class a config describes: a decoder with an LM head, or an encoder with its heads."""
    return EncoderModel(config) if config.stack == "encoder" else CausalLM(config)
