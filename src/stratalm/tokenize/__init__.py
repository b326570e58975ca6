"""Text -> ids: train, load and save tokenizers (Hugging Face `tokenizers`, tokenizer.json on disk)."""
from .tokenizer import SPECIAL_TOKENS, Tokenizer, train_bpe, train_char, train_unigram, train_wordpiece

__all__ = ["SPECIAL_TOKENS", "Tokenizer", "train_bpe", "train_char", "train_unigram", "train_wordpiece"]
