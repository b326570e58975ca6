"""What the layer lens costs: a forward of the 6 x 384 GPT-2 (50,304-token head, 4 x 256 tokens)
with no lens attached, with a lens attached that captures nothing, and capturing every point
(q, k, v, pattern, z, feed-forward activations, every residual stream), side by side in one run;
plus, as the `today` system, the plain forward of an earlier revision (default: the commit before
the lens's hooks), run in a child process from a git worktree in alternating rounds.

Targets (issue 13): no lens = bitwise the same output and as fast as before; every point <= 1.3x.

Run:  python bench/lens_overhead.py [--rounds 5] [--repeats 5] [--baseline REV] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from common import alternate, log, machine_info, summarize

SHAPE = dict(n_layers=6, d_model=384, n_heads=6, d_ff=1536, max_seq_len=256, vocab_size=50304, dropout=0.0)
BATCH, TOKENS = 4, 256


def build():
    from stratalm.families import preset
    from stratalm.models import build_model

    torch.manual_seed(0)
    model = build_model(preset("gpt2", **SHAPE)).eval()
    ids = torch.randint(0, SHAPE["vocab_size"], (BATCH, TOKENS), generator=torch.Generator().manual_seed(1))
    return model, ids


def plain_times(repeats: int) -> list[float]:
    """Timed plain forwards of this process's stratalm (what the baseline child runs)."""
    model, ids = build()
    with torch.inference_mode():
        model(ids)
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(ids)
            out.append(time.perf_counter() - t0)
    return out


def baseline_round(worktree: str, repeats: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": os.path.join(worktree, "src")}
    done = subprocess.run([sys.executable, __file__, "--child", str(repeats)], capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(__file__), check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", default="b53f97b", help="git revision whose plain forward is `today`")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 3")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(plain_times(args.child)))
        return
    if args.quick:
        args.rounds, args.repeats = 3, 3

    from stratalm.lens.points import Hooks, attached, point_names

    model, ids = build()
    every = point_names(model)
    with torch.inference_mode():
        reference = model(ids).logits
        with attached(model, Hooks(every)) as hooks:
            assert torch.equal(model(ids).logits, reference), "capturing changed the output"
        captured_mb = sum(t.numel() * t.element_size() for t in hooks.cache.values()) / 2**20

    def forward(capture=None):
        def run():
            with torch.inference_mode():
                if capture is None:
                    return model(ids)
                with attached(model, Hooks(capture)):
                    return model(ids)
        return run

    runners = {"no lens": forward(), "lens, nothing captured": forward(()), "every point": forward(every)}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp:
        worktree = os.path.join(tmp, "baseline")
        subprocess.run(["git", "-C", root, "worktree", "add", "--detach", worktree, args.baseline], check=True,
                       capture_output=True)
        try:
            times = {name: [] for name in runners}
            times["today (" + args.baseline + ")"] = []
            for r in range(args.rounds):
                for name, got in alternate(runners, 1, args.repeats, {n: 1 for n in runners}, f"round {r + 1}").items():
                    times[name] += got
                times["today (" + args.baseline + ")"] += baseline_round(worktree, args.repeats)
        finally:
            subprocess.run(["git", "-C", root, "worktree", "remove", "--force", worktree], capture_output=True)
    units = BATCH * TOKENS
    systems = {name: summarize(t, units) for name, t in times.items()}
    base = systems["no lens"]["median_s"]
    result = {"case": "lens_overhead", "unit": "tokens", "machine": machine_info(), "shape": SHAPE,
              "batch": [BATCH, TOKENS], "points": len(every), "captured_mb": round(captured_mb, 1),
              "systems": systems,
              "ratios_to_no_lens": {name: round(s["median_s"] / base, 3) for name, s in systems.items()},
              "targets": {"every point / no lens": "<= 1.3", "no lens / today": "1.00 within noise"}}
    log(json.dumps(result["ratios_to_no_lens"]))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
