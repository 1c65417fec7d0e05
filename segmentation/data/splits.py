"""Reproducible splits: named split schemes, a K-fold helper and split files under ``splits/``.

Every scheme is a pure function of the **sorted** id list (and a seed, and for HAM10000 the
``lesion_id`` of each image), so anyone with the same files gets the same split, and a shipped split
file can be checked against the data (``docs/datasets.md``, "Splits").

Schemes:

* ``isic2018_1815_259_520``: the ISIC 2018 Task 1 *training* set (2594 images) cut into the first
  1815 / next 259 / last 520 ids. The original split (BCDU-Net's preparation script, reused by
  Awesome-U-Net and others) sliced the unsorted ``glob`` order, which depends on the file system, so
  it cannot be reproduced exactly; this one is defined on sorted ids and is therefore a *different*
  split with the same sizes.
* ``ph2_80_20_100``: the 200 PH2 images permuted with ``numpy.random.default_rng(seed)`` (seed 0
  unless set), then 80 train / 20 val / 100 test.
* ``ham10000_lesion``: HAM10000 split by ``lesion_id`` so that images of one lesion never cross
  splits: the sorted lesion ids are permuted with the seed and assigned in that order to train until
  70 % of the images are reached, then val until 80 %, then test.

Split files (``splits/<scheme>.json``, or ``<scheme>_seed<k>.json`` for a non-default seed) hold
``{"name", "definition", "seed", "counts", "ids": {"train": [...], "val": [...], "test": [...]}}``
and are written by ``tools/make_splits.py``. When such a file exists a loader *verifies* that the
split computed from the data equals it (a differing copy of the dataset is an error, not a silently
different split); with ``allow_partial`` the file's ids present on disk are used instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "SPLIT_DIR",
    "SCHEMES",
    "check_unique",
    "slice_split",
    "random_split",
    "grouped_split",
    "kfold_split",
    "split_file_path",
    "read_split_file",
    "write_split_file",
    "resolve_split",
]

SPLIT_DIR = Path(__file__).resolve().parents[2] / "splits"
SPLIT_NAMES = ("train", "val", "test")
UNSEEDED = frozenset({"isic2018_1815_259_520"})


def check_unique(ids: Sequence[str]) -> list[str]:
    """Sorted copy of ``ids``; raises on duplicates (an id in two places is a broken tree)."""
    out = sorted(str(i) for i in ids)
    dup = [a for a, b in zip(out, out[1:], strict=False) if a == b]
    if dup:
        raise ValueError(f"duplicate ids {dup[:5]}; every image must appear once.")
    return out


def slice_split(ids: Sequence[str], counts: dict[str, int]) -> dict[str, list[str]]:
    """Consecutive slices of the sorted ids, ``counts`` in order (e.g. 1815 / 259 / 520)."""
    return _slices(check_unique(ids), counts)


def _slices(ids: list[str], counts: dict[str, int]) -> dict[str, list[str]]:
    if sum(counts.values()) != len(ids):
        raise ValueError(
            f"split sizes {counts} add up to {sum(counts.values())} but {len(ids)} ids were given; "
            "this scheme needs the complete set of images."
        )
    out, start = {}, 0
    for name, n in counts.items():
        out[name] = ids[start : start + n]
        start += n
    return out


def random_split(ids: Sequence[str], counts: dict[str, int], seed: int) -> dict[str, list[str]]:
    """Sorted ids permuted by ``default_rng(seed)``, then sliced by ``counts``; each list sorted."""
    ids = check_unique(ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    parts = _slices([ids[i] for i in order], counts)
    return {k: sorted(v) for k, v in parts.items()}


def grouped_split(
    ids: Sequence[str], groups: dict[str, str], fractions: dict[str, float], seed: int
) -> dict[str, list[str]]:
    """Split whole groups (e.g. lesions) so that image fractions approach ``fractions``.

    Sorted unique groups are permuted by ``default_rng(seed)``; each group goes to the first split
    whose cumulative image target (``fractions`` in order, times the image count) is not yet met.
    """
    ids = check_unique(ids)
    missing = [i for i in ids if i not in groups]
    if missing:
        raise KeyError(f"no group for ids {missing[:5]}; every image needs its group (lesion_id).")
    members: dict[str, list[str]] = {}
    for i in ids:
        members.setdefault(str(groups[i]), []).append(i)
    units = sorted(members)
    order = np.random.default_rng(seed).permutation(len(units))
    names = list(fractions)
    bounds = np.cumsum([fractions[n] for n in names]) * len(ids)
    out: dict[str, list[str]] = {n: [] for n in names}
    count = 0
    for j in order:
        k = next((s for s, b in enumerate(bounds) if count < b - 1e-9), len(names) - 1)
        out[names[k]].extend(members[units[j]])
        count += len(members[units[j]])
    return {k: sorted(v) for k, v in out.items()}


def kfold_split(
    ids: Sequence[str],
    *,
    num_folds: int,
    fold: int,
    seed: int = 0,
    groups: dict[str, str] | None = None,
) -> dict[str, list[str]]:
    """Fold ``fold`` of a seeded K-fold partition: ``{"train": other folds, "val": this fold}``.

    The sorted ids (or, with ``groups``, the sorted unique groups, so one lesion stays in one fold)
    are permuted by ``default_rng(seed)`` and cut into ``num_folds`` near-equal chunks
    (``numpy.array_split``).
    """
    if not isinstance(num_folds, int) or num_folds < 2:
        raise ValueError(f"num_folds must be an integer >= 2, got {num_folds!r}.")
    if not isinstance(fold, int) or not 0 <= fold < num_folds:
        raise ValueError(
            f"fold must be in [0, {num_folds - 1}] for num_folds={num_folds}, got {fold!r}."
        )
    ids = check_unique(ids)
    key = (lambda i: str(groups[i])) if groups is not None else (lambda i: i)
    units = sorted({key(i) for i in ids})
    if len(units) < num_folds:
        raise ValueError(f"{len(units)} units cannot be cut into {num_folds} folds.")
    order = np.random.default_rng(seed).permutation(len(units))
    chunk = set(np.array_split(np.asarray(units, dtype=object)[order], num_folds)[fold].tolist())
    val = [i for i in ids if key(i) in chunk]
    return {"train": [i for i in ids if key(i) not in chunk], "val": val}


def _fit(counts: dict[str, int], n: int) -> dict[str, int]:
    """``counts`` when they add up to ``n``; else scaled to ``n`` (only partial copies get here:
    the loaders check the complete count first)."""
    total = sum(counts.values())
    if total == n:
        return counts
    names = list(counts)
    out = {k: int(round(n * counts[k] / total)) for k in names[:-1]}
    out[names[-1]] = n - sum(out.values())
    return out


def _ph2(ids, groups, seed):
    return random_split(ids, _fit({"train": 80, "val": 20, "test": 100}, len(ids)), seed)


def _ham(ids, groups, seed):
    return grouped_split(ids, groups, {"train": 0.7, "val": 0.1, "test": 0.2}, seed)


def _isic2018(ids, groups, seed):
    return slice_split(ids, _fit({"train": 1815, "val": 259, "test": 520}, len(ids)))


# scheme name -> (function(sorted ids, groups, seed) -> {split: ids}, default seed, definition)
SCHEMES: dict[str, tuple[Callable, int, str]] = {
    "isic2018_1815_259_520": (
        _isic2018,
        0,
        "ISIC 2018 Task 1 training set, sorted ids: first 1815 train, next 259 val, last 520 test "
        "(differs from the original unsorted-glob split)",
    ),
    "ph2_80_20_100": (
        _ph2,
        0,
        "PH2 sorted ids permuted by numpy.random.default_rng(seed): 80 train, 20 val, 100 test",
    ),
    "ham10000_lesion": (
        _ham,
        0,
        "HAM10000 grouped by lesion_id: sorted lesions permuted by default_rng(seed), filled into "
        "train to 70 % of images, val to 80 %, rest test",
    ),
}


def split_file_path(scheme: str, seed: int, folder: Path | None = None) -> Path:
    """``splits/<scheme>.json`` for the scheme's default seed, else ``<scheme>_seed<k>.json``."""
    default = SCHEMES[scheme][1]
    # the seed only names the file of seeded schemes (1815/259/520 ignores it)
    name = scheme if seed == default or scheme in UNSEEDED else f"{scheme}_seed{seed}"
    return (SPLIT_DIR if folder is None else Path(folder)) / f"{name}.json"


def read_split_file(path: str | Path) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "test": [...]}`` from a split file (any subset of splits).

    Accepts the full format written by :func:`write_split_file` or a bare ``{split: ids}`` mapping.
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"split file '{path}' is not readable JSON ({err}).") from err
    ids = payload.get("ids", payload) if isinstance(payload, dict) else None
    if not isinstance(ids, dict) or not set(ids) <= set(SPLIT_NAMES):
        raise ValueError(
            f"split file '{path}' must map some of {SPLIT_NAMES} to id lists (optionally under "
            f"'ids'), got keys {sorted(ids) if isinstance(ids, dict) else type(payload).__name__}."
        )
    return {k: [str(i) for i in v] for k, v in ids.items()}


def write_split_file(
    path: str | Path, scheme: str, seed: int, splits: dict[str, list[str]]
) -> Path:
    """Write a split file (sorted id lists, counts, the scheme's definition)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "name": scheme,
        "definition": SCHEMES[scheme][2],
        "seed": seed,
        "counts": {k: len(v) for k, v in splits.items()},
        "ids": {k: sorted(v) for k, v in splits.items()},
    }
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def resolve_split(
    scheme: str,
    ids: Sequence[str],
    split: str,
    *,
    seed: int | None = None,
    groups: dict[str, str] | None = None,
    allow_partial: bool = False,
    split_file: str | None = None,
) -> list[str]:
    """Ids of ``split`` under ``scheme`` for the ids found on disk.

    Order of precedence: an explicit ``split_file`` (its ids must all exist unless
    ``allow_partial``); else the shipped ``splits/`` file, verified against the computed split (or,
    with ``allow_partial``, intersected with the ids present); else the computed split.
    """
    if split not in SPLIT_NAMES:
        raise KeyError(f"unknown split '{split}'; accepted: {', '.join(SPLIT_NAMES)}.")
    seed = SCHEMES[scheme][1] if seed is None else seed
    present = set(ids)
    if split_file is not None:
        chosen = read_split_file(split_file)
        if split not in chosen:
            raise KeyError(f"split file '{split_file}' has no '{split}' list ({sorted(chosen)}).")
        absent = [i for i in chosen[split] if i not in present]
        if absent and not allow_partial:
            raise FileNotFoundError(
                f"split file '{split_file}' lists {len(absent)} '{split}' id(s) not on disk, "
                f"first '{absent[0]}'; complete the copy or pass allow_partial=True."
            )
        return [i for i in chosen[split] if i in present]
    shipped = split_file_path(scheme, seed)
    if shipped.is_file():
        stored = read_split_file(shipped)
        if allow_partial:
            return [i for i in stored.get(split, []) if i in present]
        computed = SCHEMES[scheme][0](ids, groups, seed)
        for name in SPLIT_NAMES:
            if sorted(stored.get(name, [])) != computed.get(name, []):
                raise ValueError(
                    f"the shipped split file '{shipped}' disagrees with the '{scheme}' split "
                    f"computed from your copy of the data ('{name}' differs). Check the copy with "
                    "tools/prepare_data.py, and report it if the data is the official release."
                )
        return list(stored[split])
    return SCHEMES[scheme][0](ids, groups, seed)[split]
