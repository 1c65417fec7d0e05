"""Print (or write into README.md) the table of registered networks with their parameter counts.

Runs ``segmentation.cli.networks_table``;
the console script ``dermseg-networks-table`` is the same tool.
"""

import sys

from segmentation.cli.networks_table import main

if __name__ == "__main__":
    sys.exit(main())
