"""Check a dataset tree as unpacked from the official download, optionally write a resized cache.

Runs ``segmentation.cli.prepare_data``, as does the console script ``dermseg-prepare-data``.
"""

import sys

from segmentation.cli.prepare_data import main

if __name__ == "__main__":
    sys.exit(main())
