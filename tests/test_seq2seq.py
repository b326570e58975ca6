"""T5: relative position buckets, encoder-decoder parity with `transformers` both ways, cached decoding."""
from __future__ import annotations

import pytest
import torch

import stratalm
from stratalm.families import preset
from stratalm.layers import RelativePositionBias

transformers = pytest.importorskip("transformers")


def t5(proj: str, tie: bool, **extra):
    config = transformers.T5Config(vocab_size=100, d_model=48, d_kv=16, d_ff=80, num_layers=2, num_decoder_layers=3,
                                   num_heads=4, dropout_rate=0.0, feed_forward_proj=proj, tie_word_embeddings=tie,
                                   relative_attention_num_buckets=8, relative_attention_max_distance=20, **extra)
    return transformers.T5ForConditionalGeneration(config).eval()


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_buckets_follow_t5(bidirectional):
    from transformers.models.t5.modeling_t5 import T5Attention

    offsets = torch.arange(-300, 300)[None, :]
    for buckets, distance in [(32, 128), (8, 20)]:
        ours = RelativePositionBias(buckets, distance, 1, bidirectional).bucket(offsets)
        theirs = T5Attention._relative_position_bucket(offsets, bidirectional, buckets, distance)
        assert torch.equal(ours, theirs)


def inputs():
    ids = torch.randint(2, 100, (2, 30))
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    decoder_ids = torch.randint(2, 100, (2, 25))
    decoder_mask = torch.ones_like(decoder_ids)
    decoder_mask[0, 22:] = 0
    return ids, mask, decoder_ids, decoder_mask


def assert_same(ours, theirs, ids, mask, decoder_ids, decoder_mask):
    with torch.no_grad():
        a = theirs(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids,
                   decoder_attention_mask=decoder_mask, output_hidden_states=True)
        b = ours(ids, mask, decoder_ids, decoder_mask, output_hidden_states=True)
    real, dec_real = mask.bool(), decoder_mask.bool()
    for x, y in zip(a.encoder_hidden_states, b.encoder_hidden_states):
        assert (x - y)[real].abs().max() <= 1e-5
    for x, y in zip(a.decoder_hidden_states, b.hidden_states):
        assert (x - y)[dec_real].abs().max() <= 1e-5
    # Untied-scale T5 logits reach ~40 here: fp32 rounding of HF's composite gelu_new against
    # PyTorch's fused tanh GELU (2.4e-7 per element) then shows as ~1e-5 absolute, 2.4e-7 relative.
    scale = max(1.0, float(a.logits.abs().max()) / 10)
    assert (a.logits - b.logits)[dec_real].abs().max() <= 1e-5 * scale


@pytest.mark.parametrize("proj,tie", [("relu", True), ("gated-gelu", False)])
def test_t5_parity_both_ways(proj, tie, tmp_path):
    torch.manual_seed(0)
    hf = t5(proj, tie)
    hf.save_pretrained(tmp_path / "hf")
    ours = stratalm.load(str(tmp_path / "hf"))
    assert ours.config.stack == "encoder-decoder" and ours.config.lm_head_scale == tie
    batch = inputs()
    assert_same(ours, hf, *batch)
    stratalm.save(ours, str(tmp_path / "back"), format="hf")
    again, info = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "back", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert_same(ours, again.eval(), *batch)


def test_labels_are_shifted_into_decoder_inputs():
    from stratalm.models import EncoderDecoderModel
    from stratalm.models.seq2seq import shift_right

    assert shift_right(torch.tensor([[5, 6, 7, -100]]), 0, 0).tolist() == [[0, 5, 6, 7]]
    assert shift_right(torch.tensor([[5, -100, 7]]), 9, 1).tolist() == [[9, 5, 1]]
    config = preset("tiny", family="t5", stack="encoder-decoder", vocab_size=30, n_layers=1)
    model = EncoderDecoderModel(config).eval()
    ids, labels = torch.randint(1, 30, (2, 5)), torch.randint(1, 30, (2, 4))
    with torch.no_grad():
        by_labels = model(ids, labels=labels).logits
        by_inputs = model(ids, decoder_input_ids=shift_right(labels, 0, 0)).logits
    assert torch.equal(by_labels, by_inputs)


def test_cached_decoding_equals_the_full_decoder():
    from stratalm.models import EncoderDecoderModel

    config = preset("tiny", family="t5", stack="encoder-decoder", position="relative_buckets", attention_scale=1.0,
                    norm="rmsnorm", attention_bias=False, mlp_bias=False, vocab_size=60, n_decoder_layers=3)
    model = EncoderDecoderModel(config).eval()
    ids = torch.randint(1, 60, (2, 9))
    decoder_ids = torch.randint(1, 60, (2, 7))
    with torch.no_grad():
        full = model(ids, decoder_input_ids=decoder_ids).logits
        memory = model.encode(ids)
        cache = model.new_cache(2, 16)
        steps = [model(encoder_output=memory, decoder_input_ids=decoder_ids[:, :3], cache=cache).logits]
        steps += [model(encoder_output=memory, decoder_input_ids=decoder_ids[:, t:t + 1], cache=cache).logits for t in range(3, 7)]
    assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-5
