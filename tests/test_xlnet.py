"""XLNet is options of the shared core: its transformers classes load into it and back without
changing a number, with and without perm_mask / target_mapping / memory, padded or not."""
from __future__ import annotations

import pytest
import torch

import stratalm
from stratalm.errors import CheckpointError
from stratalm.families import FAMILIES, preset
from stratalm.models import build_model

transformers = pytest.importorskip("transformers")

V = 97
SMALL = dict(vocab_size=V, d_model=32, n_layer=2, n_head=4, d_inner=48, dropout=0.0)
CLASSES = {"lm": "XLNetLMHeadModel", "base": "XLNetModel", "classify": "XLNetForSequenceClassification"}


def hf_model(kind: str, **config) -> torch.nn.Module:
    torch.manual_seed(0)
    hf_config = transformers.XLNetConfig(**{**SMALL, "mem_len": None, "num_labels": 3, **config})
    return getattr(transformers, CLASSES[kind])(hf_config).eval()


def inputs(batch: int, length: int, padded: bool, streams: bool, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random ids and segments; left padding as XLNet's tokenizer pads; a random permutation's
    masks and three predictions per row when `streams`."""
    rng = torch.Generator().manual_seed(seed)
    out = {"input_ids": torch.randint(0, V, (batch, length), generator=rng),
           "token_type_ids": (torch.arange(length) >= length // 2).long().expand(batch, length).clone()}
    if padded:
        mask = torch.ones(batch, length, dtype=torch.long)
        for row in range(1, batch):
            mask[row, : row + 1] = 0
        out["attention_mask"] = mask
    if streams:
        order = torch.stack([torch.randperm(length, generator=rng) for _ in range(batch)])  # rank of each position
        out["perm_mask"] = (order[:, None, :] >= order[:, :, None]).float()  # i may see j only if j comes earlier
        targets = order.argsort(dim=1)[:, -3:]  # the last three of each order
        out["target_mapping"] = torch.nn.functional.one_hot(targets, length).float()
    return out


def max_diff(ours, theirs) -> float:
    """Max |diff| over the logits and every hidden state (XLNet's are content, query, content, ...)."""
    diffs = [float((ours.logits - theirs.logits).abs().max())]
    mine = ours.hidden_states if ours.query_hidden_states is None else [
        t for pair in zip(ours.hidden_states, ours.query_hidden_states) for t in pair]
    assert len(mine) == len(theirs.hidden_states)
    diffs += [float((a - b).abs().max().detach()) for a, b in zip(mine, theirs.hidden_states)]
    return max(diffs)


def hf_logits(kind: str, output):
    return output.last_hidden_state if kind == "base" else output.logits


@pytest.fixture(scope="module", params=list(CLASSES))
def pair(request, tmp_path_factory):
    kind = request.param
    hf = hf_model(kind)
    folder = tmp_path_factory.mktemp("xlnet") / kind
    hf.save_pretrained(folder)
    return kind, hf, stratalm.load(str(folder)).eval(), folder


@pytest.mark.parametrize("batch,length,padded,streams", [(1, 5, False, False), (3, 9, True, False),
                                                         (2, 8, False, True), (3, 11, True, True)])
def test_transformers_xlnet_loads_with_equal_outputs(pair, batch, length, padded, streams):
    kind, hf, ours, _ = pair
    if kind == "classify" and streams:
        pytest.skip("a classifier reads the content stream")
    batch_inputs = inputs(batch, length, padded, streams)
    with torch.no_grad():
        theirs = hf(**batch_inputs, output_hidden_states=True, output_attentions=True)
        mine = ours(**batch_inputs, output_hidden_states=True, output_attentions=True)
    theirs.logits = hf_logits(kind, theirs)
    assert mine.logits.shape == theirs.logits.shape
    assert max_diff(mine, theirs) <= 1e-5
    content = [a[0] if isinstance(a, tuple) else a for a in theirs.attentions]  # (content, query) with streams
    assert max(float((a - b).abs().max()) for a, b in zip(mine.attentions, content)) <= 1e-5


def test_memory_of_earlier_segments_gives_equal_outputs(pair):
    """Segment 2 attends to segment 1's states (mems) in both, and both hand on the same mems."""
    kind, hf, ours, _ = pair
    first, second = inputs(2, 6, False, False, seed=2), inputs(2, 7, True, True, seed=3)
    if kind == "classify":
        second.pop("perm_mask"), second.pop("target_mapping")
    with torch.no_grad():
        theirs_1 = hf(**first, use_mems=True)
        mine_1 = ours(**first, use_mems=True)
        assert max(float((a.transpose(0, 1) - b).abs().max()) for a, b in zip(theirs_1.mems, mine_1.mems)) <= 1e-5
        theirs = hf(**second, mems=theirs_1.mems, use_mems=True, output_hidden_states=True)
        mine = ours(**second, mems=mine_1.mems, use_mems=True, output_hidden_states=True)
    theirs.logits = hf_logits(kind, theirs)
    assert max_diff(mine, theirs) <= 1e-5
    assert [m.shape[1] for m in mine.mems] == [13, 13]  # mem_len None in transformers: everything is kept
    assert max(float((a.transpose(0, 1) - b).abs().max()) for a, b in zip(theirs.mems, mine.mems)) <= 1e-5


@pytest.mark.parametrize("options", [dict(attn_type="uni"), dict(clamp_len=3), dict(mem_len=4, ff_activation="gelu_new")])
def test_the_other_attention_options_match(options, tmp_path):
    hf = hf_model("lm", **options)
    hf.save_pretrained(tmp_path)
    ours = stratalm.load(str(tmp_path)).eval()
    # transformers' uni attention adds the padding and permutation masks in place into a causal
    # mask of batch 1, which fails for larger batches there: one row.
    batch = 1 if options.get("attn_type") == "uni" else 2
    first, second = inputs(batch, 6, False, False, seed=4), inputs(batch, 9, True, True, seed=5)
    with torch.no_grad():
        theirs_1, mine_1 = hf(**first, use_mems=True), ours(**first, use_mems=True)
        theirs = hf(**second, mems=theirs_1.mems, output_hidden_states=True)
        mine = ours(**second, mems=mine_1.mems, output_hidden_states=True)
    assert max_diff(mine, theirs) <= 1e-5
    if "mem_len" in options:
        assert [m.shape[1] for m in mine_1.mems] == [4, 4]


@pytest.mark.parametrize("heads,architecture", [(dict(), "XLNetLMHeadModel"), (dict(mlm_head=False), "XLNetModel"),
                                                (dict(mlm_head=False, n_labels=2), "XLNetForSequenceClassification")])
def test_a_stratalm_xlnet_exports_to_its_transformers_class(heads, architecture, tmp_path):
    torch.manual_seed(0)
    ours = build_model(preset("xlnet", n_layers=2, d_model=32, n_heads=4, d_ff=48, vocab_size=V, dropout=0.0,
                              attention_dropout=0.0, **heads)).eval()
    stratalm.save(ours, str(tmp_path / "hf"), format="hf")
    cls = getattr(transformers, architecture)
    theirs_model, info = cls.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    batch_inputs = inputs(3, 10, True, architecture != "XLNetForSequenceClassification")
    with torch.no_grad():
        theirs = theirs_model.eval()(**batch_inputs, output_hidden_states=True)
        mine = ours(**batch_inputs, output_hidden_states=True)
    theirs.logits = hf_logits("base" if architecture == "XLNetModel" else "lm", theirs)
    assert max_diff(mine, theirs) <= 1e-5
    again = stratalm.load(str(tmp_path / "hf"))  # and back: the same tensors
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), again.state_dict().values()))


def test_an_xlnet_transformers_cannot_represent_is_refused(tmp_path):
    ours = build_model(preset("xlnet", n_layers=1, d_model=32, n_heads=4, d_ff=48, vocab_size=V, final_norm=True))
    with pytest.raises(CheckpointError, match="final_norm"):
        stratalm.save(ours, str(tmp_path / "hf"), format="hf")
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("name", ["xlnet", "xlnet-base-cased", "xlnet-large-cased"])
def test_presets_have_the_parameter_count_of_their_transformers_class(name):
    config = preset(name)
    family = FAMILIES[config.family]
    hf_config = transformers.XLNetConfig(**family.config_to_hf(config))
    with torch.device("meta"):
        ours = build_model(config)
        theirs = getattr(transformers, family.architecture(config))(hf_config)
    count = lambda m: sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())  # noqa: E731
    assert family.architecture(config) == "XLNetLMHeadModel"
    assert count(ours) == count(theirs)
    known = {"xlnet-base-cased": 116_750_336, "xlnet-large-cased": 360_300_800}
    if name in known:
        assert count(ours) == known[name]


def test_the_lens_sees_every_xlnet_layer_and_changes_nothing():
    from stratalm.lens.logit_lens import logit_lens
    from stratalm.lens.points import point_names
    from stratalm.lens.trace import text_inputs, trace
    from stratalm.tokenize import train_char

    tokenizer = train_char(["the cat sat on the mat", "a dog ran in the fog"])
    torch.manual_seed(0)
    model = build_model(preset("xlnet", n_layers=2, d_model=32, n_heads=4, d_ff=48, vocab_size=tokenizer.vocab_size,
                               dropout=0.0, attention_dropout=0.0)).eval()
    model.tokenizer = tokenizer
    batch = text_inputs(model, "the cat sat on the mat")
    with torch.no_grad():
        plain = model(**batch.inputs).logits
    traced = trace(model, batch, ["*"])
    assert torch.equal(traced.logits, plain) and set(traced.cache) == set(point_names(model))
    assert {f"blocks.{i}.attn.pattern" for i in range(2)} <= set(traced.cache)
    pattern = traced.cache["blocks.1.attn.pattern"]  # the relative terms are part of the pattern
    assert torch.allclose(pattern.sum(-1), torch.ones(()), atol=1e-5)
    lens = logit_lens(model, batch, k=3)
    assert torch.equal(lens["logits"][-1], lens["model_logits"]) and lens["logits"].shape[0] == 3


def test_the_sequence_summary_reads_the_last_real_token_of_right_padded_rows():
    """The tasks pad on the right; transformers' XLNet reads the last position, which its
    tokenizer's left padding makes the last real token. Ours reads that token either way."""
    torch.manual_seed(0)
    model = build_model(preset("xlnet", n_layers=2, d_model=32, n_heads=4, d_ff=48, vocab_size=V, mlm_head=False,
                               n_labels=3, dropout=0.0, attention_dropout=0.0)).eval()
    ids = torch.randint(0, V, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 3])
    with torch.no_grad():
        alone, right = model(ids).logits, model(padded, attention_mask=mask).logits
        left = model(padded.roll(3, 1), attention_mask=mask.roll(3, 1)).logits
    assert (alone - right).abs().max() < 1e-5 and (alone - left).abs().max() < 1e-5
