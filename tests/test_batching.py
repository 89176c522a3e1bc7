"""MicroBatcher: concurrent callers share forward passes, each gets its own row, a lone
caller is not held, a failing backend fails every waiter and the batcher goes on."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from semcache import CacheRequest, EmbeddingError
from semcache.batching import MicroBatcher
from semcache.embedding_onnx import OnnxEmbedder
from semcache.memo import VectorMemo
from tests.conftest import CacheFactory, HashEmbedder, answer, chat, langcache_pairs


class SlowRecorder:
    """HashEmbedder behind a forward pass that takes ``seconds`` and records each batch
    and the thread it ran on; texts containing ``fail_on`` make the pass raise."""

    def __init__(self, seconds: float = 0.005, fail_on: str | None = None) -> None:
        self.inner = HashEmbedder()
        self.seconds = seconds
        self.fail_on = fail_on
        self.batches: list[list[str]] = []
        self.threads: set[int] = set()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.batches.append(list(texts))
        self.threads.add(threading.get_ident())
        time.sleep(self.seconds)
        if self.fail_on is not None and any(self.fail_on in t for t in texts):
            raise RuntimeError("backend exploded")
        return self.inner.embed(texts)


async def test_concurrent_callers_each_get_their_own_row() -> None:
    backend = SlowRecorder()
    batcher = MicroBatcher(backend, max_batch=16)
    # 16 texts asked 4 times in a row (so each batch of 16 holds whole groups), 136 once
    texts = [f"question {i // 4}" if i < 64 else f"question {i}" for i in range(200)]
    try:
        rows = await asyncio.gather(*(batcher.embed(t) for t in texts))
    finally:
        batcher.close()
    want = HashEmbedder().embed(texts)
    for text, row, expected in zip(texts, rows, want, strict=True):
        assert row.dtype == np.float32 and row.shape == (16,) and not row.flags.writeable
        assert np.array_equal(row, expected), text
    assert all(len(b) <= 16 for b in backend.batches)
    assert len(backend.batches) < 30 and batcher.stats.largest == 16  # shared passes
    assert sum(len(b) for b in backend.batches) == 152  # duplicates in a batch embedded once
    assert threading.get_ident() not in backend.threads  # never on the event loop


async def test_a_lone_request_is_not_held_for_max_wait() -> None:
    batcher = MicroBatcher(HashEmbedder().embed, max_wait=0.5)
    try:
        for i in range(5):
            started = time.perf_counter()
            await batcher.embed(f"alone {i}")
            assert time.perf_counter() - started < 0.1
    finally:
        batcher.close()
    assert batcher.stats.batches == 5 and batcher.stats.largest == 1


async def test_the_event_loop_keeps_turning_during_a_forward_pass() -> None:
    backend = SlowRecorder(seconds=0.2)
    batcher = MicroBatcher(backend)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        await batcher.embed("slow")
    finally:
        task.cancel()
        batcher.close()
    assert ticks >= 10


async def test_a_failing_backend_fails_every_waiter_then_recovers() -> None:
    backend = SlowRecorder(seconds=0.05, fail_on="boom")
    batcher = MicroBatcher(backend, max_batch=64)
    try:
        first = asyncio.ensure_future(batcher.embed("warm-up"))  # occupies the embedder
        await asyncio.sleep(0.01)
        doomed = [asyncio.ensure_future(batcher.embed(t)) for t in ("a", "boom", "b", "c")]
        results = await asyncio.gather(first, *doomed, return_exceptions=True)
        assert isinstance(results[0], np.ndarray)
        errors = results[1:]
        assert all(isinstance(e, EmbeddingError) and "backend exploded" in str(e) for e in errors)
        assert len({id(e) for e in errors}) == len(errors)  # one exception object each
        assert batcher.stats.failures == 1
        after = await asyncio.gather(*(batcher.embed(t) for t in ("a", "b")))
        assert np.array_equal(after[0], HashEmbedder().embed(["a"])[0])
    finally:
        batcher.close()


async def test_a_wrong_shape_from_the_backend_is_an_embedding_error() -> None:
    batcher = MicroBatcher(lambda texts: np.zeros((1, 4), dtype=np.float32))
    try:
        with pytest.raises(EmbeddingError, match="expected float32"):
            await batcher.embed_many(["x", "y"])
    finally:
        batcher.close()


async def test_a_cancelled_caller_drops_out() -> None:
    backend = SlowRecorder(seconds=0.05)
    batcher = MicroBatcher(backend)
    try:
        busy = asyncio.ensure_future(batcher.embed("first"))
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(batcher.embed("cancelled"))
        kept = asyncio.ensure_future(batcher.embed("kept"))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.gather(busy, kept)
        assert gone.cancelled() and kept.result().shape == (16,)
        assert all("cancelled" not in b for b in backend.batches)
    finally:
        batcher.close()


async def test_close_fails_the_queued_and_refuses_new() -> None:
    backend = SlowRecorder(seconds=0.05)
    batcher = MicroBatcher(backend)
    running = asyncio.ensure_future(batcher.embed("running"))
    await asyncio.sleep(0.01)
    queued = asyncio.ensure_future(batcher.embed("queued"))
    await asyncio.sleep(0)
    batcher.close()
    with pytest.raises(EmbeddingError, match="closed"):
        await queued
    assert (await running).shape == (16,)  # the pass in flight still completes
    with pytest.raises(EmbeddingError, match="closed"):
        await batcher.embed("late")


async def test_the_memo_answers_repeats_without_a_forward_pass() -> None:
    backend = SlowRecorder(seconds=0)
    memo = VectorMemo(8)
    batcher = MicroBatcher(backend, memo=memo)
    try:
        a = await batcher.embed("same question")
        b = await batcher.embed("same question")
    finally:
        batcher.close()
    assert a is b and len(backend.batches) == 1 and batcher.stats.memo_hits == 1
    assert memo.get("same question") is a


async def test_batched_rows_match_rows_embedded_alone_on_the_real_model(
    onnx_embedder: OnnxEmbedder,
) -> None:
    texts = sorted({a for a, _, _ in langcache_pairs()})[:96]
    batcher = MicroBatcher(onnx_embedder.embed, max_batch=32)
    try:
        rows = await asyncio.gather(*(batcher.embed(t) for t in texts))
    finally:
        batcher.close()
    alone = np.concatenate([onnx_embedder.embed([t]) for t in texts])
    cosine = (np.stack(rows) * alone).sum(axis=1)
    assert cosine.min() >= 0.9999  # each caller got its own text's vector
    assert batcher.stats.largest > 1


async def test_the_cache_batcher_shares_the_memo_with_store(make_cache: CacheFactory) -> None:
    """The web layer's flow: embed through the batcher, look up with the vector, and on a
    miss store -- the store reuses the vector instead of embedding again."""
    cache = make_cache()
    calls: list[list[str]] = []
    real = cache.embedder.embed

    def counting(texts: Sequence[str]) -> np.ndarray:
        calls.append(list(texts))
        return real(texts)

    cache.embedder.embed = counting  # type: ignore[method-assign]
    batcher = cache.batcher()
    try:
        q = CacheRequest.from_body("/v1/chat/completions", chat("How do I reverse a string in Python?"))
        vec = await batcher.embed(q.semantic_text or "")
        assert cache.lookup_semantic(q, vector=vec) is None
        cache.store(q, answer("s[::-1]"))  # no vector given: the memo has it
        other_scope = CacheRequest.from_body(
            "/v1/chat/completions", chat("How do I reverse a string in Python?", model="other"))
        assert cache.lookup_semantic(other_scope) is None  # same text, another scope: memo again
    finally:
        batcher.close()
        cache.embedder.embed = real  # type: ignore[method-assign]
    assert calls == [["How do I reverse a string in Python?"]]
    assert cache.stats()["embedding_memo"]["hits"] >= 2


def test_a_failing_backend_fails_open_in_the_cache(make_cache: CacheFactory) -> None:
    """Exact hits need no embedding and keep working; semantic lookups raise
    EmbeddingError, which the web layer answers by going upstream."""

    class Broken(HashEmbedder):
        def embed(self, texts: Sequence[str]) -> np.ndarray:
            raise RuntimeError("backend down")

    healthy = make_cache(embedder_=HashEmbedder())
    q = CacheRequest.from_body("/v1/chat/completions", chat("What is RAM?"))
    healthy.store(q, answer("memory"))
    healthy.close()
    cache = make_cache(embedder_=Broken())
    hit = cache.lookup(q)
    assert hit is not None and hit.match == "exact"
    with pytest.raises(EmbeddingError, match="backend down"):
        cache.lookup(CacheRequest.from_body("/v1/chat/completions", chat("what's RAM")))


def _where(row: np.ndarray) -> tuple[str, float]:
    """An embed_then step: the thread it ran on and the row's first value."""
    assert not row.flags.writeable
    return threading.current_thread().name, float(row[0])


async def test_embed_then_runs_a_lone_callers_step_on_the_batcher_thread() -> None:
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="test-lookup")
    batcher = MicroBatcher(HashEmbedder().embed, memo=VectorMemo(64))
    try:
        thread, first = await batcher.embed_then("alone", _where, pool)
        assert thread.startswith("semcache-embed") and batcher.stats.inline == 1
        assert first == float(HashEmbedder().embed(["alone"])[0, 0])
        # a memo hit has no pass to ride on: the step goes to the executor
        thread, first_again = await batcher.embed_then("alone", _where, pool)
        assert thread.startswith("test-lookup") and first_again == first
        assert batcher.stats.inline == 1 and batcher.stats.memo_hits == 1
    finally:
        batcher.close()
        pool.shutdown()


async def test_embed_then_in_a_shared_pass_runs_each_step_on_the_executor() -> None:
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="test-lookup")
    backend = SlowRecorder()
    batcher = MicroBatcher(backend, max_batch=8)
    texts = [f"together {i}" for i in range(8)]
    try:
        out = await asyncio.gather(*(batcher.embed_then(t, _where, pool) for t in texts))
    finally:
        batcher.close()
        pool.shutdown()
    want = HashEmbedder().embed(texts)[:, 0]
    assert [first for _, first in out] == [float(v) for v in want]  # each its own row
    shared = sum(len(b) for b in backend.batches if len(b) > 1)
    assert shared > 0  # the burst did share passes ...
    assert sum(thread.startswith("test-lookup") for thread, _ in out) >= shared  # ... off-thread
    assert batcher.stats.inline == 8 - shared


async def test_a_failing_step_reaches_its_caller_and_the_batcher_goes_on() -> None:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    batcher = MicroBatcher(HashEmbedder().embed)

    def broken(row: np.ndarray) -> None:
        raise KeyError("index gone")

    try:
        with pytest.raises(KeyError, match="index gone"):
            await batcher.embed_then("first", broken, pool)
        thread, _ = await batcher.embed_then("second", _where, pool)
    finally:
        batcher.close()
        pool.shutdown()
    assert thread.startswith("semcache-embed")
    assert batcher.stats.failures == 0 and batcher.stats.batches == 2  # not the pass's fault
