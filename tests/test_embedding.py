"""The reference embedder (sentence-transformers on torch): packaged model, offline,
unit-norm float32; backend names and thread sizing."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from semcache.embedding import Embedder, SentenceTransformerEmbedder, backend_of, sidecar_threads
from semcache.errors import EmbeddingError
from tests.conftest import network_trap


def test_packaged_model_on_torch_gives_unit_float32_rows(embedder: SentenceTransformerEmbedder) -> None:
    assert isinstance(embedder, Embedder)
    out = embedder.embed(["What is the capital of France?", "what's the capital city of france",
                          "sort a list ascending in python"])
    assert out.dtype == np.float32 and out.shape == (3, 384) and out.flags.c_contiguous
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert out[0] @ out[1] > 0.8 > out[0] @ out[2]
    assert embedder.name == "sentence-transformers/all-MiniLM-L6-v2@torch"
    assert embedder.embed([]).shape == (0, 384)


def test_loading_never_touches_the_network_even_when_offline_is_unset() -> None:
    """Point every hub/proxy address at a local listener and count connections."""
    code = ("from semcache.embedding import SentenceTransformerEmbedder as E;"
            "v=E().embed(['hello world']); print(v.shape)")
    with network_trap() as (env, seen):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "(1, 384)"
    assert seen == []


def test_unknown_model_fails_with_a_clear_error() -> None:
    try:
        SentenceTransformerEmbedder("no-such-org/no-such-model")
    except EmbeddingError as exc:
        assert "no-such-org/no-such-model" in str(exc) and "offline" in str(exc)
    else:
        raise AssertionError("loading a model that is not on disk must fail")


def test_backend_names_and_thread_sizing() -> None:
    assert backend_of("sentence-transformers/all-MiniLM-L6-v2@onnx-int8") == "onnx-int8"
    assert backend_of("sentence-transformers/all-MiniLM-L6-v2@torch") == "torch"
    assert backend_of("test-hash@fake") is None and backend_of("no-backend") is None
    assert sidecar_threads(3) == 3
    assert 1 <= sidecar_threads(0) <= 4
