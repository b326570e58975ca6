"""A short run of every pretraining objective, each with the recipe its learning test uses, and
their curves: one `stratalm plot` PNG per run plus a grid of all of them, and the final validation
metrics as JSON. Needs ../shared/data (Tiny Shakespeare, MRPC) and about 13 minutes on 2 quiet CPU cores
(the runs took 736 s on 2026-12-01, AMD EPYC; plm 62 s).
The PNG of docs/objective_curves.png is its grid, runs/objective_curves/objectives.png.

    python bench/objective_curves.py --out runs/objective_curves
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
SMALL = ["model.n_layers=2", "model.d_model=128", "model.n_heads=4", "model.d_ff=512", "model.dropout=0",
         "model.attention_dropout=0", "train.progress=false", "train.log_every=10"]
PRE_NORM = ["model.norm_position=pre", "model.final_norm=true"]
ROPE = ["model.position=rope"]  # learned positions at N(0, 0.02) start on a bag-of-characters plateau

# name -> (data, preset, objective, steps, extra settings)
RUNS = {
    "clm": ("shakespeare", "tiny", "clm", 300, ["model.max_seq_len=64", "train.batch_size=32", "train.lr=3e-3"]),
    "mlm": ("pydoc", "bert", "mlm", 400, ["model.max_seq_len=64", "train.batch_size=32", "train.lr=3e-3", *ROPE]),
    "nsp": ("pydoc", "bert", "nsp", 500, ["model.max_seq_len=64", "train.batch_size=32", "train.lr=1e-3", *PRE_NORM]),
    "sop": ("shakespeare", "albert", "sop", 500, ["model.max_seq_len=128", "model.share_layers=0", "train.batch_size=32",
                                                  "train.lr=1e-3", *PRE_NORM, *ROPE]),
    "rtd": ("shakespeare", "electra", "rtd", 500, ["model.max_seq_len=64", "train.batch_size=32", "train.lr=3e-3", *PRE_NORM,
                                                   *ROPE, "rtd.generator_ratio=0.03125"]),
    "span": ("shakespeare", "t5", "span", 350, ["model.head_dim=32", "model.max_seq_len=128", "train.batch_size=32",
                                                "train.lr=3e-3"]),
    "simcse": ("mrpc", "bert", "simcse", 100, ["model.max_seq_len=64", "train.batch_size=64", "train.lr=1e-3"]),
    "mlm+simcse:0.1": ("mrpc", "bert", "mlm+simcse:0.1", 200, ["model.max_seq_len=64", "train.batch_size=64",
                                                               "train.lr=1e-3"]),
    "plm": ("shakespeare", "xlnet", "plm", 300, ["model.max_seq_len=64", "train.batch_size=32", "train.lr=3e-3"]),
}


def stratalm(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "stratalm", *args], check=True, stdout=subprocess.DEVNULL)


def prepare_data(out: str) -> dict[str, str]:
    from stratalm.demo import write_corpus

    folders = {name: os.path.join(out, "data", name) for name in ("shakespeare", "pydoc", "mrpc")}
    if not os.path.isdir(folders["shakespeare"]):
        stratalm("prepare", os.path.join(SHARED, "tinyshakespeare", "input.txt"), "--out", folders["shakespeare"],
                 "--tokenizer", "char", "--sentinels", "100", "--quiet")
    if not os.path.isdir(folders["pydoc"]):
        write_corpus(os.path.join(out, "topics.jsonl"))
        stratalm("prepare", os.path.join(out, "topics.jsonl"), "--out", folders["pydoc"], "--vocab-size", "2048", "--quiet")
    if not os.path.isdir(folders["mrpc"]):
        sentences = os.path.join(out, "mrpc.jsonl")
        with open(os.path.join(SHARED, "mrpc", "train.tsv"), encoding="utf-8-sig") as handle, open(sentences, "w") as dst:
            for row in list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]:
                dst.writelines(json.dumps({"text": text}) + "\n" for text in row[3:5])
        stratalm("prepare", sentences, "--out", folders["mrpc"], "--vocab-size", "4096", "--quiet")
    return folders


def draw_grid(out: str, finals: dict[str, dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stratalm.plot import read_metrics

    rows = -(-len(RUNS) // 3)
    fig, axes = plt.subplots(rows, 3, figsize=(15, 4 * rows))
    for ax, name in zip(axes.flat, RUNS):
        records = read_metrics(os.path.join(out, name.replace(":", "_")))
        train = [r for r in records if "loss" in r]
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, label="training loss")
        ax.set_title(f"{name}")
        ax.set_xlabel("step")
        metric = next((k for k in ("val_pair_accuracy", "val_masked_accuracy", "val_rtd_accuracy", "val_token_accuracy",
                                   "val_target_accuracy", "val_uniformity", "val_simcse_uniformity")
                       if k in finals[name]), None)
        if metric:
            ax.set_title(f"{name} (final {metric[4:]} {finals[name][metric]:.3f})")
        ax.legend(loc="upper right")
    fig.tight_layout()
    path = os.path.join(out, "objectives.png")
    fig.savefig(path, dpi=90)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/objective_curves")
    parser.add_argument("--only", default="", help="comma-separated run names (default: all)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    folders = prepare_data(args.out)
    finals, seconds = {}, {}
    for name, (data, model, objective, steps, extra) in RUNS.items():
        run_dir = os.path.join(args.out, name.replace(":", "_"))
        if not args.only or name in args.only.split(","):
            started = time.perf_counter()
            stratalm("pretrain", "--data", folders[data], "--out", run_dir, "--overwrite", "--model", model, "--objective",
                     objective, "--max-steps", str(steps), *SMALL, *extra, "train.warmup_steps=30",
                     f"train.eval_every={steps // 4}", "train.eval_windows=256")
            seconds[name] = round(time.perf_counter() - started, 1)
            stratalm("plot", run_dir)
        records = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
        finals[name] = [r for r in records if "val_loss" in r][-1]
    print(json.dumps({"case": "objective_curves", "grid": draw_grid(args.out, finals), "seconds": seconds,
                      "final": finals}, indent=2))


if __name__ == "__main__":
    main()
