"""stratalm: build, pretrain, fine-tune, inspect and serve Transformer language models."""
__version__ = "0.1.0"

from .errors import StratalmError  # noqa: E402
from .model_config import ModelConfig  # noqa: E402
from .families import preset  # noqa: E402
from .io import load, save  # noqa: E402
from .generate import generate  # noqa: E402
from .embed import encode  # noqa: E402

__all__ = ["__version__", "StratalmError", "ModelConfig", "preset", "load", "save", "generate", "encode"]
