"""`stratalm chat MODEL`: a conversation in the terminal with a decoder.

Each line read from standard input is a user turn; the reply streams out as it is generated and
joins the history, so the next turn sees the whole conversation, rendered with the model's chat
template (tokenizer_config.json's, as `stratalm finetune --task chat` stores it, or the
chat_template.jinja that transformers 5 saves beside it). The decoding flags are those of
`stratalm generate`. Input ends at end of file (Ctrl-D) or a line `/exit`; `/reset` forgets the
conversation (the --system message stays).
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from .models import add_sampling_flags, sampling_options


class _LeadingSpaceDropped:
    """Passes streamed text on without the whitespace before the reply's first word (the template
    puts "assistant:" right before the reply, whose first token carries the space)."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write, self.started = write, False

    def __call__(self, piece: str) -> None:
        if not self.started:
            piece = piece.lstrip()
            self.started = bool(piece)
        if piece:
            self.write(piece)


def _chat(args: argparse.Namespace) -> None:
    from ..checkpoint import load
    from ..checkpoint.chat_template import DEFAULT_CHAT_TEMPLATE, read_chat_template
    from ..errors import ConfigError
    from ..generate import choose_device, generate
    from ..tasks.chat import ChatRenderer

    options = sampling_options(args)
    try:
        source = read_chat_template(args.model_dir, args.chat_template)
    except OSError as exc:
        raise ConfigError(f"cannot read the chat template '{args.chat_template}' ({exc.strerror}).") from None
    model = load(args.model_dir, choose_device(args.device))
    if model.config.stack != "decoder":
        raise ConfigError(f"chat needs a decoder (gpt2, llama); this is a {model.config.family} {model.config.stack} model.")
    if source is None:
        print("note: this model has no chat template; using stratalm's 'role: content<eos>' lines.", file=sys.stderr)
    renderer = ChatRenderer(source or DEFAULT_CHAT_TEMPLATE, model.tokenizer)
    start = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(start)
    interactive = sys.stdin.isatty()

    def write(text: str) -> None:
        print(text, end="", flush=True)

    while True:
        if interactive:
            write("> ")
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            break
        text = line.rstrip("\n")
        if text.strip() == "/reset":
            messages = list(start)
            continue
        if not text.strip():
            continue
        messages.append({"role": "user", "content": text})
        reply = generate(model, renderer.prompt(messages), on_text=_LeadingSpaceDropped(write), **options)
        write("\n")
        messages.append({"role": "assistant", "content": reply.strip()})


def add_parsers(sub) -> None:
    p = sub.add_parser("chat", help="talk with a chat model in the terminal (replies stream as they are generated)",
                       description="A conversation with a decoder: each line of input is a user turn, each reply "
                                   "streams out and joins the history. End with Ctrl-D or /exit; /reset starts over.")
    p.add_argument("model_dir", help="checkpoint folder (e.g. the --out of stratalm finetune --task chat)")
    p.add_argument("--system", default=None, help="a system message that opens the conversation")
    p.add_argument("--chat-template", default=None, metavar="FILE",
                   help="jinja2 chat template (default: the folder's chat_template.jinja, else chat_template of "
                        "its tokenizer_config.json)")
    add_sampling_flags(p)
    p.set_defaults(func=_chat)
