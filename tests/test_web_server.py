"""``semcache serve`` as a process: restart, SIGKILL, SIGTERM drain, no secrets at rest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

from tests.conftest import Fake, OnnxExport
from tests.servers import ROOT, SidecarProcess, free_port, wait_ready

SECRET = "sk-live-0123456789abcdefSECRET"


@pytest.fixture(autouse=True)
def _shared_export(onnx_export: OnnxExport, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sidecar processes run the default backend from the session's ONNX export instead
    of each exporting into its fresh data directory."""
    monkeypatch.setenv("SEMCACHE_EMBEDDING_CACHE_DIR", str(onnx_export.cache_dir))


def ask(url: str, text: str, key: str = SECRET) -> tuple[str, str]:
    c = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}])
    return raw.headers["x-semcache-status"], raw.parse().choices[0].message.content or ""


def wait_for_store(url: str, text: str) -> None:
    """Stores happen off the response path: poll until the entry answers."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        c = openai.OpenAI(base_url=url + "/v1", api_key=SECRET, max_retries=0)
        raw = c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": text}],
            extra_headers={"Cache-Control": "no-store"})
        if raw.headers["x-semcache-status"] == "hit":
            return
        time.sleep(0.05)
    raise TimeoutError("entry was not stored")


def test_entries_survive_sigterm_restart_and_sigkill(tmp_path: Path, fake: Fake) -> None:
    data = tmp_path / "data"
    first = SidecarProcess(fake.url, data)
    _, a1 = ask(first.url, "What is the capital of France?")
    wait_for_store(first.url, "What is the capital of France?")
    assert first.stop(signal.SIGTERM) == 0

    second = SidecarProcess(fake.url, data)
    assert ask(second.url, "What is the capital of France?") == ("hit", a1)
    _, a2 = ask(second.url, "How do I reverse a string in Python?")
    wait_for_store(second.url, "How do I reverse a string in Python?")
    assert second.stop(signal.SIGKILL) == -signal.SIGKILL

    third = SidecarProcess(fake.url, data)
    before = fake.stats.total("/v1/chat/completions")
    try:
        assert ask(third.url, "What is the capital of France?") == ("hit", a1)
        assert ask(third.url, "How can I reverse a string in python") == ("hit", a2)
    finally:
        assert third.stop() == 0
    assert fake.stats.total("/v1/chat/completions") == before  # both answered from the store


def test_sigterm_drains_in_flight_requests_and_exits_zero(tmp_path: Path, fake: Fake) -> None:
    fake.config.latency = 1.5
    sc = SidecarProcess(fake.url, tmp_path / "data")
    result: dict[str, object] = {}

    def slow_request() -> None:
        try:
            result["answer"] = ask(sc.url, "A slow question to drain")
        except Exception as exc:  # recorded for the assertion below
            result["error"] = exc

    t = threading.Thread(target=slow_request)
    t.start()
    deadline = time.monotonic() + 10
    while fake.stats.total("/v1/chat/completions") == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    code = sc.stop(signal.SIGTERM)
    t.join(30)
    assert code == 0, sc.output()[-3000:]
    assert "error" not in result, result
    status, answer = result["answer"]  # type: ignore[misc]
    assert status == "miss" and answer.startswith("Answer ")


def test_data_directory_never_contains_the_bearer_key(tmp_path: Path, fake: Fake) -> None:
    data = tmp_path / "data"
    sc = SidecarProcess(fake.url, data)
    try:
        for i in range(5):
            ask(sc.url, f"Question {i} about secrets")
        wait_for_store(sc.url, "Question 4 about secrets")
    finally:
        assert sc.stop() == 0
    assert fake.stats.authorizations and all(a == f"Bearer {SECRET}" for a in fake.stats.authorizations)
    needle = SECRET.encode()
    for root, _, files in os.walk(data):
        for name in files:
            blob = Path(root, name).read_bytes()
            assert needle not in blob and needle[3:20] not in blob, name
    assert SECRET not in sc.output()  # nor in the logs


def test_quickstart_serves_curlable_hits(tmp_path: Path) -> None:
    port, fake_port = free_port(), free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "semcache", "quickstart", "--port", str(port), "--fake-port",
         str(fake_port), "--data-dir", str(tmp_path / "data")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc=proc)  # type: ignore[arg-type]
        status, answer = ask(url, "What is the capital of France?", key="sk-demo")
        assert status == "miss" and answer.startswith("Answer ")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status2, answer2 = ask(url, "what is the capital city of France?", key="sk-demo")
            if status2 == "hit":
                break
            time.sleep(0.1)
        assert (status2, answer2) == ("hit", answer)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    assert f"http://127.0.0.1:{port}" in out and "curl" in out
