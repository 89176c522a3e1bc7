"""Workloads for the savings benchmark: labeled requests in the order they are replayed.

A :class:`Workload` is a list of :class:`BenchRequest` — OpenAI chat messages, model,
tenant, and a *label*: requests that share a label may share an answer, every other pair
of requests needs different answers.  The fake upstream answers by label
(:func:`semcache.fake_upstream.answer_by_label`), so a cache hit is correct exactly when
the answer it served is the one the upstream would have given for that request.

Two shapes:

* ``pairs`` (QQP, langcache, gptcache, meancache): every ``load`` request (a pair's anchor)
  is stored into an empty cache first, then every ``query`` request is looked up without
  being stored.  A query labeled 1 shares its anchor's label, a query labeled 0 has a
  label of its own (:class:`Labels`: identical texts always share one) — the data
  README's protocol: a hit is correct only when the pair is a duplicate and the entry
  served is its anchor's, or one with identical text.
* ``log`` (a user's own traffic): every request is a ``query`` replayed in order, looked up
  and, on a miss, stored — as the sidecar would have run on that traffic.

Test/dev split for pair files: a pair is *test* when
``int(sha256(first_text).hexdigest(), 16) % 4 == 0`` (how ``qqp_test`` was cut); tune on
dev, report on test.

The user-log format (JSON lines, one request per line; blank lines and lines starting
with ``#`` are skipped)::

    {"messages": [{"role": "user", "content": "..."}], "model": "gpt-4o-mini",
     "tenant": "acme", "label": "refund-policy", "timestamp": 1718000000.5,
     "params": {"temperature": 0}}

``messages`` (a non-empty array of ``{role, content}`` with a user turn) and ``model`` are
required; ``tenant`` (default ``"default"``), ``label`` (string or integer),
``timestamp`` (seconds since the epoch or an ISO-8601 string; the log is replayed in
timestamp order when every line has one, else in file order) and ``params`` (generation
parameters sent with the request) are optional.  A request without a label is labeled by
its own canonical text, so only identical requests count as interchangeable: a semantic
hit between two different unlabeled requests counts as wrong (the labels do not say it
is right).  Any other key, a wrong type or bad JSON raises :class:`WorkloadError` naming
the file and line.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from .errors import SemcacheError
from .keys import canonical_json

__all__ = [
    "builtin_pairs",
    "BenchRequest",
    "Workload",
    "WorkloadError",
    "Pair",
    "is_test_pair",
    "read_pairs",
    "split_pairs",
    "pairs_workload",
    "meancache_workload",
    "Labels",
    "pair_labels",
    "read_log",
    "builtin_workload",
    "BUILTIN",
    "DEFAULT_MODEL",
]

DEFAULT_MODEL = "gpt-4o-mini"
Phase = Literal["load", "query"]
Split = Literal["dev", "test", "all"]


class WorkloadError(SemcacheError, ValueError):
    """A workload file cannot be read; the message names the file and line."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class BenchRequest:
    """One request to replay.

    ``positive`` says whether a correct answer is in the cache when the request is asked
    (a duplicate pair's query; in a log, an earlier request of the same scope and label);
    recall is measured over these.  ``messages`` are OpenAI chat messages.
    """

    messages: tuple[dict[str, Any], ...]
    label: str
    phase: Phase = "query"
    positive: bool = False
    model: str = DEFAULT_MODEL
    tenant: str = "default"
    params: dict[str, Any] = field(default_factory=dict)
    timestamp: float | None = None

    @property
    def text(self) -> str:
        """The last user turn's text (what the cache embeds)."""
        for msg in reversed(self.messages):
            if msg.get("role") == "user":
                content = msg.get("content")
                return content if isinstance(content, str) else json.dumps(content)
        return ""

    def scope_key(self) -> bytes:
        """What must match exactly for two requests to share an answer (tenant, model,
        params, the conversation before the last user turn) — the cache's scope, seen
        from the benchmark's side."""
        return canonical_json([self.tenant, self.model, self.params, list(self.messages[:-1])])


@dataclass
class Workload:
    """A named, ordered list of requests; ``kind`` is ``pairs`` or ``log`` (module doc)."""

    name: str
    kind: Literal["pairs", "log"]
    requests: list[BenchRequest]
    source: str = ""

    @property
    def queries(self) -> list[BenchRequest]:
        return [r for r in self.requests if r.phase == "query"]

    @property
    def loads(self) -> list[BenchRequest]:
        return [r for r in self.requests if r.phase == "load"]


# ---------------------------------------------------------------- pair files
@dataclass(frozen=True)
class Pair:
    """Two texts and whether they are duplicates (1) or need different answers (0)."""

    a: str
    b: str
    label: int


def is_test_pair(first_text: str) -> bool:
    """The deterministic split of the shared data: test when sha256(text) % 4 == 0."""
    return int(hashlib.sha256(first_text.encode("utf-8")).hexdigest(), 16) % 4 == 0


def read_pairs(path: Path) -> list[Pair]:
    """Pairs from a QQP ``*.jsonl(.gz)`` (``text_a, text_b, label``), a langcache CSV
    (``sentence1, sentence2, label``) or a gptcache JSON array (``origin, similar``: all
    duplicates).  Raises :class:`WorkloadError` naming the file and line of a bad row."""
    path = Path(path)
    if not path.exists():
        raise WorkloadError(str(path), "no such file")
    name = path.name.lower()
    if name.endswith(".csv"):
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"sentence1", "sentence2", "label"} - set(reader.fieldnames or ())
            if missing:
                raise WorkloadError(f"{path}:1", f"CSV header lacks {sorted(missing)}")
            return [_pair(row.get("sentence1"), row.get("sentence2"), row.get("label"),
                          f"{path}:{i}") for i, row in enumerate(reader, start=2)]
    if name.endswith(".json"):
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise WorkloadError(str(path), f"not JSON ({exc})") from None
        if not isinstance(items, list):
            raise WorkloadError(str(path), "expected a JSON array of {origin, similar}")
        return [_pair(it.get("origin"), it.get("similar"), 1, f"{path}[{i}]")
                if isinstance(it, dict) else _pair(None, None, None, f"{path}[{i}]")
                for i, it in enumerate(items)]
    opener = gzip.open if name.endswith(".gz") else open
    out: list[Pair] = []
    with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise WorkloadError(f"{path}:{i}", f"not JSON ({exc})") from None
            if not isinstance(row, dict):
                raise WorkloadError(f"{path}:{i}", "expected an object")
            out.append(_pair(row.get("text_a"), row.get("text_b"), row.get("label"), f"{path}:{i}"))
    return out


def _pair(a: Any, b: Any, label: Any, where: str) -> Pair:
    if not isinstance(a, str) or not a.strip() or not isinstance(b, str) or not b.strip():
        raise WorkloadError(where, "both texts of a pair must be non-empty strings")
    try:
        y = int(label)
    except (TypeError, ValueError):
        y = -1
    if y not in (0, 1):
        raise WorkloadError(where, f"label must be 0 or 1 (got {label!r})")
    return Pair(a, b, y)


def split_pairs(pairs: Iterable[Pair], split: Split, limit: int | None = None) -> list[Pair]:
    """The ``dev``/``test`` part of ``pairs`` (or ``all``), first ``limit`` in file order."""
    chosen = [p for p in pairs if split == "all" or is_test_pair(p.a) == (split == "test")]
    return chosen if limit is None else chosen[:limit]


def _user(text: str) -> tuple[dict[str, Any], ...]:
    return ({"role": "user", "content": text},)


class Labels:
    """Labels as equivalence classes of conversations (union-find).

    Identical conversations are one request, so they always share a label; a pair marked
    duplicate joins its two classes.  Everything else keeps a label of its own.  So a
    query served the entry of *another* anchor counts as correct exactly when the labels
    connect the two (an identical text, or a chain of duplicate pairs).
    """

    def __init__(self) -> None:
        self._parent: dict[bytes, bytes] = {}

    @staticmethod
    def key(messages: Sequence[dict[str, Any]]) -> bytes:
        return canonical_json(list(messages))

    def _find(self, k: bytes) -> bytes:
        self._parent.setdefault(k, k)
        root = k
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[k] != root:  # path compression
            self._parent[k], k = root, self._parent[k]
        return root

    def same(self, a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]) -> None:
        """Record that ``a`` and ``b`` may share an answer."""
        ra, rb = self._find(self.key(a)), self._find(self.key(b))
        if ra != rb:
            self._parent[max(ra, rb)] = min(ra, rb)

    def label(self, messages: Sequence[dict[str, Any]]) -> str:
        """The label of ``messages``' class (stable for a given set of links)."""
        return "c:" + hashlib.sha256(self._find(self.key(messages))).hexdigest()[:20]


def pair_labels(pairs: Sequence[Pair]) -> tuple[list[str], list[str]]:
    """(anchor labels, query labels) of ``pairs`` under :class:`Labels`."""
    labels = Labels()
    for p in pairs:
        labels.key(_user(p.a))
        if p.label:
            labels.same(_user(p.a), _user(p.b))
    return ([labels.label(_user(p.a)) for p in pairs], [labels.label(_user(p.b)) for p in pairs])


def pairs_workload(name: str, pairs: Sequence[Pair], *, model: str = DEFAULT_MODEL,
                   source: str = "") -> Workload:
    """Anchors (``a``) loaded first, then every ``b`` queried; labels by :class:`Labels`
    (a duplicate's query shares its anchor's label, a non-duplicate's query has its own
    unless its text is identical to another request's)."""
    anchor, query = pair_labels(pairs)
    loads = [BenchRequest(_user(p.a), anchor[i], "load", model=model) for i, p in enumerate(pairs)]
    queries = [BenchRequest(_user(p.b), query[i], "query", positive=bool(p.label), model=model)
               for i, p in enumerate(pairs)]
    return Workload(name, "pairs", loads + queries, source)


def meancache_workload(items: Sequence[dict[str, Any]], *, model: str = DEFAULT_MODEL,
                       source: str = "") -> Workload:
    """Two-turn conversations (MeanCache ``new_claude.json``).

    Loaded: each first question ``u0`` alone, and its follow-up ``u1`` after the turn
    ``[u0, system_q0]``.  Queried: ``u0_duplicate`` alone and ``u1_duplicate`` in the same
    conversation (duplicates of those anchors); then ``u1_duplicate`` after the *next*
    item's first turn, and ``u1`` with no context at all (each needs an answer of its
    own — a follow-up's meaning depends on the turns before it, so serving it across
    conversations is a wrong hit).
    """
    labels = Labels()
    loads: list[tuple[Any, ...]] = []
    queries: list[tuple[Any, bool]] = []
    n = len(items)
    for i, it in enumerate(items):
        try:
            u0, u0d, s0, u1, u1d = (str(it[k]) for k in
                                    ("u0", "u0_duplicate", "system_q0", "u1", "u1_duplicate"))
            other = items[(i + 1) % n]
            ou0, os0 = str(other["u0"]), str(other["system_q0"])
        except (KeyError, TypeError) as exc:
            raise WorkloadError(f"{source or 'meancache'}[{i}]", f"missing field {exc}") from None
        turn = ({"role": "user", "content": u0}, {"role": "assistant", "content": s0})
        follow = turn + ({"role": "user", "content": u1},)
        follow_dup = turn + ({"role": "user", "content": u1d},)
        other_turn = ({"role": "user", "content": ou0}, {"role": "assistant", "content": os0})
        labels.same(_user(u0), _user(u0d))
        labels.same(follow, follow_dup)
        loads += [_user(u0), follow]
        queries += [(_user(u0d), True), (follow_dup, True),
                    (other_turn + ({"role": "user", "content": u1d},), False), (_user(u1), False)]
    requests = [BenchRequest(m, labels.label(m), "load", model=model) for m in loads]
    requests += [BenchRequest(m, labels.label(m), "query", pos, model) for m, pos in queries]
    return Workload("meancache", "pairs", requests, source)


# ---------------------------------------------------------------- user logs
_LOG_KEYS = {"messages", "model", "tenant", "label", "timestamp", "params"}


def read_log(path: Path, *, name: str | None = None, limit: int | None = None) -> Workload:
    """A user's JSONL log as a ``log`` workload (format in the module doc).

    Raises :class:`WorkloadError` with ``path:line`` for the first malformed line.
    """
    path = Path(path)
    if not path.exists():
        raise WorkloadError(str(path), "no such file")
    requests: list[BenchRequest] = []
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
        for lineno, line in enumerate(f, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            requests.append(_log_request(line, f"{path}:{lineno}"))
            if limit is not None and len(requests) >= limit:
                break
    if not requests:
        raise WorkloadError(str(path), "no requests in the log")
    if all(r.timestamp is not None for r in requests):
        requests.sort(key=lambda r: r.timestamp or 0.0)  # stable: ties keep file order
    return Workload(name or path.stem.split(".")[0], "log", _mark_positives(requests), str(path))


def _log_request(line: str, where: str) -> BenchRequest:
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise WorkloadError(where, f"not valid JSON ({exc})") from None
    if not isinstance(row, dict):
        raise WorkloadError(where, "expected a JSON object")
    unknown = set(row) - _LOG_KEYS
    if unknown:
        raise WorkloadError(where, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_LOG_KEYS)}")
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise WorkloadError(where, "'messages' must be a non-empty array")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise WorkloadError(where, f"messages[{i}] must be an object with a string 'role'")
        content = msg.get("content")
        if not (content is None or isinstance(content, (str, list))):
            raise WorkloadError(where, f"messages[{i}].content must be a string, an array or null")
    if not any(m["role"] == "user" for m in messages):
        raise WorkloadError(where, "'messages' has no user turn")
    model = row.get("model")
    if not isinstance(model, str) or not model:
        raise WorkloadError(where, "'model' must be a non-empty string")
    tenant = row.get("tenant", "default")
    if not isinstance(tenant, str) or not tenant or not tenant.isprintable() or len(tenant) > 64:
        raise WorkloadError(where, "'tenant' must be 1-64 printable characters")
    params = row.get("params", {})
    if not isinstance(params, dict) or {"messages", "model", "metadata", "stream"} & set(params):
        raise WorkloadError(where, "'params' must be an object of generation parameters "
                                   "(not messages, model, metadata or stream)")
    label = row.get("label")
    if label is not None and (isinstance(label, bool) or not isinstance(label, (str, int))):
        raise WorkloadError(where, "'label' must be a string or an integer")
    stamp = _timestamp(row.get("timestamp"), where)
    req = BenchRequest(tuple(messages), "", "query", model=model, tenant=tenant, params=params,
                       timestamp=stamp)
    own = "t:" + hashlib.sha256(req.scope_key() + canonical_json(messages[-1])).hexdigest()[:20]
    return BenchRequest(req.messages, f"l:{label}" if label is not None else own, "query",
                        model=model, tenant=tenant, params=params, timestamp=stamp)


def _timestamp(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    raise WorkloadError(where, f"'timestamp' must be seconds since the epoch or ISO-8601 (got {value!r})")


def _mark_positives(requests: list[BenchRequest]) -> list[BenchRequest]:
    """A log request is positive when an earlier one of the same scope had its label."""
    seen: set[tuple[bytes, str]] = set()
    out: list[BenchRequest] = []
    for r in requests:
        key = (r.scope_key(), r.label)
        out.append(BenchRequest(r.messages, r.label, "query", key in seen, r.model, r.tenant,
                                r.params, r.timestamp))
        seen.add(key)
    return out


# ---------------------------------------------------------------- the shared data
BUILTIN = {
    "qqp": "qqp/qqp_{split}.jsonl.gz",
    "langcache": "langcache/chatgpt.csv",
    "gptcache": "gptcache/mock_data.json",
    "meancache": "meancache/new_claude.json",
}


def builtin_workload(name: str, data_dir: Path, *, split: Split = "test",
                     limit: int | None = None) -> Workload:
    """A workload from ``../shared/data`` by name (``qqp``, ``langcache``, ``gptcache``,
    ``meancache``).  QQP reads ``qqp_{split}``; langcache and gptcache are cut by
    :func:`is_test_pair`, meancache by its conversations' first questions the same way
    (``split="all"``: every one).  ``limit`` keeps the first pairs (or conversations) — a
    deterministic subset."""
    if name not in BUILTIN:
        raise WorkloadError(name, f"unknown workload; built-in ones are {sorted(BUILTIN)} "
                                  "(a user log is given with --log FILE)")
    if name == "meancache":
        path = data_dir / BUILTIN[name]
        if not path.exists():
            raise WorkloadError(str(path), "no such file")
        items = json.loads(path.read_text(encoding="utf-8"))
        if split != "all":  # by the conversation's first question, as pairs are cut
            items = [it for it in items if isinstance(it, dict)
                     and is_test_pair(str(it.get("u0", ""))) == (split == "test")]
        return meancache_workload(items[:limit] if limit else items, source=str(path))
    pairs, path = builtin_pairs(name, data_dir, split=split, limit=limit)
    return pairs_workload(name, pairs, source=str(path))


def builtin_pairs(name: str, data_dir: Path, *, split: Split = "test",
                  limit: int | None = None) -> tuple[list[Pair], Path]:
    """The pairs of a built-in pairs workload (``qqp``, ``langcache``, ``gptcache``) and
    the file they came from; splits and ``limit`` as in :func:`builtin_workload`."""
    if name == "qqp":
        path = data_dir / BUILTIN[name].format(split="dev" if split == "dev" else "test")
        return split_pairs(read_pairs(path), "all", limit), path
    if name not in BUILTIN or name == "meancache":
        raise WorkloadError(name, "is not a pairs workload (qqp, langcache, gptcache)")
    path = data_dir / BUILTIN[name]
    return split_pairs(read_pairs(path), split, limit), path

