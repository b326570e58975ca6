"""Chat prompts from a model's own template: `chat_template` in its tokenizer_config.json (as
Hugging Face writes it), or a file given with --chat-template. Templates are jinja2 run in an
immutable sandbox: a template is code from whoever made the model, so it may not touch Python
objects beyond the messages it is given."""
from __future__ import annotations

import json
import os
from typing import Optional

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import bad_request

TOKENIZER_CONFIG = "tokenizer_config.json"


def read_chat_template(folder: str, template_file: Optional[str] = None) -> Optional[str]:
    """The template text: the file when given, else tokenizer_config.json's, else None."""
    if template_file:
        with open(template_file, encoding="utf-8") as handle:
            return handle.read()
    path = os.path.join(folder, TOKENIZER_CONFIG)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        template = json.load(handle).get("chat_template")
    if isinstance(template, list):  # the multi-template form: [{"name": "default", "template": ...}]
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template


def _raise_exception(message: str):
    raise TemplateError(message)


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception  # what HF templates call to refuse a conversation
        self.template = env.from_string(source)
        self.bos_token, self.eos_token = bos_token, eos_token

    def render(self, messages: list[dict]) -> str:
        try:
            return self.template.render(messages=messages, add_generation_prompt=True,
                                        bos_token=self.bos_token, eos_token=self.eos_token)
        except TemplateError as exc:  # the conversation does not fit the template: the client's input
            raise bad_request(f"the model's chat template refused these messages: {exc}.", "messages") from None
