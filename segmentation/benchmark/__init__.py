"""Benchmarks: speed timing, the quality suites (the one-seed regression suite and the three-seed
main suite with its statistics, provenance and CI checks) and the README tables and figure."""
