"""Read a prepared folder: memory-mapped shards, splits, random training windows, eval windows."""
from __future__ import annotations

import json
import os
from typing import Iterator, Optional

import numpy as np
import torch

from ..errors import DataError
from ..tokenize import Tokenizer
from .prepare import MANIFEST


class TokenData:
    """The token stream of a prepared folder, as one logical array over its shards."""

    def __init__(self, folder: str) -> None:
        path = os.path.join(folder, MANIFEST)
        if not os.path.isfile(path):
            raise DataError(f"'{folder}' is not a prepared data folder (no {MANIFEST}); run `stratalm prepare` first.")
        try:
            with open(path) as handle:
                self.manifest = json.load(handle)
            self.folder = folder
            self.shards = [
                np.memmap(os.path.join(folder, s["file"]), dtype=self.manifest["dtype"], mode="r", shape=(s["tokens"],))
                for s in self.manifest["shards"]
            ]
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"'{folder}' holds a damaged prepared data set ({exc}); run `stratalm prepare` again.") from None
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])  # shard i holds [starts[i], starts[i+1])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.load(os.path.join(self.folder, self.manifest["tokenizer"]))

    def split(self, name: str) -> tuple[int, int]:
        start, end = self.manifest["splits"][name]
        return int(start), int(end)

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the whole stream, across shard borders if needed."""
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        local = start - self.starts[i]
        if local + length <= len(self.shards[i]):
            return self.shards[i][local:local + length]
        pieces, need = [], length
        while need > 0:
            piece = self.shards[i][local:local + need]
            pieces.append(piece)
            need -= len(piece)
            i, local = i + 1, 0
        return np.concatenate(pieces)

    def document_starts(self) -> np.ndarray:
        return np.fromfile(os.path.join(self.folder, self.manifest["documents"]), dtype=np.uint64)

    def document_of(self, offsets: torch.Tensor) -> torch.Tensor:
        """The index of the document each stream offset falls in."""
        if not hasattr(self, "_doc_starts"):
            self._doc_starts = self.document_starts().astype(np.int64)
        return torch.from_numpy(np.searchsorted(self._doc_starts, offsets.numpy(), side="right") - 1)


class RandomWindows:
    """Batches of windows at uniformly random offsets of a split (nanoGPT's sampler).

    Randomness comes only from `generator`, whose state the trainer saves, so a resumed run draws
    exactly the batches the uninterrupted run would have drawn.
    """

    def __init__(self, data: TokenData, split: str, window: int, seed: int) -> None:
        self.data, self.window = data, window
        self.start, self.end = data.split(split)
        if self.end - self.start < window + 1:
            raise DataError(
                f"the {split} split holds {self.end - self.start} tokens, fewer than one window of {window}; "
                f"use a shorter model.max_seq_len or more data."
            )
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw `batch_size` windows (every process draws the same ones from the same state);
        returns them (B, window) with their offsets in the stream (B,)."""
        offsets = torch.randint(self.start, self.end - self.window + 1, (batch_size,), generator=self.generator)
        rows = [self.data.read(int(o), self.window) for o in offsets]
        return torch.from_numpy(np.stack(rows).astype(np.int64)), offsets


def sequential_windows(
    data: TokenData, split: str, window: int, stride: int, batch_size: int,
    max_windows: Optional[int] = None, part: int = 0, parts: int = 1, interleave: bool = False,
) -> Iterator[torch.Tensor]:
    """Every window [s, s + window) with s stepping by `stride` over a split, in batches: with
    stride = window - 1 a causal model predicts each token of the split exactly once.
    `part` of `parts` takes every parts-th window, so processes can share the work. Yields
    (windows, their offsets). `interleave` puts windows from all over the split in each batch
    (batch k holds windows k, k + n/batches, ...), so a batch spans many documents."""
    start, end = data.split(split)
    offsets = list(range(start, end - window + 1, stride))[:max_windows or None][part::parts]
    if interleave:
        batches = -(-len(offsets) // batch_size)
        offsets = [o for k in range(batches) for o in offsets[k::batches]]
    for i in range(0, len(offsets), batch_size):
        chosen = offsets[i:i + batch_size]
        rows = [data.read(o, window) for o in chosen]
        yield torch.from_numpy(np.stack(rows).astype(np.int64)), torch.tensor(chosen)
