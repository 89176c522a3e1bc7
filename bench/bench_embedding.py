"""Embedding backends side by side: forward time, batching, throughput, quality.

    python -m bench.bench_embedding [--quick] [--no-http] [--threads 1]
                                    [--models DIR] [--out bench/results/embedding.json]

All backends (torch, the reference; onnx fp32; onnx-int8) are measured in one run,
interleaved round by round, so that the load other jobs put on this shared machine falls
on all of them alike; read the ratios to torch rather than absolute numbers.

In this process, on the embedder directly:

* single-query forward: ``embed([text])`` of one short unique query, p50;
* per-query latency through a :class:`semcache.batching.MicroBatcher` at concurrency 1
  (p50, p99): what a lone request pays, batcher overhead included;
* throughput through the MicroBatcher at concurrency 1, 8, 32 (closed-loop clients, unique
  texts, no memo): queries per second;
* the ceiling of that throughput on this machine, without batcher or event loop: the same
  texts embedded one at a time, in batches of 32 on one thread, and in batches of 32 on
  two threads at once (each its own instance of the backend); the last over the first is
  the most that batching across requests plus every core can give at concurrency 32
  against concurrency 1;
* quality against torch: the lowest and mean cosine over the langcache sentences in padded
  batches of 32; hit rate (recall) and precision at threshold 0.90 of each langcache and
  QQP-test pair (the pair-cosine protocol of ../shared/data/README.md), and the hit rate
  at the reference's precision (the backend's own threshold chosen to match it).

Through the sidecar (``semcache serve`` per backend in front of the fake upstream; skip
with ``--no-http``): semantic-hit latency at concurrency 1 (client and in-server p50/p99)
and semantic-hit throughput at concurrency 1, 8, 32, embedding through the sidecar's
MicroBatcher.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from semcache.batching import MicroBatcher
from semcache.embedding import Embedder, load_embedder

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
BACKENDS = ("torch", "onnx", "onnx-int8")
THRESHOLD = 0.90


# ---------------------------------------------------------------------- data
def langcache_rows() -> list[tuple[str, str, int]]:
    with (DATA / "langcache" / "chatgpt.csv").open(newline="") as f:
        return [(r["sentence1"], r["sentence2"], int(r["label"])) for r in csv.DictReader(f)]


def qqp_rows(limit: int) -> list[tuple[str, str, int]]:
    rows = []
    with gzip.open(DATA / "qqp" / "qqp_test.jsonl.gz", "rt") as f:
        for line in f:
            r = json.loads(line)
            rows.append((r["text_a"], r["text_b"], int(r["label"])))
            if len(rows) >= limit:
                break
    return rows


def unique_queries(count: int) -> list[str]:
    """Distinct real questions (QQP dev), so no text is embedded twice."""
    seen: dict[str, None] = {}
    with gzip.open(DATA / "qqp" / "qqp_dev.jsonl.gz", "rt") as f:
        for line in f:
            r = json.loads(line)
            for t in (r["text_a"], r["text_b"]):
                if len(t) < 120:
                    seen.setdefault(t, None)
            if len(seen) >= count:
                break
    return list(seen)[:count]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# ------------------------------------------------------------- measurements
def forward_ms(embedders: dict[str, Embedder], texts: list[str], rounds: int) -> dict[str, float]:
    """p50 of ``embed([text])``, backends interleaved per round."""
    times: dict[str, list[float]] = {name: [] for name in embedders}
    per = max(1, len(texts) // rounds)
    for r in range(rounds):
        chunk = texts[r * per:(r + 1) * per]
        for name, emb in embedders.items():
            for text in chunk:
                t = time.perf_counter()
                emb.embed([text])
                times[name].append((time.perf_counter() - t) * 1000)
    return {name: statistics.median(v) for name, v in times.items()}


def _rate(emb: Embedder, texts: Sequence[str], batch: int) -> float:
    """Texts per second embedding ``texts`` in consecutive batches of ``batch``."""
    t = time.perf_counter()
    for i in range(0, len(texts), batch):
        emb.embed(list(texts[i:i + batch]))
    return len(texts) / (time.perf_counter() - t)


def ceiling(embedders: dict[str, Embedder], seconds: dict[str, Embedder],
            texts: list[str]) -> dict[str, dict[str, float]]:
    """Per backend, queries/s over ``texts``: one at a time (``single``), batches of 32 on
    one thread (``batch32``), and batches of 32 on two threads at once, ``embedders[b]``
    and ``seconds[b]`` each embedding all of ``texts`` (``batch32_two_threads``)."""
    out: dict[str, dict[str, float]] = {}
    for name, emb in embedders.items():
        single = _rate(emb, texts, 1)
        one = _rate(emb, texts, 32)
        with ThreadPoolExecutor(2) as pool:
            t = time.perf_counter()
            list(pool.map(lambda e: _rate(e, texts, 32), (emb, seconds[name])))
            two = 2 * len(texts) / (time.perf_counter() - t)
        out[name] = {"single": single, "batch32": one, "batch32_two_threads": two}
    return out


async def batched_latency(embed: Callable[[list[str]], np.ndarray], texts: list[str]) -> list[float]:
    batcher = MicroBatcher(embed)
    out = []
    try:
        for text in texts:
            t = time.perf_counter()
            await batcher.embed(text)
            out.append((time.perf_counter() - t) * 1000)
    finally:
        batcher.close()
    return out


async def batched_throughput(embed: Callable[[list[str]], np.ndarray], texts: list[str],
                             concurrency: int) -> tuple[float, float]:
    """(queries per second, mean texts per forward pass) with ``concurrency`` clients."""
    batcher = MicroBatcher(embed, max_batch=32)
    queue = list(texts)

    async def client() -> None:
        while queue:
            await batcher.embed(queue.pop())

    try:
        t = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t
    finally:
        batcher.close()
    return len(texts) / elapsed, batcher.stats.embedded / max(1, batcher.stats.batches)


def pair_metrics(sims: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    """(hit rate on positives, precision of hits) when ``sims >= threshold`` is a hit."""
    hits = sims >= threshold
    recall = float((hits & (labels == 1)).sum() / max(1, (labels == 1).sum()))
    precision = float((hits & (labels == 1)).sum() / max(1, hits.sum()))
    return recall, precision


def recall_at_precision(sims: np.ndarray, labels: np.ndarray, precision: float) -> tuple[float, float]:
    """(threshold, hit rate): the highest hit rate over thresholds 0.700..0.999 whose
    precision is at least ``precision``."""
    best = (1.0, 0.0)
    for t in np.arange(0.70, 1.0, 0.001):
        r, p = pair_metrics(sims, labels, float(t))
        if p >= precision and r > best[1]:
            best = (float(t), r)
    return best


def quality(embedders: dict[str, Embedder], n_qqp: int) -> dict[str, Any]:
    sets = {"langcache": langcache_rows(), "qqp_test": qqp_rows(n_qqp)}
    out: dict[str, Any] = {}
    vectors: dict[str, dict[str, np.ndarray]] = {}
    for set_name, rows in sets.items():
        texts = sorted({t for a, b, _ in rows for t in (a, b)})
        order = np.random.default_rng(0).permutation(len(texts))
        shuffled = [texts[i] for i in order]  # padded batches of mixed lengths
        index = {t: i for i, t in enumerate(shuffled)}
        labels = np.array([lab for _, _, lab in rows])
        for name, emb in embedders.items():
            vec = np.concatenate([emb.embed(shuffled[i:i + 32]) for i in range(0, len(shuffled), 32)])
            vectors.setdefault(set_name, {})[name] = vec
            a = vec[[index[x] for x, _, _ in rows]]
            b = vec[[index[y] for _, y, _ in rows]]
            sims = (a * b).sum(axis=1)
            recall, precision = pair_metrics(sims, labels, THRESHOLD)
            entry: dict[str, Any] = {"hit_rate": recall, "precision": precision, "sims": sims}
            if name != "torch":
                cos = (vec * vectors[set_name]["torch"]).sum(axis=1)
                entry["cos_min"] = float(cos.min())
                entry["cos_mean"] = float(cos.mean())
                padded = getattr(emb, "embed_padded", None)
                if padded is not None:  # one pass per 32 texts, padded to the longest
                    pv = np.concatenate([padded(shuffled[i:i + 32]) for i in range(0, len(shuffled), 32)])
                    entry["cos_min_padded"] = float((pv * vectors[set_name]["torch"]).sum(axis=1).min())
            out.setdefault(set_name, {})[name] = entry
        ref = out[set_name]["torch"]
        for name in embedders:
            t, r = recall_at_precision(out[set_name][name]["sims"], labels, ref["precision"])
            out[set_name][name]["threshold_at_ref_precision"] = t
            out[set_name][name]["hit_rate_at_ref_precision"] = r
        for name in embedders:
            del out[set_name][name]["sims"]
    return out


# --------------------------------------------------------------------- HTTP
async def http_backend(backend: str, models: Path, n: int) -> dict[str, Any]:
    """Semantic hits through a ``semcache serve`` of ``backend`` (bench_proxy helpers)."""
    from bench import bench_proxy as bp

    tmp = tempfile.TemporaryDirectory(prefix="semcache-bench-emb-")
    procs = []
    try:
        fport, sport = bp.free_port(), bp.free_port()
        procs.append(bp.start(["fake-upstream", "--port", str(fport)]))
        procs.append(bp.start([
            "serve", "--upstream", f"http://127.0.0.1:{fport}", "--port", str(sport),
            "--data-dir", f"{tmp.name}/data", "--sync", "off", "--log-level", "warning",
            "--lookup-timeout", "5", "--embedding-backend", backend,
            "--embedding-cache-dir", str(models)]))
        bp.wait_ready(f"http://127.0.0.1:{fport}", "/v1/models")
        side = f"http://127.0.0.1:{sport}"
        bp.wait_ready(side, "/readyz")
        pairs = bp.langcache_pairs()
        mock = bp.gptcache_pairs()
        await bp.store_all(side, sorted({a for a, _ in pairs}) + [a for a, _ in mock[: 3 * n]])
        await bp.sequential(side, [a for a, _ in mock[:20]], None)  # warm-up
        hit = await bp.sequential(side, [b for _, b in pairs][: 2 * n], "hit",
                                  {"Cache-Control": "no-store"})
        queries = [b for _, b in mock[: 3 * n]]
        tput = {}
        for level, c in enumerate((1, 8, 32)):
            tput[c] = await bp.throughput(side, queries[level * n:(level + 1) * n], c,
                                          {"Cache-Control": "no-store"})
        return {"semantic_hit": hit, "semantic_hit_rps": tput}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        tmp.cleanup()


# --------------------------------------------------------------------- main
async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    models = args.models
    embedders: dict[str, Embedder] = {}
    for backend in BACKENDS:
        t = time.perf_counter()
        embedders[backend] = load_embedder(backend=backend, threads=args.threads, cache_dir=models)
        print(f"loaded {embedders[backend].name} in {time.perf_counter() - t:.1f}s", flush=True)
    n = 48 if args.quick else 160
    texts = unique_queries(n * 22 + 100)  # each text used for one measurement only
    pool = iter(texts)
    for emb in embedders.values():  # warm-up
        emb.embed([next(pool) for _ in range(8)])
        for _ in range(5):
            emb.embed([next(pool)])
    res: dict[str, Any] = {"threads": args.threads, "backends": {}}
    fwd = forward_ms(embedders, [next(pool) for _ in range(n)], rounds=8)
    for name, emb in embedders.items():
        lat = await batched_latency(emb.embed, [next(pool) for _ in range(n)])
        res["backends"][name] = {"name": emb.name, "forward_ms": fwd[name],
                                 "batcher_c1_p50_ms": statistics.median(lat),
                                 "batcher_c1_p99_ms": pct(lat, 0.99), "rps": {}, "batch": {}}
    for c in (1, 8, 32):  # interleaved by concurrency level
        k = n if c == 1 else 2 * n
        for name, emb in embedders.items():
            rps, mean_batch = await batched_throughput(emb.embed, [next(pool) for _ in range(k)], c)
            res["backends"][name]["rps"][c] = rps
            res["backends"][name]["batch"][c] = mean_batch
    seconds = {backend: load_embedder(backend=backend, threads=args.threads, cache_dir=models)
               for backend in BACKENDS}
    res["ceiling"] = ceiling(embedders, seconds, [next(pool) for _ in range(n * 2)])
    del seconds
    print(f"speed measured after {time.perf_counter() - started:.0f}s", flush=True)
    res["quality"] = quality(embedders, 500 if args.quick else 2000)
    print(f"quality measured after {time.perf_counter() - started:.0f}s", flush=True)
    if not args.no_http:
        res["http"] = {}
        for backend in BACKENDS:
            res["http"][backend] = await http_backend(backend, models, 24 if args.quick else 60)
            print(f"http {backend} measured after {time.perf_counter() - started:.0f}s", flush=True)
    res["seconds"] = time.perf_counter() - started
    return res


def report(r: dict[str, Any]) -> str:
    b = r["backends"]
    ref = b["torch"]
    lines = [f"intra-op threads per forward pass: {r['threads']}", "",
             "| backend | forward, 1 query ms | batcher c=1 p50 ms | p99 ms | q/s c=1 | q/s c=8 | q/s c=32 "
             "| c=32 / c=1 | mean batch c=32 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, d in b.items():
        lines.append(
            f"| {name} | {d['forward_ms']:.2f} ({ref['forward_ms'] / d['forward_ms']:.1f}x) "
            f"| {d['batcher_c1_p50_ms']:.2f} | {d['batcher_c1_p99_ms']:.2f} "
            f"| {d['rps'][1]:.0f} | {d['rps'][8]:.0f} | {d['rps'][32]:.0f} ({d['rps'][32] / ref['rps'][32]:.1f}x) "
            f"| {d['rps'][32] / d['rps'][1]:.1f} | {d['batch'][32]:.1f} |")
    if "ceiling" in r:
        lines += ["", "| backend, on the embedder directly | q/s one at a time | batches of 32 "
                  "| batches of 32 on 2 threads | ceiling of c=32 / c=1 |", "|---|---|---|---|---|"]
        for name, c in r["ceiling"].items():
            lines.append(f"| {name} | {c['single']:.0f} | {c['batch32']:.0f} "
                         f"({c['batch32'] / c['single']:.2f}x) | {c['batch32_two_threads']:.0f} "
                         f"| {c['batch32_two_threads'] / c['single']:.2f} |")
    lines += ["", "| backend | set | cosine to torch: min / mean (min, padded batches) | hit rate @0.90 "
              "| precision @0.90 | best hit rate at torch's precision @0.90 (threshold) |",
              "|---|---|---|---|---|---|"]
    for set_name, by_backend in r["quality"].items():
        for name, q in by_backend.items():
            cos = (f"{q['cos_min']:.4f} / {q['cos_mean']:.4f} ({q['cos_min_padded']:.4f})"
                   if "cos_min" in q else "-")
            lines.append(f"| {name} | {set_name} | {cos} | {q['hit_rate']:.3f} | {q['precision']:.3f} "
                         f"| {q['hit_rate_at_ref_precision']:.3f} ({q['threshold_at_ref_precision']:.3f}) |")
    if "http" in r:
        lines += ["", "| backend, through `semcache serve` | semantic hit p50 ms | p99 ms "
                  "| in-server p50 ms | in-server p99 ms | hits/s c=1 | c=8 | c=32 |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, h in r["http"].items():
            s = h["semantic_hit"]
            rps = h["semantic_hit_rps"]
            lines.append(f"| {name} (n={s['n']}) | {s['p50']:.2f} | {s['p99']:.2f} "
                         f"| {s.get('server_p50', float('nan')):.2f} | {s.get('server_p99', float('nan')):.2f} "
                         f"| {rps[1]:.0f} | {rps[8]:.0f} | {rps[32]:.0f} |")
    lines.append(f"\n(run took {r['seconds']:.0f}s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer queries (about a minute)")
    parser.add_argument("--no-http", action="store_true", help="skip the sidecar measurements")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (the default setting: 1)")
    parser.add_argument("--models", type=Path, default=ROOT / "semcache-data" / "models",
                        help="where ONNX exports are cached (exported on first use)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "embedding.json")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
