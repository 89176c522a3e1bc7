"""The adaptive policy: calibration under an error bound, the learned scorers, the order
of the decision rules, persistence — on real embeddings (the learner's numerics also on
plain arrays, where the point is the arithmetic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semcache.embedding import SentenceTransformerEmbedder
from semcache.features import LEXICAL, Observation, lexical, observe, rows, width
from semcache.judge import answer_text, equivalent, same_text
from semcache.learner import Calibration, LinearScorer, PairScorer, SimilarityScorer
from semcache.policy import MIN_EVIDENCE, Outcome, Policy
from semcache.store import Store
from tests.conftest import CacheFactory, answer, chat


def _draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores in [0.6, 1) whose chance of being right rises with the score."""
    s = rng.uniform(0.6, 1.0, n)
    p_right = np.clip((s - 0.6) / 0.35, 0.0, 1.0) ** 2
    return s, (rng.uniform(size=n) < p_right).astype(float)


# ---------------------------------------------------------------- calibration
def test_calibrated_cut_keeps_the_wrong_rate_under_the_bound_on_fresh_outcomes() -> None:
    rng = np.random.default_rng(1)
    s, y = _draw(rng, 4000)
    cal = Calibration.fit(s, y, np.ones_like(s))
    conf = [cal.confidence(t) for t in np.linspace(0.6, 1.0, 41)]
    assert all(a <= b + 1e-12 for a, b in zip(conf, conf[1:], strict=False))  # monotone
    s2, y2 = _draw(np.random.default_rng(2), 20000)
    for delta in (0.02, 0.05, 0.10, 0.20):
        served = np.array([cal.confidence(t) >= 1 - delta for t in s2])
        assert served.sum() > 500, delta  # it does serve something ...
        assert 1 - y2[served].mean() <= delta, delta  # ... and under the bound
        # and not absurdly less than it could: the true wrong rate at the cut is near delta
        assert 1 - y2[served].mean() >= delta / 3, delta
    assert cal.cut(0.0) == float("inf")  # nothing is served with no error allowed


def test_importance_weights_recover_the_rate_of_a_sampled_region() -> None:
    """Explored hits are labelled at rate r with weight 1/r: the bound must match the one
    from labelling everything, not the (much smaller) labelled count's."""
    rng = np.random.default_rng(3)
    s, y = _draw(rng, 20000)
    full = Calibration.fit(s, y, np.ones_like(s))
    rate = 0.1
    keep = (s < 0.9) | (rng.uniform(size=len(s)) < rate)  # the served region is sampled
    w = np.where(s >= 0.9, 1 / rate, 1.0)
    sampled = Calibration.fit(s[keep], y[keep], w[keep])
    unweighted = Calibration.fit(s[keep], y[keep], np.ones(keep.sum()))
    assert abs(sampled.cut(0.1) - full.cut(0.1)) < 0.02
    assert abs(unweighted.cut(0.1) - full.cut(0.1)) > abs(sampled.cut(0.1) - full.cut(0.1))
    assert sampled.weight == pytest.approx(len(s), rel=0.05)


def test_pair_scorer_learns_what_similarity_cannot_see_and_round_trips() -> None:
    """Right answers depend on a direction of the embedding (a topic), not only on the
    similarity: the network finds it, the cosine cannot."""
    rng = np.random.default_rng(4)
    n, dim = 3000, 8
    q = rng.normal(size=(n, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    sim = rng.uniform(0.8, 1.0, n)
    topic = q[:, 0] > 0  # in this topic near-identical texts differ; elsewhere they agree
    y = np.where(topic, sim > 0.98, True).astype(float)
    from semcache.features import matrix

    x = matrix(q, q, sim, np.zeros((n, len(LEXICAL))), np.zeros(n))
    assert x.shape == (n, width(dim))
    train, test = slice(0, 2000), slice(2000, n)
    pair = PairScorer.fit(x[train], y[train], np.ones(2000), seed=0)
    cal_pair = Calibration.fit(pair.score(x[train]), y[train], np.ones(2000))
    sim_scores = SimilarityScorer().score(x)
    cal_sim = Calibration.fit(sim_scores[train], y[train], np.ones(2000))
    ones = np.ones(n - 2000)
    v_pair = cal_pair.value(pair.score(x[test]), y[test], ones, 0.05)
    v_sim = cal_sim.value(sim_scores[test], y[test], ones, 0.05)
    right = float(y[test].sum())
    assert v_pair > 0.6 * right and v_pair > 1.5 * v_sim
    again = PairScorer.from_bytes(pair.to_bytes())
    assert np.allclose(again.score(x[test]), pair.score(x[test]))


def test_similarity_scorer_never_serves_what_the_guard_objects_to() -> None:
    x = np.zeros((2, width(4)), np.float32)
    x[:, 0] = 0.99
    x[1, -1] = 1.0
    s = SimilarityScorer().score(x)
    assert s[0] == pytest.approx(0.99) and s[1] == -np.inf


# ------------------------------------------------------------------ features
def test_observations_carry_the_pair_and_lexical_overlap(embedder: SentenceTransformerEmbedder) -> None:
    a, b = "how do I sort a list in python", "python: how to sort a list"
    va, vb = embedder.embed([a, b])
    ob = observe(a, b, va, vb, float(va @ vb), False)
    assert ob.query.dtype == np.float16 and ob.query.shape == (embedder.dim,)
    assert len(ob.lexical) == len(LEXICAL) and ob.lexical[0] == 1.0  # same content words
    far = lexical("capital of France", "population of Peru")
    assert far[0] == 0.0 and far[1] > 0 and far[2] > 0
    x = rows([ob, ob])
    assert x.shape == (2, width(embedder.dim)) and x[0, 0] == pytest.approx(ob.similarity)


# --------------------------------------------------------------------- judge
def test_answer_equivalence(embedder: SentenceTransformerEmbedder) -> None:
    ans = answer("Paris is the capital of France.")
    assert answer_text(ans, "/v1/chat/completions") == "Paris is the capital of France."
    assert same_text("Paris  is the CAPITAL of France.", "paris is the capital of france.")
    assert equivalent("The capital of France is Paris.", "Paris is the capital of France.",
                      embedder.embed, 0.92)
    assert not equivalent("The capital of France is Paris.", "Lima is the capital of Peru.",
                          embedder.embed, 0.92)
    # close in meaning, opposite in fact: the guard decides, whatever the cosine
    assert not equivalent("Sort it in ascending order with sorted(xs).",
                          "Sort it in descending order with sorted(xs).", embedder.embed, 0.92)
    # 1.0: only equal texts count (the embedding is not consulted)
    assert not equivalent("The capital of France is Paris.", "Paris is the capital of France.",
                          embedder.embed, 1.0)


# -------------------------------------------------------------------- policy
PARA = ("What is the capital of France?", "what's the capital city of france")
NEAR = ("sort a list ascending in python", "sort a list descending in python")


def _obs(embedder: SentenceTransformerEmbedder, a: str, b: str, guarded: bool = False,
         sim: float | None = None) -> Observation:
    va, vb = embedder.embed([a, b])
    return observe(a, b, va, vb, float(va @ vb) if sim is None else sim, guarded)


def _teach(policy: Policy, embedder: SentenceTransformerEmbedder, n: int, cut: float) -> None:
    """``n`` outcomes over similarities 0.70-1.0 where exactly those >= ``cut`` were right."""
    base = _obs(embedder, *PARA)
    for i, sim in enumerate(np.linspace(0.70, 1.0, n)):
        ob = Observation(base.query, base.entry, float(sim), base.lexical, False)
        policy.record(Outcome(ob, bool(sim >= cut), 1.0, "miss", 10_000 + i))


def test_static_rule_until_there_is_evidence_then_the_learned_cut(
        embedder: SentenceTransformerEmbedder) -> None:
    policy = Policy(threshold=0.85, max_wrong_rate=0.05, dim=embedder.dim)
    para = _obs(embedder, *PARA)
    near = _obs(embedder, *NEAR, guarded=True)
    assert near.similarity > para.similarity  # the embedding has it backwards
    v = policy.decide(para, entry_id=1)
    assert v.serve and v.confidence is None and v.reason == "static threshold"
    v = policy.decide(near, entry_id=2)
    assert not v.serve and v.reason == "near-miss guard"
    # learn that this traffic is only right from 0.95 up: the paraphrase (0.87) is refused
    _teach(policy, embedder, 5 * int(MIN_EVIDENCE), cut=0.95)
    assert policy.decide(para, entry_id=1).serve  # not refitted yet: still static
    model = policy.refit()
    assert model.scorer == "similarity" and model.calibration is not None
    v = policy.decide(para, entry_id=1)
    assert not v.serve and v.confidence is not None and v.confidence < 0.95
    high = Observation(para.query, para.entry, 0.99, para.lexical, False)
    v = policy.decide(high, entry_id=3)
    assert v.serve and v.confidence is not None and v.confidence >= 0.95
    assert 0.94 <= policy.state()["cut"] <= 0.97
    # a request that accepts any wrong rate gets its threshold; an explicit threshold
    # above the similarity refuses whatever the confidence
    assert policy.decide(para, entry_id=1, max_wrong_rate=1.0).serve
    assert not policy.decide(high, entry_id=3, threshold=0.995).serve
    # a looser bound serves lower
    assert policy.decide(para, entry_id=1, max_wrong_rate=0.8).serve


def test_an_entry_found_wrong_is_not_served_again_at_that_similarity(
        embedder: SentenceTransformerEmbedder) -> None:
    policy = Policy(threshold=0.85, dim=embedder.dim)
    ob = _obs(embedder, *PARA)
    assert policy.decide(ob, entry_id=7).serve
    policy.record(Outcome(ob, False, 1.0, "explore", 7))
    v = policy.decide(ob, entry_id=7)
    assert not v.serve and v.reason == "entry was wrong at this similarity"
    assert policy.decide(ob, entry_id=8).serve  # other entries are not affected
    policy.forget_entries([7])
    assert policy.decide(ob, entry_id=7).serve


def test_static_mode_never_learns(embedder: SentenceTransformerEmbedder) -> None:
    policy = Policy(mode="static", dim=embedder.dim)
    _teach(policy, embedder, 300, cut=0.95)
    assert policy.outcomes == 0 and not policy.due()
    with pytest.raises(ValueError, match="policy mode 'fancy'"):
        Policy(mode="fancy")


def test_feedback_trains_but_never_calibrates(embedder: SentenceTransformerEmbedder) -> None:
    policy = Policy(dim=embedder.dim)
    base = _obs(embedder, *PARA)
    for i in range(400):
        policy.record(Outcome(base, False, 1.0, "feedback", i))
    model = policy.refit()
    assert model.calibration is not None and model.calibration.count == 0
    assert policy.decide(base, entry_id=10_000).reason == "static threshold"


def test_outcomes_and_model_persist_and_the_ring_stays_bounded(
        tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    store = Store(tmp_path / "s", embedder=embedder.name, dim=embedder.dim, sync=False)
    policy = Policy(dim=embedder.dim, store=store, capacity=250)
    _teach(policy, embedder, 400, cut=0.95)  # 150 overwritten in the ring
    policy.flush()
    model = policy.refit()
    assert policy.outcomes == 250
    again = Policy(dim=embedder.dim, store=store, capacity=250)
    assert again.outcomes == 250 and again.model.scorer == model.scorer
    assert again.model.calibration is not None
    assert again.model.calibration.cut(0.05) == pytest.approx(model.calibration.cut(0.05))
    assert len(list(store.policy_items(b"o"))) == 250  # overwritten rows were deleted
    store.close()


def test_linear_scorer_adopted_when_the_words_tell_what_the_similarity_cannot(
        embedder: SentenceTransformerEmbedder) -> None:
    """Equal similarities, right only when the two share their content words: the
    lexical model wins out of fold, and then tells the two kinds apart."""
    policy = Policy(dim=embedder.dim, max_wrong_rate=0.05)
    base = _obs(embedder, *PARA)
    rng = np.random.default_rng(5)
    for i in range(800):
        sim, shared = float(rng.uniform(0.85, 0.95)), bool(i % 2)
        lex = (0.9, 0.0, 0.0, 0.0) if shared else (0.2, 0.75, 0.75, 0.0)
        policy.record(Outcome(Observation(base.query, base.entry, sim, lex, False), shared,
                              1.0, "shadow", 20_000 + i))
    model = policy.refit()
    assert model.scorer == "linear" and model.comparison["linear"] > model.comparison["similarity"]
    same = Observation(base.query, base.entry, 0.90, (0.9, 0.0, 0.0, 0.0), False)
    other = Observation(base.query, base.entry, 0.90, (0.2, 0.75, 0.75, 0.0), False)
    assert policy.decide(same, entry_id=1).serve and not policy.decide(other, entry_id=2).serve
    from semcache.policy import _pack_model, _unpack_model

    again = _unpack_model(_pack_model(model))  # as persisted in the store
    x = rows([same, other])
    assert again.scorer == "linear" and np.allclose(again.score(x), model.score(x))


def test_pair_scorer_adopted_only_when_it_beats_the_similarity(
        embedder: SentenceTransformerEmbedder) -> None:
    """With outcomes that only the similarity explains, the cross-fitted network gains
    nothing out of fold and the similarity scorer stays."""
    policy = Policy(dim=embedder.dim, min_pair_outcomes=500)
    _teach(policy, embedder, 800, cut=0.93)
    model = policy.refit()
    assert {"similarity", "pair", "similarity@0.05", "pair@0.2"} <= set(model.comparison)
    assert model.scorer == ("pair" if model.comparison["pair"] > model.comparison["similarity"]
                            else "similarity")


# ---------------------------------------------------------------- in the cache
def test_cache_candidates_carry_the_verdict_and_outcomes_survive_reopening(
        make_cache: CacheFactory, embedder: SentenceTransformerEmbedder) -> None:
    cache = make_cache()
    cache.store(cache.request("/v1/chat/completions", chat(PARA[0])), answer("Paris."))
    cache.store(cache.request("/v1/chat/completions", chat(NEAR[0])), answer("sorted(xs)"))
    cand = cache.consider(cache.request("/v1/chat/completions", chat(PARA[1])))
    assert cand is not None and cand.verdict.serve and cand.guard is None
    assert cand.observation.similarity == pytest.approx(cand.similarity)
    near = cache.consider(cache.request("/v1/chat/completions", chat(NEAR[1])))
    assert near is not None and not near.verdict.serve and near.guard is not None
    assert cache.guard_rejections == 1
    hit = cache.serve(cand)
    assert hit.match == "semantic" and hit.json()["choices"][0]["message"]["content"] == "Paris."
    cache.policy.record(Outcome(near.observation, False, 1.0, "miss", near.entry_id))
    cache.close()
    again = make_cache()
    assert again.policy.outcomes == 1 and again.policy.state()["vetoed_entries"] == 1


def test_the_lookup_path_scores_as_the_refit_does(embedder: SentenceTransformerEmbedder) -> None:
    """``score_one`` (only the columns a scorer reads) equals ``score`` on full rows."""
    from semcache.policy import Model

    rng = np.random.default_rng(6)
    obs = [_obs(embedder, *PARA), _obs(embedder, *NEAR, guarded=True)]
    x_train = rows(obs * 50)
    y = rng.uniform(size=len(x_train)) < 0.5
    lin = tuple(LinearScorer.fit(x_train, y, np.ones(len(y)), steps=200) for _ in range(3))
    pair = tuple(PairScorer.fit(x_train, y, np.ones(len(y)), epochs=2, seed=k) for k in range(3))
    for model in (Model("similarity", None), Model("linear", None, linear=lin),
                  Model("pair", None, pair)):
        full = model.score(rows(obs))
        assert [model.score_one(o) for o in obs] == pytest.approx(list(full), rel=1e-5), model.scorer
