"""The ONNX backends: exported offline once, faithful to the reference on padded batches,
named by backend so a store built by one is refused by another, and picked by ``auto``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from semcache import CacheRequest, EmbedderMismatchError, EmbeddingError, SemanticCache, Settings
from semcache.embedding import SentenceTransformerEmbedder, load_embedder
from semcache.embedding_onnx import MIN_COSINE, OnnxEmbedder, export_model
from tests.conftest import OnnxExport, answer, chat, langcache_pairs

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def langcache_texts() -> list[str]:
    """Every distinct langcache sentence, in a fixed shuffled order (so each batch of 32
    mixes short and long texts and is padded)."""
    texts = sorted({t for a, b, _ in langcache_pairs() for t in (a, b)})
    order = np.random.default_rng(5).permutation(len(texts))
    return [texts[i] for i in order]


@pytest.fixture(scope="module")
def reference(embedder: SentenceTransformerEmbedder, langcache_texts: list[str]) -> np.ndarray:
    return embedder.embed(langcache_texts)


def padded_batches(embedder: OnnxEmbedder, texts: list[str], size: int = 32) -> np.ndarray:
    """Embed ``texts`` in consecutive batches of ``size``, each one forward pass padded to
    its longest text."""
    return np.concatenate([embedder.embed_padded(texts[i:i + size]) for i in range(0, len(texts), size)])


def test_export_ran_offline_and_is_reused(onnx_export: OnnxExport) -> None:
    assert onnx_export.returncode == 0, onnx_export.output[-3000:]
    assert onnx_export.connections == 0
    assert "onnx-int8" in onnx_export.output and "FAILS" not in onnx_export.output
    info = export_model(cache_dir=onnx_export.cache_dir)
    assert info.reused and info.directory.parent == onnx_export.cache_dir
    assert info.checks["onnx"] >= MIN_COSINE["onnx"] and info.checks["onnx-int8"] >= MIN_COSINE["onnx-int8"]
    meta = json.loads((info.directory / "export.json").read_text())
    assert meta["model"] == MODEL and meta["max_seq_length"] == 256 and meta["pooling"] == "mean"


def test_texts_of_mixed_lengths_make_padded_batches(langcache_texts: list[str]) -> None:
    """The premise of the next two tests: every batch mixes lengths, so most rows are padded."""
    lengths = [len(t.split()) for t in langcache_texts[:32]]
    assert min(lengths) * 2 <= max(lengths)


def test_fp32_matches_the_reference_on_padded_batches(
    onnx_embedder: OnnxEmbedder, langcache_texts: list[str], reference: np.ndarray,
) -> None:
    out = padded_batches(onnx_embedder, langcache_texts)
    assert out.dtype == np.float32 and out.shape == reference.shape and out.flags.c_contiguous
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    cosine = (out * reference).sum(axis=1)
    assert cosine.min() >= 0.999, (cosine.min(), langcache_texts[int(cosine.argmin())])


def test_int8_matches_the_reference_on_padded_batches(
    int8_embedder: OnnxEmbedder, langcache_texts: list[str], reference: np.ndarray,
) -> None:
    out = padded_batches(int8_embedder, langcache_texts)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    cosine = (out * reference).sum(axis=1)
    assert cosine.min() >= 0.98, (cosine.min(), langcache_texts[int(cosine.argmin())])
    assert cosine.mean() >= 0.99
    alone = np.concatenate([int8_embedder.embed([t]) for t in langcache_texts[:64]])
    assert (alone * reference[:64]).sum(axis=1).min() >= 0.98


def test_grouping_by_length_keeps_each_row_in_its_place(
    onnx_embedder: OnnxEmbedder, langcache_texts: list[str], reference: np.ndarray,
) -> None:
    """embed() runs texts in groups of similar length (several passes for a mixed list):
    the rows still come back in the caller's order."""
    texts = langcache_texts[:100] + [" ".join(["a very long question"] * 30)]
    out = onnx_embedder.embed(texts)
    assert ((out[:100] * reference[:100]).sum(axis=1) >= 0.999).all()
    assert (out * onnx_embedder.embed_padded(texts)).sum(axis=1).min() >= 0.9999
    assert onnx_embedder.embed([]).shape == (0, 384)


def test_names_encode_backend_and_quantisation(onnx_embedder: OnnxEmbedder,
                                               int8_embedder: OnnxEmbedder) -> None:
    assert onnx_embedder.name == f"{MODEL}@onnx" and int8_embedder.name == f"{MODEL}@onnx-int8"
    assert onnx_embedder.dim == int8_embedder.dim == 384


def test_a_store_built_by_one_backend_is_refused_by_another(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, onnx_embedder: OnnxEmbedder,
    int8_embedder: OnnxEmbedder,
) -> None:
    settings = Settings(data_dir=tmp_path / "store", sync=False)
    with SemanticCache(settings, int8_embedder) as cache:
        cache.store(CacheRequest.from_body(CHAT, chat("python sort list ascending")), answer("sorted(xs)"))
    for other in (onnx_embedder, embedder):
        with pytest.raises(EmbedderMismatchError) as info:
            SemanticCache(settings, other)
        assert f"{MODEL}@onnx-int8" in str(info.value) and other.name in str(info.value)
    with SemanticCache(settings, int8_embedder) as cache:
        hit = cache.lookup(CacheRequest.from_body(CHAT, chat("how to sort a list in python ascending")))
        assert hit is not None and hit.match == "semantic" and hit.similarity >= settings.threshold


def test_auto_picks_int8_for_a_new_store_and_keeps_an_old_stores_backend(
    tmp_path: Path, onnx_export: OnnxExport, embedder: SentenceTransformerEmbedder,
) -> None:
    models = onnx_export.cache_dir
    with SemanticCache(Settings(data_dir=tmp_path / "new", embedding_cache_dir=models)) as cache:
        assert cache.embedder.name == f"{MODEL}@onnx-int8"
    with SemanticCache(Settings(data_dir=tmp_path / "old", sync=False), embedder) as cache:
        cache.store(CacheRequest.from_body(CHAT, chat("hello")), answer("hi"))
    with SemanticCache(Settings(data_dir=tmp_path / "old", embedding_cache_dir=models)) as cache:
        assert cache.embedder.name == f"{MODEL}@torch"
        assert cache.lookup(CacheRequest.from_body(CHAT, chat("hello"))) is not None


def test_auto_falls_back_to_torch_when_onnx_cannot_load(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(EmbeddingError):
        load_embedder(backend="onnx-int8", cache_dir=blocker / "models")
    chosen = load_embedder(backend="auto", cache_dir=blocker / "models")
    assert chosen.name == f"{MODEL}@torch"
    assert load_embedder(backend="auto").name == f"{MODEL}@torch"  # no export directory given


def test_an_export_that_failed_its_check_is_not_loaded(tmp_path: Path, onnx_export: OnnxExport) -> None:
    info = export_model(cache_dir=onnx_export.cache_dir)
    copy = tmp_path / "models" / info.directory.name
    copy.mkdir(parents=True)
    for name in ("model.onnx", "model-int8.onnx"):
        os.symlink(info.directory / name, copy / name)
    meta = json.loads((info.directory / "export.json").read_text())
    meta["checks"]["onnx-int8"] = 0.9
    (copy / "export.json").write_text(json.dumps(meta))
    with pytest.raises(EmbeddingError, match="quality check"):
        OnnxEmbedder(cache_dir=tmp_path / "models", quantize=True)
    assert OnnxEmbedder(cache_dir=tmp_path / "models", quantize=False).name == f"{MODEL}@onnx"
    assert load_embedder(backend="auto", cache_dir=tmp_path / "models").name == f"{MODEL}@onnx"


def test_unknown_model_fails_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingError, match="no-such-org/no-such-model.*offline"):
        OnnxEmbedder("no-such-org/no-such-model", cache_dir=tmp_path)
