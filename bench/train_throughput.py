"""Training throughput of stratalm's CausalLM against Hugging Face's GPT2LMHeadModel, side by side.

One training step = forward + cross-entropy loss (computed the same way from both models' logits)
+ backward + gradient clipping at 1.0 + fused AdamW step + zero_grad. For each shape the two models
(same GPT-2 configuration, same parameter count, same random batch) are warmed up, then run in
alternating rounds (the first model of a round rotates, so machine noise hits both); the median
step time per model gives ms/step, tokens/s, the ratio stratalm / transformers, and model FLOP/s
by the PaLM formula, 6N + 12*L*d_model*T FLOPs per token (N excludes the position table, which
does no matmul; the tied head counts once). A 2048x2048 fp32 matmul (median of 10) gives the
machine's ceiling; it is measured before and after every shape and the best is used, since a
single measurement on a shared machine can land in a busy moment.

Run:  .venv/bin/python bench/train_throughput.py [--shapes nanogpt_cpu,gpt2_6x384] [--rounds N]
          [--steps N] [--quick] [--compile]
JSON goes to stdout, progress to stderr. The default run takes about 2-2.5 minutes on 2 CPU cores;
--compile also times stratalm under torch.compile (compile time excluded; about 4.5 minutes).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

from stratalm.families import preset
from stratalm.models import CausalLM

# name: (n_layers, n_heads, d_model, block, vocab, batch, default steps per round)
SHAPES = {
    "nanogpt_cpu": (4, 4, 128, 64, 65, 12, 20),
    "gpt2_6x384": (6, 6, 384, 256, 50304, 8, 3),
}


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def unique_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def build(shape: tuple) -> tuple[CausalLM, GPT2LMHeadModel]:
    L, H, C, T, V = shape[:5]
    torch.manual_seed(0)
    ours = CausalLM(preset("tiny", vocab_size=V, max_seq_len=T, n_layers=L, d_model=C, n_heads=H,
                           d_ff=4 * C, dropout=0.0))
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=T, n_embd=C, n_layer=L, n_head=H,
                                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                    bos_token_id=0, eos_token_id=0))
    return ours.train(), hf.train()


def make_step(model: torch.nn.Module, vocab: int):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    params = [p for p in model.parameters() if p.requires_grad]

    def step(x: torch.Tensor) -> None:
        logits = model(x[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, vocab), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_shape(name: str, args: argparse.Namespace) -> dict:
    L, H, C, T, V, B, default_steps = SHAPES[name]
    steps = args.steps or (max(2, default_steps // 2) if args.quick else default_steps)
    rounds = args.rounds or (2 if args.quick else 5)
    ours, hf = build(SHAPES[name])
    n_ours, n_hf = unique_params(ours), unique_params(hf)
    if n_ours != n_hf:
        log(f"WARNING {name}: parameter counts differ: stratalm {n_ours}, transformers {n_hf}")
    flops_per_token = 6 * (n_ours - T * C) + 12 * L * C * T
    tokens = B * T

    runners = {"stratalm": make_step(ours, V), "transformers": make_step(hf, V)}
    warmup = {"stratalm": 5, "transformers": 5}
    if args.compile:
        compiled = CausalLM(ours.config).train()
        compiled.load_state_dict(ours.state_dict())
        runners["stratalm_compiled"] = make_step(torch.compile(compiled), V)
        warmup["stratalm_compiled"] = 10
    if args.quick:
        warmup = {k: max(2, w // 2) for k, w in warmup.items()}

    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, V, (B, T + 1), generator=gen) for _ in range(4)]
    for label, step in runners.items():
        t0 = time.perf_counter()
        for i in range(warmup[label]):
            step(batches[i % len(batches)])
        log(f"{name}: {label} warmup ({warmup[label]} steps) {time.perf_counter() - t0:.1f}s")

    labels, times = list(runners), {k: [] for k in runners}
    for r in range(rounds):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            for i in range(steps):
                t0 = time.perf_counter()
                runners[label](batches[i % len(batches)])
                times[label].append(time.perf_counter() - t0)
        log(f"{name}: round {r + 1}/{rounds} " + ", ".join(
            f"{k} {1e3 * statistics.median(v[-steps:]):.1f}ms" for k, v in times.items()))

    models = {}
    for label, ts in times.items():
        med = statistics.median(ts)
        gflops = flops_per_token * tokens / med / 1e9
        models[label] = {
            "ms_per_step": round(1e3 * med, 2),
            "ms_min": round(1e3 * min(ts), 2),
            "ms_spread_p25_p75": [round(1e3 * q, 2) for q in statistics.quantiles(ts, n=4)[::2]],
            "tokens_per_s": round(tokens / med, 1),
            "model_gflops": round(gflops, 2),
        }
    tps = {k: v["tokens_per_s"] for k, v in models.items()}
    out = {
        "config": {"n_layers": L, "n_heads": H, "d_model": C, "block": T, "vocab": V, "batch": B},
        "tokens_per_step": tokens,
        "warmup_steps": warmup, "rounds": rounds, "steps_per_round": steps,
        "params": {"stratalm": n_ours, "transformers": n_hf, "equal": n_ours == n_hf},
        "flops_per_token": flops_per_token,
        "transformers_attn_implementation": hf.config._attn_implementation,
        "models": models,
        "ratio_stratalm_over_transformers": round(tps["stratalm"] / tps["transformers"], 3),
    }
    if args.compile:
        out["ratio_compiled_over_transformers"] = round(tps["stratalm_compiled"] / tps["transformers"], 3)
        out["ratio_compiled_over_eager"] = round(tps["stratalm_compiled"] / tps["stratalm"], 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated: " + ", ".join(SHAPES))
    p.add_argument("--rounds", type=int, default=0, help="alternating rounds (default 5, --quick 2)")
    p.add_argument("--steps", type=int, default=0, help="timed steps per model per round (default per shape)")
    p.add_argument("--quick", action="store_true", help="fewer rounds, steps and warmup: a smoke run")
    p.add_argument("--compile", action="store_true", help="also time stratalm under torch.compile")
    args = p.parse_args()
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        p.error(f"unknown shapes {unknown}; choose from {list(SHAPES)}")

    start = time.perf_counter()
    ceilings = [matmul_gflops()]
    log(f"fp32 2048x2048 matmul: {ceilings[0]:.1f} GFLOP/s")
    results = {}
    for name in shapes:
        results[name] = bench_shape(name, args)
        ceilings.append(matmul_gflops())
        log(f"fp32 2048x2048 matmul: {ceilings[-1]:.1f} GFLOP/s")
    ceiling = max(ceilings)
    for res in results.values():
        for m in res["models"].values():
            m["fraction_of_matmul_ceiling"] = round(m["model_gflops"] / ceiling, 3)
    result = {
        "benchmark": "train_throughput",
        "step": "forward + cross_entropy + backward + clip_grad_norm(1.0) + AdamW(fused).step + zero_grad",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(), "threads": torch.get_num_threads(),
        "flops_formula": "PaLM: 6*N + 12*n_layers*d_model*block per token; N = unique params minus position table",
        "matmul_fp32_2048_gflops": round(ceiling, 1),
        "matmul_fp32_2048_gflops_each": [round(c, 1) for c in ceilings],
        "shapes": results,
    }
    result["wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
