"""The OpenAI-compatible HTTP server (`stratalm serve`): several models in one process, routed by
the request's `model` field. Decoders answer completions and chat, encoders embeddings, T5
completions as text-to-text. FastAPI and uvicorn do the HTTP work (the `serve` extra); this
package holds what is ours: the request contract (schemas.py, errors.py), the continuous-batching
engine (engine.py, slots.py), the chat template (chat_template.py), the responses (completions.py,
embeddings.py), metrics (metrics.py) and the playground page (playground.html)."""
from .app import ServeOptions, build_app
from .served import ServedModel, load_models

__all__ = ["build_app", "ServeOptions", "ServedModel", "load_models"]
