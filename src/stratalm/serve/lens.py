"""/lens: the logit lens of one prompt, for the playground's lens view.

What each layer would predict if the model stopped there (lens/logit_lens.py): for every depth
(the embedding output, then each block) and every position, the k most likely tokens and their
probabilities, and KL(final || depth). Decoders read through their LM head, encoders through their
MLM (or replaced-token) head, T5 through its decoder (fed the prompt itself as the target), as
`stratalm lens` does."""
from __future__ import annotations

import torch

from ..errors import StratalmError
from ..lens.logit_lens import lens_head, logit_lens, token_names
from ..lens.trace import text_inputs
from .errors import bad_request
from .schemas import LensRequest
from .served import ServedModel


@torch.inference_mode()
def lens(served: ServedModel, req: LensRequest) -> dict:
    """The response body (runs in a worker thread; holds the model's lock while its hooks are on)."""
    model = served.model
    try:
        inputs = text_inputs(model, req.prompt)
        head = lens_head(model)
    except StratalmError as exc:  # too long, no tokens, no head to read through: the client's to fix
        raise bad_request(str(exc), "prompt") from None
    with served.lock:
        seen = logit_lens(model, inputs, k=req.top)
    n_layers = seen["top_ids"].shape[0] - 1
    names = token_names(model, head, seen["top_ids"])  # (L+1, T, k) nested lists
    probs = seen["top_probs"].tolist()
    return {
        "model": served.name,
        "tokens": inputs.tokens["decoder" if head.prefix == "decoder." else "stack"],  # the stack the lens reads
        "depths": ["embeddings"] + [f"block {i}" for i in range(n_layers)],
        "top": [[[[name, round(p, 5)] for name, p in zip(n_pos, p_pos)] for n_pos, p_pos in zip(n_depth, p_depth)]
                for n_depth, p_depth in zip(names, probs)],
        "kl": [[round(v, 5) for v in row] for row in seen["kl"].tolist()],
    }
