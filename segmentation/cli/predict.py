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

``--tta flips`` averages the probabilities of the identity, horizontal, vertical and both flips.
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

LESION_CLASS = 1  # foreground channel of multi-class outputs (as in evaluation.metrics)


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


def output_names(files: list[Path]) -> list[str]:
    """Output stems: the file stem, or ``stem_ext`` when two inputs share a stem."""
    stems = [f.stem for f in files]
    return [
        f"{f.stem}_{f.suffix.lstrip('.')}" if stems.count(f.stem) > 1 else f.stem for f in files
    ]


def write_png(path: Path, image) -> None:
    """Write ``uint8 [H, W]`` grey or ``[H, W, 3]`` RGB as PNG (raises when OpenCV cannot)."""
    import cv2

    array = image[..., ::-1] if image.ndim == 3 else image
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write '{path}'; check the output folder is writable.")


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")

    import numpy as np
    import torch
    from tqdm import tqdm

    from segmentation.checkpoint import load_checkpoint, model_from_checkpoint
    from segmentation.config import ConfigError
    from segmentation.data.files import read_image
    from segmentation.inference.predictors import build_predictor, preprocess, supports_uncertainty
    from segmentation.reporting.visual import colorize, overlay_mask
    from segmentation.training.build import resolve_device

    try:
        ckpt = load_checkpoint(args.ckpt)
        files = list_inputs(Path(args.input))
        device = resolve_device(args.device)
    except (ConfigError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    image_size = ckpt["config"]["data"].get("image_size")
    if args.sliding_window and image_size is None:
        print(
            "error: --sliding-window needs the training data.image_size in the checkpoint config; "
            "this run trained at the stored image size, so predict without --sliding-window.",
            file=sys.stderr,
        )
        return 2
    model = model_from_checkpoint(ckpt).to(device).eval()
    uncertainty = supports_uncertainty(model)
    predictor = build_predictor(
        tta=args.tta,
        roi_size=image_size if args.sliding_window else None,
        overlap=args.overlap,
        sw_batch_size=args.batch,
        uncertainty=uncertainty,
        n_samples=args.n_samples,
    )
    out = Path(args.out)
    folders = ["masks", "overlays"] + (["uncertainty"] if uncertainty else [])
    for folder in folders:
        (out / folder).mkdir(parents=True, exist_ok=True)
    # Resized images share one size and batch together; native-size (sliding-window) ones do not.
    per_pass = 1 if args.sliding_window or image_size is None else args.batch
    names = output_names(files)
    failed: list[tuple[Path, str]] = []
    records: list[dict] = []
    bar = tqdm(total=len(files), desc="predict", unit="img", dynamic_ncols=True)
    for start in range(0, len(files), per_pass):
        chunk = []
        window = slice(start, start + per_pass)
        for path, name in zip(files[window], names[window], strict=True):
            try:
                chunk.append((path, name, read_image(path)))
            except (ValueError, OSError) as err:
                failed.append((path, str(err)))
                bar.update(1)
        if not chunk:
            continue
        size = None if args.sliding_window else image_size
        batch = torch.stack([preprocess(img, size) for _, _, img in chunk]).to(device)
        with torch.no_grad():
            probs, variance = predictor.probabilities_and_uncertainty(model, batch)
        for i, (path, name, image) in enumerate(chunk):
            height, width = image.shape[:2]
            p = torch.nn.functional.interpolate(
                probs[i : i + 1].float(), size=(height, width), mode="bilinear", align_corners=False
            )[0]
            channel = 0 if p.shape[0] == 1 else LESION_CLASS
            mask = (p[0] > 0.5) if p.shape[0] == 1 else (p.argmax(0) == LESION_CLASS)
            mask = mask.cpu().numpy()
            write_png(out / "masks" / f"{name}.png", mask.astype(np.uint8) * 255)
            write_png(out / "overlays" / f"{name}.png", overlay_mask(image, mask))
            record = {"file": str(path), "height": height, "width": width}
            record["lesion_fraction"] = float(mask.mean())
            if variance is not None:
                var = (
                    torch.nn.functional.interpolate(
                        variance[i : i + 1, channel : channel + 1].float(),
                        size=(height, width),
                        mode="bilinear",
                        align_corners=False,
                    )[0, 0]
                    .cpu()
                    .numpy()
                )
                write_png(out / "uncertainty" / f"{name}.png", colorize(var, vmax=0.25))
                record["mean_variance"] = float(var.mean())
            records.append(record)
            bar.update(1)
    bar.close()
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
