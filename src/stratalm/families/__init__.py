"""Families are data: each is a set of ModelConfig values (and, in later issues, a weight map)."""
from .presets import PRESETS, preset, preset_names

__all__ = ["PRESETS", "preset", "preset_names"]
