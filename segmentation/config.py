"""Experiment configuration: YAML -> validated sections, with strict keys, types and ranges.

A config has seven sections. Buildable sections (``model``, ``loss``, ``optim``, ``sched``, and
``data`` beyond its own keys) are ``{name: ..., **kwargs}`` whose kwargs are exactly the
constructor's; the settings sections (``train``, ``eval`` and the data section's own keys) are
frozen dataclasses whose fields declare their type and range (:func:`setting`). Unknown keys
anywhere raise an error listing the accepted keys with a "did you mean"; every value is checked
at load time, so a bad value fails before anything is built or written.

PyYAML reads ``1e-4`` as the *string* ``'1e-4'`` (only ``1.0e-4`` is a float), so a number that
arrives as a string is an error with that hint, never silently converted.

Overrides use one mechanism: ``--set section.key=value`` with the value parsed by
``yaml.safe_load`` and validated like the file.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from segmentation.errors import ConfigError
from segmentation.registry import DATASETS, LOSSES, NETWORKS, Registry

SECTIONS = ("model", "data", "loss", "optim", "sched", "train", "eval")
BOUNDARY_METRICS = ("hd95", "assd")  # selection metrics that need boundary distances
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def setting(default: Any, *, min: float | None = None, max: float | None = None, choices=None):
    """A dataclass field with its accepted range (``min``/``max``, inclusive) or ``choices``.

    The type comes from the annotation; :func:`validate` checks type, range and choices of every
    key of the ``data``, ``train`` and ``eval`` sections at load time.
    """
    return dataclasses.field(default=default, metadata={"min": min, "max": max, "choices": choices})


@dataclass(frozen=True)
class DataConfig:
    """The data section's own keys; every other key of ``data:`` goes to the dataset constructor.

    Attributes:
        name: registered dataset (``synthetic``, ``paired_folder``, ``isic2018``, ...).
        image_size: side of the square every image and mask is resized to (datasets that make
            their images, such as ``synthetic``, also receive it); ``null`` keeps stored sizes.
        augment: training augmentation set (``segmentation.data.transforms.AUGMENTATIONS``).
        preprocess: pre-processing steps (``segmentation.data.preprocess``), names or
            ``{name, **kwargs}``.
        extra_channels: channels appended to RGB (``segmentation.data.channels``).
        on_error: ``raise`` at the first unreadable image or wrong-size mask, or ``skip`` them
            (every item is read once at set-up; the skipped ones are listed in metrics.json).
        max_skip_fraction: under ``skip``, the largest fraction of a split that may be excluded.
        mask_threshold: a pixel of a mask read from a file is lesion when its value is
            ``> mask_threshold``. ``null`` (default) means 128, the ISIC scorer's rule, and
            refuses masks whose maximum is 1..128 (a {0, 1} mask would read as empty); set 0 for
            masks stored as {0, 1}.
    """

    name: str = ""
    image_size: int | None = setting(None, min=1)
    augment: str = "default"
    preprocess: list | None = None
    extra_channels: list | None = None
    on_error: str = setting("raise", choices=("raise", "skip"))
    max_skip_fraction: float = setting(0.05, min=0.0, max=1.0)
    mask_threshold: int | None = setting(None, min=0, max=254)


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
        sync_bn: convert BatchNorm layers to SyncBatchNorm under DDP (CUDA only). Without it,
            rank 0's BatchNorm statistics are broadcast to every rank before each validation.
        lr_scaling: ``none`` (use optim.lr as written), ``linear`` or ``sqrt``: multiply optim.lr by
            the number of processes (or its square root), i.e. relative to a one-process run with
            the same per-process batch. The rule used is printed at start.
        nonfinite: on a non-finite loss or gradient, ``stop`` (raise before the update) or ``skip``
            the update and restore the BatchNorm statistics its forward pass changed (counted in
            metrics.json).
        max_nonfinite: consecutive skipped steps after which training stops anyway.
        keep_checkpoints: keep this many ``step_*.pt`` files besides ``last.pt``/``best.pt``
            (0: only ``last.pt`` and ``best.pt``).
        deterministic: ``torch.use_deterministic_algorithms`` (+ cuDNN determinism); two runs with
            the same seed then give identical results on the same hardware.
        plan: ``auto`` derives the input size, batch size, network topology and normalisation
            from the training split (``segmentation.planning``, nnU-Net's 2-D rules) wherever
            the experiment leaves them out, prints the plan and writes ``plan.json``; ``off``.
        plan_memory_gb: the planner's memory budget (nnU-Net's 8 GB GPU target; on CPU a compute
            budget).
    """

    steps: int = setting(1000, min=1)
    batch_size: int = setting(8, min=1)
    eval_every: int = setting(250, min=1)
    log_every: int = setting(25, min=1)
    checkpoint_every: int = setting(250, min=1)
    seed: int = setting(0, min=0)
    num_workers: int = setting(0, min=0)
    device: str = "auto"
    amp: str = setting("auto", choices=("auto", "on", "off"))
    grad_clip: float = setting(0.0, min=0.0)
    onednn_linear: bool = False
    compile: bool = False
    image_panel_every: int = setting(500, min=0)
    grad_accum: int = setting(1, min=1)
    sync_bn: bool = False
    lr_scaling: str = setting("none", choices=("none", "linear", "sqrt"))
    nonfinite: str = setting("stop", choices=("stop", "skip"))
    max_nonfinite: int = setting(10, min=1)
    keep_checkpoints: int = setting(3, min=0)
    deterministic: bool = False
    plan: str = setting("off", choices=("off", "auto"))
    plan_memory_gb: float = setting(8.0, min=0.0)


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings (the ``eval:`` section).

    Attributes:
        metric: validation metric that selects ``best.pt`` (a per-image metric name, e.g.
            ``dice``; ``hd95``/``assd`` select the lowest value and switch ``boundary`` on).
        batch_size: images per evaluation batch.
        boundary: compute HD95/ASSD during validation in training (costly on CPU, off by
            default); on whenever ``metric`` is a boundary metric.
        empty: policy when ground truth and prediction are both empty: ``one`` (ISIC), ``nan`` or
            ``zero``.
        boundary_definition: HD95/ASSD definition, ``monai`` (HD95: max of the directed 95th
            percentiles) or ``medpy`` (HD95: 95th percentile of the pooled distances); see
            ``segmentation.evaluation.metrics``.
    """

    metric: str = "dice"
    batch_size: int = setting(16, min=1)
    boundary: bool = False
    empty: str = setting("one", choices=("one", "nan", "zero"))
    boundary_definition: str = setting("monai", choices=("monai", "medpy"))


# The data section's own keys (the rest goes to the dataset constructor).
DATA_KEYS = tuple(f.name for f in dataclasses.fields(DataConfig))


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


def _accepted_types(hint: Any) -> tuple[type, ...]:
    """``int | None`` -> ``(int, NoneType)``; ``float`` also accepts int; ``list`` also tuple."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(hint) for t in _accepted_types(arg))
    hint = typing.get_origin(hint) or hint
    return {float: (int, float), list: (list, tuple)}.get(hint, (hint,))


def _validate_dataclass(section: str, values: dict, cls: type) -> Any:
    """Keys, types, ranges and choices of a settings section (see :func:`setting`)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _check_unknown(f"section '{section}'", values, list(fields))
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        where, field = f"{section}.{key}", fields[key]
        _check_value(where, value, None)  # numbers written as strings
        expected = _accepted_types(hints[key])
        if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in expected)
            raise ConfigError(
                f"{where} = {value!r} has type {type(value).__name__}, expected {names} "
                f"(default {field.default!r})."
            )
        low, high = field.metadata.get("min"), field.metadata.get("max")
        choices = field.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{where} = {value!r}; choose one of {', '.join(choices)}.")
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            raise ConfigError(
                f"{where} = {value!r} is out of range: it must be {bounds}"
                f" (default {field.default!r})."
            )
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


def _validate_optim_sched(optim: dict, sched: dict, steps: int) -> None:
    """Names and keys, then the values: both are built once on a dummy parameter, so torch's own
    range checks (``lr >= 0``, ``0 <= betas < 1``...) and the schedules' run at load time."""
    import torch

    from segmentation.optim import OPTIMIZERS, SCHEDULERS

    _validate_buildable("optim", optim, OPTIMIZERS, skip=("params",))
    _validate_buildable("sched", sched, SCHEDULERS, skip=("optimizer", "total_steps"))
    for section, spec in (("optim", optim), ("sched", sched)):
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        try:
            if section == "optim":
                dummy = OPTIMIZERS.build(optim["name"], params=[torch.zeros(1)], **kwargs)
            else:
                SCHEDULERS.build(spec["name"], optimizer=dummy, total_steps=steps, **kwargs)
        except (ValueError, TypeError) as err:
            raise ConfigError(
                f"section '{section}' ({spec['name']}): {err}; fix the value in the config."
            ) from None


@dataclass(frozen=True)
class Config:
    """A validated experiment configuration. ``raw`` is the resolved dict saved with every run.

    ``data`` holds the data section's own keys (typed); :meth:`dataset_kwargs` the rest.
    """

    raw: dict
    train: TrainConfig
    eval: EvalConfig
    data: DataConfig

    def section(self, name: str) -> dict:
        """A deep copy of a section (``model``, ``data``, ``loss``, ``optim``, ``sched``)."""
        return copy.deepcopy(self.raw[name])

    def dataset_kwargs(self) -> dict:
        """The data section's keys that go to the dataset constructor (a deep copy)."""
        return {k: v for k, v in self.section("data").items() if k not in DATA_KEYS}

    @property
    def validation_boundary(self) -> bool:
        """Whether validation computes HD95/ASSD: ``eval.boundary``, or the selection metric
        is one of them."""
        return self.eval.boundary or self.eval.metric in BOUNDARY_METRICS


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
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(
            f"override '{assignment}': the value is not valid YAML "
            f"({' '.join(str(err).split())}); quote strings and close brackets, e.g. "
            "--set 'data.preprocess=[clahe]'."
        ) from None
    if not isinstance(raw.setdefault(section, {}), dict):
        raise ConfigError(f"override '{assignment}': section '{section}' is not a mapping.")
    raw[section][key] = value


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
    from segmentation.data.transforms import AUGMENTATIONS
    from segmentation.evaluation.metrics import higher_is_better

    _validate_buildable(
        "data", raw["data"], DATASETS, reserved=DATA_KEYS, skip=("split", "transform")
    )
    data = _validate_dataclass(
        "data", {k: v for k, v in raw["data"].items() if k in DATA_KEYS}, DataConfig
    )
    if data.augment not in AUGMENTATIONS:
        raise ConfigError(
            f"data.augment = {data.augment!r}; choose one of {', '.join(AUGMENTATIONS)}."
        )
    _validate_pipeline(raw["data"])
    _validate_buildable("loss", raw["loss"], LOSSES)
    try:  # constructors check their values (weights >= 0, ...)
        LOSSES.build(**raw["loss"])
    except (ValueError, TypeError) as err:
        raise ConfigError(f"section 'loss' ({raw['loss']['name']}): {err}") from None
    train = _validate_dataclass("train", raw["train"], TrainConfig)
    evaluation = _validate_dataclass("eval", raw["eval"], EvalConfig)
    _validate_optim_sched(raw["optim"], raw["sched"], train.steps)
    try:
        higher_is_better(evaluation.metric)
    except ValueError as err:
        raise ConfigError(f"eval.metric: {err.args[0]}") from None
    return Config(raw=raw, train=train, eval=evaluation, data=data)


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
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or " ".join(str(err).split())
        raise ConfigError(
            f"config file '{path}' is not valid YAML{where}: {problem}. Check the indentation "
            "(spaces, not tabs) and that every 'key: value' has a space after the colon."
        ) from None
    for assignment in overrides:
        apply_override(raw, assignment)
    return validate(raw, source=str(path))


def dump_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    with open(path, "w") as f:
        yaml.safe_dump(config.raw, f, sort_keys=False)
