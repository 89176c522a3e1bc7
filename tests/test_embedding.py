"""The default embedder: packaged model, offline, unit-norm float32."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import numpy as np

from semcache.embedding import Embedder, SentenceTransformerEmbedder
from semcache.errors import EmbeddingError


def test_default_model_gives_unit_float32_rows(embedder: SentenceTransformerEmbedder) -> None:
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
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    seen: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            seen.append(conn)
            conn.close()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0", HF_ENDPOINT=url, HTTP_PROXY=url,
               HTTPS_PROXY=url, http_proxy=url, https_proxy=url, NO_PROXY="", no_proxy="")
    code = ("from semcache.embedding import SentenceTransformerEmbedder as E;"
            "v=E().embed(['hello world']); print(v.shape)")
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=240)
    finally:
        stop.set()
        t.join()
        server.close()
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
