"""Write a model card: ``python tools/model_card.py --ckpt CKPT --eval DIR --out MODEL_CARD.md``.

Runs ``segmentation.cli.model_card``; the console script ``dermseg-model-card`` is the same tool.
"""

import sys

from segmentation.cli.model_card import main

if __name__ == "__main__":
    sys.exit(main())
