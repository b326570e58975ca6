"""Training throughput, stratalm against Hugging Face `transformers` with the same weights: GPT-2
shapes with the causal LM loss (GPT2LMHeadModel) and a BERT shape with the masked LM loss
(BertForMaskedLM); optionally both under torch.compile.

One step = forward + cross-entropy (computed the same way from both models' logits) + backward +
gradient clipping at 1.0 + fused AdamW step + zero_grad. Each configuration builds a stratalm model
(seed 0), saves it with stratalm.save and stratalm.save(format="hf"), and both systems load their
folder, so the two train the same weights on the same batches. Model FLOPs use the PaLM formula:
6*N + 12*n_layers*d_model*T per token, where N counts the parameters that take part in a matrix
multiply (unique parameters minus the position and token-type tables, which are lookups; a tied head
counts once). The fp32 2048x2048 matmul ceiling is measured before and after every configuration in
this run and the best is used, since one measurement on a shared machine can land in a busy moment.

Run:  python bench/train_throughput.py [--configs nanogpt_cpu,gpt2_6x384,bert_mlm_4x256] [--quick]
          [--compile] [--rounds N] [--repeats N] [--no-memory] [--no-record]
--compile also times both systems under torch.compile (compile time excluded; each cold compile
costs 20-30 s, so it is off by default).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional

import torch
import torch.nn.functional as F
from transformers import BertForMaskedLM, GPT2LMHeadModel

import stratalm
from common import Case, Runner, log, matmul_gflops, run_case
from stratalm.families import preset
from stratalm.models import build_model

CONFIGS: dict[str, dict[str, Any]] = {
    # nanoGPT's CPU example (Shakespeare, characters)
    "nanogpt_cpu": dict(kind="gpt", n_layers=4, n_heads=4, d_model=128, block=64, vocab=65, batch=12, repeats=20,
                        smoke=dict(n_layers=1, d_model=32, n_heads=2, block=16, batch=2)),
    # nanoGPT's Shakespeare GPU shape with GPT-2's vocabulary padded to a multiple of 64
    "gpt2_6x384": dict(kind="gpt", n_layers=6, n_heads=6, d_model=384, block=256, vocab=50304, batch=8, repeats=3,
                       smoke=dict(n_layers=1, d_model=32, n_heads=2, block=16, vocab=512, batch=2)),
    # the `bert` preset (4 x 256) with its MLM head and dropout 0.1, as BertForMaskedLM
    "bert_mlm_4x256": dict(kind="bert", n_layers=4, n_heads=4, d_model=256, block=128, vocab=30522, batch=16, repeats=3,
                           smoke=dict(n_layers=1, d_model=32, n_heads=2, block=16, vocab=512, batch=2)),
}
CEILINGS: list[float] = []  # fp32 matmul GFLOP/s, measured between configurations
FLOPS_PER_TOKEN: dict[str, int] = {}


def stratalm_model(config: dict[str, Any]) -> torch.nn.Module:
    shape = dict(vocab_size=config["vocab"], max_seq_len=config["block"], n_layers=config["n_layers"],
                 d_model=config["d_model"], n_heads=config["n_heads"], d_ff=4 * config["d_model"])
    torch.manual_seed(0)
    if config["kind"] == "gpt":
        return build_model(preset("tiny", dropout=0.0, **shape))
    return build_model(preset("bert", pooler=False, nsp_head=False, **shape))  # -> BertForMaskedLM


def flops_per_token(model: torch.nn.Module, config: dict[str, Any]) -> int:
    unique = {id(p): p for p in model.parameters()}.values()
    lookups = {id(model.stack.positions.weight)}
    if model.stack.token_types is not None:
        lookups.add(id(model.stack.token_types.weight))
    matmul_params = sum(p.numel() for p in unique if id(p) not in lookups)
    return 6 * matmul_params + 12 * config["n_layers"] * config["d_model"] * config["block"]


def measure_ceiling(args: argparse.Namespace) -> None:
    n = 256 if args.smoke else 2048
    CEILINGS.append(matmul_gflops(n))
    log(f"fp32 {n}x{n} matmul: {CEILINGS[-1]:.1f} GFLOP/s")


def inputs(config: dict[str, Any], workdir: str, args: argparse.Namespace) -> None:
    measure_ceiling(args)
    model = stratalm_model(config)
    FLOPS_PER_TOKEN[config["name"]] = flops_per_token(model, config)
    stratalm.save(model, os.path.join(workdir, "stratalm"))
    stratalm.save(model, os.path.join(workdir, "hf"), format="hf")


def batches(config: dict[str, Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, targets) pairs, the same for every system: next tokens for a GPT; for BERT, 15% of
    the positions masked (targets elsewhere -100, which the loss ignores)."""
    gen = torch.Generator().manual_seed(1)
    B, T, V = config["batch"], config["block"], config["vocab"]
    out = []
    for _ in range(4):
        if config["kind"] == "gpt":
            x = torch.randint(0, V, (B, T + 1), generator=gen)
            out.append((x[:, :-1], x[:, 1:]))
        else:
            x = torch.randint(5, V, (B, T), generator=gen)
            chosen = torch.rand(B, T, generator=gen) < 0.15
            out.append((x.masked_fill(chosen, 4), x.masked_fill(~chosen, -100)))
    return out


def build(system: str, config: dict[str, Any], workdir: str, args: argparse.Namespace) -> Runner:
    if system.startswith("stratalm"):
        model = stratalm.load(os.path.join(workdir, "stratalm")).train()
        forward = lambda m, x: m(x).logits  # noqa: E731
    else:
        hf_class = GPT2LMHeadModel if config["kind"] == "gpt" else BertForMaskedLM
        model = hf_class.from_pretrained(os.path.join(workdir, "hf")).train()
        if config["kind"] == "gpt":
            forward = lambda m, x: m(x, use_cache=False).logits  # noqa: E731  no cache is built in training
        else:
            forward = lambda m, x: m(x).logits  # noqa: E731
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    params = [p for p in model.parameters() if p.requires_grad]
    compiled = torch.compile(model) if system.endswith("_compiled") else model
    data, position = batches(config), [0]

    def step() -> None:
        x, y = data[position[0] % len(data)]
        position[0] += 1
        logits = forward(compiled, x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    info = {"params": n_params}
    if not system.startswith("stratalm"):
        info["attn_implementation"] = model.config._attn_implementation
    warmup = 10 if system.endswith("_compiled") else 3  # eager: the first step also creates the optimizer state
    return Runner(run=step, units=config["batch"] * config["block"], warmup=warmup, info=info)


def check(config: dict[str, Any], runners: dict[str, Runner], args: argparse.Namespace) -> dict[str, Any]:
    measure_ceiling(args)
    counts = {s: r.info["params"] for s, r in runners.items()}
    return {"params_equal": len(set(counts.values())) == 1, "flops_per_token": FLOPS_PER_TOKEN[config["name"]]}


def finalize(result: dict[str, Any], args: argparse.Namespace) -> None:
    ceiling = max(CEILINGS)
    result["matmul_fp32_ceiling"] = {"n": 256 if args.smoke else 2048, "gflops": round(ceiling, 1),
                                     "each": [round(c, 1) for c in CEILINGS]}
    result["flops_formula"] = "PaLM: 6*N + 12*n_layers*d_model*T per token; N = matmul parameters (no position/type tables)"
    result["step"] = "forward + cross_entropy + backward + clip_grad_norm(1.0) + AdamW(fused).step + zero_grad"
    for entry in result["configs"].values():
        for stats in entry["systems"].values():
            gflops = entry["flops_per_token"] * stats["per_s"] / 1e9
            # Significant digits, not decimals: a smoke-sized model on a busy machine runs far below
            # 0.01 GFLOP/s, and rounding that to 0 would read as "did not run".
            stats["model_gflops"] = float(f"{gflops:.4g}")
            stats["fraction_of_ceiling"] = float(f"{gflops / ceiling:.3g}")


def note(system: str, competitor: Optional[str], entry: dict[str, Any]) -> str:
    ours = entry["systems"][system]
    text = f"{ours['model_gflops']} model GFLOP/s = {ours['fraction_of_ceiling']:.0%} of the fp32 matmul ceiling"
    if competitor is not None:
        text += f" (competitor {entry['systems'][competitor]['fraction_of_ceiling']:.0%})"
    return text


def pairs(args: argparse.Namespace) -> list[tuple[str, Optional[str]]]:
    out: list[tuple[str, Optional[str]]] = [("stratalm", "transformers")]
    if args.compile:
        out.append(("stratalm_compiled", "transformers_compiled"))
    return out


CASE = Case(
    name="train_throughput", unit="tokens", about=__doc__.split("\n\n")[0].replace("\n", " "),
    configs=CONFIGS, pairs=pairs, build=build, inputs=inputs, check=check, finalize=finalize, note=note,
    rounds=5, repeats=3,
    add_arguments=lambda p: p.add_argument("--compile", action="store_true",
                                           help="also time both systems under torch.compile (slow to start)"),
)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    return run_case(CASE, __file__, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
