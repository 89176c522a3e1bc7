"""Benchmarks; see README "Benchmarks" for the commands."""
