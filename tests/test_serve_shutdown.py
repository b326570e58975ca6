"""The server's limits in time: a request past --timeout is cancelled and answered 408 (with the
OpenAI error body), and SIGTERM lets a running stream finish cleanly before the process exits."""
from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest

pytest.importorskip("fastapi")
from test_serve import Server, assert_error, make_models, metric  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(make_models(tmp_path_factory.mktemp("limits")), "--timeout", "0.2", "--max-concurrency", "2")
    yield s
    s.stop()


def test_a_request_past_the_timeout_is_408_and_cancelled(server):
    started = time.monotonic()
    assert_error(server.raw("/v1/completions", {"model": "dec", "prompt": "a", "max_tokens": 1000, "n": 4}, key=""),
                 408, None, "limit of 0.2 s")
    assert time.monotonic() - started < 5
    deadline = time.time() + 5
    while metric(server, "stratalm_running_sequences") and time.time() < deadline:
        time.sleep(0.05)
    assert metric(server, "stratalm_running_sequences") == 0 and metric(server, "stratalm_cancelled_sequences_total") >= 1


def test_sigterm_lets_a_running_stream_finish(tmp_path):
    # A server of its own: this test ends it, and the 0.2 s limit above would cut a stream short on a busy machine.
    server = Server(make_models(tmp_path), "--max-concurrency", "2")
    try:
        body = json.dumps({"model": "dec", "prompt": "a", "max_tokens": 20, "temperature": 0, "stream": True}).encode()
        request = urllib.request.Request(server.url + "/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        response = urllib.request.urlopen(request, timeout=30)
        first = response.readline()
        assert first.startswith(b"data: ")
        threading.Thread(target=server.proc.terminate).start()  # SIGTERM while the stream runs
        rest = response.read().decode()
        assert rest.rstrip().endswith("data: [DONE]") and '"finish_reason": "length"' in rest
        # uvicorn shuts down cleanly, then re-raises the signal it caught, so the status says SIGTERM
        assert server.proc.wait(timeout=20) in (0, -15)
        assert "Traceback" not in server.proc.stdout.read()
    finally:
        server.stop()
