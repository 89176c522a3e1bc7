"""The one switch between native (Cython) hot loops and their pure-Python twins.

``SEMCACHE_NO_EXTENSIONS=1`` forces the twins; ``SEMCACHE_REQUIRE_EXTENSIONS=1`` makes a
missing native module an ImportError instead of a silent fallback.  Everything else in
semcache imports the hot loops from here, never from ``_c*``/``_py*`` directly.
"""

from __future__ import annotations

from types import ModuleType

from .settings import extension_policy

__all__ = ["select", "evict", "NATIVE", "IMPLEMENTATION"]


def _pick(native_name: str, twin: ModuleType) -> tuple[ModuleType, bool]:
    mode = extension_policy()
    if mode == "python":
        return twin, False
    try:
        module = __import__(f"semcache.{native_name}", fromlist=["_"])
    except ImportError as exc:
        if mode == "native":
            raise ImportError(
                f"SEMCACHE_REQUIRE_EXTENSIONS=1 but semcache.{native_name} is not built "
                f"({exc}); run `make install` or `pip install -e .`"
            ) from exc
        return twin, False
    return module, True


from . import _pyevict, _pyselect  # noqa: E402

select, _select_native = _pick("_cselect", _pyselect)
evict, _evict_native = _pick("_cevict", _pyevict)
NATIVE = _select_native and _evict_native
IMPLEMENTATION = "native" if NATIVE else "python"
