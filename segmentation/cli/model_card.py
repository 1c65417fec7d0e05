"""Write a model card: ``python tools/model_card.py --ckpt RUN/checkpoints/best.pt --eval EVAL_DIR
--out MODEL_CARD.md``.

``EVAL_DIR`` is the ``--out`` folder of ``tools/evaluate.py`` (``metrics.json``, ``per_image.csv``).
The card follows Mitchell et al. 2019 (see ``segmentation/reporting/model_card.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segmentation.cli.errors import cli_main


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint file (best.pt or last.pt)")
    parser.add_argument("--eval", required=True, help="evaluation folder of tools/evaluate.py")
    parser.add_argument("--out", default="MODEL_CARD.md", help="output Markdown file")
    args = parser.parse_args(argv)

    from segmentation.checkpoint import load_checkpoint
    from segmentation.evaluation.results import read_evaluation
    from segmentation.reporting.model_card import model_card

    ckpt = load_checkpoint(args.ckpt)
    metrics, rows = read_evaluation(args.eval)
    card = model_card(
        ckpt,
        metrics=metrics,
        rows=rows,
        ckpt_path=args.ckpt,
        command=sys.argv[1:] if argv is None else argv,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(card)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
