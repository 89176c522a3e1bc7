"""``python -m bench``: run every benchmark of the repository, one after another."""

from __future__ import annotations

from . import bench_embedding, bench_proxy

if __name__ == "__main__":
    raise SystemExit(bench_proxy.main([]) or bench_embedding.main([]))
