"""Write (or check) a split file under ``splits/`` from a complete copy of the data.

Runs ``segmentation.cli.make_splits``; the console script ``dermseg-make-splits`` is the same tool.
"""

import sys

from segmentation.cli.make_splits import main

if __name__ == "__main__":
    sys.exit(main())
