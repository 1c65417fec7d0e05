r"""Benchmark attention kernels and networks on this machine.

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

    --suite synthetic [--configs DIR] [--only NAME,...] [--seeds 0,1,2] [--work-dir DIR]
            [--json PATH] [--write-readme]
        The main benchmark: every experiments/synthetic/*.yaml (its own recipe, the same data and
        300-image test split) at train.seed 0, 1 and 2, each run in a fresh process, resumable
        (finished runs in --work-dir, default runs/benchmark-synthetic, are kept while their config
        and sources are unchanged). --json writes per-row statistics, convergence and provenance
        (merged into an existing file with --only) and the figure next to it (.png);
        --write-readme rewrites the README's main table. --collect trains nothing: it tabulates
        the finished runs of --work-dir (a suite still running, or a partial table) and lists the
        missing ones. --configs DIR runs another folder of row configs (an ablation, default
        experiments/synthetic) into its own --json, without --write-readme; deltas are against its
        unet row, else its first row, and a row symlinked to the main suite's config reuses the
        main suite's finished runs in the same --work-dir. See segmentation.benchmark.main_suite.

    --check-provenance PATH [--configs DIR] [--allow-missing]
        Exit 1 naming every row of PATH whose config or source files changed since it was
        produced, with the command that regenerates them.

    --reproduce PATH [--configs DIR] [--only NAME,...] [--allow-missing]
        Re-run seed 0 of two rows of PATH (chosen from `git rev-parse HEAD`, or --only) and exit 1
        when its Dice differs from the committed one by more than the stated tolerance.
        --allow-missing: both checks skip (exit 0, with a message) while PATH is absent or empty.

    --suite ci [--only NAME,...] [--steps N] [--json PATH] [--write-readme] [--check PATH]
        Train every experiments/ci/*.yaml (synthetic 128x128, same steps/batch/seed, 2 threads),
        or the --only rows, which then replace their rows of an existing --json (the others kept),
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
    python tools/benchmark.py --suite synthetic --json benchmarks/synthetic.json --write-readme
    python tools/benchmark.py --check-provenance benchmarks/synthetic.json
    python tools/benchmark.py --suite synthetic --configs experiments/ablations/spatial_fusion \
        --json benchmarks/ablation_spatial_fusion.json --work-dir runs/benchmark-synthetic
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

from segmentation.runtime import ensure_malloc_env

README = Path(__file__).resolve().parents[2] / "README.md"  # --write-readme rewrites its tables
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
        choices=["synthetic", "ci", "isic2018", "isic2017", "ph2"],
        help="train + test every experiments/<suite>/*.yaml (see segmentation.benchmark.suite)",
    )
    mode.add_argument(
        "--check-provenance", type=Path, metavar="JSON", help="fail on stale rows of the main suite"
    )
    mode.add_argument(
        "--reproduce", type=Path, metavar="JSON", help="re-run seed 0 of two main-suite rows"
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
        help='--model: add the best settings with bf16 autocast (train.amp: "on"; other numerics)',
    )
    parser.add_argument("--compile", action="store_true", help="--model: add torch.compile config")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    suite = parser.add_argument_group("--suite")
    suite.add_argument("--only", metavar="NAME,...", help="rows to run (file stems)")
    suite.add_argument("--steps", type=int, help="override every row's steps (smoke tests)")
    suite.add_argument(  # DEFAULT_THREADS of segmentation.benchmark.suite (a test ties them)
        "--threads", type=int, default=2, help="torch threads (recorded)"
    )
    suite.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="synthetic: runs at a time, each with --threads threads (e.g. --jobs 2 --threads 1)",
    )
    suite.add_argument("--data-root", help="real-data suites: the dataset folder")
    suite.add_argument("--work-dir", type=Path, help="keep the run folders here (default: temp)")
    suite.add_argument(
        "--check", type=Path, metavar="JSON", help="re-run and fail on quality drift vs JSON"
    )
    suite.add_argument(
        "--write-readme", action="store_true", help="rewrite README's benchmark table"
    )
    suite.add_argument("--seeds", default="0,1,2", help="synthetic: values of train.seed")
    suite.add_argument(
        "--configs",
        type=Path,
        metavar="DIR",
        help="synthetic, --check-provenance, --reproduce: the folder of row configs "
        "(default experiments/synthetic; an ablation folder has its own --json)",
    )
    suite.add_argument(
        "--keep-checkpoints", action="store_true", help="synthetic: keep each run's checkpoints"
    )
    suite.add_argument(
        "--collect",
        action="store_true",
        help="synthetic: tabulate the finished runs of --work-dir, train nothing (missing listed)",
    )
    suite.add_argument(
        "--allow-missing",
        action="store_true",
        help="--check-provenance/--reproduce: skip (exit 0) while the results file is absent",
    )
    return parser.parse_args(argv)


def user_error(message: str) -> NoReturn:
    """The tools' error policy (:mod:`segmentation.cli.errors`): one line, exit code 2."""
    from segmentation.cli.errors import EXIT_USER_ERROR

    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USER_ERROR)


def suite_cli(args) -> int:
    """``--suite ci|isic2018|isic2017|ph2``: run, write ``--json``/README, ``--check``."""
    from segmentation.benchmark.readme import write_readme
    from segmentation.benchmark.suite import check, fmt, merge_rows, run_suite, suite_configs

    reference = None
    if args.check:  # read (and fail on) the reference before an hour of training
        reference = json.loads(Path(args.check).read_text())
    only = args.only.split(",") if args.only else None
    old = None  # the results a partial re-run (--only) updates, read before training as well
    if args.json and only and Path(args.json).is_file():
        old = json.loads(Path(args.json).read_text())
    try:  # argument errors as one line, before any training
        suite_configs(args.suite, only)
    except KeyError as err:
        user_error(err.args[0])
    if args.suite != "ci" and not args.data_root:
        user_error(f"--suite {args.suite} reads real data; pass --data-root DIR.")
    result = run_suite(
        args.suite,
        only=only,
        steps=args.steps,
        threads=args.threads,
        data_root=args.data_root,
        work_dir=args.work_dir,
    )
    for row in result["rows"].values():
        print(
            f"{row['label']:<28} dice {fmt(row['dice'])} iou {fmt(row['iou'])} "
            f"thrJ {fmt(row['thresholded_jaccard'])} hd95 {fmt(row['hd95'])} "
            f"global {fmt(row['global_dice'])} worst {row['worst_group']} "
            f"{fmt(row['worst_group_dice'])} | train {fmt(row['train_images_s'])} img/s, "
            f"infer {fmt(row['infer_images_s'])} img/s, {row['wall_s']:.0f} s"
        )
    print(f"suite '{args.suite}': {result['protocol']['wall_s'] / 60:.1f} min")
    if old is not None:
        try:
            result = merge_rows(old, result)
        except ValueError as err:
            user_error(f"--json {args.json}: {err}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.write_readme:
        changed = write_readme(README, result)
        print("README.md benchmark table " + ("updated" if changed else "unchanged"))
    if reference is None:
        return 0
    failures, report = check(reference, result, list(suite_configs(args.suite)))
    print("\n".join(report))
    for message in failures:
        print(f"CHECK FAILED: {message}")
    print(f"check against {args.check}: " + ("FAILED" if failures else "passed"))
    return 1 if failures else 0


def main_suite_cli(args) -> int:
    """``--suite synthetic``: run or resume, merge, write JSON + figure + README; the exit code."""
    from segmentation.benchmark import main_suite
    from segmentation.benchmark.figure import plot_main
    from segmentation.benchmark.readme import write_readme
    from segmentation.benchmark.suite import fmt
    from segmentation.config import ConfigError

    only = args.only.split(",") if args.only else None
    folder = args.configs
    if args.write_readme and not main_suite.is_main_folder(folder):
        user_error("--write-readme rewrites the README's main table (experiments/synthetic); "
                   f"--configs {folder} writes its own --json only.")  # fmt: skip
    try:  # argument and config errors as one line, before any training
        seeds = [int(s) for s in args.seeds.split(",")]
        main_suite.step_overrides(args.steps)
        main_suite.load_configs(only, folder=folder)
    except (KeyError, ValueError, ConfigError) as err:
        user_error(err.args[0])
    old = None  # the results a partial run (--only) merges into: of the same folder
    if args.json and only and Path(args.json).is_file():
        old = json.loads(Path(args.json).read_text())
        theirs = main_suite.other_configs(old, folder)
        if theirs:
            user_error(f"--json {args.json} holds the rows of {theirs}, not of "
                       f"{main_suite.configs_label(folder)}; pass the matching --configs or "
                       "another --json.")  # fmt: skip
    if args.jobs < 1 or args.threads < 1:
        user_error(
            f"--jobs and --threads must be at least 1, got --jobs {args.jobs} --threads "
            f"{args.threads}; e.g. --jobs 2 --threads 1 runs two 1-thread runs at once."
        )
    made_with = (old or {}).get("protocol", {}).get("threads")
    if made_with is not None and made_with != args.threads:  # results depend on the threads
        user_error(f"--json {args.json} was made with --threads {made_with}; rows re-run with "
                   f"--threads {args.threads} would not be comparable with its other rows. Pass "
                   f"--threads {made_with} (e.g. --jobs 2 --threads 1 on 2 cores), or re-run "
                   "every row without --only.")  # fmt: skip
    result = main_suite.run_main_suite(
        only=only, seeds=seeds, steps=args.steps, threads=args.threads, jobs=args.jobs,
        work_dir=args.work_dir,
        folder=folder, keep_checkpoints=args.keep_checkpoints, train=not args.collect,
    )  # fmt: skip
    if old is not None:
        result = main_suite.merge(old, result, folder)
    reference = result["protocol"]["reference_row"]
    for row in result["rows"].values():
        delta = row.get("delta_vs_unet")
        print(
            f"{row['label']:<28} dice {fmt(row['dice_mean'])} +- {fmt(row['dice_std'])} "
            f"({row['n_seeds']} seeds) delta vs {reference} "
            + ("-" if not delta else f"{delta['mean']:+.4f} [{delta['ci95'][0]:+.4f}, "
               f"{delta['ci95'][1]:+.4f}]")
            + (" still improving" if row["convergence"]["still_improving"] else "")
        )  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json} and {plot_main(result, Path(args.json).with_suffix('.png'))}")
    if args.write_readme:
        changed = write_readme(README, result, main=True)
        print("README.md main benchmark table " + ("updated" if changed else "unchanged"))
    if result["missing"]:
        print(f"not finished yet ({len(result['missing'])} runs, left out): "
              + ", ".join(result["missing"]))  # fmt: skip
    for message in result["failures"]:
        print(f"FAILED: {message}")
    return 1 if result["failures"] else 0


def checks_cli(args) -> int:
    """``--check-provenance`` / ``--reproduce``: skip, pass (0) or fail (1) with messages."""
    from segmentation.benchmark import ci_checks
    from segmentation.config import ConfigError

    path = args.check_provenance or args.reproduce
    folder = args.configs
    what = "provenance check" if args.check_provenance else "seed-0 reproduction"
    try:
        result = ci_checks.load_results(path, args.allow_missing, folder)
        ci_checks.load_configs(folder=folder)  # a wrong --configs as one line
    except (FileNotFoundError, ValueError, ConfigError) as err:
        user_error(str(err))
    if result is None:
        print(f"SKIPPED {what}: {path} does not exist or has no rows yet (the suite has not "
              f"been run); {ci_checks.regenerate_command(folder=folder, json_path=path)} "
              "produces it.")  # fmt: skip
        return 0
    if args.check_provenance:
        failures, report = ci_checks.check_provenance(result, folder=folder, json_path=path)
    else:
        names = args.only.split(",") if args.only else None
        if names is None:
            candidates, notes = ci_checks.buildable(list(result["rows"]), folder)
            print("\n".join(notes))
            commit = ci_checks.git_head()
            costs = {n: ci_checks.seed0_wall_s(result["rows"][n]) for n in candidates}
            budget = result["protocol"].get("reproduce_budget_s")
            together = ci_checks.reproduce_jobs(result["protocol"]["threads"], 2) > 1
            names = ci_checks.pick_rows(commit, candidates, costs=costs, budget_s=budget,
                                        side_by_side=together)  # fmt: skip
            print(
                f"rows picked by commit {commit[:12]}: {', '.join(names)}"
                + (f" (recorded seed-0 wall time within {budget / 60:g} min"
                   + (", side by side)" if together else ", one after the other)")
                   if budget else "")
            )  # fmt: skip
        unknown = sorted(set(names) - set(result["rows"]))
        if unknown:
            user_error(f"--only {','.join(unknown)}: not rows of {path}.")
        work = args.work_dir or Path(tempfile.mkdtemp(prefix="dermseg_reproduce_"))
        jobs = ci_checks.reproduce_jobs(result["protocol"]["threads"], len(names))
        print(f"re-running {len(names)} row(s), {jobs} at a time with "
              f"{result['protocol']['threads']} thread(s) each (as recorded)")  # fmt: skip
        failures, report = ci_checks.reproduce(result, names, work_dir=work, folder=folder,
                                               jobs=jobs)  # fmt: skip
    print("\n".join(report))
    for message in failures:
        print(f"CHECK FAILED: {message}")
    print(f"{what} of {path}: " + ("FAILED" if failures else "passed"))
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.configs and args.suite != "synthetic" and not (args.check_provenance or args.reproduce):
        user_error("--configs applies to --suite synthetic, --check-provenance and --reproduce.")
    if args.suite or args.check_provenance or args.reproduce:
        if args.check_provenance or args.reproduce:
            code = checks_cli(args)
        else:
            code = (main_suite_cli if args.suite == "synthetic" else suite_cli)(args)
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
