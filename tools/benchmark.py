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

Results print as tables; ``--json PATH`` also writes them. Timings on a shared machine are noisy:
check ``uptime``, use ``--rounds`` (configurations interleaved, median over rounds) and read the
``*_cpu`` columns too: process CPU time (user + system, so malloc page faults count) excludes the
time spent waiting for a core, and with one thread equals wall time on an idle machine.

Examples:
    python tools/benchmark.py --kernel window_attention --batch 8
    python tools/benchmark.py --model swin_unet --size 224 --batch 8 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segmentation.runtime import ensure_malloc_env  # noqa: E402

KERNEL_COLUMNS = [
    "case", "shape", "backend", "first_call_s", "fwd_ms", "fwd_bwd_ms", "saved_mb", "peak_mb",
    "note",
]  # fmt: skip
MODEL_COLUMNS = [
    "config", "kernels", "onednn", "malloc", "compile", "first_step_s", "train_step_ms",
    "train_step_cpu_ms", "train_speedup", "train_speedup_cpu", "infer_images_s", "infer_speedup",
    "infer_speedup_cpu",
]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark attention kernels (--kernel) or a network (--model).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--kernel", choices=["window_attention", "axial", "global"])
    mode.add_argument("--model", help="registered network name, e.g. swin_unet")
    parser.add_argument("--size", type=int, default=224, help="image side for --model")
    parser.add_argument("--batch", type=int, default=8, help="images per step (kernels: per case)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--rounds", type=int, default=1, help="--model: interleaved repetitions of all configs"
    )
    parser.add_argument("--ablate", action="store_true", help="--model: add intermediate configs")
    parser.add_argument("--compile", action="store_true", help="--model: add torch.compile config")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    import torch

    from segmentation.benchmark import benchmark_kernel, compare_model, format_table

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


if __name__ == "__main__":
    ensure_malloc_env()
    main()
