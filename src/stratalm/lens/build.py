"""What `stratalm inspect report` computes for one text: attention maps and head statistics of
every stack, and the logit lens through the family's head (or one line saying why there is none),
gathered in the data dict that report.py renders."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..errors import ConfigError, StratalmError
from .attention import attention_maps, attention_statistics
from .logit_lens import lens_head, logit_lens, token_names
from .trace import TextInputs, patching_sweep, text_inputs


def report_data(model: nn.Module, text: str, text_pair: Optional[str] = None, target: Optional[str] = None,
                source: str = "", top_k: int = 5, tuned: Optional[Any] = None,
                patch_from: Optional[str] = None) -> dict[str, Any]:
    """The report of `model` reading `text` (see report.py for the layout of the dict); `tuned`, a
    TunedLens (tuned.py) of this model, adds its KL per layer beside the logit lens's; `patch_from`,
    another text of the same length in tokens, adds a patching heat map (patching_heatmap)."""
    config = model.config
    inputs = text_inputs(model, text, text_pair, target)
    maps = attention_maps(model, inputs)
    data: dict[str, Any] = {
        "title": f"stratalm lens: {config.family} {config.stack}" + (f" ({source})" if source else ""),
        "model": {"family": config.family, "stack": config.stack, "layers": config.n_layers, "heads": config.n_heads,
                  "d_model": config.d_model, "source": source},
        "text": text, "text_pair": text_pair, "tokens": inputs.tokens, "attention": maps,
        "head_stats": attention_statistics(model, inputs, maps), "notes": [],
    }
    if patch_from is not None:
        data["patching"] = patching_heatmap(model, inputs, text_inputs(model, patch_from, text_pair, target))
    if config.stack == "encoder-decoder":
        data["notes"].append(f"the decoder reads {'the target' if target is not None else 'the text itself'} "
                             f"after its start token (teacher forcing).")
    try:
        head = lens_head(model)
    except StratalmError as exc:
        data["logit_lens"] = {"unavailable": f"no logit lens: {exc}"}
        return data
    lens = logit_lens(model, inputs, k=top_k)
    data["logit_lens"] = {
        "stack": head.prefix.rstrip(".") or "stack", "top_tokens": token_names(model, head, lens["top_ids"]),
        "top_probs": lens["top_probs"], "final_rank": lens["final_rank"] + 1,  # the page counts 1 as the top
        "final_prob": lens["final_prob"],
        "kl": lens["kl"],
    }
    if tuned is not None:
        tuned.check(model)
        data["logit_lens"]["tuned_kl"] = logit_lens(model, inputs, k=top_k, translators=tuned.translators)["kl"]
    if head.classes is not None:
        data["notes"].append("the lens reads the replaced-token head: each cell is original or replaced.")
    return data


def patching_heatmap(model: nn.Module, clean: TextInputs, source: TextInputs) -> dict[str, Any]:
    """Activation patching over (layer, position): the log-probability of the clean run's final
    prediction (at the last position) when one position's residual stream entering one layer comes
    from the `source` text instead."""
    first_stack = next(iter(clean.ids))
    if len(clean.ids[first_stack]) != len(source.ids[first_stack]):
        raise ConfigError(f"patching needs texts of the same length in tokens; they have {len(clean.ids[first_stack])} "
                          f"and {len(source.ids[first_stack])}.")
    with torch.no_grad():
        last = _last_logits(model(**clean.inputs))
    target = int(last.argmax())

    def metric(outputs) -> float:
        return float(_last_logits(outputs).log_softmax(-1)[target])

    stack = "encoder." if model.config.stack == "encoder-decoder" else ""
    sweep = patching_sweep(model, clean, source, metric, over="position", point="resid_pre", stack=stack)
    names = clean.tokens[first_stack]
    return {"title": f"patching the residual stream from the other text (clean {sweep.clean:.3f}, "
                     f"source {sweep.source:.3f})",
            "metric": "log-probability of the clean prediction at the last position",
            "rows": sweep.rows, "cols": [f"{i}:{t}" for i, t in enumerate(names)], "values": sweep.values}


def _last_logits(outputs) -> torch.Tensor:
    """The output scores of the first example's last position (or of the example, for a classifier)."""
    logits = outputs.logits[0]
    return logits[-1].float() if logits.dim() == 2 else logits.float()
