"""The lens report: one self-contained report.html, a PNG per figure, and every array for scripts.

`write_report(data, out_dir)` takes the data dict the lens computations assemble (contract below),
checks it, and writes into out_dir:
  report.html          inline CSS/JS (report_page.html next to this file), no external request at all
  data.json            every field, arrays as nested lists (6 decimals)
  arrays.safetensors   every array at float32, named like "attention.decoder.cross"
  attention_<stack>_<self|cross>.png, head_stats_<stack>.png, logit_lens.png, patching.png

Contract (numbers may be torch tensors, numpy arrays or nested lists; stack names are "stack" for
decoder- and encoder-only models, "encoder" and "decoder" for T5):
  title, model {family, stack, layers, heads, d_model, source}, text, text_pair (str or None),
  tokens {stack: [str]}, attention {stack: {"self": (L, H, T, T), "cross": (L, H, T_dec, T_enc)}},
  head_stats {stack: {entropy|distance|special|self: (L, H)}},
  logit_lens {stack, top_tokens (L+1, T, k) of str, top_probs (L+1, T, k), final_rank, final_prob,
              kl, tuned_kl optional: (L+1, T)} or {"unavailable": "why"},
  patching {title, metric, rows, cols, values (R, C)} (optional), notes [str].
Lens row 0 is the embedding output, row i the output of block i-1; layers and heads count from 0,
as the hook names do.
"""
from __future__ import annotations

import html
import json
import os
import re
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError

STACK_LABELS = {"stack": "", "encoder": "encoder", "decoder": "decoder"}
STAT_LABELS = {"entropy": "entropy (nats)", "distance": "mean attended distance (tokens)",
               "special": "share on special tokens", "self": "share on the token itself"}
LENS_ARRAYS = ("top_probs", "final_rank", "final_prob", "kl", "tuned_kl")
_PAGE = os.path.join(os.path.dirname(__file__), "report_page.html")


def _fail(sentence: str) -> None:
    raise DataError(f"lens report data: {sentence}")


def _array(value: Any, where: str, shape: tuple) -> np.ndarray:
    """Any of tensor / ndarray / nested lists -> float64 ndarray of `shape` (None = any size)."""
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().float().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        _fail(f"'{where}' is not a rectangular array of numbers (nested lists must have equal lengths).")
    if arr.ndim != len(shape) or any(w is not None and w != n for w, n in zip(shape, arr.shape)):
        want = "(" + ", ".join("?" if w is None else str(w) for w in shape) + ")"
        _fail(f"'{where}' has shape {tuple(arr.shape)}; expected {want}.")
    if not np.isfinite(arr).all():
        _fail(f"'{where}' holds NaN or infinite values; the page can only show finite numbers.")
    return arr


def _str(value: Any, where: str, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        _fail(f"'{where}' must be a string, got {type(value).__name__}.")
    return value


def _strings(value: Any, where: str) -> list:
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) for s in value):
        _fail(f"'{where}' must be a list of strings.")
    return list(value)


def validate(data: dict) -> dict:
    """Check the contract; returns a copy with every array as a float64 ndarray."""
    if not isinstance(data, dict):
        _fail(f"expected a dict, got {type(data).__name__}.")
    for key in ("title", "model", "text", "tokens"):
        if key not in data:
            _fail(f"the key '{key}' is missing.")
    rep = {"title": _str(data["title"], "title"), "text": _str(data["text"], "text"),
           "text_pair": _str(data.get("text_pair"), "text_pair", optional=True)}
    model = data["model"]
    if not isinstance(model, dict):
        _fail("'model' must be a dict of family, stack, layers, heads, d_model and source.")
    if model.get("stack") not in ("decoder", "encoder", "encoder-decoder"):
        _fail(f"'model.stack' is {model.get('stack')!r}; use 'decoder', 'encoder' or 'encoder-decoder'.")
    for key in ("layers", "heads", "d_model"):
        if not isinstance(model.get(key), int) or isinstance(model.get(key), bool) or model[key] < 1:
            _fail(f"'model.{key}' must be a positive int, got {model.get(key)!r}.")
    rep["model"] = {"family": _str(model.get("family"), "model.family"), "stack": model["stack"],
                    "layers": model["layers"], "heads": model["heads"], "d_model": model["d_model"],
                    "source": _str(model.get("source", ""), "model.source")}
    allowed = {"encoder", "decoder"} if model["stack"] == "encoder-decoder" else {"stack"}
    tokens = data["tokens"]
    if not isinstance(tokens, dict) or not tokens or set(tokens) - allowed:
        _fail(f"'tokens' must map {' and '.join(sorted(allowed))} to token lists for a {model['stack']} model.")
    rep["tokens"] = {s: _strings(t, f"tokens.{s}") for s, t in tokens.items()}
    for s, toks in rep["tokens"].items():
        if not toks:
            _fail(f"'tokens.{s}' is empty.")
    heads = model["heads"]
    layers: dict = {}  # a stack's depth, fixed by the first array that shows it (T5 may differ)

    def depth(stack: str) -> Any:
        return layers.get(stack, model["layers"] if stack != "decoder" else None)

    def stack_of(s: str, where: str) -> list:
        if s not in rep["tokens"]:
            _fail(f"'{where}' names the stack '{s}', which has no entry in 'tokens'.")
        return rep["tokens"][s]

    rep["attention"] = {}
    for s, kinds in (data.get("attention") or {}).items():
        t = len(stack_of(s, f"attention.{s}"))
        if not isinstance(kinds, dict) or "self" not in kinds or set(kinds) - {"self", "cross"}:
            _fail(f"'attention.{s}' must be a dict with 'self' (and 'cross' for T5's decoder only).")
        if "cross" in kinds and (s != "decoder" or "encoder" not in rep["tokens"]):
            _fail(f"'attention.{s}.cross' is only for the decoder of an encoder-decoder model with encoder tokens.")
        out = {}
        for kind, arr in kinds.items():
            cols = t if kind == "self" else len(rep["tokens"]["encoder"])
            a = _array(arr, f"attention.{s}.{kind}", (depth(s), heads, t, cols))
            layers[s] = a.shape[0]
            out[kind] = a
        rep["attention"][s] = out
    rep["head_stats"] = {}
    for s, stats in (data.get("head_stats") or {}).items():
        stack_of(s, f"head_stats.{s}")
        if not isinstance(stats, dict) or not stats or set(stats) - set(STAT_LABELS):
            _fail(f"'head_stats.{s}' must map some of {', '.join(STAT_LABELS)} to (layers, heads) arrays.")
        rep["head_stats"][s] = {}
        for k, v in stats.items():
            rep["head_stats"][s][k] = _array(v, f"head_stats.{s}.{k}", (depth(s), heads))
            layers[s] = rep["head_stats"][s][k].shape[0]
    rep["logit_lens"] = _lens(data.get("logit_lens"), rep, depth, stack_of)
    rep["patching"] = None
    if data.get("patching") is not None:
        p = data["patching"]
        if not isinstance(p, dict):
            _fail("'patching' must be a dict of title, metric, rows, cols and values.")
        rows, cols = _strings(p.get("rows"), "patching.rows"), _strings(p.get("cols"), "patching.cols")
        rep["patching"] = {"title": _str(p.get("title"), "patching.title"),
                           "metric": _str(p.get("metric"), "patching.metric"), "rows": rows, "cols": cols,
                           "values": _array(p.get("values"), "patching.values", (len(rows), len(cols)))}
    rep["notes"] = _strings(data.get("notes", []), "notes")
    return rep


def _lens(lens: Any, rep: dict, depth, stack_of) -> Any:
    if lens is None:
        return None
    if not isinstance(lens, dict):
        _fail("'logit_lens' must be a dict (or {'unavailable': 'why'}).")
    if "unavailable" in lens:
        return {"unavailable": _str(lens["unavailable"], "logit_lens.unavailable")}
    s = _str(lens.get("stack"), "logit_lens.stack")
    t = len(stack_of(s, "logit_lens.stack"))
    rows = depth(s) + 1 if depth(s) is not None else None
    out = {"stack": s}
    for key in LENS_ARRAYS:
        if key not in lens and key != "tuned_kl":
            _fail(f"'logit_lens.{key}' is missing (or give {{'unavailable': 'why'}} instead).")
        if key in lens:
            shape = (rows, t, None) if key == "top_probs" else (rows, t)
            out[key] = _array(lens.get(key), f"logit_lens.{key}", shape)
            rows = out[key].shape[0]
    k = out["top_probs"].shape[2]
    top = lens.get("top_tokens")
    if top is None:
        _fail("'logit_lens.top_tokens' is missing.")
    if (not isinstance(top, (list, tuple)) or len(top) != rows
            or any(not isinstance(r, (list, tuple)) or len(r) != t for r in top)
            or any(len(_strings(c, "logit_lens.top_tokens")) != k for r in top for c in r)):
        _fail(f"'logit_lens.top_tokens' must be {rows} x {t} x {k} strings, matching 'top_probs'.")
    out["top_tokens"] = [[list(c) for c in r] for r in top]
    return out


def visible(token: str) -> str:
    """A token as the page shows it: spaces and line breaks made visible, never an empty cell."""
    shown = token.replace(" ", "\u00b7").replace("\n", "\u23ce").replace("\t", "\u21e5").replace("\r", "\u240d")
    return shown or "\u2205"


def as_label(text: str) -> str:
    """A row or column label of the patching map: shown as given, but line breaks made visible."""
    return text.replace("\n", "\u23ce").replace("\t", "\u21e5").replace("\r", "\u240d")


def _permille(a: np.ndarray) -> list:
    """Attention as integers in [0, 1000] (3 decimals), flat, with every run of zeros written as
    one negative number (-n = n zeros): causal masks and weights below 0.0005 are most of a long
    text's T*T entries: a 12 x 12 x 256-token page shrinks from 20 MB to 5 (causal) or 9 MB."""
    q = np.rint(np.clip(a, 0.0, 1.0) * 1000).astype(np.int64).ravel()
    if q.size == 0:
        return []
    nz = q != 0
    starts = np.flatnonzero(np.diff(np.concatenate(([1], nz.astype(np.int8)))) == -1)  # zero runs begin
    ends = np.flatnonzero(np.diff(np.concatenate((nz.astype(np.int8), [1]))) == 1) + 1  # and end
    keep = nz.copy()
    keep[starts] = True  # the first zero of each run carries the run's length
    out = q.copy()
    out[starts] = -(ends - starts)
    return out[keep].tolist()


def _r(a: np.ndarray, digits: int = 4) -> list:
    return np.round(a, digits).tolist()


def page_data(rep: dict) -> dict:
    """What the page's script reads: display tokens, attention as permille, small arrays rounded."""
    shown = {s: [visible(t) for t in toks] for s, toks in rep["tokens"].items()}
    views = []
    for s, kinds in rep["attention"].items():
        for kind, a in kinds.items():
            cols = shown[s] if kind == "self" else shown["encoder"]
            label = f"{STACK_LABELS[s]} {'self' if kind == 'self' else 'cross'}-attention".strip()
            views.append({"id": f"{s}-{kind}", "label": label, "rows": shown[s], "cols": cols,
                          "shape": list(a.shape), "permille": _permille(a)})
    stats = [{"id": s, "label": f"{STACK_LABELS[s] or rep['model']['stack']} stack",
              "maps": [{"name": k, "label": STAT_LABELS[k], "values": _r(v)} for k, v in m.items()]}
             for s, m in rep["head_stats"].items()]
    lens = rep["logit_lens"]
    if lens is not None and "unavailable" not in lens:
        lens = {"stack": lens["stack"], "tokens": shown[lens["stack"]],
                "top_tokens": [[[visible(t) for t in c] for c in r] for r in lens["top_tokens"]],
                **{k: _r(lens[k]) for k in LENS_ARRAYS if k in lens}}
    patch = rep["patching"] and {**rep["patching"], "rows": [as_label(r) for r in rep["patching"]["rows"]],
                                 "cols": [as_label(c) for c in rep["patching"]["cols"]],
                                 "values": _r(rep["patching"]["values"])}
    return {"model": rep["model"], "views": views, "stats": stats, "lens": lens, "patching": patch}


def _header(rep: dict) -> str:
    m, e = rep["model"], html.escape
    facts = [("family", m["family"]), ("stack", m["stack"]), ("layers", m["layers"]), ("heads", m["heads"]),
             ("d_model", m["d_model"]), ("source", m["source"])]
    facts += [(f"{s} tokens" if s != "stack" else "tokens", len(t)) for s, t in rep["tokens"].items()]
    rows = "".join(f"<span class='fact'><b>{e(k)}</b> {e(str(v))}</span>" for k, v in facts)
    text = f"<div class='text'><b>text</b> <span class='raw'>{e(rep['text'])}</span></div>"
    if rep["text_pair"] is not None:
        text += f"<div class='text'><b>text pair</b> <span class='raw'>{e(rep['text_pair'])}</span></div>"
    return f"<h1>{e(rep['title'])}</h1><div class='facts'>{rows}</div>{text}"


def render_html(rep: dict) -> str:
    """The page: the template with the header, notes and the data (as JSON inside a script tag)."""
    with open(_PAGE, encoding="utf-8") as handle:
        page = handle.read()
    # <, > and & escaped inside the JSON so no token can close the script tag or open a comment.
    blob = json.dumps(page_data(rep), ensure_ascii=False, separators=(",", ":"))
    blob = blob.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in rep["notes"]) or "<li class='muted'>none</li>"
    parts = {"TITLE": html.escape(rep["title"]), "HEADER": _header(rep), "NOTES": notes, "DATA": blob}
    # One pass, so text inside one part can never be taken for another part's placeholder.
    return re.sub(r"\{\{(TITLE|HEADER|NOTES|DATA)\}\}", lambda m: parts[m.group(1)], page)


def _arrays(rep: dict) -> dict:
    out = {f"attention.{s}.{k}": a for s, kinds in rep["attention"].items() for k, a in kinds.items()}
    out.update({f"head_stats.{s}.{k}": a for s, m in rep["head_stats"].items() for k, a in m.items()})
    lens = rep["logit_lens"]
    if lens is not None and "unavailable" not in lens:
        out.update({f"logit_lens.{k}": lens[k] for k in LENS_ARRAYS if k in lens})
    if rep["patching"] is not None:
        out["patching.values"] = rep["patching"]["values"]
    return out


def _json_ready(rep: dict) -> Any:
    def conv(v):
        if isinstance(v, np.ndarray):
            return _r(v, 6)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return conv(rep)


def write_report(data: dict, out_dir: str, pngs: bool = True) -> str:
    """Check `data`, write the page, data.json, arrays.safetensors and (pngs) the figures; returns
    the path of report.html. Nothing is written when the data is malformed or matplotlib is missing."""
    rep = validate(data)
    if pngs:
        plt = pyplot()
    os.makedirs(out_dir, exist_ok=True)
    from safetensors.numpy import save_file

    page = os.path.join(out_dir, "report.html")
    with open(page, "w", encoding="utf-8") as handle:
        handle.write(render_html(rep))
    with open(os.path.join(out_dir, "data.json"), "w", encoding="utf-8") as handle:
        handle.write(json.dumps(_json_ready(rep), ensure_ascii=False))  # one write: json.dump is 2x slower
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in _arrays(rep).items()}
    meta = {"format": "stratalm-lens-report", "tokens": json.dumps(rep["tokens"], ensure_ascii=False)}
    save_file(arrays, os.path.join(out_dir, "arrays.safetensors"), metadata=meta)
    if pngs:
        _figures(plt, rep, out_dir)
    return page


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("the report's PNG figures need matplotlib: pip install 'stratalm[plot]' "
                          "(or pass pngs=False).") from None
    return plt


def _mosaic(a: np.ndarray) -> np.ndarray:
    """(L, H, Tq, Tk) -> one image of L x H tiles with a 1-pixel gap (NaN, drawn blank): a single
    imshow instead of L*H subplots, which takes matplotlib seconds at 12 x 12."""
    n_l, n_h, tq, tk = a.shape
    img = np.full((n_l * (tq + 1) - 1, n_h * (tk + 1) - 1), np.nan)
    for i in range(n_l):
        for j in range(n_h):
            img[i * (tq + 1):i * (tq + 1) + tq, j * (tk + 1):j * (tk + 1) + tk] = a[i, j]
    return img


def _figures(plt, rep: dict, out_dir: str) -> None:
    save = lambda fig, name: (fig.savefig(os.path.join(out_dir, name), dpi=110, bbox_inches="tight"), plt.close(fig))
    for s, kinds in rep["attention"].items():
        for kind, a in kinds.items():
            n_l, n_h, tq, tk = a.shape
            fig, ax = plt.subplots(figsize=(min(2 + 1.2 * n_h, 20), min(1 + 1.2 * n_l, 20)))
            ax.imshow(_mosaic(a), cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([j * (tk + 1) + tk / 2 for j in range(n_h)], [str(j) for j in range(n_h)])
            ax.set_yticks([i * (tq + 1) + tq / 2 for i in range(n_l)], [str(i) for i in range(n_l)])
            ax.set_xlabel("head"), ax.set_ylabel("layer")
            ax.set_title(f"{rep['title']}: {STACK_LABELS[s]} {kind}-attention".replace("  ", " "))
            save(fig, f"attention_{s}_{kind}.png")
    for s, maps in rep["head_stats"].items():
        fig, axes = plt.subplots(1, len(maps), figsize=(4 * len(maps), 3.6), squeeze=False)
        for ax, (k, v) in zip(axes[0], maps.items()):
            im = ax.imshow(v, cmap="viridis", aspect="auto")
            ax.set_xticks(range(v.shape[1])), ax.set_yticks(range(v.shape[0]))
            ax.set_title(STAT_LABELS[k], fontsize=9), ax.set_xlabel("head"), ax.set_ylabel("layer")
            fig.colorbar(im, ax=ax, fraction=0.046)
        fig.tight_layout()
        save(fig, f"head_stats_{s}.png")
    lens = rep["logit_lens"]
    if lens is not None and "unavailable" not in lens:
        _lens_figure(plt, lens, rep["tokens"][lens["stack"]], save)
    if rep["patching"] is not None:
        p = rep["patching"]
        v = p["values"]
        lim = float(np.abs(v).max()) or 1.0
        fig, ax = plt.subplots(figsize=(min(3 + 0.4 * len(p["cols"]), 20), min(2 + 0.3 * len(p["rows"]), 20)))
        im = ax.imshow(v, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xticks(range(len(p["cols"])), [as_label(c) for c in p["cols"]], rotation=90, fontsize=7)
        ax.set_yticks(range(len(p["rows"])), [as_label(r) for r in p["rows"]], fontsize=7)
        ax.set_title(f"{p['title']} ({p['metric']})", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
        fig.tight_layout()
        save(fig, "patching.png")


def _lens_figure(plt, lens: dict, tokens: list, save) -> None:
    probs, n_rows, t = lens["top_probs"][:, :, 0], lens["kl"].shape[0], lens["kl"].shape[1]
    fig, (ax, ax_rank, ax_kl) = plt.subplots(1, 3, figsize=(min(9 + 0.5 * t, 26), 2.5 + 0.35 * n_rows),
                                             gridspec_kw={"width_ratios": [max(3, t / 4), 1.3, 1.3]})
    ax.imshow(probs, cmap="Oranges", vmin=0, vmax=1, aspect="auto")
    if t * n_rows <= 1200:  # labels stay readable only on small tables
        for i in range(n_rows):
            for j in range(t):
                ax.text(j, i, visible(lens["top_tokens"][i][j][0])[:8], ha="center", va="center", fontsize=6,
                        color="white" if probs[i, j] > 0.6 else "black")
    ax.set_xticks(range(t), [visible(x)[:10] for x in tokens], rotation=90, fontsize=7)
    row_names = ["embed"] + [f"layer {i}" for i in range(n_rows - 1)]
    ax.set_yticks(range(n_rows), row_names, fontsize=7)
    ax.set_title("top token per layer (colour: its probability)", fontsize=9)
    layers = np.arange(n_rows)
    ax_rank.plot(np.median(lens["final_rank"], axis=1), layers, marker="o")
    ax_rank.set_xscale("symlog"), ax_rank.invert_yaxis(), ax_rank.set_yticks(layers, row_names, fontsize=7)
    ax_rank.set_title("median rank of\nthe final prediction", fontsize=9)
    ax_kl.plot(lens["kl"].mean(axis=1), layers, marker="o", label="logit lens")
    if "tuned_kl" in lens:
        ax_kl.plot(lens["tuned_kl"].mean(axis=1), layers, marker="s", label="tuned lens")
    ax_kl.invert_yaxis(), ax_kl.set_yticks(layers, row_names, fontsize=7), ax_kl.legend(fontsize=7)
    ax_kl.set_title("mean KL to the final\ndistribution (nats)", fontsize=9)
    fig.tight_layout()
    save(fig, "logit_lens.png")
