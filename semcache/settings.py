"""Configuration enters here, once.

Every setting is declared exactly once, as a field of :class:`Settings` with its type,
default, parser and help text.  A frozen :class:`Settings` is built from (in rising precedence) the
defaults, an env file (``--env-file`` / ``SEMCACHE_ENV_FILE``: ``SEMCACHE_<NAME>=value``
lines, e.g. the threshold ``semcache calibrate --write-env`` chose), ``SEMCACHE_<NAME>``
environment variables and command-line flags ``--<name-with-dashes>``.  No other module
of semcache reads ``os.environ``.

The two extension switches (``SEMCACHE_NO_EXTENSIONS``, ``SEMCACHE_REQUIRE_EXTENSIONS``)
are process-wide and read by :func:`extension_policy`, because they decide which code is
imported before any Settings object exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .budgets import Budget, parse_budgets
from .errors import ConfigError

__all__ = ["Settings", "Spec", "specs", "setting", "extension_policy", "add_arguments", "ENV_PREFIX",
           "read_env_file", "write_env_file", "EMBEDDING_BACKENDS"]

ENV_PREFIX = "SEMCACHE_"
#: Values of ``embedding_backend`` (see :mod:`semcache.embedding`).
EMBEDDING_BACKENDS = ("auto", "torch", "onnx", "onnx-int8")


@dataclass(frozen=True)
class Spec:
    """Declaration of one setting: name, parser from text, default, help."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    secret: bool = False

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _opt_float(text: str) -> float | None:
    return None if text.strip().lower() in ("", "none", "0", "inf") else float(text)


def _opt_rate(text: str) -> float | None:
    return None if text.strip().lower() in ("", "none") else float(text)


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _opt_str(text: str) -> str | None:
    return text or None


def _opt_path(text: str) -> Path | None:
    return Path(text) if text.strip() else None


def _size(text: str) -> int:
    """Bytes from text such as ``1048576``, ``64k``, ``512MiB``, ``4g``."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}.get(t[-1:], 1)
    return int(float(t[:-1] if mult != 1 else t) * mult)


def setting(default: Any, help: str, parse: Callable[[str], Any], *, secret: bool = False) -> Any:
    """Declare one setting as a dataclass field: default, help text, parser from text."""
    return field(default=default, repr=not secret,
                 metadata={"help": help, "parse": parse, "secret": secret})


@dataclass(frozen=True)
class Settings:
    """The frozen configuration of one semcache process.  Build with :meth:`load`.

    Each field is the one declaration of a setting; its flag is ``--field-name`` and its
    environment variable ``SEMCACHE_FIELD_NAME``.
    """

    # --- storage and cache semantics
    data_dir: Path = setting(Path("./semcache-data"), "directory of the LMDB store", Path)
    threshold: float = setting(
        0.85, "cosine similarity at or above which a semantic match is served (with the "
        "adaptive policy: until its outcomes give a calibrated rule)", float)
    threshold_floor: float = setting(
        0.80, "lowest per-request X-Semcache-Threshold the server accepts", float)
    ttl: float | None = setting(
        7 * 24 * 3600.0, "seconds an entry lives after insertion (none/0: forever)", _opt_float)
    max_entries: int = setting(
        1_000_000, "entry cap; least recently used entries are evicted past it", int)
    max_bytes: int = setting(2 << 30, "cap on stored payload bytes (suffixes k, m, g)", _size)
    eviction: str = setting("lru", "eviction policy: lru or lfu", str)
    near_miss_guard: bool = setting(
        True, "refuse semantic matches whose numbers, dates, units, opposites, negation, "
        "languages, formats or platforms differ (semcache/guard.py)", _bool)
    policy: str = setting(
        "adaptive", "how semantic matches are decided: adaptive (learned from outcomes under "
        "max_wrong_rate; the threshold and guard until then) or static (threshold and guard)", str)
    max_wrong_rate: float = setting(
        0.05, "adaptive policy: the largest share of served semantic hits that may be wrong "
        "(its 95% upper bound, estimated from outcomes)", float)
    max_wrong_rate_ceiling: float | None = setting(
        None, "largest X-Semcache-Max-Wrong-Rate a request may ask for (default: "
        "max_wrong_rate, so requests can only be stricter; 1 lets them take any match)",
        _opt_rate)
    policy_floor: float = setting(
        0.70, "lowest similarity at which a candidate is considered and learned from", float)
    explore_rate: float = setting(
        0.02, "share of would-be semantic hits sent upstream anyway to learn whether they "
        "were right (they cost a call; 0: learn only from refused candidates and feedback)",
        float)
    policy_outcomes: int = setting(
        50_000, "outcomes the adaptive policy keeps (about 1.6 KB each, in memory and LMDB)", int)
    policy_refit_interval: float = setting(
        300.0, "seconds between refits of the adaptive policy while outcomes arrive", float)
    shadow: tuple[str, ...] = setting(
        (), "namespaces in shadow mode, comma-separated ('*': all): always answered upstream, "
        "with what the cache would have served recorded and judged", _names)
    answer_equivalence: float = setting(
        0.92, "cosine of two answers' embeddings at or above which they count as the same "
        "answer when learning (1: only equal texts)", float)
    verifier: str | None = setting(
        None, "second opinion on borderline candidates: 'module:function' or the URL of an "
        "OpenAI-compatible router (off when empty)", _opt_str)
    verifier_model: str = setting("gpt-4o-mini", "model the verifier URL is asked with", str)
    verifier_api_key: str | None = setting(
        None, "bearer token for the verifier URL", _opt_str, secret=True)
    verifier_timeout: float = setting(
        2.0, "seconds the verifier may take; a slower answer is a no", float)
    verifier_band: float = setting(
        0.10, "how far below the serving bar (in confidence; half of it in similarity "
        "under the static rule) a candidate is borderline and goes to the verifier", float)
    flat_limit: int = setting(
        4096, "scopes up to this many entries are searched by exact scan, larger by FAISS", int)
    map_size: int = setting(8 << 30, "LMDB map size: the most the store file may grow to", _size)
    sync: bool = setting(
        True, "fsync each LMDB commit (off: faster, may lose the last writes on power loss)", _bool)
    snapshot_interval: float | None = setting(
        3600.0,
        "seconds between index snapshots taken by sweep (one is also written at close); "
        "none/0: no snapshots, the index is rebuilt from the store at every start",
        _opt_float)
    # --- embedding
    embedding_model: str = setting(
        "default",
        "sentence-transformers model name or local path; 'default' is the packaged all-MiniLM-L6-v2",
        str)
    embedding_backend: str = setting(
        "auto",
        "embedding backend: torch (sentence-transformers, the reference), onnx (ONNX Runtime, "
        "fp32), onnx-int8 (int8 dynamic quantisation), or auto (the store's own backend, "
        "else the fastest that passes its quality check)",
        str)
    embedding_device: str = setting(
        "cpu", "torch device for the embedding model (the onnx backends run on the cpu)", str)
    embedding_threads: int = setting(
        1, "intra-op threads of one forward pass (0: the CPUs available, at most 4); one keeps "
        "a sidecar's latency steady beside a busy application", int)
    embedding_cache_dir: Path | None = setting(
        None, "directory of the locally exported ONNX models (default: <data_dir>/models)",
        lambda text: Path(text) if text else None)
    embedding_batch_max: int = setting(
        32, "most queries that share one forward pass when they arrive together", int)
    embedding_batch_wait_ms: float = setting(
        2.0, "longest a query waits for others to join its batch while they keep arriving "
        "(milliseconds; a query that arrives alone is never held)", float)
    # --- sidecar server
    upstream: str = setting(
        "http://127.0.0.1:4000",
        "base URL of the OpenAI-compatible router, e.g. https://api.openai.com", str)
    host: str = setting("127.0.0.1", "address to listen on", str)
    port: int = setting(8080, "port to listen on", int)
    admin_token: str | None = setting(
        None, "bearer token required by the operator API", _opt_str, secret=True)
    lookup_timeout: float = setting(
        0.3, "seconds a cache lookup may take before the request goes upstream uncached", float)
    upstream_timeout: float = setting(600.0, "seconds to wait for the upstream's full answer", float)
    upstream_connect_timeout: float = setting(
        10.0, "seconds to wait to connect to the upstream", float)
    max_body_bytes: int = setting(4 << 20, "largest accepted request body", _size)
    cache_tool_calls: bool = setting(False, "also store answers that end in tool_calls", _bool)
    cache_truncated: bool = setting(
        False, "also store answers cut by max_tokens (finish_reason length)", _bool)
    namespace_from_key: bool = setting(
        True,
        "without X-Semcache-Namespace, partition entries by API key (off: one shared namespace)",
        _bool)
    log_level: str = setting("info", "logging level", str)
    # --- operator surface
    prices: Path | None = setting(
        None, "JSON or TOML file of model prices (USD per million prompt/completion tokens) "
        "over the built-in table", _opt_path)
    budgets: tuple[Budget, ...] = setting(
        (), "daily upstream budgets per namespace, e.g. 'team-a=200000,team-b=$5,*=1m' "
        "(tokens, or $ for US dollars; UTC days)", parse_budgets)
    env_file: Path | None = setting(
        None, "file of SEMCACHE_NAME=value lines read before the environment "
        "(e.g. written by semcache calibrate --write-env)", _opt_path)

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def load(
        cls,
        args: argparse.Namespace | Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Defaults < env file < ``SEMCACHE_*`` environment < explicit ``args`` (None
        values ignored).  The env file is named by ``args["env_file"]`` or
        ``SEMCACHE_ENV_FILE``.

        Raises :class:`ConfigError` naming the variable, flag or file line whose text
        does not parse.
        """
        env = os.environ if environ is None else environ
        given = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
        values: dict[str, Any] = {}
        env_file = given.get("env_file") or env.get(ENV_PREFIX + "ENV_FILE")
        if env_file:
            for name, (text, where) in _read_env_file(Path(env_file)).items():
                spec = _spec_named(name)
                if spec.name != "env_file":
                    values[spec.name] = _parse(spec, text, where)
        for spec in specs():
            raw = env.get(spec.env)
            if raw is not None:
                values[spec.name] = _parse(spec, raw, spec.env)
        by_name = {s.name: s for s in specs()}
        for name, value in given.items():
            if name in by_name and value is not None:
                spec = by_name[name]
                values[name] = _parse(spec, value, spec.flag) if isinstance(value, str) else value
        return cls(**values)

    @property
    def wrong_rate_ceiling(self) -> float:
        """The largest per-request max wrong rate accepted (``max_wrong_rate_ceiling``,
        else ``max_wrong_rate``)."""
        return self.max_wrong_rate if self.max_wrong_rate_ceiling is None else self.max_wrong_rate_ceiling

    @property
    def model_dir(self) -> Path:
        """Where ONNX exports are cached: ``embedding_cache_dir``, else ``data_dir/models``."""
        return Path(self.embedding_cache_dir or Path(self.data_dir) / "models")

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def public(self) -> dict[str, Any]:
        """The settings as JSON-able values, secrets masked (for logs and the operator API)."""
        out: dict[str, Any] = {}
        for spec in specs():
            value = getattr(self, spec.name)
            if spec.secret:
                value = "***" if value else None
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = [str(v) for v in value]
            out[spec.name] = value
        return out


def specs() -> tuple[Spec, ...]:
    """The declared settings, in declaration order."""
    return tuple(
        Spec(f.name, f.metadata["parse"], f.default, f.metadata["help"], f.metadata["secret"])
        for f in dataclasses.fields(Settings)
    )


def _spec_named(env_name: str) -> Spec:
    for spec in specs():
        if spec.env == env_name:
            return spec
    raise KeyError(env_name)


def _read_env_file(path: Path) -> dict[str, tuple[str, str]]:
    """``{SEMCACHE_NAME: (value, "file:line NAME")}`` from an env file.

    Lines are ``NAME=value`` (an ``export`` prefix and one pair of surrounding quotes
    are allowed); blank lines and ``#`` comments are skipped.  Raises
    :class:`ConfigError` naming the file and line of a malformed line or unknown name.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("env_file", str(path), f"cannot be read ({exc.strerror or exc})") from None
    known = {spec.env for spec in specs()}
    out: dict[str, tuple[str, str]] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.removeprefix("export ").partition("=")
        name, value = name.strip(), value.strip()
        where = f"{path}:{lineno}"
        if not sep or not name:
            raise ConfigError(where, line, "expected NAME=value")
        if name not in known:
            raise ConfigError(where, name, f"not a semcache setting (names start with {ENV_PREFIX})")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[name] = (value, f"{where} {name}")
    return out


def read_env_file(path: Path) -> dict[str, str]:
    """The ``SEMCACHE_NAME -> value`` lines of an env file (see :meth:`Settings.load`)."""
    return {name: value for name, (value, _) in _read_env_file(Path(path)).items()}


def write_env_file(path: Path, updates: Mapping[str, str]) -> None:
    """Set ``SEMCACHE_NAME=value`` lines in an env file, keeping its other lines.

    A line already defining a name is replaced in place, new names are appended; the
    file is created when missing and replaced atomically.  Raises :class:`ConfigError`
    for a name that is not a setting or a value that does not parse.
    """
    path = Path(path)
    by_env = {spec.env: spec for spec in specs()}
    for name, value in updates.items():
        if name not in by_env or name == ENV_PREFIX + "ENV_FILE":
            raise ConfigError("env_file", name, "not a semcache setting that a file may set")
        _parse(by_env[name], value, name)
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    pending = dict(updates)
    for i, line in enumerate(lines):
        name = line.strip().removeprefix("export ").partition("=")[0].strip()
        if name in pending:
            lines[i] = f"{name}={pending.pop(name)}"
    lines += [f"{name}={value}" for name, value in pending.items()]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _parse(spec: Spec, raw: str, source: str) -> Any:
    try:
        return spec.parse(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(source, raw, f"cannot parse: {exc}") from None


def _validate(s: Settings) -> None:
    if not 0.0 < s.threshold <= 1.0:
        raise ConfigError("threshold", s.threshold, "must be in (0, 1]")
    if not 0.0 < s.threshold_floor <= 1.0:
        raise ConfigError("threshold_floor", s.threshold_floor, "must be in (0, 1]")
    if s.ttl is not None and s.ttl <= 0:
        raise ConfigError("ttl", s.ttl, "must be positive or none")
    if s.snapshot_interval is not None and s.snapshot_interval <= 0:
        raise ConfigError("snapshot_interval", s.snapshot_interval, "must be positive or none")
    for name in ("max_entries", "max_bytes", "flat_limit", "map_size", "max_body_bytes"):
        if getattr(s, name) < 1:
            raise ConfigError(name, getattr(s, name), "must be at least 1")
    if s.policy not in ("adaptive", "static"):
        raise ConfigError("policy", s.policy, "must be 'adaptive' or 'static'")
    for name in ("max_wrong_rate", "explore_rate", "verifier_band"):
        if not 0.0 <= getattr(s, name) <= 1.0:
            raise ConfigError(name, getattr(s, name), "must be between 0 and 1")
    if s.max_wrong_rate_ceiling is not None and not 0.0 <= s.max_wrong_rate_ceiling <= 1.0:
        raise ConfigError("max_wrong_rate_ceiling", s.max_wrong_rate_ceiling,
                          "must be between 0 and 1")
    for name in ("policy_floor", "answer_equivalence"):
        if not 0.0 < getattr(s, name) <= 1.0:
            raise ConfigError(name, getattr(s, name), "must be in (0, 1]")
    if s.policy_outcomes < 1:
        raise ConfigError("policy_outcomes", s.policy_outcomes, "must be at least 1")
    for name in ("policy_refit_interval", "verifier_timeout"):
        if getattr(s, name) <= 0:
            raise ConfigError(name, getattr(s, name), "must be positive")
    if s.eviction not in ("lru", "lfu"):
        raise ConfigError("eviction", s.eviction, "must be 'lru' or 'lfu'")
    if s.embedding_backend not in EMBEDDING_BACKENDS:
        raise ConfigError("embedding_backend", s.embedding_backend,
                          "must be one of " + ", ".join(EMBEDDING_BACKENDS))
    if s.embedding_threads < 0:
        raise ConfigError("embedding_threads", s.embedding_threads, "must be 0 or more")
    if s.embedding_batch_max < 1:
        raise ConfigError("embedding_batch_max", s.embedding_batch_max, "must be at least 1")
    if not 0.0 <= s.embedding_batch_wait_ms <= 1000.0:
        raise ConfigError("embedding_batch_wait_ms", s.embedding_batch_wait_ms,
                          "must be between 0 and 1000 milliseconds")
    if not 0 < s.port < 65536:
        raise ConfigError("port", s.port, "must be a TCP port number")
    for name in ("lookup_timeout", "upstream_timeout", "upstream_connect_timeout"):
        if getattr(s, name) <= 0:
            raise ConfigError(name, getattr(s, name), "must be positive")
    if not s.upstream.startswith(("http://", "https://")):
        raise ConfigError("upstream", s.upstream, "must be an http:// or https:// URL")


def add_arguments(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """Add ``--flag`` options for the named settings (all when None), defaulting to None
    so that unset flags fall through to the environment and the declared default."""
    for spec in specs():
        if names is not None and spec.name not in names:
            continue
        shown = "***" if spec.secret else spec.default
        # a boolean flag alone means on ("--cache-tool-calls"); it also takes a value
        flagged: dict[str, Any] = {"nargs": "?", "const": "1"} if spec.parse is _bool else {}
        parser.add_argument(
            spec.flag, dest=spec.name, default=None, metavar=spec.name.upper(),
            help=f"{spec.help} [env {spec.env}; default {shown}]", **flagged,
        )


Mode = Literal["auto", "native", "python"]


def extension_policy(environ: Mapping[str, str] | None = None) -> Mode:
    """Which implementation of the hot loops to use: ``python`` when
    ``SEMCACHE_NO_EXTENSIONS=1``, ``native`` (required, missing is an error) when
    ``SEMCACHE_REQUIRE_EXTENSIONS=1``, else ``auto`` (native when built)."""
    env = os.environ if environ is None else environ
    if _bool(env.get(ENV_PREFIX + "NO_EXTENSIONS", "0")):
        return "python"
    if _bool(env.get(ENV_PREFIX + "REQUIRE_EXTENSIONS", "0")):
        return "native"
    return "auto"
