"""Provenance of a benchmark row: hashes of its resolved config and of the source it depends on.

A row of ``benchmarks/synthetic.json`` is valid for the code that produced it. Its provenance holds
the SHA-256 of the row's resolved configuration (``train.seed`` excluded: the seeds are the suite's)
and of every source file the numbers depend on:

* the network: the module that defines the registered class and its import closure within
  ``networks/`` (blocks, kernels, shared helpers), found with :mod:`ast` from the ``import`` and
  ``from ... import`` statements anywhere in each file (lazy imports inside functions count). A
  sub-package's ``__init__.py`` counts when something is imported through it; the top-level
  ``networks/__init__.py`` does not (it only imports every network so that they register);
* :data:`SHARED_SOURCES`: the training loop, optimiser and schedules, losses, the oneDNN linear,
  metrics and the evaluation loop, the data generator (with its drawing and colour code),
  augmentation and loader - listed by hand, because their own import closure reaches every dataset
  loader of the repository - and the planner (``segmentation/planning.py``) for rows that plan
  (``train.plan: auto``).

:func:`stale_rows` compares the stored hashes with the files on disk: a one-line change in any of
them makes the row stale. The torch version and the CPU/GPU model are recorded and reported when
they differ, but they do not make a row stale (other hardware is expected to drift slightly).
"""

from __future__ import annotations

import ast
import copy
import hashlib
import inspect
import json
import platform
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
# Files every row depends on besides its network (paths relative to the repository root).
SHARED_SOURCES = (
    "segmentation/training/trainer.py",
    "segmentation/training/build.py",
    "segmentation/optim.py",
    "segmentation/losses.py",
    "networks/blocks/deep_supervision.py",  # imported by the losses
    "networks/kernels/linear.py",  # train.onednn_linear
    "segmentation/evaluation/metrics.py",
    "segmentation/evaluation/boundary.py",
    "segmentation/evaluation/evaluate.py",
    "segmentation/data/synthetic.py",
    "segmentation/data/procedural.py",
    "segmentation/data/color.py",
    "segmentation/data/transforms.py",
    "segmentation/data/loader.py",
)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def config_sha256(raw: dict) -> str:
    """Hex SHA-256 of a resolved config (``Config.raw``) without ``train.seed``, canonical JSON."""
    raw = copy.deepcopy(raw)
    raw.get("train", {}).pop("seed", None)
    text = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _module_file(module: str, root: Path) -> Path | None:
    """``networks.blocks.swin`` -> ``root/networks/blocks/swin.py`` (or the package's
    ``__init__.py``); None when it is not a file of ``networks/``."""
    parts = module.split(".")
    if parts[0] != "networks":
        return None
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path, module: str) -> set[str]:
    """Absolute names of the modules ``path`` (module ``module``) imports, relative imports
    resolved; for ``from pkg import name`` both ``pkg`` and ``pkg.name`` (a sub-module, if so)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def import_closure(module: str, root: Path | None = None) -> list[str]:
    """Files of ``networks/`` that ``module`` imports, directly or not, itself included.

    Args:
        module: dotted name, e.g. ``networks.att_swinunet``.
        root: repository root holding ``networks/`` (default :data:`REPO_ROOT`).

    Returns:
        Sorted paths relative to ``root`` (POSIX), e.g. ``["networks/att_swinunet.py", ...]``.
    """
    root = Path(root or REPO_ROOT)
    start = _module_file(module, root)
    if start is None:
        raise FileNotFoundError(f"module '{module}' is not a file under {root / 'networks'}.")
    seen: dict[Path, str] = {}
    todo = [(start, module)]
    while todo:
        path, name = todo.pop()
        if path in seen:
            continue
        seen[path] = name
        for imported in _imported_modules(path, name):
            parts = imported.split(".")
            # importing a.b.c runs the __init__ of a.b (but networks/__init__.py is left out)
            for depth in range(2, len(parts) + 1):
                target = _module_file(".".join(parts[:depth]), root)
                if target is not None and target not in seen:
                    todo.append((target, ".".join(parts[:depth])))
    return sorted(p.relative_to(root).as_posix() for p in seen)


def network_module(name: str) -> str:
    """Dotted module of the class registered as ``name`` (e.g. ``networks.swin_unet``)."""
    import networks

    target, _ = networks.NETWORKS.get(name)
    return inspect.getmodule(target).__name__


def source_files(raw: dict, root: Path | None = None) -> list[str]:
    """Every file a row with resolved config ``raw`` depends on (relative paths): its network's
    import closure, :data:`SHARED_SOURCES`, and the planner when ``train.plan`` is ``auto``."""
    files = set(import_closure(network_module(raw["model"]["name"]), root)) | set(SHARED_SOURCES)
    if raw.get("train", {}).get("plan") == "auto":
        files.add("segmentation/planning.py")
    return sorted(files)


def device_name(device: str | torch.device = "cpu") -> str:
    """The GPU model for a CUDA device, else the CPU model (``/proc/cpuinfo``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from segmentation.benchmark.suite import cpu_model

    return cpu_model()


def row_provenance(raw: dict, root: Path | None = None, device: str = "cpu") -> dict:
    """The provenance block of a row whose resolved config is ``raw`` (``Config.raw``); hashes of
    the files under ``root`` (default :data:`REPO_ROOT`, read at call time)."""
    root = Path(root or REPO_ROOT)
    files = source_files(raw, root)
    return {
        "config_sha256": config_sha256(raw),
        "files": {f: sha256_file(root / f) for f in files},
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device_name(device),
    }


def stale_rows(result: dict, configs: dict, root: Path | None = None) -> tuple[dict, list[str]]:
    """Rows whose provenance no longer matches the configs and files on disk.

    Args:
        result: a suite result (``{"protocol", "rows"}``) whose rows carry ``provenance``.
        configs: ``{row name: Config}`` of the suite's current configuration files.
        root: repository root the stored paths are relative to (default :data:`REPO_ROOT`).

    Returns:
        ``(stale, notes)``: ``{row: [reason, ...]}`` for every stale, missing or orphaned row, and
        informational notes (torch version or device differences).
    """
    root = Path(root or REPO_ROOT)
    stale: dict[str, list[str]] = {}
    notes: list[str] = []
    rows = result.get("rows", {})
    for name in configs:
        if name not in rows:
            stale[name] = ["missing from the results (a configuration file exists)"]
    for name, row in rows.items():
        reasons = []
        prov = row.get("provenance")
        if name not in configs:
            stale[name] = ["no configuration file for this row any more"]
            continue
        if not prov:
            stale[name] = ["no provenance recorded"]
            continue
        if prov.get("config_sha256") != config_sha256(configs[name].raw):
            reasons.append("its resolved configuration changed")
        current = source_files(configs[name].raw, root)
        for path in sorted(set(current) | set(prov.get("files", {}))):
            stored = prov.get("files", {}).get(path)
            if not (root / path).is_file():
                reasons.append(f"{path} no longer exists")
            elif stored is None:
                reasons.append(f"{path} is a new dependency")
            elif stored != sha256_file(root / path):
                reasons.append(f"{path} changed")
        if reasons:
            stale[name] = reasons
        for key in ("torch", "device"):
            here = torch.__version__ if key == "torch" else device_name()
            if prov.get(key) and prov[key] != here:
                notes.append(f"{name}: produced with {key} {prov[key]}, this machine has {here}")
    return stale, notes
