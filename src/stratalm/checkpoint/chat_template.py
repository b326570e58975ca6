"""A model's chat template: jinja2 text kept as `chat_template` in its tokenizer_config.json, as
Hugging Face writes it, so `transformers`' `apply_chat_template` renders the same string stratalm
does (both run it in jinja2's immutable sandbox with trim_blocks and lstrip_blocks).

The template is code from whoever made the model, so it runs sandboxed: it may not touch Python
objects beyond the messages it is given. The chat task (tasks/chat.py) trains on it and writes it
with the fine-tuned model; `stratalm chat` and `stratalm serve` read it back from the folder.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

from ..errors import ConfigError
from ..model_config import ModelConfig
from ..tokenize import Tokenizer
from .hf_tokenizer import TOKENIZER_CONFIG, special_tokens, tokenizer_config, write_json

# Each turn is "role: content<eos>" on a line of its own; the reply starts after "assistant:", so the
# space before the reply belongs to the reply (byte-level BPE glues a space to the word after it) and
# the model learns to end its turn with eos, where generation stops. Plain words, no new special
# tokens: it works with any tokenizer that has an eos token, without growing the vocabulary.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if not loop.first %}{{ '\\n' }}{% endif %}"  # an expression: trim_blocks would drop a bare newline
    "{{ message['role'] + ': ' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{% if messages %}{{ '\\n' }}{% endif %}{{ 'assistant:' }}{% endif %}"
)
TOKEN_ROLES = ("bos", "eos", "unk", "pad")  # the special tokens a template may name (bos_token, ...)


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
    from jinja2 import TemplateError

    raise TemplateError(message)


def compile_template(source: str):
    """The sandboxed jinja2 template of `source`, set up as transformers sets up its own."""
    try:
        from jinja2 import TemplateSyntaxError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ConfigError("chat templates need jinja2; install it with pip install 'stratalm[tasks]'.") from None
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception  # what HF templates call to refuse a conversation
    try:
        return env.from_string(source)
    except TemplateSyntaxError as exc:
        raise ConfigError(f"the chat template is not valid jinja2 ({exc.message}, line {exc.lineno}).") from None


def template_tokens(tokenizer: Tokenizer) -> dict[str, str]:
    """bos_token, eos_token, ... as the template sees them (empty where the tokenizer has none)."""
    found = special_tokens(tokenizer, TOKEN_ROLES)
    return {f"{role}_token": found.get(f"{role}_token", "") for role in TOKEN_ROLES}


def write_chat_template(folder: str, template: str, tokenizer: Tokenizer, config: ModelConfig) -> None:
    """tokenizer_config.json with `template` as its chat_template and the special tokens it names,
    so AutoTokenizer(folder).apply_chat_template renders what stratalm renders."""
    values: dict[str, Any] = {**tokenizer_config(tokenizer, config, TOKEN_ROLES), "chat_template": template}
    write_json(os.path.join(folder, TOKENIZER_CONFIG), values)
