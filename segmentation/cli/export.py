"""Export a checkpoint: ``python tools/export.py --ckpt RUN/checkpoints/best.pt --format onnx
--out model.onnx``.

Writes the model file and ``FILE.json`` (input normalisation, dynamic axes, the measured
max |exported - PyTorch| per sample shape). Exits 1 when the network cannot be exported or the
parity check fails (tolerance 1e-4 by default), 2 for a user error (a bad checkpoint, an
``--image-size`` the network does not accept: one ``error: ...`` line). See
``segmentation/inference/export.py`` for the steps and the networks verified.
"""

from __future__ import annotations

import argparse
import sys

from segmentation.cli.errors import cli_main


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint file (best.pt or last.pt)")
    parser.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    parser.add_argument("--out", required=True, help="output file (.onnx or .pt)")
    parser.add_argument(
        "--image-size", type=int, default=None, help="trace size (default: training image size)"
    )
    parser.add_argument("--tolerance", type=float, default=1.0e-4, help="max accepted |diff|")
    args = parser.parse_args(argv)

    from segmentation.checkpoint import load_checkpoint
    from segmentation.inference.export import ExportError, export_checkpoint

    ckpt = load_checkpoint(args.ckpt)
    try:
        meta = export_checkpoint(
            ckpt, args.format, args.out, image_size=args.image_size, tolerance=args.tolerance
        )
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    size = "dynamic" if meta["dynamic_size"] else "x".join(map(str, meta["trace_size"]))
    print(f"wrote {args.out} ({meta['network']}, batch dynamic, image size {size})")
    for shape, diff in meta["max_abs_diff"].items():
        print(f"  max |{args.format} - pytorch| at {shape}: {diff:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
