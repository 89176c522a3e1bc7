"""The ``semcache`` command line: ``semcache demo`` and the subcommands later issues add."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .errors import SemcacheError
from .settings import Settings, add_arguments

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semcache", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="store a few answers and look up paraphrases and near-misses")
    add_arguments(demo, ["threshold", "embedding_model", "embedding_backend", "embedding_device"])
    export = sub.add_parser(
        "export-model", help="export the embedding model to ONNX (fp32 and int8) ahead of first use")
    add_arguments(export, ["data_dir", "embedding_model", "embedding_cache_dir"])
    export.add_argument("--force", action="store_true", help="export again even if a current export exists")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.load(args)
        logging.basicConfig(level=settings.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
