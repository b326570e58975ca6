"""Linear probes (lens/probes.py): a planted feature is found at its layer and not before, the control
task separates word identity from the property itself, probes run on every family, and on real
all-MiniLM-L6-v2 weights with SST-2."""
from __future__ import annotations

import random

import pytest
import torch

import stratalm
from stratalm.errors import ConfigError, DataError
from stratalm.lens.probes import (control_labels, probe_layers, read_sentence_file, read_token_file, sentence_probe,
                                  split, token_probe, word_features)
from test_lens_similarity import FAMILIES, minilm_folder, tiny_model


def random_words(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 5))) for _ in range(n)]


# -- synthetic features ---------------------------------------------------------------------------
def test_a_feature_planted_at_layer_k_is_found_at_k_and_not_before():
    g = torch.Generator().manual_seed(0)
    n, d, k = 400, 16, 3
    labels = torch.randint(0, 2, (n,), generator=g)
    direction = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    layers = [torch.randn(n, d, generator=g) + (2.0 * (2 * labels - 1)[:, None] * direction if layer >= k else 0)
              for layer in range(6)]
    results = probe_layers(layers, labels, [str(i) for i in range(n)], seeds=(0, 1, 2))
    accuracy = [r.accuracy for r in results]
    assert max(accuracy[:k]) < 0.62 and min(accuracy[k:]) > 0.92, accuracy
    assert abs(results[0].majority - 0.5) < 0.08 and results[0].seeds == 3 and results[k].accuracy_std < 0.05


def tagged_tokens(seed: int = 0):
    """150 sentences of 8 words over 40 word types. Each type has a fixed 'lexical' tag (a function of
    the word) and each token a 'contextual' tag drawn afresh (not a function of the word)."""
    g = torch.Generator().manual_seed(seed)
    n_sentences, length, n_types, d = 150, 8, 40, 48
    words = torch.randint(0, n_types, (n_sentences * length,), generator=g)
    lexical = torch.randint(0, 4, (n_types,), generator=g)[words]
    contextual = torch.randint(0, 4, (len(words),), generator=g)
    identity = torch.randn(n_types, d, generator=g)[words] + 0.1 * torch.randn(len(words), d, generator=g)
    context = 3.0 * torch.randn(4, d, generator=g)[contextual] + torch.randn(len(words), d, generator=g)
    groups = torch.arange(n_sentences).repeat_interleave(length)
    return [identity, context], lexical, contextual, [f"w{int(w)}" for w in words], groups


def test_selectivity_is_near_zero_for_word_identity_and_high_for_a_property_beyond_it():
    layers, lexical, contextual, types, groups = tagged_tokens()
    on_identity, on_context = probe_layers(layers, lexical, types, groups, seeds=(0, 1))
    # A tag that is a function of the word: the identity layer gives it, and just as well its control.
    assert on_identity.accuracy > 0.95 and on_identity.control_accuracy > 0.95
    assert abs(on_identity.selectivity) < 0.05
    assert on_context.accuracy < 0.4  # the context layer knows nothing of the word
    identity_run, context_run = probe_layers(layers, contextual, types, groups, seeds=(0, 1))
    # A tag beyond the word: the context layer reads it, but cannot fit a per-word control.
    assert context_run.accuracy > 0.95 and context_run.control_accuracy < 0.4 and context_run.selectivity > 0.55
    assert identity_run.accuracy < 0.4


def test_control_task_is_per_type_with_the_label_distribution_and_splits_keep_sentences_whole():
    types = [f"t{i % 500}" for i in range(5000)]
    labels = torch.tensor([0] * 4000 + [1] * 1000)
    control = control_labels(types, labels, seed=0)
    by_type = {}
    for t, c in zip(types, control.tolist()):
        assert by_type.setdefault(t, c) == c  # one label per type
    share = sum(by_type.values()) / len(by_type)
    assert 0.14 < share < 0.26  # about the 20% of label 1
    assert torch.equal(control, control_labels(types, labels, seed=0))
    assert not torch.equal(control, control_labels(types, labels, seed=1))
    groups = torch.arange(100).repeat_interleave(7)
    train, test = split(groups, 0.25, seed=3)
    assert not set(groups[train].tolist()) & set(groups[test].tolist()) and int(test.sum()) == 25 * 7
    assert not torch.equal(test, split(groups, 0.25, seed=4)[1])


# -- on a model -----------------------------------------------------------------------------------
def plant(model, texts: list[str], labels: list[int], layer: int, strength: float = 4.0):
    """Make block `layer - 1` add +/- strength along one direction to every position, by the text's
    label, so the label is readable from hidden state `layer` on (and, being random per text, from
    nothing before it)."""
    direction = torch.nn.functional.normalize(torch.randn(model.config.d_model, generator=torch.Generator().manual_seed(9)), dim=0)
    by_ids = {tuple(model.tokenizer.encode(t, add_special_tokens=True)): y for t, y in zip(texts, labels)}
    seen = {}

    def remember(_module, args, kwargs):
        seen["ids"], seen["mask"] = args[0], kwargs["attention_mask"]

    def add(_module, _args, output):
        x = output[0] if isinstance(output, tuple) else output
        sign = torch.tensor([2.0 * by_ids[tuple(row[m.bool()].tolist())] - 1 for row, m in zip(seen["ids"], seen["mask"])])
        x = x + strength * sign[:, None, None] * direction
        return (x, *output[1:]) if isinstance(output, tuple) else x

    return [model.register_forward_pre_hook(remember, with_kwargs=True),
            model.stack.blocks[layer - 1].register_forward_hook(add)]


def test_a_probe_finds_a_feature_injected_into_a_model_at_its_layer():
    rng = random.Random(0)
    texts = [" ".join(random_words(rng, 4)) for _ in range(200)]
    labels = [rng.randrange(2) for _ in texts]
    model = tiny_model("tiny", texts=texts, n_layers=4)
    handles = plant(model, texts, labels, layer=2)
    try:
        results = sentence_probe(model, texts, [str(y) for y in labels], seeds=(0, 1))
    finally:
        for handle in handles:
            handle.remove()
    accuracy = [r.accuracy for r in results]
    assert len(results) == 5 and max(accuracy[:2]) < 0.68 and min(accuracy[2:]) > 0.95, accuracy


def test_word_features_sit_at_each_words_first_sub_token():
    rng = random.Random(1)
    sentences = [random_words(rng, rng.randint(2, 6)) for _ in range(9)]
    model = tiny_model("bert", texts=[" ".join(s) for s in sentences])
    layers, sentence_of, word_of = word_features(model, sentences, batch_size=4)
    assert len(layers) == 3 and layers[0].shape == (sum(map(len, sentences)), 32)
    tokenizer = model.tokenizer
    for row in range(0, len(word_of), 5):
        words, w = sentences[int(sentence_of[row])], int(word_of[row])
        ids = [tokenizer.cls_id] + [i for word in words for i in tokenizer.encode(word)] + [tokenizer.sep_id]
        with torch.no_grad():
            alone = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
        position = 1 + sum(len(word) for word in words[:w])  # a character tokenizer: one token per letter
        for layer in range(3):
            assert torch.allclose(layers[layer][row], alone[layer][0, position], atol=1e-5)


@pytest.mark.parametrize("preset", FAMILIES)
def test_every_family_runs_sentence_and_token_probes(preset):
    rng = random.Random(2)
    sentences = [random_words(rng, 4) for _ in range(40)]
    texts = [" ".join(s) for s in sentences]
    model = tiny_model(preset, texts=texts)
    tags = [["A" if w[0] < "f" else "B" for w in s] for s in sentences]  # a property of each word's first letter
    sentence = sentence_probe(model, texts, [str(len(s[0]) > 3) for s in sentences], seeds=(0,))
    token = token_probe(model, sentences, tags, seeds=(0,), l2=3.0)
    assert len(sentence) == len(token) == 3
    for r in sentence + token:
        assert 0 <= r.accuracy <= 1 and 0 <= r.control_accuracy <= 1
        assert r.selectivity == pytest.approx(r.accuracy - r.control_accuracy)
    assert token[0].accuracy > 0.9  # read at the first sub-token, the embedding of the first letter


def test_probes_are_deterministic_and_report_a_spread():
    rng = random.Random(3)
    texts = [" ".join(random_words(rng, 3)) for _ in range(60)]
    labels = [str(rng.randrange(3)) for _ in texts]
    model = tiny_model("llama-tiny", texts=texts)
    first = sentence_probe(model, texts, labels, seeds=(0, 1, 2))
    assert first == sentence_probe(model, texts, labels, seeds=(0, 1, 2))
    assert any(r.accuracy_std > 0 for r in first)
    assert set(first[0].as_dict()) >= {"accuracy", "control_accuracy", "selectivity", "accuracy_std", "control_std"}


# -- files and errors -----------------------------------------------------------------------------
def test_reading_labelled_files_and_the_errors(tmp_path):
    table = tmp_path / "s.tsv"
    table.write_text("sentence\tlabel\ngood film\t1\nbad film\t0\nfine film\t1\n", encoding="utf-8")
    assert read_sentence_file(str(table), limit=2) == (["good film", "bad film"], ["1", "0"])
    pairs = tmp_path / "p.tsv"
    pairs.write_text("sentence1\tsentence2\tlabel\na\tb\t1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="pairs of texts"):
        read_sentence_file(str(pairs))
    conll = tmp_path / "t.conll"
    conll.write_text("-DOCSTART- O\n\nJohn B-PER\nruns O\n\nMary B-PER\n", encoding="utf-8")
    assert read_token_file(str(conll)) == ([["John", "runs"], ["Mary"]], [["B-PER", "O"], ["B-PER"]])
    model = tiny_model("bert")
    with pytest.raises(DataError, match="two distinct labels"):
        sentence_probe(model, ["a b", "c d", "e f"], ["x", "x", "x"])
    with pytest.raises(DataError, match="one label per text"):
        sentence_probe(model, ["a b", "c d"], ["x"])
    with pytest.raises(ConfigError, match="control must be one of"):
        sentence_probe(model, ["a b", "c d"], ["x", "y"], control="bigram")
    with pytest.raises(DataError, match="one tag per word"):
        token_probe(model, [["a", "b"]], [["X"]])


# -- real weights ---------------------------------------------------------------------------------
@pytest.mark.slow  # real weights and data: 10-20 s on 2 cores
def test_minilm_sentence_probe_on_sst2():
    from conftest import shared_file

    texts, labels = read_sentence_file(str(shared_file("sst2", "train.tsv")), limit=400)
    model = stratalm.load(minilm_folder())
    results = sentence_probe(model, texts, labels, seeds=(0, 1, 2), batch_size=64)
    for r in results:
        print(f"layer {r.layer}: accuracy {r.accuracy:.3f} +- {r.accuracy_std:.3f}, control {r.control_accuracy:.3f}, "
              f"selectivity {r.selectivity:.3f}")
    assert len(results) == 7
    assert min(r.accuracy for r in results) > 0.68 and results[-1].selectivity > 0.1
    assert all(abs(r.majority - 0.5) < 0.1 for r in results)
