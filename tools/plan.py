"""Plan an experiment from its training data (nnU-Net's 2-D rules).

Runs ``segmentation.cli.plan``; the console script ``dermseg-plan`` is the same tool.
"""

import sys

from segmentation.cli.plan import main

if __name__ == "__main__":
    sys.exit(main())
