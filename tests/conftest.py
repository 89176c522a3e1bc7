"""Shared fixtures: the real embedding model (loaded once), cache factories, data paths."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from semcache import SemanticCache, Settings
from semcache.embedding import SentenceTransformerEmbedder

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
    """The real default model, loaded once per test session."""
    return SentenceTransformerEmbedder()


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


class Sidecar:
    """A running sidecar app: ``url`` (without /v1), ``runtime``, ``settings``."""

    def __init__(self, server: ThreadedApp) -> None:
        self.server = server
        self.url = server.url
        self.runtime: Runtime = server.app[RUNTIME]

    def wait_stores(self) -> None:
        """Wait until background stores are committed."""
        import time

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not self.server.call(lambda: len(self.runtime.background)):
                return
            time.sleep(0.01)
        raise TimeoutError("background stores did not finish")


SidecarFactory = Callable[..., Sidecar]


@pytest.fixture
def start_sidecar(tmp_path: Path, embedder: SentenceTransformerEmbedder,
                  fake: Fake) -> Iterator[SidecarFactory]:
    """Start sidecars in front of ``fake`` on the shared real model; stopped after the test."""
    import time

    started: list[ThreadedApp] = []

    def factory(*, embedder_: Any = None, **overrides: Any) -> Sidecar:
        # a generous lookup budget: a shared, loaded machine must not turn hits into
        # fail-open misses (the budget itself is tested with its own setting)
        settings = Settings(data_dir=tmp_path / "sidecar", upstream=fake.url, sync=False,
                            lookup_timeout=10.0).replace(**overrides)
        server = ThreadedApp(make_app(settings, embedder=embedder_ or embedder)).start()
        started.append(server)
        rt = server.app[RUNTIME]
        deadline = time.monotonic() + 120
        while rt.cache is None and rt.load_error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rt.cache is not None, rt.load_error
        return Sidecar(server)

    yield factory
    for server in started:
        server.stop()
