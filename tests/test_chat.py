"""Chat task and `stratalm chat`: the loss counts exactly the assistant's tokens, packing keeps every
token and label, the template stored with the model renders in `transformers` as in stratalm, a
tiny GPT learns a toy chat through `stratalm finetune --task chat`, and `stratalm chat` answers
turns piped to it."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import stratalm
from stratalm.checkpoint.chat_template import DEFAULT_CHAT_TEMPLATE
from stratalm.errors import DataError
from stratalm.families import preset
from stratalm.models import build_model
from stratalm.tasks.base import IGNORE
from stratalm.tasks.chat import ChatRenderer, ChatTask, pack
from stratalm.tokenize import train_bpe

from conftest import ROOT, run_cli

NAMES = "zero one two three four five six seven eight nine".split()
SYSTEM = "Answer with the number in words."


def toy_conversation(rng: random.Random) -> dict:
    """Two turns: 'say 7' -> 'seven', then 'and 3?' -> 'three'."""
    a, b = rng.randrange(10), rng.randrange(10)
    return {"messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": f"say {a}"}, {"role": "assistant", "content": NAMES[a]},
                         {"role": "user", "content": f"and {b}?"}, {"role": "assistant", "content": NAMES[b]}]}


def write_jsonl(path, rows) -> None:
    with open(path, "w") as handle:
        handle.write("".join(json.dumps(row) + "\n" for row in rows))


def toy_tokenizer():
    texts = [SYSTEM, "user: say and assistant: system:"] + NAMES + [str(d) for d in range(10)]
    return train_bpe(iter(texts * 10), 300, show_progress=False)


CONVERSATION = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "say 7"},
                {"role": "assistant", "content": "seven"}, {"role": "user", "content": "and 21?"},
                {"role": "assistant", "content": "two one, I think"}]


def test_loss_counts_exactly_the_assistant_tokens():
    tokenizer = toy_tokenizer()
    eos = tokenizer.backend.id_to_token(tokenizer.eos_id)
    # The conversation as the default template renders it, piece by piece: which pieces are the assistant's.
    pieces = [(f"system: {SYSTEM}{eos}\nuser: say 7{eos}\nassistant:", False), (f" seven{eos}", True),
              (f"\nuser: and 21?{eos}\nassistant:", False), (f" two one, I think{eos}", True)]
    ids, expected = [], []
    for text, is_reply in pieces:
        piece = tokenizer.encode(text)
        ids += piece
        expected += piece if is_reply else [IGNORE] * len(piece)
    feature = ChatTask().encode([{"messages": CONVERSATION}], tokenizer, 512)[0]
    assert feature["ids"] == ids and feature["labels"] == expected
    assert sum(label != IGNORE for label in expected) == len(tokenizer.encode(f" seven{eos}")) + len(
        tokenizer.encode(f" two one, I think{eos}"))

    torch.manual_seed(0)
    model = build_model(preset("tiny", vocab_size=tokenizer.vocab_size, n_layers=1, d_model=32, n_heads=2, d_ff=64,
                               max_seq_len=128, dropout=0.0))
    task = ChatTask()
    batch = task.collate([feature], 0)
    logits = model(batch["input_ids"]).logits[0]
    per_token = F.cross_entropy(logits[:-1], batch["input_ids"][0, 1:], reduction="none")
    counted = torch.tensor(expected[1:]) != IGNORE  # position t predicts token t + 1
    assert torch.allclose(task.loss(model, batch), per_token[counted].mean(), atol=1e-6)
    assert not torch.allclose(per_token[counted].mean(), per_token.mean())  # the check can tell the two apart


def test_packing_keeps_every_token_and_label():
    tokenizer = toy_tokenizer()
    rng = random.Random(0)
    examples = [toy_conversation(rng) for _ in range(12)]
    plain = ChatTask().encode(examples, tokenizer, 128)
    packed = ChatTask({"pack": True}).encode(examples, tokenizer, 128)
    assert len(packed) < len(plain) and all(len(row["ids"]) <= 128 for row in packed)
    assert sum((row["ids"] for row in packed), []) == sum((f["ids"] for f in plain), [])
    assert sum((row["labels"] for row in packed), []) == sum((f["labels"] for f in plain), [])
    assert pack([{"ids": [1] * 40, "labels": [1] * 40}] * 2, 64) == [{"ids": [1] * 40, "labels": [1] * 40}] * 2


def test_reader_refuses_bad_conversations(tmp_path):
    task = ChatTask()
    cases = {"no_messages.jsonl": [{"text": "hi"}],
             "bad_role.jsonl": [{"messages": [{"role": "bot", "content": "hi"}]}],
             "no_reply.jsonl": [{"messages": [{"role": "user", "content": "hi"}]}]}
    for name, rows in cases.items():
        write_jsonl(tmp_path / name, rows)
        with pytest.raises(DataError):
            task.read(str(tmp_path / name))
    assert task.read(str(tmp_path / "no_reply.jsonl"), labelled=False)[0]["messages"][0]["content"] == "hi"
    done = run_cli("finetune", "--task", "chat", "--model", tmp_path, "--train", tmp_path / "bad_role.jsonl",
                   "--out", tmp_path / "out")
    assert done.returncode != 0 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A tiny GPT fine-tuned on the toy chat through the CLI, and its data files."""
    folder = tmp_path_factory.mktemp("chat")
    rng = random.Random(1)
    write_jsonl(folder / "train.jsonl", [toy_conversation(rng) for _ in range(600)])
    write_jsonl(folder / "dev.jsonl", [toy_conversation(rng) for _ in range(40)])
    tokenizer = toy_tokenizer()
    torch.manual_seed(0)
    model = build_model(preset("tiny", vocab_size=tokenizer.vocab_size, n_layers=2, d_model=64, n_heads=4, d_ff=128,
                               max_seq_len=96, dropout=0.0))
    model.tokenizer = tokenizer
    stratalm.save(model, str(folder / "base"))
    done = run_cli("finetune", "--task", "chat", "--model", folder / "base", "--train", folder / "train.jsonl",
                   "--dev", folder / "dev.jsonl", "--out", folder / "out", "--max-steps", "200", "--batch-size", "16",
                   "--lr", "1e-2", "--warmup", "0.05", "--eval-every", "200", "--max-new-tokens", "4", "--pack", "--quiet")
    assert done.returncode == 0, done.stderr
    return folder


def test_tiny_gpt_learns_a_toy_chat(chat_model):
    scores = json.loads(run_cli("evaluate", "--model", chat_model / "out", "--data", chat_model / "dev.jsonl").stdout)
    assert scores["exact_match"] >= 0.9, scores
    record = json.loads((chat_model / "out" / "task.json").read_text())
    assert record["options"]["pack"] is True and record["state"]["chat_template"] == DEFAULT_CHAT_TEMPLATE


def assert_transformers_renders_as_stratalm(folder, stratalm_folder) -> None:
    """AutoTokenizer(folder).apply_chat_template gives the string and ids that stratalm renders
    with the chat model in `stratalm_folder`, with and without a generation prompt."""
    from transformers import AutoTokenizer

    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["chat_template"] == DEFAULT_CHAT_TEMPLATE
    hf = AutoTokenizer.from_pretrained(str(folder))
    tokenizer = stratalm.load(str(stratalm_folder)).tokenizer
    renderer = ChatRenderer(DEFAULT_CHAT_TEMPLATE, tokenizer)
    for messages, prompt in [(CONVERSATION, False), (CONVERSATION[:4], True), (CONVERSATION[1:2], True)]:
        ours = renderer.render(messages, add_generation_prompt=prompt)
        assert hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt) == ours
        ids = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=prompt, return_dict=False)
        assert list(ids) == tokenizer.encode(ours)


def test_stored_template_renders_in_transformers_as_in_stratalm(chat_model):
    assert_transformers_renders_as_stratalm(chat_model / "out", chat_model / "out")


def test_hf_export_keeps_the_chat_template(chat_model):
    """`stratalm convert` to the Hugging Face format carries the fine-tuned model's template."""
    export = chat_model / "hf"
    done = run_cli("convert", chat_model / "out", export, "--to", "hf")
    assert done.returncode == 0, done.stderr
    assert stratalm.load(str(chat_model / "out")).chat_template == DEFAULT_CHAT_TEMPLATE
    assert_transformers_renders_as_stratalm(export, chat_model / "out")
    assert stratalm.load(str(chat_model / "base")).chat_template is None  # a plain model exports none


def test_a_chat_model_converted_to_hf_and_back_keeps_its_template(chat_model):
    """stratalm -> Hugging Face -> stratalm: the folder that comes back has the template, and
    `stratalm chat` on it answers as the fine-tuned model does."""
    assert run_cli("convert", chat_model / "out", chat_model / "hf_again", "--to", "hf").returncode == 0
    done = run_cli("convert", chat_model / "hf_again", chat_model / "back", "--to", "stratalm")
    assert done.returncode == 0, done.stderr
    assert stratalm.load(str(chat_model / "back")).chat_template == DEFAULT_CHAT_TEMPLATE
    assert_transformers_renders_as_stratalm(chat_model / "back", chat_model / "back")
    command = [sys.executable, "-m", "stratalm", "chat", str(chat_model / "back"), "--system", SYSTEM,
               "--temperature", "0", "--max-new-tokens", "4"]
    done = subprocess.run(command, input="say 4\nand 8?\n", capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and "no chat template" not in done.stderr, done.stderr
    assert done.stdout.splitlines() == ["four", "eight"]


def test_chat_command_answers_piped_turns(chat_model):
    """Turns read from a pipe; the second answer needs the second question only, but the whole
    history is rendered (as in training), and --system opens the conversation."""
    command = [sys.executable, "-m", "stratalm", "chat", str(chat_model / "out"), "--system", SYSTEM,
               "--temperature", "0", "--max-new-tokens", "4"]
    done = subprocess.run(command, input="say 4\nand 8?\n/reset\nsay 2\n", capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["four", "eight", "two"]
    bad = subprocess.run(command[:5] + ["--temperature", "-1"], input="", capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0 and bad.stderr.startswith("error: --temperature")
