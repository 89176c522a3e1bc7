"""TTL runs from insertion and is not reset by hits (DESIGN §3), on the real model."""

from __future__ import annotations

import pytest

from semcache import CacheRequest
from tests.conftest import CacheFactory, Clock, answer, chat

CHAT = "/v1/chat/completions"
Q = "What is the capital of France?"
PARA = "what's the capital city of france"  # 0.866 with Q: a semantic hit at 0.85


def req(text: str) -> CacheRequest:
    return CacheRequest.from_body(CHAT, chat(text), namespace="anonymous")


@pytest.mark.parametrize("configured, per_entry", [(60.0, None), (None, 60.0)],
                         ids=["ttl-setting", "per-entry-ttl"])
def test_hits_before_expiry_do_not_extend_it(make_cache: CacheFactory, configured: float | None,
                                             per_entry: float | None) -> None:
    clock = Clock()
    cache = make_cache(clock=clock, ttl=configured)
    inserted = clock.now
    entry = cache.store(req(Q), answer("Paris."), ttl=per_entry)
    for now in (inserted + 20, inserted + 40, inserted + 59.9):  # exact and semantic hits
        clock.now = now
        exact = cache.lookup(req(Q))
        near = cache.lookup(req(PARA), threshold=0.85)
        assert exact is not None and (exact.entry_id, exact.match) == (entry, "exact")
        assert near is not None and (near.entry_id, near.match) == (entry, "semantic")
        assert exact.age(now) == pytest.approx(now - inserted)  # age counts from insertion too
    assert cache.pending_hits(entry)[0] == 6
    cache.flush_hits()  # the hits are persisted; the expiry stays where insertion put it
    record = cache.store_db.get(entry)
    assert record is not None
    assert (record.created, record.expires) == (inserted, inserted + 60.0)
    assert cache.sweep() == 0  # not yet
    clock.now = inserted + 60.0  # insertion + TTL: gone, however recently it was hit
    assert cache.lookup(req(Q)) is None and cache.lookup(req(PARA), threshold=0.85) is None
    assert cache.sweep() == 1
    assert cache.store_db.get(entry) is None and entry not in cache.index
