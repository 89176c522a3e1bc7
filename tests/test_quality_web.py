"""Answer quality through the real sidecar: shadow mode, exploration, the verifier hook,
the per-request error bound, feedback as outcomes, the policy API and persistence."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import openai
import pytest

from semcache import Client, InvalidRequestError, openai_client
from semcache.fake_upstream import answer_text
from semcache.verifier import PROMPT
from tests.conftest import Fake, Sidecar, SidecarFactory

TOKEN = "admin-q"
CHAT = "/v1/chat/completions"
Q = "What is the capital of France?"
PARA = "what's the capital city of france"  # 0.866 with Q: a hit at the defaults
ASC = "How do I sort a list ascending in python?"
DESC = "How do I sort a list descending in python?"  # 0.94 with ASC: the guard refuses


def ask(c: openai.OpenAI, text: str, **kw: Any) -> tuple[dict[str, str], str]:
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}], **kw)
    return dict(raw.headers), raw.parse().choices[0].message.content or ""


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise TimeoutError("condition not reached")


def recorded(ops: Client, source: str) -> int:
    return int(ops.policy()["recorded"][source])


def same_answer_for(*texts: str) -> Any:
    """An upstream that gives every one of ``texts`` the first one's answer."""
    group = set(texts)

    def answer_for(prompt: str, body: dict[str, Any]) -> str:
        return answer_text(texts[0] if prompt in group else prompt)

    return answer_for


def test_defaults_serve_the_paraphrase_and_refuse_the_near_miss(
        start_sidecar: SidecarFactory, fake: Fake) -> None:
    """Issue 8's examples at the default settings, through the sidecar."""
    sc = start_sidecar()
    c = openai_client(sc.url, "sk-d", max_retries=0)
    ask(c, Q)
    ask(c, ASC)
    sc.wait_stores()
    h, _ = ask(c, PARA)
    assert h["x-semcache-status"] == "hit" and h["x-semcache-match"] == "semantic"
    h, _ = ask(c, DESC)
    assert h["x-semcache-status"] == "miss"
    assert h["x-semcache-guard"] == "order differs"  # why the 0.94 candidate was refused
    assert fake.stats.total(CHAT) == 3


def test_refused_candidates_are_judged_against_the_upstream_answer(
        start_sidecar: SidecarFactory, fake: Fake) -> None:
    fake.config.answer_for = same_answer_for(Q, PARA)
    sc = start_sidecar(admin_token=TOKEN, threshold=0.95)  # PARA (0.87) is refused ...
    ops = Client(sc.url, TOKEN)
    c = openai_client(sc.url, "sk-j", max_retries=0)
    ask(c, Q)
    ask(c, ASC)
    sc.wait_stores()
    assert ask(c, PARA)[0]["x-semcache-status"] == "miss"
    assert ask(c, DESC)[0]["x-semcache-status"] == "miss"
    sc.wait_stores()
    wait_for(lambda: recorded(ops, "miss") == 2)
    rt = sc.runtime
    policy = rt.cache.policy if rt.cache else None
    assert policy is not None
    rows = policy._buf.rows()
    by_guard = {bool(policy._buf.guarded[i]): bool(policy._buf.correct[i]) for i in rows}
    assert by_guard == {False: True, True: False}  # ... but it was right; DESC was wrong
    assert ops.policy()["vetoed_entries"] == 1
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(ops.metrics()) for s in f.samples}
    assert samples[("semcache_policy_outcomes_total", (("source", "miss"), ("verdict", "right")))] == 1
    assert samples[("semcache_policy_outcomes_total", (("source", "miss"), ("verdict", "wrong")))] == 1
    assert ops.stats().raw["policy"]["recorded"]["miss"] == 2


def test_once_calibrated_hits_carry_the_confidence_and_the_bound_decides(
        start_sidecar: SidecarFactory, fake: Fake) -> None:
    from semcache.features import Observation
    from semcache.policy import Outcome

    fake.config.answer_for = same_answer_for(Q, PARA)  # the refusal below is judged right
    sc = start_sidecar(admin_token=TOKEN, max_wrong_rate_ceiling=1.0)
    ops = Client(sc.url, TOKEN)
    c = openai_client(sc.url, "sk-c", max_retries=0)
    ask(c, Q)
    sc.wait_stores()
    cache = sc.runtime.cache
    assert cache is not None
    vec = cache.embed(Q)
    # outcomes saying: this traffic is right from similarity 0.95 up, wrong below
    for i, sim in enumerate(np.linspace(0.70, 1.0, 1000)):
        ob = Observation(vec.astype(np.float16), vec.astype(np.float16), float(sim),
                         (1.0, 0.0, 0.0, 0.0), False)
        cache.policy.record(Outcome(ob, bool(sim >= 0.95), 1.0, "miss", 10_000 + i))
    state = ops.update_policy(refit=True)
    assert state["active"] and 0.94 <= state["cut"] <= 0.97
    h, _ = ask(c, PARA, extra_headers={"Cache-Control": "no-store"})  # 0.87: under the cut
    assert h["x-semcache-status"] == "miss" and float(h["x-semcache-confidence"]) < 0.95
    h, _ = ask(c, PARA, extra_headers={"Cache-Control": "no-store",
                                       "X-Semcache-Max-Wrong-Rate": "0.9"})
    assert h["x-semcache-status"] == "hit" and float(h["x-semcache-confidence"]) >= 0.1


def test_shadow_mode_answers_upstream_and_reports_would_be_hits(
        start_sidecar: SidecarFactory, fake: Fake) -> None:
    fake.config.answer_for = same_answer_for(Q, PARA)
    sc = start_sidecar(admin_token=TOKEN, shadow=("team-s",))
    ops = Client(sc.url, TOKEN)
    shadowed = openai_client(sc.url, "sk-s", namespace="team-s", max_retries=0)
    ask(shadowed, Q)
    sc.wait_stores()
    h, _ = ask(shadowed, Q)  # an exact would-be hit
    assert h["x-semcache-status"] == "miss" and h["x-semcache-shadow"] == "would-hit"
    h, _ = ask(shadowed, PARA)  # a semantic would-be hit, judged right
    assert h["x-semcache-status"] == "miss" and h["x-semcache-shadow"] == "would-hit"
    h, _ = ask(shadowed, "How tall is Mount Everest?")
    assert h["x-semcache-shadow"] == "would-miss"
    assert fake.stats.total(CHAT) == 4  # every request went upstream
    sc.wait_stores()
    wait_for(lambda: ops.shadow()["total"]["judged"] == 1)
    report = ops.shadow("team-s")
    row = report["namespaces"]["ns:team-s"]
    assert row["requests"] == 4 and row["would_hit_exact"] == 1 and row["would_hit_semantic"] == 1
    assert row["judged"] == 1 and row["wrong"] == 0 and row["would_hit_rate"] == pytest.approx(2 / 4)
    # another namespace is served as usual
    plain = openai_client(sc.url, "sk-s", namespace="team-p", max_retries=0)
    ask(plain, Q)
    sc.wait_stores()
    assert ask(plain, Q)[0]["x-semcache-status"] == "hit"
    # shadowing can be switched at run time
    ops.set_shadow(["*"])
    assert ask(plain, Q)[0]["x-semcache-shadow"] == "would-hit"
    ops.set_shadow([])
    assert ask(plain, Q)[0]["x-semcache-status"] == "hit"
    with pytest.raises(InvalidRequestError, match="namespaces"):
        ops.set_shadow([""])


def test_exploration_sends_would_be_hits_upstream_with_their_weight(
        start_sidecar: SidecarFactory, fake: Fake) -> None:
    fake.config.answer_for = same_answer_for(Q, PARA)
    sc = start_sidecar(admin_token=TOKEN, explore_rate=1.0)
    ops = Client(sc.url, TOKEN)
    c = openai_client(sc.url, "sk-e", max_retries=0)
    ask(c, Q)
    sc.wait_stores()
    h, _ = ask(c, PARA)
    assert h["x-semcache-status"] == "miss" and h["x-semcache-explored"] == "1"
    assert ask(c, Q)[0]["x-semcache-status"] == "hit"  # exact hits are never explored
    # a request with its own rule is not explored
    assert ask(c, PARA, extra_headers={"X-Semcache-Threshold": "0.85"})[0][
        "x-semcache-status"] == "hit"
    sc.wait_stores()
    wait_for(lambda: recorded(ops, "explore") == 1)
    state = ops.policy()
    assert state["explored"] == 1
    policy = sc.runtime.cache.policy  # type: ignore[union-attr]
    (i,) = [i for i in policy._buf.rows() if policy._buf.source[i] == 1]
    assert policy._buf.weight[i] == pytest.approx(1.0) and policy._buf.correct[i]
    # learning off: no more exploration
    ops.update_policy(learning=False)
    fresh = openai_client(sc.url, "sk-e2", max_retries=0)
    ask(fresh, Q)
    sc.wait_stores()
    assert ask(fresh, PARA)[0]["x-semcache-status"] == "hit"


def test_the_request_bound_and_its_ceiling(start_sidecar: SidecarFactory, fake: Fake) -> None:
    sc = start_sidecar(max_wrong_rate_ceiling=0.2)
    c = openai_client(sc.url, "sk-b", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="X-Semcache-Max-Wrong-Rate"):
        ask(c, Q, extra_headers={"X-Semcache-Max-Wrong-Rate": "1.5"})
    with pytest.raises(openai.BadRequestError, match="X-Semcache-Max-Wrong-Rate"):
        ask(c, Q, extra_headers={"X-Semcache-Max-Wrong-Rate": "lots"})
    ask(c, ASC)
    sc.wait_stores()
    # a bound of 1 would serve the guarded near-miss at its threshold; the ceiling (0.2)
    # keeps the static rule, which refuses it
    h, _ = ask(c, DESC, extra_headers={"X-Semcache-Max-Wrong-Rate": "1"})
    assert h["x-semcache-status"] == "miss"
    loose = start_sidecar(max_wrong_rate_ceiling=1.0, data_dir=sc.runtime.settings.data_dir.parent / "b")
    c2 = openai_client(loose.url, "sk-b", max_retries=0)
    ask(c2, ASC)
    loose.wait_stores()
    h, _ = ask(c2, DESC, extra_headers={"X-Semcache-Max-Wrong-Rate": "1"})
    assert h["x-semcache-status"] == "hit" and h["x-semcache-guard"]


APPROVED: list[tuple[str, str, float]] = []


def approve_all(query: str, candidate: str, similarity: float) -> bool:
    APPROVED.append((query, candidate, similarity))
    return True


def test_a_verifier_callable_may_approve_a_borderline_candidate(
        start_sidecar: SidecarFactory, fake: Fake) -> None:
    APPROVED.clear()
    sc = start_sidecar(threshold=0.88, verifier="tests.test_quality_web:approve_all")
    c = openai_client(sc.url, "sk-v", max_retries=0)
    ask(c, Q)
    sc.wait_stores()
    h, _ = ask(c, PARA)  # 0.866: within the band below 0.88
    assert h["x-semcache-status"] == "hit" and h["x-semcache-verified"] == "1"
    assert APPROVED == [(PARA, Q, pytest.approx(float(h["x-semcache-similarity"]), abs=1e-4))]
    h, _ = ask(c, "How tall is Mount Everest?")  # nothing near: never asked
    assert h["x-semcache-status"] == "miss" and len(APPROVED) == 1


def test_a_verifier_endpoint_is_asked_and_a_no_is_a_miss(
        start_sidecar: SidecarFactory, fake: Fake) -> None:
    verdicts = {"yes": 0, "no": 0}
    reply = {"say": "no"}

    def answer_for(prompt: str, body: dict[str, Any]) -> str:
        if body["messages"][0]["content"] == PROMPT:
            verdicts[reply["say"]] += 1
            return reply["say"]
        # the two share an answer, so the refused candidate is judged right (no veto)
        return answer_text(Q if prompt == PARA else prompt)

    fake.config.answer_for = answer_for
    sc = start_sidecar(threshold=0.88, verifier=fake.url + "/v1", verifier_api_key="sk-verifier")
    c = openai_client(sc.url, "sk-v", max_retries=0)
    ask(c, Q)
    sc.wait_stores()
    h, _ = ask(c, PARA, extra_headers={"Cache-Control": "no-store"})
    assert h["x-semcache-status"] == "miss" and h["x-semcache-verified"] == "0"
    reply["say"] = "yes"
    h, _ = ask(c, PARA, extra_headers={"Cache-Control": "no-store"})
    assert h["x-semcache-status"] == "hit" and h["x-semcache-verified"] == "1"
    assert verdicts == {"yes": 1, "no": 1}
    assert "Bearer sk-verifier" in fake.stats.authorizations


def test_a_broken_verifier_refuses(start_sidecar: SidecarFactory, fake: Fake) -> None:
    sc = start_sidecar(threshold=0.88, verifier="http://127.0.0.1:9/v1", verifier_timeout=0.5)
    c = openai_client(sc.url, "sk-v", max_retries=0)
    ask(c, Q)
    sc.wait_stores()
    h, _ = ask(c, PARA)
    assert h["x-semcache-status"] == "miss" and h["x-semcache-verified"] == "0"
    assert sc.runtime.verifier is not None and sc.runtime.verifier.failures == 1


def test_feedback_on_a_semantic_hit_is_an_outcome(start_sidecar: SidecarFactory, fake: Fake) -> None:
    sc = start_sidecar(admin_token=TOKEN)
    ops = Client(sc.url, TOKEN)
    c = openai_client(sc.url, "sk-f", max_retries=0)
    ask(c, Q)
    sc.wait_stores()
    h, _ = ask(c, PARA)
    assert h["x-semcache-match"] == "semantic"
    ops.feedback(int(h["x-semcache-entry"]), correct=False)
    assert recorded(ops, "feedback") == 1


def test_policy_api_refits_persists_and_needs_its_token(
        start_sidecar: SidecarFactory, fake: Fake) -> None:
    sc = start_sidecar(admin_token=TOKEN, threshold=0.99)
    ops = Client(sc.url, TOKEN)
    c = openai_client(sc.url, "sk-p", max_retries=0)
    ask(c, Q)
    sc.wait_stores()
    ask(c, PARA)  # refused at 0.99: judged (different answers: wrong)
    sc.wait_stores()
    wait_for(lambda: recorded(ops, "miss") == 1)
    state = ops.update_policy(refit=True)
    assert state["model"]["scorer"] == "similarity" and state["outcomes"] == 1
    assert not state["active"]  # one outcome is no evidence: the static rule stays
    with pytest.raises(InvalidRequestError, match="learning"):
        ops.update_policy(learning="no")  # type: ignore[arg-type]
    from semcache import AuthError

    with pytest.raises(AuthError):
        Client(sc.url, "wrong").policy()
    _restart_keeps_outcomes(sc, start_sidecar)


def _restart_keeps_outcomes(sc: Sidecar, start_sidecar: SidecarFactory) -> None:
    settings = sc.runtime.settings
    sc.server.stop()
    again = start_sidecar(admin_token=TOKEN, data_dir=settings.data_dir)
    state = Client(again.url, TOKEN).policy()
    assert state["outcomes"] == 1 and state["model"]["scorer"] == "similarity"


def test_learning_runs_at_background_priority_and_static_mode_judges_nothing(
        start_sidecar: SidecarFactory, fake: Fake) -> None:
    import os
    import threading

    sc = start_sidecar(admin_token=TOKEN, policy="static", threshold=0.95)
    nice = sc.runtime.learn_pool.submit(
        lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())).result()
    assert nice == 10
    c = openai_client(sc.url, "sk-st", max_retries=0)
    ask(c, Q)
    sc.wait_stores()
    assert ask(c, PARA)[0]["x-semcache-status"] == "miss"  # refused at 0.95 ...
    sc.wait_stores()
    state = Client(sc.url, TOKEN).policy()
    assert state["mode"] == "static" and state["outcomes"] == 0  # ... and not judged
    assert 'semcache_policy_outcomes_total{source="miss"' not in Client(sc.url, TOKEN).metrics()
