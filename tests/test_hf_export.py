"""Hugging Face exports the ecosystem uses as they are: AutoTokenizer and the family's class load
every family's export and give stratalm's ids and logits on padded batches, `generate` stops at
eos; and an export the transformers class cannot represent is refused before anything is written."""
from __future__ import annotations

import json

import pytest
import torch

import stratalm
from conftest import pydoc_texts
from stratalm.errors import CheckpointError
from stratalm.families import FAMILIES, preset
from stratalm.models import build_model
from stratalm.tasks.common import encode_texts

transformers = pytest.importorskip("transformers")

TEXTS = ["The for statement iterates over the items of any sequence.", "A name"]
TINY = dict(n_layers=2, d_model=32, n_heads=2, d_ff=64, max_seq_len=64)
# Each family's preset, shrunk; extra cases cover the options a family's class has (Llama's
# biases and tied head, T5 v1.1's gated feed-forward with exact gelu, BERT's next-sentence class).
CASES = {
    "gpt2": ("tiny", {}),
    "llama": ("llama-tiny", dict(n_heads=4, n_kv_heads=2)),
    "llama-biased-tied": ("llama-tiny", dict(attention_bias=True, mlp_bias=True, tie_embeddings=True, activation="gelu_tanh")),
    "bert": ("bert", {}),
    "bert-next-sentence": ("bert", dict(mlm_head=False)),
    "roberta": ("roberta", dict(max_seq_len=66)),  # pad_token_id=1: positions count from 2
    "albert": ("albert", dict(embedding_dim=16)),
    "electra": ("electra", dict(embedding_dim=16)),
    "t5": ("t5", dict(head_dim=16)),
    "t5-gated-gelu": ("t5-v1_1-small", dict(head_dim=16, activation="gelu", init_scheme="normal")),
    "t5-tied-unscaled": ("t5", dict(head_dim=16, lm_head_scale=False)),  # what transformers 5 builds for v1.1
}


@pytest.fixture(scope="module")
def tokenizer():
    from stratalm.tokenize import train_bpe

    return train_bpe(iter(pydoc_texts(3)), vocab_size=300, show_progress=False)


def tiny_model(name: str, tokenizer, **changes) -> torch.nn.Module:
    base, extra = CASES[name]
    torch.manual_seed(0)
    model = build_model(preset(base, **{**TINY, "vocab_size": tokenizer.vocab_size, **extra, **changes})).eval()
    with torch.no_grad():  # away from the initial values (unit norms, zero biases), so a misplaced weight shows
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.tokenizer = tokenizer
    return model


def stratalm_ids(model, texts: list[str]) -> list[list[int]]:
    """The ids stratalm feeds the model for each text: an encoder's fine-tuning inputs, T5's
    source (the text then eos), a decoder's prompt."""
    tok, stack = model.tokenizer, model.config.stack
    if stack == "encoder":
        return [ids for ids, _ in encode_texts(tok, texts, None, model.config.max_seq_len)]
    return [tok.encode(t) + ([tok.eos_id] if stack == "encoder-decoder" else []) for t in texts]


def logits_of(output) -> torch.Tensor:
    found = getattr(output, "prediction_logits", None)  # BertForPreTraining, AlbertForPreTraining
    if found is None and getattr(output, "nsp_logits", None) is not None and output.logits is output.last_hidden_state:
        found = output.nsp_logits  # stratalm's next-sentence model: its only head is the pair head
    return found if found is not None else output.logits


def run(model, batch: dict[str, torch.Tensor], decoder_ids) -> torch.Tensor:
    """Logits of `batch` (T5: of `decoder_ids`, which is None for a model without a decoder)."""
    with torch.no_grad():
        extra = {"decoder_input_ids": decoder_ids} if decoder_ids is not None else {}
        return logits_of(model(**batch, **extra))


@pytest.mark.parametrize("case", list(CASES))
def test_autotokenizer_and_the_family_class_match_stratalm_on_a_padded_batch(case, tokenizer, tmp_path):
    model = tiny_model(case, tokenizer)
    stratalm.save(model, str(tmp_path / "hf"), format="hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    batch = hf_tok(TEXTS, padding=True, return_tensors="pt")
    expected = stratalm_ids(model, TEXTS)
    mask = batch["attention_mask"].bool()
    assert [row[m].tolist() for row, m in zip(batch["input_ids"], mask)] == expected
    assert len(expected[0]) != len(expected[1]) and (batch["input_ids"][~mask] == tokenizer.pad_id).all()
    assert hf_tok.pad_token_id == tokenizer.pad_id and hf_tok.unk_token_id == tokenizer.unk_id
    assert hf_tok.model_max_length == model.config.max_seq_len - (2 if case == "roberta" else 0)

    architecture = json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"][0]
    theirs, info = getattr(transformers, architecture).from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    seq2seq = model.config.stack == "encoder-decoder"
    decoder_ids = torch.tensor([[model.config.decoder_start_token_id, *expected[0][:4]]] * 2) if seq2seq else None
    a, b = run(model, batch, decoder_ids), run(theirs.eval(), batch, decoder_ids)
    assert a.shape == b.shape
    if a.shape[:2] == mask.shape and not seq2seq:  # per token: compare the real ones (T5's decoder has no padding)
        a, b = a[mask], b[mask]
    diff = float((a - b).abs().max())
    print(f"{case}: {architecture} max |diff| {diff:.2e} over {a.numel()} logits")
    assert diff <= 1e-5

    again = stratalm.load(str(tmp_path / "hf"))  # the extra files do not disturb loading it back
    assert again.tokenizer.encode(TEXTS[0]) == tokenizer.encode(TEXTS[0])
    back = run(again, batch, decoder_ids)
    assert float(((back[mask] if back.shape[:2] == mask.shape and not seq2seq else back) - a).abs().max()) <= 1e-5


@pytest.mark.parametrize("case", ["gpt2", "llama", "t5"])
def test_generators_carry_a_generation_config_with_eos_and_pad(case, tokenizer, tmp_path):
    model = tiny_model(case, tokenizer)
    stratalm.save(model, str(tmp_path / "hf"), format="hf")
    generation = transformers.GenerationConfig.from_pretrained(tmp_path / "hf")
    assert generation.eos_token_id == tokenizer.eos_id and generation.pad_token_id == tokenizer.pad_id
    assert generation.bos_token_id == tokenizer.bos_id
    if case == "t5":
        assert generation.decoder_start_token_id == model.config.decoder_start_token_id
    special = json.loads((tmp_path / "hf" / "special_tokens_map.json").read_text())
    assert special["eos_token"] == "<eos>" and special["pad_token"] == "<pad>"


def test_generate_in_transformers_stops_at_eos(tokenizer, tmp_path):
    model = tiny_model("gpt2", tokenizer)
    with torch.no_grad():  # every position's last hidden state is v, and only eos's embedding points along v
        direction = torch.randn(model.config.d_model)
        model.stack.final_norm.weight.zero_()
        model.stack.final_norm.bias.copy_(direction)
        model.stack.tok_embed.weight[tokenizer.eos_id] = 50 * direction / direction.norm()
    stratalm.save(model, str(tmp_path / "hf"), format="hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    prompt = hf_tok(["The for statement"], return_tensors="pt")
    out = hf.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert out[0, prompt["input_ids"].shape[1]:].tolist() == [tokenizer.eos_id]  # one token, then it stopped


UNREPRESENTABLE = [  # (preset, overrides, what the refusal names)
    ("bert", dict(position="rope"), "BertForPreTraining in transformers cannot represent model.position='rope'"),
    ("bert", dict(nsp_head=False), "the heads mlm_head + pooler together"),
    ("bert", dict(norm_position="pre", final_norm=True), "model.norm_position='pre'"),
    ("roberta", dict(padding_positions=False), "model.padding_positions=False"),
    ("roberta", dict(activation="relu"), "an MLM head with gelu"),
    ("albert", dict(embedding_dim=None), "model.embedding_dim=None"),
    ("electra", dict(type_vocab_size=0), "model.type_vocab_size=0"),
    ("electra-generator", dict(mlm_transform=False), "model.mlm_transform=False"),
    ("tiny", dict(gated=True, norm="rmsnorm"), "GPT2LMHeadModel in transformers cannot represent model.gated=True"),
    ("tiny", dict(n_kv_heads=1, position="rope"), "model.position='rope' (it has only 'learned'); model.n_kv_heads=1"),
    ("llama-tiny", dict(position="learned", norm="layernorm"), "model.position='learned' (it has only 'rope')"),
    ("llama-tiny", dict(attention_scale=1.0), "model.attention_scale=1.0"),
    ("t5", dict(position="learned"), "model.position='learned'"),
    ("t5", dict(attention_bias=True, share_layers=2), "model.attention_bias=True"),
]


@pytest.mark.parametrize("base,changes,phrase", UNREPRESENTABLE)
def test_what_a_family_class_cannot_represent_is_named(base, changes, phrase, tmp_path):
    config = preset(base, **{**TINY, "vocab_size": 100, **changes})
    model = build_model(config)
    with pytest.raises(CheckpointError) as refused:
        stratalm.save(model, str(tmp_path / "out"), format="hf")
    assert phrase in str(refused.value) and str(refused.value).count("\n") == 0
    assert not (tmp_path / "out").exists()


def test_every_preset_is_representable():
    from stratalm.families import PRESETS

    for name in PRESETS:
        config = preset(name)
        assert FAMILIES[config.family].unrepresentable(config) == [], name


def test_convert_refuses_a_rope_bert_and_writes_nothing(tokenizer, tmp_path, capsys):
    from stratalm.cli import main

    model = tiny_model("bert", tokenizer, position="rope")
    stratalm.save(model, str(tmp_path / "rope"))
    assert main(["convert", str(tmp_path / "rope"), str(tmp_path / "hf"), "--to", "hf"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: BertForPreTraining in transformers cannot represent model.position='rope'")
    assert not (tmp_path / "hf").exists()
