"""Check a dataset tree as unpacked from the official download, optionally write a resized cache.

    python tools/prepare_data.py --dataset isic2018 --root /data/isic2018
    python tools/prepare_data.py --dataset ph2 --root /data/ph2 --sha256 PH2Dataset.rar
    python tools/prepare_data.py --dataset isic2018 --root /data/isic2018 \
        --cache /data/isic2018_256 --size 256

Checks, per official split (or the whole set for PH2, HAM10000, DDI): image/mask pairs found vs the
official count, the first unmatched image or mask, ignored files (``*_superpixels.png``, CSVs...),
mask values (binary 0/255, or intermediate values that the > 128 rule binarises; a mask whose
maximum is 1..128, e.g. stored as 0/1, fails: it would read as empty), empty masks (a split whose
masks are all empty fails), and that every mask has its image's size. ``--sha256 FILE[=HEX]``
prints each zip's SHA-256 (and compares it with HEX when given; dermseg does not ship official
checksums). ``--cache DIR --size S`` writes ``DIR/<split>/images/<id>.png`` and
``DIR/<split>/masks/<id>.png`` (0/255) resized to S x S with the training pipeline's interpolation
(bilinear image, nearest mask), plus ``DIR/<split>/meta.csv``; train on it with
``--set data.name=paired_folder --set data.root=DIR --set data.image_size=S`` (the cache keeps the
split but paired_folder does not read meta.csv).
Exit code 1 when a check fails.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segmentation.cli.errors import cli_main
from segmentation.data import DATASETS, read_image, read_mask

OFFICIAL = {  # dataset -> {split: count}; None = the whole set (no official split)
    "isic2016": {"train": 900, "test": 379},
    "isic2017": {"train": 2000, "val": 150, "test": 600},
    "isic2018": {"train": 2594, "val": 100, "test": 1000},
    "ph2": {None: 200},
    "ham10000": {None: 10015},
    "ddi": {None: 656},
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_pairs(records: list[dict], mask_lesion_value: int | None) -> dict:
    """Mask values, empty masks and size agreement of every pair (sizes from file headers).

    ``low`` lists the masks whose maximum is 1..128 (e.g. stored as {0, 1}): the > 128 rule would
    read them as empty, so training refuses them unless ``data.mask_threshold`` is set.
    """
    values, empty, size_errors, sizes, low = Counter(), 0, [], Counter(), []
    for rec in records:
        image_size = Image.open(rec["image"]).size  # (W, H) from the header only
        if rec["mask"].lower().endswith(".npy"):
            raw = np.load(rec["mask"], allow_pickle=False)
            binary = read_mask(rec["mask"], 128, lesion_value=mask_lesion_value)
        else:
            raw = cv2.imread(rec["mask"], cv2.IMREAD_GRAYSCALE)
            binary = (raw > 128).astype(np.uint8)
        if mask_lesion_value is None and 0 < raw.max(initial=0) <= 128:
            low.append(rec["mask"])
        values.update({"0/255" if set(np.unique(raw)) <= {0, 255} else "other": 1})
        empty += int(binary.sum() == 0)
        sizes[image_size] += 1
        if (raw.shape[1], raw.shape[0]) != image_size:
            size_errors.append(
                f"{rec['mask']}: {raw.shape[1]}x{raw.shape[0]} but image {rec['image']} is "
                f"{image_size[0]}x{image_size[1]}"
            )
    return {
        "values": values,
        "empty": empty,
        "size_errors": size_errors,
        "sizes": sizes,
        "low": low,
    }


def scan(dataset: str, root: str) -> dict:
    """{split: records or the error message} of every official split (or the whole set)."""
    cls, _ = DATASETS.get(dataset)
    inventory = cls.scan(root)
    out = {}
    for split in OFFICIAL[dataset]:
        try:
            out[split] = inventory.official(split) if split else inventory.all_records()
        except (FileNotFoundError, ValueError, KeyError) as err:
            out[split] = str(err.args[0] if err.args else err)
    out["_ignored"] = inventory.ignored
    return out


def write_cache(dataset: str, root: str, out: Path, size: int, split_name: str | None) -> None:
    """Resized copy of every split of ``split_name`` in the paired_folder layout."""
    for split in ("train", "val", "test"):
        kwargs = {"root": root, "split": split, "allow_partial": True}
        if split_name:
            kwargs["split_name"] = split_name
        try:
            ds = DATASETS.build(dataset, **kwargs)
        except KeyError as err:  # a split the scheme lacks (ISIC 2016 val, PH2 external train)
            print(f"cache: skip {split}: {err.args[0]}")
            continue
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        (out / split / "masks").mkdir(parents=True, exist_ok=True)
        metas = []
        for i, rec in enumerate(ds.records):
            image = cv2.resize(
                read_image(rec["image"]), (size, size), interpolation=cv2.INTER_LINEAR
            )
            _, mask, meta = ds.load(i)
            mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
            cv2.imwrite(str(out / split / "images" / f"{rec['id']}.png"), image[..., ::-1])
            cv2.imwrite(str(out / split / "masks" / f"{rec['id']}.png"), mask * 255)
            metas.append({"id": rec["id"], **meta})
        columns = list(dict.fromkeys(k for m in metas for k in m))
        with open(out / split / "meta.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(metas)
        print(f"cache: {split}: {len(ds)} pairs -> {out / split}")


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", required=True, choices=sorted(OFFICIAL))
    parser.add_argument("--root", required=True, help="folder holding the unpacked download")
    parser.add_argument("--sha256", nargs="*", default=[], metavar="FILE[=HEX]")
    parser.add_argument("--cache", metavar="DIR", help="write a resized paired_folder copy here")
    parser.add_argument("--size", type=int, default=256, help="cache side in pixels")
    parser.add_argument("--split-name", help="split scheme of the cache (default: the dataset's)")
    args = parser.parse_args(argv)

    failed = False
    for spec in args.sha256:
        path, _, expected = spec.partition("=")
        digest = sha256(Path(path))
        verdict = "" if not expected else (" OK" if digest == expected.lower() else " MISMATCH")
        failed |= verdict == " MISMATCH"
        print(f"sha256 {digest}  {path}{verdict}")
    try:
        scanned = scan(args.dataset, args.root)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    ignored = scanned.pop("_ignored")
    mask_value = DATASETS.get(args.dataset)[0].mask_lesion_value
    print(f"\n{args.dataset} at {args.root}\n")
    print("| split | pairs | official | status |\n|---|---|---|---|")
    details = []
    for split, records in scanned.items():
        name, expected = split or "all", OFFICIAL[args.dataset][split]
        if isinstance(records, str):
            failed = True
            print(f"| {name} | - | {expected} | FAILED |")
            details.append(f"{name}: {records}")
            continue
        pairs = check_pairs(records, mask_value)
        all_empty = pairs["empty"] == len(records)
        ok = len(records) == expected and not pairs["size_errors"]
        ok = ok and not pairs["low"] and not all_empty
        failed |= not ok
        status = "ok" if ok else ("partial" if len(records) != expected else "mask values")
        status = "size mismatch" if pairs["size_errors"] else status
        print(f"| {name} | {len(records)} | {expected} | {status} |")
        common = ", ".join(f"{w}x{h}: {n}" for (w, h), n in pairs["sizes"].most_common(3))
        common += " ..." if len(pairs["sizes"]) > 3 else ""
        details.append(
            f"{name}: masks: {pairs['values']['0/255']} with values 0/255 only, "
            f"{pairs['values']['other']} with other values (binarised with > 128), "
            f"{pairs['empty']} empty; image sizes (WxH): {common}"
        )
        details += [f"{name}: size mismatch {e}" for e in pairs["size_errors"][:5]]
        if pairs["low"]:
            details.append(
                f"{name}: {len(pairs['low'])} mask(s) have a maximum of 1..128 (stored as 0/1?), "
                f"e.g. {pairs['low'][0]}: the > 128 rule reads them as empty; re-save them as "
                "0/255, or train with --set data.mask_threshold=0"
            )
        if all_empty:
            details.append(f"{name}: every mask is empty (no pixel > 128)")
    print()
    for line in details:
        print(f"- {line}")
    if ignored:
        kinds = Counter(p.suffix.lower() for p in ignored)
        print(f"- ignored {len(ignored)} image-like files {dict(kinds)}, e.g. {ignored[0].name}")
    if args.cache:
        write_cache(args.dataset, args.root, Path(args.cache), args.size, args.split_name)
    print("\nresult:", "FAILED (see above)" if failed else "all checks passed")
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
