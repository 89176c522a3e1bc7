"""Keys: scope, exact digest, semantic text, namespace (DESIGN §1)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from semcache import CacheRequest, InvalidRequestError, SemcacheError, derive_namespace
from tests.conftest import chat

CHAT = "/v1/chat/completions"


def req(body: dict, ns: str = "anonymous", endpoint: str = CHAT) -> CacheRequest:
    return CacheRequest.from_body(endpoint, body, namespace=ns)


def test_semantic_text_is_last_user_turn_only() -> None:
    r = req(chat("  What is RAM?  ", system="You are terse.", history=[("hi", "hello")]))
    assert r.semantic_text == "What is RAM?"


def test_text_parts_of_content_arrays_are_joined_and_images_go_to_scope() -> None:
    parts = [{"type": "text", "text": "Describe"}, {"type": "text", "text": "this picture"}]
    img_a = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    img_b = {"type": "image_url", "image_url": {"url": "https://example.com/b.png"}}
    a = req({"model": "m", "messages": [{"role": "user", "content": parts + [img_a]}]})
    b = req({"model": "m", "messages": [{"role": "user", "content": parts + [img_b]}]})
    assert a.semantic_text == b.semantic_text == "Describe\nthis picture"
    assert a.scope != b.scope and a.exact != b.exact


@pytest.mark.parametrize("change", [
    {"model": "gpt-4o"}, {"temperature": 0.9}, {"top_p": 0.5}, {"max_tokens": 7},
    {"stop": ["\n"]}, {"seed": 3}, {"tool_choice": "none"}, {"response_format": {"type": "json_object"}},
    {"logit_bias": {"50256": -100}}, {"some_future_param": True},
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
])
def test_every_output_changing_parameter_changes_the_scope(change: dict) -> None:
    base = chat("What is RAM?", temperature=0.2)
    assert req(base).scope != req({**base, **change}).scope


@pytest.mark.parametrize("change", [{"stream": True}, {"user": "u-42"},
                                    {"stream_options": {"include_usage": True}}])
def test_delivery_only_parameters_do_not_change_keys(change: dict) -> None:
    base = chat("What is RAM?")
    assert req(base).exact == req({**base, **change}).exact


def test_system_prompt_history_and_namespace_change_the_scope() -> None:
    base = req(chat("Which part is the brain?"))
    assert base.scope != req(chat("Which part is the brain?", system="Talk like a pirate.")).scope
    assert base.scope != req(chat("Which part is the brain?",
                                  history=[("Parts of a computer?", "CPU, RAM...")])).scope
    assert base.scope != req(chat("Which part is the brain?"), ns="ns:other").scope


def test_same_turn_other_text_same_scope_other_exact() -> None:
    a, b = req(chat("What is RAM?")), req(chat("What is ROM?"))
    assert a.scope == b.scope and a.exact != b.exact


def test_digest_ignores_key_order_and_integral_float_spelling() -> None:
    body = {"model": "m", "temperature": 1, "messages": [{"content": "hi", "role": "user"}]}
    same = {"messages": [{"role": "user", "content": "hi"}], "temperature": 1.0, "model": "m"}
    assert req(body).exact == req(same).exact


def test_digests_are_stable_across_processes() -> None:
    body = chat("What is RAM?", system="s", temperature=0.3, tools=[{"b": 1, "a": 2}])
    code = (
        "import json,sys; from semcache import CacheRequest;"
        "r=CacheRequest.from_body('/v1/chat/completions', json.loads(sys.argv[1]), namespace='ns:t');"
        "print(r.scope.hex(), r.exact.hex())"
    )
    outs = {
        subprocess.run([sys.executable, "-c", code, json.dumps(body)], capture_output=True,
                       text=True, check=True, env={"PYTHONHASHSEED": str(seed), "PATH": ""}).stdout
        for seed in (1, 2)
    }
    here = req(body, ns="ns:t")
    assert outs == {f"{here.scope.hex()} {here.exact.hex()}\n"}


def test_completions_prompt_and_embeddings_input() -> None:
    a = req({"model": "m", "prompt": "Say hi"}, endpoint="/v1/completions")
    assert a.semantic_text == "Say hi"
    batch = req({"model": "m", "prompt": ["a", "b"]}, endpoint="/v1/completions")
    assert batch.semantic_text is None
    e = req({"model": "m", "input": "hello"}, endpoint="/v1/embeddings")
    assert e.semantic_text is None and e.exact != a.exact


def test_n_above_one_is_exact_only() -> None:
    assert req(chat("What is RAM?", n=2)).semantic_text is None


@pytest.mark.parametrize("body, field", [
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": "hi"}, "messages"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"content": "x"}]}, "messages[0].role"),
    ({"model": "m", "messages": ["x"]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": 3, "messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "m", "n": 0, "messages": [{"role": "user", "content": "x"}]}, "n"),
    ({"model": "m", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}, "stream"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
     "messages[0].content[0].text"),
    ([1, 2], "body"),
])
def test_malformed_requests_raise_semcache_error_naming_the_field(body: object, field: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        req(body)  # type: ignore[arg-type]
    assert isinstance(info.value, SemcacheError) and isinstance(info.value, ValueError)
    assert info.value.field == field
    assert str(info.value).startswith(field + ":")


def test_namespace_from_header_key_or_anonymous() -> None:
    salt = b"s" * 16
    assert derive_namespace("team-a", "Bearer sk-1", salt) == "ns:team-a"
    k1 = derive_namespace(None, "Bearer sk-1", salt)
    k2 = derive_namespace(None, "Bearer sk-2", salt)
    assert k1 != k2 and k1.startswith("key:") and "sk-1" not in k1
    assert derive_namespace(None, "Bearer sk-1", b"t" * 16) != k1  # salted
    assert derive_namespace(None, None, salt) == "anonymous"
    assert derive_namespace(None, "Bearer sk-1", salt, from_key=False) == "anonymous"
    with pytest.raises(InvalidRequestError) as info:
        derive_namespace("bad\nname", None, salt)
    assert info.value.field == "X-Semcache-Namespace"
