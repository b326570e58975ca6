"""`stratalm serve`: the OpenAI-compatible HTTP server (needs the `serve` extra)."""
from __future__ import annotations

import argparse

SHUTDOWN_GRACE_S = 10  # on SIGTERM, running streams get this long to finish before they are cancelled


def _serve(args: argparse.Namespace) -> None:
    from ..errors import ConfigError

    try:
        import uvicorn

        from ..serve import ServeOptions, build_app, load_models
    except ImportError as exc:
        raise ConfigError(f"serving needs the serve extra ({exc.name} is missing): pip install 'stratalm[serve]'.") from None
    from ..generate import choose_device

    for flag, value in (("--max-queue", args.max_queue), ("--max-concurrency", args.max_concurrency)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1; got {value}.")
    if not args.timeout > 0:
        raise ConfigError(f"--timeout must be above 0 seconds; got {args.timeout}.")
    served = load_models(args.models, args.name or (), args.chat_template, choose_device(args.device))
    options = ServeOptions(api_key=args.api_key, max_queue=args.max_queue, max_concurrency=args.max_concurrency,
                           timeout=args.timeout)
    app = build_app(served, options)
    print(f"serving {', '.join(served)} on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=SHUTDOWN_GRACE_S)


def add_parsers(sub) -> None:
    p = sub.add_parser("serve", help="serve models over an OpenAI-compatible HTTP API, with a playground page",
                       description="Serve one or more checkpoint folders over HTTP: /v1/completions and "
                                   "/v1/chat/completions (decoders; T5 completions as text-to-text), /v1/embeddings "
                                   "(encoders), /v1/models, /tokenize, /detokenize, /health, /metrics, and a "
                                   "playground page at /. Requests pick a model with their 'model' field.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="checkpoint folders (stratalm or Hugging Face)")
    p.add_argument("--name", action="append", metavar="NAME",
                   help="the name clients use for each MODEL, in order (default: the folder's name); repeatable")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on the API (what the openai client sends)")
    p.add_argument("--max-queue", type=int, default=64, metavar="N",
                   help="sequences that may wait per model; a request beyond that gets 429")
    p.add_argument("--max-concurrency", type=int, default=16, metavar="N",
                   help="sequences decoded together per model (continuous batching)")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                   help="a request still running after this long is cancelled and answered 408")
    p.add_argument("--chat-template", default=None, metavar="FILE",
                   help="jinja2 chat template for every decoder (default: chat_template of tokenizer_config.json)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=_serve)
