"""The modern recipe's options (speedrun v2), each checked for what it changes: QK-norm, ReLU
squared, zero-initialised output projections, logit soft-capping, separate learning rates for
embeddings and head, Muon beside AdamW (orthogonalised updates, resumed bit for bit), and the
warmup-stable-decay schedule; and the Hugging Face export refuses what transformers lacks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import run_cli
from stratalm.errors import CheckpointError, ConfigError
from stratalm.families import preset
from stratalm.layers.feedforward import activation_fn
from stratalm.loop.config import TrainConfig
from stratalm.loop.optim import Schedule, decay_start, make_optimizer
from stratalm.models import build_model

SMALL = dict(vocab_size=50, n_layers=2, d_model=32, n_heads=4, n_kv_heads=4, d_ff=64, max_seq_len=16)
CPU = torch.device("cpu")


def tiny(**changes):
    torch.manual_seed(0)
    return build_model(preset("llama-tiny", **{**SMALL, **changes}))


def outputs_of(module: torch.nn.Module, run) -> list[torch.Tensor]:
    seen = []
    handle = module.register_forward_hook(
        lambda m, args, out: seen.append((out[0] if isinstance(out, tuple) else out).detach()))
    try:
        run()
    finally:
        handle.remove()
    return seen


def head_rms(x: torch.Tensor) -> torch.Tensor:
    """(B, n, T, hd) -> the RMS of every head's vector at every position."""
    return x.pow(2).mean(-1).sqrt()


def test_qk_norm_puts_every_heads_queries_and_keys_at_unit_rms_times_the_gain():
    ids = torch.randint(0, SMALL["vocab_size"], (2, 16))
    model = tiny(qk_norm=True)
    attn = model.stack.blocks[1].attn
    with torch.no_grad():  # queries of RMS ~1, not init's ~0.1, so the norm's epsilon is out of sight
        attn.qkv.weight.mul_(10.0)
    q = outputs_of(attn.q_norm, lambda: model(ids))[0]
    k = outputs_of(attn.k_norm, lambda: model(ids))[0]
    assert q.shape == (2, 4, 16, 8) and k.shape == (2, 4, 16, 8)
    assert torch.allclose(head_rms(q), torch.ones(()), atol=1e-4) and torch.allclose(head_rms(k), torch.ones(()), atol=1e-4)
    with torch.no_grad():
        attn.q_norm.weight.fill_(3.0)
    q = outputs_of(attn.q_norm, lambda: model(ids))[0]
    assert torch.allclose(head_rms(q), torch.full((), 3.0), atol=3e-4)
    # Without the option the projections' queries are nowhere near unit RMS (init std 0.02).
    plain = tiny()
    raw = outputs_of(plain.stack.blocks[1].attn.qkv, lambda: plain(ids))[0][..., :32]
    assert raw.pow(2).mean(-1).sqrt().max() < 0.5
    # The gains are norms: initialised to one and never weight-decayed.
    groups = make_optimizer(model, TrainConfig(), CPU).param_groups
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(attn.k_norm.weight) in no_decay


def test_qk_norm_decodes_with_the_cache_as_the_full_forward():
    model = tiny(qk_norm=True).eval()
    ids = torch.randint(0, SMALL["vocab_size"], (1, 10))
    full = model(ids).logits
    cache = model.new_cache(1)
    steps = [model(ids[:, :6], cache=cache).logits] + [model(ids[:, i:i + 1], cache=cache).logits for i in range(6, 10)]
    assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-5


def test_relu2_is_relu_squared_in_the_feed_forward():
    x = torch.linspace(-3, 3, 13)
    assert torch.equal(activation_fn("relu2")(x), F.relu(x) ** 2)
    ff = tiny(activation="relu2", gated=False).stack.blocks[0].ff
    h = torch.randn(2, 5, 32)
    expected = ff.down(F.relu(ff.up(h)) ** 2)
    assert torch.allclose(ff(h), expected, atol=1e-6)


def test_zero_init_output_projections_start_at_zero_and_still_learn():
    model = tiny(zero_init_output=True)
    outputs = [b.attn.out.weight for b in model.stack.blocks] + [b.ff.down.weight for b in model.stack.blocks]
    assert all(torch.count_nonzero(w) == 0 for w in outputs)
    assert all(torch.count_nonzero(b.attn.qkv.weight) > 0 for b in model.stack.blocks)
    assert all(torch.count_nonzero(w) > 0 for w in [b.attn.out.weight for b in tiny().stack.blocks])
    # Every block starts as the identity: the stream leaves the blocks as the embedding entered.
    ids = torch.randint(0, SMALL["vocab_size"], (2, 16))
    hidden = model(ids, output_hidden_states=True).hidden_states
    assert torch.equal(outputs_of(model.stack.blocks[-1], lambda: model(ids))[0], hidden[0])
    model(ids).logits.logsumexp(-1).mean().backward()
    assert all(w.grad is not None and w.grad.abs().max() > 0 for w in outputs)


def test_soft_capping_bounds_the_logits_by_the_cap_and_keeps_small_ones():
    ids = torch.randint(0, SMALL["vocab_size"], (2, 16))
    capped, plain = tiny(logit_softcap=5.0, tie_embeddings=False), tiny(tie_embeddings=False)
    for model in (capped, plain):
        with torch.no_grad():
            model.lm_head.weight.mul_(1000.0)
    assert plain(ids).logits.abs().max() > 50
    assert capped(ids).logits.abs().max() <= 5.0
    small = tiny(logit_softcap=30.0)  # logits near 0 at init: tanh is the identity there
    reference = tiny()
    assert (small(ids).logits - reference(ids).logits).abs().max() < 1e-4
    with pytest.raises(ConfigError, match="logit_softcap"):
        preset("llama-tiny", logit_softcap=-1.0)


def test_untied_embedding_and_head_get_their_own_learning_rates():
    model = tiny(tie_embeddings=False)
    groups = make_optimizer(model, TrainConfig(lr=1e-3, embed_lr=5e-3, head_lr=2e-4), CPU).param_groups
    scale_of = {id(p): g.get("lr_scale", 1.0) for g in groups for p in g["params"]}
    assert scale_of[id(model.stack.tok_embed.weight)] == pytest.approx(5.0)
    assert scale_of[id(model.lm_head.weight)] == pytest.approx(0.2)
    assert scale_of[id(model.stack.blocks[0].attn.qkv.weight)] == 1.0
    assert len(make_optimizer(model, TrainConfig(), CPU).param_groups) == 2  # the default: decay or not


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_muon_updates_the_blocks_matrices_with_orthogonalised_steps_and_the_rest_with_adamw(precision):
    model = tiny()
    config = TrainConfig(optimizer="muon", lr=1e-3, muon_lr=1.0, muon_momentum=0.0, weight_decay=0.0,
                         muon_precision=precision)
    optimizer = make_optimizer(model, config, CPU)
    muon, adamw = optimizer.parts
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    assert in_muon == {id(p) for n, p in model.named_parameters() if ".blocks." in n and p.dim() == 2}
    assert id(model.stack.tok_embed.weight) not in in_muon
    for group in optimizer.param_groups:  # what the loop does each step
        group["lr"] = config.lr * group.get("lr_scale", 1.0)
    ids = torch.randint(0, SMALL["vocab_size"], (16, 17))
    F.cross_entropy(model(ids[:, :-1]).logits.transpose(1, 2), ids[:, 1:]).backward()
    matrix, embedding = model.stack.blocks[0].attn.qkv.weight, model.stack.tok_embed.weight  # (96, 32), (50, 32)
    grad, before, embedding_before = matrix.grad.clone(), matrix.detach().clone(), embedding.detach().clone()
    optimizer.step()
    update = (before - matrix.detach()) / (96 / 32) ** 0.5  # Keller Jordan's shape factor sqrt(rows / cols)
    grad_s, update_s = torch.linalg.svdvals(grad), torch.linalg.svdvals(update)
    assert grad_s[0] / grad_s[-1] > 100  # the gradient's directions differ in size by over 100x ...
    # ... the update's all lie near 1 (5 quintic Newton-Schulz steps land in about 0.5-1.2)
    assert update_s.min() > 0.4 and update_s.max() < 1.3
    # AdamW's first step moves every entry with a gradient by about lr (Adam's update is sign-like).
    moved = (embedding.detach() - embedding_before).abs()
    assert moved.max() == pytest.approx(1e-3, rel=1e-3)


def test_muon_in_fp32_takes_torchs_bf16_step_to_bf16_accuracy_and_auto_picks_by_the_hardware(monkeypatch):
    from stratalm import precision as precision_module
    from stratalm.loop.muon import Muon, newton_schulz_dtype

    torch.manual_seed(0)
    wide, tall = torch.randn(32, 80) * 0.02, torch.randn(80, 32) * 0.02  # both orientations of the iteration
    moved = {}
    for name, optimizer_of in (("torch", lambda ps: torch.optim.Muon(ps, lr=0.02)),
                               ("fp32", lambda ps: Muon(ps, ns_dtype=torch.float32, lr=0.02))):
        params = [torch.nn.Parameter(w.clone()) for w in (wide, tall)]
        optimizer = optimizer_of(params)
        for step in range(3):  # momentum and weight decay take part from the second step
            for p in params:
                p.grad = torch.sin(p.detach() * 100 + step)
            optimizer.step()
        moved[name] = [p.detach() - w for p, w in zip(params, (wide, tall))]
    for ours, theirs in zip(moved["fp32"], moved["torch"]):
        # bf16 keeps under 3 significant digits, and five Newton-Schulz steps compound it (2.6% measured)
        assert (ours - theirs).abs().max() < 0.05 * theirs.abs().max()
        assert not torch.equal(ours, theirs)  # and the fp32 path really is another computation
    monkeypatch.setattr(precision_module, "has_amx", lambda: False)
    assert newton_schulz_dtype("auto", "cpu") == torch.float32
    assert newton_schulz_dtype("auto", "cuda") == torch.bfloat16
    assert newton_schulz_dtype("bf16", "cpu") == torch.bfloat16
    monkeypatch.setattr(precision_module, "has_amx", lambda: True)
    assert newton_schulz_dtype("auto", "cpu") == torch.bfloat16
    assert newton_schulz_dtype("fp32", "cuda") == torch.float32


def test_wrong_optimizer_or_schedule_names_are_config_errors():
    with pytest.raises(ConfigError, match="train.optimizer"):
        make_optimizer(tiny(), TrainConfig(optimizer="sgd"), CPU)
    with pytest.raises(ConfigError, match="train.schedule"):
        Schedule(TrainConfig(schedule="linear"))
    with pytest.raises(ConfigError, match="decay_fraction"):
        Schedule(TrainConfig(schedule="wsd", decay_fraction=1.5))


def test_warmup_stable_decay_is_a_trapezoid():
    config = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr=0.1, schedule="wsd", decay_fraction=0.3)
    schedule = Schedule(config)
    rates = [schedule.lr(step) for step in range(110)]
    assert decay_start(config) == 73  # 30% of the 90 steps after the warmup, before the end
    assert all(a < b for a, b in zip(rates[:10], rates[1:11]))  # warmup
    assert rates[10:73] == [1.0] * 63  # the plateau
    slopes = {round(b - a, 9) for a, b in zip(rates[73:100], rates[74:100])}
    assert slopes == {round(-0.9 / 27, 9)}  # a straight line from lr ...
    assert rates[100:] == [0.1] * 10  # ... to min_lr, then flat
    # A resumed run made longer while on the plateau keeps the plateau to its own decay.
    longer = schedule.stretched(50, 200)
    assert decay_start(longer.config) == 143
    assert longer.lr(50) == 1.0 and longer.lr(142) == 1.0 and longer.lr(200) == pytest.approx(0.1)
    # Made longer inside the decay: a straight line from the rate reached, without a jump.
    late = schedule.stretched(90, 200)
    assert late.lr(90) == pytest.approx(rates[90]) and late.lr(145) == pytest.approx((rates[90] + 0.1) / 2)


def test_hf_export_refuses_qk_norm_and_soft_capping_and_keeps_relu2(tmp_path):
    from stratalm.checkpoint.hf import save_hf

    for changes, phrase in ((dict(qk_norm=True), "model.qk_norm=True"), (dict(logit_softcap=30.0), "model.logit_softcap=30.0")):
        with pytest.raises(CheckpointError, match="LlamaForCausalLM in transformers cannot represent") as refused:
            save_hf(tiny(**changes), str(tmp_path / "refused"))
        assert phrase in str(refused.value)
    assert not (tmp_path / "refused").exists()
    transformers = pytest.importorskip("transformers")
    model = tiny(activation="relu2", zero_init_output=True).eval()
    with torch.no_grad():  # zero projections would hide a wrong activation
        for block in model.stack.blocks:
            block.ff.down.weight.normal_(0.0, 0.1)
    save_hf(model, str(tmp_path / "hf"))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    ids = torch.randint(0, SMALL["vocab_size"], (2, 16))
    with torch.no_grad():
        assert (theirs(ids).logits - model(ids).logits).abs().max() < 1e-4


@pytest.mark.slow  # a longer check (make test-slow): the default suite stays near 10 minutes
def test_muon_state_resumes_bit_for_bit(char_data, tmp_path):
    def pretrain(out, steps):
        done = run_cli("pretrain", "--data", char_data, "--out", out, "--max-steps", steps, "--resume", "--model", "llama-tiny",
                       "model.n_layers=2", "model.d_model=32", "model.n_heads=4", "model.n_kv_heads=4", "model.d_ff=64",
                       "model.max_seq_len=16", "model.qk_norm=true", "train.optimizer=muon", "train.schedule=wsd",
                       "train.batch_size=4", "train.eval_every=0", "train.eval_windows=2", "train.warmup_steps=1",
                       "train.progress=false", "train.decay_steps=6")
        assert done.returncode == 0, done.stderr
        return done

    pretrain(tmp_path / "straight", 6)
    pretrain(tmp_path / "resumed", 3)
    assert "resuming from step 3" in pretrain(tmp_path / "resumed", 6).stdout
    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = load_file(tmp_path / "straight" / name), load_file(tmp_path / "resumed" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    saved = load_file(tmp_path / "resumed" / "optimizer.safetensors")
    assert sum(key.endswith("momentum_buffer") for key in saved) == 8  # 2 blocks x qkv, out, up, down
    assert sum(key.endswith("exp_avg_sq") for key in saved) > 0
