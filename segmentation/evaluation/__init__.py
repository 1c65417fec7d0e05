"""Evaluation as a library: metrics, boundary distances, groups, robustness, post-processing."""
