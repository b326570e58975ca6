"""The FastAPI app: routes, the API key, the body-size limit, and the engines' lifetime.

Blocking work (a decode step, an embedding batch) never runs on the event loop: decoders run in
their engine's thread, embeddings in Starlette's worker threads."""
from __future__ import annotations

import hmac
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Optional

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from .completions import chat, chat_prompt, complete
from .embeddings import embed
from .engine import engine_for
from .lens import lens
from .errors import APIError, bad_request, install_error_handlers
from .metrics import CONTENT_TYPE, Metrics
from .schemas import ChatRequest, CompletionRequest, DetokenizeRequest, EmbeddingRequest, LensRequest, TokenizeRequest
from .served import ServedModel


@dataclass
class ServeOptions:
    api_key: Optional[str] = None  # clients send `Authorization: Bearer <key>` (what the openai SDK sends)
    max_queue: int = 64  # sequences waiting per model before a 429
    max_concurrency: int = 16  # sequences decoded together per model (the running batch)
    timeout: float = 600.0  # seconds a request may take before a 408
    max_body_bytes: int = 4 * 1024 * 1024


def build_app(served: dict[str, ServedModel], options: Optional[ServeOptions] = None) -> FastAPI:
    options = options or ServeOptions()
    metrics = Metrics()
    engines = {name: engine_for(s.model, max_concurrency=options.max_concurrency, max_queue=options.max_queue,
                                metrics=metrics, name=name, lock=s.lock) for name, s in served.items()}

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        for engine in engines.values():  # SIGTERM: uvicorn has let running streams finish (or cancelled them)
            if engine is not None:
                engine.stop()

    app = FastAPI(title="stratalm", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.served, app.state.engines, app.state.metrics = served, engines, metrics
    install_error_handlers(app)

    @app.middleware("http")
    async def limit_and_count(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > options.max_body_bytes:
            response = APIError(413, f"the request body is {size} bytes; this server takes at most "
                                     f"{options.max_body_bytes}.", code="body_too_large").response()
        else:
            response = await call_next(request)
        metrics.requests.labels(request.url.path, str(response.status_code)).inc()
        return response

    async def authorized(request: Request) -> None:
        if options.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), options.api_key.encode()):
            raise APIError(401, "missing or wrong API key; send 'Authorization: Bearer <key>'.", code="invalid_api_key")

    def model_named(name: str, *kinds: str) -> ServedModel:
        if name not in served:
            raise bad_request(f"unknown model '{name}'; this server has: {', '.join(served)}.", "model",
                              "model_not_found")
        model = served[name]
        if kinds and model.kind not in kinds:
            raise bad_request(f"model '{name}' is a {model.kind} model; this endpoint needs a "
                              f"{' or '.join(kinds)} model.", "model")
        return model

    api = [Depends(authorized)]

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        return (resources.files(__package__) / "playground.html").read_text(encoding="utf-8")

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(served)}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", dependencies=api)
    async def list_models():
        return {"object": "list", "data": [s.card() for s in served.values()]}

    @app.get("/v1/models/{name:path}", dependencies=api)
    async def one_model(name: str):
        return model_named(name).card()

    @app.post("/v1/completions", dependencies=api)
    async def completions(req: CompletionRequest, request: Request):
        model = model_named(req.model, "decoder", "encoder-decoder")
        return await complete(model, engines[req.model], req, request, options.timeout)

    @app.post("/v1/chat/completions", dependencies=api)
    async def chat_completions(req: ChatRequest, request: Request):
        model = model_named(req.model, "decoder")
        return await chat(model, engines[req.model], req, request, options.timeout)

    @app.post("/v1/embeddings", dependencies=api)
    async def embeddings(req: EmbeddingRequest):
        model = model_named(req.model, "encoder")

        def embed_alone() -> dict:
            with model.lock:  # one forward at a time (ServedModel.lock)
                return embed(model, req)

        return await run_in_threadpool(embed_alone)

    @app.post("/lens", dependencies=api)
    async def logit_lens(req: LensRequest):
        return await run_in_threadpool(lens, model_named(req.model), req)

    @app.post("/tokenize", dependencies=api)
    async def tokenize(req: TokenizeRequest):
        model = model_named(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise bad_request("give exactly one of 'prompt' or 'messages'.", "prompt")
        if req.messages is not None:
            ids = chat_prompt(model, ChatRequest(model=req.model, messages=req.messages))
        else:
            ids = model.tokenizer.encode(req.prompt)
        return {"tokens": ids, "count": len(ids), "max_model_len": model.context}

    @app.post("/detokenize", dependencies=api)
    async def detokenize(req: DetokenizeRequest):
        model = model_named(req.model)
        vocab = model.model.config.vocab_size
        if any(not 0 <= t < vocab for t in req.tokens):
            raise bad_request(f"a token id is outside the vocabulary (0 to {vocab - 1}).", "tokens")
        return {"prompt": model.tokenizer.decode(req.tokens)}

    return app


__all__ = ["build_app", "ServeOptions"]
