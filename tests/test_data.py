"""Transforms, file readers, the on-disk base dataset, paired_folder, collate, make_synthetic."""

import csv
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from segmentation.cli import make_synthetic
from segmentation.data import (
    DATASETS,
    FileSegmentationDataset,
    PairedFolder,
    build_transform,
    collate,
    generate_sample,
    read_image,
    read_mask,
)
from segmentation.data import transforms as tfm
from segmentation.data.transforms import IMAGENET_MEAN, IMAGENET_STD, worker_init_fn


def _pair(size=48, index=0):
    image, mask, _ = generate_sample(0, index, size)
    return image, mask


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, array)
    else:
        arr = array[..., ::-1] if array.ndim == 3 else array
        assert cv2.imwrite(str(path), np.ascontiguousarray(arr))
    return path


# ---------------------------------------------------------------------------- transforms


def test_train_transform_is_deterministic_per_seed():
    image, mask = _pair()
    runs = []
    for seed in (5, 5, 6):
        transform = build_transform(image_size=32, train=True, seed=seed)
        runs.append([transform(image, mask) for _ in range(3)])
    for (a_img, a_mask), (b_img, b_mask) in zip(runs[0], runs[1], strict=True):
        assert torch.equal(a_img, b_img) and torch.equal(a_mask, b_mask)
    assert not all(torch.equal(a[0], c[0]) for a, c in zip(runs[0], runs[2], strict=True))
    assert not torch.equal(runs[0][0][0], runs[0][1][0]), "consecutive calls must differ"


def test_set_random_seed_restarts_the_stream():
    image, mask = _pair()
    transform = build_transform(image_size=32, train=True, seed=0)
    transform.set_random_seed(11)
    first = transform(image, mask)
    transform(image, mask)
    transform.set_random_seed(11)
    assert torch.equal(transform(image, mask)[0], first[0])


def test_val_transform_resizes_and_normalises_only():
    image, mask = _pair(40)
    out_img, out_mask = build_transform(image_size=None, train=False)(image, mask)
    expected = (image.astype(np.float32) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(out_img.permute(1, 2, 0).numpy(), expected, atol=1e-5)
    assert torch.equal(out_mask, torch.from_numpy(mask.astype(np.int64)))
    small_img, small_mask = build_transform(image_size=24, train=False)(image, mask)
    assert small_img.shape == (3, 24, 24) and small_img.dtype == torch.float32
    assert small_mask.dtype == torch.int64 and set(small_mask.unique().tolist()) <= {0, 1}
    nearest = cv2.resize(mask, (24, 24), interpolation=cv2.INTER_NEAREST)
    assert torch.equal(small_mask, torch.from_numpy(nearest.astype(np.int64)))


@pytest.mark.parametrize("augment", ["default", "flips"])
def test_augmented_masks_stay_binary_and_aligned(augment):
    image = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 10:26] = 1
    image[mask > 0] = 255
    transform = build_transform(image_size=32, train=True, augment=augment, seed=1)
    for _ in range(5):
        out_img, out_mask = transform(image, mask)
        assert set(out_mask.unique().tolist()) <= {0, 1}
        bright = out_img.mean(0) > 0.5
        # the lesion pixels and the white pixels move together (edges may differ by resampling)
        agree = (bright == out_mask.bool()).float().mean()
        assert agree > 0.95, f"{augment}: image and mask disagree on {1 - agree:.2%} of pixels"


def test_unknown_augment_lists_accepted():
    with pytest.raises(ValueError, match="default, flips, nnunet, none"):
        build_transform(image_size=32, train=True, augment="strong")


def test_transform_rejects_mismatched_mask():
    image, _ = _pair(32)
    with pytest.raises(ValueError, match="same height and width"):
        build_transform(image_size=16, train=False)(image, np.zeros((30, 32), np.uint8))


def test_worker_init_fn_gives_workers_distinct_reproducible_streams(monkeypatch):
    image, mask = _pair()

    def worker_output(worker_seed):
        ds = SimpleNamespace(transform=build_transform(image_size=32, train=True, seed=3))
        wrapper = SimpleNamespace(dataset=ds)  # e.g. a torch Subset around the dataset
        info = SimpleNamespace(dataset=wrapper, seed=worker_seed)
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info)
        worker_init_fn(0)
        return ds.transform(image, mask)[0]

    assert torch.equal(worker_output(100), worker_output(100))
    assert not torch.equal(worker_output(100), worker_output(101))
    assert tfm._find_transform(SimpleNamespace()) is None


# ---------------------------------------------------------------------------- readers


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".jpg", ".npy"])
def test_read_image_formats(tmp_path, suffix):
    image, _ = _pair(32)
    path = _write(tmp_path / f"a{suffix}", image)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (32, 32, 3)
    if suffix != ".jpg":
        assert np.array_equal(out, image)
    else:
        assert np.abs(out.astype(int) - image).mean() < 6  # lossy, but RGB order kept


def test_read_image_expands_grey(tmp_path):
    path = _write(tmp_path / "g.png", np.full((8, 9), 77, np.uint8))
    out = read_image(path)
    assert out.shape == (8, 9, 3) and (out == 77).all()


def test_read_mask_binarises_above_128(tmp_path):
    values = np.array([[0, 128, 129, 255]], np.uint8)
    assert read_mask(_write(tmp_path / "m.png", values)).tolist() == [[0, 0, 1, 1]]
    labels = np.array([[0, 1, 2, 4]], np.uint8)
    assert read_mask(_write(tmp_path / "l.npy", labels), lesion_value=1).tolist() == [[0, 1, 0, 0]]
    flags = np.array([[True, False]])
    assert read_mask(_write(tmp_path / "b.npy", flags)).tolist() == [[1, 0]]


def test_reader_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope_0001.jpg"
    with pytest.raises(FileNotFoundError, match="nope_0001.jpg.*does not exist"):
        read_image(missing)
    corrupt = tmp_path / "corrupt_0002.jpg"
    corrupt.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(ValueError, match="corrupt_0002.jpg.*could not be decoded"):
        read_image(corrupt)
    empty = tmp_path / "empty_0003_segmentation.png"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty_0003_segmentation.png.*0 bytes"):
        read_mask(empty)
    bad_npy = tmp_path / "bad.npy"
    bad_npy.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.npy"):
        read_mask(bad_npy)
    with pytest.raises(FileNotFoundError, match="is a folder"):
        read_image(tmp_path)


# ---------------------------------------------------------------------------- datasets


def _records(tmp_path, n=2, mask_size=None):
    records = []
    for i in range(n):
        image, mask = _pair(32, i)
        if mask_size is not None and i == n - 1:
            mask = cv2.resize(mask, mask_size, interpolation=cv2.INTER_NEAREST)
        img_path = _write(tmp_path / f"img_{i}.png", image)
        mask_path = _write(tmp_path / f"img_{i}_mask.png", mask * 255)
        records.append({"id": f"img_{i}", "image": img_path, "mask": mask_path, "meta": {"k": i}})
    return records


def test_file_dataset_items_and_collate(tmp_path):
    ds = FileSegmentationDataset(_records(tmp_path))
    item = ds[1]
    assert item["image"].shape == (3, 32, 32) and item["mask"].dtype == torch.int64
    assert item["id"] == "img_1" and item["meta"] == {"k": 1}
    assert torch.equal(item["mask"], torch.from_numpy(_pair(32, 1)[1].astype(np.int64)))
    batch = collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 32, 32) and batch["mask"].shape == (2, 32, 32)
    assert batch["id"] == ["img_0", "img_1"] and batch["meta"] == [{"k": 0}, {"k": 1}]


def test_collate_size_mismatch_names_ids():
    a = {"image": torch.zeros(3, 8, 8), "mask": torch.zeros(8, 8), "id": "a", "meta": {}}
    b = {"image": torch.zeros(3, 9, 8), "mask": torch.zeros(9, 8), "id": "b", "meta": {}}
    with pytest.raises(ValueError, match="a: .*b: .*image_size"):
        collate([a, b])


def test_mask_size_mismatch_names_both_files(tmp_path):
    ds = FileSegmentationDataset(_records(tmp_path, mask_size=(30, 31)))
    with pytest.raises(ValueError, match=r"img_1\.png' is 32x32.*img_1_mask\.png' is 30x31"):
        ds[1]


def test_file_dataset_rejects_empty_or_bad_records(tmp_path):
    with pytest.raises(ValueError, match="no image/mask records"):
        FileSegmentationDataset([])
    with pytest.raises(KeyError, match="record 0 lacks \\['mask'\\]"):
        FileSegmentationDataset([{"id": "x", "image": "x.png"}])


def _paired_tree(root, split="train", names=("ISIC_0000001", "ISIC_0000000"), suffix=""):
    base = root / split if split else root
    for i, name in enumerate(names):
        image, mask = _pair(32, i)
        _write(base / "images" / f"{name}.jpg", image)
        _write(base / "masks" / f"{name.lower()}{suffix}.PNG", mask * 255)
    (base / "images" / "ATTRIBUTION.txt").write_text("decoy")
    (base / "masks" / "metadata.csv").write_text("decoy")
    return base


def test_paired_folder_matches_case_insensitively_and_sorts(tmp_path):
    _paired_tree(tmp_path, "train", suffix="_Segmentation")
    _paired_tree(tmp_path, "val", names=("ISIC_0000009",), suffix="_Segmentation")
    ds = DATASETS.build("paired_folder", root=str(tmp_path), mask_suffix="_segmentation")
    assert isinstance(ds, PairedFolder)
    assert ds.ids == ["ISIC_0000000", "ISIC_0000001"]
    assert Path(ds.records[0]["mask"]).name == "isic_0000000_Segmentation.PNG"
    assert torch.equal(ds[1]["mask"], torch.from_numpy(_pair(32, 0)[1].astype(np.int64)))
    val = PairedFolder(root=str(tmp_path), split="val", mask_suffix="_segmentation")
    assert val.ids == ["ISIC_0000009"]


def test_paired_folder_flat_layout_serves_every_split_with_warning(tmp_path):
    _paired_tree(tmp_path, split=None)
    assert len(PairedFolder(root=str(tmp_path))) == 2
    with pytest.warns(UserWarning, match="no split folders"):
        assert len(PairedFolder(root=str(tmp_path), split="test")) == 2


def test_paired_folder_errors_name_folder_or_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_root.*does not exist"):
        PairedFolder(root=str(tmp_path / "no_such_root"))
    _paired_tree(tmp_path, "train")
    with pytest.raises(
        FileNotFoundError, match=r"split folder '.*val' does not exist.*\['train'\]"
    ):
        PairedFolder(root=str(tmp_path), split="val")
    (tmp_path / "train" / "masks" / "isic_0000000.PNG").unlink()
    with pytest.raises(FileNotFoundError, match="ISIC_0000000.jpg' has no mask"):
        PairedFolder(root=str(tmp_path))
    _write(tmp_path / "train" / "masks" / "isic_0000000.PNG", np.zeros((32, 32), np.uint8))
    _write(tmp_path / "train" / "masks" / "ISIC_0000005.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(FileNotFoundError, match="ISIC_0000005.png' has no image"):
        PairedFolder(root=str(tmp_path))
    (tmp_path / "train" / "masks" / "ISIC_0000005.png").unlink()
    with pytest.raises(FileNotFoundError, match="images folder '.*images_x' does not exist"):
        PairedFolder(root=str(tmp_path), image_dir="images_x")


def test_paired_folder_corrupt_image_names_file(tmp_path):
    base = _paired_tree(tmp_path, "train")
    (base / "images" / "ISIC_0000000.jpg").write_bytes(b"broken")
    ds = PairedFolder(root=str(tmp_path))
    with pytest.raises(ValueError, match="ISIC_0000000.jpg.*could not be decoded"):
        ds[0]


# ---------------------------------------------------------------------------- make_synthetic


def test_make_synthetic_writes_isic2018_layout(tmp_path, capsys):
    out = tmp_path / "syn"
    argv = ["--out", str(out), "--n-train", "3", "--n-val", "2", "--n-test", "1", "--size", "32"]
    assert make_synthetic.main([*argv, "--quiet"]) == 0
    train_in = sorted((out / "ISIC2018_Task1-2_Training_Input").iterdir())
    assert [p.name for p in train_in] == [f"ISIC_000000{i}.jpg" for i in range(3)]
    gt = out / "ISIC2018_Task1_Validation_GroundTruth" / "ISIC_0500001_segmentation.png"
    assert gt.is_file()
    assert (out / "ISIC2018_Task1-2_Test_Input" / "ISIC_1000000.jpg").is_file()
    image, mask, params = generate_sample(0, 500_001, 32)
    stored = cv2.imread(str(gt), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(stored)) <= {0, 255} and np.array_equal(stored // 255, mask)
    jpg = out / "ISIC2018_Task1-2_Validation_Input" / "ISIC_0500001.jpg"
    assert np.array_equal(read_image(jpg), image), "disk image must equal the in-memory one"
    with open(out / "metadata.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["split"] for r in rows] == ["train"] * 3 + ["val"] * 2 + ["test"]
    row = next(r for r in rows if r["image_id"] == "ISIC_0500001")
    assert float(row["target_ita"]) == pytest.approx(params["target_ita"])
    assert {"tags", "measured_ita", "contrast", "hair_count", "tag_dark_skin"} <= set(row)
    # the written tree reads back through the generic loader
    back = PairedFolder(
        root=str(out),
        split=".",
        image_dir="ISIC2018_Task1-2_Validation_Input",
        mask_dir="ISIC2018_Task1_Validation_GroundTruth",
        mask_suffix="_segmentation",
    )
    assert back.ids == ["ISIC_0500000", "ISIC_0500001"]
    # refuses to overwrite without --force
    assert make_synthetic.main([*argv, "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert make_synthetic.main([*argv, "--quiet", "--force"]) == 0
