"""Shared fixtures: the real embedding model (loaded once), its ONNX export (made once per
session), cache factories, data paths, a network trap."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from semcache import SemanticCache, Settings
from semcache.embedding import SentenceTransformerEmbedder
from semcache.embedding_onnx import OnnxEmbedder

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SEMCACHE_TEST_DATA", ROOT.parent / "shared" / "data"))


def data_file(*parts: str) -> Path:
    """A labeled data file from ../shared/data; a missing file fails the test loudly."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"test data {path} is missing: the repository expects ../shared/data")
    return path


def langcache_pairs() -> list[tuple[str, str, int]]:
    with data_file("langcache", "chatgpt.csv").open(newline="") as f:
        return [(r["sentence1"], r["sentence2"], int(r["label"])) for r in csv.DictReader(f)]


def meancache_items() -> list[dict[str, Any]]:
    return json.loads(data_file("meancache", "new_claude.json").read_text())


class HashEmbedder:
    """Deterministic text -> unit vector by hashing.  Only for tests of non-semantic logic
    (storage, crash safety, eviction), where meaning does not matter."""

    name = "test-hash@fake"

    def __init__(self, dim: int = 16) -> None:
        self.dim = dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            out[i] = v / np.linalg.norm(v)
        return out


@pytest.fixture(scope="session")
def embedder() -> SentenceTransformerEmbedder:
    """The real model on the reference backend (torch), loaded once per test session."""
    return SentenceTransformerEmbedder()


@contextlib.contextmanager
def network_trap() -> Iterator[tuple[dict[str, str], list[object]]]:
    """An environment for a subprocess whose hub and proxy addresses all point at a local
    listener, with the hub's offline switches off, and the list of connections it saw."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    seen: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            seen.append(conn)
            conn.close()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") and not k.startswith("SEMCACHE_EMBEDDING")}
    env.update(HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0", HF_ENDPOINT=url, HTTP_PROXY=url,
               HTTPS_PROXY=url, http_proxy=url, https_proxy=url, NO_PROXY="", no_proxy="")
    try:
        yield env, seen
    finally:
        stop.set()
        t.join()
        server.close()


@dataclass(frozen=True)
class OnnxExport:
    """The session's one ONNX export: where it is, and what its subprocess did."""

    cache_dir: Path
    returncode: int
    output: str
    connections: int


@pytest.fixture(scope="session")
def onnx_export(tmp_path_factory: pytest.TempPathFactory) -> OnnxExport:
    """``semcache export-model`` once per session, into a session directory, as a fresh
    machine would run it: in a subprocess whose network is a trap (see
    ``test_embedding_onnx``, which asserts it was never touched)."""
    cache_dir = tmp_path_factory.mktemp("models")
    with network_trap() as (env, seen):
        out = subprocess.run(
            [sys.executable, "-m", "semcache", "export-model", "--embedding-cache-dir", str(cache_dir)],
            env=env, capture_output=True, text=True, timeout=600)
    return OnnxExport(cache_dir, out.returncode, out.stdout + out.stderr, len(seen))


def _exported(export: OnnxExport) -> Path:
    if export.returncode != 0:
        pytest.fail(f"the session's ONNX export failed:\n{export.output[-3000:]}")
    return export.cache_dir


@pytest.fixture(scope="session")
def onnx_embedder(onnx_export: OnnxExport) -> OnnxEmbedder:
    """The fp32 ONNX backend on the session's export."""
    return OnnxEmbedder(cache_dir=_exported(onnx_export), quantize=False)


@pytest.fixture(scope="session")
def int8_embedder(onnx_export: OnnxExport) -> OnnxEmbedder:
    """The int8 ONNX backend on the session's export (what ``auto`` picks here)."""
    return OnnxEmbedder(cache_dir=_exported(onnx_export), quantize=True)


def chat(text: str, *, model: str = "gpt-4o-mini", system: str | None = None,
         history: Sequence[tuple[str, str]] = (), **params: Any) -> dict[str, Any]:
    """An OpenAI chat body: optional system prompt, earlier (user, assistant) turns, a question."""
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    for user, assistant in history:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": text})
    return {"model": model, "messages": messages, **params}


def answer(text: str, *, model: str = "gpt-4o-mini") -> dict[str, Any]:
    """A complete chat.completion body."""
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 1700000000, "model": model,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


CacheFactory = Callable[..., SemanticCache]


@pytest.fixture
def make_cache(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> Iterator[CacheFactory]:
    """Open caches on the real model in ``tmp_path`` (settings overridable); all closed after."""
    opened: list[SemanticCache] = []

    def factory(*, embedder_: Any = None, clock: Callable[[], float] | None = None,
                **overrides: Any) -> SemanticCache:
        settings = Settings(data_dir=tmp_path / "store", sync=False).replace(**overrides)
        kwargs: dict[str, Any] = {} if clock is None else {"clock": clock}
        cache = SemanticCache(settings, embedder_ or embedder, **kwargs)
        opened.append(cache)
        return cache

    yield factory
    for cache in opened:
        cache.close()


class Clock:
    """A settable clock for TTL tests."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- HTTP fixtures
from semcache.fake_upstream import CONFIG as FAKE_CONFIG  # noqa: E402
from semcache.fake_upstream import STATS as FAKE_STATS  # noqa: E402
from semcache.fake_upstream import FakeConfig, FakeStats, make_fake_app  # noqa: E402
from semcache.web_app import make_app  # noqa: E402
from semcache.web_runtime import RUNTIME, Runtime  # noqa: E402
from tests.servers import ThreadedApp  # noqa: E402


class Fake:
    """A running fake upstream: ``url``, call ``stats`` and its ``config``."""

    def __init__(self, server: ThreadedApp) -> None:
        self.server = server
        self.url = server.url
        self.stats: FakeStats = server.app[FAKE_STATS]
        self.config: FakeConfig = server.app[FAKE_CONFIG]


@pytest.fixture
def fake() -> Iterator[Fake]:
    server = ThreadedApp(make_fake_app()).start()
    yield Fake(server)
    server.stop()


def count_handlers(app: web.Application) -> list[int]:
    """Count the app's running request handlers (``[n]``, read on its loop).  A streamed
    miss's handler outlives the client's read of the last event: it still waits for the
    upstream's end before it admits the answer."""
    running = [0]

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        running[0] += 1
        try:
            return await handler(request)  # type: ignore[no-any-return]
        finally:
            running[0] -= 1

    app.middlewares.insert(0, count)
    return running


class Sidecar:
    """A running sidecar app: ``url`` (without /v1), ``runtime``, ``settings``."""

    def __init__(self, server: ThreadedApp, running: list[int]) -> None:
        self.server = server
        self.url = server.url
        self.runtime: Runtime = server.app[RUNTIME]
        self._running = running

    def wait_stores(self) -> None:
        """Wait until every request handler has returned and background stores are
        committed."""
        import time

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not self.server.call(lambda: self._running[0] or len(self.runtime.background)):
                return
            time.sleep(0.01)
        raise TimeoutError("request handlers or background stores did not finish")


SidecarFactory = Callable[..., Sidecar]


@pytest.fixture
def start_sidecar(tmp_path: Path, embedder: SentenceTransformerEmbedder,
                  fake: Fake) -> Iterator[SidecarFactory]:
    """Start sidecars in front of ``fake`` on the shared real model; stopped after the test."""
    import time

    started: list[ThreadedApp] = []

    def factory(*, embedder_: Any = None, **overrides: Any) -> Sidecar:
        # a generous lookup budget: a shared, loaded machine must not turn hits into
        # fail-open misses (the budget itself is tested with its own setting); no random
        # exploration, so a hit is a hit (tests of exploration set explore_rate)
        settings = Settings(data_dir=tmp_path / "sidecar", upstream=fake.url, sync=False,
                            lookup_timeout=10.0, explore_rate=0.0).replace(**overrides)
        app = make_app(settings, embedder=embedder_ or embedder)
        running = count_handlers(app)
        server = ThreadedApp(app).start()
        started.append(server)
        rt = server.app[RUNTIME]
        deadline = time.monotonic() + 120
        while rt.cache is None and rt.load_error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rt.cache is not None, rt.load_error
        return Sidecar(server, running)

    yield factory
    for server in started:
        server.stop()
