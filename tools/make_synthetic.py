"""Write the embedded synthetic dermoscopy set to disk in the ISIC 2018 Task 1 layout.

Runs ``segmentation.cli.make_synthetic``, as does the console script ``dermseg-make-synthetic``.
"""

import sys

from segmentation.cli.make_synthetic import main

if __name__ == "__main__":
    sys.exit(main())
