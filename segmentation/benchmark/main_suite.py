"""The main benchmark: every row with its own recipe, three seeds, statistics and provenance.

``tools/benchmark.py --suite synthetic`` trains each ``experiments/synthetic/<row>.yaml`` with
``train.seed`` 0, 1 and 2 on the same synthetic data (same generator seed, image size and splits),
tests ``best.pt`` (selected on the validation split) once on the same 300-image test split, and
writes one row per file into ``benchmarks/synthetic.json`` (see :func:`aggregate`).

Each (row, seed) runs in a fresh process (``python -m segmentation.benchmark.main_suite SPEC``), so
peak memory is that run's and no state leaks between runs; it writes
``<work dir>/<row>/seed<k>/result.json`` (atomically) when it finishes. A suite started again with
the same work folder skips every finished run whose configuration and source hashes still match
(:mod:`segmentation.benchmark.provenance`) and re-runs the others, so a killed suite continues where
it stopped and a changed row is never mixed with stale seeds. A run stopped part-way continues from
its newest checkpoint (``train.checkpoint_every``) when its ``progress.json`` (written after every
checkpoint) names the same seed, thread count, overrides, configuration and sources; the resumed run
ends with the weights, curve and test numbers of an uninterrupted one, its times count the work kept
(not the steps redone after the checkpoint) and ``resumed_from`` lists the steps it continued from.
Anything else in the run folder starts again from step 0. Runs go seed-major (every row at seed 0,
then 1, then 2), so a partial suite already has a complete one-seed table. The device follows each
config (``train.device: auto``: CUDA when present), so a GPU machine runs the same command.

Reproducibility: every config sets ``train.deterministic: true``; with the seeds in the config and
the thread count recorded in the results (``torch.set_num_threads`` in the child), a re-run on the
same machine repeats the per-image Dice of a run bit for bit. CI re-runs seed 0 of two rows and
checks the provenance (:mod:`segmentation.benchmark.ci_checks`).

Ablations: ``--configs DIR`` (``folder`` here) runs another folder of row configs the same way,
into its own JSON. A row it shares with the main suite (a symlink to
``experiments/synthetic/<row>.yaml``: same name, same resolved config) reuses the main suite's
finished runs from the shared work dir. Deltas are against ``unet`` when the folder has it, else
against its first row in table order: the protocol's ``reference_row`` (:func:`reference_row`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from segmentation.benchmark.row import (
    HARD_TAGS,
    PROGRESS_FILE,
    SAMPLING_STEPS,
    progress_record,
    read_progress,
    train_gmac_per_image,
    write_json_atomically,
)
from segmentation.benchmark.suite import REPO_ROOT, SUITES, protocol, suite_configs

SEEDS = (0, 1, 2)
# Rows that are the same network with the same recipe as another row, shown in the table but
# not trained twice (a test checks the identity): Att-SwinU-Net without skip attention is Swin-Unet.
ALIASES = {"att_swinunet_none": "swin_unet"}
REFERENCE_ROW = "unet"  # the main suite's reference; another folder's is its first row
REPRODUCE_TOLERANCE = 0.02  # Dice; the CI re-run of seed 0 must stay within it (at most 0.02)
# Seconds of recorded seed-0 wall time the two CI re-runs may add up to (keeps .ci/run in 60 min)
REPRODUCE_BUDGET_S = 1200
DEFAULT_WORK_DIR = REPO_ROOT / "runs" / "benchmark-synthetic"
PER_SEED_METRICS = (
    "dice", "iou", "thresholded_jaccard", "hd95", "global_dice", "worst_group_dice",
    "group_gap", *(f"dice_{tag}" for tag in HARD_TAGS),
)  # fmt: skip


def load_configs(only=None, overrides=(), folder: Path | None = None) -> dict:
    """``{row: (yaml path, Config)}`` of the main suite (or of ``folder``), checked to share data
    and evaluation.

    Raises:
        ConfigError: ``folder`` holds no row config, or a row's data (augmentation aside) or eval
            section differs from the first row's (in the table order of ``suite_configs``), its
            validation is not every quarter of its steps, or it is not deterministic.
    """
    from segmentation.config import ConfigError, load_config

    paths = suite_configs("synthetic", only, folder)
    configs = {name: (path, load_config(path, overrides)) for name, path in paths.items()}
    full = suite_configs("synthetic", None, folder)
    if not full:
        raise ConfigError(f"--configs {folder_label(folder)}: no *.yaml row configs in it.")
    first_path = next(iter(full.values()))
    first = configs.get(first_path.stem, (None, None))[1] or load_config(first_path, overrides)
    for path, config in configs.values():
        for section in ("data", "eval"):
            mine, theirs = (_shared(c.raw[section]) for c in (config, first))
            if mine != theirs:
                raise ConfigError(
                    f"{path}: section '{section}' is {mine} but {first_path.name} has {theirs}; "
                    "every row of the main suite trains and tests on the same data with the same "
                    "evaluation settings (only data.augment may differ) - copy that section."
                )
        train = config.train
        if train.eval_every * 4 != train.steps:
            raise ConfigError(
                f"{path}: train.eval_every = {train.eval_every} with train.steps = {train.steps}; "
                "set eval_every to steps / 4 (steps a multiple of 4) so that validation runs at "
                "25/50/75/100 % of the steps (the convergence curve)."
            )
        if not train.deterministic:
            raise ConfigError(
                f"{path}: train.deterministic is false; set it to true (CI re-runs seed 0 and "
                "compares it with the committed numbers)."
            )
    return configs


def folder_label(folder: Path | None = None) -> str:
    """The folder of row configs as ``--configs`` names it: relative to the repository when inside
    it (``experiments/synthetic`` for the default ``None``)."""
    path = Path(folder or REPO_ROOT / SUITES["synthetic"]).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def configs_label(folder: Path | None = None) -> str:
    """The protocol's ``configs`` entry for ``folder``: which row configs a results file holds."""
    return f"{folder_label(folder)}/*.yaml"


def other_configs(result: dict, folder: Path | None = None) -> str | None:
    """The ``configs`` a results file was produced from when it is not ``folder``'s, else None."""
    produced = result.get("protocol", {}).get("configs")
    return produced if produced and produced != configs_label(folder) else None


def is_main_folder(folder: Path | None = None) -> bool:
    """True for the main suite's folder (``experiments/synthetic``, whose table is the README's)."""
    return folder_label(folder) == SUITES["synthetic"]


def reference_row(folder: Path | None = None) -> str:
    """The row deltas are against: ``unet`` when ``folder`` has it, else its first row in table
    order (an ablation folder's baseline, e.g. the main suite's row it varies)."""
    names = list(suite_configs("synthetic", None, folder))
    return REFERENCE_ROW if REFERENCE_ROW in names or not names else names[0]


def _shared(section: dict) -> dict:
    """The part of a data/eval section every row must share: all but ``augment`` (a recipe
    choice, e.g. nnU-Net's augmentation preset)."""
    return {k: v for k, v in section.items() if k != "augment"}


def step_overrides(steps: int | None) -> list[str]:
    """``--steps N`` (smoke tests): N steps, validation every N / 4."""
    if steps is None:
        return []
    if steps < 4 or steps % 4:
        raise ValueError(f"--steps {steps}: the main suite needs a multiple of 4 (validation at "
                         "every quarter), e.g. --steps 4.")  # fmt: skip
    quarter = steps // 4
    return [f"train.steps={steps}", f"train.eval_every={quarter}",
            f"train.checkpoint_every={quarter}"]  # fmt: skip


def run_spec(name, path, seed, overrides, run_dir, threads, keep, identity=None,
             resume=None) -> dict:  # fmt: skip
    """What a child process needs to train and test one (row, seed): JSON-serialisable.
    ``identity`` (:func:`run_identity`) goes into the run's ``progress.json``; ``resume``: the
    checkpoint (a path string) to continue the stopped run in ``run_dir`` from, as
    :func:`segmentation.benchmark.row.read_progress` found it."""
    return {"name": name, "config": str(path), "seed": seed, "overrides": list(overrides),
            "run_dir": str(run_dir), "threads": threads, "keep_checkpoints": keep,
            "identity": identity, "resume": resume}  # fmt: skip


def run_identity(seed: int, threads: int, overrides, provenance: dict) -> dict:
    """What a stopped run must have been to be resumed: the same seed, thread count, overrides,
    resolved configuration and source files."""
    return {"seed": seed, "threads": threads, "overrides": list(overrides),
            "config_sha256": provenance["config_sha256"], "files": provenance["files"]}  # fmt: skip


def launch(spec: dict) -> tuple[dict | None, str]:
    """Run one (row, seed) in a fresh Python process (output to ``run_dir/log.txt``; the folder is
    emptied first unless the run resumes, whose output is appended).

    Returns:
        ``(result, error)``: the run's ``result.json`` and ``""``, or ``None`` and a message that
        quotes the end of the log.
    """
    run_dir = Path(spec["run_dir"])
    if not spec.get("resume"):
        shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "log.txt", "a" if spec.get("resume") else "w") as out:
        command = [sys.executable, "-m", "segmentation.benchmark.main_suite", json.dumps(spec)]
        proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    if proc.returncode == 0 and (run_dir / "result.json").is_file():
        return json.loads((run_dir / "result.json").read_text()), ""
    tail = (run_dir / "log.txt").read_text().splitlines()[-12:]
    where = run_dir / "log.txt"
    return None, f"exit {proc.returncode}; the end of {where}:\n  " + "\n  ".join(tail)


def run_child(spec: dict) -> dict:
    """The child process: train and test one (row, seed), write ``result.json`` atomically."""
    import torch

    from segmentation.benchmark.provenance import row_provenance
    from segmentation.benchmark.row import run_row
    from segmentation.config import load_config
    from segmentation.training.build import resolve_device

    started_at = time.time()
    torch.set_num_threads(spec["threads"])
    config = load_config(spec["config"], [*spec["overrides"], f"train.seed={spec['seed']}"])
    run_dir = Path(spec["run_dir"])
    size = config.raw["data"]["image_size"]
    identity = spec.get("identity")
    resume = None
    if spec.get("resume"):  # the parent found it; run_row loads (and checks) the checkpoint
        record = progress_record(run_dir, identity)
        if record is None:
            raise RuntimeError(f"{run_dir}: the {PROGRESS_FILE} of the stopped run to resume is "
                               "gone or no longer this run's")  # fmt: skip
        resume = (Path(spec["resume"]), record)
    progress = (run_dir / PROGRESS_FILE, identity) if identity is not None else None
    row = run_row(spec["name"], config, run_dir, gmac_sizes=(size,), details=True,
                  progress=progress, resume=resume, started_at=started_at)  # fmt: skip
    device = resolve_device(config.train.device)
    finished_at = time.time()
    if row.get("spans"):
        row["spans"][-1][1] = finished_at
    row.update(
        seed=spec["seed"],
        threads=spec["threads"],
        steps=config.train.steps,
        batch_size=config.train.batch_size,
        device=device.type,
        provenance=row_provenance(config.raw, device=device),
        # epoch seconds: the suite's elapsed time is the union of the runs' spans
        started_at=row.get("spans", [[started_at]])[0][0],
        finished_at=finished_at,
    )
    if not spec.get("keep_checkpoints"):
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        (run_dir / PROGRESS_FILE).unlink(missing_ok=True)
    write_json_atomically(run_dir / "result.json", row)
    return row


def _finished(run_dir: Path, seed: int, threads: int, provenance: dict) -> dict | None:
    """The stored result of a finished run whose seed, thread count, config and sources match,
    else None."""
    try:
        result = json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError):
        return None
    stored = result.get("provenance", {})
    same = all(stored.get(k) == provenance[k] for k in ("config_sha256", "files"))
    same = same and (result.get("seed"), result.get("threads")) == (seed, threads)
    return result if same else None


def run_main_suite(
    *,
    only=None,
    seeds=SEEDS,
    steps: int | None = None,
    overrides=(),
    threads: int = 2,
    jobs: int = 1,
    work_dir: Path | None = None,
    folder: Path | None = None,
    keep_checkpoints: bool = False,
    train: bool = True,
    log=print,
) -> dict:
    """Run (or resume) every (row, seed); return ``{"protocol", "rows", "failures", "missing"}``.

    Args:
        only: row names to run (default every file of ``folder``).
        seeds: values of ``train.seed``.
        steps: override every row's steps (smoke tests; a multiple of 4).
        overrides: more ``section.key=value`` overrides for every row (tests).
        threads: torch threads of each run (recorded; part of bit-reproducibility).
        jobs: runs at a time, each in its own process with ``threads`` threads; whether that
            is faster than one run with more threads depends on the network (docs/benchmark.md).
            Results do not depend on ``jobs``, only on ``threads``.
        work_dir: where runs and their ``result.json`` live (default ``runs/benchmark-synthetic``).
        folder: the folder of row configs (default ``experiments/synthetic``; ``--configs``).
        keep_checkpoints: keep each run's ``checkpoints/`` (default: deleted after the test).
        train: ``False`` collects the finished runs only (a suite still running elsewhere, or a
            partial table): unfinished or stale (row, seed) pairs are listed in ``missing``.
        log: progress printer.
    """
    from segmentation.benchmark.provenance import row_provenance

    if jobs < 1:  # before any config is read or source hashed
        raise ValueError(f"jobs (runs at a time) must be at least 1, got {jobs}.")
    overrides = [*step_overrides(steps), *overrides]
    configs = load_configs(only, overrides, folder)
    work = Path(work_dir or DEFAULT_WORK_DIR)
    results: dict[str, list[dict]] = {name: [] for name in configs}
    failures: list[str] = []
    missing: list[str] = []
    start = time.perf_counter()
    pending = []
    for seed in seeds:
        for name, (path, config) in configs.items():
            run_dir = work / name / f"seed{seed}"
            prov = row_provenance(config.raw)
            done = _finished(run_dir, seed, threads, prov)
            identity = run_identity(seed, threads, overrides, prov)
            if done is not None:
                log(f"{name} seed {seed}: finished earlier ({run_dir / 'result.json'}), kept")
                results[name].append(done)
            elif not train:
                missing.append(f"{name} seed {seed}")
                log(f"{name} seed {seed}: not finished (or stale) in {run_dir}, left out")
            else:
                stopped = read_progress(run_dir, identity)
                if stopped is not None:
                    log(f"{name} seed {seed}: stopped at step {stopped[1]['step']} earlier "
                        f"({stopped[0]}), will resume from there")  # fmt: skip
                resume = str(stopped[0]) if stopped is not None else None
                spec = run_spec(name, path, seed, overrides, run_dir, threads, keep_checkpoints,
                                identity, resume)  # fmt: skip
                pending.append((name, seed, spec))

    def run_one(item):
        name, seed, spec = item
        log(f"{name} seed {seed}: training ({Path(spec['run_dir']) / 'log.txt'})")
        return item, *launch(spec)

    with ThreadPoolExecutor(max_workers=jobs) as pool:  # seed-major, FIFO
        for (name, seed, _), done, error in pool.map(run_one, pending):
            if done is None:
                failures.append(f"{name} seed {seed}: {error.splitlines()[0]}")
                log(f"{name} seed {seed} FAILED: {error}")
                continue
            results[name].append(done)
            minutes = done["wall_s"] / 60
            log(f"{name} seed {seed}: test dice {done['dice']:.4f} in {minutes:.1f} min")
    for done in results.values():
        done.sort(key=lambda r: r["seed"])
    for name, done in results.items():  # a file edited while the suite ran (shared checkout)
        if any(r["provenance"]["files"] != done[0]["provenance"]["files"] for r in done):
            failures.append(f"{name}: its seeds ran on different source files (edited during the "
                            "suite); run it again, from a clean checkout.")  # fmt: skip
    rows = {name: aggregate(name, cfg, results[name]) for name, (_, cfg) in configs.items()
            if results[name]}  # fmt: skip
    proto = main_protocol({n: c for n, (_, c) in configs.items()}, threads, seeds, overrides,
                          folder)  # fmt: skip
    proto["session_wall_s"] = time.perf_counter() - start
    proto["jobs"] = jobs  # how it ran (the elapsed time), not what the numbers depend on
    return finalize({"protocol": proto, "rows": rows, "failures": failures, "missing": missing})


def main_protocol(configs: dict, threads: int, seeds, overrides=(), folder=None) -> dict:
    """The settings every row shares, the statistics used, the config overrides of this run
    (none for the committed table), the folder of row configs, its reference row and the
    environment."""
    from segmentation.benchmark import stats

    proto = protocol(configs, threads, "synthetic")
    for key in ("steps", "batch_size", "seed", "wall_s"):  # per row in this suite
        proto.pop(key, None)
    proto["metric_definitions"]["selection"] = (
        "best.pt by validation per-image Dice among the evaluations at 25/50/75/100 % of the steps"
    )
    proto.update(
        configs=configs_label(folder),
        seeds=list(seeds),
        overrides=list(overrides),
        aliases=dict(ALIASES),
        reference_row=reference_row(folder),
        bootstrap=dict(stats.BOOTSTRAP),
        convergence_threshold=stats.CONVERGENCE_THRESHOLD,
        reproduce_tolerance={"dice": REPRODUCE_TOLERANCE},
        reproduce_budget_s=REPRODUCE_BUDGET_S,
        sampling_steps=list(SAMPLING_STEPS),
    )
    return proto


def _summary(per_seed: list[dict]) -> dict:
    from segmentation.benchmark.stats import mean_std

    out = {m: mean_std([s.get(m) for s in per_seed]) for m in PER_SEED_METRICS}
    out["n_empty_pred_on_lesion"] = mean_std([s.get("n_empty_pred_on_lesion") for s in per_seed])
    return out


_PER_SEED_KEEP = (
    "seed", *PER_SEED_METRICS, "hd95_excluded", "worst_group", "n_empty_pred_on_lesion",
    "val_curve", "val_dice", "step", "train_wall_s", "wall_s", "train_images_s",
    "infer_images_s", "peak_rss_mb", "peak_cuda_mb", "device", "threads", "per_image_dice",
    "started_at", "finished_at", "spans", "resumed_from",
)  # fmt: skip


def aggregate(name: str, config, results: list[dict]) -> dict:
    """One row of ``synthetic.json`` from its per-seed results (deltas: :func:`finalize`).

    SAM-family networks (``networks/sam/``) go to the ``sam_pipeline`` block: without pretrained
    weights their frozen encoders are random, so they measure the adapter pipeline, not SAM.
    """
    from networks import NETWORKS
    from segmentation.benchmark.provenance import network_module
    from segmentation.benchmark.stats import convergence

    results = sorted(results, key=lambda r: r["seed"])
    first = results[0]
    per_seed = [{k: r.get(k) for k in _PER_SEED_KEEP} for r in results]
    summary = _summary(per_seed)
    steps, batch = first["steps"], first["batch_size"]
    # counted here, not in the runs: one count per row, with the current counter (row.py)
    train_gmac = train_gmac_per_image(first["network"], first["model_kwargs"], config)
    module = network_module(first["network"])
    row = {
        "name": name,
        "label": first["label"],
        "network": first["network"],
        "family": NETWORKS.get(first["network"])[0].__name__,  # one figure marker per family
        "block": "sam_pipeline" if module.startswith("networks.sam.") else "methods",
        "model_kwargs": first["model_kwargs"],
        "prompt": first.get("prompt"),
        "params": first["params"],
        "trainable_params": first["trainable_params"],
        "gmac": first.get(f"gmac_{config.raw['data']['image_size']}"),
        "recipe": {
            "optim": config.raw["optim"], "sched": config.raw["sched"],
            "grad_clip": config.train.grad_clip, "steps": steps, "batch_size": batch,
            "amp": config.train.amp,
        },
        "train_gmac_per_image": train_gmac,
        "train_tmac": train_gmac * steps * batch / 1e3 if train_gmac is not None else None,
        "test_ids": first["test_ids"],
        "per_seed": per_seed,
        "n_seeds": len(per_seed),
        "dice_mean": summary["dice"]["mean"],
        "dice_std": summary["dice"]["std"],
        "summary": summary,
        "convergence": convergence([s["val_curve"] for s in per_seed], steps),
        "wall_s": summary_of(per_seed, "wall_s"),
        "train_wall_s": summary_of(per_seed, "train_wall_s"),
        "peak_rss_mb": max((s["peak_rss_mb"] or 0) for s in per_seed),
        "peak_cuda_mb": max((s["peak_cuda_mb"] or 0) for s in per_seed) or None,
        "provenance": first["provenance"],
    }  # fmt: skip
    if "sampling" in first:
        row["sample_steps"] = first.get("sample_steps")
        row["sampling"] = {}
        for k in first["sampling"]:
            seeds = [{**r["sampling"][k], "seed": r["seed"]} for r in results]
            summary_k = _summary(seeds)
            row["sampling"][k] = {
                "per_seed": [{m: s.get(m) for m in _PER_SEED_KEEP if m in s} for s in seeds],
                "dice_mean": summary_k["dice"]["mean"],
                "dice_std": summary_k["dice"]["std"],
                "summary": summary_k,
            }
    return row


def summary_of(per_seed: list[dict], key: str) -> float | None:
    """Mean over seeds of a per-seed number (timings)."""
    from segmentation.benchmark.stats import mean_std

    return mean_std([s.get(key) for s in per_seed])["mean"]


def finalize(result: dict) -> dict:
    """Add ``delta_vs_unet`` (paired bootstrap) to every row and sampling variant, in place.

    The delta is against ``protocol["reference_row"]`` (``unet`` in the main suite; the key keeps
    its name in every results file)."""
    from segmentation.benchmark.stats import paired_delta

    rows = result["rows"]
    ref_name = result["protocol"].get("reference_row", REFERENCE_ROW)
    ref = rows.get(ref_name)
    for name, row in rows.items():
        targets = [row, *row.get("sampling", {}).values()]
        for target in targets:
            if ref is None or name == ref_name:
                target["delta_vs_unet"] = None
                continue
            target["delta_vs_unet"] = paired_delta(
                target["per_seed"], ref["per_seed"], ids=row["test_ids"], ref_ids=ref["test_ids"]
            )
    return result


def merge(old: dict, new: dict, folder: Path | None = None) -> dict:
    """``new`` rows replace or join those of ``old`` (a partial re-run of ``folder``, default
    ``experiments/synthetic``); rows in its table order, deltas recomputed.

    The protocol is the new run's (the configs checked it), and the runs' total time is summed
    from the rows.
    """
    rows = dict(old.get("rows", {}))
    rows.update(new["rows"])
    order = list(suite_configs("synthetic", None, folder))
    rank = {n: i for i, n in enumerate(order)}
    rows = dict(sorted(rows.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))
    merged = {"protocol": dict(new["protocol"]), "rows": rows, "failures": new.get("failures", []),
              "missing": new.get("missing", [])}  # fmt: skip
    return finalize(merged)


def exit_with_parent(
    parent_pid: int, poll_s: float = 1.0, grace_s: float = 300.0
) -> threading.Thread:
    """Start a daemon thread that ends this process once ``parent_pid`` is gone.

    A child run must not outlive the suite: killing the suite (``kill PID``, a closed terminal,
    a CI timeout) would otherwise leave it training, sharing the cores with the next run and
    spoiling its wall time. Checks every ``poll_s`` seconds whether the process was re-parented.
    While the run trains, it is stopped as SIGTERM would stop it
    (:func:`~segmentation.distributed.request_stop`): after its current step, with a resumable
    checkpoint, so that a suite started again resumes from that step. This also lets a run that got
    the same SIGTERM as its suite (``kill -- -PGID``, Ctrl-C) finish writing that checkpoint after
    the suite has exited. A run that has not ended ``grace_s`` seconds later, or one that is not
    training (data set-up, test evaluation), ends at once (exit code 1).
    """
    from segmentation.distributed import request_stop

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        if request_stop("the suite's exit"):
            print(f"the suite (pid {parent_pid}) is gone; stopping this run after its current "
                  "step, with a checkpoint to resume from", file=sys.stderr)  # fmt: skip
            time.sleep(grace_s)
            print(f"this run did not stop within {grace_s:.0f} s; ending it", file=sys.stderr)
        else:
            print(f"the suite (pid {parent_pid}) is gone; stopping this run", file=sys.stderr)
        os._exit(1)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


if __name__ == "__main__":
    exit_with_parent(os.getppid())
    run_child(json.loads(sys.argv[1]))
