"""`stratalm serve` conformance: the real server, started as a subprocess on a free loopback port with
tiny random models (a decoder, the same decoder with a chat template, a BERT encoder, a T5), driven
by the official `openai` client and by raw HTTP where the client would hide what is checked (the
SSE framing, the 401 without a key, malformed bodies). One server serves the whole module."""
from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

import stratalm
from stratalm.families import preset
from stratalm.models import CausalLM, EncoderDecoderModel, EncoderModel
from stratalm.tokenize import train_char

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

KEY = "test-key"
ALPHABET = "abcdefghijklmnopqrstuvwxyz .,\n<>|:"
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
MAX_QUEUE = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_models(root) -> dict[str, str]:
    torch.manual_seed(0)
    tok = train_char([ALPHABET])
    dec = CausalLM(preset("tiny", vocab_size=tok.vocab_size, max_seq_len=1024, n_layers=2, d_model=64)).eval()
    dec.tokenizer = tok
    enc = EncoderModel(preset("bert", vocab_size=tok.vocab_size, n_layers=1, d_model=32, n_heads=2, d_ff=64)).eval()
    enc.tokenizer = tok
    t5 = EncoderDecoderModel(preset("t5", vocab_size=tok.vocab_size, n_layers=1, d_model=32, n_heads=2,
                                    d_ff=64)).eval()
    t5.tokenizer = tok
    folders = {name: str(root / name) for name in ("dec", "chat", "enc", "t5")}
    for name, model in (("dec", dec), ("chat", dec), ("enc", enc), ("t5", t5)):
        stratalm.save(model, folders[name])
    with open(os.path.join(folders["chat"], "tokenizer_config.json"), "w") as handle:
        json.dump({"chat_template": TEMPLATE}, handle)
    return folders


class Server:
    def __init__(self, folders: dict[str, str], *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "stratalm", "serve", *folders.values(), "--port",
                                      str(self.port), "--device", "cpu", *flags],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.proc.stdout.read()}")
            try:
                urllib.request.urlopen(self.url + "/health", timeout=1)
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("the server did not answer /health within 90 s")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def raw(self, path: str, body=None, key: str = KEY, method=None) -> tuple[int, dict | str]:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            status, text = err.code, err.read().decode()
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return make_models(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(folders):
    s = Server(folders, "--api-key", KEY, "--max-queue", str(MAX_QUEUE), "--max-concurrency", "4")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def metric(server, name: str, model: str = "dec") -> float:
    _, text = server.raw("/metrics")
    found = re.search(rf'^{name}{{model="{model}"}} ([0-9.e+]+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


# -- models, health, metrics, tokenize ------------------------------------------------------------
def test_models_list_every_model_with_its_fingerprint(server, client, folders):
    import hashlib

    cards = {m.id: m for m in client.models.list().data}
    assert set(cards) == {"dec", "chat", "enc", "t5"}
    digest = hashlib.sha256()
    for name in ("model.safetensors", "tokenizer.json"):
        digest.update(name.encode())
        digest.update(open(os.path.join(folders["dec"], name), "rb").read())
    assert cards["dec"].fingerprint == {"step": None, "sha256": digest.hexdigest()}
    assert cards["dec"].object == "model" and cards["dec"].owned_by == "stratalm"
    assert (cards["enc"].kind, cards["t5"].kind) == ("encoder", "encoder-decoder")
    assert server.raw("/health", key="") == (200, {"status": "ok", "models": ["dec", "chat", "enc", "t5"]})


def test_tokenize_and_detokenize_round_trip(server):
    status, body = server.raw("/tokenize", {"model": "dec", "prompt": "hello world"})
    assert status == 200 and body["count"] == len(body["tokens"]) == 11 and body["max_model_len"] == 1024
    assert server.raw("/detokenize", {"model": "dec", "tokens": body["tokens"]}) == (200, {"prompt": "hello world"})
    status, chat = server.raw("/tokenize", {"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and chat["count"] == len("<|user|>hi\n<|assistant|>")


def test_lens_reads_every_layer_of_every_family(server, folders):
    from stratalm.lens.logit_lens import logit_lens
    from stratalm.lens.trace import text_inputs

    status, body = server.raw("/lens", {"model": "dec", "prompt": "hello", "top": 3})
    assert status == 200 and body["tokens"] == list("hello")
    assert body["depths"] == ["embeddings", "block 0", "block 1"] and len(body["kl"]) == 3
    assert all(len(row) == 5 and all(len(cands) == 3 for cands in row) for row in body["top"])
    model = stratalm.load(folders["dec"])
    expected = logit_lens(model, text_inputs(model, "hello"), k=3)  # what `stratalm lens` computes
    assert [p for _, p in body["top"][-1][0]] == pytest.approx(expected["top_probs"][-1, 0].tolist(), abs=1e-4)
    assert body["kl"][-1] == pytest.approx([0.0] * 5, abs=1e-4)  # the last depth is the model's own output
    for name in ("enc", "t5"):  # the MLM head; T5's decoder
        status, body = server.raw("/lens", {"model": name, "prompt": "hi"})
        assert status == 200 and len(body["depths"]) == 2 and len(body["top"][0]) == len(body["tokens"]), body
    status, body = server.raw("/lens", {"model": "dec", "prompt": "x" * 2000})
    assert status == 400 and "context" in body["error"]["message"]
    status, body = server.raw("/lens", {"model": "dec", "prompt": "hi", "top": 50})
    assert status == 400 and body["error"]["param"] == "top"


# -- completions ----------------------------------------------------------------------------------
def test_greedy_over_http_equals_stratalm_generate(client, folders, capsys):
    from stratalm.cli import main

    prompt = "the cat sat"
    answer = client.completions.create(model="dec", prompt=prompt, max_tokens=40, temperature=0)
    capsys.readouterr()
    assert main(["generate", folders["dec"], "--prompt", prompt, "--max-new-tokens", "40", "--temperature", "0",
                 "--no-echo", "--device", "cpu"]) == 0
    assert answer.choices[0].text + "\n" == capsys.readouterr().out
    assert answer.usage.prompt_tokens == len(prompt) and answer.usage.completion_tokens == 40


def test_temperature_zero_is_greedy_and_a_seed_reproduces(client):
    greedy = {client.completions.create(model="dec", prompt="ab", max_tokens=20, temperature=0).choices[0].text
              for _ in range(2)}
    assert len(greedy) == 1
    sample = lambda seed: client.completions.create(model="dec", prompt="ab", max_tokens=30, temperature=1.0,  # noqa: E731
                                                    seed=seed).choices[0].text
    assert sample(7) == sample(7) != sample(8)
    assert sample(7) != greedy.pop()  # sampling really happened


def test_n_choices_logprobs_shape_and_usage(client):
    out = client.completions.create(model="dec", prompt="abc", max_tokens=12, temperature=1.0, seed=3, n=3,
                                    logprobs=3)
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert len({c.text for c in out.choices}) > 1  # each choice has its own draw
    total = 0
    for c in out.choices:
        lp = c.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
        assert all(len(top) == 3 and max(top.values()) >= chosen - 1e-6 for top, chosen in
                   zip(lp.top_logprobs, lp.token_logprobs))
        assert all(v <= 0 for v in lp.token_logprobs)
        total += len(lp.tokens) if c.finish_reason == "length" else len(lp.tokens)
    assert out.usage.completion_tokens == total and out.usage.prompt_tokens == 3
    assert out.usage.total_tokens == total + 3


def test_echo_returns_the_prompt_with_its_logprobs(client):
    out = client.completions.create(model="dec", prompt="abc", max_tokens=5, temperature=0, echo=True, logprobs=1)
    c = out.choices[0]
    assert c.text.startswith("abc") and len(c.text) == 8
    assert c.logprobs.tokens[:3] == ["a", "b", "c"] and c.logprobs.token_logprobs[0] is None
    assert len(c.logprobs.tokens) == 8 and c.logprobs.text_offset == list(range(8))
    plain = client.completions.create(model="dec", prompt="abc", max_tokens=5, temperature=0)
    assert c.text == "abc" + plain.choices[0].text


def test_stop_strings_cut_the_text_before_them(client):
    seed, text = next((seed, c.text) for seed in range(10, 40) for c in client.completions.create(
        model="dec", prompt="a", max_tokens=40, seed=seed).choices if c.finish_reason == "length")
    stop = next(text[k:k + 2] for k in range(3, len(text) - 2) if text.find(text[k:k + 2]) >= 3)
    out = client.completions.create(model="dec", prompt="a", max_tokens=40, seed=seed, stop=[stop, "zzzz"])
    assert out.choices[0].text == text[:text.find(stop)] and out.choices[0].finish_reason == "stop"
    streamed = "".join(ch.choices[0].text for ch in client.completions.create(
        model="dec", prompt="a", max_tokens=40, seed=seed, stop=stop, stream=True) if ch.choices)
    assert streamed == out.choices[0].text


def test_streaming_chunks_usage_and_done(server, client):
    chunks = list(client.completions.create(model="dec", prompt="abc", max_tokens=10, temperature=0, logprobs=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert len({ch.id for ch in chunks}) == 1 and all(ch.object == "text_completion" for ch in chunks)
    *body, last = chunks
    assert last.choices == [] and last.usage.completion_tokens == 10 and last.usage.prompt_tokens == 3
    assert all(ch.usage is None for ch in body)
    assert sum(len(ch.choices[0].logprobs.tokens) for ch in body if ch.choices[0].logprobs) == 10
    assert body[-1].choices[0].finish_reason == "length"
    whole = client.completions.create(model="dec", prompt="abc", max_tokens=10, temperature=0).choices[0].text
    assert "".join(ch.choices[0].text for ch in body) == whole
    # the wire format itself: SSE data lines ending with [DONE]
    status, text = server.raw("/v1/completions", {"model": "dec", "prompt": "abc", "max_tokens": 3, "stream": True})
    events = [line for line in text.split("\n\n") if line]
    assert status == 200 and all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_t5_completes_text_to_text(client, folders):
    from stratalm.generate import greedy_search

    model = stratalm.load(folders["t5"])
    tok = model.tokenizer
    out = client.completions.create(model="t5", prompt="translate: abc", max_tokens=8, temperature=0)
    source = tok.encode("translate: abc") + [tok.eos_id]
    best = greedy_search(model, [source], 8, tok.eos_id)[0]
    assert out.choices[0].text == tok.decode(best.tokens) and out.usage.completion_tokens == len(best.tokens)


# -- chat -----------------------------------------------------------------------------------------
def test_chat_uses_the_models_template(client):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    out = client.chat.completions.create(model="chat", messages=messages, max_completion_tokens=15, temperature=0,
                                         logprobs=True, top_logprobs=2)
    rendered = "<|system|>be brief\n<|user|>hi\n<|assistant|>"
    same = client.completions.create(model="dec", prompt=rendered, max_tokens=15, temperature=0)
    c = out.choices[0]
    assert out.object == "chat.completion" and c.message.role == "assistant"
    assert c.message.content == same.choices[0].text
    assert out.usage.prompt_tokens == len(rendered) and out.usage.completion_tokens == len(c.logprobs.content) == 15
    assert all(len(e.top_logprobs) == 2 and e.bytes == list(e.token.encode()) for e in c.logprobs.content)


def test_chat_streams_deltas(client):
    chunks = list(client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=8, temperature=0, stream=True, n=2,
                                                 stream_options={"include_usage": True}))
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    firsts = {}
    for ch in chunks[:-1]:
        firsts.setdefault(ch.choices[0].index, ch.choices[0].delta)
    assert set(firsts) == {0, 1} and all(d.role == "assistant" for d in firsts.values())
    assert chunks[-1].usage.completion_tokens == 16


def test_a_model_without_template_refuses_chat(client):
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        client.chat.completions.create(model="dec", messages=[{"role": "user", "content": "hi"}])


# -- embeddings -----------------------------------------------------------------------------------
def test_embeddings_equal_stratalm_embed_in_float_and_base64(server, client, folders):
    from stratalm.embed import encode

    texts = ["a cat", "the mat is warm"]
    floats = client.embeddings.create(model="enc", input=texts, encoding_format="float")
    mine = encode(stratalm.load(folders["enc"]), texts).numpy()
    got = np.array([d.embedding for d in floats.data])
    assert got.shape == (2, 32) and np.abs(got - mine).max() < 1e-5
    # base64 over raw HTTP: the client would decode it without showing the wire format
    status, body = server.raw("/v1/embeddings", {"model": "enc", "input": texts, "encoding_format": "base64"})
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in body["data"]])
    assert status == 200 and np.abs(decoded - mine).max() < 1e-5
    tok = stratalm.load(folders["enc"]).tokenizer
    by_ids = client.embeddings.create(model="enc", input=[tok.encode(texts[0], add_special_tokens=True)])
    assert np.abs(np.array(by_ids.data[0].embedding) - mine[0]).max() < 1e-5
    assert floats.usage.prompt_tokens == sum(len(tok.encode(t, add_special_tokens=True)) for t in texts)


# -- the error contract ---------------------------------------------------------------------------
def assert_error(status_body, status: int, param=None, words: str = "") -> None:
    status_got, body = status_body
    assert status_got == status, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == param and words in body["error"]["message"]


def test_client_errors_are_400_with_the_openai_body(server):
    post = lambda body, path="/v1/completions": server.raw(path, body)  # noqa: E731
    assert_error(post({"model": "nope", "prompt": "a"}), 400, "model", "unknown model 'nope'")
    assert_error(post({"model": "dec", "prompt": "a", "temperature": "hot"}), 400, "temperature")
    assert_error(post({"model": "dec", "prompt": "a", "suffix": "z"}), 400, "suffix", "not supported")
    assert_error(post({"model": "dec", "prompt": "a", "logit_bias": {}}), 400, "logit_bias", "not supported")
    assert_error(post({"model": "dec", "prompt": "a", "stop": ["a", "b", "c", "d", "e"]}), 400, "stop", "at most 4")
    assert_error(post({"model": "dec", "prompt": "a", "n": 0}), 400, "n")
    assert_error(post({"model": "dec", "prompt": "a" * 1000, "max_tokens": 100}), 400, "prompt",
                 "the prompt has 1000 tokens and max_tokens asks for 100 more")
    assert_error(post(b"{not json"), 400, None, "not valid JSON")
    assert_error(post({"model": "dec"}), 400, "prompt", "required")
    assert_error(post({"model": "enc", "prompt": "a"}), 400, "model", "encoder")
    assert_error(post({"model": "chat", "messages": [{"role": "robot", "content": "x"}]}, "/v1/chat/completions"),
                 400, "messages[0].role")
    assert_error(post({"model": "chat", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 30},
                      "/v1/chat/completions"), 400, "top_logprobs")
    assert_error(post({"model": "dec", "input": "x"}, "/v1/embeddings"), 400, "model", "encoder")
    assert_error(post({"model": "enc", "input": "x", "dimensions": 8}, "/v1/embeddings"), 400, "dimensions")


def test_the_client_sees_bad_request_errors(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="dec", prompt="abc", max_tokens=2000)
    assert err.value.status_code == 400 and "1024 tokens" in err.value.message and "3 tokens" in err.value.message
    assert err.value.body["code"] == "context_length_exceeded"


def test_the_api_key_is_required(server):
    assert_error(server.raw("/v1/models", key=""), 401, None, "API key")
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_a_full_queue_answers_429(client):
    with pytest.raises(openai.RateLimitError) as err:  # more sequences than the queue holds, at once
        client.completions.create(model="dec", prompt="a", max_tokens=2, n=MAX_QUEUE + 1)
    assert err.value.status_code == 429 and err.value.body["code"] == "queue_full"


# -- the engine -----------------------------------------------------------------------------------
def test_a_new_request_joins_the_running_batch(server, client):
    def long_stream(out: list):
        for ch in client.completions.create(model="dec", prompt="a", max_tokens=900, temperature=0, stream=True):
            if ch.choices and ch.choices[0].finish_reason:
                out.append(time.monotonic())

    done: list = []
    alone = client.completions.create(model="dec", prompt="xyz", max_tokens=20, temperature=0).choices[0].text
    thread = threading.Thread(target=long_stream, args=(done,))
    thread.start()
    time.sleep(0.3)
    joined = client.completions.create(model="dec", prompt="xyz", max_tokens=20, temperature=0)
    joined_at = time.monotonic()
    thread.join()
    assert done and joined_at < done[0]  # it finished while the long one still ran: it did not wait for it
    assert joined.choices[0].text == alone  # greedy in a batch of 2 gives the tokens it gives alone
    _, text = server.raw("/metrics")
    ones = float(re.search(r'stratalm_decode_batch_size_bucket{le="1.0",model="dec"} ([0-9.e+]+)', text).group(1))
    twos = float(re.search(r'stratalm_decode_batch_size_bucket{le="2.0",model="dec"} ([0-9.e+]+)', text).group(1))
    assert twos - ones >= 15  # about 19 steps fed both sequences at once


def test_a_client_that_disconnects_is_cancelled(server):
    cancelled = metric(server, "stratalm_cancelled_sequences_total")
    # greedy: a sampled sequence of a random model may reach its end-of-text token before the
    # client goes away, and would then finish instead of being cancelled
    body = json.dumps({"model": "dec", "prompt": "a", "max_tokens": 1000, "stream": True, "temperature": 0}).encode()
    # a bare socket, so the test decides exactly when the connection closes
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: " + str(len(body)).encode() +
                 b"\r\n\r\n" + body)
    received = b""
    while b"data: " not in received:  # the headers, then the first event: the sequence is decoding
        received += sock.recv(65536)
    tokens = metric(server, "stratalm_generated_tokens_total")
    sock.close()  # the client goes away
    deadline = time.time() + 10
    while metric(server, "stratalm_cancelled_sequences_total") == cancelled and time.time() < deadline:
        time.sleep(0.05)
    assert metric(server, "stratalm_cancelled_sequences_total") == cancelled + 1
    after = metric(server, "stratalm_generated_tokens_total")
    time.sleep(0.3)
    assert metric(server, "stratalm_generated_tokens_total") == after  # nothing decodes any more
    assert after - tokens < 500  # it stopped long before its 1000 tokens
    assert metric(server, "stratalm_running_sequences") == 0
