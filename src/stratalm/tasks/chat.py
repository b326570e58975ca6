"""Chat (instruction tuning): a decoder learns to answer conversations.

Data is JSONL, one conversation a line: {"messages": [{"role": "system"|"user"|"assistant",
"content": "..."}, ...]}. Each conversation is rendered with the model's chat template (jinja2;
checkpoint/chat_template.py) and the loss counts only the assistant's tokens: the reply and the
end-of-turn token after it, never the system or user text nor the template's role markers. The
template is stored with the fine-tuned model (tokenizer_config.json's `chat_template`, as Hugging
Face keeps it), so `stratalm chat`, `stratalm serve` and `transformers`' `apply_chat_template`
all render what training saw.

Which characters are the assistant's is found from the template itself: the reply of turn i is
what rendering turns 0..i adds to rendering turns 0..i-1 with the generation prompt. So any
template works whose rendering of a conversation starts with the rendering of its beginning.

With `--pack`, short conversations are concatenated into rows of up to --max-length tokens (fewer
padding tokens per step). A packed conversation attends to the ones before it in its row, as
documents do in pretraining; each still ends with the end-of-turn token, which the model learns
to treat as a boundary.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..checkpoint.chat_template import (DEFAULT_CHAT_TEMPLATE, compile_template, read_chat_template, template_tokens,
                                        write_chat_template)
from ..errors import ConfigError, DataError
from ..generate import greedy_search
from ..tokenize import Tokenizer
from .base import IGNORE, Task, mean_token_loss, summed_token_losses
from .common import model_tokenizer, pad, pad_id_of
from .data_files import read_table
from .options import TASK_OPTIONS

ROLES = ("system", "user", "assistant")


def check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    """The conversation as a list of {role, content}; a one-sentence DataError otherwise."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where} has no \"messages\" list; give {{\"messages\": [{{\"role\": ..., \"content\": ...}}, ...]}}.")
    out = []
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise DataError(f"message {number} of {where} needs a role ({', '.join(ROLES)}) and a content string.")
        out.append({"role": message["role"], "content": message["content"]})
    return out


class ChatRenderer:
    """A chat template with the tokenizer's special tokens: conversations -> text, and the
    character spans of the assistant's replies in it."""

    def __init__(self, source: str, tokenizer: Tokenizer) -> None:
        self.template, self.tokens = compile_template(source), template_tokens(tokenizer)

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        from jinja2 import TemplateError

        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt, **self.tokens)
        except TemplateError as exc:
            raise DataError(f"the chat template refused a conversation: {exc}.") from None

    def assistant_spans(self, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the (start, end) characters of each assistant reply."""
        text, spans = self.render(messages), []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before, through = self.render(messages[:i], add_generation_prompt=True), self.render(messages[:i + 1])
            if not (through.startswith(before) and text.startswith(through)):
                raise ConfigError("the chat template does not render a conversation as a continuation of its "
                                  "beginning, so the assistant's tokens cannot be told apart; use another template.")
            spans.append((len(before), len(through)))
        return text, spans

    def prompt(self, messages: list[dict[str, str]]) -> str:
        """What the model continues to answer `messages`: the conversation and the generation prompt."""
        return self.render(messages, add_generation_prompt=True)


def assistant_labels(tokenizer: Tokenizer, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Token ids of `text` and their labels: the id where the token overlaps an assistant span,
    else IGNORE. (A token that straddles a boundary counts as the assistant's.)"""
    ids, offsets = tokenizer.encode_with_offsets(text)
    labels = [token if any(start < b and end > a for a, b in spans) else IGNORE
              for token, (start, end) in zip(ids, offsets)]
    return ids, labels


class ChatTask(Task):
    name = "chat"
    main_metric = "exact_match"  # of the generated last reply against the reference
    stacks = ("decoder",)
    OPTIONS = TASK_OPTIONS["chat"]

    # -- data --------------------------------------------------------------------------------
    def read(self, path: str, labelled: bool = True) -> list[dict[str, Any]]:
        columns, rows = read_table(path)
        if "messages" not in columns:
            raise DataError(f"'{path}' has no \"messages\" field; give one {{\"messages\": [...]}} object per line.")
        examples = []
        for number, row in enumerate(rows, start=1):
            messages = check_messages(row.get("messages"), f"line {number} of '{path}'")
            if labelled and not any(m["role"] == "assistant" for m in messages):
                raise DataError(f"line {number} of '{path}' has no assistant message; training and evaluation "
                                "need at least one reply to learn or score.")
            examples.append({"messages": messages})
        return examples

    # -- model -------------------------------------------------------------------------------
    def load_base(self, path: str, train_path: str) -> nn.Module:
        """The folder, and the template to train with: --chat-template, else the folder's own, else
        stratalm's default. It is kept in the task's state, so the fine-tuned folder carries it."""
        model = super().load_base(path, train_path)
        file = self.options["chat_template"]
        try:
            self.state["chat_template"] = read_chat_template(path, file) or DEFAULT_CHAT_TEMPLATE
        except OSError as exc:
            raise ConfigError(f"cannot read the chat template '{file}' ({exc.strerror}).") from None
        return model

    def renderer(self, tokenizer: Tokenizer) -> ChatRenderer:
        if tokenizer.eos_id is None:
            raise ConfigError("the chat task needs a tokenizer with an end-of-text token (<eos>, </s>, ...) to end a turn.")
        return ChatRenderer(self.state.get("chat_template", DEFAULT_CHAT_TEMPLATE), tokenizer)

    def write_files(self, folder: str, model: nn.Module) -> None:
        write_chat_template(folder, self.state.get("chat_template", DEFAULT_CHAT_TEMPLATE), model_tokenizer(model),
                            model.config)

    # -- training ----------------------------------------------------------------------------
    def encode(self, examples: list[dict[str, Any]], tokenizer: Tokenizer, max_length: int) -> list[dict[str, Any]]:
        renderer = self.renderer(tokenizer)
        features = []
        for example in examples:
            ids, labels = assistant_labels(tokenizer, *renderer.assistant_spans(example["messages"]))
            features.append({"ids": ids[:max_length], "labels": labels[:max_length]})
        return pack(features, max_length) if self.options["pack"] else features

    def collate(self, features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
        return {"input_ids": pad([f["ids"] for f in features], pad_id),
                "attention_mask": pad([[1] * len(f["ids"]) for f in features], 0),
                "labels": pad([f["labels"] for f in features], IGNORE)}

    def token_losses(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed loss of the assistant tokens of each row, and their counts."""
        device = next(model.parameters()).device
        ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
        logits = model(ids, attention_mask=mask).logits[:, :-1]
        return summed_token_losses(logits, labels[:, 1:])  # predict the next token

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return mean_token_loss(self.token_losses(model, batch))

    # -- evaluation --------------------------------------------------------------------------
    @staticmethod
    def context_and_reference(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], Optional[str]]:
        """The conversation to answer and the reference reply: a conversation that ends with the
        assistant is answered from the turns before; one that ends with the user has no reference."""
        if messages[-1]["role"] == "assistant":
            return messages[:-1], messages[-1]["content"]
        return messages, None

    def predict(self, model: nn.Module, examples: list[dict[str, Any]], max_length: int,
                batch_size: int = 32) -> list[dict[str, Any]]:
        """The greedy reply to each conversation."""
        tokenizer = model_tokenizer(model)
        renderer = self.renderer(tokenizer)
        new_tokens = self.options["max_new_tokens"]
        # A long conversation keeps its end (the last turns and the generation prompt) and leaves room for the reply.
        keep = max(1, min(max_length, model.config.max_seq_len - new_tokens))
        prompts = [tokenizer.encode(renderer.prompt(self.context_and_reference(e["messages"])[0]))[-keep:]
                   for e in examples]
        out: list[dict[str, Any]] = [{} for _ in examples]
        order = sorted(range(len(examples)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            room = model.config.max_seq_len - max(len(prompts[i]) for i in chosen)
            found = greedy_search(model, [prompts[i] for i in chosen], min(new_tokens, room), tokenizer.eos_id)
            for i, hypothesis in zip(chosen, found):
                out[i] = {"text": tokenizer.decode(hypothesis.tokens).strip()}
        return out

    def score(self, examples: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> dict[str, float]:
        pairs = [(p["text"], self.context_and_reference(e["messages"])[1]) for e, p in zip(examples, predictions)]
        scored = [(text, ref) for text, ref in pairs if ref is not None]
        same = sum(text.strip().lower() == ref.strip().lower() for text, ref in scored)
        return {"exact_match": same / max(len(scored), 1)}

    def format(self, example: dict[str, Any], prediction: dict[str, Any]) -> dict[str, Any]:
        context, _ = self.context_and_reference(example["messages"])
        return {"messages": context, "reply": prediction["text"]}


def pack(features: list[dict[str, Any]], max_length: int) -> list[dict[str, Any]]:
    """Concatenate consecutive features into rows of at most `max_length` tokens (a feature that
    would overflow starts the next row; none is split)."""
    rows: list[dict[str, Any]] = []
    for feature in features:
        if rows and len(rows[-1]["ids"]) + len(feature["ids"]) <= max_length:
            rows[-1] = {"ids": rows[-1]["ids"] + feature["ids"], "labels": rows[-1]["labels"] + feature["labels"]}
        else:
            rows.append(dict(feature))
    return rows
