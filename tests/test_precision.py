"""precision="auto" picks bf16 autocast on CUDA and on CPUs with AMX, fp32 on other CPUs, and says
why; the machine facts come from /proc/cpuinfo; encoding in bf16 stays close to fp32."""
from __future__ import annotations

import pytest
import torch

from stratalm import machine, precision
from stratalm.errors import ConfigError


@pytest.mark.parametrize("amx, device, expected", [
    (True, "cpu", "bf16"), (False, "cpu", "fp32"), (False, "cuda", "bf16"), (True, "cuda", "bf16")])
def test_auto_takes_bf16_where_the_hardware_multiplies_it(amx, device, expected, monkeypatch):
    monkeypatch.setattr(precision, "has_amx", lambda: amx)
    chosen, reason = precision.choose_precision("auto", device)
    assert chosen == expected and reason.startswith("auto: ")
    assert ("AMX" in reason) == (device == "cpu")


def test_a_configured_precision_is_kept_and_a_wrong_one_refused(monkeypatch):
    monkeypatch.setattr(precision, "has_amx", lambda: True)
    assert precision.choose_precision("fp32", "cpu") == ("fp32", "as configured")
    with pytest.raises(ConfigError, match="auto, fp32 or bf16"):
        precision.choose_precision("fp16", "cpu")


def test_cpu_facts_read_the_extensions_from_cpuinfo(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    fake.write_text("vendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
                    "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n\nvendor_id\t: GenuineIntel\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(fake if path == "/proc/cpuinfo" else path, *a, **k))
    monkeypatch.delenv(machine.EXTENSIONS_ENVIRONMENT, raising=False)  # the suite's stand-in extensions
    machine.cpu_facts.cache_clear()
    try:
        facts = machine.cpu_facts()
        assert facts == {"vendor": "GenuineIntel", "model": "Intel(R) Xeon(R) Platinum 8480+",
                         "extensions": ["avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]}
        assert machine.has_amx()
    finally:
        machine.cpu_facts.cache_clear()
    assert machine.blas() != "unknown"  # torch's build settings name it (mkl on the CPU wheel)


def test_bf16_encoding_stays_close_to_fp32():
    from conftest import pydoc_texts
    from stratalm import encode
    from stratalm.families import preset
    from stratalm.models import build_model
    from stratalm.tokenize import train_bpe

    tokenizer = train_bpe(iter(pydoc_texts(4)), vocab_size=400, show_progress=False)
    tiny_bert = build_model(preset("bert", vocab_size=tokenizer.vocab_size, n_layers=2, d_model=64, n_heads=4,
                                   d_ff=128, max_seq_len=64)).eval()
    tiny_bert.tokenizer = tokenizer

    texts = ["the cat sat on the mat", "a longer sentence about nothing in particular", "hi"]
    full, half = encode(tiny_bert, texts, normalize=True), encode(tiny_bert, texts, normalize=True, precision="bf16")
    assert half.dtype == torch.float32 and not torch.equal(full, half)  # bf16 really ran
    assert (full * half).sum(-1).min() > 0.99


def test_bf16_generation_runs_and_fp32_is_the_default():
    from conftest import pydoc_texts
    from stratalm import generate
    from stratalm.families import preset
    from stratalm.models import build_model
    from stratalm.tokenize import train_bpe

    tokenizer = train_bpe(iter(pydoc_texts(4)), vocab_size=400, show_progress=False)
    model = build_model(preset("tiny", vocab_size=tokenizer.vocab_size, n_layers=2, d_model=64, max_seq_len=64)).eval()
    model.tokenizer = tokenizer
    greedy = dict(max_new_tokens=12, temperature=0)
    assert generate(model, "The ", **greedy) == generate(model, "The ", precision="fp32", **greedy)
    assert isinstance(generate(model, "The ", precision="bf16", **greedy), str)
    with pytest.raises(ConfigError, match="auto, fp32 or bf16"):
        generate(model, "The ", precision="half", **greedy)


@pytest.mark.parametrize("amx", [False, True])
def test_a_run_prints_and_saves_what_auto_chose(amx, char_data, tmp_path, monkeypatch, capsys):
    import yaml

    from stratalm.config_fields import parse_overrides
    from stratalm.loop.pretraining import build_run_config, pretrain

    monkeypatch.setattr(precision, "has_amx", lambda: amx)
    overrides = parse_overrides(["model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.max_seq_len=32",
                                 "train.batch_size=4", "train.max_steps=2", "train.eval_every=0", "train.eval_windows=4",
                                 "train.progress=false"])
    run = build_run_config(None, {**overrides, "data": str(char_data), "out": str(tmp_path / "run")})
    pretrain(run)
    saved = yaml.safe_load((tmp_path / "run" / "run.yaml").read_text())["precision"]
    assert saved["chosen"] == ("bf16" if amx else "fp32") and "AMX" in saved["reason"]
    assert f"precision {saved['chosen']} (auto: " in capsys.readouterr().out


def test_the_suite_can_take_the_cpu_to_have_other_extensions(monkeypatch):
    monkeypatch.setenv(machine.EXTENSIONS_ENVIRONMENT, "avx512f,amx_tile,amx_bf16")
    assert machine.has_amx() and precision.choose_precision("auto", "cpu")[0] == "bf16"
    monkeypatch.setenv(machine.EXTENSIONS_ENVIRONMENT, "")
    assert not machine.has_amx()


def test_resume_is_bitwise_within_bf16(char_data, tmp_path, capsys):
    """Exact resume holds within one precision: a bf16 run stopped after its step-2 checkpoint and
    resumed ends with the uninterrupted bf16 run's weights, bit for bit (fp32: tests/test_train.py)."""
    from safetensors.torch import load_file

    from stratalm.config_fields import parse_overrides
    from stratalm.loop.pretraining import build_run_config, pretrain

    class StopAtStep3:
        def observe(self, loop):
            if loop.step == 3:
                raise RuntimeError("stopped")
            return {}

    def run(out, observers=()):
        overrides = parse_overrides(["model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.max_seq_len=32",
                                     "train.batch_size=4", "train.max_steps=4", "train.save_every=2", "train.eval_every=0",
                                     "train.eval_windows=4", "train.progress=false", "train.precision=bf16"])
        return pretrain(build_run_config(None, {**overrides, "data": str(char_data), "out": str(out)}),
                        resume=True, observers=observers)

    run(tmp_path / "whole")
    with pytest.raises(RuntimeError, match="stopped"):
        run(tmp_path / "parts", [StopAtStep3()])
    capsys.readouterr()
    run(tmp_path / "parts")
    assert "resuming from step 2" in capsys.readouterr().out
    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = load_file(tmp_path / "whole" / name), load_file(tmp_path / "parts" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
