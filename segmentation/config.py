"""Experiment configuration: YAML -> validated sections, with strict keys and types.

A config has seven sections. Buildable sections (``model``, ``data``, ``loss``, ``optim``,
``sched``) are
``{name: ..., **kwargs}`` whose kwargs are exactly the constructor's; run-level settings (``train``,
``eval``) are
frozen dataclasses. Unknown keys anywhere raise an error listing the accepted keys with a "did you
mean".

PyYAML reads ``1e-4`` as the *string* ``'1e-4'`` (only ``1.0e-4`` is a float), so a number that
arrives as a
string is an error with that hint, never silently converted.

Overrides use one mechanism: ``--set section.key=value`` with the value parsed by ``yaml.safe_load``
and
validated like the file.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from segmentation.errors import ConfigError
from segmentation.registry import DATASETS, LOSSES, NETWORKS, Registry

SECTIONS = ("model", "data", "loss", "optim", "sched", "train", "eval")
# Keys of the data section read by the library itself; every other key goes to the dataset
# constructor.
DATA_KEYS = (
    "name",
    "image_size",
    "augment",
    "preprocess",
    "extra_channels",
    "on_error",
    "max_skip_fraction",
)
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True)
class TrainConfig:
    """Run-level training settings (the ``train:`` section).

    Attributes:
        steps: optimisation steps in total.
        batch_size: images per step (per process under DDP).
        eval_every: validate (and maybe save ``best.pt``) every this many steps; the last step
        always validates.
        log_every: console/TensorBoard scalars every this many steps.
        checkpoint_every: write ``last.pt`` every this many steps (and at the end).
        seed: seeds data order, augmentation and initialisation.
        num_workers: DataLoader worker processes.
        device: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda``, ``cuda:1``...
        amp: autocast; ``auto`` enables bf16/fp16 autocast on CUDA only (it slows CPU training).
        grad_clip: max global gradient norm, 0 disables.
        onednn_linear: route ``nn.Linear`` through oneDNN on CPU (kernels issue; same weights).
        compile: wrap the model with ``torch.compile`` after moving it to the device.
        image_panel_every: TensorBoard image panel period in steps (0 disables).
        grad_accum: micro-batches per optimisation step (effective batch = batch_size x processes
            x grad_accum).
        sync_bn: convert BatchNorm layers to SyncBatchNorm under DDP.
        lr_scaling: ``none`` (use optim.lr as written), ``linear`` or ``sqrt``: multiply optim.lr by
            the number of processes (or its square root), i.e. relative to a one-process run with
            the same per-process batch. The rule used is printed at start.
        nonfinite: on a non-finite loss or gradient, ``stop`` (raise before the update) or ``skip``
            the update (counted in metrics.json).
        max_nonfinite: consecutive skipped steps after which training stops anyway.
        keep_checkpoints: keep this many ``step_*.pt`` files besides ``last.pt``/``best.pt``.
        deterministic: ``torch.use_deterministic_algorithms`` (+ cuDNN determinism); two runs with
            the same seed then give identical results on the same hardware.
        plan: ``auto`` derives the input size, batch size, network topology and normalisation
            from the training split (``segmentation.planning``, nnU-Net's 2-D rules) wherever
            the experiment leaves them out, prints the plan and writes ``plan.json``; ``off``.
        plan_memory_gb: the planner's memory budget (nnU-Net's 8 GB GPU target; on CPU a compute
            budget).
    """

    steps: int = 1000
    batch_size: int = 8
    eval_every: int = 250
    log_every: int = 25
    checkpoint_every: int = 250
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    amp: str = "auto"
    grad_clip: float = 0.0
    onednn_linear: bool = False
    compile: bool = False
    image_panel_every: int = 500
    grad_accum: int = 1
    sync_bn: bool = False
    lr_scaling: str = "none"
    nonfinite: str = "stop"
    max_nonfinite: int = 10
    keep_checkpoints: int = 3
    deterministic: bool = False
    plan: str = "off"
    plan_memory_gb: float = 8.0


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings (the ``eval:`` section).

    Attributes:
        metric: validation metric that selects ``best.pt`` (a per-image metric name, e.g. ``dice``).
        batch_size: images per evaluation batch.
        boundary: compute HD95/ASSD (costly on CPU; off during training validation by default).
        empty: policy when ground truth and prediction are both empty: ``one`` (ISIC), ``nan`` or
        ``zero``.
        boundary_definition: HD95/ASSD definition, ``monai`` (HD95: max of the directed 95th
        percentiles)
            or ``medpy`` (HD95: 95th percentile of the pooled distances); see
            ``segmentation.evaluation.metrics``.
    """

    metric: str = "dice"
    batch_size: int = 16
    boundary: bool = True
    empty: str = "one"
    boundary_definition: str = "monai"


OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("constant", "warmup_cosine", "poly", "plateau")


def _suggest(key: str, accepted: list[str]) -> str:
    close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_unknown(where: str, given: dict, accepted: list[str]) -> None:
    for key in given:
        if key not in accepted:
            raise ConfigError(
                f"{where}: unknown key '{key}'{_suggest(key, accepted)}; accepted keys: "
                f"{', '.join(accepted)}."
            )


def _check_value(where: str, value: Any, default: Any) -> None:
    """Type check against the default's type; catch numbers that YAML read as strings."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        raise ConfigError(
            f"{where} = '{value}' is a string, but a number is expected: "
            "YAML reads '1e-4' as text. "
            f"Write it with a decimal point and a signed exponent, e.g. {_float_hint(value)}."
        )
    if default is None or value is None:
        return
    expected: tuple[type, ...]
    if isinstance(default, bool):
        expected = (bool,)
    elif isinstance(default, int):
        expected = (int,)
    elif isinstance(default, float):
        expected = (int, float)
    elif isinstance(default, (list, tuple)):
        expected = (list, tuple)
    else:
        expected = (type(default),)
    if isinstance(value, bool) and bool not in expected:
        expected_ok = False
    else:
        expected_ok = isinstance(value, expected)
    if not expected_ok:
        names = " or ".join(t.__name__ for t in expected)
        raise ConfigError(
            f"{where} = {value!r} has type {type(value).__name__}, expected {names} "
            f"(default {default!r})."
        )


def _float_hint(text: str) -> str:
    try:
        mantissa, _, exponent = f"{float(text):.6e}".partition("e")
        return f"{float(mantissa)}e{int(exponent):+d}"
    except ValueError:
        return "1.0e-4"


def _constructor_defaults(registry: Registry, name: str) -> dict[str, Any]:
    import inspect

    target, preset = registry.get(name)
    params = inspect.signature(target).parameters
    defaults = {
        p.name: (None if p.default is inspect.Parameter.empty else p.default)
        for p in params.values()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"
    }
    for p in params.values():  # e.g. SGD `momentum: float = 0`: the value may be 0.99
        if type(defaults.get(p.name)) is int and "float" in str(p.annotation):
            defaults[p.name] = float(defaults[p.name])
    defaults.update(preset)
    return defaults


def _validate_buildable(
    section: str, spec: dict, registry: Registry, reserved: tuple[str, ...] = ("name",), skip=()
) -> None:
    if "name" not in spec:
        raise ConfigError(
            f"section '{section}' needs a 'name' (one of: {', '.join(registry.names())})."
        )
    try:
        defaults = _constructor_defaults(registry, spec["name"])
    except KeyError as err:
        raise ConfigError(f"{section}.name: {err.args[0]}") from None
    accepted = list(reserved) + [k for k in defaults if k not in skip and k not in reserved]
    _check_unknown(f"section '{section}' ({spec['name']})", spec, accepted)
    for key, value in spec.items():
        if key not in reserved:
            _check_value(f"{section}.{key}", value, defaults.get(key))


def _validate_dataclass(section: str, values: dict, cls: type) -> Any:
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    _check_unknown(f"section '{section}'", values, list(fields))
    for key, value in values.items():
        _check_value(f"{section}.{key}", value, fields[key])
    return cls(**values)


def _validate_pipeline(spec: dict) -> None:
    """``data.preprocess`` / ``data.extra_channels``: known names and arguments."""
    from segmentation.data.transforms import build_transform

    try:
        build_transform(
            image_size=None,
            train=False,
            preprocess=spec.get("preprocess") or (),
            extra_channels=spec.get("extra_channels") or (),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"data.preprocess / data.extra_channels: {err.args[0]}") from None


def _validate_optim(spec: dict) -> None:
    import torch

    classes = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    name = spec.get("name")
    if name not in classes:
        raise ConfigError(
            f"optim.name '{name}' unknown{_suggest(str(name), list(classes))}; choose one of "
            f"{', '.join(OPTIMIZERS)}."
        )
    registry = Registry("optimizer")
    registry.register(name, classes[name])
    _validate_buildable("optim", spec, registry, skip=("params",))


def _validate_sched(spec: dict) -> None:
    from segmentation import optim as schedulers

    _validate_buildable("sched", spec, schedulers.SCHEDULERS, skip=("optimizer", "total_steps"))


@dataclass(frozen=True)
class Config:
    """A validated experiment configuration. ``raw`` is the resolved dict saved with every run."""

    raw: dict
    train: TrainConfig
    eval: EvalConfig

    def section(self, name: str) -> dict:
        """A deep copy of a buildable section (``model``, ``data``, ``loss``, ``optim``,
        ``sched``)."""
        return copy.deepcopy(self.raw[name])


DEFAULTS: dict[str, dict] = {
    "loss": {"name": "bce_dice"},
    "optim": {"name": "adamw", "lr": 1.0e-3, "weight_decay": 1.0e-4},
    "sched": {"name": "warmup_cosine", "warmup_steps": 100},
    "train": {},
    "eval": {},
}


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one ``section.key=value`` override in place (value parsed with ``yaml.safe_load``)."""
    if "=" not in assignment or "." not in assignment.split("=", 1)[0]:
        raise ConfigError(
            f"override '{assignment}' must look like section.key=value, e.g. train.batch_size=8."
        )
    path, text = assignment.split("=", 1)
    section, key = path.split(".", 1)
    if section not in SECTIONS:
        raise ConfigError(
            f"override '{assignment}': unknown section "
            f"'{section}'{_suggest(section, list(SECTIONS))};"
            f" sections: {', '.join(SECTIONS)}."
        )
    raw.setdefault(section, {})[key] = yaml.safe_load(text)


def validate(raw: dict, source: str = "config") -> Config:
    """Validate a config dict (defaults filled in) and return a :class:`Config`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}.")
    _check_unknown(source, raw, list(SECTIONS))
    raw = copy.deepcopy(raw)
    for section, default in DEFAULTS.items():
        given = raw.get(section) or {}
        # A section without a name keeps the default's name and overrides its arguments.
        raw[section] = {**default, **given} if "name" not in given else given
    for section in ("model", "data"):
        if not isinstance(raw.get(section), dict):
            raise ConfigError(f"{source}: section '{section}' is missing or not a mapping.")
    _validate_buildable("model", raw["model"], NETWORKS)
    import segmentation.data  # noqa: F401  (registers datasets)
    import segmentation.losses  # noqa: F401  (registers losses)

    _validate_buildable(
        "data", raw["data"], DATASETS, reserved=DATA_KEYS, skip=("split", "transform")
    )
    _validate_pipeline(raw["data"])
    _validate_buildable("loss", raw["loss"], LOSSES)
    _validate_optim(raw["optim"])
    _validate_sched(raw["sched"])
    train = _validate_dataclass("train", raw["train"], TrainConfig)
    evaluation = _validate_dataclass("eval", raw["eval"], EvalConfig)
    from segmentation.evaluation.metrics import higher_is_better

    try:
        higher_is_better(evaluation.metric)
    except ValueError as err:
        raise ConfigError(f"eval.metric: {err.args[0]}") from None
    for key, value, choices in [
        ("train.amp", train.amp, ("auto", "on", "off")),
        ("train.lr_scaling", train.lr_scaling, ("none", "linear", "sqrt")),
        ("train.nonfinite", train.nonfinite, ("stop", "skip")),
        ("train.plan", train.plan, ("off", "auto")),
        ("data.on_error", raw["data"].get("on_error", "raise"), ("raise", "skip")),
        ("eval.boundary_definition", evaluation.boundary_definition, ("monai", "medpy")),
    ]:
        if value not in choices:
            raise ConfigError(f"{key} = '{value}'; choose one of {', '.join(choices)}.")
    for key in ("steps", "batch_size", "eval_every", "log_every", "checkpoint_every", "grad_accum"):
        if getattr(train, key) < 1:
            raise ConfigError(f"train.{key} = {getattr(train, key)}; it must be at least 1.")
    if evaluation.empty not in ("one", "nan", "zero"):
        raise ConfigError(f"eval.empty = '{evaluation.empty}'; choose one, nan or zero.")
    return Config(raw=raw, train=train, eval=evaluation)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML experiment file, apply ``section.key=value`` overrides, validate.

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: unknown section/key, wrong type, number written as a string, unknown name.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"config file '{path}' not found; see experiments/ for the shipped ones."
        )
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    for assignment in overrides:
        apply_override(raw, assignment)
    return validate(raw, source=str(path))


def dump_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    with open(path, "w") as f:
        yaml.safe_dump(config.raw, f, sort_keys=False)
