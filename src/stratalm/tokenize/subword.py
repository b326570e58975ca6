"""WordPiece (BERT, ELECTRA) and SentencePiece-style Unigram (T5, ALBERT, XLNet) tokenizers: the
families' pipelines, trained with the `tokenizers` trainers or filled from a vocabulary file
(convert.py). Either way the result is one `tokenizers.Tokenizer`, saved as tokenizer.json.

- WordPiece: BERT's normaliser (clean-up, CJK characters split, lowercasing and accent stripping
  when uncased), split on whitespace and punctuation, pieces inside a word marked `##`.
- Unigram: split on whitespace, each word prefixed with `▁` (SentencePiece's marker of a word
  start, so `▁` + pieces rebuild the text). A trained one normalises as SentencePiece does by
  default (nmt_nfkc); a converted one uses the model's own precompiled normaliser.
"""
from __future__ import annotations

from typing import Iterator, Optional

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from ..errors import CheckpointError, DataError
from .layouts import DEFAULT_FAMILY, FAMILIES_OF, LAYOUTS, Layout, template

METASPACE = "▁"


def family_layout(kind: str, family: Optional[str]) -> Layout:
    name = family or DEFAULT_FAMILY[kind]
    if name not in FAMILIES_OF[kind]:
        raise DataError(f"the family of a {kind} tokenizer must be one of {', '.join(FAMILIES_OF[kind])}; got '{name}'.")
    return LAYOUTS[name]


def finish(backend: HFTokenizer, layout: Layout, roles: dict[str, str]) -> HFTokenizer:
    """Mark the family's tokens present in the vocabulary as special (never split out of text,
    skipped on decoding) and give the tokenizer the family's template."""
    present = [t for t in dict.fromkeys([*roles.values(), *layout.extra]) if backend.token_to_id(t) is not None]
    wrapping = [roles[item.partition(":")[0]] for item in layout.pair if not item.startswith("$")]
    missing = next((t for t in wrapping if backend.token_to_id(t) is None), None)
    if missing is not None:  # only a vocabulary from elsewhere can lack it: ours put every one first
        raise CheckpointError(f"the vocabulary has no '{missing}', which the family's input template needs; "
                              "name the token it uses in tokenizer_config.json.")
    backend.add_special_tokens(present)
    backend.post_processor = template(layout, roles, backend.token_to_id)
    return backend


def wordpiece_pipeline(model: models.WordPiece, lowercase: bool, strip_accents: Optional[bool] = None,
                       chinese_chars: bool = True) -> HFTokenizer:
    backend = HFTokenizer(model)
    # strip_accents None follows lowercase, as in the original BERT
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=chinese_chars,
                                                    strip_accents=strip_accents, lowercase=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend


def unigram_pipeline(model: models.Unigram, layout: Layout, lowercase: bool, base: normalizers.Normalizer,
                     strip_accents: bool = True) -> HFTokenizer:
    """`base` is SentencePiece's own normalisation, after the family's (ALBERT, XLNet) clean-ups."""
    steps: list[normalizers.Normalizer] = []
    if layout.quotes_and_accents:
        steps += [normalizers.Replace("``", '"'), normalizers.Replace("''", '"')]
        if strip_accents:
            steps += [normalizers.NFKD(), normalizers.StripAccents()]
    if lowercase:
        steps.append(normalizers.Lowercase())
    backend = HFTokenizer(model)
    backend.normalizer = normalizers.Sequence([*steps, base])
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always")])
    backend.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always")
    return backend


def trained_wordpiece(texts: Iterator[str], vocab_size: int, lowercase: Optional[bool], family: Optional[str],
                      show_progress: bool) -> HFTokenizer:
    """BERT's WordPiece (uncased unless `lowercase` is False), trained on `texts`; the special
    tokens take ids 0.. in the family's order ([PAD] [UNK] [CLS] [SEP] [MASK])."""
    layout = family_layout("wordpiece", family)
    lowercase = layout.lowercase if lowercase is None else lowercase
    backend = wordpiece_pipeline(models.WordPiece(unk_token=layout.roles["unk"]), lowercase)
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=layout.tokens(),
                                        continuing_subword_prefix="##", show_progress=show_progress)
    backend.train_from_iterator(texts, trainer=trainer)
    return finish(backend, layout, layout.roles)


def trained_unigram(texts: Iterator[str], vocab_size: int, lowercase: Optional[bool], family: Optional[str],
                    show_progress: bool) -> HFTokenizer:
    """A SentencePiece-style Unigram model trained on `texts` with the special tokens of `family`
    (t5 by default: <pad> </s> <unk>; albert; xlnet) first, in that family's order."""
    layout = family_layout("unigram", family)
    lowercase = layout.lowercase if lowercase is None else lowercase
    sentencepiece_default = normalizers.Sequence([normalizers.Nmt(), normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    backend = unigram_pipeline(models.Unigram(), layout, lowercase, sentencepiece_default)
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=layout.tokens(), unk_token=layout.roles["unk"],
                                      show_progress=show_progress)
    backend.train_from_iterator(texts, trainer=trainer)
    return finish(backend, layout, layout.roles)
