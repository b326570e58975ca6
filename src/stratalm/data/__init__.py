"""Corpora -> token shards on disk (memory-mapped), and batches drawn from them."""
from .prepare import prepare
from .sources import iter_documents
from .tokens import TokenData

__all__ = ["prepare", "iter_documents", "TokenData"]
