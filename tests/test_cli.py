"""The `stratalm` command as a user meets it: the happy path, and one clear line for each mistake."""
from __future__ import annotations


import pytest

from conftest import run_cli


def assert_clean_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, char_data):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = run_cli("pretrain", "--data", char_data, "--out", out, "--max-steps", "30", "--model", "tiny",
                     "model.n_layers=2", "model.d_model=64", "model.max_seq_len=32", "train.progress=false")
    assert result.returncode == 0, result.stderr
    assert "parameters" in result.stdout and "final validation loss" in result.stdout
    return out


def test_prepare_pretrain_generate_from_the_command_line(tmp_path, trained):
    (tmp_path / "a.txt").write_text("It was the best of times, it was the worst of times.\n" * 50)
    prepared = run_cli("prepare", tmp_path / "a.txt", "--out", tmp_path / "data", "--tokenizer", "char", "--quiet")
    assert prepared.returncode == 0 and "tokens" in prepared.stdout
    generated = run_cli("generate", trained, "--prompt", "The ", "--max-new-tokens", "20", "--temperature", "0")
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.startswith("The ") and len(generated.stdout) > 5
    again = run_cli("generate", trained, "--prompt", "The ", "--max-new-tokens", "20", "--temperature", "0")
    assert again.stdout == generated.stdout  # greedy is deterministic


@pytest.mark.slow  # a longer check (make test-slow): the default suite stays near 10 minutes
def test_bad_inputs_to_prepare(tmp_path):
    assert_clean_error(run_cli("prepare", tmp_path / "none.txt", "--out", tmp_path / "o"), "none.txt", "does not exist")
    (tmp_path / "empty.txt").write_text("")
    assert_clean_error(run_cli("prepare", tmp_path / "empty.txt", "--out", tmp_path / "o"), "empty")
    (tmp_path / "latin1.txt").write_bytes("déjà vu\n".encode("latin-1"))
    assert_clean_error(run_cli("prepare", tmp_path / "latin1.txt", "--out", tmp_path / "o"), "latin1.txt", "UTF-8")
    (tmp_path / "img.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert_clean_error(run_cli("prepare", tmp_path / "img.txt", "--out", tmp_path / "o"), "img.txt", "binary")


@pytest.mark.slow  # a longer check (make test-slow): the default suite stays near 10 minutes
def test_bad_inputs_to_pretrain(tmp_path, char_data, trained):
    assert_clean_error(run_cli("pretrain", "--data", char_data, "--out", tmp_path / "r", "--model", "gpt5"),
                       "unknown model preset 'gpt5'", "tiny", "llama")
    assert_clean_error(run_cli("pretrain", "--data", char_data, "--out", tmp_path / "r", "train.learning_rate=1"),
                       "unknown config key 'train.learning_rate'", "train.lr")
    assert_clean_error(run_cli("pretrain", "--data", tmp_path, "--out", tmp_path / "r"), "not a prepared data folder")
    before = (trained / "model.safetensors").read_bytes()
    assert_clean_error(run_cli("pretrain", "--data", char_data, "--out", trained, "--max-steps", "5"),
                       "already holds", "--resume", "--overwrite")
    assert (trained / "model.safetensors").read_bytes() == before
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    assert_clean_error(run_cli("pretrain", "--config", tmp_path / "bad.yaml", "--data", char_data, "--out", tmp_path / "r"),
                       "not valid YAML")


@pytest.mark.slow  # a longer check (make test-slow): the default suite stays near 10 minutes
def test_bad_inputs_to_generate(tmp_path, trained):
    long_prompt = "x" * 40  # the model's context is 32 characters
    assert_clean_error(run_cli("generate", trained, "--prompt", long_prompt), "prompt is 40 tokens", "context is 32")
    assert_clean_error(run_cli("generate", tmp_path / "nothing", "--prompt", "a"), "does not exist")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((trained / "config.json").read_text())
    (broken / "model.safetensors").write_bytes((trained / "model.safetensors").read_bytes()[:1000])
    assert_clean_error(run_cli("generate", broken, "--prompt", "a"), "corrupt or truncated")
    wrong_tok = tmp_path / "wrong_tok"
    wrong_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        (wrong_tok / name).write_bytes((trained / name).read_bytes())
    from stratalm.tokenize import train_char

    train_char(iter(["".join(chr(c) for c in range(0x4E00, 0x4E00 + 200))])).save(str(wrong_tok))
    assert_clean_error(run_cli("generate", wrong_tok, "--prompt", "a"), "tokenizer", "vocabulary")


def test_a_data_set_whose_tokenizer_exceeds_the_starting_checkpoint_is_refused(tmp_path, trained):
    from stratalm.data import prepare

    (tmp_path / "zh.txt").write_text("".join(chr(c) for c in range(0x4E00, 0x4E00 + 300)) * 3)
    prepare([str(tmp_path / "zh.txt")], str(tmp_path / "zh"), tokenizer="char", progress=False)
    assert_clean_error(run_cli("pretrain", "--data", tmp_path / "zh", "--out", tmp_path / "r", "--model", trained),
                       "tokenizer", "vocabulary")


def test_plot_draws_the_curves_of_a_run(tmp_path, trained):
    pytest.importorskip("matplotlib")
    result = run_cli("plot", trained, "--out", tmp_path / "curves.png")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_clean_error(run_cli("plot", tmp_path), "no metrics.jsonl")
