"""The tuned lens: it starts as the logit lens exactly, training brings every depth's held-out KL
to the final distribution below the logit lens's, it saves and loads bit for bit, it refuses a
model it was not trained for, and it runs through the LM head (GPT-2, T5's decoder) and the MLM
head (BERT) with the same code."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import small_char_corpus
from stratalm.data import TokenData
from stratalm.data.tokens import RandomWindows
from stratalm.errors import CheckpointError, DataError
from stratalm.families import preset
from stratalm.lens.logit_lens import logit_lens
from stratalm.lens.trace import text_inputs
from stratalm.lens.tuned import META, WEIGHTS, TunedLens, compare, train_tuned_lens
from stratalm.models import build_model

TEXT = "the cat sat on the mat"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> TokenData:
    return TokenData(str(small_char_corpus(tmp_path_factory.mktemp("tuned"))))


def tiny(family: str, data: TokenData, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    values = dict(n_layers=2, d_model=32, n_heads=4, d_ff=64, max_seq_len=34, vocab_size=data.vocab_size,
                  dropout=0.0, attention_dropout=0.0)
    model = build_model(preset(family, **{**values, **overrides})).eval()
    model.tokenizer = data.tokenizer()
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small run as fast on one thread, and a second thread only thrashes when the
    other core is busy (10x slower on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pretrained(family: str, data: TokenData, steps: int = 80, **overrides) -> torch.nn.Module:
    """A tiny model trained briefly with its family's objective (next token; masked tokens; T5's
    decoder writing out what its encoder reads), so its layers differ in what they predict, which
    a random model's barely do (a random BERT's KL is ~1e-6 at every depth)."""
    model = tiny(family, data, **overrides).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sampler, tokenizer = RandomWindows(data, "train", 32, seed=1), model.tokenizer
    generator = torch.Generator().manual_seed(2)
    for _ in range(steps):
        windows, _ = sampler.next_batch(16)
        if family == "bert":
            ids = torch.cat([torch.full((16, 1), tokenizer.cls_id), windows, torch.full((16, 1), tokenizer.sep_id)], 1)
            chosen = torch.rand(ids.shape, generator=generator) < 0.15
            logits = model(ids.masked_fill(chosen, tokenizer.mask_id)).logits
            loss = F.cross_entropy(logits[chosen], ids[chosen])
        elif family == "t5":
            loss = F.cross_entropy(model(windows, labels=windows).logits.flatten(0, 1), windows.flatten())
        else:
            logits = model(windows[:, :-1]).logits
            loss = F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 3.5, family  # it learned something (uniform guessing is ln V = 4.3)
    return model.eval()


@pytest.fixture(scope="module")
def models(data) -> dict[str, torch.nn.Module]:
    return {"gpt2": pretrained("tiny", data, 60, n_layers=3, d_model=48), "bert": pretrained("bert", data, 80),
            "t5": pretrained("t5", data, 40)}


@pytest.fixture(scope="module")
def gpt(models) -> torch.nn.Module:
    return models["gpt2"]


@pytest.fixture(scope="module")
def trained(gpt, data) -> TunedLens:
    return train_tuned_lens(gpt, data, steps=80, batch_size=8, lr=3e-3, progress=False)


@pytest.mark.parametrize("family", ["gpt2", "bert", "t5"])
def test_an_untrained_tuned_lens_is_the_logit_lens_exactly(family, models, data):
    model = models[family]
    lens = TunedLens.for_model(model)
    assert len(lens.translators) == model.config.n_layers + 1
    inputs = text_inputs(model, TEXT)
    plain, tuned = logit_lens(model, inputs), logit_lens(model, inputs, translators=lens.translators)
    assert torch.equal(plain["logits"], tuned["logits"]) and torch.equal(plain["kl"], tuned["kl"])
    figures = compare(model, lens, data, windows=8)
    assert torch.equal(figures["plain"], figures["tuned"])
    assert figures["plain"][0] > 1e-4  # the embedding output reads differently from the last layer


def test_training_brings_the_held_out_kl_below_the_logit_lens_at_every_depth(gpt, trained, data):
    figures = compare(gpt, trained, data, windows=64)
    plain, tuned = figures["plain"], figures["tuned"]
    print(f"\ngpt2 3x48, tuned 80 steps: plain KL {plain.tolist()}, tuned KL {tuned.tolist()} ({figures['windows']} "
          f"held-out windows)")
    assert figures["windows"] == 64 and len(plain) == 4
    assert (tuned[:-1] < 0.5 * plain[:-1]).all()  # at least halved at every depth but the last
    assert plain[-1].abs() < 1e-6 and tuned[-1].abs() < 1e-6  # the last depth is the model's output
    loss = trained.record["loss"]
    assert loss["last"] < 0.5 * loss["first"] and len(loss["curve"]) == 20
    # What the report shows per text: the tuned lens moves the earliest read toward the final one.
    inputs = text_inputs(gpt, TEXT)
    assert logit_lens(gpt, inputs, translators=trained.translators)["kl"][0].mean() < logit_lens(gpt, inputs)["kl"][0].mean()


def test_training_leaves_the_model_as_it_was_and_is_deterministic(data):
    model = tiny("tiny", data).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = train_tuned_lens(model, data, steps=3, progress=False, seed=5)
    second = train_tuned_lens(model, data, steps=3, progress=False, seed=5)
    other = train_tuned_lens(model, data, steps=3, progress=False, seed=6)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert not torch.equal(first.layers[0].weight, other.layers[0].weight)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and all(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_mlm_head_and_t5_decoder_train_through_the_same_code(family, models, data):
    model = models[family]
    lens = train_tuned_lens(model, data, steps=40, lr=3e-3, progress=False)
    figures = compare(model, lens, data, windows=32)
    print(f"\n{family} 2x32, tuned 40 steps: plain KL {figures['plain'].tolist()}, tuned {figures['tuned'].tolist()}")
    assert lens.fingerprint["head"] == ("mlm_head" if family == "bert" else "lm_head")
    assert lens.fingerprint["stack"] == ("stack" if family == "bert" else "decoder")
    assert (figures["tuned"][:-1] < figures["plain"][:-1]).all()
    assert figures["window"] == (32 if family == "bert" else 33)  # room for [CLS] [SEP] / the start token


def test_save_and_load_round_trip_bitwise(gpt, trained, tmp_path):
    trained.save(str(tmp_path / "lens"))
    assert {WEIGHTS, META} <= set(p.name for p in (tmp_path / "lens").iterdir())
    assert not (tmp_path / "lens" / ".pending").exists()
    meta = json.loads((tmp_path / "lens" / META).read_text())
    assert meta["fingerprint"] == {"family": "gpt2", "stack": "stack", "n_layers": 3, "d_model": 48,
                                   "head": "lm_head", "outputs": gpt.config.vocab_size}
    assert meta["training"]["steps"] == 80 and meta["training"]["optimizer"] == "adamw"
    loaded = TunedLens.load(str(tmp_path / "lens"), gpt)
    for (name, a), (_, b) in zip(trained.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    inputs = text_inputs(gpt, TEXT)
    assert torch.equal(logit_lens(gpt, inputs, translators=trained.translators)["logits"],
                       logit_lens(gpt, inputs, translators=loaded.translators)["logits"])


def test_a_lens_for_another_model_or_a_damaged_folder_is_refused(gpt, trained, data, tmp_path):
    trained.save(str(tmp_path / "lens"))
    for other in (tiny("tiny", data, n_layers=2, d_model=48), tiny("tiny", data, n_layers=3, d_model=32),
                  tiny("bert", data, n_layers=3, d_model=48)):
        with pytest.raises(CheckpointError, match=r"was trained for a gpt2 model whose stack has 3 layers of width 48"):
            TunedLens.load(str(tmp_path / "lens"), other)
    with pytest.raises(CheckpointError, match="not a tuned-lens folder"):
        TunedLens.load(str(tmp_path / "nothing"), gpt)
    (tmp_path / "lens" / META).write_text("{")
    with pytest.raises(CheckpointError, match="is corrupt"):
        TunedLens.load(str(tmp_path / "lens"), gpt)
    with pytest.raises(DataError, match="vocabulary"):
        train_tuned_lens(tiny("tiny", data, vocab_size=data.vocab_size - 1), data, steps=1, progress=False)


@pytest.mark.parametrize("family", ["llama-tiny", "roberta", "albert", "electra", "electra-generator"])
def test_every_other_family_trains_and_compares(family, data):
    """The remaining families (ELECTRA's discriminator through its replaced-token head) run the same code."""
    model = tiny(family, data, **({"n_kv_heads": 2} if family == "llama-tiny" else {}))
    lens = train_tuned_lens(model, data, steps=3, batch_size=4, progress=False)
    figures = compare(model, lens, data, windows=4, batch_size=4)
    assert figures["tuned"].shape == figures["plain"].shape == (model.config.n_layers + 1,)
    assert torch.isfinite(figures["tuned"]).all() and float(figures["tuned"][-1]) == 0.0
