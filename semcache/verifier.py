"""The verifier hook: a second opinion on borderline candidates (off by default).

When the policy refuses a candidate only narrowly (:attr:`semcache.policy.Verdict.borderline`),
a verifier named by the ``verifier`` setting may approve it:

* ``module:function`` — a Python callable ``f(query, candidate, similarity)`` returning
  a bool (True: the two ask the same thing), sync or async;
* ``http://...`` / ``https://...`` — an OpenAI-compatible router; ``verifier_model`` is
  asked, at temperature 0, whether the two questions ask for the same answer, and a reply
  starting with "yes" approves.  ``verifier_api_key`` is sent as its bearer token.

A verifier that fails, times out (``verifier_timeout``) or answers anything else refuses:
a borderline candidate is then a miss, as without a verifier.  It never sees another
tenant's data: both texts come from the requesting namespace.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

from .errors import ConfigError

__all__ = ["Verifier", "load_verifier", "PROMPT"]

log = logging.getLogger(__name__)

PROMPT = ("You decide whether a cached answer may be reused. Do the two requests below ask "
          "for the same answer? Reply with exactly one word: yes or no.")


class Verifier:
    """Asks the configured callable or endpoint; see the module doc."""

    def __init__(self, target: str, *, model: str = "gpt-4o-mini", api_key: str | None = None,
                 timeout: float = 2.0) -> None:
        self.target = target
        self.model = model
        self.timeout = timeout
        self._api_key = api_key
        self._fn: Callable[..., Any] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.calls = self.approvals = self.failures = 0
        if not target.startswith(("http://", "https://")):
            module, _, name = target.partition(":")
            if not module or not name:
                raise ConfigError("verifier", target, "must be 'module:function' or an http(s) URL")
            try:
                self._fn = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError) as exc:
                raise ConfigError("verifier", target, f"cannot be imported ({exc})") from None
            if not callable(self._fn):
                raise ConfigError("verifier", target, "is not callable")

    async def approve(self, query: str, candidate: str, similarity: float) -> bool:
        """True when the verifier says ``query`` may be answered with ``candidate``'s
        answer; False on no, on any failure and after ``timeout`` seconds."""
        self.calls += 1
        try:
            ok = await asyncio.wait_for(self._ask(query, candidate, similarity), self.timeout)
        except Exception as exc:  # a verifier never breaks a request: refuse instead
            self.failures += 1
            log.warning("verifier failed (%s: %s); treating as no", type(exc).__name__, exc)
            return False
        self.approvals += bool(ok)
        return bool(ok)

    async def _ask(self, query: str, candidate: str, similarity: float) -> bool:
        if self._fn is not None:
            result = self._fn(query, candidate, similarity)
            if inspect.isawaitable(result):
                result = await result
            return result is True
        if self._session is None:
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        body = {"model": self.model, "temperature": 0, "max_tokens": 3,
                "messages": [{"role": "system", "content": PROMPT},
                             {"role": "user", "content": f"Request A: {query}\nRequest B: {candidate}"}]}
        url = self.target.rstrip("/") + ("/chat/completions" if self.target.rstrip("/").endswith("/v1")
                                         else "/v1/chat/completions")
        async with self._session.post(url, json=body, headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"verifier answered HTTP {resp.status}")
            data = await resp.json()
        text = str(data["choices"][0]["message"]["content"] or "")
        return text.strip().lower().startswith("yes")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def stats(self) -> dict[str, int]:
        return {"calls": self.calls, "approvals": self.approvals, "failures": self.failures}


def load_verifier(target: str | None, *, model: str, api_key: str | None,
                  timeout: float) -> Verifier | None:
    """The verifier named by the settings, or None when none is.  Raises
    :class:`ConfigError` naming the setting for a target that cannot be used."""
    if not target:
        return None
    return Verifier(target, model=model, api_key=api_key, timeout=timeout)
