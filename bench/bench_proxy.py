"""Latency and throughput of the sidecar against the fake upstream, in one run.

    python -m bench.bench_proxy [--n 200] [--out bench/results/proxy.json]

Starts two fake upstreams (0 ms and 200 ms answers) and one sidecar in front of each, all
as separate processes on 127.0.0.1, then measures with an aiohttp client:

* the reference: one embedding of one short query (the same model, in this process),
  before and after the rest;
* direct calls to the fake upstream, the same through the sidecar as a bare proxy
  (``Cache-Control: no-cache, no-store``), misses through the sidecar and one embedding
  here, interleaved in one sequence (overhead = the difference of medians, held against
  the embeddings of the same rounds; ``Server-Timing: cache`` gives the part spent inside
  semcache), and what handing a lookup to the embedding thread and back costs here around
  a busy pass of the embedding's length (after the same idle);
* exact hits and semantic hits (langcache paraphrases; unique texts, so no memo helps);
* throughput at concurrency 1, 16, 64 for exact hits, semantic hits (gptcache mock
  paraphrases, each asked once; the rows include the paraphrases that fall below the
  threshold, as traffic does) and misses.

Every latency is also printed as a ratio to the embedding, since this machine is shared
and absolute numbers drift between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
MODELS = ROOT / "semcache-data" / "models"  # ONNX exports, shared by the sidecars (made once)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, path: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + path, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


def start(args: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "semcache", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def chat(text: str) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}


async def one(session: aiohttp.ClientSession, url: str, text: str,
              headers: dict[str, str] | None = None) -> tuple[float, str, float | None]:
    """(client ms, X-Semcache-Status, server 'cache' ms)."""
    t = time.perf_counter()
    async with session.post(url + "/v1/chat/completions", json=chat(text),
                            headers=headers or {}) as r:
        await r.read()
        assert r.status == 200, r.status
        ms = (time.perf_counter() - t) * 1000
        status = r.headers.get("X-Semcache-Status", "")
        server = None
        for part in r.headers.get("Server-Timing", "").split(","):
            name, _, dur = part.strip().partition(";dur=")
            if name == "cache":
                server = float(dur)
        return ms, status, server


def summary(client_ms: list[float], server_ms: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(client_ms),
                           "p50": statistics.median(client_ms), "p99": pct(client_ms, 0.99)}
    if server_ms:
        out["server_p50"] = statistics.median(server_ms)
        out["server_p99"] = pct(server_ms, 0.99)
    return out


async def sequential(url: str, texts: list[str], want: str | None,
                     headers: dict[str, str] | None = None) -> dict[str, Any]:
    client_ms, server_ms = [], []
    async with aiohttp.ClientSession() as s:
        for text in texts:
            ms, status, server = await one(s, url, text, headers)
            if want is None or status == want:
                client_ms.append(ms)
                if server is not None:
                    server_ms.append(server)
    return summary(client_ms, server_ms)


BYPASS = {"Cache-Control": "no-cache, no-store"}  # the sidecar as a bare proxy


async def interleaved(direct_url: str, side_url: str, texts: list[str],
                      embed: Callable[[list[str]], Any]) -> dict[str, dict[str, Any]]:
    """Rounds of four legs, each with its own text: straight to the upstream ("direct"),
    through the sidecar as a bare proxy ("bypass": no lookup, no store), through the
    sidecar ("miss", counted when it was one), and one embedding of the text in this
    process ("embed": the reference the miss overhead is held against), so all see the
    same state of this shared machine.  Each round takes its own (seeded) order, so no leg
    always follows another (a miss's store runs after its response).  Behind a slow
    upstream every embedding follows a wait for it, as a miss's does."""
    legs: list[tuple[str, str, dict[str, str] | None, str | None]] = [
        ("direct", direct_url, None, None), ("bypass", side_url, BYPASS, "bypass"),
        ("miss", side_url, None, "miss"), ("embed", "", None, None)]
    got: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name, *_ in legs}
    rng = random.Random(0)
    async with aiohttp.ClientSession() as s:
        for r in range(len(texts) // 4):
            order = rng.sample(legs, len(legs))
            for j, (name, url, headers, want) in enumerate(order):
                text = texts[4 * r + j]
                if name == "embed":
                    t = time.perf_counter()
                    embed([text])
                    got[name][0].append((time.perf_counter() - t) * 1000)
                    continue
                ms, status, server = await one(s, url, text, headers)
                if want is None or status == want:
                    got[name][0].append(ms)
                    if server is not None:
                        got[name][1].append(server)
    return {name: summary(*values) for name, values in got.items()}


async def throughput(url: str, texts: list[str], concurrency: int,
                     headers: dict[str, str] | None = None) -> float:
    queue = list(texts)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        async def worker() -> None:
            while queue:
                await one(s, url, queue.pop(), headers)

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(texts) / (time.perf_counter() - t)


def distinct_questions(count: int) -> list[str]:
    """Real, mutually different questions (QQP dev), so misses stay misses."""
    import gzip

    seen: dict[str, None] = {}
    with gzip.open(DATA / "qqp" / "qqp_dev.jsonl.gz", "rt") as f:
        for line in f:
            row = json.loads(line)
            if row["label"] == 0:
                seen.setdefault(row["text_a"], None)
                if len(seen) >= count:
                    break
    return list(seen)


def gptcache_pairs() -> list[tuple[str, str]]:
    rows = json.loads((DATA / "gptcache" / "mock_data.json").read_text())
    return [(r["origin"], r["similar"]) for r in rows]


def langcache_pairs() -> list[tuple[str, str]]:
    with (DATA / "langcache" / "chatgpt.csv").open(newline="") as f:
        return [(r["sentence1"], r["sentence2"]) for r in csv.DictReader(f) if r["label"] == "1"]


async def store_all(url: str, texts: list[str]) -> None:
    async with aiohttp.ClientSession() as s:
        for text in texts:
            await one(s, url, text)
    await asyncio.sleep(1.0)  # stores happen off the response path


def load_reference_embedder() -> Any:
    """The sidecar's embedder with its defaults (same model, backend and threads), warm."""
    from semcache.embedding import load_embedder
    from semcache.settings import Settings

    cfg = Settings()
    emb = load_embedder(cfg.embedding_model, backend=cfg.embedding_backend,
                        device=cfg.embedding_device, threads=cfg.embedding_threads,
                        cache_dir=MODELS)
    emb.embed([f"How do I sort a list of {i} numbers in python?" for i in range(5)])
    return emb


def embedding_reference(emb: Any, reps: int = 100) -> dict[str, float]:
    """One embedding of one short query: p50/p99 ms over ``reps``."""
    times = []
    for i in range(reps):
        t = time.perf_counter()
        emb.embed([f"How do I sort a list of {i} numbers in python?"])
        times.append((time.perf_counter() - t) * 1000)
    return {"p50": statistics.median(times), "p99": pct(times, 0.99)}


async def handoff_reference(reps: int, idle: float, pass_ms: float) -> dict[str, float]:
    """What a lookup pays to hand its text to the embedding thread and get the outcome
    back, beyond the pass itself: ``MicroBatcher.embed_then`` over a pass that keeps its
    thread busy for ``pass_ms`` (as a forward pass does; a CPU left idle that long sleeps
    deeper, and waking it costs more) and a search that does nothing, each call after
    ``idle`` seconds.  p50/p99 ms of the call minus ``pass_ms``, in this process."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from semcache.batching import MicroBatcher

    def busy_pass(texts: list[str]) -> np.ndarray:
        end = time.perf_counter() + pass_ms / 1000
        while time.perf_counter() < end:
            pass
        return np.zeros((len(texts), 384), dtype=np.float32)

    batcher = MicroBatcher(busy_pass)
    pool = ThreadPoolExecutor(1)
    times = []
    try:
        for i in range(reps):
            await asyncio.sleep(idle)
            t = time.perf_counter()
            await batcher.embed_then(f"text {i}", lambda vec: None, pool)
            times.append((time.perf_counter() - t) * 1000 - pass_ms)
    finally:
        batcher.close()
        pool.shutdown()
    return {"p50": statistics.median(times), "p99": pct(times, 0.99)}


async def run(n: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    emb = load_reference_embedder()
    before = embedding_reference(emb)
    procs = []
    tmp = tempfile.TemporaryDirectory(prefix="semcache-bench-")
    try:
        urls = {}
        for latency in (0.0, 0.2):
            fport, sport = free_port(), free_port()
            procs.append(start(["fake-upstream", "--port", str(fport), "--latency", str(latency)]))
            procs.append(start(["serve", "--upstream", f"http://127.0.0.1:{fport}", "--port",
                                str(sport), "--data-dir", f"{tmp.name}/{latency}", "--sync", "off",
                                "--log-level", "warning", "--lookup-timeout", "5",
                                "--embedding-cache-dir", str(MODELS)]))
            wait_ready(f"http://127.0.0.1:{fport}", "/v1/models")
            wait_ready(f"http://127.0.0.1:{sport}", "/readyz")
            urls[latency] = (f"http://127.0.0.1:{fport}", f"http://127.0.0.1:{sport}")

        pairs = langcache_pairs()
        anchors = sorted({a for a, _ in pairs})
        mock = gptcache_pairs()
        fresh = iter(distinct_questions(8 * n + 1000))
        for _fake, side in urls.values():  # warm-up, not measured
            await sequential(side, [next(fresh) for _ in range(50)], None,
                             {"Cache-Control": "no-store"})
        for latency, (fake, side) in urls.items():
            tag = f"upstream_{int(latency * 1000)}ms"
            k = n if latency == 0 else max(20, n // 4)
            legs = await interleaved(fake, side, [next(fresh) for _ in range(4 * k)], emb.embed)
            direct, miss = legs["direct"], legs["miss"]
            results[tag] = {"direct": direct, "bypass": legs["bypass"], "miss": miss,
                            "embed": legs["embed"],
                            "miss_overhead_p50": miss["p50"] - direct["p50"],
                            "miss_overhead_p99": miss["p99"] - direct["p99"],
                            "proxy_overhead_p50": legs["bypass"]["p50"] - direct["p50"],
                            "handoff": await handoff_reference(
                                100 if latency == 0 else 30, max(latency, 0.002),
                                legs["embed"]["p50"])}
        fake, side = urls[0.0]
        await store_all(side, anchors + [a for a, _ in mock])
        results["exact_hit"] = await sequential(side, [anchors[i % len(anchors)] for i in range(n)],
                                                "hit")
        results["semantic_hit"] = await sequential(
            side, [b for _, b in pairs], "hit", {"Cache-Control": "no-store"})
        tput: dict[str, dict[int, float]] = {"exact hit": {}, "semantic hit": {},
                                             "miss, not stored": {}, "miss, stored": {}}
        queries = [b for _, b in mock]  # each used once: the embedding memo must not help
        third = len(queries) // 3
        for level, c in enumerate((1, 16, 64)):
            tput["exact hit"][c] = await throughput(side, [anchors[i % len(anchors)]
                                                           for i in range(max(n, 4 * c))], c)
            tput["semantic hit"][c] = await throughput(
                side, queries[level * third:(level + 1) * third], c, {"Cache-Control": "no-store"})
            tput["miss, not stored"][c] = await throughput(
                side, [next(fresh) for _ in range(max(n // 2, 2 * c))], c,
                {"Cache-Control": "no-store"})
            tput["miss, stored"][c] = await throughput(
                side, [next(fresh) for _ in range(max(n // 2, 2 * c))], c)
        results["throughput_rps"] = tput
        after = embedding_reference(emb)
        # the machine is shared: take the quieter of the two reference measurements
        results["embed_one_query_ms"] = min(before, after, key=lambda d: d["p50"])
        results["embed_one_query_ms_runs"] = [before, after]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        tmp.cleanup()
    return results


def report(r: dict[str, Any]) -> str:
    e = r["embed_one_query_ms"]["p50"]
    lines = [f"reference: one embedding of one query p50 {e:.2f} ms "
             f"(p99 {r['embed_one_query_ms']['p99']:.2f} ms)", "",
             "| case | client p50 ms | client p99 ms | in-server p50 ms | in-server p99 ms "
             "| p50 / embedding |", "|---|---|---|---|---|---|"]

    def row(name: str, d: dict[str, Any]) -> None:
        sp50 = f"{d['server_p50']:.3f}" if "server_p50" in d else "-"
        sp99 = f"{d['server_p99']:.3f}" if "server_p99" in d else "-"
        lines.append(f"| {name} (n={d['n']}) | {d['p50']:.2f} | {d['p99']:.2f} | {sp50} | {sp99} "
                     f"| {d['p50'] / e:.2f} |")

    row("exact hit", r["exact_hit"])
    row("semantic hit", r["semantic_hit"])
    for tag in ("upstream_0ms", "upstream_200ms"):
        row(f"direct to fake upstream, {tag}", r[tag]["direct"])
        if "bypass" in r[tag]:
            row(f"through semcache as a bare proxy (no-cache, no-store), {tag}", r[tag]["bypass"])
        row(f"miss through semcache, {tag}", r[tag]["miss"])
    lines += ["", "| miss overhead (miss - direct) | p50 ms | p99 ms "
              "| one embedding in the same rounds, p50 ms | p50 / that embedding "
              "| target: embedding + 2 ms | met | of it: the bare proxy hop (bypass - direct) "
              "| the hand-off to the embedding thread and back | the rest |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for tag in ("upstream_0ms", "upstream_200ms"):
        d = r[tag]
        ref = d["embed"]["p50"]
        ov, ov99 = d["miss_overhead_p50"], d.get("miss_overhead_p99", float("nan"))
        hop = d.get("proxy_overhead_p50", float("nan"))
        handoff = d.get("handoff", {}).get("p50", float("nan"))
        lines.append(f"| {tag} | {ov:.2f} | {ov99:.2f} | {ref:.2f} | {ov / ref:.2f} | {ref + 2:.2f} "
                     f"| {'yes' if ov <= ref + 2 else 'no'} | {hop:.2f} | {handoff:.2f} "
                     f"| {ov - ref - hop - handoff:.2f} |")
    lines += ["", "| throughput (requests/s; x embedding rate) | c=1 | c=16 | c=64 | c=64 / c=1 |",
              "|---|---|---|---|---|"]
    for name, by_c in r["throughput_rps"].items():
        lines.append(f"| {name} | " + " | ".join(f"{by_c[c]:.0f} ({by_c[c] * e / 1000:.2f}x)"
                                              for c in (1, 16, 64))
                     + f" | {by_c[64] / by_c[1]:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="requests per latency case")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "proxy.json")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args.n))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
