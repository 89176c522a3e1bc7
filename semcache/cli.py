"""The ``semcache`` command line.

``semcache serve``       the caching sidecar in front of an OpenAI-compatible router
``semcache quickstart``  the sidecar in front of the bundled fake upstream (try it with curl)
``semcache fake-upstream`` only the fake OpenAI-compatible router (tests, demos, benchmarks)
``semcache demo``        the cache as a library: store a few answers, ask paraphrases

Every setting is a flag here and a ``SEMCACHE_*`` environment variable.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .errors import SemcacheError
from .settings import Settings, add_arguments

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
    add_arguments(demo, ["threshold", "embedding_model", "embedding_backend", "embedding_device", "log_level"])
    export = sub.add_parser(
        "export-model", help="export the embedding model to ONNX (fp32 and int8) ahead of first use")
    add_arguments(export, ["data_dir", "embedding_model", "embedding_cache_dir"])
    export.add_argument("--force", action="store_true", help="export again even if a current export exists")
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
    except SemcacheError as exc:
        print(f"semcache: error: {exc}", file=sys.stderr)
        return 2
    return 0
