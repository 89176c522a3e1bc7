"""Benchmarks of semcache, run from the repository root.

``python -m bench`` (``make bench``) is the savings benchmark of the README; the savings
code ships in the package (``semcache bench savings``, ``semcache/bench_savings.py``).
``bench_proxy`` (``make bench-proxy``), ``bench_index`` (``make bench-scale``) and
``bench_micro`` (``make bench-micro``) measure speed and memory.
"""
