"""LoRA: adapters on rows of the fused q/k/v (and gate/up) matrices, merged outputs equal to
unmerged ones, base weights untouched by training, adapters saved apart and reloaded, a folder that
refers to its base (checked by sha256) instead of copying it, --lora-copy-base, exact resume from
a checkpoint of the trained weights alone, LoRA's own default learning rate, --merge-lora."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import stratalm
from stratalm.cli import main
from stratalm.models import build_model
from stratalm.models.lora import LoraConfig, LoRALinear, add_lora, merge_lora
from test_tasks_framework import finetune_args, toy  # noqa: F401  (the toy fixture)


def randomise_adapters(model: torch.nn.Module) -> None:
    """B starts at zero (no change); give it values so the adapters matter."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(0.0, 0.05)


@pytest.mark.parametrize("preset, targets", [("bert", "q,k,v,o,up,down"), ("llama-tiny", "q,v,gate,up,down"),
                                             ("t5", "q,k,v,o")])
def test_merged_model_gives_the_unmerged_outputs(preset, targets):
    torch.manual_seed(0)
    config = stratalm.preset(preset, n_layers=2, d_model=64, n_heads=4, d_ff=96, vocab_size=100, max_seq_len=32,
                             **({"head_dim": 16} if preset == "t5" else {}))
    model = build_model(config).eval()
    ids = torch.randint(5, 100, (2, 12))
    inputs = {"input_ids": ids, **({"decoder_input_ids": ids[:, :6]} if preset == "t5" else {})}
    with torch.no_grad():
        before = model(**inputs).logits
    add_lora(model, LoraConfig(rank=4, alpha=8, targets=LoraConfig.parse_targets(targets)))
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, before)  # B = 0: training starts from the base model
    randomise_adapters(model)
    with torch.no_grad():
        adapted = model(**inputs).logits
        assert float((adapted - before).abs().max()) > 1e-3
        merged = merge_lora(model)(**inputs).logits
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert float((merged - adapted).abs().max()) < 1e-5


def test_adapters_cover_only_their_rows_of_the_fused_qkv():
    torch.manual_seed(0)
    model = build_model(stratalm.preset("llama-tiny", n_layers=1, vocab_size=50))  # grouped-query: k, v narrower than q
    qkv = model.stack.blocks[0].attn.qkv
    x = torch.randn(3, qkv.in_features)
    plain = qkv(x).detach()
    add_lora(model, LoraConfig(rank=2, targets=("k",)))
    randomise_adapters(model)
    q, kv = 4 * 32, 2 * 32  # llama-tiny: 4 query heads, 2 key/value heads of width 32
    out = model.stack.blocks[0].attn.qkv(x).detach()
    assert torch.equal(out[:, :q], plain[:, :q]) and torch.equal(out[:, q + kv:], plain[:, q + kv:])
    assert float((out[:, q:q + kv] - plain[:, q:q + kv]).abs().max()) > 1e-4
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "stack.blocks.0.attn.qkv.lora_A.k", "stack.blocks.0.attn.qkv.lora_B.k"]


def test_unknown_targets_are_refused():
    model = build_model(stratalm.preset("bert", n_layers=1, d_model=32, n_heads=2, d_ff=64, vocab_size=50))
    with pytest.raises(stratalm.StratalmError, match="no 'gate' projection"):
        add_lora(model, LoraConfig(targets=("gate",)))
    with pytest.raises(stratalm.StratalmError, match="unknown LoRA target 'query'"):
        LoraConfig(targets=("query",))


def test_lora_training_leaves_the_base_alone_and_saves_the_adapter_apart(toy, tmp_path, capsys):  # noqa: F811
    from stratalm.models.lora import without_lora
    from stratalm.tasks import load_finetuned

    out = tmp_path / "lora"
    assert main(finetune_args(toy, out, "--dev", toy["dev"], "--max-steps", "30", "--eval-every", "10", "--lr", "5e-3",
                              "--lora-rank", "4", "--lora-targets", "q,v,o")) == 0
    adapter = load_file(out / "adapter.safetensors")
    lora = [k for k in adapter if ".lora_" in k]
    assert len(lora) == 2 * 3 * 2  # A and B x (q, v, o) x 2 blocks
    assert sorted(k for k in adapter if k not in lora) == ["classifier.out.bias", "classifier.out.weight"]  # the new head
    assert json.loads((out / "adapter_config.json").read_text())["targets"] == ["q", "v", "o"]
    task = json.loads((out / "task.json").read_text())
    assert task["best_step"] > 0 and task["dev"]["accuracy"] >= 0.7  # the adapters learned something
    assert task["parameters"]["trainable"] == sum(t.numel() for t in adapter.values()) and task["lr"] == 5e-3

    # Reloaded with its adapter, the folder scores what training measured, on the base's weights bitwise.
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--data", str(toy["dev"])]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(task["dev"]["accuracy"])
    model, _, _ = load_finetuned(str(out))
    base, state = load_file(toy["base"] / "model.safetensors"), model.state_dict()
    shared = [k for k in state if k in base]
    assert len(shared) > 20 and all(torch.equal(base[k], state[k]) for k in shared)
    for name, tensor in model.named_parameters():
        if name in adapter:
            assert torch.equal(tensor, adapter[name])

    # Merged into the weights: a plain folder with the same outputs.
    from stratalm.tasks.folder import merge

    merge(str(out), str(tmp_path / "merged"))
    assert not (tmp_path / "merged" / "adapter.safetensors").exists()
    plain = stratalm.load(str(tmp_path / "merged"))
    ids = torch.randint(8, plain.config.vocab_size, (3, 20))
    with torch.no_grad():
        assert float((plain(ids).logits - model(ids).logits).abs().max()) < 1e-5
        # stratalm.load applies the adapter wherever the folder is loaded (never the bare base, which differs).
        assert float((stratalm.load(str(out))(ids).logits - model(ids).logits).abs().max()) < 1e-5
        with without_lora(model):
            bare = model(ids).logits
        assert float((bare - model(ids).logits).abs().max()) > 1e-4


# -- the folder refers to its base -------------------------------------------------------------------
def lora_run(toy, base, out, *extra) -> list[str]:
    """A short LoRA run on `base` without --lr (LoRA's default learning rate)."""
    return ["finetune", "--task", "classification", "--model", str(base), "--train", str(toy["train"]), "--out", str(out),
            "--batch-size", "16", "--max-steps", "8", "--lora-rank", "4", "--lora-targets", "q,v,o", "--quiet", *map(str, extra)]


def weight_bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors"))


def nudge(base) -> None:
    """Change one weight of the folder `base` a little."""
    weights = load_file(base / "model.safetensors")
    weights[next(k for k in weights if k.endswith("qkv.weight"))][0, 0] += 1e-3
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})


def test_a_lora_folder_keeps_the_adapter_and_a_checked_reference_to_its_base(toy, tmp_path, capsys):  # noqa: F811
    from stratalm.checkpoint.base_reference import weights_digest
    from stratalm.tasks.finetune import LORA_LR, build_finetune_config, finetuning_loop
    from test_tasks_framework import error_of

    base, out = tmp_path / "base", tmp_path / "run"
    shutil.copytree(toy["base"], base)
    cfg = build_finetune_config(None, {"task": "classification", "model": str(base), "train": str(toy["train"]),
                                       "out": str(out), "lora_rank": 4, "lora_targets": "q,v,o",
                                       "loop": {"max_steps": 8, "batch_size": 16, "progress": False}})
    loop = finetuning_loop(cfg)
    loop.fit()
    trained = loop.model.eval()
    loop.close()

    files = {p.name for p in out.iterdir() if p.is_file()}
    assert {"adapter.safetensors", "adapter_config.json", "task.json", "config.json", "tokenizer.json"} <= files
    assert "model.safetensors" not in files
    # Folder and resume checkpoint together (AdamW moments included) weigh a fraction of the base.
    assert weight_bytes(out) < weight_bytes(base) / 5
    reference = json.loads((out / "adapter_config.json").read_text())
    assert reference["base_model_name_or_path"] == str(base.resolve())
    assert reference["base_model_sha256"] == weights_digest(str(base))
    assert json.loads((out / "task.json").read_text())["lr"] == LORA_LR  # the default a LoRA run got

    ids = torch.randint(8, trained.config.vocab_size, (3, 20))
    with torch.no_grad():
        expected = trained(ids).logits
        assert float((stratalm.load(str(out))(ids).logits - expected).abs().max()) < 1e-5

    # A base that changed (one weight nudged) or moved is refused, with the way out.
    nudge(base)
    with pytest.raises(stratalm.StratalmError, match="changed since the adapters were trained.*--lora-copy-base"):
        stratalm.load(str(out))
    base.rename(tmp_path / "moved")
    err = error_of(capsys, ["evaluate", "--model", str(out), "--data", str(toy["dev"])])
    assert f"needs its base model '{base.resolve()}', which is missing; restore it there" in err
    assert "missing" in error_of(capsys, ["convert", str(out), str(tmp_path / "exported")])


def test_lora_copy_base_writes_a_folder_that_stands_alone(toy, tmp_path, capsys):  # noqa: F811
    from stratalm.tasks.finetune_config import LORA_LR

    base, out = tmp_path / "base", tmp_path / "run"
    shutil.copytree(toy["base"], base)
    assert main(lora_run(toy, base, out, "--lora-copy-base")) == 0
    assert f"lr {LORA_LR:g} (LoRA's default; --lr sets another)" in capsys.readouterr().out
    assert (out / "model.safetensors").exists()
    assert "base_model_name_or_path" not in json.loads((out / "adapter_config.json").read_text())
    ids = torch.randint(8, 30, (3, 20))
    with torch.no_grad():
        before = stratalm.load(str(out))(ids).logits
        shutil.rmtree(base)
        assert torch.equal(stratalm.load(str(out))(ids).logits, before)


def test_a_lora_run_resumes_exactly_from_a_checkpoint_of_its_trained_weights(toy, tmp_path, monkeypatch, capsys):  # noqa: F811
    from stratalm.loop import Loop
    from test_tasks_framework import error_of

    args = ["--dev", toy["dev"], "--eval-every", "4", "--save-every", "3", "--log-every", "1", "--lr", "5e-3"]
    base, whole, parts = tmp_path / "base", tmp_path / "whole", tmp_path / "parts"
    shutil.copytree(toy["base"], base)
    assert main(lora_run(toy, base, whole, *args)) == 0
    original, calls = Loop.train_step, {"n": 0}

    def interrupted(self):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # a kill during step 5: the last checkpoint is step 4's
        return original(self)

    monkeypatch.setattr(Loop, "train_step", interrupted)
    assert main(lora_run(toy, base, parts, *args)) == 130
    monkeypatch.setattr(Loop, "train_step", original)
    trainable = load_file(parts / "last" / "model.safetensors")
    assert sorted({k.split(".lora_")[0] if ".lora_" in k else k for k in trainable}) == sorted(
        [f"stack.blocks.{i}.attn.{m}" for i in range(2) for m in ("qkv", "out")] + ["classifier.out.bias", "classifier.out.weight"])
    assert main(lora_run(toy, base, parts, *args, "--resume")) == 0
    assert "resuming from step 4" in capsys.readouterr().out
    for name in ("last/model.safetensors", "last/optimizer.safetensors", "adapter.safetensors"):
        a, b = load_file(whole / name), load_file(parts / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

    # The checkpoint holds no frozen weight, so it resumes only on the same base.
    nudge(base)
    assert "changed since this LoRA run started" in error_of(capsys, lora_run(toy, base, parts, *args, "--resume",
                                                                                "--max-steps", "12"))


def test_lora_runs_get_their_own_default_learning_rate(tmp_path):
    from stratalm.tasks.finetune_config import FINETUNE_LOOP, LORA_LR, build_finetune_config

    assert LORA_LR >= 10 * FINETUNE_LOOP.lr
    assert build_finetune_config(None, {"lora_rank": 8}).loop.lr == LORA_LR
    assert build_finetune_config(None, {}).loop.lr == FINETUNE_LOOP.lr  # full fine-tuning keeps BERT's 5e-5
    assert build_finetune_config(None, {"lora_rank": 8, "loop": {"lr": "5e-5"}}).loop.lr == 5e-5  # given: it wins
    config = tmp_path / "run.yaml"
    config.write_text("lora_rank: 8\nloop:\n  lr: 2.0e-4\n")
    assert build_finetune_config(str(config), {}).loop.lr == 2e-4
    text = subprocess.run([sys.executable, "-m", "stratalm", "finetune", "--help"], capture_output=True, text=True).stdout
    assert f"with --lora-rank, {LORA_LR:g} unless given" in " ".join(text.split())


def test_merge_lora_flag_writes_merged_weights(toy, tmp_path):  # noqa: F811
    args = ["--max-steps", "4", "--lora-rank", "2", "--lora-targets", "q,k,v,o,up,down", "--seed", "3"]
    assert main(finetune_args(toy, tmp_path / "apart", *args)) == 0
    assert main(finetune_args(toy, tmp_path / "merged", *args, "--merge-lora")) == 0
    from stratalm.tasks import load_finetuned

    apart, _, _ = load_finetuned(str(tmp_path / "apart"))
    merged = stratalm.load(str(tmp_path / "merged"))
    assert not (tmp_path / "merged" / "adapter.safetensors").exists()
    assert json.loads((tmp_path / "merged" / "task.json").read_text())["lora_merged"] is True
    ids = torch.randint(8, merged.config.vocab_size, (3, 20))
    with torch.no_grad():
        assert float((merged(ids).logits - apart(ids).logits).abs().max()) < 1e-5


def test_convert_exports_the_adapted_weights(toy, tmp_path):  # noqa: F811
    """`stratalm convert` of a LoRA fine-tune folds the adapter in, so the export predicts as the fine-tune does."""
    args = ["--max-steps", "4", "--lora-rank", "2", "--lora-targets", "q,v", "--seed", "3", "--lr", "1e-2"]
    assert main(finetune_args(toy, tmp_path / "apart", *args)) == 0
    assert main(["convert", str(tmp_path / "apart"), str(tmp_path / "plain")]) == 0
    from stratalm.tasks import load_finetuned

    apart, _, _ = load_finetuned(str(tmp_path / "apart"))
    plain = stratalm.load(str(tmp_path / "plain"))
    ids = torch.randint(8, plain.config.vocab_size, (3, 20))
    with torch.no_grad():
        assert float((plain(ids).logits - apart(ids).logits).abs().max()) < 1e-5
