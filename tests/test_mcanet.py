"""MCANet and its MSCAN encoder: contract, parameter counts, MCA semantics, pretrained loading."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from networks import MCANet, build_network
from networks.blocks.mscan import MSCAN, MSCAN_VARIANTS, load_mscan_pretrained, mscan_key_map
from networks.mcanet import MultiScaleCrossAxisAttention

TINY = ["mcanet_tiny"]


def _tiny(**kwargs) -> MCANet:
    torch.manual_seed(0)
    return build_network("mcanet_tiny", in_channels=3, num_classes=1, **kwargs)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("in_channels,num_classes", [(3, 1), (1, 2)])
def test_output_shape(name, size, in_channels, num_classes):
    net = build_network(name, in_channels=in_channels, num_classes=num_classes)
    out = net(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, num_classes, size, size)
    assert torch.isfinite(out).all()


def test_encoder_stage_shapes():
    encoder = MSCAN(embed_dims=(32, 32, 64, 64), depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2))
    features = encoder(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in features] == [
        (1, 32, 16, 24),
        (1, 32, 8, 12),
        (1, 64, 4, 6),
        (1, 64, 2, 3),
    ]


@pytest.mark.parametrize("name", TINY)
def test_every_parameter_gets_a_finite_gradient(name):
    torch.manual_seed(0)
    # No stochastic depth: a block dropped for the whole batch would rightly get no gradient.
    net = build_network(name, in_channels=3, num_classes=1, drop_path_rate=0.0)
    net(torch.randn(2, 3, 64, 64)).square().mean().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, f"{pname} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


def test_odd_size_is_padded_and_cropped():
    net = _tiny().eval()
    x = torch.randn(1, 3, 67, 45)
    with torch.no_grad():
        out = net(x)
        # Same as padding to 96x64 by hand and cropping the logits back.
        manual = net(F.pad(x, (0, 64 - 45, 0, 96 - 67)))[..., :67, :45]
    assert out.shape == (1, 1, 67, 45)
    torch.testing.assert_close(out, manual)


def test_multiple_of_32_is_not_padded():
    net = _tiny().eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        features = net.encoder(x)
        expected = F.interpolate(net.decoder(features), (64, 96), mode="bilinear")
        torch.testing.assert_close(net(x), expected)


def test_odd_size_without_padding_raises_with_padded_size():
    net = _tiny(pad_input=False)
    with pytest.raises(
        ValueError, match=r"divisible by 32, got 67x45; pad or resize the input to 96x64"
    ):
        net(torch.randn(1, 3, 67, 45))
    assert net(torch.randn(1, 3, 64, 32)).shape == (1, 1, 64, 32)


def test_save_load_round_trip(tmp_path):
    net = _tiny().eval()
    path = tmp_path / "mcanet.pt"
    torch.save(net.state_dict(), path)
    torch.manual_seed(123)
    fresh = build_network("mcanet_tiny", in_channels=3, num_classes=1).eval()
    fresh.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), net(x))


@pytest.mark.parametrize(
    "name,millions", [("mcanet_t", 4.05), ("mcanet_s", 14.00), ("mcanet_b", 26.83)]
)
def test_parameter_counts_match_official(name, millions):
    net = build_network(name, in_channels=3, num_classes=1)
    count = sum(p.numel() for p in net.parameters()) / 1e6
    assert abs(count - millions) / millions < 0.02, f"{name}: {count:.3f} M vs {millions} M"


def test_variants_use_the_segnext_configs():
    net = build_network("mcanet_s", in_channels=3, num_classes=1)
    assert [len(s) for s in net.encoder.stages] == list(MSCAN_VARIANTS["s"]["depths"])
    assert net.encoder.embed_dims == (64, 128, 320, 512)
    assert net.encoder.stages[0][0].mlp.fc1.out_channels == 8 * 64
    # Stochastic depth grows linearly to 0.1 at the last block; the first block has none.
    assert net.encoder.stages[3][-1].drop_path.drop_prob == pytest.approx(0.1)
    assert isinstance(net.encoder.stages[0][0].drop_path, torch.nn.Identity)


def _mca_reference(block: MultiScaleCrossAxisAttention, x: torch.Tensor) -> torch.Tensor:
    """The MCA block written out with einsum: rows/columns of each head are tokens."""
    heads = block.num_heads
    y = block.norm(x)
    hor = block.proj(sum(conv(y) for conv in block.horizontal))
    ver = block.proj(sum(conv(y) for conv in block.vertical))

    def split(t):  # (B, heads, c, H, W)
        return t.view(t.shape[0], heads, -1, *t.shape[-2:])

    def attend(q, kv, axis):
        q, kv = split(q), split(kv)
        dims = (2, 4) if axis == "row" else (2, 3)
        qn = q / q.norm(dim=dims, keepdim=True)
        kn = kv / kv.norm(dim=dims, keepdim=True)
        if axis == "row":  # token i = row i, feature (c, w)
            attn = torch.einsum("bnciw,bncjw->bnij", qn, kn).softmax(-1)
            out = torch.einsum("bnij,bncjw->bnciw", attn, kv)
        else:  # token i = column i, feature (c, h)
            attn = torch.einsum("bnchi,bnchj->bnij", qn, kn).softmax(-1)
            out = torch.einsum("bnij,bnchj->bnchi", attn, kv)
        return (out + qn).flatten(1, 2)

    rows = attend(ver, hor, "row")  # query from the vertical path
    cols = attend(hor, ver, "col")  # query from the horizontal path
    return block.proj(rows) + block.proj(cols) + x


def test_mca_block_matches_written_out_reference():
    torch.manual_seed(0)
    block = MultiScaleCrossAxisAttention(16, num_heads=4)
    x = torch.randn(2, 16, 6, 10)
    torch.testing.assert_close(block(x), _mca_reference(block, x))


def test_mca_block_validates_heads_and_backend():
    with pytest.raises(ValueError, match="divisible by num_heads=8"):
        MultiScaleCrossAxisAttention(30, num_heads=8)
    block = MultiScaleCrossAxisAttention(16, num_heads=4, attention_backend="nonsense")
    with pytest.raises(ValueError, match="nonsense"):
        block(torch.randn(1, 16, 4, 4))


def test_mscan_rejects_wrong_stage_count():
    with pytest.raises(ValueError, match="4 stages"):
        MSCAN(embed_dims=(32, 64, 128), depths=(1, 1, 1), mlp_ratios=(4, 4, 4))


# --- pretrained loading from the OpenMMLab MSCAN layout -----------------------------------------


def _official_keys(depths) -> list[str]:
    """Key names of mmsegmentation's MSCAN state dict, written out independently of our key map."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    wb = ["weight", "bias"]
    keys = [f"patch_embed1.proj.{i}.{p}" for i in (0, 3) for p in wb]
    keys += [f"patch_embed1.proj.{i}.{p}" for i in (1, 4) for p in bn]
    for s in (2, 3, 4):
        keys += [f"patch_embed{s}.proj.{p}" for p in wb] + [f"patch_embed{s}.norm.{p}" for p in bn]
    convs = ["proj_1", "proj_2"] + [
        f"spatial_gating_unit.{c}"
        for c in (
            "conv0",
            "conv0_1",
            "conv0_2",
            "conv1_1",
            "conv1_2",
            "conv2_1",
            "conv2_2",
            "conv3",
        )
    ]
    for s, depth in enumerate(depths, start=1):
        for j in range(depth):
            pre = f"block{s}.{j}."
            keys += [pre + f"norm{n}.{p}" for n in (1, 2) for p in bn]
            keys += [pre + f"attn.{c}.{p}" for c in convs for p in wb]
            keys += [pre + f"mlp.{m}.{p}" for m in ("fc1", "dwconv.dwconv", "fc2") for p in wb]
            keys += [pre + "layer_scale_1", pre + "layer_scale_2"]
        keys += [f"norm{s}.{p}" for p in wb]
    return keys


def _write_official_checkpoint(encoder: MSCAN, path, depths) -> dict[str, torch.Tensor]:
    own = encoder.state_dict()
    torch.manual_seed(7)
    state = {}
    for key in _official_keys(depths):
        target = own[next(iter(mscan_key_map({key: 0})))]  # KeyError if the map misses a key
        state[key] = target.clone() + 1 if target.dtype == torch.long else torch.randn_like(target)
    state["head.weight"] = torch.randn(1000, encoder.embed_dims[-1])
    state["head.bias"] = torch.randn(1000)
    torch.save({"meta": {}, "state_dict": state}, path)
    return state


def test_load_mscan_pretrained_official_layout(tmp_path):
    net = _tiny()
    depths = (1, 1, 1, 1)
    path = tmp_path / "mscan_tiny.pth"
    state = _write_official_checkpoint(net.encoder, path, depths)
    assert len(_official_keys(depths)) == len(net.encoder.state_dict())

    missing, unexpected = load_mscan_pretrained(net, path)
    assert missing == []
    assert sorted(unexpected) == ["head.bias", "head.weight"]
    enc = net.encoder
    pairs = {
        "patch_embed1.proj.3.weight": enc.patch_embeds[0][3].weight,
        "patch_embed2.norm.running_var": enc.patch_embeds[1][1].running_var,
        "block1.0.attn.spatial_gating_unit.conv0.weight": enc.stages[0][0].attn.gate.local.weight,
        "block2.0.attn.spatial_gating_unit.conv1_2.weight": enc.stages[1][0]
        .attn.gate.strips[1][1]
        .weight,
        "block3.0.attn.spatial_gating_unit.conv3.bias": enc.stages[2][0].attn.gate.mix.bias,
        "block4.0.attn.proj_1.weight": enc.stages[3][0].attn.proj_in.weight,
        "block4.0.mlp.dwconv.dwconv.weight": enc.stages[3][0].mlp.dwconv.weight,
        "block1.0.layer_scale_2": enc.stages[0][0].ls2.gamma,
        "norm3.weight": enc.norms[2].weight,
    }
    for key, tensor in pairs.items():
        torch.testing.assert_close(tensor, state[key], msg=f"{key} landed in the wrong place")


def test_pretrained_constructor_argument_and_backbone_prefix(tmp_path):
    source = _tiny()
    path = tmp_path / "mscan_tiny.pth"
    state = _write_official_checkpoint(source.encoder, path, (1, 1, 1, 1))
    prefixed = tmp_path / "segmentor.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in state.items()}}, prefixed)
    for file in (path, prefixed):
        net = _tiny(pretrained=str(file))
        torch.testing.assert_close(
            net.encoder.stages[0][0].attn.proj_out.weight, state["block1.0.attn.proj_2.weight"]
        )


def test_load_mscan_pretrained_errors(tmp_path):
    net = _tiny()
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_mscan_pretrained(net, tmp_path / "absent.pth")
    with pytest.raises(TypeError, match="MSCAN `.encoder`"):
        load_mscan_pretrained(torch.nn.Linear(2, 2), tmp_path / "absent.pth")
    # A checkpoint of another variant (MSCAN-T widths) must not load silently.
    other = tmp_path / "mscan_t.pth"
    _write_official_checkpoint(MSCAN(**MSCAN_VARIANTS["t"]), other, MSCAN_VARIANTS["t"]["depths"])
    with pytest.raises(RuntimeError, match="shape mismatch"):
        load_mscan_pretrained(net, other)


def test_param_groups_follow_the_paper_recipe():
    net = _tiny()
    groups = net.param_groups(6.0e-5)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    decoder = {id(p) for p in net.decoder.parameters()}
    head = [g for g in groups if g.get("lr") == pytest.approx(6.0e-4)]
    assert len(head) == 1 and {id(p) for p in head[0]["params"]} == decoder
    no_decay = {id(p) for g in groups if g.get("weight_decay") == 0.0 for p in g["params"]}
    block = net.encoder.stages[0][0]
    assert id(block.norm1.weight) in no_decay and id(net.encoder.norms[3].bias) in no_decay
    assert id(block.attn.proj_in.weight) not in no_decay
    optimizer = torch.optim.AdamW(groups, lr=6.0e-5, weight_decay=0.01)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([6.0e-5, 6.0e-5, 6.0e-4])
