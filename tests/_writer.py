"""Subprocess for the crash test: stores entries forever, printing each committed id.

Usage: python -m tests._writer DATA_DIR START
"""

from __future__ import annotations

import sys

from semcache import CacheRequest, SemanticCache, Settings
from tests.conftest import HashEmbedder, answer, chat


def main() -> None:
    data_dir, start = sys.argv[1], int(sys.argv[2])
    cache = SemanticCache(Settings(data_dir=data_dir, sync=True), HashEmbedder())
    i = start
    while True:
        text = f"question number {i}"
        entry = cache.store(CacheRequest.from_body("/v1/chat/completions", chat(text)),
                            answer(f"answer {i}" + "." * (i % 500)))
        print(f"{i} {entry}", flush=True)
        i += 1


if __name__ == "__main__":
    main()
