"""Train a segmenter: ``python tools/train.py --cfg experiments/att_swinunet.yaml [--set k=v ...]``.

Writes ``OUT/config.yaml``, ``OUT/checkpoints/{last,best}.pt``, TensorBoard events in ``OUT/tb/``
and
``OUT/metrics.json`` (final validation metrics). ``--resume OUT`` continues a run from ``last.pt``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--cfg", help="experiment YAML (not needed with --resume)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (YAML syntax), repeatable",
    )
    parser.add_argument("--out", help="run folder (default runs/<config name>-<time>)")
    parser.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from last.pt"
    )
    args = parser.parse_args(argv)

    from segmentation.checkpoint import load_checkpoint
    from segmentation.config import ConfigError, load_config
    from segmentation.experiment import run_training

    try:
        if args.resume:
            run_dir = Path(args.resume)
            ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
            config = load_config(run_dir / "config.yaml", args.set)
            print(f"resuming {run_dir} from step {ckpt['step']}")
        elif args.cfg:
            config = load_config(args.cfg, args.set)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = Path(args.out or f"runs/{Path(args.cfg).stem}-{stamp}")
            if (run_dir / "checkpoints").exists():
                parser.error(
                    f"{run_dir} already holds checkpoints; use --resume {run_dir} or another --out"
                )
            ckpt = None
        else:
            parser.error("give --cfg FILE (new run) or --resume RUN_DIR")
    except (ConfigError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.time()
    metrics = run_training(config, run_dir, resume=ckpt)
    minutes = (time.time() - start) / 60
    print(
        f"done in {minutes:.1f} min: val per-image dice {metrics['per_image']['dice']:.4f}, "
        f"iou {metrics['per_image']['iou']:.4f}; run folder {run_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
