"""`stratalm plot RUN_DIR`: the curves of a run's metrics.jsonl, drawn to a PNG with matplotlib.

Left: training loss and validation loss against the step. Then the learning rate, and every other
validation metric the objective reported (masked-token accuracy, ...), if any. Below, when the run
measured them (`lens.every`), the layer lens's dynamics per layer. A dashed vertical line in every
panel marks each step where the run resumed. matplotlib is an optional extra.
"""
from __future__ import annotations

import json
import os
from typing import Optional

from .errors import ConfigError, DataError


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise DataError(f"'{run_dir}' has no metrics.jsonl; give the --out folder of a training run.")
    records = []
    with open(path) as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if not isinstance(record, dict) or not isinstance(record.get("step", 0), (int, float)):
                raise DataError(f"'{path}' holds a line that is not a metrics record ({line.strip()[:40]}); give the "
                                f"metrics.jsonl a training run wrote (one JSON object with a step per line).")
            records.append(record)
    if not records:
        raise DataError(f"'{path}' holds no metrics yet.")
    return records


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plotting needs matplotlib: pip install 'stratalm[plot]'.") from None
    return plt


def plot_run(run_dir: str, out: Optional[str] = None) -> str:
    """Draw the run's curves; returns the PNG's path (default RUN_DIR/curves.png)."""
    out = out or os.path.join(run_dir, "curves.png")
    if os.path.isdir(out):
        raise DataError(f"--out '{out}' is a folder; give the path of the PNG file to write.")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise DataError(f"--out '{out}' is in a folder that does not exist; create it first.")
    plt = _pyplot()
    fig = draw_curves(read_metrics(run_dir), os.path.basename(os.path.abspath(run_dir)))
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def draw_curves(records: list[dict], title: str = ""):
    """The figure of a run's metrics records (the lines of its metrics.jsonl)."""
    plt = _pyplot()
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_loss" in r]
    rates = [r for r in train if "lr" in r]
    extra = sorted({k for r in val for k in r if k.startswith("val_") and k not in ("val_loss", "val_perplexity")})
    lens = [r for r in records if any(k.startswith("lens.") for k in r)]
    top = 1 + bool(rates) + bool(extra)  # panels of the top row
    rows, columns = (2, max(3, top)) if lens else (1, top)
    fig, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 4 * rows), squeeze=False)
    ax = axes[0][0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="training loss", lw=1)
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    if rates:
        ax = axes[0][1]
        ax.plot([r["step"] for r in rates], [r["lr"] for r in rates], lw=1, color="tab:green")
        ax.set_xlabel("step")
        ax.set_ylabel("learning rate")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax.grid(alpha=0.3)
    if extra:
        ax = axes[0][top - 1]
        for key in extra:
            ax.plot([r["step"] for r in val if key in r], [r[key] for r in val if key in r], "o-", label=key)
        ax.set_xlabel("step")
        ax.legend()
        ax.grid(alpha=0.3)
    if lens:
        _lens_panels(axes[1], lens)
        for ax in axes[0][top:]:
            ax.axis("off")  # the top row holds the loss, rate and metrics; the rest of it stays blank
    mark_resumes([ax for row in axes for ax in row if ax.axison], resume_steps(records))
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def resume_steps(records: list[dict]) -> list[int]:
    """The steps where the run resumed from a checkpoint (the loop logs an `event: resume` line)."""
    return sorted({int(r["step"]) for r in records if r.get("event") == "resume"})


def mark_resumes(axes, steps: list[int]) -> None:
    """A dashed vertical line at each resume in every panel, labelled once in the first."""
    for ax in axes:
        for i, step in enumerate(steps):
            ax.axvline(step, color="grey", ls="--", lw=0.8, label="resumed" if ax is axes[0] and i == 0 else None)
    if steps and axes:
        axes[0].legend()


# (key prefix, title, what index 0 is): the lens reads the embeddings at depth 0, heads live in blocks.
LENS_PANELS = (("lens.kl.", "logit-lens KL to the final distribution", "depth"),
               ("lens.entropy.", "mean head entropy (nats)", "block"),
               ("lens.cka_prev.", "CKA to the previous measure", "depth"))


def _lens_panels(axes, records: list[dict]) -> None:
    """The layer lens's training dynamics (lens.every): one line per layer in each panel."""
    for ax, (prefix, title, unit) in zip(axes, LENS_PANELS):
        keys = sorted({k for r in records for k in r if k.startswith(prefix)}, key=lambda k: int(k.rsplit(".", 1)[1]))
        for key in keys:
            points = [(r["step"], r[key]) for r in records if key in r]
            ax.plot(*zip(*points), "o-", ms=3, label=f"{unit} {key.rsplit('.', 1)[1]}")
        ax.set_title(title + (" (depth 0 = embeddings)" if unit == "depth" else ""))
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if keys:
            ax.legend(fontsize=7)
