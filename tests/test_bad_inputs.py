"""A corpus of bad inputs across every command and the Python API. Each one must end with a non-zero
status and exactly one line `error: ...` on stderr that names the input and says how to fix it, no
traceback, and leave every file that existed before as it was (and add none).

Commands run in this process (stratalm.cli.main), so a case costs no interpreter start; an
exception other than a StratalmError escapes main() and fails the case, as a traceback would."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
from pathlib import Path

import pytest

from conftest import pydoc_texts
from stratalm.cli import main
from stratalm.errors import StratalmError

TINY = ["model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.d_ff=64", "model.max_seq_len=32",
        "train.batch_size=4", "train.progress=false", "train.eval_windows=4"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """One folder holding everything the cases read: prepared data, a decoder run, an encoder, a
    fine-tuned classifier, and the bad files themselves. The cases write nothing into it."""
    from stratalm.data import prepare

    w = tmp_path_factory.mktemp("world")
    (w / "docs.txt").write_text("\n".join(pydoc_texts(4)))
    prepare([str(w / "docs.txt")], str(w / "data"), tokenizer="char", progress=False)
    (w / "zh.txt").write_text("".join(chr(c) for c in range(0x4E00, 0x4E00 + 300)) * 2)
    prepare([str(w / "zh.txt")], str(w / "zh_data"), tokenizer="char", progress=False)
    assert main(["pretrain", "--data", str(w / "data"), "--out", str(w / "gpt"), "--max-steps", "2", *TINY]) == 0
    assert main(["pretrain", "--data", str(w / "data"), "--out", str(w / "bert"), "--model", "bert", "--objective", "mlm",
                 "--max-steps", "1", *TINY]) == 0
    rows = [("this is good", 1), ("this is bad", 0)] * 8
    (w / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{label}\n" for t, label in rows))
    assert main(["finetune", "--task", "classification", "--model", str(w / "bert"), "--train", str(w / "train.tsv"),
                 "--out", str(w / "ft"), "--max-steps", "2", "--batch-size", "8", "--quiet"]) == 0
    write_bad_files(w)
    return w


def write_bad_files(w: Path) -> None:
    (w / "empty.txt").write_text("")
    (w / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (w / "latin1.txt").write_bytes("déjà vu, voilà\n".encode("latin-1"))
    (w / "latin1.tsv").write_bytes("sentence\tlabel\ndéjà\t1\n".encode("latin-1"))
    (w / "null_text.jsonl").write_text('{"text": null}\n{"text": "fine"}\n')
    (w / "list_text.jsonl").write_text('{"text": ["a", "b"]}\n')
    (w / "number_text.jsonl").write_text('{"text": "fine"}\n{"text": 12345}\n')
    (w / "no_field.jsonl").write_text('{"body": "hello"}\n')
    (w / "no_texts").mkdir()
    (w / "no_texts" / "image.png").write_bytes(b"\x89PNG")
    (w / "a_file").write_text("not a folder\n")
    (w / "numeric_text.jsonl").write_text('{"sentence": 42, "label": 1}\n{"sentence": "ok", "label": 0}\n')
    (w / "missing_text.jsonl").write_text('{"label": 1}\n{"sentence": "ok", "label": 0}\n')
    (w / "no_text_column.tsv").write_text("words\tlabel\nhello\t1\n")
    (w / "header_only.tsv").write_text("sentence\tlabel\n")
    (w / "one_label.tsv").write_text("sentence\tlabel\na\t1\nb\t1\n")
    (w / "short_line.tsv").write_text("sentence\tlabel\njust text\n")
    (w / "unknown_label.tsv").write_text("sentence\tlabel\nthis is good\tmaybe\n")
    (w / "list.yaml").write_text("- train\n- 5\n")
    (w / "train5.yaml").write_text("train: 5\n")
    # checkpoint folders: missing weights, truncated weights, the wrong shape, a pickle in their place
    gpt = w / "gpt"
    for name in ("no_weights", "truncated", "wrong_shape", "pickled", "big_tokenizer"):
        (w / name).mkdir()
        for part in ("config.json", "tokenizer.json", "model.safetensors"):
            if not (name == "no_weights" and part == "model.safetensors"):
                (w / name / part).write_bytes((gpt / part).read_bytes())
    (w / "truncated" / "model.safetensors").write_bytes((gpt / "model.safetensors").read_bytes()[:500])
    config = json.loads((gpt / "config.json").read_text())
    (w / "wrong_shape" / "config.json").write_text(json.dumps({**config, "d_model": 64, "d_ff": 128}))
    (w / "pickled" / "model.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    (w / "big_tokenizer" / "tokenizer.json").write_bytes((w / "zh_data" / "tokenizer.json").read_bytes())
    (w / "hf_pickle").mkdir()  # a Hugging Face folder whose weights are a bare pickle, not torch's format
    (w / "hf_pickle" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_embd": 32,
                                                             "n_head": 2, "vocab_size": 99, "n_positions": 32}))
    (w / "hf_pickle" / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": object}, protocol=4))
    (w / "bad_json").mkdir()
    (w / "bad_json" / "config.json").write_text("{not json")
    (w / "same.tsv").write_text("sentence\nthis is good\n")
    (w / "mixed_labels.tsv").write_text("sentence\tlabel\na\t1\nb\t0\nc\tpositive\n")
    (w / "odd_metrics").mkdir()
    (w / "odd_metrics" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n[1, 2]\n')


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder`: its sha256, or 'dir'."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            found[os.path.relpath(os.path.join(root, name), folder)] = "dir"
        for name in files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return found


def api(call):
    """A Python API call, answered as the command would: (status, stderr)."""
    try:
        call()
    except StratalmError as exc:
        return 2, f"error: {exc}\n"
    return 0, ""


def load(path):
    import stratalm

    return stratalm.load(str(path))


# (id, argv with {w} for the world folder, or a function of the world; fragments of the one error line)
CASES = [
    # prepare
    ("prepare-missing-file", "prepare {w}/none.txt --out {w}/o", ["none.txt", "does not exist"]),
    ("prepare-empty-file", "prepare {w}/empty.txt --out {w}/o", ["empty", "give files that hold text"]),
    ("prepare-binary-file", "prepare {w}/binary.txt --out {w}/o", ["binary.txt", "binary", "UTF-8"]),
    ("prepare-not-utf8", "prepare {w}/latin1.txt --out {w}/o --tokenizer char", ["latin1.txt", "UTF-8"]),
    ("prepare-jsonl-null-text", "prepare {w}/null_text.jsonl --out {w}/o", ["null_text.jsonl", "line 1", "not a string"]),
    ("prepare-jsonl-list-text", "prepare {w}/list_text.jsonl --out {w}/o", ["list_text.jsonl", "not a string"]),
    ("prepare-jsonl-number-text", "prepare {w}/number_text.jsonl --out {w}/o", ["number_text.jsonl", "line 2", "12345"]),
    ("prepare-jsonl-missing-field", "prepare {w}/no_field.jsonl --out {w}/o", ["no 'text' field", "--text-field"]),
    ("prepare-folder-without-texts", "prepare {w}/no_texts --out {w}/o", ["no_texts", "holds no text files"]),
    ("prepare-out-is-a-file", "prepare {w}/docs.txt --out {w}/a_file", ["a_file", "is a file", "another --out"]),
    ("prepare-negative-sentinels", "prepare {w}/docs.txt --out {w}/o --sentinels -3", ["--sentinels", "at least 0"]),
    ("prepare-val-share-too-big", "prepare {w}/docs.txt --out {w}/o --val-share 1.5", ["validation share", "[0, 1)"]),
    ("prepare-overwrite-a-run", "prepare {w}/docs.txt --out {w}/gpt --overwrite", ["gpt", "pretraining run", "another --out"]),
    # pretrain
    ("pretrain-data-not-prepared", "pretrain --data {w}/no_texts --out {w}/o", ["not a prepared data folder"]),
    ("pretrain-unknown-key", "pretrain --data {w}/data --out {w}/o train.learning_rate=1",
     ["unknown config key 'train.learning_rate'", "train.lr"]),
    ("pretrain-negative-lr", "pretrain --data {w}/data --out {w}/o train.lr=-1", ["train.lr", "above 0"]),
    ("pretrain-beta-outside-0-1", "pretrain --data {w}/data --out {w}/o train.beta2=1", ["train.beta2", "[0, 1)"]),
    ("pretrain-zero-batch", "pretrain --data {w}/data --out {w}/o train.batch_size=0", ["train.batch_size", "at least 1"]),
    ("pretrain-wrong-type", "pretrain --data {w}/data --out {w}/o train.batch_size=many", ["train.batch_size", "expects int"]),
    ("pretrain-log-every-zero", "pretrain --data {w}/data --out {w}/o train.log_every=0", ["train.log_every", "at least 1"]),
    ("pretrain-eval-batch-zero", "pretrain --data {w}/data --out {w}/o train.eval_batch_size=0", ["train.eval_batch_size"]),
    ("pretrain-device-tpu", "pretrain --data {w}/data --out {w}/o train.device=tpu", ["train.device", "cpu, cuda"]),
    ("pretrain-zero-steps", "pretrain --data {w}/data --out {w}/o --max-steps 0", ["train.max_steps", "at least 1"]),
    ("pretrain-unknown-preset", "pretrain --data {w}/data --out {w}/o --model gpt5", ["unknown model preset 'gpt5'"]),
    ("pretrain-objective-of-another-family", "pretrain --data {w}/data --out {w}/o --objective mlm --max-steps 1 " + " ".join(TINY),
     ["mlm objective needs an encoder", "decoder"]),
    ("pretrain-yaml-not-a-mapping", "pretrain --config {w}/list.yaml --data {w}/data --out {w}/o", ["list.yaml", "mapping"]),
    ("pretrain-yaml-section-as-value", "pretrain --config {w}/train5.yaml --data {w}/data --out {w}/o train.lr=1e-3",
     ["'train'", "section", "train.<name>=value"]),
    ("pretrain-config-is-a-folder", "pretrain --config {w}/no_texts --data {w}/data --out {w}/o", ["no_texts", "is a folder"]),
    ("pretrain-out-is-a-file", "pretrain --data {w}/data --out {w}/a_file", ["a_file", "is a file"]),
    ("pretrain-overwrite-the-data", "pretrain --data {w}/data --out {w}/data --overwrite", ["prepared data folder"]),
    ("pretrain-resume-a-fine-tuned-folder", "pretrain --resume --out {w}/ft --data {w}/data", ["ft", "fine-tuning run"]),
    ("pretrain-resume-changed-batch", "pretrain --resume --out {w}/gpt train.batch_size=8",
     ["train.batch_size = 8 (saved: 4)", "--overwrite"]),
    ("pretrain-resume-bad-precision", "pretrain --resume --out {w}/gpt train.precision=fp16", ["train.precision", "bf16"]),
    ("pretrain-tokenizer-beyond-the-model", "pretrain --data {w}/zh_data --out {w}/o --model {w}/gpt train.progress=false",
     ["tokenizer", "vocabulary"]),
    # finetune
    ("finetune-train-missing", "finetune --task classification --model {w}/bert --train {w}/none.tsv --out {w}/o",
     ["none.tsv", "does not exist"]),
    ("finetune-train-is-a-folder", "finetune --task classification --model {w}/bert --train {w}/no_texts --out {w}/o",
     ["no_texts", "is a folder"]),
    ("finetune-no-text-column", "finetune --task classification --model {w}/bert --train {w}/no_text_column.tsv --out {w}/o",
     ["no_text_column.tsv", "--text-column"]),
    ("finetune-header-only", "finetune --task classification --model {w}/bert --train {w}/header_only.tsv --out {w}/o",
     ["header_only.tsv", "no rows"]),
    ("finetune-one-label", "finetune --task classification --model {w}/bert --train {w}/one_label.tsv --out {w}/o",
     ["only one label"]),
    ("finetune-short-line", "finetune --task classification --model {w}/bert --train {w}/short_line.tsv --out {w}/o",
     ["line 2", "short_line.tsv", "1 fields"]),
    ("finetune-numeric-text", "finetune --task classification --model {w}/bert --train {w}/numeric_text.jsonl --out {w}/o",
     ["numeric_text.jsonl", "42 (not a string)", "'sentence'"]),
    ("finetune-missing-text", "finetune --task classification --model {w}/bert --train {w}/missing_text.jsonl --out {w}/o",
     ["missing_text.jsonl", "no value", "'sentence'"]),
    ("finetune-a-decoder", "finetune --task classification --model {w}/gpt --train {w}/train.tsv --out {w}/o --quiet",
     ["classification task needs an encoder", "gpt2 decoder"]),
    ("finetune-negative-lr", "finetune --task classification --model {w}/bert --train {w}/train.tsv --out {w}/o --lr -1",
     ["loop.lr", "above 0"]),
    ("finetune-zero-epochs", "finetune --task classification --model {w}/bert --train {w}/train.tsv --out {w}/o --epochs 0",
     ["epochs", "above 0"]),
    ("finetune-dropout-of-one", "finetune --task classification --model {w}/bert --train {w}/train.tsv --out {w}/o "
     "--lora-rank 4 --lora-dropout 1", ["lora_dropout", "[0, 1)"]),
    ("finetune-out-is-prepared-data", "finetune --task classification --model {w}/bert --train {w}/train.tsv --out {w}/data "
     "--overwrite", ["prepared data folder"]),
    ("finetune-overwrite-a-pretraining-run", "finetune --task classification --model {w}/bert --train {w}/train.tsv "
     "--out {w}/gpt --overwrite", ["pretraining run", "another --out"]),
    ("finetune-out-is-a-file", "finetune --task classification --model {w}/bert --train {w}/train.tsv --out {w}/a_file",
     ["a_file", "is a file"]),
    ("finetune-unknown-task", "finetune --task clasification --model {w}/bert --train {w}/train.tsv --out {w}/o",
     ["unknown task", "did you mean classification?"]),
    ("finetune-mixed-labels", "finetune --task classification --model {w}/bert --train {w}/mixed_labels.tsv --out {w}/o",
     ["mixes label numbers and label names", "positive"]),
    # evaluate and predict
    ("evaluate-negative-batch", "evaluate --model {w}/ft --data {w}/train.tsv --batch-size -4", ["--batch-size", "at least 1"]),
    ("evaluate-not-fine-tuned", "evaluate --model {w}/gpt --data {w}/train.tsv", ["not a fine-tuned folder", "task.json"]),
    ("evaluate-unknown-label", "evaluate --model {w}/ft --data {w}/unknown_label.tsv", ["maybe", "never had"]),
    ("evaluate-not-utf8", "evaluate --model {w}/ft --data {w}/latin1.tsv", ["latin1.tsv", "UTF-8"]),
    ("predict-zero-batch", "predict --model {w}/ft --data {w}/train.tsv --batch-size 0", ["--batch-size"]),
    ("predict-out-is-the-data", "predict --model {w}/ft --data {w}/same.tsv --out {w}/same.tsv", ["--data file", "another --out"]),
    ("predict-out-is-a-folder", "predict --model {w}/ft --data {w}/same.tsv --out {w}/no_texts", ["no_texts", "is a folder"]),
    ("predict-out-in-a-missing-folder", "predict --model {w}/ft --data {w}/same.tsv --out {w}/nothing/p.jsonl",
     ["nothing/p.jsonl", "does not exist", "create it"]),
    ("predict-device-tpu", "predict --model {w}/ft --data {w}/same.tsv --device tpu", ["--device", "cpu, cuda"]),
    # generate
    ("generate-prompt-beyond-context", "generate {w}/gpt --prompt " + "x" * 40, ["prompt is 40 tokens", "context is 32"]),
    ("generate-negative-temperature", "generate {w}/gpt --temperature -0.5", ["--temperature", "0 (greedy) or more"]),
    ("generate-top-k-zero", "generate {w}/gpt --top-k 0", ["--top-k", "at least 1"]),
    ("generate-top-p-above-one", "generate {w}/gpt --top-p 1.5", ["--top-p", "(0, 1]"]),
    ("generate-negative-new-tokens", "generate {w}/gpt --max-new-tokens -5", ["--max-new-tokens", "at least 0"]),
    ("generate-device-tpu", "generate {w}/gpt --device tpu", ["--device", "cpu, cuda"]),
    ("generate-missing-folder", "generate {w}/nothing", ["nothing", "does not exist"]),
    ("generate-missing-weights", "generate {w}/no_weights", ["no_weights"]),
    ("generate-truncated-weights", "generate {w}/truncated", ["truncated", "corrupt or truncated"]),
    ("generate-wrong-shape", "generate {w}/wrong_shape", ["wrong_shape", "shape"]),
    ("generate-pickle-for-safetensors", "generate {w}/pickled", ["pickled/model.safetensors", "is a pickle"]),
    ("generate-with-an-encoder", "generate {w}/bert --prompt a", ["decoder", "bert encoder"]),
    ("generate-tokenizer-beyond-vocabulary", "generate {w}/big_tokenizer --prompt a", ["tokenizer", "vocabulary"]),
    # convert and info
    ("convert-into-its-source", "convert {w}/gpt {w}/gpt --overwrite", ["source folder", "another destination"]),
    ("convert-into-a-file", "convert {w}/gpt {w}/a_file", ["a_file", "is a file"]),
    ("convert-over-prepared-data", "convert {w}/gpt {w}/data --overwrite", ["prepared data folder", "another destination"]),
    ("convert-missing-source", "convert {w}/nothing {w}/o", ["nothing", "does not exist"]),
    ("info-bare-pickle", "info {w}/hf_pickle", ["pytorch_model.bin", "pickle"]),
    ("info-config-not-json", "info {w}/bad_json", ["bad_json"]),
    ("info-unknown-preset", "info gpt5", ["gpt5"]),
    # demo and plot
    ("demo-zero-steps", "demo --out {w}/demo --steps 0", ["--steps", "at least 1"]),
    ("demo-negative-steps", "demo --out {w}/demo --steps -1", ["--steps", "at least 1"]),
    ("demo-out-is-a-file", "demo --out {w}/a_file --steps 1", ["a_file", "is a file"]),
    ("plot-metrics-not-objects", "plot {w}/odd_metrics --out {w}/curves.png", ["metrics.jsonl", "[1, 2]", "one JSON object"]),
    ("plot-out-is-a-folder", "plot {w}/gpt --out {w}/no_texts", ["no_texts", "is a folder"]),
    # the Python API
    ("api-encode-one-string", lambda w: api(lambda: __import__("stratalm").encode(load(w / "bert"), "one string")),
     ["one string", "[text]"]),
    ("api-encode-none-text", lambda w: api(lambda: __import__("stratalm").encode(load(w / "bert"), ["a", None])),
     ["text 1", "None", "string"]),
    ("api-generate-a-list", lambda w: api(lambda: __import__("stratalm").generate(load(w / "gpt"), ["a", "b"])),
     ["prompt must be a string", "once per prompt"]),
    ("api-generate-top-p-zero", lambda w: api(lambda: __import__("stratalm").generate(load(w / "gpt"), "a", top_p=0.0)),
     ["top-p", "(0, 1]"]),
    ("api-load-missing", lambda w: api(lambda: load(w / "nothing")), ["nothing", "does not exist"]),
    ("api-load-truncated", lambda w: api(lambda: load(w / "truncated")), ["truncated", "corrupt or truncated"]),
    ("api-evaluate-zero-batch", lambda w: api(lambda: __import__("stratalm.tasks", fromlist=["evaluate"]).evaluate(
        str(w / "ft"), str(w / "train.tsv"), batch_size=0)), ["batch-size", "at least 1"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_bad_input_gets_one_sentence_and_changes_nothing(world, case, capsys):
    name, how, fragments = case
    before = snapshot(world)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as warned:  # a warning would print lines of its own to a user
        warnings.simplefilter("always")
        if callable(how):
            status, err = how(world)
        else:
            status = main([part.replace("{w}", str(world)) for part in how.split(" ")])
            err = capsys.readouterr().err
    assert not warned, [str(w.message) for w in warned]
    assert status != 0, f"{name} succeeded"
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert snapshot(world) == before, f"{name} changed files"


def test_the_corpus_covers_every_command():
    commands = {case[1].split(" ")[0] if isinstance(case[1], str) else "api" for case in CASES}
    assert {"prepare", "pretrain", "finetune", "evaluate", "predict", "generate", "convert", "info", "api"} <= commands
    assert len(CASES) >= 40
