"""Evaluate a checkpoint: ``python tools/evaluate.py --ckpt RUN/checkpoints/best.pt --out DIR``.

Runs ``segmentation.cli.evaluate``; the console script ``dermseg-evaluate`` is the same tool.
"""

import sys

from segmentation.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
