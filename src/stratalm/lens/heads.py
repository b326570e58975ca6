"""Head importance and pruning (Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?").

Every attention head h gets a gate xi_h that multiplies its output (the `attn.z` point, before the
output projection); the forward is the model's own, the gate enters through a lens edit, so no model
needs a head_mask argument. At xi = 1 the model is unchanged, and the importance of a head is

    I_h = E_x | dL(x) / d xi_h |

the expected first-order change of the loss if the head were masked. Gates are one per example and
head, so the absolute value is taken per example, as the formula says (the paper's code takes it per
batch); with a loss that averages over the batch's examples the result is exactly the mean over
examples. By default each layer's scores are divided by their L2 norm, as in the paper, so heads of
different layers compare when pruning globally.

Pruning masks (zeroes z of) the least important fraction of all heads at once, against random orders.
A layer whose heads are all masked still runs: its attention sublayer adds only the output
projection's bias, the feed-forward and the residual stream go on (`keep_one_per_layer` forbids it).

Groups of heads are named by stack and kind: "attn" for one-stack models; "encoder.attn",
"decoder.attn" and "decoder.cross_attn" for T5. Layer i of group "decoder.cross_attn" is the point
"decoder.blocks.<i>.cross_attn.z".
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError, StratalmError
from ..models.seq2seq import shift_right
from ..tasks.base import IGNORE, Task
from ..tasks.common import by_length, model_tokenizer, pad, pad_id_of
from ..tasks.finetune import usable_length
from .points import Edit, Hooks, attached, named_stacks
from .trace import zero_heads

LossFn = Callable[[nn.Module, Any], torch.Tensor]  # (model, batch) -> scalar loss; it calls the model
MetricFn = Callable[[nn.Module, Any], float]  # (model, data) -> one number, higher is better
FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def head_groups(model: nn.Module) -> dict[str, list[str]]:
    """Group name -> the `z` point of each layer, in forward order."""
    groups: dict[str, list[str]] = {}
    for prefix, stack in named_stacks(model).items():
        kinds = ["attn"] + (["cross_attn"] if getattr(stack.blocks[0], "cross", False) else [])
        for kind in kinds:
            groups[prefix + kind] = [f"{prefix}blocks.{i}.{kind}.z" for i in range(len(stack.layer_plan))]
    return groups


# -- importance -------------------------------------------------------------------------------------
def head_importance(model: nn.Module, batches: Iterable[Any], loss_fn: LossFn,
                    normalize: bool = True) -> dict[str, torch.Tensor]:
    """Michel's I_h of every head over `batches`: group -> (layers, heads) tensor (see head_groups).
    `loss_fn(model, batch)` runs the model itself (gates are attached around it). The model runs in
    eval mode (no dropout noise in the gradients) and is left as it was; no parameter gets a gradient."""
    groups = head_groups(model)
    points = [p for names in groups.values() for p in names]
    total = {p: torch.zeros(()) for p in points}
    rows = {p: 0 for p in points}
    modes = {m: m.training for m in model.modules()}
    trainable = {p: p.requires_grad for p in model.parameters()}
    seen = 0
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)  # no parameter gradients: less memory, and nothing in .grad after
        for batch in batches:
            gates: list[tuple[str, torch.Tensor]] = []
            with attached(model, Hooks(edits={p: _gate(p, gates) for p in points})), torch.enable_grad():
                loss = loss_fn(model, batch)
                if not (torch.is_tensor(loss) and loss.requires_grad and loss.dim() == 0):
                    raise StratalmError("the loss must be a scalar tensor computed from the model's outputs with "
                                        "gradients enabled.")
                grads = torch.autograd.grad(loss, [g for _, g in gates], allow_unused=True)
            for (point, gate), grad in zip(gates, grads):
                n = gate.shape[0]
                if grad is not None:  # None: the loss never reads this head
                    # n * |grad| per example: undoes the batch mean, so the average below is E_x.
                    total[point] = total[point] + n * grad.detach().abs().sum(0).float().cpu()
                rows[point] += n
            seen += 1
    finally:
        for module, mode in modes.items():
            module.training = mode
        for p, flag in trainable.items():
            p.requires_grad_(flag)
    if not seen:
        raise DataError("there are no batches to measure head importance on; give some data.")
    out = {}
    for group, names in groups.items():
        scores = torch.stack([total[p] / max(rows[p], 1) for p in names])  # (layers, heads)
        if normalize:  # Michel et al.: each layer's scores by their L2 norm
            scores = scores / (scores.norm(dim=-1, keepdim=True) + 1e-20)
        out[group] = scores
    return out


def _gate(point: str, gates: list[tuple[str, torch.Tensor]]) -> Edit:
    def edit(z: torch.Tensor) -> torch.Tensor:  # (B, heads, T, head_dim)
        gate = torch.ones(z.shape[0], z.shape[1], device=z.device, requires_grad=True)  # one per example and head
        gates.append((point, gate))  # a loss that calls the model twice gets a gate per call
        return z * gate.to(z.dtype)[:, :, None, None]

    return edit


# -- pruning ----------------------------------------------------------------------------------------
@dataclass
class PruningCurve:
    """The metric after masking each fraction of all heads, least important first and in random orders."""

    fractions: list[float]
    pruned: list[int]  # heads masked at each fraction (of `total_heads`)
    total_heads: int
    unpruned: float
    by_importance: list[float]
    random_mean: list[float]
    random_std: list[float]  # standard deviation over the random orders (0 with one order)
    random: list[list[float]] = field(default_factory=list)  # [order][fraction]
    order: list[tuple[str, int]] = field(default_factory=list)  # (z point, head), the pruning order by importance

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pruning_curve(model: nn.Module, data: Any, metric_fn: MetricFn, importance: dict[str, torch.Tensor],
                  fractions: Sequence[float] = FRACTIONS, seed: int = 0, random_orders: int = 3,
                  keep_one_per_layer: bool = False) -> PruningCurve:
    """`metric_fn(model, data)` with the least important `fractions` of all heads masked (zeroed at
    their z points), the same for `random_orders` random orders (seeded), and with no head masked.
    A fraction masks round(fraction x heads) heads; the sets grow by prefix, so each curve is nested."""
    if any(not 0.0 <= f <= 1.0 for f in fractions) or random_orders < 0:
        raise ConfigError("pruning fractions go from 0 to 1 and random_orders is 0 or more.")
    heads = _flat_heads(model, importance)
    scores = torch.cat([importance[g].flatten().float().cpu() for g in importance])
    by_importance_order = torch.argsort(scores, stable=True).tolist()  # ties: forward order
    generator = torch.Generator().manual_seed(seed)
    random_sequences = [torch.randperm(len(heads), generator=generator).tolist() for _ in range(random_orders)]

    def measure(order: list[int], n: int) -> float:
        chosen = _take(heads, order, n, keep_one_per_layer)
        edits: dict[str, Edit] = {}
        for point in dict.fromkeys(heads[i][0] for i in chosen):
            edits.update(zero_heads(sorted(heads[i][1] for i in chosen if heads[i][0] == point), point))
        with attached(model, Hooks(edits=edits)), torch.no_grad():
            return float(metric_fn(model, data))

    counts = [round(f * len(heads)) for f in fractions]
    if keep_one_per_layer:
        counts = [min(n, len(heads) - len({h[0] for h in heads})) for n in counts]
    unpruned = measure([], 0)
    ours = [measure(by_importance_order, n) for n in counts]
    randoms = [[measure(order, n) for n in counts] for order in random_sequences]
    table = torch.tensor(randoms, dtype=torch.float64).reshape(random_orders, len(counts))
    mean = table.mean(0).tolist() if random_orders else [float("nan")] * len(counts)
    std = table.std(0).tolist() if random_orders > 1 else [0.0] * len(counts)
    return PruningCurve(list(fractions), counts, len(heads), unpruned, ours, mean, std, randoms,
                        [heads[i] for i in by_importance_order])


def _flat_heads(model: nn.Module, importance: dict[str, torch.Tensor]) -> list[tuple[str, int]]:
    """(z point, head) of every score, in the order `importance` flattens (group, layer, head)."""
    groups = head_groups(model)
    heads = []
    for group, scores in importance.items():
        if group not in groups or scores.dim() != 2 or scores.shape[0] != len(groups[group]):
            raise ConfigError(f"the importance scores do not fit this model (group '{group}'); compute them with "
                              f"head_importance on the same model.")
        heads += [(groups[group][layer], h) for layer in range(scores.shape[0]) for h in range(scores.shape[1])]
    return heads


def _take(heads: list[tuple[str, int]], order: list[int], n: int, keep_one: bool) -> list[int]:
    """The first `n` heads of `order`; with `keep_one`, skipping any that would leave its layer empty."""
    left: dict[str, int] = {}
    for point, _ in heads:
        left[point] = left.get(point, 0) + 1
    chosen = []
    for i in order:
        if len(chosen) == n:
            break
        point = heads[i][0]
        if keep_one and left[point] == 1:
            continue
        left[point] -= 1
        chosen.append(i)
    return chosen


# -- ready-made losses and metrics ------------------------------------------------------------------
@dataclass
class HeadObjective:
    """What head_importance and pruning_curve need for one kind of data:
    `head_importance(model, o.batches, o.loss)` and `pruning_curve(model, o.data, o.metric, importance)`."""

    batches: list[Any]
    loss: LossFn
    data: Any
    metric: MetricFn
    metric_name: str


def text_objective(model: nn.Module, texts: Sequence[str], batch_size: int = 8, max_length: Optional[int] = None,
                   metric: str = "log_likelihood") -> HeadObjective:
    """Next-token cross-entropy on `texts` for a decoder; for T5 the encoder reads each text and the
    decoder predicts it token by token (teacher forcing, as the lens's text_inputs). Texts are cut
    into windows of the context. Metric: mean log-likelihood per predicted token (nats) or top-1 accuracy."""
    config = model.config
    if config.stack not in ("decoder", "encoder-decoder"):
        raise ConfigError(f"text_objective needs a decoder or T5; this {config.family} model is an encoder: use a "
                          f"fine-tuned folder (finetuned_objective) instead.")
    if metric not in ("log_likelihood", "accuracy"):
        raise ConfigError(f"the text metric is 'log_likelihood' or 'accuracy'; got '{metric}'.")
    tokenizer = model_tokenizer(model)
    # A decoder window of w + 1 tokens gives w predictions, and windows share one token so every
    # token after a text's first is predicted once; T5 reads and predicts the same w tokens.
    shift = int(config.stack == "decoder")
    width = min(max_length or config.max_seq_len, usable_length(config)) + shift
    windows = [ids[s:s + width] for ids in tokenizer.encode_batch(list(texts))
               for s in range(0, len(ids), width - shift)]
    windows = [w for w in windows if len(w) >= 2]
    if not windows:
        raise DataError("the texts give no window of two tokens or more; give some text.")
    pad_id = pad_id_of(tokenizer)
    batches = [_lm_batch(config, windows[s:s + batch_size], pad_id) for s in range(0, len(windows), batch_size)]

    def loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits, labels = _lm_logits(model, batch)
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)

    def score(model: nn.Module, data: list[dict[str, torch.Tensor]]) -> float:
        total, count = 0.0, 0
        for batch in data:
            with torch.no_grad():
                logits, labels = _lm_logits(model, batch)
            keep = labels != IGNORE
            if metric == "accuracy":
                total += float((logits.argmax(-1) == labels)[keep].sum())
            else:
                total += float(-F.cross_entropy(logits[keep], labels[keep], reduction="sum"))
            count += int(keep.sum())
        return total / max(count, 1)

    return HeadObjective(batches, loss, batches, score, metric)


def _lm_batch(config: Any, windows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    if config.stack == "decoder":
        inputs, targets = [w[:-1] for w in windows], [w[1:] for w in windows]
        return {"input_ids": pad(inputs, pad_id), "attention_mask": pad([[1] * len(r) for r in inputs], 0),
                "labels": pad(targets, IGNORE)}
    labels = pad(windows, IGNORE)
    mask = pad([[1] * len(w) for w in windows], 0)
    return {"input_ids": pad(windows, pad_id), "attention_mask": mask, "decoder_attention_mask": mask,
            "decoder_input_ids": shift_right(labels, config.decoder_start_token_id, config.pad_token_id),
            "labels": labels}


def _lm_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits
    # bf16/fp16 logits in fp32 for the softmax; fp64 (a precise check) stays fp64
    return logits.to(torch.promote_types(logits.dtype, torch.float32)), batch["labels"].to(device)


def finetuned_objective(model: nn.Module, task: Task, record: dict[str, Any], path: str,
                        batch_size: int = 32) -> HeadObjective:
    """The task's own loss and main metric (accuracy for classification) on the labelled file `path`,
    for a fine-tuned folder: `model, task, record = stratalm.tasks.load_finetuned(folder)`."""
    examples = task.read(path, labelled=True)
    if not examples:
        raise DataError(f"'{path}' holds no examples; give a labelled file.")
    tokenizer = model_tokenizer(model)
    max_length = record.get("max_length", usable_length(model.config))
    features = task.encode(examples, tokenizer, max_length)
    pad_id = pad_id_of(tokenizer)
    if features and "ids" in features[0]:  # similar lengths together: less padding
        groups = list(by_length(features, batch_size))
    else:
        groups = [list(range(s, min(s + batch_size, len(features)))) for s in range(0, len(features), batch_size)]
    batches = [task.collate([features[i] for i in chosen], pad_id) for chosen in groups]

    def score(model: nn.Module, data: list[dict[str, Any]]) -> float:
        return float(task.score(data, task.predict(model, data, max_length, batch_size))[task.main_metric])

    return HeadObjective(batches, task.loss, examples, score, task.main_metric)
