"""Benchmark attention kernels and networks on this machine.

Runs ``segmentation.cli.benchmark``; the console script ``dermseg-benchmark`` is the same tool.
"""

import sys

from segmentation.cli.benchmark import main, run  # noqa: F401  (main: the tests call it)

if __name__ == "__main__":
    sys.exit(run())
