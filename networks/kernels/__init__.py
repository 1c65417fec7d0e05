"""Attention kernels: a plain ``reference`` path (ground truth and fallback) beside fused paths.

One file per operation, each with a public dispatcher taking
``backend in {"auto", "reference", "sdpa", "flex", "triton"}``.
The environment variable ``DERMSEG_ATTENTION_BACKEND`` overrides ``"auto"`` for every operation.
This package imports only torch.
"""
