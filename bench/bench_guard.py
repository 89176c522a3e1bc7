"""What answer quality costs per lookup, beside one embedding, in one run.

    python -m bench.bench_guard [--n 2000]

Per semantic candidate the sidecar runs the near-miss guard on the query (its facts are
cached per text: every new query pays once, stored texts are cached), observes the pair
(lexical features, fp16 copies of both vectors) and asks the policy (static; similarity
calibrated; linear; the pair network ensemble).  Each is timed on langcache queries that
were never seen before, interleaved with one embedding of one query on the default
backend, and reported as a share of that embedding.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
MODELS = ROOT / "semcache-data" / "models"


def main(argv: list[str] | None = None) -> int:
    from semcache import guard
    from semcache.embedding import load_embedder
    from semcache.features import observe, rows
    from semcache.learner import Calibration, LinearScorer, PairScorer
    from semcache.policy import Model, Policy
    from semcache.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="candidates timed per case")
    args = parser.parse_args(argv)
    cfg = Settings()
    emb = load_embedder(cfg.embedding_model, backend=cfg.embedding_backend,
                        threads=cfg.embedding_threads, cache_dir=MODELS)
    with (DATA / "langcache" / "chatgpt.csv").open(newline="") as f:
        pairs = [(r["sentence1"], r["sentence2"]) for r in csv.DictReader(f)]
    n = args.n
    queries = [f"{b} (variant {i})" for i, (_, b) in enumerate(pairs * (n // len(pairs) + 1))][:n]
    entries = [a for a, _ in pairs * (n // len(pairs) + 1)][:n]
    vq, ve = emb.embed(queries[:64]), emb.embed(entries[:64])
    for e in set(entries):
        guard.facts(e)  # stored texts: analysed once, then cached

    rng = np.random.default_rng(0)
    width = 1 + 3 * emb.dim + 5
    x = rng.normal(size=(3000, width)).astype(np.float32)
    y = (rng.uniform(size=3000) < 0.6).astype(float)
    cal = Calibration.fit(rng.uniform(size=3000), y, np.ones(3000))
    lin = tuple(LinearScorer.fit(x, y, np.ones(3000), steps=50) for _ in range(5))
    pair = tuple(PairScorer.fit(x, y, np.ones(3000), epochs=1, seed=k) for k in range(5))
    policies = {"static": Model("static", None), "similarity": Model("similarity", cal),
                "linear": Model("linear", cal, linear=lin), "pair": Model("pair", cal, pair)}

    times: dict[str, list[float]] = {"embedding": [], "guard": [], "observe": []}
    times.update({f"decide ({k})": [] for k in policies})
    policy = Policy(dim=emb.dim)
    for i in range(n):
        t = time.perf_counter()
        emb.embed([queries[i] + " x"])
        times["embedding"].append(time.perf_counter() - t)
        t = time.perf_counter()
        objection = guard.conflict(queries[i], entries[i])
        times["guard"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ob = observe(queries[i], entries[i], vq[i % 64], ve[i % 64],
                     float(vq[i % 64] @ ve[i % 64]), objection is not None)
        times["observe"].append(time.perf_counter() - t)
        for name, model in policies.items():
            policy.model = model
            t = time.perf_counter()
            policy.decide(ob, entry_id=i)
            times[f"decide ({name})"].append(time.perf_counter() - t)
    assert rows([ob]).shape[1] == width
    ref = statistics.median(times["embedding"])
    print(f"one embedding of one query ({emb.name}): p50 {ref * 1e3:.3f} ms\n")
    print("| step per candidate | p50 µs | p99 µs | p50 / embedding |\n|---|---|---|---|")
    for name, ts in times.items():
        s = sorted(ts)
        print(f"| {name} | {statistics.median(s) * 1e6:.1f} | {s[int(0.99 * len(s))] * 1e6:.1f} "
              f"| {statistics.median(s) / ref:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
