"""``python -m bench``: the quick benchmarks, one after another.

The sidecar's latency and throughput against the fake upstream, then the index at 10k
and 100k entries.  ``make bench-scale`` adds 1M entries; ``make bench-micro`` compares
native and twin hot loops.
"""

from __future__ import annotations

from . import bench_index, bench_proxy

if __name__ == "__main__":
    bench_proxy.main([])
    bench_index.main(["10000", "100000"])
