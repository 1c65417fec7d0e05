"""Export a checkpoint: ``python tools/export.py --ckpt RUN/checkpoints/best.pt --format onnx

Runs ``segmentation.cli.export``;
the console script ``dermseg-export`` is the same tool.
"""

import sys

from segmentation.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
