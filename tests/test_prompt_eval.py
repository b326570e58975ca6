"""`stratalm prompt-eval`: log-likelihoods equal lm-evaluation-harness's rule computed with
`transformers` (decoders, T5) and a masked-LM's pseudo-log-likelihood (encoders); task files,
few-shot prompts, calibration, generation and the command."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import stratalm
from conftest import pydoc_texts, shared_file
from stratalm.cli import main
from stratalm.errors import ConfigError, DataError, StratalmError
from stratalm.families import preset
from stratalm.models import build_model
from stratalm.prompting import (cloze_loglikelihood, decoder_loglikelihood, encode_pair, evaluate_task, load_task,
                                seq2seq_loglikelihood, task_names)
from stratalm.prompting.calibration import calibrated_predictions, content_free_bias
from stratalm.prompting.prompts import Prompts
from stratalm.prompting.tasks import read_split
from stratalm.tokenize import train_bpe

transformers = pytest.importorskip("transformers")

PAIRS = [("The for statement is used to", " iterate"),  # plain
         ("Answer: ", "yes"),  # trailing space moves onto the continuation
         ("The for stat", "ement"),  # a BPE merge across the boundary
         ("", "The while statement"),  # empty context: the end-of-text token stands for it
         ("word " * 300, "and then"),  # longer than the context: its first tokens are dropped
         ("x = 1\n", "    return x")]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(iter(pydoc_texts(6)), vocab_size=400, show_progress=False)


def exported(tmp_path_factory, name: str, tokenizer, **config):
    torch.manual_seed(0)
    model = build_model(preset(name, vocab_size=tokenizer.vocab_size, **config))
    model.tokenizer = tokenizer
    folder = tmp_path_factory.mktemp(name) / "hf"
    stratalm.save(model.eval(), str(folder), format="hf")
    return folder


@pytest.fixture(scope="module")
def gpt(tmp_path_factory, tokenizer):
    return exported(tmp_path_factory, "tiny", tokenizer, n_layers=2, d_model=64, n_heads=4, max_seq_len=256)


def harness_reference(hf, fast, context: str, continuation: str) -> tuple[float, bool]:
    """lm-evaluation-harness's _encode_pair and _loglikelihood_tokens, one pair at a time."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if context:
        encode = lambda text: fast.encode(text, add_special_tokens=False)  # noqa: E731  (the harness's causal tok_encode)
        whole, context_ids = encode(context + continuation), encode(context)
        continuation_ids = whole[len(context_ids):]
    else:
        prefix = fast.bos_token_id if fast.bos_token_id is not None else fast.eos_token_id  # the harness's prefix token
        context_ids, continuation_ids = [prefix], fast.encode(continuation, add_special_tokens=False)
    window = (context_ids + continuation_ids)[-(hf.config.n_positions + 1):][:-1]
    with torch.no_grad():
        logp = torch.log_softmax(hf(torch.tensor([window])).logits[0], dim=-1)[-len(continuation_ids):]
    targets = torch.tensor(continuation_ids)
    return float(logp.gather(1, targets[:, None]).sum()), bool((logp.argmax(-1) == targets).all())


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_decoder_loglikelihoods_equal_the_harness_rule_on_transformers(architecture, gpt, tokenizer, tmp_path_factory):
    folder = gpt if architecture == "gpt2" else exported(
        tmp_path_factory, "llama-tiny", tokenizer, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_ff=96, max_seq_len=64)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    if architecture == "llama":
        hf.config.n_positions = hf.config.max_position_embeddings
    fast = transformers.AutoTokenizer.from_pretrained(folder)  # what the harness loads
    assert fast.bos_token_id == tokenizer.bos_id
    ours = stratalm.load(str(folder))
    context, continuation = encode_pair(ours.tokenizer, "Answer: ", "yes")
    assert tokenizer.decode(context) == "Answer:" and tokenizer.decode(continuation) == " yes"
    scores = decoder_loglikelihood(ours, PAIRS, batch_size=4)  # batched with left padding
    worst = 0.0
    for (context, continuation), score in zip(PAIRS, scores):
        logprob, greedy = harness_reference(hf, fast, context, continuation)
        worst = max(worst, abs(score.logprob - logprob) / abs(logprob))
        assert score.greedy == greedy
    assert worst <= 1e-5


def test_t5_scores_each_choice_as_its_target(tokenizer, tmp_path_factory):
    folder = exported(tmp_path_factory, "t5", tokenizer, n_layers=2, d_model=64, n_heads=4, d_ff=96,
                      pad_token_id=tokenizer.pad_id, decoder_start_token_id=tokenizer.pad_id)
    hf = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
    ours = stratalm.load(str(folder))
    pairs = [("Review: a charming film\nSentiment:", " positive"), ("Answer: ", "no"), ("short", " a longer target text")]
    scores = seq2seq_loglikelihood(ours, pairs, batch_size=2)
    eos = tokenizer.eos_id
    for (context, continuation), score in zip(pairs, scores):
        if context != context.rstrip():
            context, continuation = context.rstrip(), context[len(context.rstrip()):] + continuation
        labels = torch.tensor([tokenizer.encode(continuation) + [eos]])
        with torch.no_grad():
            loss = hf(input_ids=torch.tensor([tokenizer.encode(context) + [eos]]), labels=labels).loss
        assert score.tokens == labels.shape[1]
        assert score.logprob == pytest.approx(-float(loss) * labels.shape[1], rel=1e-5)


def test_encoders_score_a_cloze_by_pseudo_log_likelihood(tokenizer, tmp_path_factory):
    folder = exported(tmp_path_factory, "bert", tokenizer, n_layers=2, d_model=64, n_heads=4, d_ff=96, max_seq_len=64)
    hf = transformers.BertForMaskedLM.from_pretrained(folder).eval()
    ours = stratalm.load(str(folder))
    items = [("The statement was ", "great", "."), ("It is ", "an iteration protocol", " for loops.")]
    scores = cloze_loglikelihood(ours, items)
    assert scores[1].tokens > 1  # a multi-token verbaliser
    for (left, answer, right), score in zip(items, scores):
        encoding = tokenizer.backend.encode(left + answer + right)
        ids = [tokenizer.cls_id] + encoding.ids + [tokenizer.sep_id]
        slot = [i + 1 for i, (a, b) in enumerate(encoding.offsets) if a < len(left) + len(answer) and b > len(left)]
        total = 0.0
        for position in slot:  # each answer token masked in turn
            masked = torch.tensor([ids])
            masked[0, position] = tokenizer.mask_id
            with torch.no_grad():
                logp = torch.log_softmax(hf(masked, token_type_ids=torch.zeros_like(masked)).logits[0, position], -1)
            total += float(logp[ids[position]])
        assert score.tokens == len(slot)
        assert score.logprob == pytest.approx(total, rel=1e-5)


def test_calibration_divides_out_the_content_free_bias():
    """A model that prefers choice 1 by e^2 whatever the input: calibration recovers the signal."""
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, 200)
    signal = np.where(gold[:, None] == np.arange(2)[None], 1.0, 0.0) + rng.normal(0, 0.3, (200, 2))
    biased = signal + np.array([0.0, 2.0])
    content_free = np.array([[0.0, 2.0], [0.1, 2.1], [0.0, 1.9]])
    assert (biased.argmax(1) == gold).mean() < 0.6
    bias = content_free_bias(content_free)
    assert bias[1] / bias[0] == pytest.approx(np.exp(2.0), rel=0.05)
    assert (calibrated_predictions(biased, bias) == gold).mean() > 0.9


# -- task files on the real data ----------------------------------------------------------------
def test_shipped_tasks_render_the_real_rows():
    assert task_names() == ["mrpc", "sst2", "tatoeba_en_fr"]
    sst2 = load_task("sst2", str(shared_file("sst2")))
    prompts = Prompts(sst2)
    doc = {"sentence": "a gem . ", "label": "1"}
    assert prompts.context(doc, [{"sentence": "dull", "label": "0"}]) == (
        "dull\nQuestion: Is this sentence positive or negative?\nAnswer: negative\n\n"
        "a gem . \nQuestion: Is this sentence positive or negative?\nAnswer:")
    assert prompts.cloze_parts(doc, []) == ("a gem .  It was ", ".") and prompts.gold(doc) == 1
    mrpc = load_task("mrpc", str(shared_file("mrpc")))
    first = read_split(mrpc, mrpc.test_split)[0]
    assert Prompts(mrpc).gold(first) == 1 and "Sentence 2: \"The foodservice pie" in Prompts(mrpc).text(first)
    tatoeba = load_task("tatoeba_en_fr", str(shared_file("tatoeba-eng-fra-5k")))
    test, pool = read_split(tatoeba, tatoeba.test_split), read_split(tatoeba, tatoeba.fewshot_split)
    assert (len(test), len(pool)) == (1000, 4000) and Prompts(tatoeba).target(test[0]) == test[0]["french"]


def test_few_shot_sst2_on_a_decoder(gpt):
    data = str(shared_file("sst2"))
    model = stratalm.load(str(gpt))
    first = evaluate_task(model, "sst2", shots=1, seed=7, data=data, limit=16, calibrate=True)
    again = evaluate_task(model, "sst2", shots=1, seed=7, data=data, limit=16, calibrate=True)
    other = evaluate_task(model, "sst2", shots=1, seed=8, data=data, limit=16, calibrate=True)
    assert first == again and first["n"] == 16 and first["scoring"] == "continuation"
    assert first["acc_stderr"] == pytest.approx(np.sqrt(first["acc"] * (1 - first["acc"]) / 15))
    assert sum(first["content_free_probabilities"]) == pytest.approx(1.0, abs=1e-5)
    assert other["content_free_probabilities"] != first["content_free_probabilities"]  # other demonstrations
    from stratalm.prompting.evaluate import draw_demonstrations

    spec = load_task("sst2", data)
    demos = draw_demonstrations(spec, 3, 7)
    assert demos == draw_demonstrations(spec, 3, 7) != draw_demonstrations(spec, 3, 8)
    train = {row["sentence"] for row in read_split(spec, spec.fewshot_split)}
    assert all(d["sentence"] in train for d in demos)


def test_generation_equals_stratalm_generate(gpt, tmp_path):
    """Batched greedy answers are the text `stratalm.generate` gives each prompt alone."""
    table = tmp_path / "pairs.tsv"
    table.write_text("en\tfr\nGo.\tVa !\nI see.\tJe vois.\nThe for statement\tL'instruction for\n"
                     "Hello.\tBonjour.\nRun!\tCours !\n", encoding="utf-8")
    spec_file = tmp_path / "translate.yaml"
    spec_file.write_text(f"task: tiny_translate\noutput_type: generate_until\ndata_dir: {tmp_path}\n"
                         "test_split: {file: pairs.tsv, rows: '2:'}\nfewshot_split: {file: pairs.tsv, rows: ':2'}\n"
                         "doc_to_text: 'English: {{en}}\\nFrench:'\ndoc_to_target: fr\n"
                         "generation_kwargs: {until: [';'], max_gen_toks: 12}\n")
    model = stratalm.load(str(gpt))
    result = evaluate_task(model, str(spec_file), shots=2, seed=0, batch_size=2)
    spec = load_task(str(spec_file))
    prompts, demos = Prompts(spec), read_split(spec, spec.fewshot_split)
    expected = [stratalm.generate(model, prompts.context(doc, demos), max_new_tokens=12, temperature=0, stop=[";"]).strip()
                for doc in read_split(spec, spec.test_split)]
    assert [e["prediction"] for e in result["examples"]] == expected
    assert result["n"] == 3 and {"bleu", "bleu_stderr", "chrf", "exact_match"} <= set(result)


def test_prompt_eval_command_and_its_errors(gpt, tmp_path, capsys):
    (tmp_path / "dev.tsv").write_text("text\tlabel\nfine work\tgood\nawful\tbad\nsplendid\tgood\n", encoding="utf-8")
    (tmp_path / "train.tsv").write_text("text\tlabel\nnice\tgood\nugly\tbad\n", encoding="utf-8")
    task = tmp_path / "mood.yaml"
    task.write_text("task: mood\noutput_type: multiple_choice\ntest_split: dev.tsv\nfewshot_split: train.tsv\n"
                    "doc_to_text: '{{text}} is'\ndoc_to_target: label\ndoc_to_choice: [bad, good]\n")
    assert main(["prompt-eval", str(gpt), "--task", str(task), "--task", str(task), "--data", str(tmp_path),
                 "--shots", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["n"] == 3 and json.loads(lines[0])["shots"] == 2

    (tmp_path / "typo.yaml").write_text(task.read_text() + "metric_lst: [acc]\n")
    for argv, message in [(["--task", str(tmp_path / "typo.yaml")], "unknown key 'metric_lst'.*did you mean metric_list"),
                          (["--task", str(task), "--data", str(tmp_path), "--shots", "3"], "more than the 2 rows"),
                          (["--task", str(task), "--data", str(tmp_path / "nowhere")], "does not exist; point --data"),
                          (["--task", "sst3"], "did you mean sst2")]:
        assert main(["prompt-eval", str(gpt), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and __import__("re").search(message, err), err
    bad_target = tmp_path / "dev2.tsv"
    bad_target.write_text("text\tlabel\nok\tneutral\n", encoding="utf-8")
    spec = load_task(str(task), str(tmp_path))
    spec.test_split.file = "dev2.tsv"
    with pytest.raises(DataError, match="neither the index nor the text"):
        evaluate_task(stratalm.load(str(gpt)), spec)
    with pytest.raises(ConfigError, match="calibration applies"):
        evaluate_task(stratalm.load(str(gpt)), "tatoeba_en_fr", calibrate=True)
    encoder = build_model(preset("bert", n_layers=1, d_model=32, n_heads=2, d_ff=64, vocab_size=64, max_seq_len=32))
    with pytest.raises(StratalmError, match="needs a decoder or an encoder-decoder"):
        from stratalm.prompting.evaluate import generate_answers

        generate_answers(encoder, ["x"], ["\n"], 4, 1)
