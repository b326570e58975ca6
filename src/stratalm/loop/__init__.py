"""The one training loop (trainer.py) and what runs plug into it (recipe.py): its settings
(config.py, run_config.py), optimizer and schedule, output folder, torchrun setup, and the
pretraining recipe (pretraining.py). Fine-tuning is the other recipe, in tasks/finetune.py.
Names load on first use: the config modules need no torch."""
from __future__ import annotations

from ..lazy import lazy_attributes

__getattr__ = lazy_attributes(__name__, {
    "TrainConfig": ".config", "RunConfig": ".run_config", "build_run_config": ".run_config",
    "config_help": ".run_config", "pretrain": ".pretraining", "pretraining_loop": ".pretraining",
    "PretrainRecipe": ".pretraining", "Recipe": ".recipe", "Part": ".recipe", "Loop": ".trainer", "run": ".trainer",
})

__all__ = ["TrainConfig", "RunConfig", "build_run_config", "config_help", "pretrain", "pretraining_loop",
           "PretrainRecipe", "Recipe", "Part", "Loop", "run"]
