"""Registry-generated contract tests: every ``*_tiny`` network (timm style).

A new network gets these for free once its tiny variant is registered: logits of the input size,
a finite gradient for every trainable parameter, and save -> load -> same output.
"""

import pytest
import torch

import networks

TINY = [name for name in networks.list_networks() if name.endswith("_tiny")]
SIZE = 128


def build(name, **kwargs):
    torch.manual_seed(0)
    return networks.build_network(name, in_channels=3, num_classes=1, **kwargs)


def batch(size=SIZE):
    gen = torch.Generator().manual_seed(0)
    mask = torch.zeros(2, size, size, dtype=torch.long)
    mask[:, size // 4 : size // 2, size // 4 : 3 * size // 4] = 1
    return {"image": torch.randn(2, 3, size, size, generator=gen), "mask": mask,
            "id": ["a", "b"], "meta": [{}, {}]}  # fmt: skip


def loss_fn(logits, mask):
    return torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], mask.float())


def test_every_family_has_a_tiny_variant():
    families = {type(build(name)).__name__ for name in TINY}
    assert {"UNet", "SMPUNet", "SwinUNet", "AttSwinUNet", "MCANet", "ISCF", "TransDAE", "SegDT",
            "SAMAdapter"} <= families  # fmt: skip


@pytest.mark.parametrize("name", TINY)
def test_logits_at_input_size(name):
    model = build(name).eval()
    with torch.no_grad():
        out = model(batch()["image"])
    assert out.shape == (2, 1, SIZE, SIZE), f"{name}: {tuple(out.shape)}"
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", TINY)
def test_every_trainable_parameter_gets_a_finite_gradient(name):
    model = build(name).train()
    data = batch()
    if hasattr(model, "compute_loss"):
        loss, _ = model.compute_loss(data, loss_fn)
    else:
        loss = loss_fn(model(data["image"]), data["mask"])
    loss.backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}: {pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"


@pytest.mark.parametrize("name", TINY)
def test_save_load_same_output(name, tmp_path):
    model = build(name).eval()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    torch.manual_seed(1)  # a different initialisation, then overwritten by the file
    other = networks.build_network(name, in_channels=3, num_classes=1).eval()
    other.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    x = batch()["image"]
    with torch.no_grad():
        assert torch.equal(model(x), other(x)), name


def test_unknown_name_and_argument_errors():
    with pytest.raises(KeyError, match="(?i)did you mean 'unet_tiny'"):
        networks.build_network("unet_tinny", in_channels=3, num_classes=1)
    with pytest.raises(
        TypeError, match=r"unknown argument\(s\) 'base_widht' \(did you mean 'base_width'"
    ):
        networks.build_network("unet", in_channels=3, num_classes=1, base_widht=8)
