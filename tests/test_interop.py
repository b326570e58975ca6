"""Checkpoints move both ways between stratalm and Hugging Face `transformers` without changing a number."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import stratalm
from stratalm.errors import CheckpointError
from stratalm.families import preset
from stratalm.models import CausalLM

transformers = pytest.importorskip("transformers")

CASES = {
    "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=120, n_positions=40, n_embd=60, n_layer=2, n_head=5, bos_token_id=0, eos_token_id=0)),
    "gpt2-untied-relu": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=120, n_positions=40, n_embd=64, n_layer=3, n_head=4, n_inner=100, activation_function="relu",
        layer_norm_epsilon=1e-6, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)),
    "llama-gqa": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=120, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=500000.0,
        bos_token_id=0, eos_token_id=0, pad_token_id=0)),
    "llama-tied-mha": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=120, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=3,
        max_position_embeddings=64, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)),
}


def max_diffs(a, b, mask):
    real = mask.bool()
    hidden = max(float((x - y)[real].abs().max()) for x, y in zip(a.hidden_states, b.hidden_states))
    return float((a.logits - b.logits)[real].abs().max()), hidden


@pytest.mark.parametrize("case", list(CASES))
def test_hf_folder_loads_and_exports_back(case, tmp_path):
    torch.manual_seed(0)
    hf = CASES[case]().eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = stratalm.load(str(tmp_path / "hf"))
    ids = torch.randint(0, 120, (2, 17))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    with torch.no_grad():
        theirs_out = hf(ids, attention_mask=mask, output_hidden_states=True)
        ours_out = ours(ids, attention_mask=mask, output_hidden_states=True)
    assert max(max_diffs(ours_out, theirs_out, mask)) <= 1e-5

    stratalm.save(ours, str(tmp_path / "back"), format="hf")
    again, info = type(hf).from_pretrained(tmp_path / "back", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        back_out = again.eval()(ids, attention_mask=mask, output_hidden_states=True)
    assert max(max_diffs(back_out, theirs_out, mask)) <= 1e-5


def test_a_trained_stratalm_model_exports_with_its_tokenizer(tmp_path):
    from stratalm.tokenize import train_bpe
    from conftest import pydoc_texts

    model = CausalLM(preset("tiny", vocab_size=300, max_seq_len=32)).eval()
    model.tokenizer = train_bpe(iter(pydoc_texts(3)), vocab_size=300, show_progress=False)
    stratalm.save(model, str(tmp_path / "hf"), format="hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["eos_token_id"] == model.tokenizer.eos_id
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "hf" / "tokenizer.json"))
    ids = torch.tensor([fast.encode("The for statement")])
    assert ids[0].tolist() == model.tokenizer.encode("The for statement")
    assert (hf(ids).logits - model(ids).logits).abs().max() <= 1e-5


def test_unknown_model_types_and_bad_pickles_are_refused(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(CheckpointError, match="'mamba'.*supported: gpt2, llama"):
        stratalm.load(str(tmp_path / "x"))
    hf = CASES["gpt2"]()
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_text(json.dumps(hf.config.to_dict()))
    import pickle

    class Boom:
        def __reduce__(self):
            return (print, ("this must never run",))

    (evil / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Boom()}))
    with pytest.raises(CheckpointError, match="weights_only"):
        stratalm.load(str(evil))


def test_a_tensor_saved_as_pytorch_model_bin_loads_with_weights_only(tmp_path):
    hf = CASES["gpt2"]().eval()
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf.config.to_dict()))
    torch.save(hf.state_dict(), folder / "pytorch_model.bin")
    ours = stratalm.load(str(folder))
    ids = torch.randint(0, 120, (1, 9))
    assert (ours(ids).logits - hf(ids).logits).abs().max() <= 1e-5


def test_convert_and_info_from_the_command_line(tmp_path):
    from conftest import run_cli

    hf = CASES["llama-gqa"]().eval()
    hf.save_pretrained(tmp_path / "hf")
    assert run_cli("convert", tmp_path / "hf", tmp_path / "ours").returncode == 0
    assert "stratalm_version" in (tmp_path / "ours" / "config.json").read_text()
    assert run_cli("convert", tmp_path / "ours", tmp_path / "back", "--to", "hf").returncode == 0
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "back").eval()
    ids = torch.randint(0, 120, (1, 11))
    assert (again(ids).logits - hf(ids).logits).abs().max() <= 1e-5
    refused = run_cli("convert", tmp_path / "hf", tmp_path / "ours")
    assert refused.returncode == 2 and "already exists" in refused.stderr
    info = run_cli("info", tmp_path / "ours", "--json")
    described = json.loads(info.stdout)
    assert described["family"] == "llama" and described["kv_heads"] == 2
    assert described["parameters"] == sum(p.numel() for p in hf.parameters())
    assert sum(described["parameters_by_component"].values()) == described["parameters"]
    preset_info = json.loads(run_cli("info", "gpt2", "--json").stdout)
    assert preset_info["parameters"] == 124_439_808


@pytest.mark.parametrize("name", ["gpt2", "llama", "tinyllama-1.1b", "bert", "bert-base", "roberta-base", "albert-base",
                                  "albert", "electra-small", "electra-small-generator", "t5-small", "t5-v1_1-small", "t5"])
def test_presets_have_the_parameter_count_of_their_transformers_class(name):
    """Every preset exports to a config whose transformers class has exactly our parameters."""
    from stratalm.families import FAMILIES
    from stratalm.models import build_model

    config = preset(name)
    family = FAMILIES[config.family]
    hf_config = transformers.AutoConfig.for_model(family.hf_model_type, **family.config_to_hf(config))
    with torch.device("meta"):
        ours = build_model(config)
        theirs = getattr(transformers, family.architecture(config))(hf_config)
    count = lambda m: sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())  # noqa: E731
    # transformers 5 builds every T5 with a tied head and unties it only when a checkpoint holds both.
    untied_t5 = config.family == "t5" and not config.tie_embeddings
    extra = config.vocab_size * config.d_model if untied_t5 else 0
    assert count(ours) == count(theirs) + extra
    known = {"gpt2": 124_439_808, "bert-base": 110_106_428, "roberta-base": 124_697_433, "t5-small": 60_506_624,
             "t5-v1_1-small": 76_961_152}
    if name in known:
        assert count(ours) == known[name]


# A template in the style of real ones: blocks on lines of their own (trim_blocks and lstrip_blocks
# must drop their newlines and indents as transformers does), eos_token, raise_exception.
CHAT_TEMPLATE = """{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('unknown role ' + message['role']) }}
    {% endif %}
<|{{ message['role'] }}|>
{{ message['content'] }}{{ eos_token }}
{% endfor %}
{% if add_generation_prompt %}
<|assistant|>
{% endif %}"""
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello world"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "world?"}]


def chat_hf_folder(folder, jinja_file: bool):
    """A Hugging Face folder as transformers writes it: a tiny GPT-2, a byte-level BPE tokenizer and
    its chat template, in chat_template.jinja (transformers 5's save_pretrained) or as
    tokenizer_config.json's chat_template (the older form, save_jinja_files=False)."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    backend = HFTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(["hello world, be brief: system user assistant"] * 20, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder, save_jinja_files=jinja_file)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=backend.get_vocab_size(), n_positions=64, n_embd=32, n_layer=1, n_head=2,
        eos_token_id=0, bos_token_id=0)).save_pretrained(folder)
    assert (folder / "chat_template.jinja").is_file() == jinja_file
    return transformers.AutoTokenizer.from_pretrained(str(folder))


@pytest.mark.parametrize("jinja_file", [True, False], ids=["chat_template.jinja", "tokenizer_config"])
def test_a_chat_template_survives_the_round_trip_through_stratalm(jinja_file, tmp_path):
    """HF folder -> `stratalm convert` -> stratalm folder -> `stratalm convert --to hf`: the template
    comes along each way, and chat, serving and apply_chat_template render the same text."""
    from conftest import run_cli
    from stratalm.serve.served import load_models

    original = chat_hf_folder(tmp_path / "hf", jinja_file)
    expected = original.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert expected.startswith("<|system|>\nBe brief.<|endoftext|>\n<|user|>")  # the template's own layout
    assert stratalm.load(str(tmp_path / "hf")).chat_template == CHAT_TEMPLATE  # loaded from the HF folder itself

    assert run_cli("convert", tmp_path / "hf", tmp_path / "ours").returncode == 0
    assert stratalm.load(str(tmp_path / "ours")).chat_template == CHAT_TEMPLATE
    assert json.loads((tmp_path / "ours" / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE
    for folder in ("hf", "ours"):  # `stratalm serve` renders as transformers does
        served = load_models([str(tmp_path / folder)])[folder]
        assert served.chat is not None and served.chat.render(MESSAGES) == expected
    chat = subprocess.run([sys.executable, "-m", "stratalm", "chat", str(tmp_path / "ours"), "--temperature", "0",
                           "--max-new-tokens", "2"], input="hello\n", capture_output=True, text=True, timeout=300)
    assert chat.returncode == 0 and "no chat template" not in chat.stderr, chat.stderr

    assert run_cli("convert", tmp_path / "ours", tmp_path / "back", "--to", "hf").returncode == 0
    back = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "back"))
    assert back.chat_template == CHAT_TEMPLATE
    for prompt in (True, False):
        assert back.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=prompt) == \
            original.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=prompt)


def test_saving_a_model_without_a_template_leaves_none_behind(tmp_path):
    """A model saved over a chat model's folder does not inherit its template (chat_template.jinja
    would win over the new tokenizer_config.json)."""
    chat_hf_folder(tmp_path / "hf", jinja_file=True)
    model = stratalm.load(str(tmp_path / "hf"))
    stratalm.save(model, str(tmp_path / "ours"))
    model.chat_template = None
    for folder, format in (("hf", "hf"), ("ours", "stratalm")):
        stratalm.save(model, str(tmp_path / folder), format=format)
        assert stratalm.load(str(tmp_path / folder)).chat_template is None
    assert not (tmp_path / "hf" / "chat_template.jinja").exists()
    assert transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf")).chat_template is None
