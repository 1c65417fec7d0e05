"""Real-dataset loaders on fixture trees written in each official layout (with decoys), splits."""

import json
import math
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from segmentation.data import DATASETS, isic, splits
from segmentation.data.ph2 import PH2, read_ph2_table

W, H = 12, 10


def _img(path, seed, size=(H, W)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)
    return image


def _mask(path, seed, size=(H, W)):
    """Mask with values 0/255 plus a 129 and a 128 pixel (binarised with > 128 to 1 and 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros(size, np.uint8)
    mask[2 : 4 + seed % 3, 3:8] = 255
    mask[0, 0], mask[0, 1] = 129, 128
    if path.suffix == ".npy":
        np.save(path, mask)
    else:
        assert cv2.imwrite(str(path), mask)
    expected = (mask > 128).astype(np.uint8)
    return expected


def isic_tree(root, release, n, *, doubled=(), start=0):
    """Write ``n`` pairs per official split of an ISIC release, with the release's decoys."""
    expected = {}
    suffix = "_Segmentation" if release is isic.ISIC2016 else "_segmentation"
    for number, (split, (image_dir, mask_dir)) in enumerate(release.folders.items()):
        idir, mdir = root / image_dir, root / mask_dir
        if image_dir in doubled:
            idir = idir / image_dir
        for k in range(n):
            image_id = f"ISIC_{start + 100 * number + k:07d}"
            _img(idir / f"{image_id}.jpg", k)
            _mask(mdir / f"{image_id}{suffix}.png", k)
            expected.setdefault(split, []).append(image_id)
            # decoys: superpixels and a metadata CSV beside the images, licence files by masks
            (idir / f"{image_id}_superpixels.png").write_bytes(b"not read")
        (idir / f"{image_dir}_metadata.csv").write_text("image_id,age_approximate,sex\n")
        (mdir / "ATTRIBUTION.txt").write_text("decoy")
        (mdir / "LICENSE.txt").write_text("decoy")
        (idir / "._ISIC_0999999.jpg").write_bytes(b"macOS resource fork")
    return expected


RELEASES = [("isic2016", isic.ISIC2016), ("isic2017", isic.ISIC2017), ("isic2018", isic.ISIC2018)]


@pytest.mark.parametrize("name,release", RELEASES, ids=[r[0] for r in RELEASES])
def test_isic_official_layout(tmp_path, name, release):
    first = next(iter(release.folders.values()))[0]
    expected = isic_tree(tmp_path, release, 3, doubled=(first,))
    for split, ids in expected.items():
        ds = DATASETS.build(name, root=str(tmp_path), split=split, allow_partial=True)
        assert ds.ids == ids and ds.split == split
        assert ds.in_channels == 3 and ds.num_classes == 1
        item = ds[1]
        assert item["id"] == ids[1] and tuple(item["image"].shape) == (3, H, W)
        assert str(item["mask"].dtype) == "torch.int64"
        image, mask, meta = ds.load(1)
        assert image.shape == (H, W, 3)
        np.testing.assert_array_equal(mask, _mask(tmp_path / "x.png", 1))
        assert meta == {"dataset": name, "official_split": split}
        assert all(isinstance(v, str | int | float | bool) for v in meta.values())
        # superpixels ignored (and reported), never served
        assert any("superpixels" in p.name for p in ds.ignored)


def test_isic2017_metadata_and_diagnosis(tmp_path):
    isic_tree(tmp_path, isic.ISIC2017, 2)
    folder = tmp_path / "ISIC-2017_Validation_Data"
    (folder / "ISIC-2017_Validation_Data_metadata.csv").write_text(
        "image_id,age_approximate,sex\nISIC_0000100,55,female\n"
    )
    (tmp_path / "ISIC-2017_Validation_Part3_GroundTruth.csv").write_text(
        "image_id,melanoma,seborrheic_keratosis\nISIC_0000100,1.0,0.0\nISIC_0000101,0.0,1.0\n"
    )
    ds = DATASETS.build("isic2017", root=str(tmp_path), split="val", allow_partial=True)
    assert ds.records[0]["meta"] == {
        "dataset": "isic2017",
        "official_split": "val",
        "diagnosis": "melanoma",
        "age_approximate": "55",
        "sex": "female",
    }
    assert ds.records[1]["meta"]["diagnosis"] == "seborrheic_keratosis"


def test_isic2016_capital_s_and_no_official_val(tmp_path):
    isic_tree(tmp_path, isic.ISIC2016, 5)
    (tmp_path / "ISBI2016_ISIC_Part3_Training_GroundTruth.csv").write_text(
        "ISIC_0000000,benign\nISIC_0000001,malignant\n"
    )
    ds = DATASETS.build("isic2016", root=str(tmp_path), split="train", allow_partial=True)
    assert next(iter(ds.records))["mask"].endswith("_Segmentation.png")
    assert [r["meta"].get("diagnosis") for r in ds.records[:2]] == ["benign", "malignant"]
    with pytest.raises(KeyError, match="no official 'val' split.*num_folds=5"):
        DATASETS.build("isic2016", root=str(tmp_path), split="val", allow_partial=True)
    kw = {"root": str(tmp_path), "allow_partial": True, "num_folds": 5, "fold": 2}
    train = DATASETS.build("isic2016", split="train", **kw)
    val = DATASETS.build("isic2016", split="val", **kw)
    assert len(val) == 1 and not set(train.ids) & set(val.ids)
    assert sorted(train.ids + val.ids) == ds.ids


def test_isic_count_must_match_official_unless_partial(tmp_path, monkeypatch):
    isic_tree(tmp_path, isic.ISIC2018, 3)
    with pytest.raises(ValueError, match=r"isic2018: found 3 .*official release has 2594.*allow_"):
        DATASETS.build("isic2018", root=str(tmp_path), split="train")
    monkeypatch.setattr(isic.ISIC2018, "counts", {"train": 3, "val": 3, "test": 3})
    assert len(DATASETS.build("isic2018", root=str(tmp_path), split="train")) == 3


def test_isic_broken_trees(tmp_path):
    isic_tree(tmp_path, isic.ISIC2018, 3)
    kw = {"root": str(tmp_path), "split": "train", "allow_partial": True}
    masks = tmp_path / "ISIC2018_Task1_Training_GroundTruth"
    images = tmp_path / "ISIC2018_Task1-2_Training_Input"
    # missing mask: the first image without one is named
    (masks / "ISIC_0000001_segmentation.png").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"ISIC_0000001\.jpg' has no mask.*ISIC_0000001_seg"
    ):
        DATASETS.build("isic2018", **kw)
    _mask(masks / "ISIC_0000001_segmentation.png", 1)
    # extra image: it has no mask
    _img(images / "ISIC_0000042.JPG", 0)
    with pytest.raises(FileNotFoundError, match="ISIC_0000042.JPG' has no mask"):
        DATASETS.build("isic2018", **kw)
    (images / "ISIC_0000042.JPG").unlink()
    # extra mask: it has no image
    _mask(masks / "ISIC_0000043_segmentation.png", 0)
    with pytest.raises(FileNotFoundError, match="ISIC_0000043_segmentation.png' has no image"):
        DATASETS.build("isic2018", **kw)
    (masks / "ISIC_0000043_segmentation.png").unlink()
    # wrong mask size: named when the pair is read
    _mask(masks / "ISIC_0000002_segmentation.png", 0, size=(H + 2, W))
    ds = DATASETS.build("isic2018", **kw)
    with pytest.raises(ValueError, match=r"is 12x10 \(WxH\) but its mask .*ISIC_0000002.* 12x12"):
        ds[2]
    # a missing folder lists what is there
    with pytest.raises(FileNotFoundError, match="ISIC2018_Task1-2_Training_Input"):
        DATASETS.build("isic2018", root=str(tmp_path / "ISIC2018_Task1-2_Training_Input"))


def test_isic2018_1815_259_520_on_sorted_ids(tmp_path, monkeypatch):
    isic_tree(tmp_path, isic.ISIC2018, 10)
    monkeypatch.setattr(splits, "SPLIT_DIR", tmp_path / "splits")  # no shipped file here
    kw = {"root": str(tmp_path), "allow_partial": True, "split_name": "isic2018_1815_259_520"}
    with pytest.warns(UserWarning, match="partial copy"):
        parts = {s: DATASETS.build("isic2018", split=s, **kw).ids for s in splits.SPLIT_NAMES}
    train_ids = DATASETS.build("isic2018", root=str(tmp_path), split="train", allow_partial=True)
    assert parts["train"] + parts["val"] + parts["test"] == train_ids.ids  # consecutive, sorted
    ids = [f"ISIC_{i:07d}" for i in range(2594)][::-1]
    full = splits.slice_split(ids, {"train": 1815, "val": 259, "test": 520})
    assert full["train"][0] == "ISIC_0000000" and full["test"][-1] == "ISIC_0002593"
    assert {k: len(v) for k, v in full.items()} == {"train": 1815, "val": 259, "test": 520}


def ph2_tree(root, ids, *, table="code"):
    base = root / "PH2Dataset"
    cases = base / "PH2 Dataset images"
    for k, case in enumerate(ids):
        _img(cases / case / f"{case}_Dermoscopic_Image" / f"{case}.bmp", k)
        _mask(cases / case / f"{case}_lesion" / f"{case}_lesion.bmp", k)
        _img(cases / case / f"{case}_roi" / f"{case}_R1_Label4.bmp", k)  # decoy
    if table == "code":
        lines = ["||   Name   || Histological Diagnosis || Clinical Diagnosis || Asymmetry ||"]
        lines += [f"|| {c} ||  || {k % 3} || 0 ||" for k, c in enumerate(ids)]
    else:
        lines = [
            "|| Name || Histological Diagnosis || Common Nevus || Atypical Nevus || Melanoma ||"
        ]
        lines += [f"|| {c} || Melanoma ||  ||  || X ||" for c in ids]
    lines += ["", "Legend: Clinical Diagnosis: 0 - Common Nevus; 1 - Atypical Nevus; 2 - Melanoma"]
    (base / "PH2_dataset.txt").write_text("\n".join(lines) + "\n")
    (base / "PH2_dataset.xlsx").write_bytes(b"decoy")
    return base


PH2_IDS = [
    f"IMD{i:03d}" for i in (2, 3, 4, 6, 8, 9, 10, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 24)
]


def test_ph2_layout_split_and_external(tmp_path, monkeypatch):
    ph2_tree(tmp_path, PH2_IDS)
    monkeypatch.setattr(splits, "SPLIT_DIR", tmp_path / "splits")
    kw = {"root": str(tmp_path), "allow_partial": True}
    parts = {s: DATASETS.build("ph2", split=s, **kw) for s in splits.SPLIT_NAMES}
    assert {s: len(d) for s, d in parts.items()} == {"train": 7, "val": 2, "test": 9}
    assert sorted(sum((d.ids for d in parts.values()), [])) == PH2_IDS
    again = DATASETS.build("ph2", split="test", **kw)
    assert again.ids == parts["test"].ids  # fixed seed
    other = DATASETS.build("ph2", split="test", seed=1, **kw)
    assert other.ids != parts["test"].ids
    ext = DATASETS.build("ph2", split="test", split_name="external", **kw)
    assert ext.ids == PH2_IDS
    image, mask, meta = ext.load(0)
    assert image.shape == (H, W, 3) and mask.max() == 1
    assert meta == {
        "dataset": "ph2",
        "clinical_diagnosis": "common_nevus",
        "histological_diagnosis": "",
    }
    assert ext.records[2]["meta"]["clinical_diagnosis"] == "melanoma"
    with pytest.raises(KeyError, match="'external' serves only split='test'"):
        DATASETS.build("ph2", split="train", split_name="external", **kw)
    with pytest.raises(ValueError, match="ph2: found 18 .* has 200"):
        DATASETS.build("ph2", root=str(tmp_path), split="test")
    # root may also be PH2Dataset itself
    inner = DATASETS.build("ph2", root=str(tmp_path / "PH2Dataset"), allow_partial=True)
    assert inner.ids == parts["train"].ids


def test_ph2_x_column_table_and_missing_mask(tmp_path):
    base = ph2_tree(tmp_path, PH2_IDS[:3], table="x")
    assert read_ph2_table(base / "PH2_dataset.txt")["IMD003"]["clinical_diagnosis"] == "melanoma"
    (base / "PH2 Dataset images" / "IMD003" / "IMD003_lesion" / "IMD003_lesion.bmp").unlink()
    with pytest.raises(FileNotFoundError, match="IMD003.bmp' has no mask"):
        DATASETS.build(
            "ph2", root=str(tmp_path), split="test", split_name="external", allow_partial=True
        )


def ham_tree(root, lesions):
    """``lesions``: list of image counts per lesion."""
    rows, k = ["lesion_id,image_id,dx,dx_type,age,sex,localization"], 0
    for j, count in enumerate(lesions):
        for _ in range(count):
            image_id = f"ISIC_{24306 + k:07d}"
            part = "HAM10000_images_part_1" if k % 2 else "HAM10000_images_part_2"
            _img(root / part / f"{image_id}.jpg", k)
            mdir = root / "HAM10000_segmentations_lesion_tschandl"
            _mask(
                mdir / "HAM10000_segmentations_lesion_tschandl" / f"{image_id}_segmentation.png", k
            )
            rows.append(f"HAM_{j:07d},{image_id},nv,histo,45.0,male,back")
            k += 1
    (root / "HAM10000_metadata.csv").write_text("\n".join(rows) + "\n")


def test_ham10000_lesion_grouped_split(tmp_path, monkeypatch):
    monkeypatch.setattr(splits, "SPLIT_DIR", tmp_path / "splits")
    ham_tree(tmp_path, [1, 2, 3, 1, 1, 2, 1, 4, 1, 1, 2, 1])
    kw = {"root": str(tmp_path), "allow_partial": True}
    parts = {s: DATASETS.build("ham10000", split=s, **kw) for s in splits.SPLIT_NAMES}
    lesions = {s: {r["meta"]["lesion_id"] for r in d.records} for s, d in parts.items()}
    assert not lesions["train"] & lesions["val"] and not lesions["train"] & lesions["test"]
    assert not lesions["val"] & lesions["test"]
    assert sum(len(d) for d in parts.values()) == 20
    meta = parts["train"].records[0]["meta"]
    assert meta["dx"] == "nv" and meta["dataset"] == "ham10000" and "lesion_id" in meta
    folds = [DATASETS.build("ham10000", split="val", num_folds=3, fold=f, **kw) for f in range(3)]
    seen = [r["meta"]["lesion_id"] for f in folds for r in f.records]
    assert len(set(seen)) == len({*lesions["train"], *lesions["val"]})  # each lesion in one fold


def test_ddi_fedd_label_maps(tmp_path):
    rows = [",DDI_ID,DDI_file,skin_tone,malignant,disease"]
    for k, tone in enumerate((12, 34, 56)):
        name = f"{k + 1:06d}"
        _img(tmp_path / "images" / f"{name}.png", k)
        labels = np.full((H, W), 4, np.uint8)
        labels[2:5, 3:7], labels[0, :3], labels[-1, :] = 1, 2, 3
        (tmp_path / "masks").mkdir(exist_ok=True)
        np.save(tmp_path / "masks" / f"{name}.npy", labels)
        rows.append(f"{k},{k + 1},{name}.png,{tone},{k == 2},melanoma-in-situ")
    (tmp_path / "ddi_metadata.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "images" / "README.txt").write_text("decoy")
    ds = DATASETS.build("ddi", root=str(tmp_path), split="test", allow_partial=True)
    image, mask, meta = ds.load(2)
    assert mask.sum() == 12 and set(np.unique(mask)) == {0, 1}
    assert meta == {
        "dataset": "ddi",
        "fitzpatrick": "V-VI",
        "skin_tone": 56,
        "malignant": True,
        "disease": "melanoma-in-situ",
    }
    full = DATASETS.build("ddi", root=str(tmp_path), allow_partial=True, labels="all")
    assert full.num_classes == 5 and set(np.unique(full.load(0)[1])) == {1, 2, 3, 4}
    with pytest.raises(KeyError, match="ddi serves only split='test'"):
        DATASETS.build("ddi", root=str(tmp_path), split="train", allow_partial=True)


def test_split_file_is_verified_and_used(tmp_path, monkeypatch):
    ph2_tree(tmp_path, PH2_IDS)
    monkeypatch.setattr(splits, "SPLIT_DIR", tmp_path / "splits")
    kw = {"root": str(tmp_path), "allow_partial": True}
    computed = splits.SCHEMES["ph2_80_20_100"][0](PH2_IDS, None, 0)
    path = splits.write_split_file(
        splits.split_file_path("ph2_80_20_100", 0), "ph2_80_20_100", 0, computed
    )
    assert path == tmp_path / "splits" / "ph2_80_20_100.json"
    assert json.loads(path.read_text())["counts"] == {"train": 7, "val": 2, "test": 9}
    assert DATASETS.build("ph2", split="val", **kw).ids == computed["val"]
    # a shipped file that disagrees with the data is an error on a complete copy
    tampered = {**computed, "val": computed["val"][::-1][:1], "test": computed["test"]}
    splits.write_split_file(path, "ph2_80_20_100", 0, tampered)
    with pytest.raises(ValueError, match="disagrees with the 'ph2_80_20_100' split"):
        splits.resolve_split("ph2_80_20_100", PH2_IDS, "val")
    # an explicit split_file picks those ids
    custom = tmp_path / "mine.json"
    custom.write_text(json.dumps({"train": PH2_IDS[:4], "val": PH2_IDS[4:6], "test": ["IMD999"]}))
    assert DATASETS.build("ph2", split="val", split_file=str(custom), **kw).ids == PH2_IDS[4:6]
    monkeypatch.setattr(PH2, "total", len(PH2_IDS))
    with pytest.raises(FileNotFoundError, match="not on disk, first 'IMD999'"):
        DATASETS.build("ph2", root=str(tmp_path), split="test", split_file=str(custom))


def test_kfold_deterministic_disjoint_and_grouped():
    ids = [f"id{i:02d}" for i in range(23)]
    folds = [splits.kfold_split(ids, num_folds=5, fold=f, seed=3) for f in range(5)]
    vals = [set(f["val"]) for f in folds]
    assert set().union(*vals) == set(ids) and sum(len(v) for v in vals) == 23
    assert all(not set(f["train"]) & set(f["val"]) for f in folds)
    assert splits.kfold_split(ids, num_folds=5, fold=1, seed=3) == folds[1]
    groups = {i: f"g{int(i[2:]) // 3}" for i in ids}
    for f in range(4):
        part = splits.kfold_split(ids, num_folds=4, fold=f, groups=groups)
        assert not {groups[i] for i in part["train"]} & {groups[i] for i in part["val"]}
    with pytest.raises(ValueError, match="fold must be in"):
        splits.kfold_split(ids, num_folds=5, fold=5)


def test_ham_grouped_split_fractions_on_many_lesions():
    rng = np.random.default_rng(0)
    ids, groups = [], {}
    for j in range(500):
        for _ in range(int(rng.integers(1, 4))):
            ids.append(f"ISIC_{len(ids):07d}")
            groups[ids[-1]] = f"HAM_{j:07d}"
    parts = splits.grouped_split(ids, groups, {"train": 0.7, "val": 0.1, "test": 0.2}, 0)
    n = len(ids)
    assert math.isclose(len(parts["train"]) / n, 0.7, abs_tol=0.01)
    assert math.isclose(len(parts["val"]) / n, 0.1, abs_tol=0.01)
    assert parts == splits.grouped_split(
        ids[::-1], groups, {"train": 0.7, "val": 0.1, "test": 0.2}, 0
    )


# -- skin tone and fairness --------------------------------------------------------------------


def test_ita_of_uniform_patch_and_bins():
    from segmentation.data.color import ita, ita_group
    from segmentation.evaluation.fairness import skin_tone_columns

    patch = np.empty((40, 40, 3), np.uint8)
    patch[:] = (141, 85, 54)
    value = ita(patch)
    assert -16.8 < value < -16.0, value  # float CIELAB; OpenCV's uint8 Lab would give +20.1
    assert ita_group(value, "chardon6") == "brown" and ita_group(value, "kinyanjui8") == "le10"
    lesion = np.zeros((40, 40), np.uint8)
    lesion[15:25, 15:25] = 1
    patch[lesion == 1] = (60, 30, 20)
    cols = skin_tone_columns(patch, lesion)
    assert cols["ita"] == pytest.approx(value, abs=1e-4)
    assert cols["ita_chardon6"] == "brown" and cols["contrast_group"] == "high"
    assert cols["lesion_delta_e"] > 20


def test_fairness_reports_tags_and_unknown_grouping():
    from segmentation.evaluation.fairness import check_groupings, fairness_reports

    rows = [
        {"id": str(i), "dice": d, "tags": t, "ita_chardon6": g, "ita_kinyanjui8": "le10"}
        for i, (d, t, g) in enumerate(
            [(0.9, "", "light"), (0.5, "dark_skin;tiny", "dark"), (0.7, "tiny", "dark")]
        )
    ]
    reports = fairness_reports(rows, ["tags", "ita"], n_boot=50)
    assert set(reports) == {"tags", "ita_chardon6", "ita_kinyanjui8"}
    tags = reports["tags"]["groups"]
    assert tags["tiny"]["n"] == 2 and tags["none"]["mean"] == pytest.approx(0.9)
    chardon = reports["ita_chardon6"]
    assert list(chardon["groups"]) == ["light", "dark"] and chardon["worst_group"] == "dark"
    assert chardon["gap"] == pytest.approx(0.3) and chardon["nar"] == pytest.approx(0.3 / 0.75)
    with pytest.raises(ValueError, match="fitzpatrick.*DDI"):
        check_groupings(["fitzpatrick"], {"dataset": "isic2018"})


def test_evaluate_groups_on_a_synthetic_run(tmp_path, capsys):

    from segmentation.cli import evaluate
    from segmentation.config import validate
    from segmentation.training.build import run_training

    config = validate(
        {
            "model": {"name": "unet_tiny"},
            "data": {"name": "synthetic", "image_size": 32, "n_train": 8, "n_val": 4, "n_test": 12},
            "optim": {"name": "adamw", "lr": 1.0e-3},
            "sched": {"name": "warmup_cosine", "warmup_steps": 1},
            "train": {"steps": 2, "batch_size": 4, "eval_every": 2, "checkpoint_every": 2},
            "eval": {"batch_size": 4, "boundary": False},
        }
    )
    run_training(config, tmp_path / "run")
    capsys.readouterr()
    out = tmp_path / "eval"
    code = evaluate.main(
        [
            "--ckpt",
            str(tmp_path / "run/checkpoints/last.pt"),
            "--out",
            str(out),
            "--no-boundary",
            "--groups",
            "ita",
            "--groups",
            "tags",
            "--groups",
            "contrast",
            "--n-boot",
            "50",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| ita_group | n | mean dice | 95 % CI |" in printed
    assert "| ita_chardon6 | n | mean dice |" in printed and "worst group:" in printed
    payload = json.loads((out / "metrics.json").read_text())
    groups = payload["groups"]
    assert set(groups) == {"ita_group", "ita_chardon6", "ita_kinyanjui8", "tags", "contrast_group"}
    assert sum(g["n"] for g in groups["ita_group"]["groups"].values()) == 12
    assert "## Dice by true ITA group" in (out / "metrics.md").read_text()
    with open(out / "per_image.csv") as f:
        header = f.readline().strip().split(",")
    for column in ("ita", "ita_chardon6", "ita_kinyanjui8", "lesion_delta_e", "contrast_group"):
        assert column in header
    code = evaluate.main(
        [
            "--ckpt",
            str(tmp_path / "run/checkpoints/last.pt"),
            "--out",
            str(out),
            "--groups",
            "fitzpatrick",
        ]
    )
    assert code == 2 and "fitzpatrick" in capsys.readouterr().err


REAL_EXPERIMENTS = sorted(
    p
    for folder in ("isic2017", "isic2018", "ph2")
    for p in (Path(__file__).resolve().parents[1] / "experiments" / folder).glob("*.yaml")
)


@pytest.mark.parametrize("path", REAL_EXPERIMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_data_experiments_build_their_datasets(path, tmp_path):
    from segmentation.config import load_config
    from segmentation.training.build import build_dataset

    name = load_config(path).raw["data"]["name"]
    if name == "ph2":
        ph2_tree(tmp_path, PH2_IDS)
    else:
        # 10 pairs per split: enough for a non-empty val under isic2018_1815_259_520
        isic_tree(tmp_path, {"isic2017": isic.ISIC2017, "isic2018": isic.ISIC2018}[name], 10)
    config = load_config(path, [f"data.root={tmp_path}", "data.allow_partial=true"])
    if config.train.plan == "auto":  # the input size comes from the data, as in training
        from segmentation.planning import plan_config

        config, _ = plan_config(config)
    for split in ("train", "val"):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "isic2018_1815_259_520 computed from a partial")
            dataset = build_dataset(config, split)
        item = dataset[0]
        size = config.raw["data"]["image_size"]
        assert tuple(item["image"].shape) == (3, size, size) and dataset.split == split


# -- tools -----------------------------------------------------------------------------------------


def _tool(name):
    import importlib

    return importlib.import_module(f"segmentation.cli.{name}")


def test_prepare_data_summary_and_cache(tmp_path, capsys, monkeypatch):
    prepare = _tool("prepare_data")
    root = tmp_path / "isic"
    isic_tree(root, isic.ISIC2018, 3)
    zip_file = tmp_path / "ISIC2018_Task1-2_Training_Input.zip"
    zip_file.write_bytes(b"abc")
    digest = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    code = prepare.main(
        ["--dataset", "isic2018", "--root", str(root), "--sha256", f"{zip_file}={digest}"]
    )
    out = capsys.readouterr().out
    assert code == 1  # 3 pairs per split, not the official counts
    assert f"sha256 {digest}" in out and " OK" in out
    assert "| train | 3 | 2594 | partial |" in out and "ignored 9 image-like files" in out
    assert "masks: 0 with values 0/255 only, 3 with other values" in out  # 129/128 pixels
    monkeypatch.setitem(prepare.OFFICIAL, "isic2018", {"train": 3, "val": 3, "test": 3})
    assert prepare.main(["--dataset", "isic2018", "--root", str(root)]) == 0
    assert "all checks passed" in capsys.readouterr().out
    masks = root / "ISIC2018_Task1_Validation_GroundTruth"
    _mask(masks / "ISIC_0000101_segmentation.png", 0, size=(H, W + 4))
    (masks / "ISIC_0000102_segmentation.png").unlink()
    assert prepare.main(["--dataset", "isic2018", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "| val | - | 3 | FAILED |" in out and "ISIC_0000102.jpg' has no mask" in out
    _mask(masks / "ISIC_0000102_segmentation.png", 0)
    assert prepare.main(["--dataset", "isic2018", "--root", str(root)]) == 1
    assert "size mismatch" in capsys.readouterr().out
    _mask(masks / "ISIC_0000101_segmentation.png", 0)
    cache = tmp_path / "cache"
    code = prepare.main(
        ["--dataset", "isic2018", "--root", str(root), "--cache", str(cache), "--size", "16"]
    )
    assert code == 0
    ds = DATASETS.build("paired_folder", root=str(cache), split="val")
    assert ds.ids == ["ISIC_0000100", "ISIC_0000101", "ISIC_0000102"]
    image, mask, _ = ds.load(0)
    assert image.shape == (16, 16, 3) and set(np.unique(mask)) <= {0, 1}
    assert "official_split" in (cache / "val" / "meta.csv").read_text()


def test_make_splits_writes_and_checks(tmp_path, capsys, monkeypatch):
    make_splits = _tool("make_splits")
    ph2_tree(tmp_path, PH2_IDS)
    out = tmp_path / "splits"
    args = ["--dataset", "ph2", "--root", str(tmp_path), "--out", str(out)]
    assert make_splits.main(args) == 2  # 18 images, not the official 200
    assert "has 200" in capsys.readouterr().err
    monkeypatch.setattr(PH2, "total", len(PH2_IDS))
    assert make_splits.main(args) == 0
    assert "wrote" in capsys.readouterr().out
    stored = splits.read_split_file(out / "ph2_80_20_100.json")
    assert {k: len(v) for k, v in stored.items()} == {"train": 7, "val": 2, "test": 9}
    assert make_splits.main([*args, "--check"]) == 0
    assert "matches" in capsys.readouterr().out
    monkeypatch.setattr(splits, "SPLIT_DIR", out)  # the loader now verifies against the file
    assert DATASETS.build("ph2", root=str(tmp_path), split="test").ids == stored["test"]


def test_unknown_ita_is_not_a_group():
    from segmentation.evaluation.fairness import fairness_reports

    rows = [
        {"id": "a", "dice": 0.9, "ita_chardon6": "light", "ita_kinyanjui8": "41_48"},
        {"id": "b", "dice": 0.1, "ita_chardon6": "unknown", "ita_kinyanjui8": "unknown"},
        {"id": "c", "dice": 0.7, "ita_chardon6": "dark", "ita_kinyanjui8": "le10"},
    ]
    report = fairness_reports(rows, ["ita"], n_boot=20)["ita_chardon6"]
    assert list(report["groups"]) == ["light", "dark"] and report["n_missing"] == 1
    assert report["worst_group"] == "dark"
