"""Benchmarks of semcache, run from the repository root (``python -m bench``).

The savings benchmark itself ships in the package (``semcache bench savings``, see
``semcache/bench_savings.py``); this package holds the documented runs and their inputs.
"""
