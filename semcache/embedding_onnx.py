"""The ONNX Runtime embedding backend: the same model, exported locally, 2-7x faster on CPU.

The graph is exported from the model's own weights (the packaged all-MiniLM-L6-v2, or any
local sentence-transformers model with a BERT-like transformer, mean or CLS pooling and
no dense head) -- never downloaded.  Export happens at first use, or ahead of time with
``semcache export-model``, and is cached under the caller's directory::

    <cache_dir>/<model name, "/" as "--">/model.onnx        fp32, fused by ORT's optimizer
                                          model-int8.onnx   int8 dynamic quantisation
                                          export.json       fingerprint, versions, checks

An export is reused while the source model's fingerprint (a SHA-256 over its weights,
configuration and tokenizer files) and :data:`RECIPE` are unchanged; otherwise it is made
again.  Concurrent exporters (two workers starting on one data directory) serialise on a
file lock; files appear by atomic rename, ``export.json`` last.

What the graph computes is the whole sentence-transformers pipeline after tokenisation:
transformer -> pooling with the attention mask -> L2 normalisation.  Tokenisation uses the
model's ``tokenizer.json`` with the fast ``tokenizers`` library (truncation at the
model's ``max_seq_length``, padding to the longest text of a pass); :meth:`OnnxEmbedder.embed`
runs a batch in passes of texts of similar token length.  The export is traced on a padded
batch of two texts of different lengths with eager attention, so the mask path is part of
the graph.

Quality check: right after export, both variants embed a fixed set of texts of mixed
lengths (one past the truncation length) as one padded batch and one at a time, and the
lowest cosine to the sentence-transformers reference is recorded in ``export.json``.  A
variant below its bar (:data:`MIN_COSINE`: 0.999 fp32, 0.98 int8) refuses to load with
:class:`EmbeddingError`, so ``auto`` falls back to the next backend.

int8: dynamic quantisation (per-channel int8 weights, activations quantised per batch at
run time) of every weight MatMul and fused Attention, except the FFN output projections
of the first :data:`FP32_FFN_LAYERS` layers: their inputs (after GELU) carry the outliers
that cost the most accuracy when quantised (min cosine 0.970 -> 0.988 on the langcache
sentences, for 5-15% of the int8 speed-up).  Because activation scales are per pass, an
int8 vector depends slightly on the texts it shares a pass with: one- or two-token texts
("Ok") reach cosine ~0.98 to the reference alone, and short texts padded into a pass of
long ones ~0.97 (which grouping by length avoids).

Runtime needs only ``onnxruntime``, ``tokenizers`` and numpy; torch, transformers and
sentence-transformers are imported only to export.

Thread affinity: :meth:`OnnxEmbedder.embed` blocks for the forward pass and may be called
from any thread (ONNX Runtime sessions allow concurrent runs); it is sized for one caller
at a time: ``threads`` intra-op threads, no inter-op parallelism, no spin-waiting between
requests (a sidecar leaves idle cores to its application).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import json
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from .embedding import _force_offline, resolve_model, sidecar_threads
from .errors import EmbeddingError

if TYPE_CHECKING:
    from .settings import Settings

__all__ = ["OnnxEmbedder", "ExportInfo", "export_model", "export_command", "RECIPE", "MIN_COSINE",
           "FP32_FFN_LAYERS", "CHECK_TEXTS"]

#: Version of the export recipe (graph, fusion, quantisation).  Changing it re-exports.
RECIPE = "1"
#: Lowest cosine to the sentence-transformers reference each variant may have.
MIN_COSINE = {"onnx": 0.999, "onnx-int8": 0.98}
#: Layers whose FFN output projection stays fp32 in the int8 graph.
FP32_FFN_LAYERS = 2
_CHUNK = 32  # most rows in one forward pass of embed()
_GROUP_SLACK = (1.1, 1)  # a length group's longest row <= shortest * 1.1 + 1 token
_OPSET = 17
_OPTIMIZER_LOGGERS = ("onnx_model", "onnx_model_bert", "fusion_base", "fusion_utils", "fusion_options",
                      "optimizer", "fusion_attention", "fusion_skiplayernorm")

log = logging.getLogger(__name__)

#: Texts of the post-export check: short and long, questions and statements, digits,
#: code, accents, and one past the truncation length.  No one- or two-token texts: int8
#: embeds those less faithfully (cosine ~0.97 for "yes", "?") -- inherent to per-batch
#: activation scales, and documented rather than checked.
CHECK_TEXTS: tuple[str, ...] = (
    "hi there, how are you?",
    "What is the capital of France?",
    "price of iphone 16 in the US",
    "how to sort a list in python ascending",
    "GDP of Japan in 2020 vs 2021, in trillion US dollars",
    "Explain the difference between a process and a thread in an operating system, "
    "with an example of when you would use each.",
    "def f(xs): return sorted(xs, key=lambda x: -x)  # why is this slow?",
    "Wie spät ist es in Zürich, wenn es in New York 9 Uhr morgens ist?",
    "Summarise: The quick brown fox jumps over the lazy dog. The dog does not react. "
    "Later the fox returns with three friends, and they all jump over the dog again.",
    "convert 72 degrees Fahrenheit to Celsius",
    "Write a haiku about autumn leaves falling on a quiet pond at dusk.",
    "is it going to rain tomorrow",
    "What are the side effects of ibuprofen 400mg taken twice a day for two weeks?",
    "SELECT name, COUNT(*) FROM orders GROUP BY name HAVING COUNT(*) > 3;",
    " ".join(["A long document that goes on past the model's truncation length."] * 40),
    "best budget laptop for students 2024",
)


# ---------------------------------------------------------------------- the model
@dataclass(frozen=True)
class _Layout:
    """What the export needs to know about a local sentence-transformers model."""

    name: str  # as recorded in embedder names, e.g. sentence-transformers/all-MiniLM-L6-v2
    source: Path  # the model directory
    transformer_dir: Path  # weights, config.json and tokenizer.json
    pooling: str  # "mean" or "cls"
    max_seq_length: int
    config: dict[str, Any] = field(repr=False)

    @property
    def dim(self) -> int:
        return int(self.config["hidden_size"])

    def files(self) -> list[Path]:
        """The files whose content decides the export (weights, configs, tokenizer)."""
        found = [p for p in sorted(self.transformer_dir.iterdir())
                 if p.is_file() and p.suffix in (".json", ".txt", ".safetensors", ".bin", ".model")]
        for extra in ("modules.json", "sentence_bert_config.json"):
            if (self.source / extra).is_file() and self.source / extra not in found:
                found.append(self.source / extra)
        for pooling in sorted(self.source.glob("*Pooling*/config.json")):
            found.append(pooling)
        return found

    def fingerprint(self) -> str:
        """SHA-256 over :data:`RECIPE` and the content of :meth:`files`."""
        digest = hashlib.sha256(f"semcache-onnx-recipe-{RECIPE}\0".encode())
        for path in self.files():
            digest.update(str(path.relative_to(self.source)).encode() + b"\0")
            with path.open("rb") as f:
                digest.update(hashlib.file_digest(f, "sha256").digest())
        return digest.hexdigest()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EmbeddingError(f"cannot read {path}: {exc}") from exc


def _layout(model: str) -> _Layout:
    """The layout of ``model`` (see :func:`semcache.embedding.resolve_model`).

    Raises :class:`EmbeddingError` when the model is not on disk, or has a part the ONNX
    backend does not reproduce (a pooling other than mean/CLS, a dense head...)."""
    source, name = resolve_model(model)
    if source is None:
        raise EmbeddingError(
            f"cannot load embedding model {model!r} offline: not a local directory nor in the "
            "Hugging Face cache; give a local directory or a model already in the cache")
    transformer_dir, pooling = source, "mean"
    modules_file = source / "modules.json"
    if modules_file.is_file():
        for module in _read_json(modules_file):
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            path = source / module.get("path", "")
            if kind == "Transformer":
                transformer_dir = path
            elif kind == "Pooling":
                pooling = _pooling_mode(_read_json(path / "config.json"), model)
            elif kind != "Normalize":
                raise EmbeddingError(
                    f"embedding model {model!r} has a {kind} module, which the onnx backend does "
                    "not export; use embedding_backend=torch")
    config_file = transformer_dir / "config.json"
    if not config_file.is_file() or not (transformer_dir / "tokenizer.json").is_file():
        raise EmbeddingError(
            f"embedding model {model!r}: the onnx backend needs config.json and tokenizer.json "
            f"in {transformer_dir}; use embedding_backend=torch")
    config = _read_json(config_file)
    limit = int(config.get("max_position_embeddings", 512))
    max_len = min(limit, 512)
    for st_config in (transformer_dir / "sentence_bert_config.json", source / "sentence_bert_config.json"):
        if st_config.is_file():
            max_len = min(limit, int(_read_json(st_config).get("max_seq_length") or max_len))
            break
    if "hidden_size" not in config:
        raise EmbeddingError(f"embedding model {model!r}: config.json has no hidden_size")
    return _Layout(name, source, transformer_dir, pooling, max_len, config)


def _pooling_mode(config: dict[str, Any], model: str) -> str:
    modes = {k for k, v in config.items() if k.startswith("pooling_mode_") and v}
    if modes == {"pooling_mode_mean_tokens"}:
        return "mean"
    if modes == {"pooling_mode_cls_token"}:
        return "cls"
    raise EmbeddingError(
        f"embedding model {model!r} pools with {sorted(modes)}; the onnx backend exports mean or "
        "CLS pooling only; use embedding_backend=torch")


# -------------------------------------------------------------------- runtime
class _Runner:
    """Tokenizer + ONNX Runtime session for one exported graph."""

    def __init__(self, path: Path, layout: _Layout, threads: int) -> None:
        _force_offline()  # before onnxruntime creates its environment (telemetry off)
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise EmbeddingError(f"the onnx backend needs onnxruntime and tokenizers: {exc}") from exc
        ort.disable_telemetry_events()  # in case something created it earlier
        self._tokenizer = _tokenizer_for(layout, Tokenizer)
        options = ort.SessionOptions()
        options.intra_op_num_threads = sidecar_threads(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise EmbeddingError(f"cannot load the ONNX graph {path}: {type(exc).__name__}: {exc}") from exc
        self.threads = options.intra_op_num_threads
        self.dim = layout.dim

    def _encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, right-padded to the longest text."""
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return ids, mask

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = self._session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return np.ascontiguousarray(out, dtype=np.float32)

    def run(self, texts: Sequence[str]) -> np.ndarray:
        """One forward pass over ``texts`` as one batch padded to the longest."""
        return self._forward(*self._encode(texts))

    def run_grouped(self, texts: Sequence[str]) -> np.ndarray:
        """Forward passes over groups of texts of similar token length (see
        :func:`_length_groups`), rows back in the order of ``texts``."""
        ids, mask = self._encode(texts)
        lengths = mask.sum(axis=1)
        groups = _length_groups(lengths)
        if len(groups) == 1:
            return self._forward(ids, mask)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for rows in groups:
            width = int(lengths[rows].max())
            out[rows] = self._forward(ids[rows, :width], mask[rows, :width])
        return out


def _length_groups(lengths: np.ndarray) -> list[np.ndarray]:
    """Row indices grouped by token length, shortest first: a group holds at most
    :data:`_CHUNK` rows, and none longer than 1.1x its shortest + 1 token.

    On CPU the cost of a pass grows with rows x padded length, and batching saves little
    per row beyond per-call overhead (measured for MiniLM int8 on one thread: 1.7 ms per
    16-token query alone, 1.3 ms in a batch of 32), so padding a 10-token query to 40
    tokens costs more than a batch saves.  Measured on batches of 32 real questions, one
    thread: 2.7 ms per query padded to the longest, 1.4 ms grouped (1.6 ms with groups
    up to 1.25x + 2 tokens, 1.9 ms up to 2x + 4).
    """
    order = np.argsort(lengths, kind="stable")
    groups: list[np.ndarray] = []
    start = 0
    for i in range(1, len(order) + 1):
        if (i == len(order) or i - start >= _CHUNK
                or lengths[order[i]] > lengths[order[start]] * _GROUP_SLACK[0] + _GROUP_SLACK[1]):
            groups.append(order[start:i])
            start = i
    return groups


class OnnxEmbedder:
    """all-MiniLM-L6-v2 (or ``model``) on ONNX Runtime, fp32 or int8 (``quantize``).

    ``name`` is ``<model>@onnx`` or ``<model>@onnx-int8``.  Exports into ``cache_dir`` at
    first use (seconds; imports torch) and loads the cached graph afterwards.  Raises
    :class:`EmbeddingError` when the model cannot be exported or loaded offline, or when
    the export failed its quality check (see the module docstring).
    """

    def __init__(
        self, model: str = "default", *, cache_dir: str | os.PathLike[str], quantize: bool = True,
        threads: int = 1,
    ) -> None:
        layout = _layout(model)
        self.backend = "onnx-int8" if quantize else "onnx"
        self.info = export_model(model, cache_dir=Path(cache_dir), layout=layout)
        # int8 is derived from the fp32 graph: it is only as good as both checks
        for needed in ("onnx", self.backend):
            cosine = self.info.checks.get(needed)
            if cosine is None or cosine < MIN_COSINE[needed]:
                raise EmbeddingError(
                    f"the {needed} export of {layout.name} in {self.info.directory} failed its "
                    f"quality check: lowest cosine to the reference {cosine} < {MIN_COSINE[needed]}")
        self.path = self.info.path(quantize)
        self._runner = _Runner(self.path, layout, threads)
        self.threads = self._runner.threads
        self.dim: int = layout.dim
        self.name: str = f"{layout.name}@{self.backend}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm float32 vectors, one row per text, in order, C-contiguous.

        Texts are run in groups of similar token length (at most 32 rows each), so a
        short query batched with a long one does not pay for the long one's padding.
        Raises :class:`EmbeddingError` when the forward pass fails."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        try:
            return self._runner.run_grouped(texts)
        except Exception as exc:
            raise EmbeddingError(f"{self.name}: forward pass failed: {type(exc).__name__}: {exc}") from exc

    def embed_padded(self, texts: Sequence[str]) -> np.ndarray:
        """``texts`` in one forward pass, padded to the longest: what the post-export check
        and the tests use to exercise the graph's attention mask.  Raises as :meth:`embed`."""
        try:
            return self._runner.run(texts)
        except Exception as exc:
            raise EmbeddingError(f"{self.name}: forward pass failed: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------- export
def export_command(settings: Settings, *, force: bool = False, out: TextIO | None = None) -> int:
    """``semcache export-model``: export (or find) the configured model under
    ``settings.model_dir`` and print where it is and how it compares to the reference."""
    out = out or sys.stdout
    info = export_model(settings.embedding_model, cache_dir=settings.model_dir, force=force)
    how = "found current export" if info.reused else f"exported in {info.seconds:.1f}s"
    print(f"{how}: {info.directory}", file=out)
    for backend, cosine in info.checks.items():
        verdict = "ok" if cosine >= MIN_COSINE[backend] else "FAILS the check; will not be used"
        print(f"  {backend:<10} {info.path(backend == 'onnx-int8').name:<16} lowest cosine to the "
              f"reference {cosine:.4f} (bar {MIN_COSINE[backend]}): {verdict}", file=out)
    return 0


@dataclass(frozen=True)
class ExportInfo:
    """A cached export: its directory, source fingerprint, versions and check results.

    ``checks`` maps ``onnx`` / ``onnx-int8`` to the lowest cosine to the reference seen
    by the post-export check; ``seconds`` is how long the export took.
    """

    directory: Path
    fingerprint: str
    checks: dict[str, float]
    seconds: float
    versions: dict[str, str]
    reused: bool = False

    def path(self, quantize: bool) -> Path:
        return self.directory / ("model-int8.onnx" if quantize else "model.onnx")


def _slug(name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-._" else "-" for c in name.replace("/", "--"))
    return safe.strip(".") or "model"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created), held for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def export_model(
    model: str = "default", *, cache_dir: str | os.PathLike[str], force: bool = False,
    layout: _Layout | None = None,
) -> ExportInfo:
    """Export ``model`` to fp32 and int8 ONNX under ``cache_dir`` unless a current export
    is there (or ``force``); returns what is there.  Never touches the network.

    Raises :class:`EmbeddingError` when the model is not on disk or cannot be exported.
    """
    layout = layout or _layout(model)
    cache = Path(cache_dir)
    target = cache / _slug(layout.name)
    try:
        fingerprint = layout.fingerprint()
        if not force:  # a current export loads without the lock (the directory may be read-only)
            current = _read_info(target, fingerprint)
            if current is not None:
                return current
        with _locked(cache / f"{_slug(layout.name)}.lock"):
            if not force:  # another process may have exported while we waited
                current = _read_info(target, fingerprint)
                if current is not None:
                    return current
            return _export(layout, target, fingerprint)
    except OSError as exc:
        raise EmbeddingError(f"cannot export {layout.name} into {target}: {exc}") from exc


def _read_info(target: Path, fingerprint: str) -> ExportInfo | None:
    try:
        meta = json.loads((target / "export.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("fingerprint") != fingerprint or meta.get("recipe") != RECIPE:
        return None
    info = ExportInfo(target, fingerprint, {k: float(v) for k, v in meta["checks"].items()},
                      float(meta["seconds"]), dict(meta["versions"]), reused=True)
    if not (info.path(False).is_file() and info.path(True).is_file()):
        return None
    return info


class _QuantizerChatter(logging.Filter):
    """Drops what the quantiser logs on the root logger: per-tensor notes at INFO and the
    generic 'consider pre-processing' advice (the graph is fused first)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "root":
            return True
        return record.levelno >= logging.ERROR or (
            record.levelno >= logging.WARNING and "pre-processing" not in record.getMessage())


def _export(layout: _Layout, target: Path, fingerprint: str) -> ExportInfo:
    started = time.perf_counter()
    _force_offline()
    try:
        import onnx
        import onnxruntime
        import torch
        import transformers
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from sentence_transformers import SentenceTransformer
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise EmbeddingError(f"exporting to ONNX needs torch, transformers, onnx and onnxruntime: {exc}") from exc
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    onnxruntime.disable_telemetry_events()
    log.info("exporting %s to ONNX in %s", layout.name, target)
    work = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        try:
            raw = work / "raw.onnx"
            model = AutoModel.from_pretrained(str(layout.transformer_dir), local_files_only=True,
                                              attn_implementation="eager").eval()
            wrapper = _pipeline(model, layout.pooling).eval()
            # trace on a padded batch, so that the graph keeps the attention-mask path
            from tokenizers import Tokenizer

            enc = _tokenizer_for(layout, Tokenizer).encode_batch(
                ["a short one", "a longer example text, so that the batch is padded"])
            ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
            mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
            if int(mask.sum(1).min()) >= ids.shape[1]:
                raise EmbeddingError(f"{layout.name}: the tracing batch came out unpadded")
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    wrapper, (ids, mask), str(raw), dynamo=False, opset_version=_OPSET,
                    input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                    dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                  "attention_mask": {0: "batch", 1: "sequence"},
                                  "embedding": {0: "batch"}},
                    do_constant_folding=True)
            fp32 = work / "model.onnx"
            _fuse(raw, fp32, layout)
            raw.unlink()
            int8 = work / "model-int8.onnx"
            graph = onnx.load(str(fp32))
            keep = _fp32_ffn_outputs(graph.graph, layout)
            del graph
            advice = _QuantizerChatter()
            logging.getLogger().addFilter(advice)
            try:
                quantize_dynamic(
                    str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True,
                    op_types_to_quantize=["MatMul", "Attention"], nodes_to_exclude=keep,
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
            finally:
                logging.getLogger().removeFilter(advice)
            reference = SentenceTransformer(str(layout.source), device="cpu", local_files_only=True)
            checks = {
                "onnx": _check(_Runner(fp32, layout, 0), reference),
                "onnx-int8": _check(_Runner(int8, layout, 0), reference),
            }
        except EmbeddingError:
            raise
        except Exception as exc:
            raise EmbeddingError(
                f"exporting {layout.name} to ONNX failed: {type(exc).__name__}: {exc}") from exc
        seconds = time.perf_counter() - started
        versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                    "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
        meta = {"recipe": RECIPE, "model": layout.name, "fingerprint": fingerprint,
                "pooling": layout.pooling, "max_seq_length": layout.max_seq_length,
                "dim": layout.dim, "fp32_ffn_layers": FP32_FFN_LAYERS, "checks": checks,
                "min_cosine": MIN_COSINE, "seconds": round(seconds, 2), "versions": versions,
                "created": time.time()}
        target.mkdir(parents=True, exist_ok=True)
        (target / "export.json").unlink(missing_ok=True)  # incomplete until rewritten
        os.replace(fp32, target / "model.onnx")
        os.replace(int8, target / "model-int8.onnx")
        (work / "export.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.replace(work / "export.json", target / "export.json")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("exported %s in %.1fs; lowest cosine to the reference: %s", layout.name, seconds, checks)
    return ExportInfo(target, fingerprint, checks, seconds, versions)


def _tokenizer_for(layout: _Layout, tokenizer_class: Any) -> Any:
    """The model's fast tokenizer: truncation at ``max_seq_length``, padding to the longest
    text of each batch with the model's pad token."""
    tokenizer = tokenizer_class.from_file(str(layout.transformer_dir / "tokenizer.json"))
    padding = tokenizer.padding or {}
    pad_id = int(padding.get("pad_id", layout.config.get("pad_token_id") or 0))
    pad_token = padding.get("pad_token") or tokenizer.id_to_token(pad_id) or "[PAD]"
    tokenizer.enable_truncation(max_length=layout.max_seq_length)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
    return tokenizer


def _pipeline(model: Any, pooling: str) -> Any:
    """``model`` wrapped as one traceable module: transformer -> masked pooling -> L2
    normalisation (defined here because torch is imported only to export)."""
    import torch

    class Pipeline(torch.nn.Module):
        """transformer -> masked pooling -> L2 normalisation, as one traceable module."""

        def __init__(self, model: Any, pooling: str) -> None:
            super().__init__()
            self.model = model
            self.pooling = pooling
            self.token_types = "token_type_ids" in inspect.signature(model.forward).parameters

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            extra = {"token_type_ids": torch.zeros_like(input_ids)} if self.token_types else {}
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)[0]
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return pooled / pooled.norm(dim=1, keepdim=True).clamp(min=1e-12)

    return Pipeline(model, pooling)


def _fuse(raw: Path, out: Path, layout: _Layout) -> None:
    """ORT's transformer optimizer (attention, LayerNorm, GELU fusion) for BERT-family
    graphs; other graphs are kept as exported (the session still applies its own
    optimisations)."""
    if layout.config.get("model_type") not in ("bert",):
        shutil.copyfile(raw, out)
        return
    from onnxruntime.transformers.optimizer import optimize_model

    for name in _OPTIMIZER_LOGGERS:  # they report every fusion at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    optimized = optimize_model(
        str(raw), model_type="bert", num_heads=int(layout.config.get("num_attention_heads", 0)),
        hidden_size=layout.dim, opt_level=0)
    optimized.save_model_to_file(str(out))


def _fp32_ffn_outputs(graph: Any, layout: _Layout) -> list[str]:
    """Names of the FFN output MatMuls (weight intermediate x hidden) of the first
    :data:`FP32_FFN_LAYERS` layers, in graph order."""
    from onnx import numpy_helper

    shape = (int(layout.config.get("intermediate_size", 4 * layout.dim)), layout.dim)
    weights = {init.name for init in graph.initializer
               if tuple(numpy_helper.to_array(init).shape) == shape}
    found = [node.name for node in graph.node
             if node.op_type == "MatMul" and any(name in weights for name in node.input)]
    return found[:FP32_FFN_LAYERS]


def _check(runner: _Runner, reference: Any) -> float:
    """Lowest cosine between ``runner`` and the sentence-transformers ``reference`` over
    :data:`CHECK_TEXTS`, embedded as one padded batch of mixed lengths and one at a time."""
    texts = list(CHECK_TEXTS)
    ref = reference.encode(texts, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False)
    batched = runner.run(texts)
    alone = np.concatenate([runner.run([t]) for t in texts])
    return round(float(min((run * ref).sum(axis=1).min() for run in (batched, alone))), 6)
