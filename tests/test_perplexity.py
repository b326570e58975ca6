"""`stratalm perplexity`: the sliding-window loss equals the `transformers` perplexity guide's
computation on the same weights, token for token."""
from __future__ import annotations

import json
import math

import pytest
import torch

import stratalm
from conftest import pydoc_texts
from stratalm.cli import main
from stratalm.families import preset
from stratalm.models import build_model
from stratalm.prompting import perplexity
from stratalm.tokenize import train_bpe

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gpt_folder(tmp_path_factory):
    """A tiny random GPT-2 with a byte-level BPE tokenizer, exported as a transformers folder."""
    torch.manual_seed(0)
    tokenizer = train_bpe(iter(pydoc_texts(6)), vocab_size=400, show_progress=False)
    model = build_model(preset("tiny", n_layers=2, d_model=64, n_heads=4, vocab_size=tokenizer.vocab_size, max_seq_len=64))
    model.tokenizer = tokenizer
    folder = tmp_path_factory.mktemp("ppl") / "hf"
    stratalm.save(model.eval(), str(folder), format="hf")
    return folder


def guide_nll(hf, ids: list[int], max_length: int, stride: int) -> tuple[float, int]:
    """The guide's loop (huggingface.co/docs/transformers/perplexity): labels -100 before the
    window's new tokens, the model's own shifted loss. The guide weights each window's mean loss by
    its label count minus one, which is right for the first window only; the exact count of the
    labels the loss averaged over is used here."""
    input_ids = torch.tensor([ids])
    nll, count, previous_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + max_length, len(ids))
        target_length = end - previous_end
        window = input_ids[:, begin:end]
        labels = window.clone()
        labels[:, :-target_length] = -100
        with torch.no_grad():
            loss = hf(window, labels=labels).loss
        scored = int((labels[:, 1:] != -100).sum())
        nll, count = nll + float(loss) * scored, count + scored
        previous_end = end
        if end == len(ids):
            break
    return nll, count


@pytest.mark.parametrize("max_length,stride,prefix", [(64, 16, True), (40, 40, False), (64, 63, True)])
def test_sliding_window_equals_the_transformers_guide(gpt_folder, max_length, stride, prefix):
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt_folder).eval()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(gpt_folder / "tokenizer.json"))
    text = pydoc_texts(9)[8][:2500]
    ids = ([hf.config.eos_token_id] if prefix else []) + fast.encode(text)
    nll, count = guide_nll(hf, ids, max_length, stride)

    ours = perplexity(stratalm.load(str(gpt_folder)), text, stride=stride, max_length=max_length, prefix=prefix,
                      batch_size=3)
    assert ours["tokens"] == count == len(ids) - 1 - (ours["windows"] - 1) * (stride == max_length)
    assert ours["loss"] == pytest.approx(nll / count, rel=1e-5)
    assert ours["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert ours["bits_per_byte"] == pytest.approx(nll / math.log(2) / len(text.encode()), rel=1e-5)


def test_perplexity_command_prints_json_and_refuses_bad_input(gpt_folder, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(pydoc_texts(3)[2][:1500], encoding="utf-8")
    assert main(["perplexity", str(gpt_folder), str(text), "--stride", "32"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["stride"] == 32 and result["max_length"] == 64 and result["perplexity"] > 1
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))

    for argv, message in [(["--stride", "0"], "--stride must be between 1"),
                          (["--max-length", "65"], "--max-length must be between 2 and the model's context of 64")]:
        assert main(["perplexity", str(gpt_folder), str(text), *argv]) == 2
        assert f"error: {message}" in capsys.readouterr().err
    assert main(["perplexity", str(gpt_folder), str(tmp_path / "absent.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    encoder = build_model(preset("bert", n_layers=1, d_model=32, n_heads=2, d_ff=64, vocab_size=64, max_seq_len=32))
    with pytest.raises(stratalm.StratalmError, match="perplexity needs a decoder"):
        perplexity(encoder, "some text")
