"""The playground page at / in headless Chromium: it lists the server's models, streams a
completion into the page token by token, and shows each token's probability on hover. Chromium is
driven over its DevTools pipe (--remote-debugging-pipe: NUL-separated JSON on fds 3 and 4), because
`--dump-dom` takes its snapshot before a stream has finished. The screenshot goes to
docs/serve_playground.png when STRATALM_SCREENSHOT=1."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from test_serve import KEY, Server, make_models  # noqa: E402  (one way to build the models and start a server)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "serve_playground.png"


class DevTools:
    def __init__(self, profile: str) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        os.set_inheritable(to_browser_r, True)
        os.set_inheritable(from_browser_w, True)
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
               "--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}", "about:blank"]
        # Chromium reads commands on fd 3 and writes answers on fd 4
        self.proc = subprocess.Popen(cmd, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=lambda: (os.dup2(to_browser_r, 3), os.dup2(from_browser_w, 4)))
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.next_id, self.buffer, self.session = 0, b"", None
        page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]

    def call(self, method: str, **params):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self.buffer:
                self.buffer += os.read(self._from_browser, 1 << 16)
            raw, self.buffer = self.buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise RuntimeError(answer["error"])
                return answer["result"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (OSError, RuntimeError):
            pass
        self.proc.wait(timeout=20)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (apt-get install chromium)")
def test_the_playground_streams_a_completion_into_the_page(tmp_path):
    server = Server(make_models(tmp_path), "--api-key", KEY)
    browser = None
    try:
        browser = DevTools(str(tmp_path / "profile"))
        browser.call("Emulation.setDeviceMetricsOverride", width=1100, height=620, deviceScaleFactor=1, mobile=False)
        browser.call("Page.navigate", url=f"{server.url}/?key={KEY}&prompt=Once%20upon%20a%20time&max_tokens=60"
                                          "&temperature=0.8&seed=5&autorun")
        deadline, status = time.time() + 30, ""
        while time.time() < deadline and "tokens in" not in (status or ""):
            time.sleep(0.2)
            status = browser.evaluate("document.getElementById('status').textContent")
        assert "tokens in" in status, status
        models = browser.evaluate("[...document.querySelectorAll('#model option')].map(o => o.value)")
        assert models == ["dec", "chat", "t5"]  # decoders and T5; the encoder cannot complete text
        n_tokens = int(status.split()[0])
        spans = browser.evaluate("document.querySelectorAll('#output .tok').length")
        text = browser.evaluate("document.getElementById('output').textContent")
        assert text.startswith("Once upon a time") and spans == n_tokens > 0  # one hoverable span per token
        browser.evaluate("document.querySelectorAll('#output .tok')[3].dispatchEvent(new MouseEvent('mousemove', "
                         "{clientX: 300, clientY: 260, bubbles: true}))")
        tip = browser.evaluate("document.getElementById('tip').textContent")
        assert "p=" in tip and len(tip.splitlines()) == 6  # the token and its 5 most likely alternatives
        browser.evaluate("document.getElementById('lens-go').click()")
        deadline = time.time() + 30
        while time.time() < deadline and not (status or "").startswith("lens:"):
            time.sleep(0.2)
            status = browser.evaluate("document.getElementById('status').textContent")
        assert status.startswith("lens: 3 depths"), status  # embeddings and the two blocks
        cells = browser.evaluate("[...document.querySelectorAll('#lens tr')].map(r => r.cells.length)")
        assert len(cells) == 4 and len(set(cells)) == 1 and cells[0] > len("Once upon a time")  # a column per token
        browser.evaluate("document.querySelectorAll('#lens td')[2].dispatchEvent(new MouseEvent('mousemove', "
                         "{clientX: 300, clientY: 400, bubbles: true}))")
        assert "KL(final || here)" in browser.evaluate("document.getElementById('tip').textContent")
        if os.environ.get("STRATALM_SCREENSHOT"):
            png = browser.call("Page.captureScreenshot", format="png")["data"]
            SCREENSHOT.write_bytes(base64.b64decode(png))
    finally:
        if browser is not None:
            browser.close()
        server.stop()
