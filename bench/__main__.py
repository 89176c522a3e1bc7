"""``python -m bench``: the index scale benchmark at 10k and 100k entries (quick run)."""

from bench.bench_index import main

main(["10000", "100000"])
