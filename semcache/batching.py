"""Micro-batching: concurrent lookups and stores share one forward pass.

On CPU a forward pass of 16-32 short texts costs a few times one text, not 16-32 times,
so the web layer sends every text it needs embedded through one :class:`MicroBatcher`
per application::

    batcher = MicroBatcher(cache.embedder.embed, memo=cache.memo,
                           max_batch=settings.embedding_batch_max,
                           max_wait=settings.embedding_batch_wait_ms / 1000)
    vector = await batcher.embed(req.semantic_text)   # raises EmbeddingError -> fail open
    hit = cache.lookup_semantic(req, vector=vector)

(:meth:`semcache.cache.SemanticCache.batcher` builds exactly that.)

Dispatch policy -- batching without a fixed wait:

* One forward pass at a time, on a dedicated executor thread; the event loop only queues
  texts and hands out rows.
* While a pass runs, new texts queue; when it ends, everything queued (up to
  ``max_batch``) goes into the next pass at once.
* When the embedder is idle, a text is dispatched on the next turn of the event loop.
  The dispatcher keeps yielding to the loop -- up to ``max_wait`` seconds after the first
  queued text -- only while each turn brings new texts, so a burst that arrives over a few
  turns shares a pass, and a text that arrives alone waits one turn (microseconds), never
  ``max_wait``.
* :meth:`MicroBatcher.embed_then` also takes the caller's next step (an index search):
  when a pass embeds that caller's text alone, the step runs on the batcher's thread
  right after the pass, which spares a request that arrives alone one round trip through
  the event loop and another thread; in a shared pass (or on a memo hit) it runs on the
  caller's executor, so searches never hold up a batch.
* Identical texts in one batch are embedded once; with a ``memo``
  (:class:`semcache.memo.VectorMemo`), texts embedded before are answered on the event
  loop without queueing, and every new vector is remembered.

Every caller gets its own read-only row (a copy, not a view of the batch).  When the
backend raises, every caller of that batch gets :class:`EmbeddingError` and the batcher
goes on with the next batch.  A caller that is cancelled while waiting simply drops out.

Thread affinity: a batcher belongs to one event loop; :meth:`embed` and
:meth:`embed_many` are called from that loop's thread; ``embed_fn`` runs on the executor.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from .errors import EmbeddingError, SemcacheError
from .memo import VectorMemo

__all__ = ["MicroBatcher", "BatcherStats"]

EmbedFn = Callable[[list[str]], np.ndarray]
T = TypeVar("T")


@dataclass
class BatcherStats:
    """Counters since the batcher was made (read on the event loop's thread)."""

    requests: int = 0  # calls of embed() (embed_many counts each text)
    memo_hits: int = 0  # answered from the memo without a forward pass
    batches: int = 0  # forward passes started
    embedded: int = 0  # distinct texts sent to forward passes
    failures: int = 0  # forward passes that raised
    largest: int = 0  # most texts in one pass
    inline: int = 0  # embed_then steps run on the batcher's thread right after their pass
    sizes: dict[int, int] = field(default_factory=dict)  # pass size -> how many passes


@dataclass(eq=False)
class _Waiter:
    text: str
    future: asyncio.Future[np.ndarray]
    queued: float  # loop.time() when queued
    then: Callable[[np.ndarray], Any] | None = None  # embed_then's step
    # set on the batcher's thread when ``then`` ran there, read after ``future`` resolves
    ran: bool = False
    outcome: Any = None
    error: BaseException | None = None


class MicroBatcher:
    """Embeds texts for many concurrent callers in shared forward passes.

    ``embed_fn(texts)`` must return a float32 array of shape ``(len(texts), dim)``;
    it runs on ``executor`` (default: a dedicated single thread owned, and shut down, by
    the batcher).  ``max_batch`` caps the texts of one pass; ``max_wait`` (seconds) caps
    how long the dispatcher keeps collecting a burst before an idle embedder starts.
    """

    def __init__(
        self, embed_fn: EmbedFn, *, max_batch: int = 32, max_wait: float = 0.002,
        executor: concurrent.futures.Executor | None = None, memo: VectorMemo | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}: must be at least 1")
        if max_wait < 0:
            raise ValueError(f"max_wait={max_wait}: must not be negative")
        self._embed_fn = embed_fn
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="semcache-embed")
        self.memo = memo
        self.stats = BatcherStats()
        self._queue: deque[_Waiter] = deque()
        self._busy = False  # a forward pass is running
        self._scheduled: asyncio.Handle | None = None  # a dispatch is due on the loop
        self._seen = 0  # queue length at the previous collecting turn
        self._closed = False

    # ------------------------------------------------------------------ callers
    async def embed(self, text: str) -> np.ndarray:
        """The unit vector of ``text`` (float32, read-only, C-contiguous).

        Raises :class:`EmbeddingError` when the backend fails or the batcher is closed."""
        vec = self._remembered(text)
        if vec is not None:
            return vec
        return await self._enqueue(text, None).future

    async def embed_then(self, text: str, then: Callable[[np.ndarray], T],
                         executor: concurrent.futures.Executor) -> T:
        """``then(vector of text)``, computed off the event loop.

        ``then`` runs on the batcher's thread straight after a pass that embedded ``text``
        for this caller alone (the next pass waits for it, so it must be short: an index
        search), else -- a memo hit, a pass shared with others -- on ``executor``.
        Raises :class:`EmbeddingError` as :meth:`embed`, and whatever ``then`` raises."""
        vec = self._remembered(text)
        if vec is None:
            waiter = self._enqueue(text, then)
            vec = await waiter.future
            if waiter.ran:
                if waiter.error is not None:
                    raise waiter.error
                return waiter.outcome  # type: ignore[no-any-return]
        return await asyncio.get_running_loop().run_in_executor(executor, then, vec)

    def _remembered(self, text: str) -> np.ndarray | None:
        self.stats.requests += 1
        if self.memo is not None:
            vec = self.memo.get(text)
            if vec is not None:
                self.stats.memo_hits += 1
                return vec
        return None

    def _enqueue(self, text: str, then: Callable[[np.ndarray], Any] | None) -> _Waiter:
        if self._closed:
            raise EmbeddingError("the embedding batcher is closed")
        loop = asyncio.get_running_loop()
        waiter = _Waiter(text, loop.create_future(), loop.time(), then)
        self._queue.append(waiter)
        self._kick(loop)
        return waiter

    async def embed_many(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of ``texts`` as one ``(len(texts), dim)`` float32 array, in order.

        The texts join the queue like separate callers (so they may share passes with
        others); raises :class:`EmbeddingError` if any of them fails."""
        rows = await asyncio.gather(*(self.embed(t) for t in texts))
        if not rows:
            raise ValueError("embed_many needs at least one text")
        return np.ascontiguousarray(np.stack(rows), dtype=np.float32)

    def close(self) -> None:
        """Refuse new texts, fail the queued ones with :class:`EmbeddingError`, and shut
        down the executor if the batcher owns it (a running pass finishes).  Idempotent;
        call from the loop's thread."""
        if self._closed:
            return
        self._closed = True
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(EmbeddingError("the embedding batcher was closed"))
        if self._own_executor:
            self._executor.shutdown(wait=False)

    # -------------------------------------------------------------- dispatching
    def _kick(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make sure a dispatch will happen: now-ish when idle, after the pass otherwise."""
        if self._busy or self._scheduled is not None:
            return
        self._seen = 0
        self._scheduled = loop.call_soon(self._dispatch, loop)

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = None
        if self._busy or self._closed:
            return
        while self._queue and self._queue[0].future.done():  # cancelled while queued
            self._queue.popleft()
        if not self._queue:
            return
        pending = len(self._queue)
        if (pending < self.max_batch and pending > self._seen
                and loop.time() - self._queue[0].queued < self.max_wait):
            # the burst is still arriving: give the loop one more turn to add to it
            self._seen = pending
            self._scheduled = loop.call_soon(self._dispatch, loop)
            return
        batch: list[_Waiter] = []
        while self._queue and len(batch) < self.max_batch:
            waiter = self._queue.popleft()
            if not waiter.future.done():
                batch.append(waiter)
        if not batch:
            return
        texts = list(dict.fromkeys(w.text for w in batch))  # distinct, in first-seen order
        self._busy = True
        self.stats.batches += 1
        self.stats.embedded += len(texts)
        self.stats.largest = max(self.stats.largest, len(texts))
        self.stats.sizes[len(texts)] = self.stats.sizes.get(len(texts), 0) + 1
        lone = batch[0] if len(batch) == 1 and batch[0].then is not None else None
        try:
            self._executor.submit(self._run, loop, batch, texts, lone)
        except RuntimeError as exc:  # executor shut down
            self._busy = False
            self._fail(batch, EmbeddingError(f"the embedding executor is gone: {exc}"))

    def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Waiter], texts: list[str],
             lone: _Waiter | None) -> None:
        """On the executor thread: the pass, then its outcome handed straight to the
        loop (one wake-up; no executor future to chain through)."""
        out: np.ndarray | None = None
        error: BaseException | None = None
        try:
            out = self._forward(texts, lone)
        except BaseException as exc:  # every outcome reaches the loop, which re-raises
            error = exc
        try:
            loop.call_soon_threadsafe(self._finish, loop, batch, texts, out, error)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _forward(self, texts: list[str], lone: _Waiter | None = None) -> np.ndarray:
        """On the executor thread: one pass, checked; every failure as EmbeddingError.
        Then ``lone``'s step, if given, on its row (``lone`` embeds ``texts[0]``)."""
        try:
            out = self._embed_fn(texts)
        except SemcacheError:
            raise
        except Exception as exc:
            raise EmbeddingError(f"embedding backend failed: {type(exc).__name__}: {exc}") from exc
        out = np.asarray(out)
        if out.ndim != 2 or out.shape[0] != len(texts) or out.dtype != np.float32:
            raise EmbeddingError(
                f"embedding backend returned {out.dtype} {out.shape} for {len(texts)} texts; "
                "expected float32 (n, dim)")
        if lone is not None and lone.then is not None:
            row = np.array(out[0], dtype=np.float32, copy=True)
            row.setflags(write=False)
            try:
                lone.outcome = lone.then(row)
            except Exception as exc:  # the caller's failure, not the pass's
                lone.error = exc
            lone.ran = True
        return out

    def _finish(self, loop: asyncio.AbstractEventLoop, batch: list[_Waiter], texts: list[str],
                out: np.ndarray | None, exc: BaseException | None) -> None:
        self._busy = False
        if exc is not None:
            self.stats.failures += 1
            err = exc if isinstance(exc, EmbeddingError) else EmbeddingError(
                f"embedding backend failed: {type(exc).__name__}: {exc}")
            self._fail(batch, err)
        else:
            assert out is not None
            self.stats.inline += sum(1 for w in batch if w.ran)
            rows: dict[str, np.ndarray] = {}
            for i, text in enumerate(texts):
                row = np.array(out[i], dtype=np.float32, copy=True)
                row.setflags(write=False)
                rows[text] = self.memo.put(text, row) if self.memo is not None else row
            for waiter in batch:
                if not waiter.future.done():
                    waiter.future.set_result(rows[waiter.text])
        if self._queue and not self._closed:
            self._kick(loop)

    @staticmethod
    def _fail(batch: list[_Waiter], err: EmbeddingError) -> None:
        for waiter in batch:  # one exception object per caller: tracebacks are per raise
            if not waiter.future.done():
                own = EmbeddingError(str(err))
                own.__cause__ = err.__cause__ or err
                waiter.future.set_exception(own)
