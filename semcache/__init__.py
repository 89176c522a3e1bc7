"""semcache: a semantic cache for OpenAI-compatible LLM traffic.

The public API is re-exported here; everything else is internal.
"""

from .cache import Hit, SemanticCache
from .embedding import Embedder, SentenceTransformerEmbedder, load_embedder
from .errors import (
    AuthError,
    ConfigError,
    EmbedderMismatchError,
    EmbeddingError,
    InvalidRequestError,
    PayloadTooLargeError,
    SemcacheError,
    StoreError,
    StoreFullError,
    UpstreamError,
    UpstreamTimeoutError,
)
from .keys import CacheRequest, canonical_json, derive_namespace
from .settings import Settings

__version__ = "0.1.0"

__all__ = [
    "AuthError",
    "CacheRequest",
    "ConfigError",
    "Embedder",
    "EmbedderMismatchError",
    "EmbeddingError",
    "Hit",
    "InvalidRequestError",
    "PayloadTooLargeError",
    "SemanticCache",
    "SemcacheError",
    "SentenceTransformerEmbedder",
    "Settings",
    "StoreError",
    "StoreFullError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "__version__",
    "canonical_json",
    "derive_namespace",
    "load_embedder",
]
