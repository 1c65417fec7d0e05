"""Print (or write into README.md) the table of registered networks with their parameter counts.

Runs ``segmentation.cli.networks_table``, as does the console script ``dermseg-networks-table``.
"""

import sys

from segmentation.cli.networks_table import main

if __name__ == "__main__":
    sys.exit(main())
