"""The KV cache of a running batch: one preallocated row ("slot") per sequence, each with its own
length, so a sequence can join or leave the batch between two steps without touching the others.

A decode step feeds the last token of every running sequence at once. The stack sees a
`SlotStep` where it expects a KVCache: each layer writes row i's new key at position lengths[i] of
its slot and attends over its slot's first lengths[i] + 1 positions (the rest is masked off)."""
from __future__ import annotations

import torch


class SlotCache:
    def __init__(self, model: torch.nn.Module, slots: int, max_len: int) -> None:
        self.store = model.new_cache(slots, max_len)  # (layers, slots, kv heads, max_len, head dim)
        self.free = list(range(slots))

    def take(self) -> int:
        return self.free.pop()

    def give_back(self, slot: int) -> None:
        self.free.append(slot)

    def fill(self, slot: int, prompt_cache) -> None:
        """Copy a prefilled batch-1 cache (the prompt run alone) into `slot`."""
        n = prompt_cache.length
        self.store.keys[:, slot, :, :n] = prompt_cache.keys[:, 0, :, :n]
        self.store.values[:, slot, :, :n] = prompt_cache.values[:, 0, :, :n]

    def step(self, slots: torch.Tensor, lengths: torch.Tensor) -> "SlotStep":
        return SlotStep(self.store, slots, lengths)


class SlotStep:
    """The cache for one decode step of the rows in `slots` (B,), whose cached lengths are `lengths` (B,)."""

    def __init__(self, store, slots: torch.Tensor, lengths: torch.Tensor) -> None:
        self.store, self.slots, self.lengths = store, slots, lengths
        self.width = int(lengths.max()) + 1  # keys the longest row attends over, its new one included
        self.length = self.width - 1  # what the stack reads as "tokens already cached"
        self.cross: dict = {}

    def attention_mask(self) -> torch.Tensor:
        """(B, width): 1 where a row has a real key (its cached tokens and the new one)."""
        return (torch.arange(self.width, device=self.lengths.device)[None, :] <= self.lengths[:, None]).long()

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.store.keys[layer], self.store.values[layer]  # (slots, nkv, max_len, hd)
        keys[self.slots, :, self.lengths] = k[:, :, 0]  # (B, nkv, hd): each row's new key at its own length
        values[self.slots, :, self.lengths] = v[:, :, 0]
        return keys[self.slots, :, :self.width], values[self.slots, :, :self.width]

    def advance(self, n_tokens: int) -> None:
        """Nothing to do: the model calls this after every step, as it does on a KVCache, but here
        the engine moves each row's own length (rows join and leave at different lengths)."""
