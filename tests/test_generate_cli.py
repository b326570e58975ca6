"""`stratalm generate` and `stratalm.generate` with their options: stop strings cut the text there,
CTRL's repetition penalty (1 = none, high = no repeats under greedy), beam search (1 beam = greedy),
several samples, seeds, the echoed prompt (the command prints what the function returns), the device,
and bad values refused in one line with exit status 2."""
from __future__ import annotations

import pytest
import torch

import stratalm
from stratalm.cli import main
from stratalm.errors import ConfigError
from stratalm.families import preset
from stratalm.generate import beam_search, penalize_repeats, stream_tokens
from stratalm.models import CausalLM
from stratalm.tokenize import train_char

PROMPT = "abc"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    tokenizer = train_char(["abcdefghijklmnopqrstuvwxyz .,\n"])
    m = CausalLM(preset("tiny", vocab_size=tokenizer.vocab_size, max_seq_len=64, n_layers=2, d_model=64)).eval()
    m.tokenizer = tokenizer
    return m


@pytest.fixture(scope="module")
def folder(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "model"
    stratalm.save(model, str(path))
    return str(path)


def cli(capsys, folder, *flags) -> str:
    capsys.readouterr()
    assert main(["generate", folder, "--prompt", PROMPT, "--max-new-tokens", "30", *map(str, flags)]) == 0
    return capsys.readouterr().out


def greedy(model, **options):
    return stratalm.generate(model, PROMPT, max_new_tokens=30, temperature=0, **options)


def test_the_command_prints_what_the_function_returns_with_echo(model, folder, capsys):
    text = greedy(model)
    assert len(text) == 30 and not text.startswith(PROMPT)  # the function returns the continuation only...
    assert greedy(model, echo=True) == PROMPT + text  # ...unless asked to echo the prompt
    assert cli(capsys, folder, "--temperature", 0) == PROMPT + text + "\n"  # the command echoes
    assert cli(capsys, folder, "--temperature", 0, "--no-echo") == text + "\n"
    pieces = []
    assert greedy(model, echo=True, on_text=pieces.append) == "".join(pieces) and pieces[0] == PROMPT


def test_stop_strings_end_the_text_before_them(model, folder, capsys):
    text = greedy(model)
    # A stop string that first occurs after the start of the greedy continuation.
    stop = next(text[k:k + 2] for k in range(1, len(text)) if text.find(text[k:k + 2]) >= 1)
    cut = text.find(stop)
    pieces = []
    assert greedy(model, stop=stop, on_text=pieces.append) == text[:cut]
    assert "".join(pieces) == text[:cut]  # streamed pieces never show the stop string, not even in part
    assert greedy(model, stop=["never there", stop]) == text[:cut]  # the first of several
    printed = cli(capsys, folder, "--temperature", 0, "--stop", "never there", "--stop", stop)
    assert printed == PROMPT + text[:cut] + "\n"
    assert greedy(model, stop="never there") == text


def test_the_repetition_penalty_formula():
    logits = torch.tensor([[2.0, -1.0, 1.0, -3.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert torch.equal(penalize_repeats(logits, seen, 2.0), torch.tensor([[1.0, -2.0, 1.0, -3.0]]))
    assert torch.equal(penalize_repeats(logits, seen, 1.0), logits)


def test_a_penalty_of_one_changes_nothing_and_a_high_one_avoids_repeats(model, folder, capsys):
    plain = greedy(model)
    assert greedy(model, repetition_penalty=1.0) == plain
    sampled = stratalm.generate(model, PROMPT, max_new_tokens=30, seed=5)
    assert stratalm.generate(model, PROMPT, max_new_tokens=30, seed=5, repetition_penalty=1.0) == sampled
    assert len(set(plain)) < len(plain) / 3  # the random model repeats itself under greedy decoding
    penalized = greedy(model, repetition_penalty=100.0)
    assert len(penalized) >= 10 and len(set(penalized)) == len(penalized)  # no character twice...
    assert not set(penalized) & set(PROMPT)  # ...and none of the prompt's
    assert cli(capsys, folder, "--temperature", 0, "--repetition-penalty", 100) == PROMPT + penalized + "\n"
    beamed = stratalm.generate(model, PROMPT, max_new_tokens=30, beams=3, repetition_penalty=100.0)
    assert len(beamed) >= 10 and len(set(beamed)) == len(beamed)  # beam search takes the penalty too


@pytest.mark.parametrize("penalty", [1.0, 3.0])
def test_one_beam_is_greedy(model, penalty):
    ids = model.tokenizer.encode(PROMPT)
    greedy_tokens = [int(t) for t in stream_tokens(model, torch.tensor([ids]), 20, temperature=0,
                                                   repetition_penalty=penalty)]
    assert beam_search(model, [ids], beams=1, max_new_tokens=20, repetition_penalty=penalty)[0].tokens == greedy_tokens
    assert stratalm.generate(model, PROMPT, max_new_tokens=20, beams=1, temperature=0,
                             repetition_penalty=penalty) == model.tokenizer.decode(greedy_tokens)


def test_beams_run_beam_search(model, folder, capsys):
    ids = model.tokenizer.encode(PROMPT)
    best = beam_search(model, [ids], beams=3, max_new_tokens=30, eos_id=model.tokenizer.eos_id)[0]
    expected = model.tokenizer.decode(best.tokens)
    assert expected != greedy(model)  # three beams find another continuation than greedy here
    assert stratalm.generate(model, PROMPT, max_new_tokens=30, beams=3) == expected
    assert cli(capsys, folder, "--beams", 3) == PROMPT + expected + "\n"
    assert cli(capsys, folder, "--beams", 3, "--seed", 1) == cli(capsys, folder, "--beams", 3, "--seed", 2)


def test_num_samples_prints_n_samples_reproducibly(model, folder, capsys):
    samples = stratalm.generate(model, PROMPT, max_new_tokens=30, seed=1, num_samples=3, echo=True)
    assert isinstance(samples, list) and len(samples) == 3 and len(set(samples)) == 3
    assert all(s.startswith(PROMPT) for s in samples)
    out = cli(capsys, folder, "--num-samples", 3, "--seed", 1)
    assert out == "".join(f"--- sample {i} of 3 ---\n{s}\n" for i, s in enumerate(samples, start=1))
    assert cli(capsys, folder, "--num-samples", 3, "--seed", 1) == out  # the seed reproduces them
    assert cli(capsys, folder, "--num-samples", 3, "--seed", 2) != out
    one = stratalm.generate(model, PROMPT, max_new_tokens=30, seed=1, num_samples=1)
    assert isinstance(one, list) and len(one) == 1  # asking for samples always gives a list


def test_a_seed_reproduces_a_sample(folder, capsys):
    first = cli(capsys, folder, "--seed", 7)
    assert cli(capsys, folder, "--seed", 7) == first and cli(capsys, folder, "--seed", 8) != first


def test_device_flag(model, folder, capsys):
    assert cli(capsys, folder, "--temperature", 0, "--device", "cpu") == PROMPT + greedy(model) + "\n"
    if not torch.cuda.is_available():
        assert main(["generate", folder, "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--beams", "0"], "--beams must be at least 1"),
    (["--repetition-penalty", "-1"], "--repetition-penalty must be above 0"),
    (["--repetition-penalty", "0"], "--repetition-penalty must be above 0"),
    (["--num-samples", "0"], "--num-samples must be at least 1"),
    (["--beams", "2", "--num-samples", "2"], "--num-samples needs --beams 1"),
    (["--stop", ""], "--stop string cannot be empty"),
    (["--temperature", "-0.5"], "--temperature must be 0"),
])
def test_bad_values_are_refused_in_one_line(folder, capsys, flags, message):
    capsys.readouterr()
    assert main(["generate", folder, "--prompt", PROMPT, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_the_function_refuses_the_same_values(model):
    with pytest.raises(ConfigError, match="--beams must be at least 1"):
        stratalm.generate(model, PROMPT, beams=0)
    with pytest.raises(ConfigError, match="--repetition-penalty must be above 0"):
        stratalm.generate(model, PROMPT, repetition_penalty=-2.0)
