"""Benchmarks: speed timing, the quality suites and the README table writer."""
