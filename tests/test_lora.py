"""LoRA: adapters on rows of the fused q/k/v (and gate/up) matrices, merged outputs equal to
unmerged ones, base weights untouched by training, adapters saved apart and reloaded, --merge-lora."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

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
    from stratalm.tasks import load_finetuned

    out = tmp_path / "lora"
    assert main(finetune_args(toy, out, "--dev", toy["dev"], "--max-steps", "30", "--eval-every", "10", "--lr", "5e-3",
                              "--lora-rank", "4", "--lora-targets", "q,v,o")) == 0
    base, saved = load_file(toy["base"] / "model.safetensors"), load_file(out / "model.safetensors")
    shared = [k for k in saved if k in base]
    assert len(shared) > 20 and all(torch.equal(base[k], saved[k]) for k in shared)  # bitwise unchanged
    assert sorted(k for k in saved if k not in base) == ["classifier.out.bias", "classifier.out.weight"]
    adapter = load_file(out / "adapter.safetensors")
    assert len(adapter) == 2 * 3 * 2 and all(".lora_" in k for k in adapter)  # A and B x (q, v, o) x 2 blocks
    assert json.loads((out / "adapter_config.json").read_text())["targets"] == ["q", "v", "o"]
    task = json.loads((out / "task.json").read_text())
    assert task["best_step"] > 0 and task["dev"]["accuracy"] >= 0.7  # the adapters learned something
    assert task["parameters"]["trainable"] == sum(t.numel() for t in adapter.values()) + 64 * 2 + 2

    # Reloaded with its adapter, the folder scores what training measured.
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--data", str(toy["dev"])]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(task["dev"]["accuracy"])
    model, _, _ = load_finetuned(str(out))
    for name, tensor in model.named_parameters():
        if ".lora_" in name:
            assert torch.equal(tensor, adapter[name])

    # Merged into the weights: a plain folder with the same outputs.
    from stratalm.checkpoint.native import load_native
    from stratalm.tasks.folder import merge

    merge(str(out), str(tmp_path / "merged"))
    assert not (tmp_path / "merged" / "adapter.safetensors").exists()
    plain = stratalm.load(str(tmp_path / "merged"))
    ids = torch.randint(8, plain.config.vocab_size, (3, 20))
    with torch.no_grad():
        assert float((plain(ids).logits - model(ids).logits).abs().max()) < 1e-5
        # stratalm.load applies the adapter wherever the folder is loaded (never the bare base, which differs).
        assert float((stratalm.load(str(out))(ids).logits - model(ids).logits).abs().max()) < 1e-5
        assert float((load_native(str(out))(ids).logits - model(ids).logits).abs().max()) > 1e-4


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
