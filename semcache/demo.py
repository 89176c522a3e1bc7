"""``semcache demo``: the library on the real model, FAISS and LMDB, in one minute.

Stores a few answers, then asks paraphrases (which should hit) and near-misses (which
should not), printing each decision with the similarity of the nearest stored question —
for misses too — and, when the near-miss guard refused a match above the threshold, why:
``MISS (guard: numbers differ)  0.981``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

from .cache import SemanticCache
from .guard import conflict
from .keys import CacheRequest
from .settings import Settings

__all__ = ["run_demo"]

STORED = [
    ("What is the capital of France?", "Paris."),
    ("python sort list ascending", "Use sorted(xs) or xs.sort()."),
    ("How do I reverse a string in Python?", "Use s[::-1]."),
    ("GDP of Japan in 2020", "About 5.0 trillion US dollars."),
    ("download TensorFlow 2.12 wheels", "pip download tensorflow==2.12.*"),
]

QUESTIONS = [
    ("What is the capital of France?", "exact repeat"),
    ("how to sort a list in python ascending", "paraphrase"),
    ("Japan GDP for year 2020", "paraphrase"),
    ("How can I reverse a string in python", "paraphrase"),
    ("python reverse sort list", "near-miss"),
    ("What is the population of France?", "near-miss"),
    ("download TensorFlow 2.13 wheels", "near-miss"),  # cosine 0.98: the guard refuses it
    ("download TensorFlow 2.12 wheels", "exact repeat"),
]


def _answer(question: str, text: str) -> dict[str, object]:
    return {
        "id": "chatcmpl-demo", "object": "chat.completion", "created": int(time.time()),
        "model": "demo-model",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": len(question.split()), "completion_tokens": len(text.split()),
                  "total_tokens": len(question.split()) + len(text.split())},
    }


def run_demo(settings: Settings | None = None, out: TextIO | None = None) -> int:
    """Run the demo with ``settings`` in a fresh temporary data directory.  The ONNX
    export (default backend) is kept where the settings put it (``<data_dir>/models``), so
    only the first run pays for it."""
    out = out or sys.stdout
    base = settings or Settings()
    with tempfile.TemporaryDirectory(prefix="semcache-demo-") as tmp:
        cfg = base.replace(data_dir=Path(tmp), embedding_cache_dir=base.model_dir)
        t0 = time.perf_counter()
        with SemanticCache(cfg) as cache:
            print(f"loaded {cache.embedder.name} (dim {cache.embedder.dim}) and store at "
                  f"{cfg.data_dir} in {time.perf_counter() - t0:.1f}s; "
                  f"threshold {cfg.threshold}", file=out)
            for question, text in STORED:
                req = cache.request("/v1/chat/completions", _chat(question))
                cache.store(req, _answer(question, text))
            print(f"stored {len(STORED)} answers\n", file=out)
            print(f"{'decision':<{_WIDTH}} {'match':<9} {'sim':>6}  {'kind':<13} "
                  "question -> answer (or nearest stored question)", file=out)
            for question, kind in QUESTIONS:
                req = cache.request("/v1/chat/completions", _chat(question))
                refused = cache.guard_rejections
                t = time.perf_counter()
                hit = cache.lookup(req)
                ms = (time.perf_counter() - t) * 1000
                if hit is None:
                    sim, nearest = _nearest(cache, req)
                    decision = "MISS"
                    if cache.guard_rejections > refused and nearest is not None:
                        why = conflict(question, nearest) or "refused"
                        decision = f"MISS (guard: {why.split(':')[0]})"
                    shown = f"{sim:6.3f}" if sim is not None else f"{'-':>6}"
                    tail = f"  (nearest: {nearest})" if nearest is not None else ""
                    print(f"{decision:<{_WIDTH}} {'-':<9} {shown}  {kind:<13} {question}{tail}  "
                          f"({ms:.1f} ms)", file=out)
                else:
                    answer = hit.json()["choices"][0]["message"]["content"]
                    print(f"{'HIT':<{_WIDTH}} {hit.match:<9} {hit.similarity:6.3f}  {kind:<13} "
                          f"{question} -> {answer}  ({ms:.1f} ms)", file=out)
    return 0


_WIDTH = 30  # the decision column: "MISS (guard: identifiers differ)" and the like


def _nearest(cache: SemanticCache, req: CacheRequest) -> tuple[float | None, str | None]:
    """Similarity and text of the most similar live entry of ``req``'s scope, whatever the
    threshold (what a miss missed by); ``(None, None)`` when the scope is empty."""
    if not req.semantic_text:
        return None, None
    found = cache.index.search(req.scope, cache.embed(req.semantic_text), -1.0, cache.clock())
    if found.entry_id < 0:
        return None, None
    record = cache.store_db.get(found.entry_id)
    return min(1.0, float(found.score)), record.text if record is not None else None


def _chat(question: str) -> dict[str, object]:
    return {"model": "demo-model", "messages": [{"role": "user", "content": question}]}
