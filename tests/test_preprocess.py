"""Pre-processing transforms and extra input channels: each effect measured on synthetic images."""

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

import networks
from segmentation.config import ConfigError, validate
from segmentation.data.channels import (
    AppendChannels,
    count_extra_channels,
    lbp_maps,
    wavelet_subbands,
)
from segmentation.data.color import rgb_to_lab
from segmentation.data.preprocess import (
    PREPROCESSING,
    ApertureCorrection,
    ClaheL,
    HairRemoval,
    ShadesOfGray,
    build_preprocessing,
)
from segmentation.data.synthetic import generate_sample
from segmentation.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform
from segmentation.evaluation.corruptions import corrupt
from segmentation.training.build import build_dataset, model_spec

# Generator indices (seed 0): 0 has no hair, ruler or aperture; 1 has an aperture; 29 is a
# low-contrast lesion (L* darkening 4.1).
HAIR_FREE, WITH_APERTURE, LOW_CONTRAST = 0, 1, 29


def sample(index, size=128):
    image, mask, params = generate_sample(0, index, size)
    return image, mask, params


def gray(x):
    return cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).astype(np.float64)


def test_hair_removal_restores_the_hair_free_image():
    clean, _, params = sample(HAIR_FREE, 256)
    assert params["hair_count"] == 0 and not params["ruler"]
    hairy = corrupt(clean, "hair", 4, seed=0, index=0)  # 20 generator strands
    dark_hair = gray(hairy) < gray(clean) - 20  # light (white) strands are not DullRazor's target
    assert dark_hair.mean() > 0.02
    out = HairRemoval()(image=hairy)["image"]
    before = np.abs(hairy.astype(float) - clean).max(-1)[dark_hair].mean()
    after = np.abs(out.astype(float) - clean).max(-1)[dark_hair].mean()
    assert after < 0.15 * before, (before, after)
    untouched = np.abs(out.astype(float) - hairy).max(-1)[~dark_hair].mean()
    assert untouched < 2.0, untouched


def test_hair_removal_leaves_a_hair_free_image_almost_unchanged():
    clean, _, _ = sample(HAIR_FREE, 256)
    transform = HairRemoval()
    assert transform.hair_mask(clean).mean() / 255 < 0.01
    assert np.abs(transform(image=clean)["image"].astype(float) - clean).mean() < 0.5


def test_aperture_correction_fills_black_corners():
    image, mask, params = sample(WITH_APERTURE)
    assert params["aperture"]
    corners = [image[:6, :6], image[:6, -6:], image[-6:, :6], image[-6:, -6:]]
    assert max(c.max() for c in corners) < 30  # black frame before
    out = ApertureCorrection()(image=image)["image"]
    field = image[40:88, 40:88].reshape(-1, 3).astype(float).mean(0)
    for corner in [out[:6, :6], out[:6, -6:], out[-6:, :6], out[-6:, -6:]]:
        assert corner.min() > 60, "corner still dark"
        assert np.abs(corner.reshape(-1, 3).mean(0) - field).max() < 60  # skin-like colour
    np.testing.assert_array_equal(out[40:88, 40:88], image[40:88, 40:88])  # field untouched
    inpainted = ApertureCorrection(fill="inpaint")(image=image)["image"]
    assert inpainted[:6, :6].min() > 60


def test_aperture_correction_ignores_images_without_a_frame():
    image, _, params = sample(HAIR_FREE)
    assert not params["aperture"]
    np.testing.assert_array_equal(ApertureCorrection()(image=image)["image"], image)


def local_contrast(image):
    lightness = rgb_to_lab(image)[..., 0]
    mean = cv2.blur(lightness, (15, 15))
    return np.sqrt(np.maximum(cv2.blur(lightness * lightness, (15, 15)) - mean * mean, 0)).mean()


def test_clahe_raises_local_contrast_and_keeps_chroma():
    image, _, params = sample(LOW_CONTRAST)
    assert params["contrast"] < 10
    out = ClaheL()(image=image)["image"]
    assert local_contrast(out) > 1.5 * local_contrast(image)
    chroma_change = np.abs(rgb_to_lab(out)[..., 1:] - rgb_to_lab(image)[..., 1:]).mean()
    assert chroma_change < 1.0, chroma_change


def test_shades_of_gray_equalises_the_illuminant():
    image, _, _ = sample(HAIR_FREE)
    cast = np.clip(image * np.array([1.25, 1.0, 0.75]) + 0.5, 0, 255).astype(np.uint8)
    sog = ShadesOfGray()
    before, after = sog.illuminant(cast), sog.illuminant(sog(image=cast)["image"])
    assert before.max() / before.min() > 2.0
    assert after.max() / after.min() < 1.03, after
    # p = 1 is Gray World: equal channel means
    gray_world = ShadesOfGray(power=1)(image=cast)["image"].reshape(-1, 3).mean(0)
    assert gray_world.max() / gray_world.min() < 1.03, gray_world


@pytest.mark.parametrize("name", PREPROCESSING.names())
def test_preprocessing_is_deterministic_and_keeps_shape(name):
    image, mask, _ = sample(WITH_APERTURE)
    pipes = [A.Compose(build_preprocessing([name]), seed=s) for s in (0, 1)]
    outs = [p(image=image, mask=mask) for p in pipes]
    assert outs[0]["image"].shape == image.shape and outs[0]["image"].dtype == np.uint8
    np.testing.assert_array_equal(outs[0]["image"], outs[1]["image"])
    np.testing.assert_array_equal(outs[0]["mask"], mask)


def test_preprocessing_errors():
    with pytest.raises(KeyError, match="Did you mean 'hair_removal'"):
        build_preprocessing(["hair_remval"])
    with pytest.raises(TypeError, match="accepted: clip_limit, tile_grid_size"):
        build_preprocessing([{"name": "clahe", "clip": 3.0}])
    with pytest.raises(TypeError, match="must be a list"):
        build_preprocessing("clahe")
    with pytest.raises(ValueError, match="positive odd int"):
        HairRemoval(kernel_size=8)
    with pytest.raises(ValueError, match="uint8"):
        ClaheL()(image=np.zeros((8, 8, 3), np.float32))


# -- extra channels ------------------------------------------------------------------------------


def test_wavelet_subbands_shape_and_orientation():
    rgb = np.zeros((33, 40, 3), np.float32)
    rgb[:, 20:] = 1.0  # vertical edge: intensity changes along x only
    for wavelet in ("haar", "db2"):
        bands = wavelet_subbands(rgb, wavelet=wavelet)
        assert bands.shape == (33, 40, 3) and bands.dtype == np.float32
        energy = (bands**2).sum(axis=(0, 1))  # horizontal, vertical, diagonal details
        assert energy[1] > 10 * max(energy[0], energy[2]), energy
    flat = wavelet_subbands(np.full((16, 16, 3), 0.5, np.float32))
    np.testing.assert_allclose(flat, 0.0, atol=1e-4)


def test_lbp_values():
    flat = lbp_maps(np.full((16, 16, 3), 0.5, np.float32))
    assert flat.shape == (16, 16, 1)
    np.testing.assert_allclose(flat, 8 * 2 / 9 - 1, atol=1e-6)  # code P: every neighbour >= centre
    noisy = lbp_maps(np.random.default_rng(0).random((32, 32, 3), dtype=np.float32))
    assert noisy.min() >= -1 and noisy.max() <= 1 and len(np.unique(noisy)) == 10  # P + 2 codes


def test_append_channels_keeps_rgb_and_counts():
    image, mask, _ = sample(HAIR_FREE, 64)
    plain = build_transform(image_size=64, train=False)
    extra = build_transform(image_size=64, train=False, extra_channels=["wavelet_haar", "lbp"])
    x, _ = plain(image, mask)
    y, _ = extra(image, mask)
    assert y.shape == (7, 64, 64) and count_extra_channels(["wavelet_haar", "lbp"]) == 4
    torch.testing.assert_close(y[:3], x)
    with pytest.raises(ValueError, match="after Normalize"):
        AppendChannels(["lbp"], mean=IMAGENET_MEAN, std=IMAGENET_STD)(image=image)
    with pytest.raises(KeyError, match="Did you mean 'lbp'"):
        count_extra_channels(["lbpp"])


def tiny_config(**data):
    return validate(
        {
            "model": {"name": "unet_tiny"},
            "data": {"name": "synthetic", "image_size": 32, "n_train": 4, "n_val": 2, **data},
        }
    )


def test_in_channels_follow_the_data_config():
    config = tiny_config(preprocess=["aperture", "hair_removal"], extra_channels=["wavelet_db2"])
    dataset = build_dataset(config, "val")
    assert dataset.in_channels == 6 and dataset[0]["image"].shape == (6, 32, 32)
    spec = model_spec(config, dataset)
    assert spec["kwargs"]["in_channels"] == 6
    model = networks.build_network(spec["name"], **spec["kwargs"])
    assert model(dataset[0]["image"][None]).shape == (1, 1, 32, 32)


def test_preprocess_runs_in_train_and_eval_pipelines():
    config = tiny_config(preprocess=["shades_of_gray"], augment="none")
    plain = tiny_config(augment="none")
    for split in ("train", "val"):
        a, b = build_dataset(config, split)[0]["image"], build_dataset(plain, split)[0]["image"]
        assert not torch.allclose(a, b), f"preprocess not applied to the {split} pipeline"


def test_config_rejects_unknown_steps():
    with pytest.raises(ConfigError, match="Did you mean 'clahe'"):
        tiny_config(preprocess=["clahee"])
    with pytest.raises(ConfigError, match="Did you mean 'wavelet_haar'"):
        tiny_config(extra_channels=["wavelet_har"])
