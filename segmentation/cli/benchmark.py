"""Benchmark attention kernels and networks on this machine.

Modes (one per run):

    --kernel window_attention|axial|global
        Every backend of the operation on the device (reference, sdpa, flex, triton): first-call
        seconds (includes torch.compile for flex), forward ms, forward+backward ms, and memory (CPU:
        storage saved for backward; CUDA: allocator peak) at Swin-T stage shapes and at the shapes
        SAM, SegDT and MCANet use. Backends that cannot run say why.

    --model NAME --size S --batch B
        Training step (forward, loss, backward, AdamW) and inference images/s, for the default eager
        configuration and the best CPU settings side by side in ONE run. Each configuration runs in
        its own fresh subprocess: the glibc malloc settings are process-wide and read at start-up
        only, so the "default" child gets an environment with them scrubbed (and the re-exec opted
        out) while the "best" child gets them set; both use the same threads, seed, model, input and
        timing loop. Configurations:
            default         reference attention, nn.Linear, glibc default malloc (plain PyTorch)
            best            auto attention kernels + oneDNN linears + malloc settings
        ``--ablate`` adds the intermediate steps (auto kernels alone, + oneDNN) to attribute the
        gain; ``--compile`` adds torch.compile of the whole model with the malloc settings.

    --suite ci [--only NAME,...] [--steps N] [--json PATH] [--write-readme] [--check PATH]
        Train every experiments/ci/*.yaml (synthetic 128x128, same steps/batch/seed, 2 threads),
        evaluate best.pt once on the 300-image synthetic test split (HD95 on), record parameters,
        GMAC at 128/224, Dice, IoU, thresholded Jaccard, HD95, global Dice, worst skin-tone group,
        hard-tag Dice, images/s and wall time. --write-readme rewrites README's table between the
        benchmark markers; --check PATH fails (exit 1) when a quality metric drifts beyond the
        tolerance stored in PATH or a row is missing. --suite isic2018|isic2017|ph2 --data-root DIR
        runs the real-data experiment files the same way (for users with the data and a GPU).

Results print as tables; ``--json PATH`` also writes them. Timings on a shared machine are noisy:
check ``uptime``, use ``--rounds`` (configurations interleaved, median over rounds) and read the
``*_cpu`` columns too: process CPU time (user + system, so malloc page faults count) excludes the
time spent waiting for a core, and with one thread equals wall time on an idle machine.

Examples:
    python tools/benchmark.py --kernel window_attention --batch 8
    python tools/benchmark.py --model swin_unet --size 224 --batch 8 --json bench.json
    python tools/benchmark.py --suite ci --json benchmarks/ci.json --write-readme
    python tools/benchmark.py --suite ci --check benchmarks/ci.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from segmentation.runtime import ensure_malloc_env

KERNEL_COLUMNS = [
    "case", "shape", "backend", "first_call_s", "fwd_ms", "fwd_cpu_ms", "fwd_bwd_ms",
    "fwd_bwd_cpu_ms", "saved_mb", "peak_mb", "note",
]  # fmt: skip
MODEL_COLUMNS = [
    "config", "kernels", "onednn", "malloc", "compile", "amp", "first_step_s", "train_step_ms",
    "train_step_cpu_ms", "train_speedup", "train_speedup_cpu", "infer_images_s", "infer_speedup",
    "infer_speedup_cpu", "max_rss_mb",
]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark attention kernels (--kernel) or a network (--model).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--kernel", choices=["window_attention", "axial", "global"])
    mode.add_argument("--model", help="registered network name, e.g. swin_unet")
    mode.add_argument(
        "--suite",
        choices=["ci", "isic2018", "isic2017", "ph2"],
        help="train + test every experiments/<suite>/*.yaml (see segmentation.benchmark.suite)",
    )
    parser.add_argument("--size", type=int, default=224, help="image side for --model")
    parser.add_argument("--batch", type=int, default=8, help="images per step (kernels: per case)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--rounds", type=int, default=1, help="--model: interleaved repetitions of all configs"
    )
    parser.add_argument("--ablate", action="store_true", help="--model: add intermediate configs")
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="--model: add the best settings with bf16 autocast (train.amp: on; other numerics)",
    )
    parser.add_argument("--compile", action="store_true", help="--model: add torch.compile config")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    suite = parser.add_argument_group("--suite")
    suite.add_argument("--only", metavar="NAME,...", help="rows to run (file stems)")
    suite.add_argument("--steps", type=int, help="override every row's steps (smoke tests)")
    suite.add_argument("--threads", type=int, default=2, help="torch threads (recorded)")
    suite.add_argument("--data-root", help="real-data suites: the dataset folder")
    suite.add_argument("--work-dir", type=Path, help="keep the run folders here (default: temp)")
    suite.add_argument(
        "--check", type=Path, metavar="JSON", help="re-run and fail on quality drift vs JSON"
    )
    suite.add_argument(
        "--write-readme", action="store_true", help="rewrite README's benchmark table"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.suite:
        from segmentation.benchmark.suite import cli

        code = cli(args)
        if code:
            raise SystemExit(code)
        return []
    import torch

    from segmentation.benchmark.timing import benchmark_kernel, compare_model, format_table

    header = f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}"
    if args.kernel:
        rows = benchmark_kernel(
            args.kernel,
            batch=args.batch,
            device=args.device,
            warmup=args.warmup,
            repeat=args.repeat,
        )
        print(f"# {args.kernel}, batch {args.batch}; {header}")
        print(format_table(rows, KERNEL_COLUMNS))
    else:
        configs = ["default"]
        configs += ["kernels", "kernels+onednn"] if args.ablate else []
        configs += ["best"] + (["best+compile"] if args.compile else [])
        configs += ["bf16"] if args.bf16 else []
        rows = compare_model(
            args.model,
            size=args.size,
            batch=args.batch,
            configs=configs,
            warmup=args.warmup,
            repeat=args.repeat,
            device=args.device,
            rounds=args.rounds,
        )
        print(f"# {args.model} at {args.size}x{args.size}, batch {args.batch}; {header}")
        print(format_table(rows, MODEL_COLUMNS))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows})
        )
    return rows


def run(argv: list[str] | None = None) -> int:
    """Console entry point: re-exec once with the malloc settings, then :func:`main`."""
    ensure_malloc_env()
    main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(run())
