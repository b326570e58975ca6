"""Sequence-to-sequence: source text -> target text (translation, summaries, any rewriting).

An encoder-decoder (T5) reads the source and its decoder learns the target by teacher forcing. A
decoder (GPT-2, Llama) learns it as prefix generation: `source <sep> target <eos>` with the loss
on the target tokens only. Predictions decode greedily or with beam search (generate/beam.py);
metrics are corpus BLEU and chrF (sacrebleu) and the target tokens' mean loss.

A model can start from scratch: give a preset name (`--model t5`) and `--tokenizer-from-train N`,
and a byte-level BPE tokenizer of N tokens is trained on both sides of the training pairs.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..generate import beam_search, greedy_search
from ..tokenize import Tokenizer, train_bpe
from .base import IGNORE, Task, mean_token_loss, summed_token_losses
from .common import is_chinese, model_tokenizer, pad, pad_id_of, start_end_ids
from .data_files import read_pairs
from .options import SEQ2SEQ_TARGET_COLUMNS as TARGET_COLUMNS, SOURCE_COLUMNS, TASK_OPTIONS

FLAGS = ("--source-column", "--target-column")


def bleu_and_chrf(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU (sacrebleu's 13a tokenisation; its Chinese one for Chinese targets) and chrF."""
    try:
        import sacrebleu
    except ImportError:
        raise ConfigError("BLEU and chrF need sacrebleu; install it with pip install 'stratalm[tasks]'.") from None
    tokenize = "zh" if is_chinese(references[:200]) else "13a"
    return {"bleu": sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize).score,
            "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score}


class Seq2SeqTask(Task):
    name = "seq2seq"
    main_metric = "bleu"
    stacks = ("encoder-decoder", "decoder")
    OPTIONS = TASK_OPTIONS["seq2seq"]

    # -- data --------------------------------------------------------------------------------
    def read(self, path: str, labelled: bool = True) -> list[dict[str, Any]]:
        pairs = read_pairs(path, self.options["source_column"], self.options["target_column"],
                           (SOURCE_COLUMNS, TARGET_COLUMNS), FLAGS, labelled)
        for number, (source, target) in enumerate(pairs, start=1):
            if not source.strip() or (labelled and not (target or "").strip()):
                raise DataError(f"example {number} of '{path}' has an empty {'source' if not source.strip() else 'target'}; "
                                "give both texts of every pair.")
        return [{"source": s, "target": t} for s, t in pairs]

    # -- model -------------------------------------------------------------------------------
    def load_base(self, path: str, train_path: str) -> nn.Module:
        """A checkpoint folder as usual; a preset name with --tokenizer-from-train builds a fresh
        model around a tokenizer trained on the training pairs."""
        from ..families import PRESETS, preset
        from ..checkpoint import load
        from ..models import build_model

        if os.path.exists(path) or path not in PRESETS:
            if self.options["tokenizer_from_train"]:
                raise ConfigError("--tokenizer-from-train builds a model from a preset name (e.g. --model t5); "
                                  f"'{path}' is a checkpoint folder with its own tokenizer, so drop the flag.")
            return load(path)
        size = self.options["tokenizer_from_train"]
        if not size:
            raise ConfigError(f"'{path}' is a preset name, not a checkpoint folder; add --tokenizer-from-train N to "
                              "build it from scratch with an N-token tokenizer trained on the training pairs.")
        texts = [text for pair in self.read(train_path) for text in (pair["source"], pair["target"])]
        tokenizer = train_bpe(iter(texts), size, show_progress=False)
        config = preset(path, vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_id or 0,
                        decoder_start_token_id=tokenizer.pad_id or 0)
        model = build_model(config)  # a T5 preset starts with T5's own initialisation (models/seq2seq.py)
        model.tokenizer = tokenizer
        return model

    # -- training ----------------------------------------------------------------------------
    def _separator(self, tokenizer: Tokenizer) -> int:
        sep = start_end_ids(tokenizer)[1]  # [SEP], else <eos>
        if sep is None or tokenizer.eos_id is None:
            raise ConfigError("sequence-to-sequence needs a tokenizer with an end-of-text token (<eos>, </s>, ...).")
        return sep

    def _source(self, tokenizer: Tokenizer, text: str, max_length: int) -> list[int]:
        """Model input for decoding: the source (+ eos for an encoder, + separator for a decoder)."""
        ids = tokenizer.encode(text)
        if self.seq2seq:
            return ids[:max_length - 1] + [tokenizer.eos_id]
        return ids[:max_length // 2 - 1] + [self._separator(tokenizer)]

    def encode(self, examples: list[dict[str, Any]], tokenizer: Tokenizer, max_length: int) -> list[dict[str, Any]]:
        self._separator(tokenizer)
        features = []
        for example in examples:
            source = self._source(tokenizer, example["source"], max_length)
            target = tokenizer.encode(example["target"] or "")[:max_length - 1] + [tokenizer.eos_id]
            if self.seq2seq:
                features.append({"ids": source, "labels": target})
            else:  # one sequence; the loss sees only the target tokens
                target = target[:max_length - len(source)]
                features.append({"ids": source + target, "labels": [IGNORE] * len(source) + target})
        return features

    def collate(self, features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
        return {"input_ids": pad([f["ids"] for f in features], pad_id),
                "attention_mask": pad([[1] * len(f["ids"]) for f in features], 0),
                "labels": pad([f["labels"] for f in features], IGNORE)}

    @property
    def seq2seq(self) -> bool:
        return self.state.get("stack") == "encoder-decoder"

    def check_model(self, config) -> None:
        super().check_model(config)
        self.state["stack"] = config.stack

    def token_losses(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed loss of the target tokens of each row, and their counts."""
        device = next(model.parameters()).device
        ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
        if self.seq2seq:
            logits = model(ids, attention_mask=mask, labels=labels).logits  # (B, T_target, V)
        else:
            logits, labels = model(ids, attention_mask=mask).logits[:, :-1], labels[:, 1:]  # predict the next token
        return summed_token_losses(logits, labels)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return mean_token_loss(self.token_losses(model, batch))

    # -- evaluation --------------------------------------------------------------------------
    def predict(self, model: nn.Module, examples: list[dict[str, Any]], max_length: int,
                batch_size: int = 32) -> list[dict[str, Any]]:
        """The decoded text of each example, and (when it has a target) the target's summed loss
        and token count, for the loss metric."""
        self.state["stack"] = model.config.stack
        tokenizer = model_tokenizer(model)
        sources = [self._source(tokenizer, e["source"], max_length) for e in examples]
        new_tokens = self.options["max_new_tokens"]
        if not self.seq2seq:
            new_tokens = min(new_tokens, model.config.max_seq_len - max(len(s) for s in sources))
        out: list[dict[str, Any]] = [{} for _ in examples]
        order = sorted(range(len(examples)), key=lambda i: len(sources[i]))
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            prompts = [sources[i] for i in chosen]
            if self.options["beams"] > 1:
                found = beam_search(model, prompts, self.options["beams"], new_tokens, tokenizer.eos_id,
                                    self.options["length_penalty"])
            else:
                found = greedy_search(model, prompts, new_tokens, tokenizer.eos_id)
            labelled = [i for i in chosen if examples[i]["target"] is not None]
            losses: dict[int, tuple[float, int]] = {}
            if labelled:
                with torch.no_grad():
                    features = self.encode([examples[i] for i in labelled], tokenizer, max_length)
                    total, count = self.token_losses(model, self.collate(features, pad_id_of(tokenizer)))
                losses = {i: (float(t), int(c)) for i, t, c in zip(labelled, total, count)}
            for i, hypothesis in zip(chosen, found):
                nll, tokens = losses.get(i, (0.0, 0))
                out[i] = {"text": tokenizer.decode(hypothesis.tokens).strip(), "nll": nll, "tokens": tokens}
        return out

    def score(self, examples: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> dict[str, float]:
        references = [e["target"] or "" for e in examples]
        tokens = sum(p["tokens"] for p in predictions)
        return {**bleu_and_chrf([p["text"] for p in predictions], references),
                "loss": sum(p["nll"] for p in predictions) / max(tokens, 1)}

    def format(self, example: dict[str, Any], prediction: dict[str, Any]) -> dict[str, Any]:
        return {"source": example["source"], "prediction": prediction["text"]}
