"""Whether to serve a semantic candidate: the adaptive policy with an error bound.

A fixed similarity threshold cannot tell paraphrases from near-misses: where a topic's
questions are close together, 0.90 already serves wrong answers; where they are far
apart it refuses right ones.  The policy learns from *outcomes* — candidates whose
answer turned out right or wrong — and serves a candidate only when its confidence
reaches ``1 - max_wrong_rate`` (:mod:`semcache.learner`).

Outcomes come for free and from exploration (the web layer gathers them,
:mod:`semcache.judge` decides them):

* every *refused* candidate whose request then went upstream: the upstream's answer is
  compared with the candidate's stored answer (weight 1: every such candidate is
  labelled);
* a small share (``explore_rate``) of would-be hits, sent upstream anyway and compared
  (weight ``1 / explore_rate``, so the estimate of the served region is unbiased);
* shadow mode, where every candidate is compared and nothing is served (weight 1);
* operator feedback on served hits (training only: a sample of reported hits says
  nothing about the rate of wrong ones).

Decisions, in order: a request that accepts any wrong rate (``max_wrong_rate >= 1``) is
served at its threshold; a candidate below the request's explicit threshold is refused;
an entry already found wrong at this similarity or more is refused (per-entry veto);
until the outcomes give a usable estimate (``MIN_EVIDENCE``) the static rule applies
(``threshold`` and the near-miss guard); then the calibrated scorer decides.  The
scorer is the similarity itself (a threshold learned from the traffic); from
``min_linear_outcomes`` outcomes a :class:`~semcache.learner.LinearScorer` (similarity,
lexical overlap, guard) and from ``min_pair_outcomes`` a
:class:`~semcache.learner.PairScorer` network are cross-fitted (five folds), and the one
that serves the most right answers on out-of-fold outcomes, summed over the bounds of
:data:`COMPARED_BOUNDS` and the configured one, is adopted (the simpler on a tie).

Thread safety: :meth:`decide` and :meth:`record` may be called from any thread (the
model is an immutable object swapped in whole); :meth:`refit` is CPU-bound (seconds)
and runs on its caller's thread; :meth:`flush` writes through the store's writer.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack
import numpy as np

from .features import LEXICAL, Observation, matrix
from .learner import Calibration, LinearScorer, PairScorer, SimilarityScorer, sigmoid

__all__ = ["Policy", "Verdict", "Outcome", "Model", "SOURCES", "MIN_EVIDENCE"]

log = logging.getLogger(__name__)

SOURCES = ("miss", "explore", "shadow", "feedback")
MIN_EVIDENCE = 200.0  # weighted outcomes before the calibration replaces the static rule
COMPARED_BOUNDS = (0.01, 0.02, 0.05, 0.10, 0.20)  # where scorers are compared (and the configured)
_FOLDS = 5
_OUTCOME = b"o"
_MODEL = b"model"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The policy's answer for one candidate.  ``confidence`` is the calibrated chance
    that serving it is right (None while the static rule applies); ``borderline`` says a
    verifier may still approve a refused candidate."""

    serve: bool
    reason: str
    confidence: float | None = None
    borderline: bool = False
    score: float | None = None  # the scorer's raw output the confidence was read from


@dataclass(frozen=True, slots=True)
class Outcome:
    """A candidate whose answer was found right (``correct``) or wrong.  ``weight`` is
    1 / the probability that a candidate like it gets labelled."""

    observation: Observation
    correct: bool
    weight: float
    source: str
    entry_id: int
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Model:
    """A fitted decision rule: a scorer, its calibration, and how it was chosen."""

    scorer: str  # "static", "similarity", "linear" or "pair"
    calibration: Calibration | None
    pair: tuple[PairScorer, ...] = ()
    outcomes: int = 0
    fitted_at: float = 0.0
    comparison: dict[str, float] = field(default_factory=dict)
    linear: tuple[LinearScorer, ...] = ()
    _w1: np.ndarray | None = field(init=False, repr=False, compare=False, default=None)
    _b1: np.ndarray | None = field(init=False, repr=False, compare=False, default=None)
    _w2: np.ndarray | None = field(init=False, repr=False, compare=False, default=None)
    _b2: np.ndarray | None = field(init=False, repr=False, compare=False, default=None)
    _lin: tuple[np.ndarray, ...] | None = field(init=False, repr=False, compare=False,
                                                default=None)

    def __post_init__(self) -> None:
        if self.linear:  # members stacked: (k, 6) arrays, one vectorised step per lookup
            object.__setattr__(self, "_lin", (
                np.stack([m.mean for m in self.linear]), np.stack([m.scale for m in self.linear]),
                np.stack([m.w for m in self.linear]), np.array([m.b for m in self.linear])))
        # the ensemble as one network: one matrix product for all members per lookup
        if self.pair:
            object.__setattr__(self, "_w1", np.hstack([p.w1 for p in self.pair]))
            object.__setattr__(self, "_b1", np.concatenate([p.b1 for p in self.pair]))
            object.__setattr__(self, "_w2", np.stack([p.w2 for p in self.pair]))
            object.__setattr__(self, "_b2", np.array([p.b2 for p in self.pair]))

    def score(self, x: np.ndarray) -> np.ndarray:
        """Scores of rows ``x``: the mean of the ensemble's probabilities, or the
        similarity scorer's."""
        if self.scorer == "linear":
            return np.mean([m.score(x) for m in self.linear], axis=0)
        if self.scorer != "pair":
            return SimilarityScorer().score(x)
        k = len(self.pair)
        assert self._w1 is not None and self._w2 is not None  # set with the members
        hidden = np.maximum(np.asarray(x, dtype=np.float32) @ self._w1 + self._b1, 0.0)
        z = np.einsum("nkh,kh->nk", hidden.reshape(len(x), k, -1), self._w2) + self._b2
        return sigmoid(z.astype(np.float64)).mean(axis=1)

    def score_one(self, obs: Observation) -> float:
        """:meth:`score` of one observation, building only the columns its scorer reads
        (on the lookup path: the similarity needs none, the linear model six)."""
        if self.scorer == "pair":
            x = matrix(obs.query[None], obs.entry[None], np.array([obs.similarity]),
                       np.array([obs.lexical]), np.array([obs.guarded]))
            return float(self.score(x)[0])
        if self.scorer == "linear":
            c = np.array([obs.similarity, *obs.lexical, float(obs.guarded)])
            assert self._lin is not None
            mean, scale, w, b = self._lin
            return float(sigmoid((((c - mean) / scale) * w).sum(axis=1) + b).mean())
        return -np.inf if obs.guarded else float(obs.similarity)

    def describe(self) -> dict[str, Any]:
        return {"scorer": self.scorer, "outcomes": self.outcomes, "fitted_at": self.fitted_at,
                "calibrated_outcomes": self.calibration.count if self.calibration else 0,
                "comparison": self.comparison}


STATIC = Model("static", None)


class _Buffer:
    """Outcomes as columns in a ring of ``capacity`` rows (oldest overwritten)."""

    def __init__(self, capacity: int, dim: int) -> None:
        self.capacity, self.dim = capacity, dim
        self.query = np.zeros((capacity, dim), np.float16)
        self.entry = np.zeros((capacity, dim), np.float16)
        self.sim = np.zeros(capacity, np.float32)
        self.lex = np.zeros((capacity, len(LEXICAL)), np.float32)
        self.guarded = np.zeros(capacity, bool)
        self.correct = np.zeros(capacity, bool)
        self.weight = np.zeros(capacity, np.float32)
        self.source = np.zeros(capacity, np.int8)
        self.entry_id = np.zeros(capacity, np.int64)
        self.seq = np.full(capacity, -1, np.int64)
        self.next_seq = 0

    def __len__(self) -> int:
        return min(self.next_seq, self.capacity)

    def add(self, o: Outcome, seq: int | None = None) -> int:
        s = self.next_seq if seq is None else seq
        i = s % self.capacity
        ob = o.observation
        self.query[i], self.entry[i], self.sim[i] = ob.query, ob.entry, ob.similarity
        self.lex[i], self.guarded[i] = ob.lexical, ob.guarded
        self.correct[i], self.weight[i] = o.correct, o.weight
        self.source[i], self.entry_id[i], self.seq[i] = SOURCES.index(o.source), o.entry_id, s
        self.next_seq = max(self.next_seq, s + 1)
        return s

    def rows(self) -> np.ndarray:
        """Indices of the live rows."""
        return np.flatnonzero(self.seq >= 0)


class Policy:
    """The decision rule of one cache, learned from its outcomes (module doc).

    ``mode`` is ``adaptive`` or ``static`` (static never learns: threshold and guard only).
    ``store`` persists outcomes and the fitted model (None: in memory only).
    """

    def __init__(
        self, *, mode: str = "adaptive", threshold: float = 0.85, max_wrong_rate: float = 0.05,
        guard: bool = True, capacity: int = 50_000, dim: int = 384, store: Any = None,
        min_pair_outcomes: int = 2000, min_linear_outcomes: int = 200,
        verifier_band: float = 0.10, seed: int = 0,
    ) -> None:
        if mode not in ("adaptive", "static"):
            raise ValueError(f"policy mode {mode!r}: must be 'adaptive' or 'static'")
        self.mode = mode
        self.threshold = threshold
        self.max_wrong_rate = max_wrong_rate
        self.guard = guard
        self.min_pair_outcomes = min_pair_outcomes
        self.min_linear_outcomes = min_linear_outcomes
        self.verifier_band = verifier_band
        self.seed = seed
        self.store = store
        self.learning = mode == "adaptive"
        self.model: Model = STATIC
        self._buf = _Buffer(max(1, capacity), dim)
        self._lock = threading.Lock()
        self._veto: dict[int, float] = {}  # entry id -> highest similarity it was wrong at
        self._pending: list[tuple[int, Outcome]] = []
        self._fitted_count = 0
        self.recorded = {s: 0 for s in SOURCES}
        self._floor = 0  # lowest outcome sequence number that may still be in the store
        if store is not None and mode == "adaptive":
            self._load()

    # ------------------------------------------------------------------- deciding
    def decide(self, obs: Observation, *, entry_id: int, threshold: float | None = None,
               max_wrong_rate: float | None = None) -> Verdict:
        """The verdict for one candidate (module doc for the order of the rules).

        ``threshold`` is the request's explicit similarity threshold (None: none asked);
        ``max_wrong_rate`` the request's bound (None: the configured one)."""
        delta = self.max_wrong_rate if max_wrong_rate is None else max_wrong_rate
        model = self.model
        score, confidence = self._confidence(model, obs)
        if delta >= 1.0:
            limit = self.threshold if threshold is None else threshold
            return Verdict(obs.similarity >= limit, "accepts any wrong rate", confidence,
                           score=score)
        if threshold is not None and obs.similarity < threshold:
            return Verdict(False, "below the request's threshold", confidence, score=score)
        wrong_at = self._veto.get(entry_id)
        if wrong_at is not None and obs.similarity <= wrong_at + 1e-6:
            return Verdict(False, "entry was wrong at this similarity", confidence, score=score)
        if confidence is None:
            limit = self.threshold if threshold is None else threshold
            if obs.similarity < limit:
                return Verdict(False, "below the threshold", None,
                               borderline=obs.similarity >= limit - self.verifier_band / 2)
            if self.guard and obs.guarded:
                return Verdict(False, "near-miss guard", None, borderline=True)
            return Verdict(True, "static threshold", None)
        serve = confidence >= 1.0 - delta
        return Verdict(serve, f"{model.scorer} confidence", confidence,
                       borderline=not serve and confidence >= 1.0 - delta - self.verifier_band,
                       score=score)

    @staticmethod
    def _confidence(model: Model, obs: Observation) -> tuple[float | None, float | None]:
        """(score, confidence) of ``obs``; (None, None) while the static rule applies."""
        cal = model.calibration
        if cal is None or cal.weight < MIN_EVIDENCE:
            return None, None
        score = model.score_one(obs)
        return score, cal.confidence(score)

    # ------------------------------------------------------------------ learning
    def record(self, outcome: Outcome) -> None:
        """Remember one outcome (persisted at the next :meth:`flush`).  Ignored while
        learning is off."""
        if not self.learning:
            return
        with self._lock:
            seq = self._buf.add(outcome)
            self._pending.append((seq, outcome))
            self.recorded[outcome.source] += 1
            if not outcome.correct:
                sim = outcome.observation.similarity
                self._veto[outcome.entry_id] = max(sim, self._veto.get(outcome.entry_id, -1.0))

    def forget_entries(self, entry_ids: list[int]) -> None:
        """Entries that left the cache need no veto any more."""
        with self._lock:
            for entry_id in entry_ids:
                self._veto.pop(entry_id, None)

    @property
    def outcomes(self) -> int:
        return len(self._buf)

    def due(self, growth: float = 0.10, least: int = 100) -> bool:
        """Whether enough new outcomes arrived since the last fit to refit."""
        n = len(self._buf)
        return self.learning and n - self._fitted_count >= max(least, growth * self._fitted_count)

    def refit(self) -> Model:
        """Fit and adopt a new model from the buffered outcomes; returns it.  Seconds of
        CPU with thousands of outcomes: call from a worker thread."""
        with self._lock:
            rows = self._buf.rows()
            b = self._buf
            x = matrix(b.query[rows], b.entry[rows], b.sim[rows], b.lex[rows], b.guarded[rows])
            y, w, src = b.correct[rows].astype(np.float64), b.weight[rows].astype(np.float64), b.source[rows]
            previous = self.model
        n = len(rows)
        calibrate = src != SOURCES.index("feedback")
        bounds = sorted({self.max_wrong_rate, *COMPARED_BOUNDS})
        comparison: dict[str, float] = {}

        def judged(name: str, scores: np.ndarray) -> tuple[Calibration, float]:
            # served right answers summed over a range of bounds (requests may ask for
            # their own; where no cut meets one bound every scorer serves nothing there)
            cal = Calibration.fit(scores[calibrate], y[calibrate], w[calibrate])
            for d in bounds:
                comparison[f"{name}@{d:g}"] = cal.value(scores[calibrate], y[calibrate],
                                                        w[calibrate], d)
            comparison[name] = sum(comparison[f"{name}@{d:g}"] for d in bounds)
            return cal, comparison[name]

        sim_cal, best = judged("similarity", SimilarityScorer().score(x))
        model = Model("similarity", sim_cal, outcomes=n, fitted_at=time.time())
        mixed = 0 < y.mean() < 1
        folds = np.arange(n) % _FOLDS
        if n >= self.min_linear_outcomes and mixed:
            members, oof = [], np.zeros(n)
            for k in range(_FOLDS):
                m = LinearScorer.fit(x[folds != k], y[folds != k], w[folds != k])
                members.append(m)
                oof[folds == k] = m.score(x[folds == k])
            cal, value = judged("linear", oof)
            if value > best:
                best, model = value, Model("linear", cal, (), n, time.time(), linear=tuple(members))
        if n >= self.min_pair_outcomes and mixed:
            pairs, oof = [], np.zeros(n)
            for k in range(_FOLDS):
                train = folds != k
                init = previous.pair[k] if len(previous.pair) == _FOLDS else None
                p = PairScorer.fit(x[train], y[train], w[train], seed=self.seed + k, init=init)
                pairs.append(p)
                oof[folds == k] = p.score(x[folds == k])
            cal, value = judged("pair", oof)
            if value > best:
                best, model = value, Model("pair", cal, tuple(pairs), n, time.time())
        model = replace(model, comparison=comparison)
        self.model = model
        self._fitted_count = n
        if self.store is not None:
            self.store.policy_write({_MODEL: _pack_model(model)}, [])
        log.info("policy refitted on %d outcomes: %s scorer", n, model.scorer)
        return model

    # --------------------------------------------------------------- persistence
    def flush(self) -> None:
        """Write the outcomes recorded since the last flush, and delete those the ring
        has overwritten, in one transaction."""
        with self._lock:
            pending, self._pending = self._pending, []
            oldest_kept = max(0, self._buf.next_seq - self._buf.capacity)
        if self.store is None or (not pending and self._floor >= oldest_kept):
            return
        items = {_key(seq): _pack_outcome(o) for seq, o in pending if seq >= oldest_kept}
        gone = [_key(seq) for seq in range(self._floor, oldest_kept)]
        self.store.policy_write(items, gone)
        self._floor = max(self._floor, oldest_kept)

    def _load(self) -> None:
        first = True
        for key, raw in self.store.policy_items(_OUTCOME):
            if first:
                self._floor, first = int.from_bytes(key[1:], "big"), False
            try:
                self._buf.add(_unpack_outcome(raw, self._buf.dim), int.from_bytes(key[1:], "big"))
            except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
                log.warning("policy outcome %s unreadable, skipped: %s", key.hex(), exc)
        rows = self._buf.rows()
        for i in rows[~self._buf.correct[rows]].tolist():
            eid = int(self._buf.entry_id[i])
            self._veto[eid] = max(float(self._buf.sim[i]), self._veto.get(eid, -1.0))
        for key, raw in self.store.policy_items(_MODEL):
            if key == _MODEL:
                try:
                    self.model = _unpack_model(raw)
                    self._fitted_count = self.model.outcomes
                except Exception as exc:  # a damaged model is derived state: refit later
                    log.warning("stored policy model unreadable, refitting: %s", exc)

    def state(self) -> dict[str, Any]:
        """What the operator API shows."""
        model = self.model
        return {"mode": self.mode, "learning": self.learning, "max_wrong_rate": self.max_wrong_rate,
                "threshold": self.threshold, "outcomes": len(self._buf),
                "capacity": self._buf.capacity, "recorded": dict(self.recorded),
                "vetoed_entries": len(self._veto), "model": model.describe(),
                "active": model.calibration is not None and model.calibration.weight >= MIN_EVIDENCE,
                "cut": (model.calibration.cut(self.max_wrong_rate)
                        if model.calibration is not None else None)}


def _key(seq: int) -> bytes:
    return _OUTCOME + seq.to_bytes(8, "big")


def _pack_outcome(o: Outcome) -> bytes:
    ob = o.observation
    return msgpack.packb([ob.query.astype(np.float16).tobytes(), ob.entry.astype(np.float16).tobytes(),
                          ob.similarity, list(ob.lexical), ob.guarded, o.correct, o.weight,
                          o.source, o.entry_id, o.at], use_bin_type=True)


def _unpack_outcome(raw: bytes, dim: int) -> Outcome:
    q, e, sim, lex, guarded, correct, weight, source, entry_id, at = msgpack.unpackb(raw, raw=False)
    qv, ev = np.frombuffer(q, np.float16), np.frombuffer(e, np.float16)
    if len(qv) != dim or len(ev) != dim or source not in SOURCES:
        raise ValueError(f"outcome of dimension {len(qv)} / source {source!r}")
    return Outcome(Observation(qv, ev, float(sim), tuple(lex), bool(guarded)), bool(correct),
                   float(weight), source, int(entry_id), float(at))


def _pack_cal(c: Calibration | None) -> Any:
    return None if c is None else [c.scores.tobytes(), c.bound.tobytes(), c.weight, c.count]


def _unpack_cal(v: Any) -> Calibration | None:
    if v is None:
        return None
    return Calibration(np.frombuffer(v[0], np.float64).copy(), np.frombuffer(v[1], np.float64).copy(),
                       float(v[2]), int(v[3]))


def _pack_model(m: Model) -> bytes:
    return msgpack.packb({"scorer": m.scorer, "cal": _pack_cal(m.calibration),
                          "pair": [p.to_bytes() for p in m.pair],
                          "linear": [p.to_bytes() for p in m.linear], "outcomes": m.outcomes,
                          "fitted_at": m.fitted_at, "comparison": m.comparison}, use_bin_type=True)


def _unpack_model(raw: bytes) -> Model:
    d = msgpack.unpackb(raw, raw=False)
    return Model(d["scorer"], _unpack_cal(d["cal"]), tuple(PairScorer.from_bytes(p) for p in d["pair"]),
                 int(d["outcomes"]), float(d["fitted_at"]), dict(d["comparison"]),
                 tuple(LinearScorer.from_bytes(p) for p in d.get("linear", ())))
