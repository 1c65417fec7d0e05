"""Train a segmenter: ``python tools/train.py --cfg experiments/att_swinunet.yaml [--set k=v ...]``.

Writes ``OUT/config.yaml``, ``OUT/checkpoints/{last,best}.pt``, TensorBoard events in ``OUT/tb/``
and ``OUT/metrics.json`` (final validation metrics). ``--resume OUT`` continues a run from
``last.pt``; it keeps the run's network (model overrides are refused before anything is written).

Exit codes: 0 done; 2 a user error (one ``error: ...`` line; ``DERMSEG_DEBUG=1`` shows the
traceback), and the run folder is left as it was when the error came at set-up; 128 + N stopped
by signal N (SIGTERM: 143, SIGINT: 130) after writing a resumable checkpoint.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from segmentation.cli.errors import cli_main


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--cfg", help="experiment YAML (not needed with --resume RUN_DIR)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (YAML syntax), repeatable",
    )
    parser.add_argument("--out", help="run folder (default runs/<config name>-<time>)")
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR|auto",
        help="continue RUN_DIR from its newest complete checkpoint; 'auto' (with --cfg and --out) "
        "resumes --out when it holds a checkpoint and starts fresh otherwise",
    )
    args = parser.parse_args(argv)

    from segmentation.checkpoint import find_resumable, load_checkpoint
    from segmentation.config import load_config
    from segmentation.distributed import init_distributed, shutdown
    from segmentation.errors import RunStopped
    from segmentation.training.build import run_training

    main_process = init_distributed().is_main
    log = print if main_process else (lambda *a, **k: None)
    ckpt = None
    if args.resume and args.resume != "auto":
        run_dir = Path(args.resume)
        path = find_resumable(run_dir)
        if path is None:
            raise FileNotFoundError(f"no complete checkpoint in {run_dir / 'checkpoints'}")
        ckpt = load_checkpoint(path)
        config = load_config(run_dir / "config.yaml", args.set)
        log(f"resuming {run_dir} from {path.name} (step {ckpt['step']})")
    elif args.cfg:
        config = load_config(args.cfg, args.set)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(args.out or f"runs/{Path(args.cfg).stem}-{stamp}")
        path = find_resumable(run_dir) if args.resume == "auto" else None
        if path is not None:
            ckpt = load_checkpoint(path)
            log(f"resuming {run_dir} from {path.name} (step {ckpt['step']})")
        elif (run_dir / "checkpoints").exists() and args.resume != "auto":
            raise FileExistsError(
                f"{run_dir} already holds checkpoints; use --resume {run_dir}, "
                "--resume auto, or another --out"
            )
    else:
        parser.error("give --cfg FILE (new run) or --resume RUN_DIR")
    start = time.time()
    try:
        metrics = run_training(config, run_dir, resume=ckpt)
    except RunStopped as stopped:
        shutdown()
        if main_process:
            print(stopped, file=sys.stderr)
        signum = getattr(signal, stopped.reason, None)
        return 128 + int(signum) if signum is not None else 1
    shutdown()
    minutes = (time.time() - start) / 60
    log(
        f"done in {minutes:.1f} min: val per-image dice {metrics['per_image']['dice']:.4f}, "
        f"iou {metrics['per_image']['iou']:.4f}; run folder {run_dir}"
    )
    return 0


def run(argv: list[str] | None = None) -> int:
    """Console entry point: re-exec once with the glibc malloc settings (segmentation.runtime),
    then :func:`main`. ``main`` itself never re-execs, so tests can call it in-process."""
    from segmentation.runtime import ensure_malloc_env

    ensure_malloc_env()
    return main(argv)


if __name__ == "__main__":
    sys.exit(run())
