"""The sidecar through real clients: the openai SDK (sync and async) and aiohttp."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import numpy as np
import openai
import pytest

from tests.conftest import Fake, Sidecar, SidecarFactory, langcache_pairs

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


def test_sync_non_stream_repeat_is_a_hit_and_upstream_saw_one_call(
        start_sidecar: SidecarFactory, fake: Fake) -> None:
    sc = start_sidecar()
    c = client(sc)
    h1, a1 = ask(c, Q)
    sc.wait_stores()
    h2, a2 = ask(c, Q)
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


def test_paraphrase_hits_and_near_miss_misses(start_sidecar: SidecarFactory, fake: Fake) -> None:
    labels = {(a, b): y for a, b, y in langcache_pairs()}
    para = ("python sort list ascending", "how to sort a list in python ascending")
    assert labels[para] == 1 and labels[NEAR] == 0
    sc = start_sidecar()
    c = client(sc)
    _, original = ask(c, para[0])
    sc.wait_stores()
    h, answer = ask(c, para[1])
    assert h["x-semcache-status"] == "hit" and h["x-semcache-match"] == "semantic"
    assert answer == original
    h, answer = ask(c, NEAR[1])
    assert h["x-semcache-status"] == "miss" and answer != original
    assert fake.stats.total(CHAT) == 2


def test_api_keys_never_share_unless_the_same_namespace_is_sent(
        start_sidecar: SidecarFactory, fake: Fake) -> None:
    sc = start_sidecar()
    a, b = client(sc, "sk-tenant-a"), client(sc, "sk-tenant-b")
    ask(a, Q)
    sc.wait_stores()
    assert ask(b, Q)[0]["x-semcache-status"] == "miss"
    assert ask(b, PARA, extra_headers={"X-Semcache-Threshold": "0.8"})[0]["x-semcache-status"] \
        == "hit"  # b's own entry, stored by the miss above
    assert ask(a, Q)[0]["x-semcache-status"] == "hit"
    shared = {"X-Semcache-Namespace": "team-x"}
    ask(a, "Shared question?", extra_headers=shared)
    sc.wait_stores()
    assert ask(b, "Shared question?", extra_headers=shared)[0]["x-semcache-status"] == "hit"
    assert ask(b, "Shared question?")[0]["x-semcache-status"] == "miss"
    assert ask(b, "Shared question?", extra_headers={"X-Semcache-Namespace": "team-y"})[0][
        "x-semcache-status"] == "miss"
    # the upstream saw the real keys; the sidecar forwarded them untouched
    assert {"Bearer sk-tenant-a", "Bearer sk-tenant-b"} <= set(fake.stats.authorizations)


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


@pytest.mark.parametrize("fault, exc", [("500", openai.InternalServerError),
                                        ("429", openai.RateLimitError)])
def test_upstream_errors_pass_through_and_are_not_stored(
        start_sidecar: SidecarFactory, fake: Fake, fault: str, exc: type) -> None:
    sc = start_sidecar()
    c = client(sc)
    for _ in range(2):
        with pytest.raises(exc) as info:
            ask(c, Q, extra_headers={"X-Fake-Fault": fault})
        assert info.value.status_code == int(fault)
        assert info.value.body["message"] == f"fake upstream fault {fault}"
    sc.wait_stores()
    assert fake.stats.total(CHAT) == 2
    assert len(sc.runtime.cache or []) == 0


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


async def test_twenty_concurrent_identical_requests_make_one_upstream_call(
        start_sidecar: SidecarFactory, fake: Fake) -> None:
    fake.config.latency = 0.5
    sc = start_sidecar()
    c = aclient(sc)

    async def one() -> tuple[str, str]:
        raw = await c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "One flight only?"}])
        return raw.headers["x-semcache-status"], raw.parse().choices[0].message.content

    results = await asyncio.gather(*(one() for _ in range(20)))
    await c.close()
    assert fake.stats.total(CHAT) == 1
    assert len({answer for _, answer in results}) == 1
    assert sorted(status for status, _ in results).count("miss") == 1


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
