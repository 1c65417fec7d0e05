"""Reporting: markdown tables, figures, overlays and model cards."""
