"""A model's chat template: jinja2 text kept as `chat_template` in its tokenizer_config.json, as
Hugging Face writes it, so `transformers`' `apply_chat_template` renders the same string stratalm
does (both run it in jinja2's immutable sandbox with trim_blocks and lstrip_blocks). A folder that
transformers 5 saved keeps it in chat_template.jinja beside tokenizer_config.json instead, and that
file wins over the config's key, as it does in transformers; stratalm reads both and writes the key.

The template is code from whoever made the model, so it runs sandboxed: it may not touch Python
objects beyond the messages it is given. The chat task (tasks/chat.py) trains on it and writes it
with the fine-tuned model; `stratalm chat` and `stratalm serve` read it back from the folder.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Any, Optional

from ..errors import CheckpointError, ConfigError
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
# Where transformers 5's save_pretrained puts the template (and, for a tokenizer with several, the
# others by name, which stratalm does not use: only the default one is read and carried).
TEMPLATE_FILE, TEMPLATE_FOLDER = "chat_template.jinja", "additional_chat_templates"


def read_chat_template(folder: str, template_file: Optional[str] = None) -> Optional[str]:
    """The template text: the file when given, else the folder's chat_template.jinja, else
    tokenizer_config.json's chat_template (its "default" one when it holds several), else None."""
    if template_file:
        with open(template_file, encoding="utf-8") as handle:
            return handle.read()
    jinja = os.path.join(folder, TEMPLATE_FILE)
    if os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as handle:
            return handle.read()
    path = os.path.join(folder, TOKENIZER_CONFIG)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"'{path}' is corrupt (not valid JSON), so its chat template cannot be read.") from None
    template = values.get("chat_template") if isinstance(values, dict) else None
    if isinstance(template, list):  # the multi-template form: [{"name": "default", "template": ...}]
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"),
                        None)
    return template if isinstance(template, str) else None


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


def write_chat_template(folder: str, template: str, tokenizer: Optional[Tokenizer], config: ModelConfig) -> None:
    """tokenizer_config.json with `template` as its chat_template and the special tokens it names,
    so AutoTokenizer(folder).apply_chat_template renders what stratalm renders (the template alone
    for a model without a tokenizer)."""
    values: dict[str, Any] = {} if tokenizer is None else tokenizer_config(tokenizer, config, TOKEN_ROLES)
    write_json(os.path.join(folder, TOKENIZER_CONFIG), {**values, "chat_template": template})


def drop_stale_templates(folder: str, wrote_config: bool) -> None:
    """After a save into `folder`: remove the template files an earlier model left there, which
    would otherwise stand for the new model's (chat_template.jinja wins over tokenizer_config.json,
    and stratalm never writes it), and a tokenizer_config.json with a template when this save
    wrote none (`wrote_config` False)."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(folder, TEMPLATE_FILE))
    shutil.rmtree(os.path.join(folder, TEMPLATE_FOLDER), ignore_errors=True)
    config = os.path.join(folder, TOKENIZER_CONFIG)
    if not wrote_config and os.path.isfile(config):
        with contextlib.suppress(OSError, ValueError):
            with open(config, encoding="utf-8") as handle:
                stale = "chat_template" in json.load(handle)
            if stale:
                os.remove(config)
