"""Sequence-to-sequence task: pair readers and their errors, T5's initialisation, and a tiny T5 and
a tiny GPT that learn a toy translation (digits -> English number words) through the CLI."""
from __future__ import annotations

import json
import random

import pytest

import stratalm
from stratalm.errors import ConfigError, DataError
from stratalm.families import FAMILIES, preset
from stratalm.models import build_model
from stratalm.models.seq2seq import t5_init
from stratalm.tasks.data_files import read_pairs as read_table_pairs
from stratalm.tasks.seq2seq import FLAGS, SOURCE_COLUMNS, TARGET_COLUMNS, Seq2SeqTask, bleu_and_chrf
from stratalm.tokenize import train_bpe

from conftest import SHARED_DATA, run_cli

NAMES = "zero one two three four five six seven eight nine".split()


def toy_pairs(path, n: int, seed: int) -> None:
    """'9 1 4<TAB>nine one four': three or four distinct digits and their names."""
    rng = random.Random(seed)
    with open(path, "w") as handle:
        for _ in range(n):
            digits = rng.sample(range(10), rng.randint(3, 4))
            handle.write(" ".join(map(str, digits)) + "\t" + " ".join(NAMES[d] for d in digits) + "\n")


# -- readers -------------------------------------------------------------------------------------
def read_pairs(path: str, source_column, target_column):
    """The pair reader as the seq2seq task calls it (its default column names and flags)."""
    return read_table_pairs(path, source_column, target_column, (SOURCE_COLUMNS, TARGET_COLUMNS), FLAGS)


def test_pair_readers_and_their_errors(tmp_path):
    headerless = tmp_path / "pairs.txt"
    headerless.write_text("Go.\tVa !\tCC-BY attribution\nHi.\tSalut !\tCC-BY attribution\n")
    assert read_pairs(str(headerless), None, None) == [("Go.", "Va !"), ("Hi.", "Salut !")]
    assert read_pairs(str(headerless), "1", "0") == [("Va !", "Go."), ("Salut !", "Hi.")]
    with pytest.raises(DataError, match="line 1 .* has 3 tab-separated fields, so it has no column 5"):
        read_pairs(str(headerless), "0", "5")
    with pytest.raises(DataError, match="no header line, so its columns are numbers"):
        read_pairs(str(headerless), "english", None)
    table = tmp_path / "pairs.tsv"
    table.write_text("en\tfr\nGo.\tVa !\n")
    assert read_pairs(str(table), "en", "fr") == [("Go.", "Va !")]
    with pytest.raises(DataError, match="has no column 'de' \\(its columns are: en, fr\\)"):
        read_pairs(str(table), "en", "de")
    with pytest.raises(DataError, match="none of the usual source columns .* its columns are: en, fr"):
        read_pairs(str(table), None, "fr")
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(json.dumps({"source": "Go.", "target": "Va !"}) + "\n")
    assert Seq2SeqTask().read(str(jsonl)) == [{"source": "Go.", "target": "Va !"}]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(DataError, match="empty"):
        read_pairs(str(empty), None, None)
    blank = tmp_path / "blank.tsv"
    blank.write_text("source\ttarget\nGo.\t\n")
    with pytest.raises(DataError, match="example 1 .* has no value in column 'target'"):
        Seq2SeqTask().read(str(blank))
    assert Seq2SeqTask().read(str(blank), labelled=False) == [{"source": "Go.", "target": None}]  # no target to read


def test_real_tatoeba_file_reads_as_pairs():
    path = SHARED_DATA / "tatoeba-eng-fra-5k" / "eng-fra.txt"
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared real-data folder)")
    pairs = Seq2SeqTask().read(str(path))
    assert len(pairs) == 5000 and pairs[0] == {"source": "Go.", "target": "Va !"}


def test_bleu_and_chrf_are_sacrebleu_corpus_scores():
    same = bleu_and_chrf(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert same["bleu"] == pytest.approx(100.0) and same["chrf"] == pytest.approx(100.0)
    scores = bleu_and_chrf(["the cat sat on a mat"], ["the cat sat on the mat"])
    assert 0 < scores["bleu"] < 100 and 0 < scores["chrf"] < 100


def test_decoder_features_score_only_the_target():
    tokenizer = train_bpe(iter(["1 2 3", "one two three"] * 20), 300, show_progress=False)
    task = Seq2SeqTask()
    task.check_model(preset("tiny", vocab_size=300))
    feature = task.encode([{"source": "1 2 3", "target": "one two three"}], tokenizer, 64)[0]
    source = tokenizer.encode("1 2 3") + [tokenizer.sep_id]
    target = tokenizer.encode("one two three") + [tokenizer.eos_id]
    assert feature["ids"] == source + target
    assert feature["labels"] == [-100] * len(source) + target


def test_t5_init_matches_transformers():
    transformers = pytest.importorskip("transformers")
    for gated in (False, True):
        hf = transformers.T5ForConditionalGeneration(transformers.T5Config(
            vocab_size=500, d_model=96, d_kv=16, d_ff=200, num_layers=2, num_heads=4,
            feed_forward_proj="gated-gelu" if gated else "relu", tie_word_embeddings=not gated))
        config = preset("t5", vocab_size=500, d_model=96, head_dim=16, d_ff=200, n_layers=2, n_heads=4, gated=gated,
                        activation="gelu_tanh" if gated else "relu", tie_embeddings=not gated, lm_head_scale=not gated)
        ours = build_model(config)
        t5_init(ours)
        theirs = {n: p.var().item() for n, p in hf.state_dict().items()}
        mine = dict(ours.named_parameters())
        checked = 0
        for rule in FAMILIES["t5"].expand(config):  # the HF tensors each of ours is made of
            if rule.ours in mine and "norm" not in rule.ours:
                expected = (sum(theirs[t] for t in rule.theirs) / len(rule.theirs)) ** 0.5  # q, k, v: pooled
                param = mine[rule.ours].detach()
                tolerance = 0.1 if param.numel() > 2000 else 0.3  # sampling noise of a small tensor's std
                assert abs(param.std().item() - expected) < tolerance * expected, rule.ours
                checked += 1
        assert checked == sum("norm" not in name for name in mine)  # every tensor but the norms


# -- end to end ----------------------------------------------------------------------------------
def tiny_folder(path, kind: str, train_file) -> None:
    texts = [t for line in open(train_file) for t in line.rstrip("\n").split("\t")]
    tokenizer = train_bpe(iter(texts), 330, show_progress=False)
    small = dict(n_layers=2, d_model=64, n_heads=4, d_ff=128, vocab_size=tokenizer.vocab_size, dropout=0.0, max_seq_len=64)
    model = build_model(preset("t5", **small, head_dim=16) if kind == "t5" else preset("tiny", **small))
    if kind == "t5":
        t5_init(model)
    model.tokenizer = tokenizer
    stratalm.save(model, str(path))


@pytest.mark.parametrize("kind,epochs", [pytest.param("t5", 16, marks=pytest.mark.slow), ("gpt2", 6)])
def test_tiny_model_learns_a_toy_translation_through_the_cli(tmp_path, kind, epochs):
    toy_pairs(tmp_path / "train.txt", 1200, 1)
    toy_pairs(tmp_path / "dev.txt", 60, 2)
    tiny_folder(tmp_path / "base", kind, tmp_path / "train.txt")
    done = run_cli("finetune", "--task", "seq2seq", "--model", tmp_path / "base", "--train", tmp_path / "train.txt",
                   "--dev", tmp_path / "dev.txt", "--out", tmp_path / "out", "--epochs", str(epochs), "--lr", "3e-3",
                   "--batch-size", "32", "--warmup", "0.05", "--eval-every", "150", "--max-new-tokens", "16", "--quiet")
    assert done.returncode == 0, done.stderr
    scores = json.loads(run_cli("evaluate", "--model", tmp_path / "out", "--data", tmp_path / "dev.txt").stdout)
    assert scores["bleu"] >= 90 and scores["chrf"] >= 90 and scores["loss"] < 0.2
    beam = run_cli("predict", "--model", tmp_path / "out", "--data", tmp_path / "dev.txt", "--beams", "3")
    lines = [json.loads(line) for line in beam.stdout.splitlines()]
    expected = [line.rstrip("\n").split("\t")[1] for line in open(tmp_path / "dev.txt")]
    assert len(lines) == 60 and sum(p["prediction"] == e for p, e in zip(lines, expected)) >= 54


def test_seq2seq_refuses_wrong_models_and_builds_presets_from_scratch(tmp_path):
    toy_pairs(tmp_path / "train.txt", 40, 1)
    encoder = build_model(preset("bert", n_layers=1, d_model=32, n_heads=2, d_ff=32, vocab_size=300))
    encoder.tokenizer = train_bpe(iter(["a b c"] * 5), 300, show_progress=False)
    stratalm.save(encoder, str(tmp_path / "bert"))
    wrong = run_cli("finetune", "--task", "seq2seq", "--model", tmp_path / "bert", "--train", tmp_path / "train.txt",
                    "--out", tmp_path / "x")
    assert wrong.returncode == 2 and "needs an encoder-decoder (t5) or a decoder (gpt2, llama)" in wrong.stderr
    scratch = run_cli("finetune", "--task", "seq2seq", "--model", "t5", "--tokenizer-from-train", "300", "--train",
                      tmp_path / "train.txt", "--out", tmp_path / "t5", "--max-steps", "2", "--batch-size", "4", "--quiet")
    assert scratch.returncode == 0, scratch.stderr
    model = stratalm.load(str(tmp_path / "t5"))
    assert model.config.family == "t5" and model.config.vocab_size == model.tokenizer.vocab_size == 300
    # T5's own initialisation: unit-variance embeddings
    assert 0.9 < float(model.encoder.tok_embed.weight.detach().std()) < 1.1
    with pytest.raises(ConfigError, match="'t5' is a preset name, not a checkpoint folder; add --tokenizer-from-train"):
        Seq2SeqTask().load_base("t5", str(tmp_path / "train.txt"))
    with pytest.raises(ConfigError, match="drop the flag"):
        Seq2SeqTask({"tokenizer_from_train": 300}).load_base(str(tmp_path / "bert"), str(tmp_path / "train.txt"))
