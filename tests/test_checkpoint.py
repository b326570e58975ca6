"""Checkpoint folders: round trips, atomic updates, and clear refusals of damaged ones."""
from __future__ import annotations

import json
import os

import pytest
import torch

import stratalm
from stratalm.errors import CheckpointError
from stratalm.families import preset
from stratalm.checkpoint import COMMITTED, PENDING, pending_folder, recover
from stratalm.models import CausalLM
from stratalm.tokenize import train_char


def small_model(vocab=40, **extra):
    model = CausalLM(preset("tiny", vocab_size=vocab, max_seq_len=16, n_layers=2, d_model=32, **extra)).eval()
    model.tokenizer = train_char(iter(["abcdefghij klmnopqrstuvwxyz"]))
    return model


@pytest.mark.parametrize("extra", [{}, {"tie_embeddings": False}, {"position": "rope", "norm": "rmsnorm", "gated": True}])
def test_save_then_load_gives_the_same_model(tmp_path, extra):
    model = small_model(**extra)
    stratalm.save(model, str(tmp_path / "ckpt"))
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["config.json", "model.safetensors", "tokenizer.json"]
    again = stratalm.load(str(tmp_path / "ckpt"))
    ids = torch.randint(0, 40, (2, 10))
    assert torch.equal(model(ids).logits, again(ids).logits)
    assert again.config == model.config and again.tokenizer.encode("abc") == model.tokenizer.encode("abc")
    if model.config.tie_embeddings:
        assert again.lm_head.weight is again.stack.tok_embed.weight


def test_a_crash_before_the_commit_marker_keeps_the_old_files(tmp_path):
    folder = tmp_path / "ckpt"
    stratalm.save(small_model(), str(folder))
    before = (folder / "model.safetensors").read_bytes()
    staging = pending_folder(str(folder))
    (open(os.path.join(staging, "model.safetensors"), "wb")).write(b"half a file")
    recover(str(folder))  # what the next start does
    assert (folder / "model.safetensors").read_bytes() == before and not (folder / PENDING).exists()


def test_a_crash_after_the_commit_marker_is_finished_on_the_next_start(tmp_path):
    folder = tmp_path / "ckpt"
    stratalm.save(small_model(), str(folder))
    newer = small_model()
    staging = pending_folder(str(folder))
    from stratalm.checkpoint.native import write_model_files

    write_model_files(newer, staging)
    open(os.path.join(staging, COMMITTED), "w").close()
    os.replace(os.path.join(staging, "config.json"), folder / "config.json")  # the crash came mid-move
    loaded = stratalm.load(str(folder))  # loading finishes the committed update
    assert not (folder / PENDING).exists()
    ids = torch.randint(0, 40, (1, 8))
    assert torch.equal(loaded(ids).logits, newer(ids).logits)


def test_damaged_checkpoints_are_refused_with_a_reason(tmp_path):
    model = small_model()
    good = tmp_path / "good"
    stratalm.save(model, str(good))

    def variant(name):
        folder = tmp_path / name
        folder.mkdir()
        for f in os.listdir(good):
            (folder / f).write_bytes((good / f).read_bytes())
        return folder

    with pytest.raises(CheckpointError, match="does not exist"):
        stratalm.load(str(tmp_path / "nowhere"))
    missing = variant("missing")
    os.remove(missing / "model.safetensors")
    with pytest.raises(CheckpointError, match="incomplete: model.safetensors is missing"):
        stratalm.load(str(missing))
    truncated = variant("truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        stratalm.load(str(truncated))
    bad_json = variant("bad_json")
    (bad_json / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        stratalm.load(str(bad_json))
    reshaped = variant("reshaped")
    config = json.loads((reshaped / "config.json").read_text())
    (reshaped / "config.json").write_text(json.dumps({**config, "d_ff": 64}))
    with pytest.raises(CheckpointError, match=r"weight 'stack\.blocks\.0\.ff\.(up|down)\.weight'.*has shape"):
        stratalm.load(str(reshaped))
    small_vocab = variant("small_vocab")
    (small_vocab / "config.json").write_text(json.dumps({**config, "vocab_size": 20}))
    with pytest.raises(CheckpointError):
        stratalm.load(str(small_vocab))
    pickle_only = tmp_path / "pickle_only"
    pickle_only.mkdir()
    (pickle_only / "config.json").write_text((good / "config.json").read_text())
    (pickle_only / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="pickle"):
        stratalm.load(str(pickle_only))


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path):
    model = small_model(vocab=40)
    model.tokenizer = train_char(iter([bytes(range(32, 127)).decode()]))  # 7 + 95 tokens > 40
    stratalm.save(model, str(tmp_path / "ckpt"))
    with pytest.raises(CheckpointError, match="tokenizer .* has 102 tokens but the model's vocabulary has 40"):
        stratalm.load(str(tmp_path / "ckpt"))


@pytest.mark.parametrize("name", ["bert", "roberta", "albert", "electra", "electra-generator", "t5", "llama-tiny"])
def test_every_family_round_trips_through_the_stratalm_format(tmp_path, name):
    from stratalm.models import build_model

    model = build_model(preset(name, vocab_size=64, max_seq_len=32, n_layers=2, dropout=0.0, attention_dropout=0.0)).eval()
    stratalm.save(model, str(tmp_path / name))
    again = stratalm.load(str(tmp_path / name))
    assert type(again) is type(model) and again.config == model.config
    ids = torch.randint(2, 64, (2, 12))
    extra = {"decoder_input_ids": ids[:, :7]} if model.config.stack == "encoder-decoder" else {}
    with torch.no_grad():
        assert torch.equal(model(ids, **extra).logits, again(ids, **extra).logits)
