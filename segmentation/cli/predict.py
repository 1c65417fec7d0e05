"""Segment images with a checkpoint: ``python tools/predict.py --ckpt RUN/checkpoints/best.pt
--input IMAGE_OR_FOLDER --out DIR [--tta flips] [--sliding-window] [--batch N]``.

Images are preprocessed like evaluation (square resize to the training ``data.image_size`` of the
checkpoint's config, ImageNet normalisation); probabilities are resized back (bilinear) and then
binarised (``> 0.5``, or argmax == lesion class for several classes), so masks have the ORIGINAL
image size. Writes, per image ``NAME.ext``:

- ``DIR/masks/NAME.png``: the lesion mask, 0 / 255;
- ``DIR/overlays/NAME.png``: the image with the mask tinted and outlined in red;
- ``DIR/uncertainty/NAME.png`` (networks with ``predict_with_uncertainty``, e.g. SegDT): the
  per-pixel variance of the sampled probabilities through the inferno colormap, black = 0, white =
  0.25 (the largest variance a probability can have);
- ``DIR/predictions.csv``: file, size, lesion fraction (and mean variance) per image.

Masks, overlays and uncertainty maps are written by
``segmentation.inference.predictors.predict_files``. ``--tta flips`` averages the probabilities of
the identity, horizontal, vertical and both flips.
``--sliding-window`` runs every image at its native resolution with training-size windows (MONAI
``sliding_window_inference``, Gaussian blending) instead of resizing it: for images larger than the
training size when the network was trained on native-scale crops. Unreadable files are reported and
skipped; the exit code is 1 only when every file failed (2 for a bad checkpoint or arguments).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from segmentation.cli.errors import cli_main


def list_inputs(path: Path) -> list[Path]:
    """The image files of a folder (sorted, non-recursive) or the single file given."""
    from segmentation.data.files import IMAGE_SUFFIXES

    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"--input '{path}' is neither a file nor a folder.")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(
            f"--input folder '{path}' holds no image files ({', '.join(IMAGE_SUFFIXES)})."
        )
    return files


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint file (best.pt or last.pt)")
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tta", default="none", choices=["none", "hflip", "flips"])
    parser.add_argument(
        "--sliding-window",
        action="store_true",
        help="native resolution, training-size windows (MONAI) instead of resizing",
    )
    parser.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap")
    parser.add_argument("--batch", type=int, default=4, help="images (or windows) per pass")
    parser.add_argument(
        "--n-samples", type=int, default=8, help="samples for the uncertainty of generative nets"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1...")
    return parser


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")

    from segmentation.checkpoint import load_checkpoint, model_from_checkpoint
    from segmentation.errors import ConfigError
    from segmentation.inference.predictors import (
        build_predictor,
        predict_files,
        supports_uncertainty,
    )
    from segmentation.training.build import resolve_device

    ckpt = load_checkpoint(args.ckpt)
    files = list_inputs(Path(args.input))
    device = resolve_device(args.device)
    image_size = ckpt["config"]["data"].get("image_size")
    if args.sliding_window and image_size is None:
        raise ConfigError(
            "--sliding-window needs the training data.image_size in the checkpoint config; this "
            "run trained at the stored image size, so predict without --sliding-window."
        )
    model = model_from_checkpoint(ckpt).to(device).eval()
    predictor = build_predictor(
        tta=args.tta,
        roi_size=image_size if args.sliding_window else None,
        overlap=args.overlap,
        sw_batch_size=args.batch,
        uncertainty=supports_uncertainty(model),
        n_samples=args.n_samples,
    )
    out = Path(args.out)
    records, failed = predict_files(
        model,
        files,
        out,
        predictor=predictor,
        image_size=None if args.sliding_window else image_size,
        device=device,
        batch_size=args.batch,
    )
    if records:
        with open(out / "predictions.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[-1]))
            writer.writeheader()
            writer.writerows(records)
    print(f"wrote {len(records)} of {len(files)} predictions to {out}")
    if failed:
        print(f"skipped {len(failed)} unreadable file(s):", file=sys.stderr)
        for path, reason in failed:
            print(f"  {path}: {reason}", file=sys.stderr)
    return 1 if not records else 0


if __name__ == "__main__":
    sys.exit(main())
