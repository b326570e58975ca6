"""Chat prompts from a model's own template: `chat_template` in its tokenizer_config.json (as
Hugging Face writes it), or a file given with --chat-template. Templates are jinja2 run in an
immutable sandbox: a template is code from whoever made the model, so it may not touch Python
objects beyond the messages it is given."""
from __future__ import annotations

from jinja2 import TemplateError

# Reading and compiling the template live below, in checkpoint/, since fine-tuning (tasks/chat.py) uses them too.
from ..checkpoint.chat_template import compile_template, read_chat_template  # noqa: F401 (served.py imports it here)
from .errors import bad_request


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        self.template = compile_template(source)
        self.bos_token, self.eos_token = bos_token, eos_token

    def render(self, messages: list[dict]) -> str:
        try:
            return self.template.render(messages=messages, add_generation_prompt=True,
                                        bos_token=self.bos_token, eos_token=self.eos_token)
        except TemplateError as exc:  # the conversation does not fit the template: the client's input
            raise bad_request(f"the model's chat template refused these messages: {exc}.", "messages") from None
