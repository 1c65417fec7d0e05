"""dermseg's training library: config, data, training, evaluation, inference, reporting, benchmarks.

``docs/architecture.md`` maps the packages and what each may import.
"""

__version__ = "0.2.0"
