"""stratalm: build, pretrain, fine-tune, inspect and serve Transformer language models.

The names below load on first use, so `import stratalm` (and the `stratalm` command's --help) does
not pay for importing PyTorch until a model is needed."""
import sys
import types

from .errors import StratalmError
from .lazy import lazy_attributes
from .version import __version__

__getattr__ = lazy_attributes(__name__, {
    "ModelConfig": ".model_config", "preset": ".families", "load": ".checkpoint", "save": ".checkpoint",
    "encode": ".embed", "fill_mask": ".generate",
})


class _Package(types.ModuleType):
    """`stratalm.generate` is the function, though the subpackage that defines it has the same name:
    a property outranks the attribute the import system sets on the package for the subpackage."""

    @property
    def generate(self):
        from .generate import generate

        return generate

    @generate.setter
    def generate(self, _subpackage) -> None:
        """Ignore the import system's assignment of the subpackage: it stays reachable as
        sys.modules["stratalm.generate"] and by `from stratalm.generate import ...`."""


sys.modules[__name__].__class__ = _Package

__all__ = ["__version__", "StratalmError", "ModelConfig", "preset", "load", "save", "generate", "fill_mask", "encode"]
