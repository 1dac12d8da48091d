"""Benchmarks, run by hand (`python -m bench.throughput`, `python -m bench.scheduler`)."""
