"""The ``semcache`` command line.

``semcache serve``       the caching sidecar in front of an OpenAI-compatible router
``semcache quickstart``  the sidecar in front of the bundled fake upstream (try it with curl)
``semcache fake-upstream`` only the fake OpenAI-compatible router (tests, demos, benchmarks)
``semcache demo``        the cache as a library: store a few answers, ask paraphrases
``semcache stats | invalidate | export | import``  operate a running sidecar (see
                          semcache/cli_operator.py)
``semcache bench savings`` replay labeled traffic through the sidecar: hits, wrong hits, money saved
``semcache calibrate``   pick the similarity threshold for a target precision from labeled pairs

Every setting is a flag here and a ``SEMCACHE_*`` environment variable.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import SemcacheError
from .settings import Settings, add_arguments

if TYPE_CHECKING:
    from .embedding import Embedder

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semcache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the caching sidecar")
    add_arguments(serve)
    quick = sub.add_parser("quickstart", help="run the sidecar in front of the fake upstream")
    add_arguments(quick)
    quick.add_argument("--fake-port", type=int, default=4000, help="port of the fake upstream")
    fake = sub.add_parser("fake-upstream", help="run only the fake OpenAI-compatible router")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=4000)
    fake.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    demo = sub.add_parser("demo", help="store a few answers and look up paraphrases and near-misses")
    add_arguments(demo, ["threshold", "embedding_model", "embedding_backend", "embedding_device",
                         "log_level"])
    export = sub.add_parser(
        "export-model", help="export the embedding model to ONNX (fp32 and int8) ahead of first use")
    add_arguments(export, ["data_dir", "embedding_model", "embedding_cache_dir"])
    export.add_argument("--force", action="store_true", help="export again even if a current export exists")
    # --- operator commands (issue 7): talk to a running sidecar's operator API
    from .cli_operator import add_operator_commands

    add_operator_commands(sub)
    _add_bench_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "fake-upstream":
            from .fake_upstream import run_fake

            run_fake(args.host, args.port, args.latency)
            return 0
        settings = Settings.load(args)
        logging.basicConfig(level=settings.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if args.command == "serve":
            from .web_app import serve

            serve(settings)
            return 0
        if args.command == "quickstart":
            from .quickstart import run_quickstart

            return run_quickstart(settings, fake_port=args.fake_port)
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(settings)
        if args.command == "export-model":
            from .embedding_onnx import export_command

            return export_command(settings, force=args.force)
        # --- operator commands (issue 7)
        from .cli_operator import COMMANDS, run_operator_command

        if args.command in COMMANDS:
            return run_operator_command(args, settings)
        if args.command in ("bench", "calibrate"):
            return _run_bench_command(args, settings, argv)
    except SemcacheError as exc:
        print(f"semcache: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unreachable sidecar, an unreadable file
        print(f"semcache: error: {exc}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------ bench savings, calibrate
# The settings that decide what a sidecar would serve, so that a benchmark or a calibration
# can be run exactly as the sidecar it is for (same backend, exports, guard, env file).
_SIDECAR_SETTINGS = ["near_miss_guard", "embedding_model", "embedding_backend", "embedding_device",
                     "embedding_threads", "embedding_cache_dir", "data_dir", "env_file",
                     "log_level"]
_BENCH_SETTINGS = ["threshold", *_SIDECAR_SETTINGS]
_SIDECAR_NOTE = ("--data-dir and --env-file name the sidecar to match: with --embedding-backend "
                 "auto its store's backend is used, and its ONNX exports (<data-dir>/models unless "
                 "--embedding-cache-dir) are reused; the store itself is not touched.")


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _limit(text: str) -> int | None:
    value = int(text)
    return None if value <= 0 else value


def _add_bench_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench = sub.add_parser("bench", help="benchmarks of the cache on labeled traffic")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    sav = bench_sub.add_parser(
        "savings", help="replay labeled traffic through the sidecar: hits, wrong hits, money saved",
        description="Replays workloads through the real sidecar (HTTP, openai SDK) in front of a "
                    "fake upstream that answers by label, and scores no cache, exact only, static "
                    "thresholds and the calibrated threshold side by side. " + _SIDECAR_NOTE)
    sav.add_argument("--workload", action="append", choices=["qqp", "langcache", "gptcache",
                                                             "meancache"],
                     help="a built-in workload from --data (repeatable; default qqp and "
                          "langcache unless --log is given)")
    sav.add_argument("--log", action="append", type=Path, default=[],
                     help="a user log in the JSONL format of semcache/bench_workloads.py (repeatable)")
    sav.add_argument("--data", type=Path, default=Path("../shared/data"),
                     help="directory of the labeled data [default ../shared/data]")
    sav.add_argument("--limit", type=_limit, default=3000,
                     help="first N test pairs (log requests) per workload; 0: all [default 3000]")
    sav.add_argument("--calibration-limit", type=int, default=-1,
                     help="first N dev pairs used to calibrate; 0: all [default: --limit, so the "
                          "dev cache holds as many entries as the test one]")
    sav.add_argument("--target-precision", type=float, default=0.90,
                     help="calibrate each workload's threshold to this precision on its dev "
                          "pairs [default 0.90]")
    sav.add_argument("--fixed-threshold", type=float, default=None,
                     help="use this threshold instead of calibrating")
    sav.add_argument("--static", type=_floats, default=[0.80, 0.85, 0.90, 0.95],
                     help="static thresholds reported as baselines [default 0.80,0.85,0.90,0.95]")
    sav.add_argument("--floor", type=float, default=0.50,
                     help="lowest threshold of the one-pass sweep [default 0.50]")
    # its own dest: the sidecar's ``prices`` setting is a per-model price table, this is
    # the benchmark's table of tiers (they are different files)
    sav.add_argument("--prices", dest="tier_prices", type=Path, default=None, metavar="FILE",
                     help="JSON table of the model tiers money is reported for, e.g. "
                          "bench/prices.example.json (semcache/bench_prices.py) [default: the "
                          "built-in small / 7b / frontier tiers]")
    sav.add_argument("--out", type=Path, default=Path("bench/results"),
                     help="directory for savings.json, savings.md [default bench/results]")
    sav.add_argument("--plots", type=Path, default=None, help="directory for the PNG plots [default --out]")
    sav.add_argument("--readme", type=Path, default=None,
                     help="also write the table into this README's savings block")
    sav.add_argument("--concurrency", type=int, default=1,
                     help="requests in flight; above 1, measured latencies include queueing "
                          "[default 1]")
    sav.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_arguments(sav, _BENCH_SETTINGS)

    qual = bench_sub.add_parser(
        "quality", help="static threshold vs the adaptive policy: precision at each recall",
        description="Per workload, a sidecar warms its adaptive policy up on the dev pairs in "
                    "shadow mode (nothing served, every candidate judged), then the test pairs "
                    "are replayed once and the static threshold, the threshold with the "
                    "near-miss guard and the adaptive policy are scored side by side: "
                    "precision at recall 0.3-0.7, wrong-hit rate at each error bound, the "
                    "default settings. " + _SIDECAR_NOTE)
    qual.add_argument("--workload", action="append", choices=["qqp", "langcache", "gptcache",
                                                              "meancache"],
                      help="a built-in workload (repeatable; default qqp, langcache, meancache)")
    qual.add_argument("--data", type=Path, default=Path("../shared/data"),
                      help="directory of the labeled data [default ../shared/data]")
    qual.add_argument("--limit", type=_limit, default=3000,
                      help="first N test pairs per workload; 0: all [default 3000]")
    qual.add_argument("--dev-limit", type=_limit, default=None,
                      help="first N dev pairs of the warm-up; 0: all [default 0]")
    qual.add_argument("--chunk", type=int, default=3000,
                      help="dev pairs per warm-up namespace (as many entries as the test cache "
                           "holds) [default 3000]")
    qual.add_argument("--out", type=Path, default=Path("bench/results"),
                      help="directory for quality.json, quality.md [default bench/results]")
    qual.add_argument("--readme", type=Path, default=None,
                      help="also write the tables into this README's quality block")
    qual.add_argument("--concurrency", type=int, default=8, help="requests in flight [default 8]")
    qual.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_arguments(qual, [*_BENCH_SETTINGS, "max_wrong_rate", "policy_floor"])

    cal = sub.add_parser(
        "calibrate", help="pick the similarity threshold for a target precision from labeled pairs",
        description="Chooses the lowest threshold whose precision on the dev pairs reaches the "
                    "target (cache protocol, computed with the cache's embedder), and reports it "
                    "on the test pairs. Dev/test: sha256(first text) % 4 == 0 is test. "
                    + _SIDECAR_NOTE)
    cal.add_argument("--pairs", action="append", type=Path, required=True,
                     help="QQP .jsonl.gz, langcache .csv or gptcache .json (repeatable)")
    cal.add_argument("--target-precision", type=float, required=True)
    cal.add_argument("--limit", type=_limit, default=None,
                     help="first N pairs of each split [default all]")
    cal.add_argument("--write-env", type=Path, default=None,
                     help="set SEMCACHE_THRESHOLD in this env file (semcache serve --env-file FILE)")
    cal.add_argument("--no-progress", action="store_true")
    add_arguments(cal, _SIDECAR_SETTINGS)


def _sidecar_embedder(settings: Settings) -> Embedder:
    """The embedding backend a sidecar with ``settings`` would use: the configured one;
    for ``auto``, the backend its store in ``data_dir`` was built with, else the fastest
    that passes its check (as :class:`~semcache.cache.SemanticCache` chooses)."""
    from .embedding import backend_of, load_embedder
    from .store import Store

    backend = settings.embedding_backend
    if backend == "auto":
        recorded = Store.recorded_embedder(settings.data_dir)
        backend = (backend_of(recorded) if recorded else None) or backend
    return load_embedder(settings.embedding_model, backend=backend,
                         device=settings.embedding_device, threads=settings.embedding_threads,
                         cache_dir=settings.model_dir)


def _run_bench_command(args: argparse.Namespace, settings: Settings,
                       argv: Sequence[str] | None) -> int:
    for noisy in ("httpx", "httpx2", "openai", "matplotlib"):  # one line per request otherwise
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    embedder = _sidecar_embedder(settings)
    print(f"{args.command}: embedding with {embedder.name}, near-miss guard "
          f"{'on' if settings.near_miss_guard else 'off'}", flush=True)
    command = "semcache " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.command == "bench" and args.bench_command == "quality":
        from .bench_quality import QualityConfig, run_quality

        run_quality(QualityConfig(
            data=args.data, workloads=args.workload or ["qqp", "langcache", "meancache"],
            limit=args.limit, dev_limit=args.dev_limit, chunk=args.chunk, out=args.out,
            readme=args.readme, concurrency=args.concurrency,
            progress=not args.no_progress and sys.stderr.isatty(), command=command),
            settings, embedder=embedder)
        return 0
    if args.command == "bench":
        from .bench_savings import SavingsConfig, run_savings

        cfg = SavingsConfig(
            data=args.data, workloads=args.workload or ([] if args.log else ["qqp", "langcache"]),
            logs=args.log, limit=args.limit,
            calibration_limit=(args.limit if args.calibration_limit < 0
                               else _limit(str(args.calibration_limit))),
            target_precision=args.target_precision, threshold=args.fixed_threshold,
            static=args.static, floor=args.floor, prices=args.tier_prices, out=args.out,
            plots=args.plots, readme=args.readme, concurrency=args.concurrency,
            progress=not args.no_progress and sys.stderr.isatty(),
            command=command)
        run_savings(cfg, settings, embedder=embedder)
        return 0

    from .calibrate import calibrate
    from .settings import write_env_file

    result = calibrate(args.pairs, args.target_precision, embedder, limit=args.limit,
                       progress=not args.no_progress and sys.stderr.isatty(),
                       guard=settings.near_miss_guard)
    print(result.summary())
    if result.threshold is None:
        return 1
    if args.write_env is not None:
        write_env_file(args.write_env, {"SEMCACHE_THRESHOLD": f"{result.threshold:.3f}"})
        print(f"wrote SEMCACHE_THRESHOLD={result.threshold:.3f} to {args.write_env} "
              f"(semcache serve --env-file {args.write_env})")
    return 0
