"""In-context learning that you can watch emerge: a 2-layer GPT trained on sequences of random
key -> value examples, where every sequence draws a fresh mapping, so the only way to predict a
value is to find the same key earlier in the sequence and copy what followed it.

A sequence is `k1 v1 k2 v2 ... kN vN`: each key drawn uniformly from KEYS tokens, each value
given by that sequence's own random function from keys to VALUES tokens. The loss is on the
values only. At pair i the model has seen i examples ("shots") of the mapping; a perfect
in-context learner is right whenever the query key appeared among them, and at chance otherwise,
so its accuracy is 1 - (1 - 1/K)^i * (1 - 1/V): the "ideal" curve. Evaluation uses mappings drawn
from a generator of its own seed, never seen in training (K = 8 keys and V = 8 values give 8^8 =
16.8M mappings; the default run trains on 160k fresh sequences).

Along training, each evaluation also scores, through the layer lens (`blocks.*.attn.pattern`) and
stratalm.lens.induction, the two halves of an induction circuit (Olsson et al. 2022): the best
previous-token head (a value attending to its own key) and the best induction head of layer 1 up
(a key attending to the values that followed its earlier occurrences), next to the induction score
of even attention. `--burst P` makes training pairs repeat the previous key with probability P for
the first `--burst-steps` steps (Chan et al. 2022's burstiness); held-out rows stay i.i.d.

Measured (niced, 1 thread, 2 shared and loaded CPU cores). The default (5,000 steps, batch 32, 16
pairs, d_model 128, d_ff 128, lr 1e-3, 649 s): held-out accuracy 0.135/0.25/0.50/0.67/0.76/0.78 at
0/1/4/8/12/15 shots against the ideal 0.125/0.23/0.49/0.70/0.82/0.88. For 3,000 steps the curve is
the in-context unigram heuristic (guess a value the mapping has shown: 0.27-0.35 at 15 shots, train
loss 1.64 -> 1.56), the plateau the ICL literature reports before the phase change; between steps
3,500 and 4,000 an induction head appears, blocks.1.attn head 1 (induction score 0.23/0.69/0.83/0.85
at steps 3,500/4,000/4,500/5,000 against 0.098 for even attention), and the accuracy at 15 shots
jumps with it (0.39/0.65/0.75/0.78 at those steps; 4 shots 0.40 -> 0.50, matching the ideal). The
circuit's first half stays diffuse: the best previous-token head (a value attending to its key) only
reaches 0.15/0.21/0.20/0.18 (blocks.0.attn head 2) at those steps, so what tells a value position
its key is spread out, not one sharp head. What did not get there: d_model 64 (lr 3e-3, 4,000 steps:
flat at 0.28 from step 200, loss 1.87, induction 0.13); lr 2e-3 at d_model 128 (leaves the plateau
sooner, loss 1.40 at step 2,000, 0.47-0.51 at 15 shots, but not by an induction head: 0.18 at step
3,000, loss 1.39-1.47 from step 2,000 on; stopped there); attention-only blocks (a patch not kept)
with T5 relative positions at d_model 64, lr 3e-3 (8 values: loss 1.88 at step 1,000; 32 values:
2.86 at step 1,750; no induction head, 0.13-0.16; both stopped early). Burstiness grows the first
half of the circuit at d_model 64: `--burst 0.5 --burst-steps 150` gives a previous-token head
(blocks.0.attn head 1) of 0.95 by step 100, which decays to 0.18 once the data turn i.i.d.; kept on
for all steps it stays at 0.99 but the model then only copies the previous value (0.227 at every
shot count: the positional shortcut).

    python bench/icl.py [--steps 5000] [--burst 0.5 --burst-steps 150] [--plot docs/icl.png]

Prints one JSON object: the setup, per evaluated step the accuracy by number of shots and the best
induction and previous-token heads, and the ideal curve.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from stratalm.errors import StratalmError
from stratalm.families import preset
from stratalm.lens.induction import induction_scores, previous_token_scores
from stratalm.lens.trace import trace
from stratalm.models import build_model

KEYS, VALUES, PAIRS = 8, 8, 16
EVAL_SEED = 12345  # held-out mappings: a generator training never uses
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Setup:
    """One run's task, model and optimiser (the command line's flags, same names)."""

    keys: int = KEYS
    values: int = VALUES
    pairs: int = PAIRS
    n_layers: int = 2  # an induction circuit needs two: a previous-token head, then a matching head
    d_model: int = 128  # 64 stays on the unigram plateau (see Measured); 128 leaves it for an induction head
    n_heads: int = 4
    d_ff: int = 128
    position: str = "rope"
    burst: float = 0.0  # chance that a training pair repeats the previous pair's key (Chan et al. 2022) ...
    burst_steps: int = 150  # ... during the first this many steps only: 0.5 grows a previous-token head in
    # 100 steps, but left on, the model settles for the positional shortcut "copy the previous value"
    batch_size: int = 32
    lr: float = 1e-3  # 2e-3 leaves the plateau sooner, but for a solution without an induction head
    warmup: int = 100
    seed: int = 0


def make_sequences(n: int, generator: torch.Generator, keys: int = KEYS, values: int = VALUES,
                   pairs: int = PAIRS, burst: float = 0.0) -> torch.Tensor:
    """(n, 2 * pairs) token ids: keys are 0..keys-1, values keys..keys+values-1; row r follows its
    own random mapping (a function: two keys may share a value). With `burst` > 0 each pair repeats
    the key of the pair before it with that probability (training data only: held-out rows are i.i.d.)."""
    mapping = torch.randint(values, (n, keys), generator=generator)  # (n, keys): each row's function
    query = torch.randint(keys, (n, pairs), generator=generator)  # (n, pairs)
    if burst > 0:
        repeat = torch.rand(n, pairs, generator=generator) < burst
        for i in range(1, pairs):  # sequential: a run of repeats carries one key along
            query[:, i] = torch.where(repeat[:, i], query[:, i - 1], query[:, i])
    answer = mapping.gather(1, query) + keys
    return torch.stack([query, answer], dim=2).reshape(n, 2 * pairs)


def ideal_accuracy(shots: int, keys: int = KEYS, values: int = VALUES) -> float:
    """A perfect in-context learner: right when the key was shown, else right by chance."""
    unseen = (1 - 1 / keys) ** shots
    return 1 - unseen + unseen / values


def build_icl_model(setup: Setup = Setup()) -> torch.nn.Module:
    # Rotary positions: a previous-token head (the first half of an induction circuit) needs relative
    # position, which learned absolute positions, starting at N(0, 0.02), take thousands of steps to give.
    config = preset("tiny", vocab_size=setup.keys + setup.values, n_layers=setup.n_layers, d_model=setup.d_model,
                    n_heads=setup.n_heads, d_ff=setup.d_ff, max_seq_len=2 * setup.pairs, dropout=0.0,
                    position=setup.position)
    return build_model(config)


def accuracy_by_shots(model: torch.nn.Module, ids: torch.Tensor, keys: int = KEYS) -> list[float]:
    """Accuracy of the value at pair i, for i = 0..pairs-1 shots before it (argmax over the whole
    vocabulary: a key predicted where a value belongs is wrong)."""
    with torch.no_grad():
        predicted = model(ids).logits[:, 0::2].argmax(-1)  # (B, pairs)
    return (predicted == ids[:, 1::2]).float().mean(0).tolist()


def head_scores(model: torch.nn.Module, ids: torch.Tensor) -> dict:
    """The two halves of an induction circuit, read through the lens (`blocks.*.attn.pattern`):
    each head's induction score at the keys (attention to the values that followed the same key
    before: the answer to copy) and previous-token score at the values (attention to their own key,
    which is how a value position learns which key it belongs to); (layers, heads) each, plus the
    induction score of a head attending evenly to the past."""
    points = trace(model, {"input_ids": ids}, ["blocks.*.attn.pattern"]).cache
    patterns = torch.stack([points[f"blocks.{i}.attn.pattern"] for i in range(len(points))])  # (L, B, H, T, T)
    at_keys = torch.zeros(ids.shape, dtype=torch.bool)
    at_keys[:, 0::2] = True
    induction, uniform = induction_scores(patterns, ids, at_keys)
    return {"induction": induction, "uniform": uniform, "previous_token": previous_token_scores(patterns, ~at_keys)}


def best_head(scores: torch.Tensor, from_layer: int = 0) -> dict:
    """The top head of layers `from_layer` and up, and each layer's top score."""
    layer, head = divmod(int(scores[from_layer:].argmax()), scores.shape[1])
    return {"head": f"blocks.{layer + from_layer}.attn head {head}", "score": round(float(scores[from_layer:].max()), 4),
            "by_layer_max": [round(float(s), 4) for s in scores.max(1).values]}


def evaluate(model: torch.nn.Module, held_out: torch.Tensor, step: int, losses: list[float], started: float) -> dict:
    """One point of the curves: held-out accuracy by shots and the best head of each kind."""
    model.eval()
    heads = head_scores(model, held_out[:64])
    second_layer = min(1, len(heads["induction"]) - 1)
    record = {"step": step, "train_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4) if losses else None,
              "accuracy_by_shots": [round(a, 4) for a in accuracy_by_shots(model, held_out)],
              # Layer 0 cannot hold an induction head (nothing has told a position its previous token yet);
              # its heads that attend evenly to the values score about twice `uniform` without copying.
              "induction": {**best_head(heads["induction"], from_layer=second_layer), "uniform": round(heads["uniform"], 4)},
              "previous_token": best_head(heads["previous_token"]),
              "seconds": round(time.perf_counter() - started, 1)}
    model.train()
    return record


def train(setup: Setup, steps: int, eval_at: list[int], eval_size: int = 512,
          log: Optional[Callable[[str], None]] = None) -> list[dict]:
    """Train from scratch; at each step of `eval_at`, the held-out accuracy by shots and the
    induction and previous-token scores."""
    torch.manual_seed(setup.seed)
    model = build_icl_model(setup)
    data = torch.Generator().manual_seed(setup.seed)
    held_out = make_sequences(eval_size, torch.Generator().manual_seed(EVAL_SEED), setup.keys, setup.values, setup.pairs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=setup.lr, weight_decay=0.0)
    warmup = max(1, setup.warmup)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    records, losses, started = [], [], time.perf_counter()
    for step in range(steps + 1):
        if step in eval_at:
            records.append(evaluate(model, held_out, step, losses, started))
            if log:
                r = records[-1]
                log(f"step {step}: loss {r['train_loss']}, acc@0 {r['accuracy_by_shots'][0]:.3f}, "
                    f"acc@last {r['accuracy_by_shots'][-1]:.3f}, induction {r['induction']['score']:.3f} "
                    f"({r['induction']['head']}), previous-token {r['previous_token']['score']:.3f}")
        if step == steps:
            break
        burst = setup.burst if step < setup.burst_steps else 0.0
        ids = make_sequences(setup.batch_size, data, setup.keys, setup.values, setup.pairs, burst)
        logits = model(ids).logits[:, 0::2]  # predict each value from its key and everything before
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1::2].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return records


def plot(records: list[dict], setup: Setup, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots = list(range(setup.pairs))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = plt.cm.viridis([i / max(len(records) - 1, 1) for i in range(len(records))])
    for record, colour in zip(records, colours):
        left.plot(shots, record["accuracy_by_shots"], color=colour, label=f"step {record['step']}")
    left.plot(shots, [ideal_accuracy(s, setup.keys, setup.values) for s in shots], "k--", label="ideal in-context learner")
    left.axhline(1 / setup.values, color="grey", linestyle=":", label="chance")
    left.set(xlabel="shots (key -> value examples before the query)", ylabel="accuracy on held-out mappings",
             title="Few-shot accuracy by training step", ylim=(0, 1.02))
    left.legend(fontsize=7, loc="lower right")
    steps = [r["step"] for r in records]
    last = setup.pairs - 1
    right.plot(steps, [r["accuracy_by_shots"][last] for r in records], "o-", label=f"accuracy at {last} shots")
    right.plot(steps, [r["accuracy_by_shots"][0] for r in records], "o-", label="accuracy at 0 shots")
    right.plot(steps, [r["induction"]["score"] for r in records], "s-",
               label="best induction head (attention to the\nvalue after the key's earlier occurrences)")
    right.plot(steps, [r["previous_token"]["score"] for r in records], "^-",
               label="best previous-token head (value -> its key)")
    right.plot(steps, [r["induction"]["uniform"] for r in records], ":", color="grey",
               label="induction score of even attention")
    right.set(xlabel="training step", ylabel="accuracy / attention weight",
              title=f"Accuracy and heads by step ({records[-1]['induction']['head']} at the end)", ylim=(0, 1.02))
    right.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def parse_setup(argv: Optional[list[str]]) -> tuple[Setup, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--plot", default=str(ROOT / "docs" / "icl.png"), help="PNG to draw ('' for none)")
    for field in fields(Setup):  # one flag per Setup field, so the two never drift apart
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default)
    args = parser.parse_args(argv)
    setup = Setup(**{field.name: getattr(args, field.name) for field in fields(Setup)})
    problem = setup_problem(setup, args.steps)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    return setup, args


def setup_problem(setup: Setup, steps: int) -> Optional[str]:
    """The first thing wrong with a run's settings, as one sentence (None when it can run)."""
    sizes = {name: getattr(setup, name) for name in ("keys", "values", "n_layers", "d_model", "n_heads", "d_ff",
                                                      "batch_size")}
    for name, size in sizes.items():
        if size < 1:
            return f"--{name.replace('_', '-')} must be at least 1, not {size}."
    if setup.pairs < 2:
        return f"--pairs must be at least 2 (a query needs an example before it), not {setup.pairs}."
    if setup.d_model % setup.n_heads:
        return f"--d-model ({setup.d_model}) must be a multiple of --n-heads ({setup.n_heads})."
    if setup.lr <= 0 or steps < 1:
        return "--lr must be positive and --steps at least 1."
    return None


def main(argv: Optional[list[str]] = None) -> None:
    setup, args = parse_setup(argv)
    eval_at = sorted({0, *(int(args.steps * f) for f in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)), args.steps})
    started = time.perf_counter()
    try:
        records = train(setup, args.steps, eval_at, log=lambda line: print(line, file=sys.stderr, flush=True))
    except StratalmError as error:  # a model setting the library refuses, e.g. an unknown --position
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if args.plot:
        plot(records, setup, Path(args.plot))
    print(json.dumps({**asdict(setup), "steps": args.steps,
                      "ideal_by_shots": [round(ideal_accuracy(s, setup.keys, setup.values), 4) for s in range(setup.pairs)],
                      "records": records, "seconds": round(time.perf_counter() - started, 1),
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
