"""wxens performance suite: ``python -m benchmarks [--quick] [--device cpu|cuda] [--only NAME]``.

Writes ``benchmarks/RESULTS.md`` and ``benchmarks/results.json``; see docs/benchmarks.md.
"""
