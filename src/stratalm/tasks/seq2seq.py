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
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError
from ..generate import beam_search, greedy_search
from ..tokenize import Tokenizer, train_bpe
from .base import IGNORE, Option, Task, model_tokenizer, pad, pad_id_of
from .data_files import TABLE_EXTENSIONS, column, read_table

SOURCE_COLUMNS = ("source", "src", "input", "text", "question")
TARGET_COLUMNS = ("target", "tgt", "output", "translation", "answer", "summary")


def _position(name: Optional[str]) -> Optional[int]:
    return int(name) if name is not None and str(name).isdigit() else None


def _read_columns(path: str, wanted: list[tuple[Optional[str], tuple[str, ...], str, str]],
                  labelled: bool) -> list[tuple[Optional[str], ...]]:
    """Rows of the wanted columns. A header-less tab-separated file (Tatoeba's `eng-fra.txt`, any
    extension outside .tsv/.csv/.jsonl, or columns given as numbers) is read by position: column
    0 is the first. Each wanted entry is (given name, default names, flag, what); a missing
    column is an error, except the last one (the target) when `labelled` is False."""
    extension = os.path.splitext(path)[1].lower()
    given = [name for name, *_ in wanted if name is not None]
    positional = extension not in TABLE_EXTENSIONS or (given and all(_position(name) is not None for name in given))
    if not positional:
        columns, rows = read_table(path)
        names = []
        for index, (name, defaults, flag, what) in enumerate(wanted):
            optional = index == len(wanted) - 1 and not labelled and name is None
            if optional and not any(c in columns for c in defaults):
                names.append(None)
                continue
            names.append(column(columns, name, defaults, path, flag, what))
        return [tuple(None if n is None else str(row.get(n) if row.get(n) is not None else "") for n in names)
                for row in rows]
    if not os.path.isfile(path):
        raise DataError(f"data file '{path}' does not exist.")
    try:
        with open(path, encoding="utf-8-sig") as handle:
            lines = [line.rstrip("\r\n") for line in handle if line.strip()]
    except UnicodeDecodeError:
        raise DataError(f"'{path}' is not UTF-8 text; convert it to UTF-8.") from None
    if not lines:
        raise DataError(f"'{path}' is empty; give one tab-separated pair per line.")
    positions = [_position(name) if name is not None else index for index, (name, *_rest) in enumerate(wanted)]
    if any(p is None for p in positions):
        bad = next(name for (name, *_), p in zip(wanted, positions) if p is None)
        raise DataError(f"'{path}' has no header line, so its columns are numbers (0, 1, ...), not '{bad}'.")
    out = []
    for number, line in enumerate(lines, start=1):
        fields = line.split("\t")
        row = []
        for index, (p, (_, _, flag, _)) in enumerate(zip(positions, wanted)):
            if p < len(fields):
                row.append(fields[p])
            elif index == len(wanted) - 1 and not labelled:
                row.append(None)
            else:
                raise DataError(f"line {number} of '{path}' has {len(fields)} tab-separated fields, so it has no "
                                f"column {p} (columns count from 0); choose another {flag}.")
        out.append(tuple(row))
    return out


def read_pairs(path: str, source_column: Optional[str], target_column: Optional[str], labelled: bool = True,
               source_defaults: tuple[str, ...] = SOURCE_COLUMNS, target_defaults: tuple[str, ...] = TARGET_COLUMNS,
               flags: tuple[str, str] = ("--source-column", "--target-column")) -> list[tuple[str, Optional[str]]]:
    """(source, target) pairs of a TSV/CSV/JSONL table with a header, or of a header-less
    tab-separated file (columns 0 and 1 unless numbered otherwise)."""
    rows = _read_columns(path, [(source_column, source_defaults, flags[0], "source"),
                                (target_column, target_defaults, flags[1], "target")], labelled)
    return [(source, target) for source, target in rows]


def bleu_and_chrf(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU (sacrebleu's 13a tokenisation; its Chinese one for Chinese targets) and chrF."""
    try:
        import sacrebleu
    except ImportError:
        raise ConfigError("BLEU and chrF need sacrebleu; install it with pip install 'stratalm[tasks]'.") from None
    from .squad import is_chinese

    tokenize = "zh" if is_chinese(references[:200]) else "13a"
    return {"bleu": sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize).score,
            "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score}


class Seq2SeqTask(Task):
    name = "seq2seq"
    main_metric = "bleu"
    stacks = ("encoder-decoder", "decoder")
    OPTIONS = {
        "source_column": Option(None, f"column of the source text (a number for a file without a header; default: "
                                      f"the first of {', '.join(SOURCE_COLUMNS)}, or column 0)"),
        "target_column": Option(None, f"column of the target text (default: the first of {', '.join(TARGET_COLUMNS)}, "
                                      f"or column 1)"),
        "beams": Option(1, "beam width when decoding (1 = greedy)", int),
        "length_penalty": Option(1.0, "beam search ranks hypotheses by log-probability / length ** this", float),
        "max_new_tokens": Option(64, "longest output, in tokens", int),
        "tokenizer_from_train": Option(0, "with a preset name as --model: train a byte-level BPE tokenizer of this "
                                          "many tokens on the training pairs and start the model from scratch", int),
    }

    # -- data --------------------------------------------------------------------------------
    def read(self, path: str, labelled: bool = True) -> list[dict[str, Any]]:
        pairs = read_pairs(path, self.options["source_column"], self.options["target_column"], labelled)
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
        from ..io import load
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
        sep = tokenizer.sep_id if tokenizer.sep_id is not None else tokenizer.eos_id
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
        self.pad_id = pad_id_of(tokenizer)
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

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return {"input_ids": pad([f["ids"] for f in features], self.pad_id),
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
        losses = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
        return losses.sum(dim=1), (labels != IGNORE).sum(dim=1)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        total, count = self.token_losses(model, batch)
        return total.sum() / count.sum().clamp(min=1)

    # -- evaluation --------------------------------------------------------------------------
    def predict(self, model: nn.Module, examples: list[dict[str, Any]], max_length: int,
                batch_size: int = 32) -> list[dict[str, Any]]:
        """The decoded text of each example, and (when it has a target) the target's summed loss
        and token count, for the loss metric."""
        self.state["stack"] = model.config.stack
        tokenizer = model_tokenizer(model)
        self.pad_id = pad_id_of(tokenizer)
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
                    total, count = self.token_losses(model, self.collate(self.encode([examples[i] for i in labelled],
                                                                                     tokenizer, max_length)))
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
