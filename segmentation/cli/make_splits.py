"""Write (or check) a split file under ``splits/`` from a complete copy of the data.

    python tools/make_splits.py --dataset isic2018 --root /data/isic2018  # isic2018_1815_259_520
    python tools/make_splits.py --dataset ph2 --root /data/ph2            # ph2_80_20_100 (seed 0)
    python tools/make_splits.py --dataset ham10000 --root /data/ham10000  # ham10000_lesion
    python tools/make_splits.py --dataset ph2 --root /data/ph2 --check    # compare, write nothing

The split is a deterministic function of the sorted ids (see ``segmentation/data/splits.py``), so
two people with the official release get byte-identical files. When the file already exists it is
compared with the recomputed split and only rewritten with ``--force``. Official splits (ISIC
2016/2017/2018 folders) need no file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segmentation.cli.errors import cli_main
from segmentation.data import DATASETS
from segmentation.data.splits import SCHEMES, read_split_file, split_file_path, write_split_file

SCHEME_OF = {
    "isic2018": "isic2018_1815_259_520",
    "ph2": "ph2_80_20_100",
    "ham10000": "ham10000_lesion",
}


def compute(dataset: str, root: str, seed: int) -> tuple[str, dict[str, list[str]]]:
    """(scheme, {split: ids}) from the complete tree (counts are checked)."""
    scheme = SCHEME_OF[dataset]
    inventory = DATASETS.get(dataset)[0].scan(root, allow_partial=False)
    records = inventory.official("train") if dataset == "isic2018" else inventory.all_records()
    ids = [r["id"] for r in records]
    groups = {r["id"]: r["meta"]["lesion_id"] for r in records} if dataset == "ham10000" else None
    return scheme, SCHEMES[scheme][0](ids, groups, seed)


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", required=True, choices=sorted(SCHEME_OF))
    parser.add_argument("--root", required=True, help="folder holding the unpacked download")
    parser.add_argument("--seed", type=int, default=0, help="seed of seeded schemes (default 0)")
    parser.add_argument("--out", help="folder for the file (default: the repository's splits/)")
    parser.add_argument("--check", action="store_true", help="compare with the file, write nothing")
    parser.add_argument("--force", action="store_true", help="overwrite a differing file")
    args = parser.parse_args(argv)
    try:
        scheme, parts = compute(args.dataset, args.root, args.seed)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    path = split_file_path(scheme, args.seed, Path(args.out) if args.out else None)
    counts = ", ".join(f"{k} {len(v)}" for k, v in parts.items())
    if path.is_file():
        same = read_split_file(path) == parts
        print(f"{path}: {'matches' if same else 'DIFFERS FROM'} the split computed from the data")
        if same or args.check or not args.force:
            return 0 if same else 1
    elif args.check:
        print(f"{path} does not exist; computed {scheme}: {counts}")
        return 1
    write_split_file(path, scheme, args.seed, parts)
    print(f"wrote {path} ({scheme}: {counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
