"""Choosing the similarity threshold from labeled pairs (``semcache calibrate``).

The cache protocol of the data README, computed offline with the cache's own embedder
(much faster than HTTP, same numbers up to float rounding): every pair's first text is
an entry of one scope, every second text a query.  A query whose text is identical to an
entry's is an exact hit (similarity 1.0); otherwise its best match is the most similar
entry, as the cache's exact scan would find it.  The match is correct when the entry's
label is the query's (:class:`semcache.bench_workloads.Labels`: the pair's own first
text, an identical text, or one linked by duplicate pairs) — the same rule as the replay.

The threshold chosen is the *lowest* grid value (steps of 0.005 from 0.50) whose
precision on the dev pairs reaches the target — the most hits for that precision.  It is
then reported on the test pairs, which played no part in choosing it.  Dev and test are
cut with :func:`semcache.bench_workloads.is_test_pair`, so several files (QQP dev and
test) or one file with both splits (langcache) work alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bench_workloads import Pair, pair_labels, read_pairs, split_pairs
from .embedding import Embedder
from .guard import conflict

__all__ = ["Scored", "score_pairs", "pick_threshold", "evaluate", "Calibration", "calibrate",
           "GRID"]

GRID: tuple[float, ...] = tuple(round(0.50 + 0.005 * i, 3) for i in range(101))


@dataclass(frozen=True)
class Scored:
    """The best match of one query: its similarity and whether serving it is correct."""

    similarity: float
    correct: bool
    positive: bool


@dataclass(frozen=True)
class Evaluation:
    """Numbers of one threshold on one split."""

    threshold: float
    pairs: int
    hits: int
    correct: int
    positives: int

    @property
    def precision(self) -> float:
        return self.correct / self.hits if self.hits else 1.0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.pairs if self.pairs else 0.0

    @property
    def recall(self) -> float:
        return self.correct / self.positives if self.positives else 0.0

    @property
    def wrong_per_1k(self) -> float:
        return 1000.0 * (self.hits - self.correct) / self.pairs if self.pairs else 0.0


def _embed(embedder: Embedder, texts: Sequence[str], progress: Callable[[int], None] | None,
           batch: int = 256) -> np.ndarray:
    out = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    for i in range(0, len(texts), batch):
        out[i:i + batch] = embedder.embed(list(texts[i:i + batch]))
        if progress:
            progress(min(batch, len(texts) - i))
    return out


def score_pairs(pairs: Sequence[Pair], embedder: Embedder,
                progress: Callable[[int], None] | None = None, *,
                guard: bool = True) -> list[Scored]:
    """The best match of every pair's second text among all first texts (module doc).

    With ``guard`` a best match that the near-miss guard refuses scores -1 (never a hit),
    as the cache then answers from upstream instead of trying the next-best entry.
    """
    anchor_labels, query_labels = pair_labels(pairs)
    anchors = list(dict.fromkeys(p.a for p in pairs))  # identical texts: one entry
    where = {a: i for i, a in enumerate(anchors)}
    label_of = dict(zip((p.a for p in pairs), anchor_labels, strict=True))
    queries = list(dict.fromkeys(p.b for p in pairs))
    vecs = _embed(embedder, [t.strip() for t in anchors + queries], progress)
    avec, qvec = vecs[: len(anchors)], vecs[len(anchors):]
    qrow = {q: i for i, q in enumerate(queries)}
    best_sim = np.full(len(queries), -1.0, dtype=np.float32)
    best_idx = np.zeros(len(queries), dtype=np.int64)
    for i in range(0, len(queries), 1024):
        sims = qvec[i:i + 1024] @ avec.T
        best_idx[i:i + 1024] = sims.argmax(axis=1)
        best_sim[i:i + 1024] = sims.max(axis=1)
    out: list[Scored] = []
    for p, want in zip(pairs, query_labels, strict=True):
        if p.b in where:  # exact text match is served before any semantic match
            entry, sim = where[p.b], 1.0
        else:
            row = qrow[p.b]
            entry, sim = int(best_idx[row]), float(min(1.0, best_sim[row]))
            if guard and conflict(p.b.strip(), anchors[entry].strip()) is not None:
                sim = -1.0
        out.append(Scored(sim, label_of[anchors[entry]] == want, bool(p.label)))
    return out


def evaluate(scored: Sequence[Scored], threshold: float) -> Evaluation:
    hits = [s for s in scored if s.similarity >= threshold]
    return Evaluation(threshold, len(scored), len(hits), sum(s.correct for s in hits),
                      sum(s.positive for s in scored))


def pick_threshold(scored: Sequence[Scored], target_precision: float,
                   grid: Sequence[float] = GRID) -> float | None:
    """The lowest grid threshold with at least one hit and precision >= the target."""
    for t in sorted(grid):
        ev = evaluate(scored, t)
        if ev.hits and ev.precision >= target_precision:
            return t
    return None


@dataclass(frozen=True)
class Calibration:
    """The chosen threshold with its numbers on dev (where chosen) and test."""

    target_precision: float
    threshold: float | None
    dev: Evaluation | None
    test: Evaluation | None
    dev_pairs: int
    test_pairs: int

    def summary(self) -> str:
        if self.threshold is None:
            return (f"no threshold reaches precision {self.target_precision:.3f} on "
                    f"{self.dev_pairs} dev pairs")
        lines = [f"threshold {self.threshold:.3f} (target precision {self.target_precision:.3f})"]
        for name, ev, n in (("dev", self.dev, self.dev_pairs), ("test", self.test, self.test_pairs)):
            if ev is None:
                lines.append(f"  {name:<4}: no pairs")
            else:
                lines.append(f"  {name:<4}: {n} pairs, precision {ev.precision:.3f}, hit rate "
                             f"{ev.hit_rate:.3f}, recall {ev.recall:.3f}, wrong hits "
                             f"{ev.wrong_per_1k:.1f} per 1,000 queries")
        return "\n".join(lines)


def calibrate(files: Sequence[Path], target_precision: float, embedder: Embedder, *,
              limit: int | None = None, progress: bool = False,
              guard: bool = True) -> Calibration:
    """Pick the threshold on the dev pairs of ``files``; report it on their test pairs.

    ``limit`` keeps the first pairs of each split (deterministic).  Raises
    :class:`~semcache.bench_workloads.WorkloadError` for an unreadable file and
    ``ValueError`` for a target outside (0, 1] or no dev pairs.
    """
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target precision must be in (0, 1] (got {target_precision})")
    pairs = [p for f in files for p in read_pairs(Path(f))]
    dev, test = split_pairs(pairs, "dev", limit), split_pairs(pairs, "test", limit)
    if not dev:
        raise ValueError("no dev pairs (a pair is dev when sha256(first text) % 4 != 0)")
    from tqdm import tqdm

    total = sum(len({p.a for p in part}) + len({p.b for p in part}) for part in (dev, test))
    with tqdm(total=total, desc="embedding", unit="text", disable=not progress, leave=False) as bar:
        dev_scored = score_pairs(dev, embedder, bar.update, guard=guard)
        test_scored = score_pairs(test, embedder, bar.update, guard=guard) if test else []
    threshold = pick_threshold(dev_scored, target_precision)
    return Calibration(
        target_precision, threshold,
        evaluate(dev_scored, threshold) if threshold is not None else None,
        evaluate(test_scored, threshold) if threshold is not None and test_scored else None,
        len(dev), len(test))
