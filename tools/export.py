"""Export a checkpoint: ``python tools/export.py --ckpt CKPT --format onnx --out model.onnx``.

Runs ``segmentation.cli.export``; the console script ``dermseg-export`` is the same tool.
"""

import sys

from segmentation.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
