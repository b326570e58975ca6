"""What a fine-tuning run is configured by: the task, data and model, partial updates and LoRA,
and the loop's knobs in the `loop` section (the same TrainConfig as pretraining's `train` section,
with fine-tuning's defaults). YAML files and `key=value` overrides fill it in, as for pretraining.
No torch here, so `stratalm finetune --help` is instant."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from ..config_fields import (FINETUNING_RUN, above, above_up_to, at_least, check_output_folder, describe, field_help,
                             load_yaml, merge_nested, one_of, setting, update_dataclass, within)
from ..loop.config import MAY_CHANGE_ON_RESUME, TrainConfig

# The loop's defaults for fine-tuning (BERT's recipe): AdamW at 5e-5 with beta2 0.999, 10% warmup,
# cosine decay to 0; max_steps 0 means "as many as `epochs` takes"; evaluate at each epoch's end.
FINETUNE_LOOP = TrainConfig(max_steps=0, batch_size=32, lr=5e-5, min_lr=0.0, warmup_steps=0.1, weight_decay=0.01,
                            beta2=0.999, eval_every=0, eval_batch_size=64, seed=42)
# LoRA's own default learning rate, used when a LoRA run sets none: the adapters start at zero and
# are few, so they need a far larger step than full fine-tuning's 5e-5, at which a short LoRA run
# stays at chance. Hu et al. 2021 (LoRA, Table 9: RoBERTa-base on GLUE, rank 8) used 4e-4 to 5e-4
# over 30-80 epochs. On SST-2 with all-MiniLM-L6-v2 (rank 8 on q,v, 250 steps of 32: README) 1e-3
# reached dev accuracy 0.822 and 5e-4 0.809, so a short run gets the larger step.
LORA_LR = 1e-3
# Settings a resumed run may change; every other one must match the saved run.
MAY_CHANGE = ("epochs",)
LOOP_MAY_CHANGE = MAY_CHANGE_ON_RESUME  # the loop's own list, the same as pretraining's


def finetune_loop(**changes: Any) -> TrainConfig:
    """The fine-tuning loop settings with `changes` (e.g. lr=3e-3, batch_size=16)."""
    return dataclasses.replace(FINETUNE_LOOP, **changes)


@dataclass(frozen=True)
class FinetuneConfig:
    task: str = setting("classification", "the task (stratalm.tasks.task_names())")
    model: str = setting("", "pretrained model folder (stratalm or Hugging Face), or for seq2seq a preset name with tokenizer_from_train")
    train: str = setting("", "training data file")
    dev: Optional[str] = setting(None, "dev data file: evaluated every loop.eval_every steps; its best score picks the weights kept")
    out: str = setting("", "output folder")
    task_options: dict = setting({}, "the task's own options (see `stratalm finetune --help`), e.g. task_options.text_column")
    epochs: float = setting(3.0, "passes over the training data (fractions allowed); loop.max_steps > 0 overrides it", above(0))
    max_length: int = setting(128, "tokens per input (longer inputs are truncated; at most the model's context)", at_least(2))
    max_train_examples: int = setting(0, "use only the first N training examples (0 = all)", at_least(0))
    best_metric: Optional[str] = setting(None, "dev metric that picks the weights kept (None = the task's main metric)")
    train_only: Optional[str] = setting(None, "'head': train only the task head", one_of("head"))
    freeze_embeddings: bool = setting(False, "keep the embeddings fixed")
    freeze_layers: int = setting(0, "keep the lowest N blocks fixed", at_least(0))
    layer_decay: Optional[float] = setting(None, "layer-wise learning-rate decay factor (head lr, top block lr*F, ...)", above_up_to(0, 1))
    lora_rank: int = setting(0, f"LoRA rank (0 = no LoRA: full fine-tuning); with LoRA, loop.lr defaults to {LORA_LR:g}", at_least(0))
    lora_alpha: float = setting(16.0, "LoRA alpha (the update is scaled by alpha / rank)", above(0))
    lora_dropout: float = setting(0.0, "dropout on the LoRA branch's input", within(0, 1))
    lora_targets: str = setting("q,v", "comma-separated projections to adapt: q,k,v,o,gate,up,down")
    merge_lora: bool = setting(False, "save the LoRA adapters merged into the weights")
    lora_copy_base: bool = setting(False, "keep a copy of the base weights in a LoRA folder (default: the folder "
                                          "refers to the base by path and sha256, and stores only what training changed)")
    loop: TrainConfig = field(default_factory=lambda: FINETUNE_LOOP,
                              metadata={"help": "the training loop (eval_every 0 = at the end of each epoch; "
                                                "save_every: resume checkpoints besides those at each evaluation)"})

    def lora(self):
        """The LoRA settings (a models.lora.LoraConfig), or None for full fine-tuning."""
        if not self.lora_rank:
            return None
        from ..models.lora import LoraConfig  # torch, only when a run starts

        return LoraConfig(self.lora_rank, self.lora_alpha, self.lora_dropout, LoraConfig.parse_targets(self.lora_targets))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_finetune_config(yaml_path: Optional[str], overrides: dict[str, Any]) -> FinetuneConfig:
    """Defaults <- YAML file <- command-line overrides (nested dicts), as for pretraining. A LoRA
    run that sets no learning rate gets LORA_LR."""
    values = merge_nested(load_yaml(yaml_path) if yaml_path else {}, overrides)
    cfg = update_dataclass(FinetuneConfig(), values)
    if cfg.out:
        check_output_folder(cfg.out, FINETUNING_RUN)
    loop_values = values.get("loop")
    if cfg.lora_rank and not (isinstance(loop_values, dict) and "lr" in loop_values):
        cfg = dataclasses.replace(cfg, loop=dataclasses.replace(cfg.loop, lr=LORA_LR))
    return cfg


def finetune_field_help(key: str) -> str:
    """The help of config key `key` (e.g. "loop.lr") as `stratalm finetune --help` shows it."""
    text = field_help(FinetuneConfig(), key)
    return text + (f"; with --lora-rank, {LORA_LR:g} unless given" if key == "loop.lr" else "")


def finetune_config_help() -> str:
    lines = ["config keys (set in --config FILE.yaml or as key=value; the flags above set the same keys;",
             f"a LoRA run that sets no loop.lr trains at {LORA_LR:g}, LoRA's default):"]
    return "\n".join(lines + describe(FinetuneConfig()))
