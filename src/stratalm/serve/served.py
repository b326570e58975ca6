"""The models one server holds: each loaded once, named, classified (decoder, encoder,
encoder-decoder) and fingerprinted, so a client can tell exactly which weights answered."""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from ..checkpoint import load, read_config
from ..errors import ConfigError
from .chat_template import ChatTemplate, read_chat_template

HASHED_FILES = ("model.safetensors", "tokenizer.json")


def _step(folder: str) -> Optional[int]:
    """The training step the folder was saved at, when it says (trainer_state.json)."""
    path = os.path.join(folder, "trainer_state.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            step = json.load(handle).get("step")
        return int(step) if step is not None else None
    return None


def fingerprint(folder: str) -> dict:
    """Training step and a sha256 over the weights and the tokenizer: the same digest means the same model."""
    digest = hashlib.sha256()
    for name in HASHED_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            digest.update(name.encode())
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return {"step": _step(folder), "sha256": digest.hexdigest()}


@dataclass
class ServedModel:
    name: str
    folder: str
    model: torch.nn.Module
    fingerprint: dict
    chat: Optional[ChatTemplate] = None
    pooling: str = "mean"
    created: int = field(default_factory=lambda: int(time.time()))
    # Every forward pass of the model holds this: the lens attaches hooks to the model itself, and
    # a decoding step or an embedding running meanwhile would fire them.
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def kind(self) -> str:
        """"decoder", "encoder" or "encoder-decoder" (the stack of its config)."""
        return self.model.config.stack

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def context(self) -> int:
        return self.model.config.max_seq_len

    @property
    def system_fingerprint(self) -> str:
        step = self.fingerprint["step"]
        return f"stratalm-{self.fingerprint['sha256'][:12]}" + (f"-step{step}" if step is not None else "")

    def card(self) -> dict:
        """Its entry in /v1/models."""
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "stratalm",
                "kind": self.kind, "family": self.model.config.family, "context_length": self.context,
                "fingerprint": self.fingerprint, "chat": self.chat is not None}


def _token_text(tokenizer, token_id: Optional[int]) -> str:
    return tokenizer.backend.id_to_token(token_id) if token_id is not None else ""


def load_models(folders: Sequence[str], names: Sequence[str] = (), chat_template_file: Optional[str] = None,
                device: str = "cpu") -> dict[str, ServedModel]:
    """Load every folder; a model is named by its `names` entry (same order) or its folder's name."""
    if names and len(names) != len(folders):
        raise ConfigError(f"give one --name per model: {len(folders)} models, {len(names)} names.")
    served: dict[str, ServedModel] = {}
    for i, folder in enumerate(folders):
        name = names[i] if names else os.path.basename(os.path.normpath(folder))
        if name in served:
            raise ConfigError(f"two models are named '{name}'; give each a distinct --name.")
        model = load(folder, device)
        if model.tokenizer is None:
            raise ConfigError(f"'{folder}' has no tokenizer.json; the server needs one to read text.")
        template = read_chat_template(folder, chat_template_file) if model.config.stack == "decoder" else None
        chat = ChatTemplate(template, _token_text(model.tokenizer, model.tokenizer.bos_id),
                            _token_text(model.tokenizer, model.tokenizer.eos_id)) if template else None
        pooling = read_config(folder).get("pooling", "mean")
        served[name] = ServedModel(name, folder, model, fingerprint(folder), chat, pooling)
    return served
