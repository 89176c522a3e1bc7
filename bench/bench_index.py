"""Index at scale: restart, lookup latency, insert rate, memory and recall at N entries.

Usage: ``python -m bench.bench_index [--scopes mix|one] 10000 100000 1000000`` (random
384-d unit vectors; the 1M run takes several minutes and ~6 GB of memory).  For each N it
fills an LMDB store directly, opens a cache on it (cold rebuild from the store), closes it
(writes the index snapshot), then reopens it in a fresh process that reports:

* restart time (snapshot + replay) and RssAnon growth per entry (the LMDB payload is a
  file mapping and is not counted),
* lookup p50/p99 excluding the embedding (index search + LMDB read of the found entry),
  in the large scope (90% of entries, IVF) and in small scopes (1-5 entries, exact scan),
* recall of the IVF against exact search for "paraphrase" queries (a stored vector
  perturbed to cosine 0.90-0.99, and at exactly ~0.90),
* insert rate through ``SemanticCache.store`` at the entry cap (so with eviction).

and, in another fresh process, the RssAnon growth per entry of loading the index snapshot
alone (the index's share of the cache's memory).

``python -m bench.bench_index --hnsw N`` instead compares the large-scope index with HNSW
(FAISS ``IndexHNSWFlat``, M=32) on N random unit vectors: build rate, whether it can
delete, how often a query at cosine 0.90 / 0.95 from a stored vector finds it, and the
median search time (the reason the index uses an IVF).

Scopes (``--scopes``): ``mix`` (default) puts 90% of entries in one scope and the rest in
scopes of 1-5 entries; ``one`` gives every entry its own scope (one scope per
conversation), so there is no large scope and no recall to measure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 384
BIG = b"B" * 32


class FixedEmbedder:
    """Stands in for the model: the benchmark passes vectors, never text."""

    name = "bench-random@384"
    dim = DIM

    def embed(self, texts: list[str]) -> np.ndarray:
        raise RuntimeError("the benchmark passes vectors")


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    out = np.empty((n, DIM), dtype=np.float32)
    for s in range(0, n, 100_000):
        b = rng.standard_normal((min(100_000, n - s), DIM), dtype=np.float32)
        out[s:s + len(b)] = b / np.linalg.norm(b, axis=1, keepdims=True)
    return out


def layout(n: int, mix: str = "mix", seed: int = 0) -> tuple[list[bytes], np.ndarray]:
    """Scopes of the n entries and their vectors: for ``mix``, 90% in BIG and the rest in
    scopes of 1-5; for ``one``, a scope per entry."""
    rng = np.random.default_rng(seed)
    if mix == "one":
        vecs = unit_rows(rng, n)
        return [(1 << 255 | i).to_bytes(32, "big") for i in range(n)], vecs
    scopes: list[bytes] = []
    small = n - int(n * 0.9)
    k = 0
    while len(scopes) < small:
        size = int(rng.integers(1, 6))
        scopes += [k.to_bytes(32, "big")] * size
        k += 1
    scopes = scopes[:small] + [BIG] * (n - small)
    order = rng.permutation(n)
    return [scopes[i] for i in order.tolist()], unit_rows(rng, n)


def near(rng: np.random.Generator, v: np.ndarray, cos: np.ndarray) -> np.ndarray:
    """Unit vectors at cosine ``cos`` from the rows of ``v``."""
    r = rng.standard_normal(v.shape, dtype=np.float32)
    r -= (r * v).sum(1, keepdims=True) * v
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    c = cos[:, None].astype(np.float32)
    q = c * v + np.sqrt(1 - c * c) * r
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def rss_anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def fill(data: Path, n: int, mix: str) -> None:
    from semcache.store import EntryRecord, Store

    scopes, vecs = layout(n, mix)
    with Store(data, embedder=FixedEmbedder.name, dim=DIM, sync=False) as store:
        for i in range(n):
            rec = EntryRecord(scope=scopes[i], exact=i.to_bytes(32, "big"), namespace="anonymous",
                              endpoint="/v1/chat/completions", model="m", text=f"q{i}",
                              body=b'{"a":"' + b"x" * 150 + b'"}', usage=None, created=1.0,
                              expires=None)
            store.put(rec, vecs[i])


def open_cache(data: Path, n: int):  # type: ignore[no-untyped-def]
    from semcache import SemanticCache, Settings

    settings = Settings(data_dir=data, sync=False, ttl=None, max_entries=n, map_size=16 << 30)
    return SemanticCache(settings, FixedEmbedder())  # type: ignore[arg-type]


def index_only(data: Path, n: int) -> dict[str, float]:
    """Runs in a fresh process: RssAnon growth of loading the index snapshot alone."""
    from semcache import snapshot
    from semcache.store import Store

    with Store(data, embedder=FixedEmbedder.name, dim=DIM, sync=False) as store:
        stamp = snapshot.Stamp(FixedEmbedder.name, DIM, store.salt.hex(), store.last_id(), n)
        path = store.snapshot_path
    before = rss_anon()
    index, _, reason = snapshot.load(path, stamp)
    assert index is not None and len(index) == n, reason
    return {"index_rss_per_entry": (rss_anon() - before) / n}


def restarted(data: Path, n: int, mix: str) -> dict[str, float]:
    """Runs in a fresh process: restart from the snapshot, then measure."""
    from semcache import CacheRequest, SemanticCache  # imports (torch...) are not timed

    assert SemanticCache
    before = rss_anon()
    t0 = time.perf_counter()
    cache = open_cache(data, n)
    restart = time.perf_counter() - t0
    grown = rss_anon() - before
    assert cache.index_source.startswith("snapshot"), cache.index_source
    scopes, vecs = layout(n, mix)
    rng = np.random.default_rng(1)
    out: dict[str, float] = {"n": n, "restart_s": restart, "rss_per_entry": grown / n,
                             "source": 0.0}
    big_rows = np.flatnonzero(np.array([s == BIG for s in scopes]))
    small_rows = np.flatnonzero(np.array([s != BIG for s in scopes]))
    for name, rows in (("big", big_rows), ("small", small_rows)):
        if not len(rows):
            out[f"{name}_p50_ms"] = out[f"{name}_p99_ms"] = float("nan")
            continue
        pick = rng.choice(rows, size=2000)
        qs = near(rng, vecs[pick], rng.uniform(0.90, 0.99, len(pick)))
        lat = []
        for i, row in enumerate(pick.tolist()):
            t = time.perf_counter()
            hit = cache.index.search(scopes[row], qs[i], 0.85, 2e9)
            if hit.entry_id >= 0:
                cache.store_db.get(hit.entry_id)
            lat.append(time.perf_counter() - t)
        ms = np.array(lat) * 1e3
        out[f"{name}_p50_ms"] = float(np.percentile(ms, 50))
        out[f"{name}_p99_ms"] = float(np.percentile(ms, 99))
    # recall of the large scope's IVF against exact search
    bv = vecs[big_rows]
    for name, lo, hi in (("recall", 0.90, 0.99), ("recall_at_0.90", 0.895, 0.905)):
        if not len(big_rows):
            out[name] = float("nan")
            continue
        pick = rng.choice(len(big_rows), size=1000)
        qs = near(rng, bv[pick], rng.uniform(lo, hi, len(pick)))
        exact = np.concatenate([np.argmax(qs[s:s + 100] @ bv.T, axis=1) for s in range(0, 1000, 100)])
        want = (big_rows[exact] + 1).tolist()  # entry ids are 1-based insertion order
        got = [cache.index.search(BIG, q, 0.0, 2e9).entry_id for q in qs]
        out[name] = float(np.mean([g == w for g, w in zip(got, want, strict=True)]))
    # inserts through the cache at its cap (evicting)
    m = 2000
    fresh = unit_rows(rng, m)
    t = time.perf_counter()
    for i in range(m):
        req = CacheRequest.from_body("/v1/chat/completions", {
            "model": "m", "messages": [{"role": "user", "content": f"new question {i}"}]})
        cache.store(req, {"choices": [{"message": {"content": "x" * 150}}]}, vector=fresh[i])
    out["insert_per_s"] = m / (time.perf_counter() - t)
    out["evictions"] = cache.evictions
    cache.close()
    return out


def _child(*args: str) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-m", "bench.bench_index", *args],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    out: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def run(n: int, root: Path, mix: str) -> dict[str, float]:
    data = root / f"n{n}"
    t = time.perf_counter()
    fill(data, n, mix)
    filled = time.perf_counter() - t
    t = time.perf_counter()
    cache = open_cache(data, n)
    cold = time.perf_counter() - t
    assert cache.index_source == "store" and len(cache.index) == n
    kind = cache.index.kind(BIG)
    t = time.perf_counter()
    cache.close()
    snap_s = time.perf_counter() - t
    snap_mb = (data / "index.snapshot").stat().st_size / 2**20
    res = _child("--index-only", str(data), str(n))  # before the restart appends entries
    res.update(_child("--restarted", str(data), str(n), mix))
    res.update(fill_s=filled, cold_rebuild_s=cold, snapshot_write_s=snap_s, snapshot_mb=snap_mb)
    res["big_kind"] = kind  # type: ignore[assignment]
    shutil.rmtree(data)
    return res


def hnsw_vs_ivf(n: int) -> dict[str, float]:
    """Build rate, deletion, recall of the stored vector and search p50, HNSW vs our IVF."""
    import faiss

    from semcache.index import NPROBE, _build_ivf

    rng = np.random.default_rng(0)
    x = unit_rows(rng, n)
    pick = rng.choice(n, size=1000, replace=False)
    out: dict[str, float] = {"n": n}
    t = time.perf_counter()
    ivf = _build_ivf(DIM, np.arange(n, dtype=np.int64), x)
    out["ivf_build_per_s"] = n / (time.perf_counter() - t)
    out["ivf_nlist"], out["ivf_nprobe"] = ivf.nlist, ivf.nprobe
    hnsw = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
    t = time.perf_counter()
    for s in range(0, n, 65536):
        hnsw.add(x[s:s + 65536])
    out["hnsw_build_per_s"] = n / (time.perf_counter() - t)
    hnsw.hnsw.efSearch = NPROBE
    out["hnsw_ef_search"] = NPROBE
    try:
        hnsw.remove_ids(faiss.IDSelectorBatch(np.array([0], dtype=np.int64)))
        out["hnsw_can_delete"] = 1.0
    except RuntimeError:
        out["hnsw_can_delete"] = 0.0
    for name, index in (("ivf", ivf), ("hnsw", hnsw)):
        for cos in (0.90, 0.95):
            qs = near(rng, x[pick], np.full(len(pick), cos))
            lat, found = [], 0
            for i, q in enumerate(qs):
                t = time.perf_counter()
                _, ids = index.search(q.reshape(1, -1), 1)
                lat.append(time.perf_counter() - t)
                found += int(ids[0, 0] == pick[i])
            out[f"{name}_found_at_{cos:.2f}"] = found / len(pick)
            out[f"{name}_p50_ms_at_{cos:.2f}"] = float(np.percentile(lat, 50)) * 1e3
    return out


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--restarted":
        print(json.dumps(restarted(Path(argv[1]), int(argv[2]), argv[3])))
        return
    if argv and argv[0] == "--index-only":
        print(json.dumps(index_only(Path(argv[1]), int(argv[2]))))
        return
    if argv and argv[0] == "--hnsw":
        os.environ.setdefault("OMP_NUM_THREADS", "2")
        print(json.dumps(hnsw_vs_ivf(int(argv[1]) if len(argv) > 1 else 1_000_000)))
        return
    mix = "mix"
    if argv[:1] == ["--scopes"]:
        mix, argv = argv[1], argv[2:]
    if mix not in ("mix", "one"):
        raise SystemExit(f"--scopes: mix or one (got {mix!r})")
    sizes = [int(a) for a in argv] or [10_000, 100_000]
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    from semcache import _speedups

    print(f"implementation: {_speedups.IMPLEMENTATION}, scopes: {mix}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="semcache-bench-"))
    try:
        rows = []
        for n in sizes:
            r = run(n, root, mix)
            print(json.dumps(r), flush=True)
            rows.append(r)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    print("| entries | restart s | cold rebuild s | lookup p50/p99 ms (large scope) | "
          "lookup p50/p99 ms (small scopes) | recall 0.90-0.99 | recall @0.90 | "
          "inserts/s (at cap) | RSS B/entry | of which index | snapshot MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {int(r['n']):,} | {r['restart_s']:.1f} | {r['cold_rebuild_s']:.1f} | "
              f"{_pair(r['big_p50_ms'], r['big_p99_ms'], 2)} | "
              f"{_pair(r['small_p50_ms'], r['small_p99_ms'], 3)} | {_num(r['recall'], 3)} | "
              f"{_num(r['recall_at_0.90'], 3)} | {r['insert_per_s']:,.0f} | "
              f"{r['rss_per_entry']:,.0f} | {r['index_rss_per_entry']:,.0f} | "
              f"{r['snapshot_mb']:.0f} |")


def _num(x: float, digits: int) -> str:
    return "–" if x != x else f"{x:.{digits}f}"


def _pair(a: float, b: float, digits: int) -> str:
    return "–" if a != a else f"{_num(a, digits)} / {_num(b, digits)}"

if __name__ == "__main__":
    main(sys.argv[1:])
