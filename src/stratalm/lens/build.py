"""What `stratalm inspect report` computes for one text: attention maps and head statistics of
every stack, and the logit lens through the family's head (or one line saying why there is none),
gathered in the data dict that report.py renders."""
from __future__ import annotations

from typing import Any, Optional

from torch import nn

from ..errors import StratalmError
from .attention import attention_maps, attention_statistics
from .logit_lens import lens_head, logit_lens, token_names
from .trace import text_inputs


def report_data(model: nn.Module, text: str, text_pair: Optional[str] = None, target: Optional[str] = None,
                source: str = "", top_k: int = 5, tuned: Optional[Any] = None) -> dict[str, Any]:
    """The report of `model` reading `text` (see report.py for the layout of the dict); `tuned`, a
    TunedLens (tuned.py) of this model, adds its KL per layer beside the logit lens's."""
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
