"""The sidecar through real clients: the openai SDK (sync and async) and aiohttp."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
import openai
import pytest
from aiohttp import web

from semcache import Settings
from semcache.fake_upstream import FakeConfig, make_fake_app
from semcache.web_app import make_app
from semcache.web_runtime import RUNTIME
from tests.conftest import Fake, Sidecar, SidecarFactory, count_handlers, langcache_pairs
from tests.servers import ThreadedApp

CHAT = "/v1/chat/completions"
Q = "What is the capital of France?"
PARA = "what's the capital city of france"  # 0.866 with Q: hits at 0.85
NEAR = ("python sort list ascending", "python reverse sort list")


def client(sc: Sidecar, key: str = "sk-test-1", **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=sc.url + "/v1", api_key=key, max_retries=0, **kw)


def aclient(sc: Sidecar, key: str = "sk-test-1", **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sc.url + "/v1", api_key=key, max_retries=0, **kw)


def ask(c: openai.OpenAI, text: str, **kw: Any) -> tuple[dict[str, str], str]:
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}], **kw)
    completion = raw.parse()
    return dict(raw.headers), completion.choices[0].message.content or ""


def ask_stream(c: openai.OpenAI, text: str, **kw: Any) -> tuple[dict[str, str], str, list[Any]]:
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}], stream=True, **kw)
    chunks = list(raw.parse())
    content = "".join((ch.choices[0].delta.content or "") for ch in chunks if ch.choices)
    return dict(raw.headers), content, chunks


async def aask(c: openai.AsyncOpenAI, text: str, *, stream: bool, **kw: Any
               ) -> tuple[dict[str, str], str]:
    """One chat request through the async SDK: response headers and the answer text."""
    raw = await c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}], stream=stream, **kw)
    if not stream:
        return dict(raw.headers), raw.parse().choices[0].message.content or ""
    content = ""
    async for chunk in raw.parse():
        if chunk.choices:
            content += chunk.choices[0].delta.content or ""
    return dict(raw.headers), content


@dataclass(frozen=True)
class Mode:
    """One cell of issue 3's client matrix: the sync or the async openai SDK, with
    ``stream`` on or off."""

    asynchronous: bool
    stream: bool


MODES = [pytest.param(Mode(a, s), id=f"{'async' if a else 'sync'}-{'stream' if s else 'json'}")
         for a in (False, True) for s in (False, True)]


def send(sc: Sidecar, mode: Mode, text: str, key: str = "sk-test-1", **kw: Any
         ) -> tuple[dict[str, str], str]:
    """One chat request in ``mode`` on a fresh client: response headers and answer text."""
    if mode.asynchronous:
        async def run() -> tuple[dict[str, str], str]:
            async with aclient(sc, key) as c:
                return await aask(c, text, stream=mode.stream, **kw)
        return asyncio.run(run())
    with client(sc, key) as c:
        if mode.stream:
            headers, content, _ = ask_stream(c, text, **kw)
            return headers, content
        return ask(c, text, **kw)


@pytest.mark.parametrize("mode", MODES)
def test_a_repeat_is_a_hit_and_the_upstream_saw_one_call(
        start_sidecar: SidecarFactory, fake: Fake, mode: Mode) -> None:
    sc = start_sidecar()
    h1, a1 = send(sc, mode, Q)
    sc.wait_stores()
    h2, a2 = send(sc, mode, Q)
    assert h1["x-semcache-status"] == "miss"
    assert h2["x-semcache-status"] == "hit" and h2["x-semcache-match"] == "exact"
    assert h2["x-semcache-similarity"] == "1.0000" and int(h2["x-semcache-entry"]) > 0
    assert int(h2["x-semcache-age"]) >= 0
    assert h2["server-timing"].startswith("cache;dur=") and "upstream;dur=" in h1["server-timing"]
    assert a1 == a2 and a1.startswith("Answer ")
    assert fake.stats.total(CHAT) == 1


def test_stream_repeat_hits_and_replays_as_sse(start_sidecar: SidecarFactory, fake: Fake) -> None:
    sc = start_sidecar()
    c = client(sc)
    usage = {"include_usage": True}
    h1, a1, first = ask_stream(c, Q, stream_options=usage)
    sc.wait_stores()
    h2, a2, chunks = ask_stream(c, Q, stream_options=usage)
    assert h1["x-semcache-status"] == "miss" and h2["x-semcache-status"] == "hit"
    assert h2["content-type"].startswith("text/event-stream")
    assert a1 == a2 and len(a1) > 20
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage == first[-1].usage and chunks[-1].usage.completion_tokens > 0
    assert chunks[0].id != first[0].id and len({ch.id for ch in chunks}) == 1
    _, _, plain = ask_stream(c, Q)  # usage only when asked for
    assert all(ch.usage is None for ch in plain)
    assert fake.stats.total(CHAT) == 1


def test_entries_cross_stream_and_non_stream(start_sidecar: SidecarFactory, fake: Fake) -> None:
    sc = start_sidecar()
    c = client(sc)
    _, from_json = ask(c, "Stored from a plain request")
    _, from_sse, _ = ask_stream(c, "Stored from a stream")
    sc.wait_stores()
    h1, replay_sse, _ = ask_stream(c, "Stored from a plain request")
    h2, replay_json = ask(c, "Stored from a stream")
    assert h1["x-semcache-status"] == h2["x-semcache-status"] == "hit"
    assert replay_sse == from_json and replay_json == from_sse
    assert fake.stats.total(CHAT) == 2


async def test_async_client_stream_and_non_stream(start_sidecar: SidecarFactory, fake: Fake) -> None:
    sc = start_sidecar()
    c = aclient(sc)
    raw = await c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": Q}])
    first = raw.parse().choices[0].message.content
    await asyncio.get_running_loop().run_in_executor(None, sc.wait_stores)
    raw2 = await c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": PARA}], stream=True,
        extra_headers={"X-Semcache-Threshold": "0.85"})
    stream = raw2.parse()
    text = ""
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    assert raw2.headers["x-semcache-status"] == "hit"
    assert raw2.headers["x-semcache-match"] == "semantic"
    assert 0.85 <= float(raw2.headers["x-semcache-similarity"]) < 1.0
    assert text == first
    assert fake.stats.total(CHAT) == 1
    await c.close()


@pytest.mark.parametrize("mode", MODES)
def test_paraphrase_hits_and_near_miss_misses(start_sidecar: SidecarFactory, fake: Fake,
                                              mode: Mode) -> None:
    labels = {(a, b): y for a, b, y in langcache_pairs()}
    para = ("python sort list ascending", "how to sort a list in python ascending")
    assert labels[para] == 1 and labels[NEAR] == 0  # langcache's own labels
    sc = start_sidecar()
    _, original = send(sc, mode, para[0])
    sc.wait_stores()
    h, answer = send(sc, mode, para[1])
    assert h["x-semcache-status"] == "hit" and h["x-semcache-match"] == "semantic"
    assert answer == original
    h, answer = send(sc, mode, NEAR[1])
    assert h["x-semcache-status"] == "miss" and answer != original
    assert fake.stats.total(CHAT) == 2


@pytest.mark.parametrize("mode", MODES)
def test_api_keys_never_share_unless_the_same_namespace_is_sent(
        start_sidecar: SidecarFactory, fake: Fake, mode: Mode) -> None:
    sc = start_sidecar()
    a, b = "sk-tenant-a", "sk-tenant-b"
    _, answer_a = send(sc, mode, Q, a)
    sc.wait_stores()
    h, answer_b = send(sc, mode, Q, b)
    assert h["x-semcache-status"] == "miss" and fake.stats.total(CHAT) == 2
    assert answer_b == answer_a  # the same (deterministic) answer, fetched again for b
    sc.wait_stores()
    assert send(sc, mode, PARA, b, extra_headers={"X-Semcache-Threshold": "0.8"})[0][
        "x-semcache-status"] == "hit"  # b's own entry, stored by the miss above
    assert send(sc, mode, Q, a)[0]["x-semcache-status"] == "hit"
    shared = {"X-Semcache-Namespace": "team-x"}
    send(sc, mode, "Shared question?", a, extra_headers=shared)
    sc.wait_stores()
    assert send(sc, mode, "Shared question?", b, extra_headers=shared)[0][
        "x-semcache-status"] == "hit"
    assert send(sc, mode, "Shared question?", b)[0]["x-semcache-status"] == "miss"
    assert send(sc, mode, "Shared question?", b, extra_headers={"X-Semcache-Namespace": "team-y"})[
        0]["x-semcache-status"] == "miss"
    # the upstream saw the real keys; the sidecar forwarded them untouched
    assert {"Bearer sk-tenant-a", "Bearer sk-tenant-b"} <= set(fake.stats.authorizations)
    assert fake.stats.total(CHAT) == 5  # a, b, a's team-x, b alone, b's team-y


def test_stream_broken_mid_way_is_not_stored(start_sidecar: SidecarFactory, fake: Fake) -> None:
    sc = start_sidecar()
    c = client(sc)
    with pytest.raises(openai.APIConnectionError):  # the client sees the break
        ask_stream(c, Q, extra_headers={"X-Fake-Fault": "break"})
    sc.wait_stores()
    h, _, _ = ask_stream(c, Q)
    assert h["x-semcache-status"] == "miss"
    sc.wait_stores()
    assert fake.stats.total(CHAT) == 2
    assert len(sc.runtime.cache or []) == 1  # only the complete second answer


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault, exc", [("500", openai.InternalServerError),
                                        ("429", openai.RateLimitError)])
def test_upstream_errors_pass_through_and_are_not_stored(
        start_sidecar: SidecarFactory, fake: Fake, fault: str, exc: type, mode: Mode) -> None:
    sc = start_sidecar()
    for _ in range(2):
        with pytest.raises(exc) as info:
            send(sc, mode, Q, extra_headers={"X-Fake-Fault": fault})
        assert info.value.status_code == int(fault)
        assert info.value.body["message"] == f"fake upstream fault {fault}"
        assert info.value.response.headers["x-semcache-status"] == "miss"
        sc.wait_stores()
    assert fake.stats.total(CHAT) == 2  # the second was not served from the cache
    assert len(sc.runtime.cache or []) == 0
    assert send(sc, mode, Q)[0]["x-semcache-status"] == "miss"  # nor is anything stored


@pytest.mark.parametrize("fault", ["length", "tool_calls", "garbage"])
def test_incomplete_answers_are_not_stored(start_sidecar: SidecarFactory, fake: Fake,
                                           fault: str) -> None:
    sc = start_sidecar()
    c = client(sc)
    for _ in range(2):
        raw = c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": Q}],
            extra_headers={"X-Fake-Fault": fault})
        assert raw.status_code == 200 and raw.headers["x-semcache-status"] == "miss"
        sc.wait_stores()
    assert fake.stats.total(CHAT) == 2 and len(sc.runtime.cache or []) == 0


def test_tool_call_answers_are_stored_when_enabled(start_sidecar: SidecarFactory, fake: Fake) -> None:
    sc = start_sidecar(cache_tool_calls=True)
    c = client(sc)
    ask(c, Q, extra_headers={"X-Fake-Fault": "tool_calls"})
    sc.wait_stores()
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": Q}])
    assert raw.headers["x-semcache-status"] == "hit"
    assert raw.parse().choices[0].message.tool_calls[0].function.name == "lookup"


@pytest.mark.parametrize("mode", MODES)
def test_twenty_concurrent_identical_requests_make_one_upstream_call(
        start_sidecar: SidecarFactory, fake: Fake, mode: Mode) -> None:
    fake.config.latency = 0.5
    sc = start_sidecar()
    text = "One flight only?"
    results: list[tuple[dict[str, str], str]]
    if mode.asynchronous:
        async def together() -> list[tuple[dict[str, str], str]]:
            async with aclient(sc) as c:
                return await asyncio.gather(*(aask(c, text, stream=mode.stream)
                                              for _ in range(20)))
        results = asyncio.run(together())
    else:
        start = threading.Barrier(20)

        def one(_: int) -> tuple[dict[str, str], str]:
            with client(sc) as c:
                start.wait(60)  # every thread has its client: send at once
                if mode.stream:
                    headers, content, _ = ask_stream(c, text)
                    return headers, content
                return ask(c, text)

        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(one, range(20)))
    assert fake.stats.total(CHAT) == 1
    answers = {answer for _, answer in results}
    assert len(answers) == 1 and answers.pop().startswith("Answer ")
    statuses = [h["x-semcache-status"] for h, _ in results]
    assert statuses.count("miss") == 1 and statuses.count("hit") == 19
    if mode.stream:
        assert all(h["content-type"].startswith("text/event-stream") for h, _ in results)


class RaisingEmbedder:
    name = "sentence-transformers/all-MiniLM-L6-v2@torch"
    dim = 384

    def __init__(self) -> None:
        self.fail = False
        self.delay = 0.0

    def embed(self, texts: list[str]) -> np.ndarray:
        import time

        if self.fail:
            raise RuntimeError("embedding backend exploded")
        time.sleep(self.delay)
        rng = np.random.default_rng(abs(hash(tuple(texts))) % 2**32)
        v = rng.standard_normal((len(texts), self.dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_a_raising_embedder_still_yields_the_upstreams_answer(
        start_sidecar: SidecarFactory, fake: Fake) -> None:
    broken = RaisingEmbedder()
    sc = start_sidecar(embedder_=broken)
    broken.fail = True
    c = client(sc)
    h, answer = ask(c, Q)
    assert h["x-semcache-status"] == "miss" and answer.startswith("Answer ")
    sc.wait_stores()
    assert sc.runtime.counters.lookup_failures == 1
    assert sc.runtime.counters.store_failures == 1  # the store also needed an embedding
    broken.fail = False
    assert ask(c, Q)[0]["x-semcache-status"] == "miss"  # nothing half-stored


def test_a_lookup_over_its_budget_goes_upstream(start_sidecar: SidecarFactory, fake: Fake) -> None:
    slow = RaisingEmbedder()
    sc = start_sidecar(embedder_=slow, lookup_timeout=0.05)
    slow.delay = 0.5
    h, answer = ask(client(sc), "A slow question")
    assert h["x-semcache-status"] == "miss" and answer.startswith("Answer ")
    assert sc.runtime.counters.lookup_timeouts == 1


async def test_models_and_other_paths_are_forwarded_verbatim(
        start_sidecar: SidecarFactory, fake: Fake) -> None:
    sc = start_sidecar()
    models = client(sc).models.list()
    assert [m.id for m in models.data] == ["fake-model", "gpt-4o-mini"]
    async with aiohttp.ClientSession() as s:
        async with s.get(fake.url + "/v1/models") as direct, s.get(sc.url + "/v1/models") as via:
            assert await via.read() == await direct.read() and via.status == direct.status
            assert "x-semcache-status" not in via.headers
        payload = b'{"purpose": "batch", "data": "' + b"x" * 200_000 + b'"}'
        async with s.post(sc.url + "/v1/files?purpose=batch", data=payload,
                          headers={"Authorization": "Bearer sk-p", "X-Custom": "kept",
                                   "Connection": "keep-alive", "Content-Type": "application/json"}
                          ) as resp:
            echo = await resp.json()
            assert resp.status == 201 and resp.headers["X-Fake-Echo"] == "1"
    assert echo["method"] == "POST" and echo["path"] == "/v1/files" and echo["query"] == "purpose=batch"
    assert echo["body"].encode() == payload
    assert echo["headers"]["Authorization"] == "Bearer sk-p" and echo["headers"]["X-Custom"] == "kept"
    assert "Connection" not in echo["headers"] or echo["headers"]["Connection"] != "keep-alive"
    assert fake.stats.total("/v1/files") == 1


async def test_malformed_and_oversized_bodies_get_openai_errors_and_the_server_keeps_serving(
        start_sidecar: SidecarFactory, fake: Fake) -> None:
    sc = start_sidecar(max_body_bytes=10_000)
    url = sc.url + CHAT
    async with aiohttp.ClientSession() as s:
        async with s.post(url, data=b'{"model": "m", "messages": [',
                          headers={"Content-Type": "application/json"}) as r:
            err = (await r.json())["error"]
            assert r.status == 400 and err["type"] == "invalid_request_error"
            assert err["param"] == "body" and "not valid JSON" in err["message"]
        async with s.post(url, json={"model": "m", "messages": "hi"}) as r:
            err = (await r.json())["error"]
            assert r.status == 400 and err["param"] == "messages" and "'hi'" in err["message"]
        big = {"model": "m", "messages": [{"role": "user", "content": "x" * 20_000}]}
        async with s.post(url, json=big) as r:
            err = (await r.json())["error"]
            assert r.status == 413 and "10000 bytes" in err["message"]

        async def chunked():  # type: ignore[no-untyped-def]
            for _ in range(30):
                yield b" " * 1000
        async with s.post(url, data=chunked()) as r:
            assert r.status == 413
        async with s.post(url, json={"model": "m", "messages": [{"role": "user", "content": "ok"}]},
                          headers={"X-Semcache-Threshold": "lots"}) as r:
            err = (await r.json())["error"]
            assert r.status == 400 and err["param"] == "X-Semcache-Threshold"
        async with s.post(url, json={"model": "m", "messages": [{"role": "user", "content": "ok"}]}
                          ) as r:
            assert r.status == 200 and (await r.json())["choices"][0]["message"]["content"]
    assert fake.stats.total(CHAT) == 1  # bad requests never reached the upstream


def test_cache_control_and_per_request_controls(start_sidecar: SidecarFactory, fake: Fake) -> None:
    sc = start_sidecar()
    c = client(sc)
    h, _ = ask(c, Q, extra_headers={"Cache-Control": "no-store"})
    sc.wait_stores()
    assert h["x-semcache-status"] == "miss" and len(sc.runtime.cache or []) == 0
    ask(c, Q)
    sc.wait_stores()
    h, _ = ask(c, Q, extra_headers={"Cache-Control": "no-cache"})
    assert h["x-semcache-status"] == "bypass"
    assert fake.stats.total(CHAT) == 3
    # per-request threshold, raised to the server's floor when set lower
    assert ask(c, PARA, extra_headers={"X-Semcache-Threshold": "0.99"})[0][
        "x-semcache-status"] == "miss"
    sc.wait_stores()
    assert ask(c, "what is the capital city of france", extra_headers={
        "X-Semcache-Threshold": "0.5"})[0]["x-semcache-status"] == "hit"  # 0.8 floor still hits
    assert ask(c, "What is the population of France?", extra_headers={
        "X-Semcache-Threshold": "0.01"})[0]["x-semcache-status"] == "miss"  # floor protects
    # per-request TTL
    ask(c, "Short-lived question", extra_headers={"X-Semcache-TTL": "0.5"})
    sc.wait_stores()
    cache = sc.runtime.cache
    assert cache is not None
    entry = cache.store_db.id_for_exact(cache.request(CHAT, {
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Short-lived question"}]},
        namespace=cache.namespace(None, "Bearer sk-test-1")).exact)
    record = cache.store_db.get(entry or -1)
    assert record is not None and record.expires is not None
    assert record.expires - record.created == pytest.approx(0.5)


def test_n_above_one_is_never_stored(start_sidecar: SidecarFactory, fake: Fake) -> None:
    sc = start_sidecar()
    c = client(sc)
    for _ in range(2):
        raw = c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": Q}], n=2)
        assert raw.headers["x-semcache-status"] == "bypass" and len(raw.parse().choices) == 2
    assert fake.stats.total(CHAT) == 2


def test_legacy_completions_and_embeddings(start_sidecar: SidecarFactory, fake: Fake) -> None:
    sc = start_sidecar()
    c = client(sc)
    first = c.completions.with_raw_response.create(model="m", prompt="Say hello politely")
    sc.wait_stores()
    second = c.completions.with_raw_response.create(model="m", prompt="Say hello politely",
                                                    stream=True)
    text = "".join(ch.choices[0].text for ch in second.parse() if ch.choices)
    assert second.headers["x-semcache-status"] == "hit"
    assert text == first.parse().choices[0].text
    e1 = c.embeddings.with_raw_response.create(model="e", input="hello world")
    sc.wait_stores()
    e2 = c.embeddings.with_raw_response.create(model="e", input="hello world")
    e3 = c.embeddings.with_raw_response.create(model="e", input="hello, world")
    assert e2.headers["x-semcache-status"] == "hit" and e3.headers["x-semcache-status"] == "miss"
    assert e2.parse().data[0].embedding == e1.parse().data[0].embedding
    assert fake.stats.total("/v1/completions") == 1 and fake.stats.total("/v1/embeddings") == 2


async def test_unreachable_and_slow_upstreams_give_openai_errors(
        start_sidecar: SidecarFactory, fake: Fake) -> None:
    from tests.servers import free_port

    dead = start_sidecar(upstream=f"http://127.0.0.1:{free_port()}")
    async with aiohttp.ClientSession() as s:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        async with s.post(dead.url + CHAT, json=body) as r:
            err = (await r.json())["error"]
            assert r.status == 502 and err["type"] == "upstream_error" and "unreachable" in err["message"]
        async with s.get(dead.url + "/v1/models") as r:
            assert r.status == 502
    slow = start_sidecar(upstream_timeout=0.3, data_dir=dead.runtime.settings.data_dir.parent / "s2")
    async with aiohttp.ClientSession() as s:
        async with s.post(slow.url + CHAT, json=body, headers={"X-Fake-Fault": "hang"}) as r:
            err = (await r.json())["error"]
            assert r.status == 504 and err["code"] == "upstream_timeout"


async def test_concurrent_lookups_share_forward_passes_and_stores_reuse_them(
        start_sidecar: SidecarFactory, fake: Fake) -> None:
    sc = start_sidecar()
    c = aclient(sc)
    questions = [f"How do I configure feature number {i} of the {w} service?"
                 for i, w in enumerate(["billing", "search", "auth", "storage", "email", "queue",
                                        "cache", "gateway", "metrics", "logging", "backup", "dns",
                                        "cdn", "payments", "ml", "chat"])]

    async def one(q: str) -> str:
        raw = await c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": q}])
        return raw.headers["x-semcache-status"]

    statuses = await asyncio.gather(*(one(q) for q in questions))
    await asyncio.get_running_loop().run_in_executor(None, sc.wait_stores)
    await c.close()
    batcher = sc.runtime.batcher
    assert batcher is not None and statuses.count("miss") == len(questions)
    stats = sc.server.call(lambda: (batcher.stats.embedded, batcher.stats.batches,
                                    batcher.stats.largest))
    embedded, batches, largest = stats
    assert embedded == len(questions)  # every text embedded exactly once...
    assert batches < len(questions) and largest > 1  # ...in shared forward passes
    cache = sc.runtime.cache
    assert cache is not None and len(cache) == len(questions)  # and every answer was stored


async def test_a_client_that_hangs_up_after_done_still_gets_the_answer_stored(
        start_sidecar: SidecarFactory, fake: Fake) -> None:
    """Clients (the openai SDK among them) may close as soon as they read [DONE]."""
    sc = start_sidecar()
    body = {"model": "gpt-4o-mini", "stream": True,
            "messages": [{"role": "user", "content": "Hang up right after DONE"}]}
    for _ in range(3):  # the race between [DONE] and the end of the body, a few times
        reader, writer = await asyncio.open_connection("127.0.0.1", sc.server.port)
        payload = json.dumps(body).encode()
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nAuthorization: Bearer sk-test-1\r\n"
                     b"Cache-Control: no-cache\r\nContent-Length: "
                     + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        await writer.drain()
        seen = b""
        while b"data: [DONE]" not in seen:
            chunk = await reader.read(65536)
            assert chunk, seen[-200:]
            seen += chunk
        writer.transport.abort()  # gone, without reading the end of the body
        await asyncio.get_running_loop().run_in_executor(None, sc.wait_stores)
    raw = client(sc).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=body["messages"])
    assert raw.headers["x-semcache-status"] == "hit"
    assert sc.runtime.counters.upstream_errors == 0  # a client leaving is not an upstream error


async def test_a_client_that_leaves_mid_stream_stores_nothing(
        start_sidecar: SidecarFactory, fake: Fake) -> None:
    fake.config.chunk_delay = 0.05
    sc = start_sidecar()
    body = {"model": "gpt-4o-mini", "stream": True,
            "messages": [{"role": "user", "content": "Leave in the middle of this answer"}]}
    async with aiohttp.ClientSession() as s:
        async with s.post(sc.url + CHAT, json=body) as r:
            assert r.status == 200
            await r.content.readany()  # the first event, then leave
    await asyncio.sleep(1.0)
    await asyncio.get_running_loop().run_in_executor(None, sc.wait_stores)
    assert len(sc.runtime.cache or []) == 0
    assert sc.runtime.counters.upstream_errors == 0  # the client left; the upstream was fine
    fake.config.chunk_delay = 0.0
    h, _ = ask(client(sc), "Leave in the middle of this answer")  # and the server goes on
    assert h["x-semcache-status"] == "miss"


# ------------------------------------------------------------- relayed as it arrives
def timed(app: web.Application) -> tuple[ThreadedApp, list[float]]:
    """Start ``app`` with a middleware that records, on this process's monotonic clock,
    when each of its handlers returned — for a streamed answer, after its last chunk was
    written.  Returns the server and those moments."""
    finished: list[float] = []

    @web.middleware
    async def mark(request: web.Request,
                   handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                   ) -> web.StreamResponse:
        try:
            return await handler(request)
        finally:
            finished.append(time.monotonic())

    app.middlewares.append(mark)
    return ThreadedApp(app).start(), finished


def settled(finished: list[float], timeout: float = 5.0) -> list[float]:
    """``finished`` once the upstream's handler has returned: the client can read the
    last byte a moment before the upstream's thread records it."""
    deadline = time.monotonic() + timeout
    while not finished and time.monotonic() < deadline:
        time.sleep(0.005)
    return finished


def test_a_streamed_miss_reaches_the_client_before_the_upstream_has_finished(
        start_sidecar: SidecarFactory) -> None:
    """The fake streams slowly (a pause after each 4-character piece, ~20 pieces); the
    client's first content chunk must arrive before the upstream wrote its last one."""
    slow, finished = timed(make_fake_app(FakeConfig(chunk_chars=4, chunk_delay=0.1)))
    try:
        sc = start_sidecar(upstream=slow.url)
        arrivals: list[float] = []
        content = ""
        with client(sc) as c:
            raw = c.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "Stream me slowly"}],
                stream=True)
            for chunk in raw.parse():
                if chunk.choices and chunk.choices[0].delta.content:
                    arrivals.append(time.monotonic())
                    content += chunk.choices[0].delta.content
        assert raw.headers["x-semcache-status"] == "miss"
        settled(finished)
        assert len(finished) == 1 and len(arrivals) >= 10 and content.startswith("Answer ")
        upstream_done = finished[0]
        assert arrivals[0] < upstream_done  # relayed, not buffered until the end
        sc.wait_stores()
        with client(sc) as c:
            h, replayed = ask(c, "Stream me slowly")
        assert h["x-semcache-status"] == "hit" and replayed == content  # and then stored
    finally:
        slow.stop()


async def _slow_body(request: web.Request) -> web.StreamResponse:
    """A non-cached /v1/* answer written in ten pieces, a pause after each."""
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await resp.prepare(request)
    for i in range(10):
        await resp.write(f"piece-{i};".encode())
        await asyncio.sleep(0.1)
    await resp.write_eof()
    return resp


async def test_a_streamed_passthrough_body_reaches_the_client_before_the_upstream_has_finished(
        start_sidecar: SidecarFactory) -> None:
    """The fake's passthrough echo writes its pieces without pausing, so this upstream is
    a ten-line aiohttp app of the test's own that does."""
    app = web.Application()
    app.router.add_get("/v1/batches/slow/content", _slow_body)
    slow, finished = timed(app)
    try:
        sc = start_sidecar(upstream=slow.url)
        received = b""
        async with aiohttp.ClientSession() as s:
            async with s.get(sc.url + "/v1/batches/slow/content") as r:
                assert r.status == 200 and "x-semcache-status" not in r.headers
                received += await r.content.readany()
                first = time.monotonic()
                received += await r.read()
        settled(finished)
        assert len(finished) == 1
        assert first < finished[0]  # the first piece came through while the rest was pending
        assert received == b"".join(f"piece-{i};".encode() for i in range(10))
    finally:
        slow.stop()


@contextlib.contextmanager
def upstream_of(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                ) -> Iterator[ThreadedApp]:
    """An upstream of the test's own: ``handler`` answers every /v1/* request."""
    app = web.Application()
    app.router.add_route("*", "/v1/{tail:.*}", handler)
    server = ThreadedApp(app).start()
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------- hop-by-hop headers
async def _echo_headers(request: web.Request) -> web.Response:
    """Echo the request headers; answer with a hop-by-hop header named in Connection."""
    await request.read()
    return web.json_response(
        {"headers": dict(request.headers)},
        headers={"Connection": "keep-alive, X-Resp-Hop", "X-Resp-Hop": "upstream-only",
                 "X-Resp-Kept": "relayed"})


@pytest.mark.parametrize("path", [CHAT, "/v1/files"], ids=["cached", "passthrough"])
async def test_headers_named_in_connection_are_dropped_both_ways(
        start_sidecar: SidecarFactory, path: str) -> None:
    with upstream_of(_echo_headers) as upstream:
        sc = start_sidecar(upstream=upstream.url)
        body = {"model": "m", "messages": [{"role": "user", "content": "hop"}]}
        async with aiohttp.ClientSession() as s:
            async with s.post(sc.url + path, json=body, headers={
                    "Connection": "keep-alive, X-Hop, x-other-hop", "X-Hop": "client-only",
                    "X-Other-Hop": "client-only", "X-Kept": "forwarded",
                    "Authorization": "Bearer sk-hop"}) as r:
                assert r.status == 200
                seen = {k.lower(): v for k, v in (await r.json())["headers"].items()}
                relayed = {k.lower() for k in r.headers}
                assert r.headers["X-Resp-Kept"] == "relayed"
        assert seen["x-kept"] == "forwarded" and seen["authorization"] == "Bearer sk-hop"
        assert "x-hop" not in seen and "x-other-hop" not in seen  # RFC 9110 §7.6.1
        assert "x-resp-hop" not in relayed


async def _set_cookie(request: web.Request) -> web.Response:
    """Echo the Cookie header it got, and set a cookie of its own (as routers behind
    load balancers do)."""
    return web.json_response({"cookie": request.headers.get("Cookie")},
                             headers={"Set-Cookie": "affinity=first-caller; Path=/"})


@pytest.mark.parametrize("path", [CHAT, "/v1/models"], ids=["cached", "passthrough"])
async def test_the_upstreams_cookies_are_relayed_never_kept_for_the_next_caller(
        start_sidecar: SidecarFactory, path: str) -> None:
    with upstream_of(_set_cookie) as upstream:
        # a host name, not an IP: aiohttp's default cookie jar keeps cookies of named hosts
        sc = start_sidecar(upstream=f"http://localhost:{upstream.port}")
        body = {"model": "m", "messages": [{"role": "user", "content": "cookie"}]}
        seen = []
        for key, own in (("sk-first", None), ("sk-second", None), ("sk-third", "mine=1")):
            headers = {"Authorization": f"Bearer {key}", "Cache-Control": "no-cache, no-store"}
            if own:
                headers["Cookie"] = own
            async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
                async with s.request("POST" if path == CHAT else "GET", sc.url + path,
                                     json=body if path == CHAT else None, headers=headers) as r:
                    assert r.status == 200
                    assert r.headers["Set-Cookie"].startswith("affinity=first-caller")
                    seen.append((await r.json())["cookie"])
        # each caller's own Cookie header goes upstream as sent; the upstream's cookie for
        # one caller is never attached to another's request
        assert seen == [None, None, "mine=1"]


# ------------------------------------------------------------------ readiness
class GatedEmbedder:
    """The real model behind a gate: every forward pass waits until the test opens it, so
    the sidecar's loading (which ends with warm-up passes) stays unfinished till then."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name: str = inner.name
        self.dim: int = inner.dim
        self.gate = threading.Event()

    def embed(self, texts: list[str]) -> np.ndarray:
        if not self.gate.wait(120):
            raise TimeoutError("the test never opened the gate")
        result: np.ndarray = self.inner.embed(texts)
        return result


async def test_while_the_model_loads_readyz_is_503_and_requests_bypass_the_cache(
        embedder: Any, fake: Fake, tmp_path: Any) -> None:
    gated = GatedEmbedder(embedder)
    settings = Settings(data_dir=tmp_path / "sidecar", upstream=fake.url, sync=False,
                        lookup_timeout=10.0)
    app = make_app(settings, embedder=gated)
    running = count_handlers(app)
    server = ThreadedApp(app).start()
    rt = server.app[RUNTIME]
    url = server.url
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": Q}]}
    try:
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer sk-test-1"}) as s:
            async with s.get(url + "/readyz") as r:
                err = (await r.json())["error"]
                assert r.status == 503 and err["code"] == "not_ready"
            async with s.get(url + "/healthz") as r:
                assert r.status == 200  # alive all the same
            answers = []
            for stream in (False, False, True):
                async with s.post(url + CHAT, json={**body, "stream": stream}) as r:
                    assert r.status == 200 and r.headers["X-Semcache-Status"] == "bypass"
                    answers.append(await r.read())
            assert json.loads(answers[0])["choices"][0]["message"]["content"].startswith("Answer ")
            assert b"data: [DONE]" in answers[2]
            assert fake.stats.total(CHAT) == 3 and rt.cache is None  # all forwarded, none stored
            gated.gate.set()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                async with s.get(url + "/readyz") as r:
                    if r.status == 200:
                        assert (await r.json())["status"] == "ready"
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("never ready after the model loaded")
            assert len(rt.cache or []) == 0  # nothing from the loading time was stored
            statuses = []
            for _ in range(2):
                async with s.post(url + CHAT, json=body) as r:
                    statuses.append(r.headers["X-Semcache-Status"])
                    await r.read()
                await asyncio.get_running_loop().run_in_executor(None, Sidecar(server, running).wait_stores)
            assert statuses == ["miss", "hit"] and fake.stats.total(CHAT) == 4
    finally:
        gated.gate.set()
        await asyncio.get_running_loop().run_in_executor(None, server.stop)
