"""A thin wrapper over `tokenizers.Tokenizer` that knows its special tokens by role.

The byte-level BPE and character tokenizers trained here put the same special tokens first, so
their ids are stable: pad=0, bos=1, eos=2, unk=3, mask=4, cls=5, sep=6 (mask/cls/sep are reserved
for the encoder objectives). WordPiece and Unigram ones take their family's tokens and template
(layouts.py, subword.py). A tokenizer.json from elsewhere keeps its own tokens; roles are found by
name. A Hugging Face folder with only vocab.txt or spiece.model is converted on load (convert.py).
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Iterable, Iterator, Optional

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from ..errors import CheckpointError, DataError
from .convert import convert_folder
from .subword import trained_unigram, trained_wordpiece

SPECIAL_TOKENS = {
    "pad": "<pad>", "bos": "<bos>", "eos": "<eos>", "unk": "<unk>",
    "mask": "<mask>", "cls": "<cls>", "sep": "<sep>",
}
# Names other tokenizers use for the same roles (GPT-2, BERT, RoBERTa, T5, Llama).
_ROLE_ALIASES = {
    "pad": ["<pad>", "[PAD]", "<|padding|>"],
    "bos": ["<bos>", "<s>", "[CLS]", "<|begin_of_text|>"],
    "eos": ["<eos>", "</s>", "<|endoftext|>", "[SEP]", "<|end_of_text|>"],
    "unk": ["<unk>", "[UNK]"],
    "mask": ["<mask>", "[MASK]"],
    "cls": ["<cls>", "[CLS]", "<s>"],
    "sep": ["<sep>", "[SEP]", "</s>"],
}


class Tokenizer:
    def __init__(self, backend: HFTokenizer) -> None:
        # Batching code pads and truncates on its own terms; a tokenizer.json may carry its
        # own fixed padding or truncation (all-MiniLM-L6-v2 pads everything to 128), so drop them.
        backend.no_padding()
        backend.no_truncation()
        self.backend = backend
        self.special_ids: dict[str, Optional[int]] = {
            role: next((backend.token_to_id(t) for t in names if backend.token_to_id(t) is not None), None)
            for role, names in _ROLE_ALIASES.items()
        }

    # -- ids ---------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids; `add_special_tokens` applies the tokenizer's template (BERT's [CLS] ... [SEP])."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False, max_length: Optional[int] = None) -> list[list[int]]:
        """Ids of many texts at once (in parallel); `max_length` truncates, keeping special tokens."""
        if max_length is not None:
            self.backend.enable_truncation(max_length)
        try:
            return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)]
        finally:
            if max_length is not None:
                self.backend.no_truncation()

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids (no special tokens) and each token's (start, end) character span in `text`, which
        extractive QA needs to map a predicted token span back to the original characters."""
        encoding = self.backend.encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def __getattr__(self, name: str) -> Optional[int]:
        # pad_id, bos_id, eos_id, unk_id, mask_id, cls_id, sep_id
        if name.endswith("_id") and name[:-3] in _ROLE_ALIASES:
            return self.special_ids[name[:-3]]
        raise AttributeError(name)

    # -- files -------------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write tokenizer.json (into `path` if it is a folder)."""
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        self.backend.save(path)

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        """A tokenizer.json, or a folder with one; a Hugging Face folder with only the family's
        vocab.txt (BERT) or spiece.model (T5, ALBERT, XLNet) is converted (convert.py)."""
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, "tokenizer.json")):
                converted = convert_folder(path)
                if converted is not None:
                    return cls(converted)
            path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            raise CheckpointError(f"no tokenizer at '{path}'; give a tokenizer.json file or a folder that holds one "
                                  "(or a Hugging Face folder with vocab.txt or spiece.model).")
        try:
            return cls(HFTokenizer.from_file(path))
        except Exception as exc:  # the Rust library raises plain Exceptions
            raise CheckpointError(f"'{path}' is not a valid tokenizer.json ({str(exc).splitlines()[0][:120]}).") from None


def train_bpe(texts: Iterator[str], vocab_size: int = 8192, show_progress: bool = True) -> Tokenizer:
    """Byte-level BPE (GPT-2's scheme): every byte is representable, so nothing is ever unknown."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise DataError(f"a byte-level BPE vocabulary needs at least {256 + len(SPECIAL_TOKENS)} entries; got {vocab_size}.")
    backend = HFTokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(backend)


def train_char(texts: Iterator[str]) -> Tokenizer:
    """One token per character seen in the text (sorted), after the special tokens."""
    chars: Counter[str] = Counter()
    for text in texts:
        chars.update(text)
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS.values())}
    for ch in sorted(chars):
        vocab.setdefault(ch, len(vocab))
    # Each character is its own pre-token, so the BPE model (with no merges) maps it straight to its id.
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=[], unk_token=SPECIAL_TOKENS["unk"]))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(SPECIAL_TOKENS.values()))
    return Tokenizer(backend)


def train_wordpiece(texts: Iterator[str], vocab_size: int = 8192, lowercase: Optional[bool] = None,
                    family: Optional[str] = None, show_progress: bool = True) -> Tokenizer:
    """BERT's WordPiece (uncased unless `lowercase` is False; family bert or electra), trained on
    `texts`: [PAD] [UNK] [CLS] [SEP] [MASK] take ids 0-4, pieces inside a word are marked `##`."""
    return Tokenizer(trained_wordpiece(texts, vocab_size, lowercase, family, show_progress))


def train_unigram(texts: Iterator[str], vocab_size: int = 8192, lowercase: Optional[bool] = None,
                  family: Optional[str] = None, show_progress: bool = True) -> Tokenizer:
    """A SentencePiece-style Unigram model trained on `texts`, words marked by a leading `▁`, with
    the special tokens and template of `family`: t5 (default: <pad> </s> <unk>), albert or xlnet."""
    return Tokenizer(trained_unigram(texts, vocab_size, lowercase, family, show_progress))
