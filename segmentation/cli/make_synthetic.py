"""Write the embedded synthetic dermoscopy set to disk in the ISIC 2018 Task 1 layout.

    python tools/make_synthetic.py --out data/synthetic [--n-train 2000 --n-val 300 --n-test 300]
                                   [--size 256 --seed 0 --hard-test --force]

Produces ``ISIC2018_Task1-2_{Training,Validation,Test}_Input/ISIC_<index>.jpg``,
``ISIC2018_Task1_{Training,Validation,Test}_GroundTruth/ISIC_<index>_segmentation.png`` (0/255) and
``metadata.csv`` (every generator parameter, measured ITA, difficulty tags). The images are exactly
the ones ``SyntheticDermoscopy`` serves in memory for the same seed and size.
"""

from __future__ import annotations

import argparse
import sys

from segmentation.cli.errors import cli_main


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="output folder (must be empty or new)")
    parser.add_argument("--n-train", type=int, default=2000, help="training images (default 2000)")
    parser.add_argument("--n-val", type=int, default=300, help="validation images (default 300)")
    parser.add_argument("--n-test", type=int, default=300, help="test images (default 300)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument(
        "--hard-test",
        action="store_true",
        help="force the 'hard' quota preset (dark skin, low contrast, dense hair) on test",
    )
    parser.add_argument("--force", action="store_true", help="write into a non-empty folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from segmentation.data.synthetic import write_isic2018_layout

    try:
        out = write_isic2018_layout(
            args.out,
            n_train=args.n_train,
            n_val=args.n_val,
            n_test=args.n_test,
            size=args.size,
            seed=args.seed,
            quotas={"test": "hard"} if args.hard_test else None,
            force=args.force,
            progress=not args.quiet,
        )
    except (FileExistsError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    total = args.n_train + args.n_val + args.n_test
    print(f"wrote {total} images and masks + metadata.csv to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
