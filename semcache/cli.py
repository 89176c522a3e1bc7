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
    add_arguments(demo, ["threshold", "embedding_model", "embedding_device"])
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
    except SemcacheError as exc:
        print(f"semcache: error: {exc}", file=sys.stderr)
        return 2
    return 0
