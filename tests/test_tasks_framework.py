"""The fine-tuning framework: data readers, the errors a user can cause, partial updates (frozen
parameters stay bitwise unchanged, layer-wise learning rates), and exact resume of an interrupted run."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import stratalm
from stratalm.cli import main
from stratalm.models import build_model
from stratalm.tasks import task_names
from stratalm.tokenize import train_char

WORDS = "the a movie film plot actor story was is very quite really".split()


def toy_sentence(rng: random.Random, positive: bool) -> str:
    words = rng.sample(WORDS, 5)
    words.insert(rng.randrange(6), "good" if positive else "bad")
    return " ".join(words)


def write_sentiment(path: Path, n: int, seed: int, header: str = "sentence\tlabel") -> Path:
    """A TSV whose label is 1 when the sentence holds "good", 0 when it holds "bad"."""
    rng = random.Random(seed)
    lines = [header]
    for _ in range(n):
        label = rng.randrange(2)
        lines.append(f"{toy_sentence(rng, bool(label))}\t{label}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_base(folder: Path, texts: list[str], preset: str = "bert", **overrides) -> Path:
    """A tiny randomly initialised model with a character tokenizer, saved as a checkpoint folder."""
    tokenizer = train_char(texts)
    values = dict(n_layers=2, d_model=64, n_heads=4, d_ff=128, max_seq_len=96, vocab_size=tokenizer.vocab_size)
    torch.manual_seed(0)
    model = build_model(stratalm.preset(preset, **{**values, **overrides}))
    model.tokenizer = tokenizer
    stratalm.save(model, str(folder))
    return folder


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    train = write_sentiment(root / "train.tsv", 240, 1)
    dev = write_sentiment(root / "dev.tsv", 60, 2)
    base = make_base(root / "base", [train.read_text(), dev.read_text()])
    return {"train": train, "dev": dev, "base": base, "root": root}


def finetune_args(toy, out, *extra) -> list[str]:
    return ["finetune", "--task", "classification", "--model", str(toy["base"]), "--train", str(toy["train"]),
            "--out", str(out), "--batch-size", "16", "--lr", "1e-3", "--quiet", *map(str, extra)]


def error_of(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


# -- data files ------------------------------------------------------------------------------------
def test_tsv_keeps_quotes_and_drops_the_bom(tmp_path):
    from stratalm.tasks.data_files import read_table

    path = tmp_path / "pairs.tsv"
    path.write_text('\ufeffQuality\t#1 String\t#2 String\n1\tHe said "the witness\tShe said" twice.\n', encoding="utf-8")
    columns, rows = read_table(str(path))
    assert columns == ["Quality", "#1 String", "#2 String"]
    assert rows == [{"Quality": "1", "#1 String": 'He said "the witness', "#2 String": 'She said" twice.'}]


def test_mrpc_reads_as_pairs_with_its_own_column_names():
    from conftest import SHARED_DATA
    from stratalm.tasks.classification import ClassificationTask

    path = SHARED_DATA / "mrpc" / "dev.tsv"
    if not path.exists():
        pytest.skip(f"{path} is absent (real data lives in ../shared/data)")
    task = ClassificationTask({"text_column": "#1 String", "text_pair_column": "#2 String", "label_column": "Quality"})
    examples = task.read(str(path))
    task.learn(examples)
    assert len(examples) == 408 and task.labels == ["0", "1"]
    assert sum(e["label"] == "1" for e in examples) == 279  # 68% paraphrases, as published
    assert all(e["pair"] for e in examples)


def test_csv_and_jsonl_read_like_tsv(tmp_path):
    from stratalm.tasks.classification import ClassificationTask

    (tmp_path / "a.csv").write_text('text,label\n"good, really",pos\nbad,neg\n', encoding="utf-8")
    (tmp_path / "a.jsonl").write_text('{"text": "good, really", "label": "pos"}\n{"text": "bad", "label": "neg"}\n')
    task = ClassificationTask()
    assert task.read(str(tmp_path / "a.csv")) == task.read(str(tmp_path / "a.jsonl"))
    task.learn(task.read(str(tmp_path / "a.csv")))
    assert task.labels == ["neg", "pos"]


# -- errors a user can cause -----------------------------------------------------------------------
def test_user_errors_are_one_sentence_and_exit_2(toy, tmp_path, capsys):
    unknown = finetune_args(toy, tmp_path / "x")
    unknown[unknown.index("--task") + 1] = "nope"
    listed = error_of(capsys, unknown)
    assert f"unknown task 'nope'; available tasks: {', '.join(task_names())}." in listed and "classification, tagging" in listed
    missing = error_of(capsys, finetune_args(toy, tmp_path / "x", "--text-column", "review"))
    assert "no column 'review'" in missing and "sentence, label" in missing
    unseen = tmp_path / "dev.tsv"
    unseen.write_text("sentence\tlabel\ngood movie\t2\n")
    assert "label '2'" in error_of(capsys, finetune_args(toy, tmp_path / "x", "--dev", unseen))
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    assert "is empty" in error_of(capsys, finetune_args(toy, tmp_path / "x", "--dev", empty))
    odd = tmp_path / "train.xlsx"
    odd.write_text("x")
    args = finetune_args(toy, tmp_path / "x")
    args[args.index("--train") + 1] = str(odd)
    assert "extension '.xlsx'" in error_of(capsys, args)
    assert "does not apply to the tagging task" in error_of(
        capsys, ["finetune", "--task", "tagging", "--model", str(toy["base"]), "--train", str(toy["train"]),
                 "--out", str(tmp_path / "x"), "--text-column", "sentence"])
    assert not (tmp_path / "x").exists()  # nothing was written by a failing command


def test_models_a_task_cannot_use_are_refused(toy, tmp_path, capsys):
    texts = [toy["train"].read_text()]
    t5 = make_base(tmp_path / "t5", texts, "t5", head_dim=16)
    conll = tmp_path / "train.conll"
    conll.write_text("good B-X\nfilm O\n")
    err = error_of(capsys, ["finetune", "--task", "tagging", "--model", str(t5), "--train", str(conll), "--out", str(tmp_path / "o")])
    assert "needs an encoder" in err and "t5 encoder-decoder" in err
    gpt = make_base(tmp_path / "gpt", texts, "tiny")
    args = finetune_args(toy, tmp_path / "o")
    args[args.index("--model") + 1] = str(gpt)
    assert "gpt2 decoder" in error_of(capsys, args)


def test_an_existing_run_is_never_clobbered(toy, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(finetune_args(toy, out, "--max-steps", "2")) == 0
    before = (out / "model.safetensors").read_bytes()
    assert "--resume" in error_of(capsys, finetune_args(toy, out, "--max-steps", "2"))
    assert "lr" in error_of(capsys, finetune_args(toy, out, "--max-steps", "2", "--resume", "--lr", "2e-3"))
    assert (out / "model.safetensors").read_bytes() == before
    (out / "notes.txt").write_text("mine")
    assert main(finetune_args(toy, out, "--max-steps", "2", "--overwrite")) == 0
    assert (out / "notes.txt").read_text() == "mine"


# -- partial updates -------------------------------------------------------------------------------
def changed(base: Path, out: Path) -> dict[str, bool]:
    a, b = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
    return {name: name not in a or not torch.equal(a[name], b[name]) for name in b}  # new tensors count as moved


@pytest.mark.parametrize("flags, frozen", [
    (["--train-only", "head"], lambda n: not n.startswith("classifier.")),
    (["--freeze-layers", "1"], lambda n: n.startswith("stack.blocks.0.")),
    (["--freeze-embeddings"], lambda n: n.split(".")[1] in ("tok_embed", "positions", "token_types", "embed_norm")),
])
def test_frozen_parameters_are_bitwise_unchanged(toy, tmp_path, flags, frozen):
    out = tmp_path / "run"
    assert main(finetune_args(toy, out, "--max-steps", "6", *flags)) == 0  # no --dev: the last weights are kept
    moved = changed(toy["base"], out)
    assert any(frozen(n) for n in moved) and any(not frozen(n) for n in moved)
    assert not any(moved[n] for n in moved if frozen(n))
    assert all(moved[n] for n in moved if not frozen(n) and not n.endswith("bias") and "norm" not in n)
    task = json.loads((out / "task.json").read_text())
    counts = task["parameters"]
    assert 0 < counts["trainable"] < counts["total"]


def test_layer_decay_gives_each_depth_its_learning_rate(toy):
    from stratalm.tasks.partial import layer_decay_groups

    model = build_model(stratalm.preset("bert", n_layers=3, d_model=32, n_heads=2, d_ff=64, vocab_size=50, n_labels=2))
    groups = layer_decay_groups(model, 0.01, 0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert scale[id(params["classifier.out.weight"])] == 1.0 and scale[id(params["pooler.dense.weight"])] == 1.0
    assert scale[id(params["stack.blocks.2.attn.qkv.weight"])] == 0.5
    assert scale[id(params["stack.blocks.0.ff.up.weight"])] == 0.125
    assert scale[id(params["stack.tok_embed.weight"])] == 0.0625
    assert sum(len(g["params"]) for g in groups) == len(params)
    assert all(g["weight_decay"] == 0.0 for g in groups if g["params"][0].dim() < 2)


# -- resume ----------------------------------------------------------------------------------------
def test_an_interrupted_run_resumes_to_the_same_weights(toy, tmp_path, monkeypatch, capsys):
    from stratalm.loop import Loop

    args = ["--dev", toy["dev"], "--max-steps", "12", "--eval-every", "6", "--save-every", "4", "--log-every", "2",
            "--layer-decay", "0.9"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(finetune_args(toy, whole, *args)) == 0

    original, calls = Loop.train_step, {"n": 0}

    def interrupted(self):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt  # a kill during step 6: the last checkpoint is step 4's
        return original(self)

    monkeypatch.setattr(Loop, "train_step", interrupted)
    assert main(finetune_args(toy, parts, *args)) == 130
    monkeypatch.setattr(Loop, "train_step", original)
    assert json.loads((parts / "last" / "trainer_state.json").read_text())["step"] == 4
    assert main(finetune_args(toy, parts, *args, "--resume")) == 0
    assert "resuming from step 4" in capsys.readouterr().out
    for name in ("last/model.safetensors", "last/optimizer.safetensors", "model.safetensors"):
        a, b = load_file(whole / name), load_file(parts / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    lines = lambda run: [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())  # noqa: E731
                         if "event" not in r]  # the resumed run also notes where it resumed
    assert [r.get("loss") for r in lines(whole)] == [r.get("loss") for r in lines(parts)]
