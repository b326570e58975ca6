"""Package attributes imported on first use (PEP 562), so that `stratalm --help` and the config
modules load without PyTorch (which alone takes seconds to import)."""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_attributes(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: name -> the submodule (relative, e.g. ".registry")
    that defines it."""
    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        return getattr(importlib.import_module(table[name], package), name)

    return __getattr__
