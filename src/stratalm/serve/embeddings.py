"""/v1/embeddings: texts through `stratalm.embed.encode` (pooled as the model was trained), token
arrays through the same pooling; vectors as floats or little-endian float32 in base64 (as OpenAI)."""
from __future__ import annotations

import base64

import torch

from ..embed import encode, pool
from .errors import bad_request
from .schemas import EmbeddingRequest
from .served import ServedModel

MAX_INPUTS = 2048


def _inputs(req: EmbeddingRequest) -> list:
    x = req.input
    items = [x] if isinstance(x, str) or (x and isinstance(x[0], int)) else list(x)
    if not items:
        raise bad_request("'input' cannot be empty.", "input")
    if len(items) > MAX_INPUTS:
        raise bad_request(f"'input' takes at most {MAX_INPUTS} items; got {len(items)}.", "input")
    if any(len(item) == 0 for item in items):
        raise bad_request("'input' cannot hold an empty string or token array.", "input")
    return items


@torch.inference_mode()
def _embed_ids(served: ServedModel, ids: list[int]) -> torch.Tensor:
    model, context = served.model, served.context
    if len(ids) > context:
        raise bad_request(f"this model's maximum context length is {context} tokens, but an input has {len(ids)} "
                          "tokens; shorten it.", "input", "context_length_exceeded")
    device = next(model.parameters()).device
    batch = torch.tensor([ids], device=device)
    mask = torch.ones_like(batch)
    return pool(model(batch, attention_mask=mask).last_hidden_state, mask, served.pooling)[0].float().cpu()


def embed(served: ServedModel, req: EmbeddingRequest) -> dict:
    """The response body (runs in a worker thread: the model call blocks)."""
    if served.kind != "encoder":
        raise bad_request(f"model '{served.name}' is a {served.kind}; embeddings come from encoder models.", "model")
    width = served.model.config.d_model
    if req.dimensions is not None and req.dimensions != width:
        raise bad_request(f"this model's embeddings have {width} dimensions and cannot be shortened; "
                          f"drop 'dimensions' or set it to {width}.", "dimensions")
    items = _inputs(req)
    texts = [i for i, item in enumerate(items) if isinstance(item, str)]
    vectors: list = [None] * len(items)
    if texts:
        for i, vector in zip(texts, encode(served.model, [items[i] for i in texts], pooling=served.pooling)):
            vectors[i] = vector
    tokenizer, n_tokens = served.tokenizer, 0
    for i, item in enumerate(items):
        if isinstance(item, str):
            n_tokens += min(len(tokenizer.encode(item, add_special_tokens=True)), served.context)
        else:
            vectors[i] = _embed_ids(served, item)
            n_tokens += len(item)
    data = [{"object": "embedding", "index": i, "embedding": _format(v, req.encoding_format)}
            for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": served.name,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}


def _format(vector: torch.Tensor, encoding: str):
    if encoding == "base64":
        return base64.b64encode(vector.numpy().astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()
