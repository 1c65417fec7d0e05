"""Train a segmenter: ``python tools/train.py --cfg experiments/att_swinunet.yaml [--set k=v ...]``.

Runs ``segmentation.cli.train``; the console script ``dermseg-train`` is the same tool.
"""

import sys

from segmentation.cli.train import run

if __name__ == "__main__":
    sys.exit(run())
