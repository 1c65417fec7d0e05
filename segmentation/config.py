"""Experiment configuration: YAML -> validated sections, with strict keys, types and ranges.

A config has seven sections. Buildable sections (``model``, ``loss``, ``optim``, ``sched``, and
``data`` beyond its own keys) are ``{name: ..., **kwargs}`` whose kwargs are exactly the
constructor's; the settings sections (``train``, ``eval`` and the data section's own keys) are
frozen dataclasses (:mod:`segmentation.settings`) whose fields declare their type and range.
Unknown keys anywhere raise an error listing the accepted keys with a "did you mean"; every value
is checked at load time, so a bad value fails before anything is built or written.

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
from segmentation.settings import DataConfig, EvalConfig, TrainConfig

SECTIONS = ("model", "data", "loss", "optim", "sched", "train", "eval")
BOUNDARY_METRICS = ("hd95", "assd")  # selection metrics that need boundary distances
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


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
            choices = field.metadata.get("choices") or ()
            if isinstance(value, bool) and ("on" in choices or "off" in choices):
                word = "on" if value else "off"
                raise ConfigError(
                    f"{where} = {value!r}: YAML reads an unquoted on/off (and yes/no) as "
                    f'true/false. Quote the word: {key}: "{word}" in the YAML file, or '
                    f"--set '{where}=\"{word}\"' (one of {', '.join(choices)})."
                )
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


def _yaml_problem(err: yaml.YAMLError) -> str:
    """``"expected ',' or ']', but got '<stream end>' at line 1, column 7"`` from a YAML error."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return (getattr(err, "problem", None) or " ".join(str(err).split())) + where


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
            f"override '{assignment}': the value is not valid YAML ({_yaml_problem(err)}); "
            "quote strings and close brackets, e.g. --set 'data.preprocess=[clahe]'."
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
        raise ConfigError(
            f"config file '{path}' is not valid YAML ({_yaml_problem(err)}). Check the "
            "indentation (spaces, not tabs) and the space after the colon of every 'key: value'."
        ) from None
    for assignment in overrides:
        apply_override(raw, assignment)
    return validate(raw, source=str(path))


def dump_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    with open(path, "w") as f:
        yaml.safe_dump(config.raw, f, sort_keys=False)
