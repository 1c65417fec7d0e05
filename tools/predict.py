"""Segment images with a checkpoint: ``python tools/predict.py --ckpt CKPT --input DIR --out DIR``.

Runs ``segmentation.cli.predict``; the console script ``dermseg-predict`` is the same tool.
"""

import sys

from segmentation.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
