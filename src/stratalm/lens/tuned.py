"""The tuned lens (Belrose et al. 2023, "Eliciting Latent Predictions from Transformers with the
Tuned Lens"): before the logit lens reads depth l through the family's head, an affine translator
h -> h + A_l h + b_l moves the stream into the basis the head expects. Each translator starts at
the identity (A = 0, b = 0), so an untrained tuned lens is exactly the logit lens, and is trained
to minimise KL(final distribution || head(translator(h_l))) on windows of a prepared corpus; the
model itself stays frozen. As in the paper the last depth keeps the identity: its stream through
the head is the model's own output, so there is nothing to translate.

Every family goes through `lens_head`: decoders and T5's decoder read through the LM head,
encoders through the MLM head (the final distribution is the MLM head's at every position of an
unmasked window), ELECTRA's discriminator through its replaced-token head. An encoder window is
wrapped as [CLS] window [SEP], the template the MLM objective trains on; T5's encoder reads the
window and its decoder the window itself after the start token (what `text_inputs` and the report
use), so the decoder's stream is read on text whose source it sees in full.

    lens = train_tuned_lens(model, TokenData("runs/data"), steps=250)
    lens.save("runs/lens");  lens = TunedLens.load("runs/lens", model)
    logit_lens(model, inputs, translators=lens.translators);  compare(model, lens, data)
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Union

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from ..checkpoint import recover
from ..checkpoint.transaction import atomic_update
from ..data.tokens import RandomWindows, TokenData, sequential_windows
from ..errors import CheckpointError, ConfigError, DataError
from ..models.anatomy import heads as model_heads
from ..version import __version__
from .logit_lens import LensHead, lens_head, lens_points
from .trace import trace

WEIGHTS, META = "tuned_lens.safetensors", "tuned_lens.json"
OPTIMIZERS = {"adamw": 1e-3, "sgd": 1.0}  # name -> default learning rate (the paper's SGD runs at 1.0)


class Translator(nn.Module):
    """h + A h + b, computed in fp32. With A = 0 and b = 0 the sum adds exact zeros, so the
    start is the identity bit for bit, and weight decay pulls A back toward it."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(width, width))
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, T, d)
        x = h.float()
        return (x + F.linear(x, self.weight, self.bias)).to(h.dtype)


def head_name(model: nn.Module) -> str:
    """The head `lens_head` reads through (same order of preference), for the fingerprint."""
    present = model_heads(model)
    if model.config.stack != "encoder" and "lm_head" in present:
        return "lm_head"
    return "mlm_head" if "mlm_head" in present else "rtd_head"


def fingerprint(model: nn.Module) -> dict[str, Any]:
    """What a tuned lens must agree with: the family, the stack it reads, its depth and width,
    the head and the number of the head's outputs."""
    head = lens_head(model)  # raises the "which heads it has" error for a model without one
    config = model.config
    return {"family": config.family, "stack": head.prefix.rstrip(".") or "stack",
            "n_layers": len(lens_points(model, head)) - 1, "d_model": config.d_model, "head": head_name(model),
            "outputs": len(head.classes) if head.classes is not None else config.vocab_size}


def describe(fp: dict[str, Any]) -> str:
    return (f"a {fp['family']} model whose {fp['stack']} has {fp['n_layers']} layers of width "
            f"{fp['d_model']} read through its {fp['head']} ({fp['outputs']} outputs)")


class TunedLens(nn.Module):
    """One translator per depth 0..L-1 (the embedding output, then each block but the last);
    `translators` adds the identity of depth L, the form `logit_lens(translators=...)` takes."""

    def __init__(self, fp: dict[str, Any], record: Optional[dict[str, Any]] = None) -> None:
        super().__init__()
        self.fingerprint = dict(fp)
        self.layers = nn.ModuleList(Translator(fp["d_model"]) for _ in range(fp["n_layers"]))
        self.record: dict[str, Any] = dict(record or {})  # how it was trained (tuned_lens.json)

    @classmethod
    def for_model(cls, model: nn.Module) -> "TunedLens":
        """An untrained (identity) lens for `model`, on its device."""
        return cls(fingerprint(model)).to(next(model.parameters()).device)

    @property
    def translators(self) -> list[nn.Module]:
        return [*self.layers, nn.Identity()]

    def check(self, model: nn.Module, source: str = "this tuned lens") -> None:
        here = fingerprint(model)
        if here != self.fingerprint:
            raise CheckpointError(f"{source} was trained for {describe(self.fingerprint)}, not for {describe(here)}; "
                                  f"train a tuned lens for this model.")

    def save(self, path: str) -> None:
        """Write tuned_lens.safetensors + tuned_lens.json into the folder `path`, atomically."""
        with atomic_update(path, "the tuned lens") as staging:  # a full disk is one sentence, the folder intact
            save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                      os.path.join(staging, WEIGHTS), metadata={"format": "pt"})
            meta = {"stratalm_version": __version__, "fingerprint": self.fingerprint, "training": self.record}
            with open(os.path.join(staging, META), "w") as handle:
                json.dump(meta, handle, indent=2)

    @classmethod
    def load(cls, path: str, model: Optional[nn.Module] = None) -> "TunedLens":
        """Read a folder written by `save`; with `model`, check that it was trained for it and
        place it on the model's device."""
        if os.path.isdir(path):
            recover(path)
        meta_file, weights_file = os.path.join(path, META), os.path.join(path, WEIGHTS)
        if not os.path.isfile(meta_file) or not os.path.isfile(weights_file):
            raise CheckpointError(f"'{path}' is not a tuned-lens folder (it needs {META} and {WEIGHTS}); "
                                  f"train one with train_tuned_lens and save it there.")
        try:
            with open(meta_file) as handle:
                meta = json.load(handle)
            lens = cls(meta["fingerprint"], meta.get("training"))
            state = load_file(weights_file)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, SafetensorError, OSError) as exc:
            raise CheckpointError(f"the tuned lens in '{path}' is corrupt ({str(exc)[:80]}); train it again.") from None
        expected = lens.state_dict()
        if set(state) != set(expected) or any(state[k].shape != v.shape for k, v in expected.items()):
            raise CheckpointError(f"the weights in '{weights_file}' do not match its {META}; train the lens again.")
        lens.load_state_dict(state)
        if model is not None:
            lens.check(model, f"the tuned lens in '{path}'")
            lens.to(next(model.parameters()).device)
        return lens


# -- reading windows ---------------------------------------------------------------------------------
def usable_window(model: nn.Module, requested: Optional[int]) -> int:
    """The longest window the model reads once its template is added (at most `requested`)."""
    config = model.config
    limit = config.max_seq_len - (config.pad_token_id + 1 if config.padding_positions else 0)
    limit -= {"decoder": 0, "encoder": 2, "encoder-decoder": 1}[config.stack]  # [CLS] [SEP] / the start token
    if requested is not None and requested < 1:
        raise ConfigError(f"the window must hold at least one token; got {requested}.")
    return min(requested, limit) if requested else limit


def window_inputs(model: nn.Module, windows: torch.Tensor, specials: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Model inputs for windows (B, T) of the corpus, as the family's pretraining reads them."""
    config, B = model.config, windows.shape[0]
    if config.stack == "decoder":
        return {"input_ids": windows}
    if config.stack == "encoder-decoder":
        start = windows.new_full((B, 1), config.decoder_start_token_id)
        return {"input_ids": windows, "decoder_input_ids": torch.cat([start, windows], dim=1)}
    cls_id, sep_id = specials
    return {"input_ids": torch.cat([windows.new_full((B, 1), cls_id), windows, windows.new_full((B, 1), sep_id)], 1)}


def encoder_specials(model: nn.Module, data: TokenData) -> tuple[int, int]:
    if model.config.stack != "encoder":
        return (-1, -1)
    tokenizer = getattr(model, "tokenizer", None) or data.tokenizer()
    if tokenizer.cls_id is None or tokenizer.sep_id is None:
        raise DataError("an encoder's windows are read as [CLS] window [SEP], but this tokenizer has no [CLS] or "
                        "[SEP] token; prepare the data with the model's tokenizer.")
    return tokenizer.cls_id, tokenizer.sep_id


def streams_and_final(model: nn.Module, head: LensHead, points: list[str], inputs: dict[str, torch.Tensor]
                      ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each depth's stream (detached) and the final log-distribution (B, T, V) in fp32: the last
    stream through the head, which is the model's own output (tests/test_lens.py checks it)."""
    captured = trace(model, inputs, points)
    streams = [captured[p] for p in points]
    with torch.no_grad():
        final = F.log_softmax(head.apply(streams[-1]).float(), dim=-1)
    return streams, final


def kl_to_final(final: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(final || softmax(logits)), in nats."""
    log_q = F.log_softmax(logits.float(), dim=-1).flatten(0, -2)
    return F.kl_div(log_q, final.flatten(0, -2), log_target=True, reduction="batchmean")


def as_data(data: Union[TokenData, str], model: nn.Module) -> TokenData:
    data = TokenData(data) if isinstance(data, (str, os.PathLike)) else data
    if data.vocab_size > model.config.vocab_size:
        raise DataError(f"the data's vocabulary has {data.vocab_size} tokens but the model's has "
                        f"{model.config.vocab_size}; prepare the data with the model's tokenizer.")
    return data


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """The model in eval mode (no dropout: the target is the model's distribution, not a noisy
    sample of it) with no gradients of its own; both restored after."""
    flags, was_training = [(p, p.requires_grad) for p in model.parameters()], model.training
    model.eval().requires_grad_(False)
    try:
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
        model.train(was_training)


# -- training and comparing --------------------------------------------------------------------------
def train_tuned_lens(model: nn.Module, data: Union[TokenData, str], steps: int = 250, batch_size: int = 8,
                     window: Optional[int] = None, optimizer: str = "adamw", lr: Optional[float] = None,
                     weight_decay: float = 1e-3, seed: int = 0, progress: bool = True,
                     lens: Optional[TunedLens] = None) -> TunedLens:
    """Train the translators of `lens` (default: a new identity lens) for `steps` batches of
    random windows of the training split, with AdamW or SGD with Nesterov momentum (the paper's)
    and a linear decay of the learning rate to zero. The same seed gives the same lens."""
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"the tuned lens trains with one of {', '.join(OPTIMIZERS)}; got '{optimizer}'.")
    if steps < 1 or batch_size < 1:
        raise ConfigError(f"steps and batch_size must be at least 1; got {steps} and {batch_size}.")
    data = as_data(data, model)
    head, lens = lens_head(model), lens if lens is not None else TunedLens.for_model(model)
    lens.check(model)
    points, specials, length = lens_points(model, head), encoder_specials(model, data), usable_window(model, window)
    sampler = RandomWindows(data, "train", length, seed)
    rate = lr if lr is not None else OPTIMIZERS[optimizer]
    params = list(lens.parameters())
    opt = (torch.optim.AdamW(params, lr=rate, weight_decay=weight_decay) if optimizer == "adamw" else
           torch.optim.SGD(params, lr=rate, momentum=0.9, nesterov=True, weight_decay=weight_decay))
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / steps)
    curve: list[float] = []
    with frozen(model), tqdm(range(steps), desc="tuned lens", unit="step", disable=not progress) as bar:
        lens.train()
        for _ in bar:
            windows, _ = sampler.next_batch(batch_size)
            streams, final = streams_and_final(model, head, points, window_inputs(model, windows, specials))
            opt.zero_grad(set_to_none=True)
            total = 0.0
            # Each depth's loss reaches only its own translator, so a backward per depth gives the
            # gradient of the sum while holding one depth's (B, T, V) logits at a time.
            for translator, stream in zip(lens.layers, streams):
                loss = kl_to_final(final, head.apply(translator(stream)))
                loss.backward()
                total += loss.item()
            opt.step()
            schedule.step()
            curve.append(total / len(lens.layers))
            bar.set_postfix(kl=f"{curve[-1]:.4f}")
    lens.eval()
    lens.record = {"steps": steps + int(lens.record.get("steps", 0)), "batch_size": batch_size, "window": length,
                   "optimizer": optimizer, "lr": rate, "weight_decay": weight_decay, "seed": seed,
                   "data": os.path.abspath(data.folder), "loss": summarize(curve)}
    return lens


def summarize(curve: list[float], points: int = 20) -> dict[str, Any]:
    """The mean training KL per depth at the start and the end, and the curve in at most
    `points` means of consecutive steps (what tuned_lens.json keeps of it)."""
    tail = max(1, len(curve) // 10)
    size = -(-len(curve) // points)
    chunks = [curve[i:i + size] for i in range(0, len(curve), size)]
    return {"first": curve[0], "last": sum(curve[-tail:]) / tail, "steps_per_point": size,
            "curve": [sum(c) / len(c) for c in chunks]}


@torch.no_grad()
def compare(model: nn.Module, lens: TunedLens, data: Union[TokenData, str], windows: int = 64,
            batch_size: int = 8, window: Optional[int] = None, split: str = "validation") -> dict[str, Any]:
    """Mean KL(final || lens) per depth (L+1,) of the plain logit lens (`plain`) and the tuned
    lens (`tuned`) over up to `windows` non-overlapping windows spread over a held-out split."""
    data = as_data(data, model)
    lens.check(model)
    head = lens_head(model)
    points, specials, length = lens_points(model, head), encoder_specials(model, data), usable_window(model, window)
    depth = len(points)
    sums = {"plain": torch.zeros(depth, dtype=torch.float64), "tuned": torch.zeros(depth, dtype=torch.float64)}
    seen = 0
    start, end = data.split(split)
    stride = max(length, (end - start - length) // max(windows - 1, 1))  # `windows` windows across the whole split
    with frozen(model):
        for rows, _ in sequential_windows(data, split, length, stride, batch_size, windows, interleave=True):
            streams, final = streams_and_final(model, head, points, window_inputs(model, rows, specials))
            for d, (translate, stream) in enumerate(zip(lens.translators, streams)):
                sums["plain"][d] += float(kl_to_final(final, head.apply(stream))) * len(rows)
                sums["tuned"][d] += float(kl_to_final(final, head.apply(translate(stream)))) * len(rows)
            seen += len(rows)
    if seen == 0:
        start, end = data.split(split)
        raise DataError(f"the {split} split holds {end - start} tokens, fewer than one window of {length}; "
                        f"give a shorter window or more data.")
    return {"plain": (sums["plain"] / seen).float(), "tuned": (sums["tuned"] / seen).float(), "windows": seen,
            "window": length}
