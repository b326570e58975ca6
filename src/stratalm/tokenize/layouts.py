"""Each family's own tokenizer: its special tokens (names and the order they take the first ids
in), the template that wraps an input, and its normalisation defaults — as `transformers`'
BertTokenizer, T5Tokenizer, AlbertTokenizer and XLNetTokenizer build them, so a tokenizer trained
or converted here wraps inputs exactly as the family's own does.

A template is a list of items: "$A"/"$B" (the texts) or a role ("cls", "sep", "eos"), each with an
optional ":type" (the token type id; XLNet gives its <cls> type 2).
"""
from __future__ import annotations

from dataclasses import dataclass

from tokenizers import processors


@dataclass(frozen=True)
class Layout:
    model: str  # "wordpiece" or "unigram"
    roles: dict[str, str]  # role -> token, in the order a trained vocabulary puts them first
    single: tuple[str, ...]
    pair: tuple[str, ...]
    lowercase: bool = False  # the family's default
    extra: tuple[str, ...] = ()  # further special tokens after the roles (XLNet's <eod>, <eop>)
    # ALBERT and XLNet turn `` and '' into " and strip accents before SentencePiece's own normaliser.
    quotes_and_accents: bool = False
    keep_accents_option: bool = False  # ALBERT reads keep_accents; XLNet always strips them

    def tokens(self) -> list[str]:
        return [*self.roles.values(), *self.extra]


_BERT_TEMPLATE = dict(single=("cls", "$A", "sep"), pair=("cls", "$A", "sep", "$B:1", "sep:1"))
LAYOUTS: dict[str, Layout] = {
    "bert": Layout("wordpiece", {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
                   lowercase=True, **_BERT_TEMPLATE),
    "t5": Layout("unigram", {"pad": "<pad>", "eos": "</s>", "unk": "<unk>"}, single=("$A", "eos"),
                 pair=("$A", "eos", "$B", "eos")),
    "albert": Layout("unigram", {"pad": "<pad>", "unk": "<unk>", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
                     lowercase=True, quotes_and_accents=True, keep_accents_option=True, **_BERT_TEMPLATE),
    "xlnet": Layout("unigram", {"unk": "<unk>", "bos": "<s>", "eos": "</s>", "cls": "<cls>", "sep": "<sep>",
                                "pad": "<pad>", "mask": "<mask>"}, extra=("<eod>", "<eop>"),
                    single=("$A", "sep", "cls:2"), pair=("$A", "sep", "$B:1", "sep:1", "cls:2"),
                    quotes_and_accents=True),
}
LAYOUTS["electra"] = LAYOUTS["bert"]  # ELECTRA uses BERT's uncased WordPiece as it is
DEFAULT_FAMILY = {"wordpiece": "bert", "unigram": "t5"}
FAMILIES_OF = {kind: [name for name, layout in LAYOUTS.items() if layout.model == kind] for kind in DEFAULT_FAMILY}


def template(layout: Layout, roles: dict[str, str], token_id) -> processors.TemplateProcessing:
    """The layout's template with the given role tokens (`token_id` maps a token to its id)."""
    def items(spec: tuple[str, ...]) -> list[str]:
        out = []
        for item in spec:
            name, _, kind = item.partition(":")
            out.append(f"{name if name.startswith('$') else roles[name]}:{kind or '0'}")
        return out

    used = dict.fromkeys(roles[i.partition(":")[0]] for i in layout.pair if not i.startswith("$"))
    return processors.TemplateProcessing(single=items(layout.single), pair=items(layout.pair),
                                         special_tokens=[(token, token_id(token)) for token in used])
