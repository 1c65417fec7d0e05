"""Evaluate a checkpoint: ``python tools/evaluate.py --ckpt RUN/checkpoints/best.pt --split test
--out DIR``.

Needs only the checkpoint (the experiment config is inside). Writes ``DIR/metrics.json``,
``DIR/per_image.csv`` (one row per image with its metadata) and ``DIR/metrics.md``.

Another dataset (cross-dataset testing, e.g. a model trained on ISIC 2018 tested on PH2):
``--data-name ph2 --data-root /data/ph2`` (the dataset's defaults), or ``--data FILE.yaml`` (a
``data:`` section; ``experiments/data/`` has one per dataset). Either replaces the checkpoint's
data section and keeps its image size and pre-processing unless the new section sets them.
``--set data.key=value`` (or ``eval.``/``train.device``) adjusts the data afterwards; the network
sections (``model``, ``loss``, ``optim``, ``sched``) are the checkpoint's and cannot be changed.
The library call is ``segmentation.evaluation.checkpoint_eval.evaluate_checkpoint``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from segmentation.cli.errors import cli_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint file (best.pt or last.pt)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    data = parser.add_mutually_exclusive_group()
    data.add_argument(
        "--data", metavar="FILE.yaml", help="a data section replacing the checkpoint's"
    )
    data.add_argument(
        "--data-name", metavar="NAME", help="a registered dataset replacing the checkpoint's"
    )
    parser.add_argument("--data-root", metavar="DIR", help="root folder of --data-name")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a data/eval value, e.g. data.root=/data/isic2018 or data.on_error=skip",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--no-boundary", action="store_true", help="skip HD95/ASSD (faster)")
    parser.add_argument(
        "--groups",
        action="append",
        default=[],
        choices=["ita", "fitzpatrick", "contrast", "tags"],
        help="fairness report per group (repeatable): Dice per ITA bin, Fitzpatrick group (DDI),\n"
        "lesion-skin contrast or synthetic difficulty tag; see segmentation/evaluation/fairness.py",
    )
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples per group")
    parser.add_argument(
        "--contrast-bins",
        default="10,20",
        metavar="LOW,HIGH",
        help="Delta E edges of the low/medium/high contrast groups (default 10,20)",
    )
    parser.add_argument(
        "--report", metavar="DIR", help="also write DIR/report.md with PNG figures (and curves)"
    )
    parser.add_argument(
        "--postprocess",
        metavar="STEPS",
        help="label-free post-processing, e.g. lcc,fill_holes (steps: lcc, fill_holes, opening);\n"
        "metrics are reported without and with it (metrics.json 'postprocessed')",
    )
    parser.add_argument(
        "--robustness",
        metavar="KINDS",
        help="corruptions and/or adversarial (comma-separated): metrics.json 'robustness',\n"
        "tables in metrics.md and OUT/robustness.png; see segmentation/evaluation/robustness.py",
    )
    parser.add_argument(
        "--sampling-steps",
        metavar="K,K,...",
        help="sampling networks (SegDT): Dice and ms/image of predict(steps=K) for each K,\n"
        "e.g. 1,2,4,8 (metrics.json 'sampling_steps', a table in metrics.md)",
    )
    parser.add_argument(
        "--uncertainty-samples",
        type=int,
        default=8,
        metavar="N",
        help="sampling networks (SegDT): AUROC of the per-pixel variance of N samples for wrong\n"
        "pixels (metrics.json 'uncertainty', a table in metrics.md); default 8, 0 skips it",
    )
    parser.add_argument(
        "--robustness-images", type=int, metavar="N", help="robustness on the first N images only"
    )
    return parser


def _numbers(text: str | None, flag: str, kind: type) -> list:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (``kind`` int or float); a one-line error naming the flag."""
    from segmentation.errors import ConfigError

    try:
        return [kind(v) for v in text.split(",")] if text else []
    except ValueError:
        raise ConfigError(
            f"{flag} takes comma-separated {kind.__name__} numbers, got '{text}'."
        ) from None


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from segmentation.errors import ConfigError
    from segmentation.evaluation.checkpoint_eval import evaluate_checkpoint
    from segmentation.evaluation.results import write_evaluation

    data = args.data
    if args.data_name:
        data = {"name": args.data_name, **({"root": args.data_root} if args.data_root else {})}
    elif args.data_root:
        raise ConfigError(
            "--data-root needs --data-name NAME (to move the checkpoint's own dataset, use "
            "--set data.root=DIR)."
        )
    result = evaluate_checkpoint(
        args.ckpt,
        data=data,
        split=args.split,
        overrides=args.set,
        boundary=not args.no_boundary,
        groups=args.groups,
        n_boot=args.n_boot,
        contrast_bins=_numbers(args.contrast_bins, "--contrast-bins", float),
        postprocess=args.postprocess,
        robustness=args.robustness,
        robustness_images=args.robustness_images,
        sampling_steps=_numbers(args.sampling_steps, "--sampling-steps", int),
        uncertainty_samples=args.uncertainty_samples,
        command=shlex.join(["python", "tools/evaluate.py", *(argv or sys.argv[1:])]),
    )
    print(write_evaluation(result, args.out, report=args.report))
    if args.report:
        print(f"report: {Path(args.report) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
