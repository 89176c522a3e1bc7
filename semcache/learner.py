"""Scoring candidates and bounding their error: the numerics of the adaptive policy.

Three scorers turn :mod:`semcache.features` rows into a number that grows with the chance
that serving the candidate is right:

* :class:`SimilarityScorer` — the cosine itself, and nothing for a candidate the near-miss
  guard objects to.  No parameters, so it is usable from the first outcome on; calibrated,
  it is a similarity threshold learned from the traffic.
* :class:`LinearScorer` — logistic regression over the similarity, the lexical overlap and
  the guard: usable from a few hundred outcomes.
* :class:`PairScorer` — a small neural network (one hidden layer) over the whole row:
  where in the embedding space the two texts sit and differ, their lexical overlap, the
  guard's objection.  It needs thousands of outcomes and is only adopted when it serves
  more right answers than the similarity at the same error bound on held-out outcomes.

:class:`Calibration` turns any scorer's scores on labelled outcomes into a *confidence*:
``confidence(s) = 1 - UCB(wrong rate of the hits served at cut s)``, the one-sided 95%
Wilson upper bound of the (importance-weighted) share of wrong answers among outcomes
scoring at least ``s``, made monotone.  Serving exactly the candidates with
``confidence >= 1 - max_wrong_rate`` keeps the expected wrong-hit rate under the bound
with that confidence, for traffic like the outcomes'.

Pure numpy, deterministic for a given seed; objects are immutable once built, so a
policy can swap in a new one while other threads score with the old.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from .features import LEXICAL

LEXICAL_WIDTH = len(LEXICAL)

__all__ = ["Calibration", "SimilarityScorer", "LinearScorer", "PairScorer", "Z_95", "sigmoid"]

Z_95 = 1.6449  # one-sided 95% normal quantile


def _wilson_upper(wrong: np.ndarray, total: np.ndarray, n_eff: np.ndarray, z: float) -> np.ndarray:
    p = np.divide(wrong, total, out=np.zeros_like(wrong), where=total > 0)
    n = np.maximum(n_eff, 1e-9)
    z2 = z * z
    centre = p + z2 / (2 * n)
    spread = z * np.sqrt(np.maximum(p * (1 - p) / n + z2 / (4 * n * n), 0.0))
    return np.minimum(1.0, (centre + spread) / (1 + z2 / n))


@dataclass(frozen=True)
class Calibration:
    """Scores of labelled outcomes, sorted high to low, with the bound of every cut.

    ``scores[k]`` is the (k+1)-th highest score; ``bound[k]`` the lowest upper bound of
    the wrong rate among all cuts that serve at least the top k+1 outcomes (so it never
    rises as the cut moves up).  ``weight`` is the total importance weight.
    """

    scores: np.ndarray
    bound: np.ndarray
    weight: float
    count: int

    @classmethod
    def fit(cls, scores: np.ndarray, correct: np.ndarray, weights: np.ndarray,
            z: float = Z_95) -> Calibration:
        """``correct`` are 0/1 labels, ``weights`` inverse probabilities of having been
        labelled (1 for outcomes every candidate yields, 1/p for explored hits)."""
        s = np.asarray(scores, dtype=np.float64)
        keep = np.isfinite(s)
        s, y, w = s[keep], np.asarray(correct, np.float64)[keep], np.asarray(weights, np.float64)[keep]
        order = np.argsort(-s, kind="stable")
        s, y, w = s[order], y[order], w[order]
        total = np.cumsum(w)
        wrong = np.cumsum(w * (1 - y))
        n_eff = total * total / np.maximum(np.cumsum(w * w), 1e-12)
        upper = _wilson_upper(wrong, total, n_eff, z)
        # bound[k] = min over cuts serving at least k+1 outcomes (suffix minimum)
        bound = np.minimum.accumulate(upper[::-1])[::-1] if len(upper) else upper
        return cls(s, bound, float(total[-1]) if len(total) else 0.0, int(len(s)))

    def confidence(self, score: float) -> float:
        """1 - the wrong-rate bound of serving everything scoring ``score`` or more; 0 when
        nothing labelled scores that low (no evidence for serving it)."""
        if not self.count or not np.isfinite(score):
            return 0.0
        k = int(np.searchsorted(-self.scores, -score, side="right"))  # outcomes scoring >= score
        if k == 0:
            return float(1.0 - self.bound[0])
        return float(1.0 - self.bound[k - 1])

    def cut(self, max_wrong_rate: float) -> float:
        """The lowest score served under ``max_wrong_rate`` (inf: serve nothing)."""
        ok = np.flatnonzero(self.bound <= max_wrong_rate)
        return float(self.scores[ok[-1]]) if len(ok) else float("inf")

    def value(self, scores: np.ndarray, correct: np.ndarray, weights: np.ndarray,
              max_wrong_rate: float) -> float:
        """Weighted count of right answers served among labelled ``scores`` at the cut
        for ``max_wrong_rate`` (how model selection compares scorers)."""
        served = np.asarray(scores) >= self.cut(max_wrong_rate)
        return float((np.asarray(weights) * np.asarray(correct) * served).sum())


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, its argument clipped to +-40 (no overflow warnings)."""
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


class SimilarityScorer:
    """Score = cosine similarity; -inf for a candidate the guard objects to."""

    name = "similarity"

    def score(self, x: np.ndarray) -> np.ndarray:
        sim, guarded = x[:, 0].astype(np.float64), x[:, -1] > 0.5
        return np.where(guarded, -np.inf, sim)


class LinearScorer:
    """Logistic regression over the columns that need no embedding geometry: the
    similarity, the lexical features and the guard's objection (standardised, L2).  Few
    parameters, so it generalises from hundreds of outcomes where the pair network needs
    thousands.  Build with :meth:`fit`."""

    name = "linear"

    def __init__(self, mean: np.ndarray, scale: np.ndarray, w: np.ndarray, b: float) -> None:
        self.mean, self.scale, self.w, self.b = mean, scale, w, float(b)

    @staticmethod
    def columns(x: np.ndarray) -> np.ndarray:
        """Similarity (first column), lexical features and guard (last five columns)."""
        x = np.asarray(x, dtype=np.float64)
        return np.concatenate([x[:, :1], x[:, -(LEXICAL_WIDTH + 1):]], axis=1)

    def score(self, x: np.ndarray) -> np.ndarray:
        z = ((self.columns(x) - self.mean) / self.scale) @ self.w + self.b
        return sigmoid(z)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, w: np.ndarray, *, l2: float = 1e-2,
            steps: int = 2000, lr: float = 0.5) -> LinearScorer:
        """Full-batch gradient descent on weighted logistic loss (deterministic)."""
        c = cls.columns(x)
        mean, scale = c.mean(axis=0), c.std(axis=0) + 1e-9
        z = (c - mean) / scale
        y = np.asarray(y, dtype=np.float64)
        sw = np.asarray(w, dtype=np.float64)
        sw = sw / max(float(sw.mean()), 1e-12)
        coef, b = np.zeros(z.shape[1]), 0.0
        for _ in range(steps):
            p = sigmoid(z @ coef + b)
            g = sw * (p - y) / len(y)
            coef -= lr * (z.T @ g + l2 * coef)
            b -= lr * float(g.sum())
        return cls(mean, scale, coef, b)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, mean=self.mean, scale=self.scale, w=self.w, b=np.array([self.b]))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> LinearScorer:
        with np.load(io.BytesIO(data)) as z:
            return cls(z["mean"], z["scale"], z["w"], float(z["b"][0]))


class PairScorer:
    """A one-hidden-layer network ``sigmoid(w2 . relu(W1 x + b1) + b2)`` fitted with Adam
    on weighted logistic loss.  Build with :meth:`fit`; :meth:`to_bytes` /
    :meth:`from_bytes` persist it."""

    name = "pair"

    def __init__(self, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: float) -> None:
        self.w1, self.b1, self.w2, self.b2 = w1, b1, w2, float(b2)

    @property
    def width(self) -> int:
        return int(self.w1.shape[0])

    def score(self, x: np.ndarray) -> np.ndarray:
        hidden = np.maximum(np.asarray(x, dtype=np.float32) @ self.w1 + self.b1, 0.0)
        z = hidden @ self.w2 + self.b2
        return sigmoid(z.astype(np.float64))

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, w: np.ndarray, *, hidden: int = 64,
            epochs: int | None = None, lr: float = 1e-3, decay: float = 1e-3, batch: int = 256,
            seed: int = 0, init: PairScorer | None = None) -> PairScorer:
        """Fit on rows ``x`` with 0/1 labels ``y`` and sample weights ``w`` (normalised to
        mean 1).  ``epochs`` defaults to about 600k samples' worth of steps (5 to 30
        passes); ``init`` warm-starts from an earlier fit of the same width.  CPU-bound:
        run it off the event loop."""
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y, dtype=np.float32)
        w = np.asarray(w, dtype=np.float32)
        w = w / max(float(w.mean()), 1e-12)
        n, d = x.shape
        rng = np.random.default_rng(seed)
        if init is not None and init.width == d and init.w1.shape[1] == hidden:
            params = [init.w1.copy(), init.b1.copy(), init.w2.copy(), np.array([init.b2], np.float32)]
        else:
            params = [rng.normal(0, 1 / np.sqrt(d), (d, hidden)).astype(np.float32),
                      np.zeros(hidden, np.float32),
                      rng.normal(0, 1 / np.sqrt(hidden), hidden).astype(np.float32),
                      np.zeros(1, np.float32)]
        passes = epochs if epochs is not None else int(np.clip(600_000 // max(n, 1), 5, 30))
        m = [np.zeros_like(p) for p in params]
        v = [np.zeros_like(p) for p in params]
        step = 0
        for _ in range(passes):
            order = rng.permutation(n)
            for start in range(0, n, batch):
                idx = order[start:start + batch]
                xb, yb, wb = x[idx], y[idx], w[idx]
                pre = xb @ params[0] + params[1]
                act = np.maximum(pre, 0.0)
                out = act @ params[2] + params[3][0]
                prob = sigmoid(out)
                g_out = (prob - yb) * wb / len(idx)
                g_act = np.outer(g_out, params[2]) * (pre > 0)
                grads = [xb.T @ g_act + decay * params[0], g_act.sum(0),
                         act.T @ g_out + decay * params[2], np.array([g_out.sum()], np.float32)]
                step += 1
                for i, g in enumerate(grads):
                    m[i] = 0.9 * m[i] + 0.1 * g
                    v[i] = 0.999 * v[i] + 0.001 * g * g
                    mh = m[i] / (1 - 0.9 ** step)
                    vh = v[i] / (1 - 0.999 ** step)
                    params[i] -= (lr * mh / (np.sqrt(vh) + 1e-8)).astype(np.float32)
        return cls(params[0], params[1], params[2], float(params[3][0]))

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, w1=self.w1, b1=self.b1, w2=self.w2, b2=np.array([self.b2], np.float32))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> PairScorer:
        with np.load(io.BytesIO(data)) as z:
            return cls(z["w1"], z["b1"], z["w2"], float(z["b2"][0]))
