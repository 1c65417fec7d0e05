"""Write a model card: ``python tools/model_card.py --ckpt RUN/checkpoints/best.pt --eval EVAL_DIR

Runs ``segmentation.cli.model_card``;
the console script ``dermseg-model-card`` is the same tool.
"""

import sys

from segmentation.cli.model_card import main

if __name__ == "__main__":
    sys.exit(main())
