"""SegDT: rectified-flow maths with a velocity oracle, sampling, shapes, gradients, TAESD."""

import pytest
import torch
import torch.nn.functional as F

from networks import NETWORKS, SegDT, build_network
from networks.segdt.dit import DIT_SIZES, DiT
from networks.segdt.flow import (
    data_estimate,
    euler_sample,
    flow_matching_loss,
    interpolate,
    sample_time,
)
from networks.segdt.taesd import TAESD
from segmentation.losses import BCEDiceLoss

TINY = ["segdt_tiny", "segdt_learned_tiny"]


def randomise_zero_init(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """adaLN-Zero starts with zero gates/outputs; give those tensors values so gradients flow."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def make_batch(size=64, batch=2, num_classes=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, size, size, dtype=torch.long)
    mask[:, 16:40, 8:32] = 1 if num_classes == 1 else 2
    if num_classes > 1:
        mask[:, 40:48, 40:56] = 1
    return {"image": torch.randn(batch, 3, size, size, generator=gen), "mask": mask}


# --------------------------------------------------------------------------- rectified-flow maths


def test_loss_of_exact_velocity_is_zero():
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    t = torch.tensor([0.1, 0.5, 1.0])
    assert flow_matching_loss(lambda z, tt: noise - x0, x0, noise, t) == 0
    # The exact marginal velocity of a point mass at x0, written as a field of (z, t).
    x0, noise = x0.double(), noise.double()
    field = flow_matching_loss(lambda z, tt: (z - x0) / tt.view(-1, 1, 1, 1), x0, noise, t)
    assert field < 1e-24
    assert flow_matching_loss(lambda z, tt: torch.zeros_like(z), x0, noise, t) > 0.1


@pytest.mark.parametrize("steps", range(1, 11))
def test_euler_with_exact_velocity_recovers_target(steps):
    gen = torch.Generator().manual_seed(steps)
    x0 = torch.randn(2, 4, 6, 6, generator=gen, dtype=torch.float64)
    noise = torch.randn(2, 4, 6, 6, generator=gen, dtype=torch.float64)
    out = euler_sample(lambda z, t: (z - x0) / t.view(-1, 1, 1, 1), noise, steps)
    torch.testing.assert_close(out, x0, atol=1e-10, rtol=0)
    # The trajectory stays on the straight path: one step from t=1 lands on z_{1 - 1/K}.
    one = euler_sample(lambda z, t: noise - x0, noise, steps)
    torch.testing.assert_close(one, interpolate(x0, noise, torch.zeros(2)), atol=1e-10, rtol=0)


def test_data_estimate_is_the_one_step_sampler():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 6, 6, generator=gen, dtype=torch.float64)
    noise = torch.randn(3, 4, 6, 6, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.2, 0.7, 1.0], dtype=torch.float64)
    z_t = interpolate(x0, noise, t)
    torch.testing.assert_close(data_estimate(z_t, noise - x0, t), x0, atol=1e-12, rtol=0)
    loss, estimate = flow_matching_loss(
        lambda z, tt: noise - x0, x0, noise, t, return_estimate=True
    )
    assert loss == 0 and torch.allclose(estimate, x0, atol=1e-12)

    # At t = 1 the estimate of any velocity is what a 1-step Euler sampler returns.
    def velocity(z, tt):
        return 0.3 * z + tt.view(-1, 1, 1, 1)

    ones = torch.ones(3, dtype=torch.float64)
    torch.testing.assert_close(
        data_estimate(noise, velocity(noise, ones), ones), euler_sample(velocity, noise, 1)
    )


def test_sample_time_schedules_and_errors():
    for schedule in ("uniform", "logit_normal"):
        t = sample_time(1000, schedule=schedule, generator=torch.Generator().manual_seed(0))
        assert t.shape == (1000,) and t.min() >= 1e-5 and t.max() <= 1
    gen = torch.Generator().manual_seed(0)
    logit = sample_time(4000, schedule="logit_normal", generator=gen)
    assert ((logit - 0.5).abs() < 0.25).float().mean() > 0.6  # concentrated at mid times
    with pytest.raises(ValueError, match="logit_normal"):
        sample_time(4, schedule="cosine")
    with pytest.raises(ValueError, match="positive integer"):
        euler_sample(lambda z, t: z, torch.zeros(1, 1), 0)


# --------------------------------------------------------------------------- SegDT with an oracle


def oracle(model: SegDT, mask: torch.Tensor):
    """Exact velocity towards the true mask latent, ignoring the image (a velocity oracle)."""
    target = model.latent.encode_mask(mask).detach()

    def velocity(z_t, z_image, t):
        n = z_t.shape[0] // target.shape[0]
        return (z_t - target.repeat(n, 1, 1, 1)) / t.view(-1, 1, 1, 1)

    return velocity


@pytest.mark.parametrize("name", TINY)
def test_model_loss_with_oracle_velocity_is_zero(name, monkeypatch):
    model = build_network(name, in_channels=3, num_classes=1).double()
    batch = make_batch()
    batch["image"] = batch["image"].double()
    monkeypatch.setattr(model, "velocity", oracle(model, batch["mask"]))
    latent = model.latent.encode_mask(batch["mask"])
    noise = torch.randn(latent.shape, dtype=torch.float64)
    t = torch.tensor([0.05, 0.9], dtype=torch.float64)
    _, logs = model.compute_loss(batch, None, noise=noise, t=t)
    assert logs["flow_loss"] < 1e-20
    _, logs = model.compute_loss(batch, None)  # random t and noise (float32 in pixel space)
    assert logs["flow_loss"] < 1e-10
    monkeypatch.undo()  # the untrained DiT is far from the oracle: the loss is not trivially 0
    _, logs = model.compute_loss(batch, None, noise=noise, t=t)
    assert logs["flow_loss"] > 0.1


@pytest.mark.parametrize("steps", [1, 2, 4, 10])
def test_model_sampling_with_oracle_recovers_mask(steps, monkeypatch):
    model = build_network("segdt_tiny", in_channels=3, num_classes=1)
    batch = make_batch()
    monkeypatch.setattr(model, "velocity", oracle(model, batch["mask"]))
    logits = model.predict(batch["image"], steps=steps, seed=1)
    assert torch.equal((logits[:, 0] > 0).long(), batch["mask"])


# --------------------------------------------------------------------------- contract


def test_import_and_registry():
    for name in ("segdt", "segdt_s", "segdt_taesd", "segdt_pixel", *TINY):
        assert name in NETWORKS
    assert NETWORKS.get("segdt")[1]["embed_dim"] == DIT_SIZES["dit_xs"]["embed_dim"]


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("num_classes", [1, 3])
def test_shapes(name, num_classes):
    model = build_network(name, in_channels=3, num_classes=num_classes)
    batch = make_batch(num_classes=num_classes)
    loss, logs = model.compute_loss(batch, None)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(isinstance(v, float) for v in logs.values()) and "flow_loss" in logs
    for out in (model(batch["image"]), model.predict(batch["image"], steps=2, n_samples=3)):
        assert out.shape == (2, num_classes, 64, 64)
    mean, var = model.predict_with_uncertainty(batch["image"][:, :, :32, :48], n_samples=3)
    assert mean.shape == var.shape == (2, num_classes, 32, 48) and (var >= 0).all()


@pytest.mark.parametrize("name", TINY)
def test_input_size_error(name):
    model = build_network(name, in_channels=3, num_classes=1)
    with pytest.raises(ValueError, match=r"divisible by 8.*pad or resize the input to 64x72"):
        model(torch.randn(1, 3, 60, 66))
    with pytest.raises(ValueError, match="divisible by 8"):
        model.compute_loss({"image": torch.randn(1, 3, 60, 64), "mask": torch.zeros(1, 60, 64)})


@pytest.mark.parametrize("name", TINY)
def test_sampling_is_deterministic_and_leaves_global_rng_alone(name):
    model = randomise_zero_init(build_network(name, in_channels=3, num_classes=1)).eval()
    image = make_batch()["image"]
    state = torch.get_rng_state()
    a = model.predict(image, seed=3)
    assert torch.equal(torch.get_rng_state(), state), "sampling touched the global RNG"
    assert torch.equal(a, model.predict(image, seed=3))
    assert not torch.allclose(a, model.predict(image, seed=4))
    assert torch.equal(model(image), model.predict(image))
    mean, var = model.predict_with_uncertainty(image, n_samples=4, seed=3)
    assert torch.equal(mean, model.predict(image, n_samples=4, seed=3))
    assert var.max() > 0
    _, var_one = model.predict_with_uncertainty(image, n_samples=1)
    assert not var_one.any()


def build_taesd_segdt(path, **kwargs):
    return SegDT(in_channels=3, num_classes=1, autoencoder="taesd", taesd_path=path, **kwargs)


@pytest.mark.parametrize("name", [*TINY, "taesd"])
def test_every_trainable_parameter_gets_a_gradient(name, tmp_path):
    if name == "taesd":
        path = tmp_path / "taesd.pth"
        torch.save(diffusers_taesd_state_dict(), path)
        model = build_taesd_segdt(path, **DIT_SIZES["tiny"])
        assert not any(p.requires_grad for p in model.latent.parameters()), "TAESD not frozen"
    else:
        model = build_network(name, in_channels=3, num_classes=1)
    randomise_zero_init(model)
    loss, _ = model.compute_loss(make_batch(), lambda logits, mask: logits.square().mean())
    loss.backward()
    bad = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.isfinite().all() or not p.grad.any())
    ]
    assert not bad, f"parameters without a finite non-zero gradient: {bad}"


@pytest.mark.parametrize("name", TINY)
def test_save_load_round_trip(name, tmp_path):
    model = randomise_zero_init(build_network(name, in_channels=3, num_classes=1)).eval()
    torch.save(model.state_dict(), tmp_path / "m.pth")
    fresh = build_network(name, in_channels=3, num_classes=1).eval()
    fresh.load_state_dict(torch.load(tmp_path / "m.pth", weights_only=True))
    image = make_batch()["image"]
    assert torch.equal(model(image), fresh(image))


def test_learned_autoencoder_reused_frozen_from_checkpoint(tmp_path):
    stage1 = randomise_zero_init(build_network("segdt_learned_tiny", in_channels=3, num_classes=1))
    torch.save({"model": stage1.state_dict(), "step": 10}, tmp_path / "stage1.pt")
    stage2 = build_network(
        "segdt_learned_tiny", in_channels=3, num_classes=1, autoencoder_ckpt=tmp_path / "stage1.pt"
    )
    for key in ("mask_encoder.0.weight", "mask_decoder.0.weight", "image_encoder.0.0.weight"):
        assert torch.equal(stage2.latent.state_dict()[key], stage1.latent.state_dict()[key])
    assert not any(p.requires_grad for p in stage2.latent.mask_encoder.parameters())
    assert all(p.requires_grad for p in stage2.latent.image_encoder.parameters())
    _, logs = stage2.compute_loss(make_batch(), None)
    assert "recon_loss" not in logs
    pixel = build_network("segdt_tiny", in_channels=3, num_classes=1)
    torch.save(pixel.state_dict(), tmp_path / "pixel.pt")
    with pytest.raises(RuntimeError, match="no 'latent.\\*' weights"):
        build_network(
            "segdt_learned_tiny",
            in_channels=3,
            num_classes=1,
            autoencoder_ckpt=tmp_path / "pixel.pt",
        )


def test_image_encoder_gets_a_gradient_at_step_0():
    # adaLN-Zero zeroes the DiT output at initialisation, so the velocity loss alone gives the
    # image encoder exactly zero gradient at step 0; the condition loss must reach it.
    model = build_network("segdt_learned_tiny", in_channels=3, num_classes=1)
    loss, logs = model.compute_loss(make_batch(), None)
    loss.backward()
    grads = [p.grad for p in model.latent.image_encoder.parameters()]
    assert all(g is not None and g.isfinite().all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0, "image encoder has no gradient"
    assert "condition_loss" in logs
    off = build_network("segdt_learned_tiny", in_channels=3, num_classes=1, condition_weight=0)
    assert off.latent.condition_head is None
    _, logs = off.compute_loss(make_batch(), None)
    assert "condition_loss" not in logs


@pytest.mark.parametrize("name", TINY)
def test_estimate_loss_trains_the_dit_not_the_mask_decoder(name):
    batch = make_batch()
    noise_shape = (
        build_network(name, in_channels=3, num_classes=1).latent.encode_mask(batch["mask"]).shape
    )
    noise, t = torch.randn(noise_shape), torch.tensor([0.3, 1.0])
    on = randomise_zero_init(build_network(name, in_channels=3, num_classes=1, estimate_weight=2.0))
    off = build_network(name, in_channels=3, num_classes=1)
    off.load_state_dict(on.state_dict())
    loss_fn = BCEDiceLoss()
    torch.manual_seed(0)  # the learned space's reconstruction noise
    total_on, logs = on.compute_loss(batch, loss_fn, noise=noise, t=t)
    torch.manual_seed(0)
    total_off, logs_off = off.compute_loss(batch, loss_fn, noise=noise, t=t)
    assert "estimate_loss" in logs and "estimate_loss" not in logs_off
    # The term is the segmentation loss of the decoded one-step estimate, times its weight.
    z_mask = on.latent.encode_mask(batch["mask"]).detach()
    z_t = interpolate(z_mask, noise, t)
    velocity = on.velocity(z_t, on.latent.encode_image(batch["image"]), t)
    expected = loss_fn(on.latent.decode(data_estimate(z_t, velocity, t), (64, 64)), batch["mask"])
    torch.testing.assert_close(
        logs["estimate_loss"], float(expected.detach()), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(total_on, total_off + 2.0 * expected, rtol=1e-5, atol=1e-6)
    # Its gradient reaches the DiT but leaves the mask decoder's weights alone.
    decoder = list(getattr(on.latent, "mask_decoder", torch.nn.Sequential()).parameters())
    for detach in (True, False):
        on.zero_grad(set_to_none=True)
        estimate = data_estimate(
            z_t, on.velocity(z_t, on.latent.encode_image(batch["image"]), t), t
        )
        on.latent.decode(estimate, (64, 64), detach_weights=detach).square().mean().backward()
        assert any(p.grad is not None and p.grad.any() for p in on.dit.parameters())
        assert all((p.grad is None) == detach for p in decoder)


def test_registered_segdt_builds_with_its_resnet_encoder():
    model = build_network("segdt", in_channels=3, num_classes=1)
    assert type(model.latent.image_encoder).__name__ == "TimmImageEncoder"
    batch = make_batch(size=64, batch=1)
    loss, logs = model.compute_loss(batch, None)
    assert torch.isfinite(loss) and {"flow_loss", "recon_loss", "condition_loss"} <= set(logs)
    assert model.predict(batch["image"], steps=1).shape == (1, 1, 64, 64)


def synthetic_split(split, n, size=64):
    from segmentation.data.synthetic import SyntheticDermoscopy

    data = SyntheticDermoscopy(split=split, image_size=size, n_train=n, n_val=n, n_test=n)
    items = [data[i] for i in range(len(data))]
    return torch.stack([i["image"] for i in items]), torch.stack([i["mask"] for i in items])


def dice(logits, mask):
    pred, truth = logits[:, 0] > 0, mask > 0
    tp = (pred & truth).sum((1, 2)).float()
    total = (pred.sum((1, 2)) + truth.sum((1, 2))).float()
    return float(torch.where(total > 0, 2 * tp / total.clamp(min=1), 1.0).mean())


@pytest.mark.slow  # 150 training steps of the tiny SegDT: 35-80 s on a shared 2-core CPU
def test_trained_segdt_uses_the_image():
    """A tiny SegDT trained briefly on the embedded data must lose at least half of its Dice when
    the images are shuffled against their masks (before the condition loss it lost a third:
    Dice 0.467 -> 0.310 with this budget, because the DiT denoised the mask latent from z_t
    alone and ignored the image)."""
    torch.manual_seed(0)
    images, masks = synthetic_split("train", 256)
    val_images, val_masks = synthetic_split("val", 64)
    model = build_network("segdt_learned_tiny", in_channels=3, num_classes=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    loss_fn = BCEDiceLoss()
    order = torch.Generator().manual_seed(0)
    for _ in range(150):
        pick = torch.randint(0, len(images), (16,), generator=order)
        loss, _ = model.compute_loss({"image": images[pick], "mask": masks[pick]}, loss_fn)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        matched = dice(model.predict(val_images, steps=4), val_masks)
        shuffled = dice(model.predict(val_images.roll(1, dims=0), steps=4), val_masks)
    assert matched > 0.35, f"the tiny SegDT did not learn (Dice {matched:.3f})"
    assert shuffled < 0.5 * matched, (
        f"Dice {matched:.3f} with the right images, {shuffled:.3f} with shuffled ones: the "
        "network ignores the image"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"autoencoder": "vae"}, "autoencoder='vae'.*'taesd', 'learned', 'none'"),
        ({"t_sampling": "cosine"}, "t_sampling='cosine'"),
        ({"sampler": "dpm"}, "sampler='dpm'"),
        ({"sample_steps": 0}, "sample_steps must be a positive integer"),
        ({"autoencoder": "none", "autoencoder_ckpt": "x.pt"}, "autoencoder_ckpt reuses"),
        ({"autoencoder": "taesd"}, "needs taesd_path"),
        ({"autoencoder": "taesd", "taesd_path": "x.pth", "num_classes": 2}, "binary masks"),
        ({"latent_downsample": 3}, "power of two"),
        ({"autoencoder": "none", "image_encoder": "conv"}, "image_encoder configures the learned"),
        ({"autoencoder": "none", "condition_weight": 1.0}, "condition_weight configures"),
        ({"condition_weight": -1.0}, "condition_weight must be >= 0"),
        ({"estimate_weight": -0.5}, "estimate_weight must be >= 0"),
        ({"image_encoder": "resnet18", "latent_downsample": 64}, "feature strides.*64"),
        ({"num_heads": 3}, "not divisible by num_heads 3"),
    ],
)
def test_constructor_errors(kwargs, message):
    kwargs = {"in_channels": 3, "num_classes": 1, **DIT_SIZES["tiny"], **kwargs}
    with pytest.raises(ValueError, match=message):
        SegDT(**kwargs)


def test_predict_argument_errors():
    model = build_network("segdt_tiny", in_channels=3, num_classes=1)
    image = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        model.predict(image, steps=-1)
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        model.predict(image, n_samples=0)
    with pytest.raises(ValueError, match="sampler='heun'"):
        model.predict(image, sampler="heun")


# --------------------------------------------------------------------------- DiT


def test_dit_zero_output_at_init_and_any_divisible_size():
    dit = DiT(in_channels=5, out_channels=4, patch_size=2, **DIT_SIZES["tiny"])
    out = dit(torch.randn(2, 5, 8, 12), torch.rand(2))
    assert out.shape == (2, 4, 8, 12) and not out.any()  # adaLN-Zero: zero output at init
    randomise_zero_init(dit)
    x = torch.randn(1, 5, 8, 8)
    assert not torch.allclose(dit(x, torch.tensor([0.2])), dit(x, torch.tensor([0.8])))
    with pytest.raises(ValueError, match="divisible by 2"):
        dit(torch.randn(1, 5, 7, 8), torch.rand(1))


# ------------------------------------------------------------------ TAESD (diffusers layout)


def diffusers_taesd_state_dict(latent_channels=4, seed=0):
    """A state dict written key by key in the diffusers ``AutoencoderTiny`` layout.

    EncoderTiny.layers: 0 conv(3, 64); 1 block; then three times [stride-2 conv without bias,
    3 blocks]; 14 conv(64, latent). DecoderTiny.layers: 0 conv(latent, 64); 1 ReLU; then three
    times [3 blocks, Upsample, conv without bias]; 17 block; 18 conv(64, 3). Blocks hold
    conv.0/conv.2/conv.4.
    """
    gen = torch.Generator().manual_seed(seed)
    sd = {}

    def conv(prefix, cin, cout, bias=True):
        sd[f"{prefix}.weight"] = (
            torch.randn(cout, cin, 3, 3, generator=gen) * (2 / (9 * cin)) ** 0.5
        )
        if bias:
            sd[f"{prefix}.bias"] = torch.randn(cout, generator=gen) * 0.01

    def block(prefix):
        for j in (0, 2, 4):
            conv(f"{prefix}.conv.{j}", 64, 64)

    conv("encoder.layers.0", 3, 64)
    block("encoder.layers.1")
    i = 2
    for _ in range(3):
        conv(f"encoder.layers.{i}", 64, 64, bias=False)
        for k in range(1, 4):
            block(f"encoder.layers.{i + k}")
        i += 4
    conv(f"encoder.layers.{i}", 64, latent_channels)
    conv("decoder.layers.0", latent_channels, 64)
    i = 2
    for _ in range(3):
        for k in range(3):
            block(f"decoder.layers.{i + k}")
        conv(f"decoder.layers.{i + 4}", 64, 64, bias=False)  # i + 3 is the Upsample
        i += 5
    block(f"decoder.layers.{i}")
    conv(f"decoder.layers.{i + 1}", 64, 3)
    return sd


def reference_taesd(sd, x, part):
    """TAESD forward written from the layout description, on the raw state dict."""

    def block(prefix, h):
        y = F.relu(
            F.conv2d(h, sd[f"{prefix}.conv.0.weight"], sd[f"{prefix}.conv.0.bias"], padding=1)
        )
        y = F.relu(
            F.conv2d(y, sd[f"{prefix}.conv.2.weight"], sd[f"{prefix}.conv.2.bias"], padding=1)
        )
        y = F.conv2d(y, sd[f"{prefix}.conv.4.weight"], sd[f"{prefix}.conv.4.bias"], padding=1)
        return F.relu(y + h)

    def conv(name, h, stride=1):
        return F.conv2d(h, sd[f"{name}.weight"], sd.get(f"{name}.bias"), stride, 1)

    if part == "encoder":
        h = block("encoder.layers.1", conv("encoder.layers.0", (x + 1) / 2))
        for i in (2, 6, 10):
            h = conv(f"encoder.layers.{i}", h, stride=2)
            for k in range(1, 4):
                h = block(f"encoder.layers.{i + k}", h)
        return conv("encoder.layers.14", h)
    h = F.relu(conv("decoder.layers.0", torch.tanh(x / 3) * 3))
    for i in (2, 7, 12):
        for k in range(3):
            h = block(f"decoder.layers.{i + k}", h)
        h = conv(f"decoder.layers.{i + 4}", F.interpolate(h, scale_factor=2, mode="nearest"))
    return conv("decoder.layers.18", block("decoder.layers.17", h)) * 2 - 1


def test_taesd_loads_diffusers_layout(tmp_path):
    sd = diffusers_taesd_state_dict()
    torch.save(sd, tmp_path / "taesd.pth")
    taesd = TAESD(weights=tmp_path / "taesd.pth")
    assert set(taesd.state_dict()) == set(sd)
    assert sum(p.numel() for p in taesd.parameters()) == 2_445_063
    assert not any(p.requires_grad for p in taesd.parameters()) and not taesd.training
    assert not taesd.train().training, "a frozen TAESD must stay in eval mode"
    x = torch.rand(1, 3, 32, 40) * 2 - 1
    z = taesd.encode(x)
    assert z.shape == (1, 4, 4, 5)
    torch.testing.assert_close(z, reference_taesd(sd, x, "encoder"))
    torch.testing.assert_close(taesd.decode(z), reference_taesd(sd, z, "decoder"))


def test_taesd_wrong_files_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        TAESD(weights=tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="safetensors.*Convert"):
        TAESD(weights=tmp_path / "taesd.safetensors")
    # The original madebyollin files: an encoder-only nn.Sequential ("0.weight", "1.conv.0.weight").
    original = {
        k.removeprefix("encoder.layers."): v for k, v in diffusers_taesd_state_dict().items()
    }
    torch.save(original, tmp_path / "taesd_encoder.pth")
    with pytest.raises(RuntimeError, match="missing key.*unexpected key"):
        TAESD(weights=tmp_path / "taesd_encoder.pth")
    # TAEF1/TAESD3 have 16 latent channels.
    torch.save(diffusers_taesd_state_dict(latent_channels=16), tmp_path / "taef1.pth")
    with pytest.raises(RuntimeError, match="shape mismatch.*encoder.layers.14.weight"):
        TAESD(weights=tmp_path / "taef1.pth")


def test_segdt_taesd_shapes_and_oracle(tmp_path, monkeypatch):
    torch.save(diffusers_taesd_state_dict(), tmp_path / "taesd.pth")
    model = build_network(
        "segdt_taesd", in_channels=3, num_classes=1, taesd_path=tmp_path / "taesd.pth", depth=1
    )
    batch = make_batch()
    loss, logs = model.compute_loss(batch, None)
    assert torch.isfinite(loss) and set(logs) == {"flow_loss"}
    assert model(batch["image"]).shape == (2, 1, 64, 64)
    monkeypatch.setattr(model, "velocity", oracle(model, batch["mask"]))
    recovered = model.predict(batch["image"], steps=3)
    expected = model.latent.decode(model.latent.encode_mask(batch["mask"]), (64, 64))
    torch.testing.assert_close(recovered, expected, atol=1e-4, rtol=1e-4)
