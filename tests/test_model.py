"""Level 2: the decoder stack and LM head. Parity with `transformers` on random small models proves
the layers compute what GPT-2 and Llama compute; the KV cache must not change a number."""
from __future__ import annotations

import pytest
import torch

from stratalm.families import PRESETS, preset
from stratalm.models import CausalLM


def load_hf_weights(ours, hf_model):
    """Copy an HF model's weights into ours through the family's weight map."""
    from stratalm.families import FAMILIES
    from stratalm.checkpoint.weights import model_state

    family = FAMILIES[ours.config.family]
    state = family.from_hf_state(hf_model.state_dict(), ours.config, "test", set(model_state(ours)))
    ours.load_state_dict(state, strict=False)


def compare(ours, theirs, input_ids, attention_mask):
    with torch.no_grad():
        a = ours(input_ids, attention_mask=attention_mask, output_hidden_states=True)
        b = theirs(input_ids, attention_mask=attention_mask, output_hidden_states=True)
    real = attention_mask.bool()
    assert len(a.hidden_states) == len(b.hidden_states)
    for mine, hf in zip(a.hidden_states, b.hidden_states):
        assert (mine - hf)[real].abs().max() < 1e-5
    assert (a.logits - b.logits)[real].abs().max() < 1e-5


@pytest.mark.parametrize("n_layers,d_model,n_heads", [(2, 64, 4), (3, 60, 5)])
def test_gpt2_parity_with_transformers(n_layers, d_model, n_heads):
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=101, n_positions=32, n_embd=d_model, n_layer=n_layers, n_head=n_heads,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)).eval()
    ours = CausalLM(preset("gpt2", vocab_size=101, max_seq_len=32, n_layers=n_layers, d_model=d_model,
                           n_heads=n_heads, d_ff=4 * d_model)).eval()
    load_hf_weights(ours, hf)
    ids = torch.randint(0, 101, (3, 20))
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[1, 15:] = 0  # right padding
    compare(ours, hf, ids, mask)


@pytest.mark.parametrize("n_heads,n_kv_heads", [(4, 2), (4, 4), (6, 1)])
def test_llama_parity_with_transformers(n_heads, n_kv_heads):
    transformers = pytest.importorskip("transformers")
    d_model, n_layers = 16 * n_heads, 2
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=97, hidden_size=d_model, intermediate_size=88, num_hidden_layers=n_layers,
        num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, max_position_embeddings=64,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=0)).eval()
    ours = CausalLM(preset("llama", vocab_size=97, max_seq_len=64, n_layers=n_layers, d_model=d_model,
                           n_heads=n_heads, n_kv_heads=n_kv_heads, d_ff=88)).eval()
    load_hf_weights(ours, hf)
    ids = torch.randint(0, 97, (2, 24))
    mask = torch.ones(2, 24, dtype=torch.long)
    mask[0, 20:] = 0
    compare(ours, hf, ids, mask)


@pytest.mark.parametrize("name,extra", [
    ("tiny", {}), ("llama-tiny", {}), ("tiny", {"position": "sinusoidal"}), ("tiny", {"position": "rope", "norm_position": "post"}),
])
def test_kv_cache_decoding_equals_full_forward(name, extra):
    model = CausalLM(preset(name, vocab_size=50, max_seq_len=32, **extra)).eval()
    ids = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache(2, 32)
        pieces = [model(ids[:, :5], cache=cache).logits]  # prefill, then one token at a time
        pieces += [model(ids[:, t:t + 1], cache=cache).logits for t in range(5, 9)]
        pieces.append(model(ids[:, 9:], cache=cache).logits)  # a chunk over a cached prefix
    assert (torch.cat(pieces, dim=1) - full).abs().max() < 1e-5
    assert cache.length == 12


def test_outputs_hidden_states_and_attentions():
    cfg = preset("tiny", vocab_size=40, max_seq_len=16)
    model = CausalLM(cfg).eval()
    out = model(torch.randint(0, 40, (2, 9)), output_hidden_states=True, output_attentions=True)
    assert out.logits.shape == (2, 9, 40)
    assert len(out.hidden_states) == cfg.n_layers + 1 and out.hidden_states[0].shape == (2, 9, cfg.d_model)
    assert len(out.attentions) == cfg.n_layers and out.attentions[0].shape == (2, cfg.n_heads, 9, 9)
    assert torch.all(out.attentions[0].triu(1) == 0)  # causal: nothing attends to the future


def test_tied_and_untied_heads():
    tied = CausalLM(preset("tiny", vocab_size=40))
    assert tied.lm_head.weight is tied.stack.tok_embed.weight
    untied = CausalLM(preset("tiny", vocab_size=40, tie_embeddings=False))
    assert untied.lm_head.weight is not untied.stack.tok_embed.weight
    assert untied.parameter_counts()["total"] - tied.parameter_counts()["total"] == 40 * 128


def test_preset_parameter_counts():
    with torch.device("meta"):  # shapes only: no memory, no time
        gpt2 = CausalLM(preset("gpt2"))
        llama = CausalLM(preset("tinyllama-1.1b"))
    assert gpt2.parameter_counts()["total"] == 124_439_808  # OpenAI's GPT-2 small
    assert llama.parameter_counts()["total"] == 1_100_048_384  # TinyLlama 1.1B
    tiny = CausalLM(preset("tiny"))
    assert 0.9e6 < tiny.parameter_counts()["total"] < 1.5e6
    assert set(PRESETS) >= {"tiny", "gpt2", "llama"}
