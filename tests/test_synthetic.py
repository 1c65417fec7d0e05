"""The synthetic generator, its dataset class, and the skin-tone colour science it relies on."""

import math

import cv2
import numpy as np
import pytest
import torch

from segmentation.data import DATASETS, SyntheticDermoscopy, build_transform, color
from segmentation.data import synthetic as syn
from segmentation.data.synthetic import TAGS, generate_sample

# ---------------------------------------------------------------------------- colour / ITA


def _patch(rgb, size=32):
    image = np.zeros((size, size, 3), np.uint8)
    image[:] = rgb
    return image


def test_ita_of_reference_colour_is_float_cielab_not_opencv_uint8():
    image = _patch((141, 85, 54))
    value = color.ita(image)
    assert abs(value - (-16.5)) < 0.5, value
    # The pitfall: OpenCV's 8-bit Lab plugged into the formula gives +20.1 degrees.
    lab8 = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)[0, 0].astype(float)
    pitfall = math.degrees(math.atan2(lab8[0] - 50, lab8[2]))
    assert abs(pitfall - 20.1) < 0.2
    assert abs(value - pitfall) > 30
    assert color.ita_group(value, "chardon6") == "brown"
    assert color.ita_group(value, "kinyanjui8") == "le10"


def test_rgb_lab_match_skimage_and_round_trip():
    from skimage.color import rgb2lab

    rgb = np.random.default_rng(0).integers(0, 256, (20, 20, 3)).astype(np.uint8)
    lab = color.rgb_to_lab(rgb)
    np.testing.assert_allclose(lab, rgb2lab(rgb), atol=0.01)
    np.testing.assert_allclose(color.rgb_to_lab(rgb.astype(np.float32) / 255), lab, atol=1e-3)
    np.testing.assert_allclose(color.lab_to_rgb(lab) * 255, rgb, atol=0.05)


@pytest.mark.parametrize(
    "value, chardon, kinyanjui",
    [
        (60.0, "very_light", "gt55"),
        (55.0, "light", "48_55"),
        (48.0, "light", "41_48"),
        (41.0, "intermediate", "34.5_41"),
        (34.5, "intermediate", "28_34.5"),
        (28.0, "tan", "19_28"),
        (19.0, "tan", "10_19"),
        (10.0, "brown", "le10"),
        (-30.0, "dark", "le10"),
        (-29.9, "brown", "le10"),
        (float("nan"), "unknown", "unknown"),
    ],
)
def test_ita_bin_edges(value, chardon, kinyanjui):
    assert color.ita_group(value, "chardon6") == chardon
    assert color.ita_group(value, "kinyanjui8") == kinyanjui


def test_ita_group_unknown_preset_lists_presets():
    with pytest.raises(KeyError, match="chardon6, kinyanjui8"):
        color.ita_group(0.0, "fitzpatrick")


def test_ita_excludes_lesion_aperture_and_hair():
    skin = color.ita(_patch((141, 85, 54), 100))
    image = _patch((141, 85, 54), 100)
    lesion = np.zeros((100, 100), np.uint8)
    lesion[20:80, 20:80] = 1
    image[lesion > 0] = (60, 35, 25)  # 36 % lesion: would move the median if not excluded
    yy, xx = np.mgrid[0:100, 0:100]
    image[np.hypot(yy - 49.5, xx - 49.5) > 55] = 0  # black aperture corners
    assert abs(color.ita(image, exclude_mask=lesion) - skin) < 0.2
    hairy = _patch((141, 85, 54), 100)
    hairy[:, ::4] = (50, 35, 28)  # one-pixel dark strands (not aperture-black)
    keep = color.healthy_skin_mask(hairy)
    assert not keep[:, ::4].any(), "hair pixels must be excluded"
    assert keep[:, 2::4].all(), "skin between strands must be kept"
    assert abs(color.ita(hairy) - skin) < 0.5
    assert math.isnan(color.ita(image, exclude_mask=np.ones((100, 100), np.uint8)))


def test_ita_rejects_non_uint8_with_hint():
    with pytest.raises(ValueError, match="uint8"):
        color.ita(np.zeros((8, 8, 3), np.float32))


def test_lesion_contrast_is_cie76_between_medians():
    image = _patch((141, 85, 54), 40)
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 1
    image[mask > 0] = (70, 40, 30)
    expected = np.linalg.norm(
        color.rgb_to_lab(np.array([70, 40, 30], np.uint8))
        - color.rgb_to_lab(np.array([141, 85, 54], np.uint8))
    )
    assert color.lesion_contrast(image, mask) == pytest.approx(expected, abs=1e-3)


# ---------------------------------------------------------------------------- generator


def _same(a, b):
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert a[2] == pytest.approx(b[2], nan_ok=True)


def test_generation_is_pure_in_seed_index_size_and_order_free():
    forward = {i: generate_sample(3, i, 48) for i in (4, 9, 1)}
    backward = {i: generate_sample(3, i, 48) for i in (1, 9, 4)}
    for i in forward:
        _same(forward[i], backward[i])
    assert not np.array_equal(forward[4][0], forward[9][0])
    assert not np.array_equal(generate_sample(4, 4, 48)[0], forward[4][0])
    big = generate_sample(3, 4, 64)
    assert big[0].shape == (64, 64, 3) and big[2]["target_ita"] == forward[4][2]["target_ita"]


def test_no_global_rng_is_used():
    np.random.seed(0)
    state = np.random.get_state()[1].copy()
    generate_sample(0, 0, 32)
    assert np.array_equal(np.random.get_state()[1], state)


@pytest.mark.parametrize("index", range(6))
def test_mask_binary_clipped_to_aperture_and_params_consistent(index):
    image, mask, p = generate_sample(1, index, 48)
    assert image.dtype == np.uint8 and image.shape == (48, 48, 3)
    assert mask.dtype == np.uint8 and mask.shape == (48, 48)
    assert set(np.unique(mask)) <= {0, 1}
    if p["aperture"]:
        yy, xx = np.mgrid[0:48, 0:48]
        outside = np.hypot(yy - 23.5, xx - 23.5) > p["aperture_radius_frac"] * 48
        assert not mask[outside].any()
    assert p["lesion_area_frac"] == mask.mean()
    assert p["n_components"] == cv2.connectedComponents(mask, connectivity=8)[0] - 1
    assert p["ita_group"] == color.ita_group(p["target_ita"])
    assert all(isinstance(v, (str, int, float, bool)) for v in p.values())


def test_tags_consistent_with_params():
    for index in range(24):
        p = generate_sample(2, index, 40)[2]
        tags = set(p["tags"].split(";")) - {""}
        assert tags <= set(TAGS)
        assert ("dark_skin" in tags) == (p["target_ita"] <= syn.DARK_SKIN_MAX_ITA)
        assert ("low_contrast" in tags) == (p["contrast"] < 10)
        assert ("heavy_hair" in tags) == (p["hair_count"] >= 6)
        assert ("tiny" in tags) == (p["lesion_radius_frac"] < 0.08)
        assert ("multiple" in tags) == (p["n_lesions"] > 1)
        assert ("touches_border" in tags) == p["mask_touches_border"]


def test_parameter_distributions_follow_the_table():
    rng = np.random.default_rng(0)
    draws = [syn._draw_params(rng, set()) for _ in range(3000)]

    def rate(pred):
        return np.mean([pred(p) for p in draws])

    # expected rate +- 4 binomial standard deviations
    for got, want in [
        (rate(lambda p: p["contrast"] < 10), 0.20),
        (rate(lambda p: p["n_lesions"] > 1), 0.12),
        (rate(lambda p: p["hair_count"] == 0), 0.45),
        (rate(lambda p: p["hair_count"] >= 6), 0.20),
        (rate(lambda p: p["lesion_radius_frac"] < 0.08), 0.10),
        (rate(lambda p: p["lesion_radius_frac"] >= 0.30), 0.15),
        (rate(lambda p: p["at_border"]), 0.12),
        (rate(lambda p: p["aperture"]), 0.50),
    ]:
        assert abs(got - want) < 4 * math.sqrt(want * (1 - want) / len(draws)), (got, want)
    ita = np.array([p["target_ita"] for p in draws])
    assert ita.min() >= -55 and ita.max() <= 65
    assert all(22 <= p["skin_L"] <= 88 and 1 <= p["edge_width_px"] <= 14 for p in draws)
    assert {p["blood_fraction"] for p in draws} == {0.002, 0.005, 0.02, 0.05}


def test_measured_ita_tracks_target():
    params = [generate_sample(0, i, 48)[2] for i in range(30)]
    target = np.array([p["target_ita"] for p in params])
    measured = np.array([p["measured_ita"] for p in params])
    ok = ~np.isnan(measured)
    assert ok.sum() >= 27
    assert np.corrcoef(target[ok], measured[ok])[0, 1] > 0.9


def test_quotas_force_properties():
    for index in range(8):
        p = generate_sample(0, index, 40, quotas={"dark_skin": 1.0, "low_contrast": 1.0})[2]
        assert p["target_ita"] <= 10 and p["contrast"] < 10
        assert {"dark_skin", "low_contrast"} <= set(p["tags"].split(";"))
        assert p["forced"] == "dark_skin;low_contrast"
    for tag in ("heavy_hair", "tiny", "multiple", "touches_border"):
        p = generate_sample(0, 3, 64, quotas={tag: 1.0})[2]
        assert tag in p["tags"].split(";"), (tag, p["tags"])
    hard = [generate_sample(0, i, 32, quotas="hard")[2]["forced"] for i in range(12)]
    assert any(hard) and all(
        set(f.split(";")) <= {"", "dark_skin", "low_contrast", "heavy_hair"} for f in hard
    )


def test_forcing_hair_changes_the_image_not_the_mask():
    plain = generate_sample(0, 0, 48)
    assert plain[2]["hair_count"] < 6
    hairy = generate_sample(0, 0, 48, quotas={"heavy_hair": 1.0})
    assert hairy[2]["hair_count"] >= 6
    assert np.array_equal(plain[1], hairy[1])
    assert not np.array_equal(plain[0], hairy[0])


def test_quota_errors_name_the_problem():
    with pytest.raises(KeyError, match="accepted tags: dark_skin"):
        generate_sample(0, 0, 32, quotas={"dark": 1.0})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        generate_sample(0, 0, 32, quotas={"tiny": 2.0})
    with pytest.raises(KeyError, match="accepted: hard"):
        generate_sample(0, 0, 32, quotas="easy")
    with pytest.raises(ValueError, match=">= 16"):
        generate_sample(0, 0, 8)


# ---------------------------------------------------------------------------- dataset


def test_splits_are_disjoint_and_stable():
    kw = dict(image_size=32, n_train=5, n_val=4, n_test=3)
    ids = {s: SyntheticDermoscopy(split=s, **kw).ids for s in ("train", "val", "test")}
    assert [len(v) for v in ids.values()] == [5, 4, 3]
    assert not (set(ids["train"]) & set(ids["val"]) or set(ids["val"]) & set(ids["test"]))
    assert ids["val"] == sorted(ids["val"]) and ids["val"][0] == "syn_0500000"
    assert ids["test"][0] == "syn_1000000"
    bigger = SyntheticDermoscopy(split="val", image_size=32, n_train=50, n_val=4)
    assert bigger.ids == ids["val"]
    assert torch.equal(bigger[1]["image"], SyntheticDermoscopy(split="val", **kw)[1]["image"])


def test_split_errors():
    with pytest.raises(KeyError, match="train, val, test"):
        SyntheticDermoscopy(split="valid")
    with pytest.raises(ValueError, match="n_train"):
        SyntheticDermoscopy(split="train", n_train=600_000)
    with pytest.raises(KeyError, match="unknown split 'tst'"):
        SyntheticDermoscopy(split="test", quotas={"tst": "hard"})


def test_dataset_sample_contract_and_registry():
    ds = DATASETS.build("synthetic", split="val", image_size=40, n_val=3)
    assert isinstance(ds, SyntheticDermoscopy)
    assert (ds.in_channels, ds.num_classes, len(ds)) == (3, 1, 3)
    item = ds[2]
    assert set(item) == {"image", "mask", "id", "meta"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 40, 40)
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (40, 40)
    assert set(item["mask"].unique().tolist()) <= {0, 1}
    assert item["id"] == "syn_0500002"
    meta = item["meta"]
    assert all(isinstance(v, (str, int, float, bool)) for v in meta.values())
    for tag in TAGS:
        assert meta[f"tag_{tag}"] == (tag in meta["tags"].split(";"))
    with pytest.raises(IndexError, match="3-image 'val' split"):
        ds[3]


def test_cache_keeps_raw_arrays_and_transform_runs_every_time(monkeypatch):
    calls = {"gen": 0, "tf": 0}
    real = syn.generate_sample

    def counting_generate(*args, **kwargs):
        calls["gen"] += 1
        return real(*args, **kwargs)

    val_tf = build_transform(image_size=24, train=False)

    def counting_transform(image, mask):
        calls["tf"] += 1
        return val_tf(image, mask)

    monkeypatch.setattr(syn, "generate_sample", counting_generate)
    ds = SyntheticDermoscopy(
        split="train", image_size=32, n_train=2, transform=counting_transform, disk_cache=False
    )
    first, second = ds[0], ds[0]
    assert calls == {"gen": 1, "tf": 2}
    assert torch.equal(first["image"], second["image"]) and first["image"].shape == (3, 24, 24)
    uncached = SyntheticDermoscopy(split="train", image_size=32, n_train=2, cache=False)
    uncached[0], uncached[0]
    assert calls["gen"] == 3


def test_quotas_per_split_apply_only_to_that_split():
    quotas = {"test": {"dark_skin": 1.0}}
    test = SyntheticDermoscopy(split="test", image_size=24, n_test=4, quotas=quotas)
    assert all(test.load(i)[2]["tag_dark_skin"] for i in range(4))
    val = SyntheticDermoscopy(split="val", image_size=24, n_val=4, quotas=quotas)
    assert all(val.load(i)[2]["forced"] == "" for i in range(4))


def _no_generation(*args, **kwargs):
    raise AssertionError("generate_sample was called although the split is in the disk cache")


def test_disk_cache_returns_the_generated_bytes_and_skips_generation(tmp_path, monkeypatch):
    monkeypatch.setenv(syn.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(syn.NO_DISK_CACHE_ENV, raising=False)
    kw = dict(split="val", image_size=32, n_val=5, quotas={"val": {"tiny": 1.0}})
    fresh = SyntheticDermoscopy(**kw, disk_cache=False)
    reference = [fresh.load(i) for i in range(5)]
    first = SyntheticDermoscopy(**kw)
    first.load(0)
    files = list((tmp_path / "synthetic").glob("*.npz"))
    assert len(files) == 1 and "_32px_val_500000-500005_" in files[0].name
    monkeypatch.setattr(syn, "generate_sample", _no_generation)
    second = SyntheticDermoscopy(**kw)
    for i in range(5):
        image, mask, meta = second.load(i)
        ref_image, ref_mask, ref_meta = reference[i]
        assert image.dtype == np.uint8 and np.array_equal(image, ref_image)
        assert np.array_equal(mask, ref_mask) and meta == ref_meta
    assert torch.equal(second[3]["image"], fresh[3]["image"])  # fresh: in-memory copy


def test_disk_cache_key_separates_every_argument_and_the_generator_source(tmp_path, monkeypatch):
    monkeypatch.setenv(syn.CACHE_DIR_ENV, str(tmp_path))
    base = dict(split="test", image_size=24, n_test=3, seed=0)
    for change in (
        {},
        {"seed": 1},
        {"image_size": 32},
        {"n_test": 4},
        {"quotas": {"test": "hard"}},
    ):
        SyntheticDermoscopy(**{**base, **change}).load(0)
    assert len(list((tmp_path / "synthetic").glob("*.npz"))) == 5
    # another generator (source or library versions) never reads the old files
    monkeypatch.setattr(syn, "_generator_digest", lambda: "0" * 16)
    SyntheticDermoscopy(**base).load(0)
    assert len(list((tmp_path / "synthetic").glob("*.npz"))) == 6


def test_unreadable_cache_file_is_named_regenerated_and_rewritten(tmp_path, monkeypatch):
    monkeypatch.setenv(syn.CACHE_DIR_ENV, str(tmp_path))
    kw = dict(split="val", image_size=24, n_val=3)
    reference = SyntheticDermoscopy(**kw, disk_cache=False).load(2)
    SyntheticDermoscopy(**kw).load(0)
    (path,) = (tmp_path / "synthetic").glob("*.npz")
    path.write_bytes(path.read_bytes()[:100])  # truncated, as after a full disk
    with pytest.warns(UserWarning, match=f"{path.name}.*unreadable.*regenerating"):
        again = SyntheticDermoscopy(**kw).load(2)
    assert np.array_equal(again[0], reference[0]) and again[2] == reference[2]
    monkeypatch.setattr(syn, "generate_sample", _no_generation)
    assert np.array_equal(SyntheticDermoscopy(**kw).load(2)[1], reference[1])  # rewritten


def test_unwritable_cache_folder_warns_once_and_still_serves_the_data(tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv(syn.CACHE_DIR_ENV, str(blocker))
    monkeypatch.setattr(syn, "_warned_dirs", set())
    with pytest.warns(UserWarning, match=f"cannot write the synthetic cache.*{syn.CACHE_DIR_ENV}"):
        ds = SyntheticDermoscopy(split="val", image_size=24, n_val=2)
        item = ds[1]
    assert item["image"].shape == (3, 24, 24)


def test_disk_cache_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv(syn.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(syn.NO_DISK_CACHE_ENV, "1")
    SyntheticDermoscopy(split="val", image_size=24, n_val=2).load(0)
    assert syn.disk_cache_dir() is None and not (tmp_path / "synthetic").exists()
