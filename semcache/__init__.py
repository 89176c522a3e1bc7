"""semcache: a semantic cache for OpenAI-compatible LLM traffic.

The public API is re-exported here; everything else is internal.
"""

from .cache import Hit, SemanticCache
from .client import AsyncClient, Client, async_openai_client, openai_client
from .embedding import Embedder, SentenceTransformerEmbedder, load_embedder
from .errors import (
    AuthError,
    BudgetExceededError,
    ConfigError,
    EmbedderMismatchError,
    EmbeddingError,
    InvalidRequestError,
    NotFoundError,
    NotReadyError,
    PayloadTooLargeError,
    SemcacheError,
    StoreError,
    StoreFullError,
    UpstreamError,
    UpstreamTimeoutError,
)
from .keys import CacheRequest, canonical_json, derive_namespace
from .pricing import PriceTable
from .settings import Settings

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AuthError",
    "BudgetExceededError",
    "CacheRequest",
    "Client",
    "ConfigError",
    "Embedder",
    "EmbedderMismatchError",
    "EmbeddingError",
    "Hit",
    "InvalidRequestError",
    "NotFoundError",
    "NotReadyError",
    "PayloadTooLargeError",
    "PriceTable",
    "SemanticCache",
    "SemcacheError",
    "SentenceTransformerEmbedder",
    "Settings",
    "StoreError",
    "StoreFullError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "__version__",
    "async_openai_client",
    "canonical_json",
    "derive_namespace",
    "load_embedder",
    "openai_client",
]
