"""SemanticCache on the real model, FAISS and LMDB: the issue's must-hold list."""

from __future__ import annotations

import pytest

from semcache import CacheRequest, EmbedderMismatchError, InvalidRequestError, SemanticCache
from tests.conftest import (
    CacheFactory,
    Clock,
    HashEmbedder,
    answer,
    chat,
    langcache_pairs,
    meancache_items,
)

CHAT = "/v1/chat/completions"


def req(body: dict, ns: str = "anonymous") -> CacheRequest:
    return CacheRequest.from_body(CHAT, body, namespace=ns)


def test_exact_repeat_hits_without_embedding(make_cache: CacheFactory) -> None:
    cache = make_cache()
    entry = cache.store(req(chat("What is the capital of France?")), answer("Paris."))
    calls = []
    real = cache.embedder.embed
    cache.embedder.embed = lambda texts: calls.append(texts) or real(texts)  # type: ignore[method-assign]
    try:
        hit = cache.lookup(req(chat("What is the capital of France?")))
    finally:
        cache.embedder.embed = real  # type: ignore[method-assign]
    assert hit is not None and hit.match == "exact" and hit.entry_id == entry
    assert hit.similarity == 1.0 and hit.json()["choices"][0]["message"]["content"] == "Paris."
    assert calls == []


def test_paraphrase_hits_and_near_miss_misses_at_default_threshold(make_cache: CacheFactory) -> None:
    pairs = {(a, b): label for a, b, label in langcache_pairs()}
    para = ("python sort list ascending", "how to sort a list in python ascending")
    near = ("python sort list ascending", "python reverse sort list")
    assert pairs[para] == 1 and pairs[near] == 0  # as labeled in the data
    cache = make_cache()
    stored = cache.store(req(chat(para[0])), answer("sorted(xs)"))
    hit = cache.lookup(req(chat(para[1])))
    assert hit is not None and hit.match == "semantic" and hit.entry_id == stored
    assert cache.settings.threshold <= hit.similarity < 1.0
    assert cache.lookup(req(chat(near[1]))) is None


def test_per_call_threshold(make_cache: CacheFactory) -> None:
    cache = make_cache()
    cache.store(req(chat("What is the capital of France?")), answer("Paris."))
    q = req(chat("what's the capital city of france"))
    assert cache.lookup(q, threshold=0.99) is None
    assert cache.lookup(q, threshold=0.8) is not None
    with pytest.raises(InvalidRequestError):
        cache.lookup(q, threshold=1.5)


@pytest.mark.parametrize("other", [
    pytest.param(lambda t: req(chat(t), ns="ns:tenant-b"), id="namespace"),
    pytest.param(lambda t: req(chat(t, model="gpt-4o")), id="model"),
    pytest.param(lambda t: req(chat(t, temperature=1.2)), id="temperature"),
    pytest.param(lambda t: req(chat(t, tools=[{"type": "function", "function": {"name": "f"}}])),
                 id="tools"),
    pytest.param(lambda t: req(chat(t, system="Answer in French.")), id="system-prompt"),
    pytest.param(lambda t: req(chat(t, history=[("Tell me about Canada", "Canada is ...")])),
                 id="earlier-turns"),
])
def test_other_scope_misses_even_for_the_same_text(make_cache: CacheFactory, other) -> None:  # type: ignore[no-untyped-def]
    cache = make_cache()
    text = "What is the capital?"
    cache.store(req(chat(text)), answer("Paris."))
    assert cache.lookup(req(chat(text))) is not None
    assert cache.lookup(other(text)) is None
    assert cache.lookup(other("What's the capital?")) is None


def test_follow_ups_are_not_served_across_conversations(make_cache: CacheFactory) -> None:
    """meancache two-turn data: a follow-up's meaning depends on the first turn."""
    cache = make_cache()
    items = meancache_items()[:30]
    for it in items:
        cache.store(req(chat(it["u0"])), answer(it["system_q0"]))
        cache.store(req(chat(it["u1"], history=[(it["u0"], it["system_q0"])])),
                    answer(it["system_q1"]))
    wrong = right = 0
    for i, it in enumerate(items):
        other = items[(i + 1) % len(items)]
        # the same follow-up asked after another conversation's first turn: must miss
        q = req(chat(it["u1"], history=[(other["u0"], other["system_q0"])]))
        wrong += cache.lookup(q) is not None
        # the same follow-up in its own conversation: an exact hit
        own = cache.lookup(req(chat(it["u1"], history=[(it["u0"], it["system_q0"])])))
        right += own is not None and own.json()["choices"][0]["message"]["content"] == it["system_q1"]
    assert wrong == 0
    assert right == len(items)


def test_second_process_hits_what_the_first_stored(tmp_path, onnx_export) -> None:  # type: ignore[no-untyped-def]
    """Both processes on the default settings (so the default backend, from the session's
    export): the second one finds what the first stored."""
    import subprocess
    import sys

    data = tmp_path / "shared-store"
    code = (
        "import sys; from semcache import SemanticCache, Settings, CacheRequest;"
        "c=SemanticCache(Settings(data_dir=sys.argv[1], embedding_cache_dir=sys.argv[2]));"
        "r=CacheRequest.from_body('/v1/chat/completions', {'model':'m','messages':"
        "[{'role':'user','content':'How do I reverse a string in Python?'}]});"
        "print(c.store(r, {'choices':[{'message':{'content':'s[::-1]'},'finish_reason':'stop'}]}));"
        "c.close()"
    )
    out = subprocess.run([sys.executable, "-c", code, str(data), str(onnx_export.cache_dir)],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    stored_id = int(out.stdout.strip())
    from semcache import Settings

    with SemanticCache(Settings(data_dir=data, embedding_cache_dir=onnx_export.cache_dir)) as cache:
        assert cache.embedder.name.endswith("@onnx-int8")
        hit = cache.lookup(CacheRequest.from_body(CHAT, {"model": "m", "messages": [
            {"role": "user", "content": "How can I reverse a string in python"}]}))
        assert hit is not None and hit.entry_id == stored_id and hit.match == "semantic"


def test_ttl_expiry_removes_from_index_and_store(make_cache: CacheFactory) -> None:
    clock = Clock()
    cache = make_cache(clock=clock, ttl=60.0)
    a = cache.store(req(chat("What is the capital of France?")), answer("Paris."))
    b = cache.store(req(chat("Capital of Canada")), answer("Ottawa."), ttl=600.0)
    clock.now += 61
    assert cache.lookup(req(chat("What is the capital of France?"))) is None  # expired: not served
    assert cache.sweep() == 1
    assert a not in cache.index and cache.store_db.get(a) is None
    assert b in cache.index and cache.store_db.get(b) is not None
    clock.now += 600
    reopened_ids = [i for i, _, _ in cache.store_db.iter_index()]
    assert reopened_ids == [b]


def test_expired_entries_are_dropped_on_reopen(make_cache: CacheFactory) -> None:
    clock = Clock()
    first = make_cache(clock=clock, ttl=10.0)
    old = first.store(req(chat("What is the capital of France?")), answer("Paris."))
    first.close()
    clock.now += 11
    second = make_cache(clock=clock, ttl=10.0)
    assert len(second) == 0 and second.store_db.get(old) is None


def test_entry_cap_evicts_least_recently_used_from_index_and_store(make_cache: CacheFactory) -> None:
    cache = make_cache(max_entries=3)
    texts = ["What is the capital of France?", "Capital of Canada", "GDP of Japan in 2020",
             "python sort list ascending"]
    ids = [cache.store(req(chat(t)), answer(t)) for t in texts[:3]]
    assert cache.lookup(req(chat(texts[0]))) is not None  # touch: France is now most recent
    ids.append(cache.store(req(chat(texts[3])), answer(texts[3])))
    assert len(cache) == 3 and cache.evictions == 1
    evicted = ids[1]  # Canada: least recently used
    assert evicted not in cache.index and cache.store_db.get(evicted) is None
    assert cache.lookup(req(chat("What is the capital city of Canada?")), threshold=0.8) is None
    assert cache.lookup(req(chat(texts[0]))) is not None


def test_byte_cap_evicts(make_cache: CacheFactory) -> None:
    cache = make_cache(max_bytes=1500)
    for i in range(6):
        cache.store(req(chat(f"question number {i}")), answer("x" * 200))
    assert cache.tracker.total_bytes <= 1500
    assert cache.store_db.count() == len(cache) < 6


def test_an_answer_larger_than_max_bytes_is_refused_and_evicts_nothing(
        make_cache: CacheFactory) -> None:
    cache = make_cache(max_bytes=2000)
    kept = cache.store(req(chat("small question")), answer("short"))
    with pytest.raises(InvalidRequestError, match=r"response.*larger than max_bytes \(2000\)"):
        cache.store(req(chat("big question")), answer("x" * 5000))
    assert len(cache) == 1 and cache.store_db.get(kept) is not None and cache.evictions == 0
    records = [cache.store_db.get(kept)]
    with pytest.raises(InvalidRequestError, match="max_entries"):
        make_cache(data_dir=cache.settings.data_dir.parent / "b", max_entries=1).restore_many(
            [r for r in records if r] * 2)


def test_eviction_takes_a_batch_so_the_next_stores_evict_nothing(make_cache: CacheFactory) -> None:
    cap = 128
    cache = make_cache(max_entries=cap)
    for i in range(cap):
        cache.store(req(chat(f"question number {i}")), answer(f"a{i}"))
    assert cache.evictions == 0
    cache.store(req(chat("one more question")), answer("b"))
    batch = cache.evictions
    assert batch == 1 + cap // 64  # room for cap // 64 more stores was made at once
    assert len(cache) == cache.store_db.count() == cap + 1 - batch
    for i in range(batch - 1):
        cache.store(req(chat(f"later question {i}")), answer("c"))
    assert cache.evictions == batch and len(cache) == cap  # filled up again, no eviction


def test_store_of_another_model_is_refused_naming_both(make_cache: CacheFactory) -> None:
    first = make_cache()
    first.store(req(chat("hello")), answer("hi"))
    first.close()
    with pytest.raises(EmbedderMismatchError) as info:
        make_cache(embedder_=HashEmbedder())
    msg = str(info.value)
    assert "sentence-transformers/all-MiniLM-L6-v2@torch" in msg and "test-hash@fake" in msg
    # and nothing was lost
    again = make_cache()
    assert again.lookup(req(chat("hello"))) is not None


def test_restoring_the_same_exact_key_replaces_the_entry(make_cache: CacheFactory) -> None:
    cache = make_cache()
    a = cache.store(req(chat("What is RAM?")), answer("old"))
    b = cache.store(req(chat("What is RAM?")), answer("new"))
    assert a != b and len(cache) == 1 and a not in cache.index
    hit = cache.lookup(req(chat("What is RAM?")))
    assert hit is not None and hit.entry_id == b and "new" in hit.body.decode()


def test_large_scopes_are_searched_through_faiss(make_cache: CacheFactory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """flat_limit=2 forces the IVF path; results must match the exact-scan path."""
    pairs = [(a, b) for a, b, label in langcache_pairs() if label == 1][:40]
    results: dict[int, list[str | None]] = {}
    for limit in (10_000, 2):
        cache = make_cache(flat_limit=limit, data_dir=tmp_path / f"limit-{limit}")
        texts = {cache.store(req(chat(a)), answer(a)): a for a, _ in pairs}
        assert cache.index.kind(req(chat("x")).scope) == ("flat" if limit > len(pairs) else "ivf")
        hits = [cache.lookup(req(chat(b))) for _, b in pairs]
        results[limit] = [texts[h.entry_id] if h else None for h in hits]
    assert results[2] == results[10_000]
    assert sum(r is not None for r in results[2]) >= len(pairs) // 3  # the path was exercised


@pytest.mark.parametrize("eviction", ["lru", "lfu"])
def test_caps_hold_and_evicted_entries_leave_index_and_store(make_cache: CacheFactory,
                                                            eviction: str) -> None:
    cache = make_cache(embedder_=HashEmbedder(), max_entries=40,
                       max_bytes=40 * 400, eviction=eviction, flat_limit=8)
    stored: list[int] = []
    for i in range(300):
        stored.append(cache.store(req(chat(f"question {i}")), answer("x" * (i % 200))))
        if i % 3 == 0:
            cache.lookup(req(chat(f"question {i // 2}")))  # some hits, to shape LRU/LFU order
        assert len(cache) <= 40 and cache.tracker.total_bytes <= 40 * 400
    live = [e for e in stored if e in cache.tracker]
    gone = [e for e in stored if e not in cache.tracker]
    assert cache.evictions == len(gone) > 0
    assert sorted(live) == sorted(cache.index.ids().tolist())
    assert cache.store_db.count() == len(live)
    assert all(cache.store_db.get(e) is None and e not in cache.index for e in gone)
