"""`stratalm inspect`: every verb works from the command line on tiny models, and bad input gets one
clear sentence."""
from __future__ import annotations

import json

import pytest
import torch

import stratalm
from stratalm.cli import main
from stratalm.data import TokenData
from stratalm.families import preset
from stratalm.models import build_model
from test_tasks_framework import write_sentiment


@pytest.fixture(scope="module")
def folders(tmp_path_factory, char_data):
    """A tiny GPT, a T5 and a BERT without an MLM head, all with the prepared folder's tokenizer."""
    root = tmp_path_factory.mktemp("lens_cli")
    tokenizer = TokenData(str(char_data)).tokenizer()
    shape = dict(n_layers=2, d_model=32, n_heads=2, d_ff=64, max_seq_len=64, vocab_size=tokenizer.vocab_size)
    out = {}
    for name, family, extra in (("gpt", "tiny", {}), ("t5", "t5", {}), ("bare", "bert", {"mlm_head": False, "nsp_head": False})):
        torch.manual_seed(0)
        model = build_model(preset(family, **shape, **extra))
        model.tokenizer = tokenizer
        stratalm.save(model, str(root / name))
        out[name] = root / name
    out["texts"] = write_sentiment(root / "sentiment.tsv", 40, 3)
    return out


def run(capsys, *argv) -> str:
    assert main([str(a) for a in argv]) == 0
    return capsys.readouterr().out


def test_report_for_a_decoder_t5_and_an_encoder_without_a_head(folders, tmp_path, capsys):
    for name, extra in (("gpt", []), ("t5", ["--target", "the end"]), ("bare", ["--text-pair", "and more"])):
        out = tmp_path / name
        assert "report.html" in run(capsys, "inspect", "report", folders[name], "--text", "the cat sat", "--out", out, *extra)
        data = json.loads((out / "data.json").read_text())
        assert data["model"]["layers"] == 2 and (out / "arrays.safetensors").exists()
        if name == "bare":
            assert "no logit lens" in data["logit_lens"]["unavailable"] and "pooler" in data["logit_lens"]["unavailable"]
        else:
            assert len(data["logit_lens"]["top_tokens"]) == 3  # the embeddings and two layers
    assert set(json.loads((tmp_path / "t5" / "data.json").read_text())["attention"]["decoder"]) == {"self", "cross"}


def test_similarity_probe_heads_and_tuned_lens(folders, char_data, tmp_path, capsys):
    said = run(capsys, "inspect", "similarity", folders["gpt"], folders["gpt"], "--data", folders["texts"], "--out",
               tmp_path / "sim")
    cka = json.loads((tmp_path / "sim" / "cka.json").read_text())["cka"]
    assert len(cka) == 3 and all(abs(cka[i][i] - 1) < 1e-6 for i in range(3)) and "diagonal" in said
    run(capsys, "inspect", "probe", folders["gpt"], "--data", folders["texts"], "--seeds", "2", "--out", tmp_path / "probe")
    layers = json.loads((tmp_path / "probe" / "probes.json").read_text())["layers"]
    assert len(layers) == 3 and all(0 <= r["accuracy"] <= 1 for r in layers)
    said = run(capsys, "inspect", "heads", folders["gpt"], "--data", folders["texts"], "--limit", "8", "--out", tmp_path / "heads")
    heads = json.loads((tmp_path / "heads" / "heads.json").read_text())
    assert len(heads["importance"]["attn"]) == 2 and (tmp_path / "heads" / "pruning.png").exists() and "unpruned" in said
    said = run(capsys, "inspect", "tuned-lens", folders["gpt"], "--data", char_data, "--steps", "5", "--windows", "4",
               "--out", tmp_path / "tuned")
    assert "depth 2" in said and (tmp_path / "tuned" / "tuned_lens.safetensors").exists()
    run(capsys, "inspect", "report", folders["gpt"], "--text", "abc", "--tuned-lens", tmp_path / "tuned", "--out",
        tmp_path / "with-tuned", "--patch-from", "abd")
    data = json.loads((tmp_path / "with-tuned" / "data.json").read_text())
    assert "tuned_kl" in data["logit_lens"]
    values = data["patching"]["values"]  # (layers, positions): the first two characters are the same in both texts
    assert len(values) == 2 and len(values[0]) == 3 and values[0][0] == values[0][1] != values[0][2]


def test_bad_input_is_one_sentence(folders, tmp_path, capsys):
    assert main(["inspect", "report", str(folders["gpt"]), "--text", "x" * 100, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "64" in err and err.count("\n") == 1
    assert main(["inspect", "tuned-lens", str(folders["bare"]), "--data", str(tmp_path), "--out", str(tmp_path / "t")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
