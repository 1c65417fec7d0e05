"""The CI checks of the main benchmark (``benchmarks/synthetic.json``), or of an ablation folder's
results (``--configs DIR``: ``folder`` here).

* ``--check-provenance``: every row's config and source hashes still match the files
  (:func:`check_provenance`); stale rows are named with the command that regenerates them.
* ``--reproduce``: seed 0 of two rows, chosen from the commit hash (:func:`pick_rows`), is trained
  again and compared with the committed per-seed Dice (:func:`reproduce`).

Until the results file exists with rows, CI passes ``--allow-missing`` and both checks skip with a
message instead of failing (:func:`load_results`).
"""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from segmentation.benchmark.main_suite import (
    REPRODUCE_TOLERANCE,
    configs_label,
    folder_label,
    is_main_folder,
    launch,
    load_configs,
    other_configs,
    run_spec,
)
from segmentation.benchmark.suite import DEFAULT_THREADS, REPO_ROOT

MAIN_RESULTS = "benchmarks/synthetic.json"


def regenerate_command(
    names=None,
    *,
    folder: Path | None = None,
    json_path: str | Path = MAIN_RESULTS,
    threads: int | None = None,
    jobs: int | None = None,
) -> str:
    """The command that re-runs ``names`` (default: every row) of ``folder`` and rewrites the
    results at ``json_path`` and its figure, and the README table for the main suite; with the
    ``jobs`` and ``threads`` the results were made with (their protocol records both) when they
    are not the CLI's defaults (results depend on the threads)."""
    main = is_main_folder(folder)
    return " ".join([
        "python tools/benchmark.py --suite synthetic",
        *([] if main else [f"--configs {folder_label(folder)}"]),
        *([f"--only {','.join(names)}"] if names else []),
        *([f"--jobs {jobs}"] if jobs not in (None, 1) else []),
        *([f"--threads {threads}"] if threads not in (None, DEFAULT_THREADS) else []),
        f"--json {json_path}",
        *(["--write-readme"] if main else []),
    ])  # fmt: skip


def load_results(path: str | Path, allow_missing: bool, folder: Path | None = None) -> dict | None:
    """The results at ``path`` (of the row configs in ``folder``); None (skip) when it is absent or
    has no rows and ``allow_missing``.

    Raises:
        FileNotFoundError: ``path`` does not exist (without ``allow_missing``).
        ValueError: it holds no rows (without ``allow_missing``).
    """
    path = Path(path)
    if not path.is_file():
        if allow_missing:
            return None
        command = regenerate_command(folder=folder, json_path=path)
        raise FileNotFoundError(
            f"{path} does not exist; produce it with {command} (or pass --allow-missing to skip)."
        )
    result = json.loads(path.read_text())
    if not result.get("rows"):
        if allow_missing:
            return None
        raise ValueError(f"{path} holds no rows; run the main suite first (--allow-missing skips).")
    return result


def check_provenance(
    result: dict,
    *,
    folder: Path | None = None,
    root: Path | None = None,
    json_path: str | Path = MAIN_RESULTS,
):
    """``(failures, notes)``: one failure line per stale row (with its reasons), then the command
    that regenerates them (into ``json_path``); notes on torch/device differences. Results made
    from another folder of row configs than ``folder`` fail as a whole (pass its ``--configs``)."""
    from segmentation.benchmark.provenance import stale_rows

    produced = other_configs(result, folder)
    if produced:
        return [f"{json_path} was produced from {produced}, not {configs_label(folder)}; pass "
                f"--configs {produced.removesuffix('/*.yaml')}."], []  # fmt: skip
    configs = {name: config for name, (_, config) in load_configs(folder=folder).items()}
    stale, notes = stale_rows(result, configs, root)
    failures = [f"{name}: stale - {'; '.join(reasons)}" for name, reasons in stale.items()]
    runnable = [name for name in configs if name in stale]  # in table order
    if runnable:
        made = result["protocol"]
        command = regenerate_command(
            runnable, folder=folder, json_path=json_path, threads=made.get("threads"),
            jobs=made.get("jobs"),
        )  # fmt: skip
        failures.append("regenerate with: " + command)
    return failures, notes


def pick_rows(
    commit: str,
    names: list[str],
    k: int = 2,
    *,
    costs: dict[str, float] | None = None,
    budget_s: float | None = None,
    side_by_side: bool = False,
) -> list[str]:
    """``k`` distinct rows chosen from ``names`` by the hexadecimal ``commit`` hash.

    The hash read as an integer is written in the mixed radix ``n, n - 1, ...``: each digit picks
    one of the rows not yet picked (sorted names), so every commit picks deterministically and
    the pairs are spread evenly over commits. With ``costs`` (seconds per row) and ``budget_s``,
    each digit picks among the rows that still let the remaining picks fit the budget (the
    cheapest rows complete them), so CI's re-run stays within its time: the picks' costs add up
    when they run one after the other, and the longest counts when they run ``side_by_side``.
    """
    if not names:
        return []
    combine = max if side_by_side else sum
    pool, value, picked = sorted(names), int(commit, 16), []
    for i in range(min(k, len(pool))):
        feasible = pool
        if costs is not None and budget_s is not None:
            left = k - 1 - i  # picks still to make after this one; the cheapest rows complete them
            feasible = [
                name for name in pool
                if combine([costs[n] for n in picked] + [costs[name]]
                           + sorted(costs[n] for n in pool if n != name)[:left]) <= budget_s
            ]  # fmt: skip
            if not feasible:
                break
        value, index = divmod(value, len(feasible))
        picked.append(feasible[index])
        pool.remove(feasible[index])
    return picked


def reproduce_jobs(threads: int, rows: int, cpus: int | None = None) -> int:
    """How many re-runs ``--reproduce`` runs at once: as many as the CPU holds with the
    ``threads`` each run was recorded with (the suite's ``--jobs 2 --threads 1`` on 2 cores gives
    2, as the suite ran them), at least 1 and at most ``rows``."""
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    return max(1, min(rows, cpus // max(1, threads)))


def seed0_wall_s(row: dict) -> float:
    """The recorded wall time of a row's seed-0 run (what ``--reproduce`` re-runs), in seconds."""
    return next(s["wall_s"] for s in row["per_seed"] if s["seed"] == 0)


def buildable(names, folder: Path | None = None) -> tuple[list[str], list[str]]:
    """``(buildable, notes)``: the rows whose network builds here, and one note per row left out
    because an optional package is missing (e.g. ``sam3`` without the ``[sam3]`` extra); any
    other error is raised, never hidden."""
    from segmentation.benchmark.suite import suite_configs
    from segmentation.training.build import build_dataset, build_model, model_spec

    known = suite_configs("synthetic", None, folder)
    configs = load_configs([n for n in names if n in known], (), folder)
    ok, notes = [], [f"{n}: no configuration file, not re-run." for n in names if n not in known]
    for name, (_, config) in configs.items():
        try:
            build_model(model_spec(config, build_dataset(config, "train")))
        except ImportError as err:
            notes.append(f"{name}: not re-run here ({err}); install its extra to include it.")
            continue
        ok.append(name)
    return ok, notes


def git_head() -> str:
    """``git rev-parse HEAD`` of the repository."""
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True)  # fmt: skip
    return out.stdout.strip()


def reproduce(
    reference: dict,
    names: list[str],
    *,
    work_dir: Path,
    folder: Path | None = None,
    jobs: int = 1,
    log=print,
) -> tuple[list, list]:
    """Re-run seed 0 of ``names`` and compare with the committed per-seed numbers.

    The re-run uses the thread count and config overrides recorded in ``reference["protocol"]``
    (none for the committed table) and the configs of ``folder`` (default
    ``experiments/synthetic``); ``jobs`` re-runs at a time (:func:`reproduce_jobs`; results do not
    depend on it).

    Returns:
        ``(failures, report)``: a failure when the re-run's Dice differs from the committed seed-0
        Dice by more than the tolerance stated in ``reference`` (``protocol.reproduce_tolerance``,
        at most 0.02) or the row cannot be re-run; report lines say whether the per-image Dice
        repeated bit for bit.
    """
    proto = reference["protocol"]
    tolerance = proto.get("reproduce_tolerance", {}).get("dice", REPRODUCE_TOLERANCE)
    if tolerance > REPRODUCE_TOLERANCE:
        raise ValueError(f"reproduce_tolerance.dice = {tolerance} in the results; at most "
                         f"{REPRODUCE_TOLERANCE} is allowed.")  # fmt: skip
    overrides = proto.get("overrides", [])
    configs = load_configs(names, overrides, folder)
    failures, report, runs = [], [], []
    for name in names:
        ref_seed = next((s for s in reference["rows"][name]["per_seed"] if s["seed"] == 0), None)
        if ref_seed is None:
            failures.append(f"{name}: the results hold no seed 0 to compare with.")
            continue
        run_dir = Path(work_dir) / name / "seed0"
        log(f"{name} seed 0: re-running ({run_dir / 'log.txt'})")
        spec = run_spec(name, configs[name][0], 0, overrides, run_dir, proto["threads"], False)
        runs.append((name, ref_seed, spec))
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        launched = list(pool.map(lambda run: launch(run[2]), runs))
    for (name, ref_seed, _), (new, error) in zip(runs, launched, strict=True):
        if new is None:
            failures.append(f"{name}: the re-run failed: {error}")
            continue
        delta = new["dice"] - ref_seed["dice"]
        exact = new["per_image_dice"] == ref_seed["per_image_dice"]
        report.append(f"{name} seed 0: dice {new['dice']:.4f} vs committed {ref_seed['dice']:.4f} "
                      f"(difference {delta:+.4f}, tolerance {tolerance}); per-image Dice "
                      f"{'bit-identical' if exact else 'differs'}")  # fmt: skip
        if abs(delta) > tolerance:
            failures.append(f"{name}: seed-0 Dice {new['dice']:.4f} vs committed "
                            f"{ref_seed['dice']:.4f} (tolerance {tolerance}).")  # fmt: skip
    return failures, report
