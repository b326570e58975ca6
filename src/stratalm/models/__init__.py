"""Level 2: stacks of blocks and the heads on top of them."""
from .causal_lm import CausalLM
from .encoder import EncoderModel
from .output import ModelOutput
from .seq2seq import EncoderDecoderModel
from .stack import TransformerStack

__all__ = ["CausalLM", "EncoderModel", "EncoderDecoderModel", "build_model", "ModelOutput", "TransformerStack"]


def build_model(config):
    """The model class a config describes: a decoder with an LM head, an encoder with its heads,
    or an encoder-decoder."""
    classes = {"decoder": CausalLM, "encoder": EncoderModel, "encoder-decoder": EncoderDecoderModel}
    return classes[config.stack](config)
