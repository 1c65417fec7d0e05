"""Swin blocks, SwinUNet and AttSwinUNet: shapes, padding, gradients, masks, counts, weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.layers import resize_rel_pos_bias_table

from networks import NETWORKS, AttSwinUNet, SwinUNet, build_network
from networks.att_swinunet import SKIP_ATTENTION_MODES, CrossContextualSkip
from networks.blocks.swin import (
    PatchMerging,
    SwinBlock,
    WindowAttention,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from networks.swin_unet import load_swin_pretrained

TINY = ["swin_unet_tiny", "att_swinunet_tiny"]


def tiny(name: str = "att_swinunet_tiny", seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return build_network(name, in_channels=3, num_classes=1, **kwargs)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- shapes and padding


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("size,window", [(128, 4), (224, 7), (256, 8)])
def test_output_shape(name, size, window):
    net = tiny(name, window_size=window).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, size, size))
    assert out.shape == (1, 1, size, size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", TINY)
def test_odd_size_is_padded_and_cropped(name):
    # documented policy: pad bottom/right with zeros to a multiple of 32, crop the logits back
    net = tiny(name).eval()
    x = torch.randn(2, 3, 70, 45)
    with torch.no_grad():
        out = net(x)
        padded = net(F.pad(x, (0, 64 - 45, 0, 96 - 70)))
    assert out.shape == (2, 1, 70, 45)
    torch.testing.assert_close(out, padded[..., :70, :45])


def test_non_image_input_raises():
    with pytest.raises(ValueError, match=r"expects a \[B, C, H, W\] tensor"):
        tiny()(torch.randn(3, 64, 64))


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize(
    "skip_attention,cls_mode",
    [(mode, "broadcast") for mode in SKIP_ATTENTION_MODES] + [("cross_spatial", "first_token")],
)
def test_every_parameter_gets_a_gradient(skip_attention, cls_mode):
    net = tiny(skip_attention=skip_attention, cls_mode=cls_mode, drop_path_rate=0.0)
    net(torch.randn(2, 3, 64, 64)).square().mean().backward()
    offenders = [
        name
        for name, p in net.named_parameters()
        if p.requires_grad
        and (p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().sum() > 0)
    ]
    assert not offenders, f"parameters without a finite non-zero gradient: {offenders}"


def test_swin_unet_tiny_every_parameter_gets_a_gradient():
    net = tiny("swin_unet_tiny", drop_path_rate=0.0)
    net(torch.randn(1, 3, 96, 64)).square().mean().backward()
    offenders = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not offenders, f"parameters without a gradient: {offenders}"


# ----------------------------------------------------------------------------- windows and masks


def test_window_partition_round_trip():
    x = torch.randn(2, 8, 12, 5)
    windows = window_partition(x, 4)
    assert windows.shape == (2 * 2 * 3, 16, 5)
    # window 1 of image 0 is rows 0-3, columns 4-7, row-major
    torch.testing.assert_close(windows[1], x[0, 0:4, 4:8].reshape(16, 5))
    torch.testing.assert_close(window_reverse(windows, 4, 8, 12), x)


def _expected_allowed(height, width, ws, shift):
    """Allowed (query, key) pairs per window from first principles: both tokens real and their
    displacement unchanged by the cyclic shift (no wrap-around). Returns (allowed, real_query)."""
    hp, wp = height + (-height % ws), width + (-width % ws)
    rows, cols = torch.meshgrid(torch.arange(hp), torch.arange(wp), indexing="ij")
    orig_r, orig_c = (rows + shift) % hp, (cols + shift) % wp  # shifted position -> original
    grid = torch.stack([rows, cols, orig_r, orig_c], -1)[None]  # (1, Hp, Wp, 4)
    win = window_partition(grid, ws)  # (nW, N, 4)
    r, c, o_r, o_c = win.unbind(-1)
    same_shift = ((r[:, :, None] - r[:, None]) == (o_r[:, :, None] - o_r[:, None])) & (
        (c[:, :, None] - c[:, None]) == (o_c[:, :, None] - o_c[:, None])
    )
    real = (o_r < height) & (o_c < width)  # (nW, N)
    allowed = same_shift & real[:, :, None] & real[:, None, :]
    return allowed, real


@pytest.mark.parametrize(
    "height,width,ws,shift",
    [(8, 8, 4, 2), (14, 14, 7, 3), (6, 10, 4, 2), (5, 9, 4, 2), (13, 11, 7, 3)],
)
def test_shift_mask_blocks_exactly_cross_region_pairs(height, width, ws, shift):
    mask = shifted_window_mask(height, width, ws, shift, torch.device("cpu"))
    allowed, real = _expected_allowed(height, width, ws, shift)
    assert set(mask.unique().tolist()) == {0.0, -100.0}
    real_pairs = real[:, :, None].expand_as(allowed)
    # for real queries the mask is exactly the first-principles rule; padded queries are discarded
    assert torch.equal((mask == 0)[real_pairs], allowed[real_pairs])
    assert (mask == 0).any(-1).all(), "a query with every key masked"


def test_padding_mask_without_shift_and_cache():
    assert shifted_window_mask(8, 8, 4, 0, torch.device("cpu")) is None
    mask = shifted_window_mask(6, 8, 4, 0, torch.device("cpu"))
    allowed, real = _expected_allowed(6, 8, 4, 0)
    real_pairs = real[:, :, None].expand_as(allowed)
    assert torch.equal((mask == 0)[real_pairs], allowed[real_pairs])
    assert shifted_window_mask(6, 8, 4, 0, torch.device("cpu")) is mask  # cached


def test_window_attention_ignores_padded_tokens():
    # a 3x3 map padded into one 4x4 window must equal attention over the 9 real tokens alone
    torch.manual_seed(0)
    attn = WindowAttention(dim=8, num_heads=2, window_size=4, attention_backend="reference")
    tokens = torch.randn(1, 3, 3, 8)
    padded = F.pad(tokens, (0, 0, 0, 1, 0, 1)).reshape(1, 16, 8)
    mask = shifted_window_mask(3, 3, 4, 0, torch.device("cpu"))
    out = attn(padded, mask).reshape(1, 4, 4, 8)[:, :3, :3]
    real = torch.tensor([i * 4 + j for i in range(3) for j in range(3)])
    q, k, v = attn.qkv(tokens.reshape(1, 9, 8)).reshape(1, 9, 3, 2, 4).permute(2, 0, 3, 1, 4)
    logits = (q * attn.scale) @ k.transpose(-2, -1) + attn.relative_position_bias()[:, real][
        ..., real
    ]
    expected = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(1, 9, 8))
    torch.testing.assert_close(out.reshape(1, 9, 8), expected)


def test_shift_disabled_when_map_fits_one_window():
    torch.manual_seed(0)
    shifted = SwinBlock(dim=8, num_heads=2, window_size=4, shift_size=2).eval()
    plain = SwinBlock(dim=8, num_heads=2, window_size=4, shift_size=0).eval()
    plain.load_state_dict(shifted.state_dict())
    small, large = torch.randn(1, 4, 3, 8), torch.randn(1, 8, 8, 8)
    torch.testing.assert_close(shifted(small), plain(small))
    assert not torch.allclose(shifted(large), plain(large))


def test_spatial_branch_adds_encoder_attention_times_values():
    torch.manual_seed(0)
    attn = WindowAttention(dim=8, num_heads=2, window_size=2, attention_backend="reference")
    x = torch.randn(3, 4, 8)
    enc = torch.softmax(torch.randn(3, 2, 4, 4), -1)
    plain, own = attn(x, return_attn=True)
    v = attn.qkv(x).reshape(3, 4, 3, 2, 4)[:, :, 2].transpose(1, 2)  # (B*nW, h, N, d)
    # proj is linear: proj(o + A_enc v) = proj(o) + (A_enc v) W^T
    expected = plain + (enc @ v).transpose(1, 2).reshape(3, 4, 8) @ attn.proj.weight.T
    torch.testing.assert_close(attn(x, encoder_attn=enc), expected)
    assert own.shape == (3, 2, 4, 4)
    with pytest.raises(ValueError, match="does not match this block's windows"):
        attn(x, encoder_attn=enc[:, :, :2])


def test_cls_modes():
    torch.manual_seed(0)
    dec, enc = torch.randn(2, 10, 16), torch.randn(2, 10, 16)
    first = CrossContextualSkip(dim=16, num_heads=2, head_dim=8, cls_mode="first_token")
    new_dec, new_enc = first(dec, enc)
    torch.testing.assert_close(new_dec[:, 1:], dec[:, 1:])
    assert not torch.allclose(new_dec[:, 0], dec[:, 0])
    broadcast = CrossContextualSkip(dim=16, num_heads=2, head_dim=8, cls_mode="broadcast")
    delta = broadcast(dec, enc)[0] - dec
    torch.testing.assert_close(delta, delta[:, :1].expand_as(delta))  # same update on every token
    assert delta.abs().sum() > 0


# ----------------------------------------------------------------------------- modes and weights


def test_modes_give_different_outputs_from_same_weights():
    source = tiny(skip_attention="cross_spatial").eval()
    x = torch.randn(1, 3, 64, 64)
    outputs = {}
    for mode in SKIP_ATTENTION_MODES:
        net = tiny(skip_attention=mode, seed=1).eval()
        result = net.load_state_dict(source.state_dict(), strict=False)
        assert not result.missing_keys, result.missing_keys
        with torch.no_grad():
            outputs[mode] = net(x)
    for i, a in enumerate(SKIP_ATTENTION_MODES):
        for b in SKIP_ATTENTION_MODES[i + 1 :]:
            assert not torch.allclose(outputs[a], outputs[b], atol=1e-5), f"{a} == {b}"


@pytest.mark.parametrize("name", TINY)
def test_save_load_same_output(name, tmp_path):
    net = tiny(name).eval()
    torch.save(net.state_dict(), tmp_path / "w.pth")
    fresh = tiny(name, seed=123).eval()
    fresh.load_state_dict(torch.load(tmp_path / "w.pth", weights_only=True))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), net(x))


def test_attention_backend_is_passed_through():
    net = tiny(attention_backend="reference").eval()
    for module in net.modules():
        if hasattr(module, "attention_backend"):
            assert module.attention_backend == "reference"
    auto = tiny().eval()
    auto.load_state_dict(net.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(auto(x), net(x), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="backend"):
        tiny(attention_backend="no_such_backend")(x)


def test_parameter_counts():
    # Swin-Unet lite: 27.17 M for 1 class; Att-SwinU-Net cross on 3 skips: 32.69 M (official code)
    assert abs(n_params(SwinUNet(in_channels=3, num_classes=1)) / 27.17e6 - 1) < 0.01
    att = AttSwinUNet(in_channels=3, num_classes=1, skip_attention="cross")
    assert abs(n_params(att) / 32.69e6 - 1) < 0.03
    spatial = AttSwinUNet(in_channels=3, num_classes=1, skip_attention="spatial")
    assert n_params(spatial) == n_params(SwinUNet(in_channels=3, num_classes=1))
    one_skip = AttSwinUNet(in_channels=3, num_classes=1, cross_attention_skips=1)
    assert n_params(one_skip) - n_params(spatial) == 4 * 2051 * 384  # 2 layers x 2 directions


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"skip_attention": "crossx"}, "skip_attention must be one of"),
        ({"cls_mode": "mean"}, "cls_mode must be one of"),
        ({"cross_attention_skips": 4}, "cross_attention_skips must be between 0 and 3"),
        ({"depths": (2, 2, 2)}, "one depth and one head count per stage"),
        ({"num_heads": (1, 5, 4, 8)}, r"not divisible by num_heads\[1\]=5"),
    ],
)
def test_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)


def test_registry_variants():
    assert {"swin_unet", "swin_unet_tiny", "att_swinunet", "att_swinunet_tiny"} <= set(
        NETWORKS.names()
    )
    assert tiny("att_swinunet_tiny").skip_attention == "cross_spatial"


# ----------------------------------------------------------------------------- pretrained weights


def test_patch_merging_uses_the_official_channel_order():
    # ImageNet reduction weights expect [(even row, even col), (odd, even), (even, odd), (odd, odd)]
    merge = PatchMerging(dim=3, norm_layer=torch.nn.Identity)
    x = torch.randn(2, 4, 6, 3)
    expected = torch.cat(
        [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1
    )
    torch.testing.assert_close(merge(x), merge.reduction(expected))
    with pytest.raises(ValueError, match="needs an even feature map"):
        merge(torch.randn(1, 3, 4, 3))


def official_swin_state(embed_dim, depths, num_heads, window, in_chans=3, classes=1000, seed=0):
    """Random tensors in the microsoft/Swin-Transformer checkpoint layout (names and shapes)."""
    g = torch.Generator().manual_seed(seed)
    state = {}

    def put(name, *shape):
        state[name] = torch.randn(*shape, generator=g)

    put("patch_embed.proj.weight", embed_dim, in_chans, 4, 4)
    put("patch_embed.proj.bias", embed_dim)
    put("patch_embed.norm.weight", embed_dim)
    put("patch_embed.norm.bias", embed_dim)
    n = window * window
    for s, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
        d = embed_dim * 2**s
        for j in range(depth):
            p = f"layers.{s}.blocks.{j}."
            for norm in ("norm1", "norm2"):
                put(p + f"{norm}.weight", d)
                put(p + f"{norm}.bias", d)
            put(p + "attn.relative_position_bias_table", (2 * window - 1) ** 2, heads)
            state[p + "attn.relative_position_index"] = torch.randint(0, 9, (n, n), generator=g)
            put(p + "attn.qkv.weight", 3 * d, d)
            put(p + "attn.qkv.bias", 3 * d)
            put(p + "attn.proj.weight", d, d)
            put(p + "attn.proj.bias", d)
            put(p + "mlp.fc1.weight", 4 * d, d)
            put(p + "mlp.fc1.bias", 4 * d)
            put(p + "mlp.fc2.weight", d, 4 * d)
            put(p + "mlp.fc2.bias", d)
            if j % 2:
                put(p + "attn_mask", 4, n, n)
        if s < len(depths) - 1:
            put(f"layers.{s}.downsample.reduction.weight", 2 * d, 4 * d)
            put(f"layers.{s}.downsample.norm.weight", 4 * d)
            put(f"layers.{s}.downsample.norm.bias", 4 * d)
    put("norm.weight", embed_dim * 2 ** (len(depths) - 1))
    put("norm.bias", embed_dim * 2 ** (len(depths) - 1))
    put("head.weight", classes, embed_dim * 2 ** (len(depths) - 1))
    put("head.bias", classes)
    return state


def test_pretrained_lands_in_encoder_and_mirrored_decoder(tmp_path):
    # tiny dims, Swin-T structure: stage 2 holds 6 blocks in the file but 2 in the model
    state = official_swin_state(24, (2, 2, 6, 2), (1, 2, 4, 8), window=7)
    path = tmp_path / "swin_tiny_layout.pth"
    torch.save({"model": state}, path)
    net = tiny(window_size=7)
    missing, unexpected = load_swin_pretrained(net, path)
    own = net.state_dict()
    for key in (
        "patch_embed.proj.weight",
        "layers.0.blocks.1.attn.relative_position_bias_table",
        "layers.1.downsample.reduction.weight",
        "layers.3.blocks.1.mlp.fc2.weight",
        "norm.weight",
    ):
        torch.testing.assert_close(own[key], state[key], msg=key)
    for s, position in ((0, 3), (1, 2), (2, 1)):
        for j in (0, 1):
            for leaf in ("attn.qkv.weight", "norm1.bias", "attn.relative_position_bias_table"):
                mirrored = f"layers_up.{position}.blocks.{j}.{leaf}"
                torch.testing.assert_close(own[mirrored], state[f"layers.{s}.blocks.{j}.{leaf}"])
    assert "output.weight" in missing and "concat_back_dim.1.weight" in missing
    assert any(k.startswith("cross_attention.1.") for k in missing)
    assert "layers_up.1.upsample.expand.weight" in missing
    assert not any(k.startswith(("layers.", "patch_embed.", "norm.")) for k in missing), missing
    assert "head.weight" in unexpected and "layers.2.blocks.5.mlp.fc1.weight" in unexpected


def test_pretrained_adapts_window_and_channels(tmp_path):
    state = official_swin_state(24, (2, 2, 2, 2), (1, 2, 4, 8), window=7)
    path = tmp_path / "w7.pth"
    torch.save({"model": state}, path)
    net = build_network(
        "swin_unet_tiny", in_channels=1, num_classes=2, window_size=4, pretrained=str(path)
    )
    key = "layers.1.blocks.0.attn.relative_position_bias_table"
    expected = resize_rel_pos_bias_table(state[key], (4, 4), (49, 2))
    torch.testing.assert_close(net.state_dict()[key], expected)
    torch.testing.assert_close(
        net.state_dict()["patch_embed.proj.weight"],
        state["patch_embed.proj.weight"].sum(1, keepdim=True),
    )
    assert net(torch.randn(1, 1, 64, 64)).shape == (1, 2, 64, 64)


def test_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_swin_pretrained(tiny(), tmp_path / "absent.pth")
    torch.save({"model": {"backbone.stem.weight": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(RuntimeError, match="missing key"):
        load_swin_pretrained(tiny(), tmp_path / "other.pth")


def test_pretrained_full_swin_t_layout(tmp_path):
    state = official_swin_state(96, (2, 2, 6, 2), (3, 6, 12, 24), window=7)
    torch.save({"model": state}, tmp_path / "swin_tiny_patch4_window7_224.pth")
    net = AttSwinUNet(
        in_channels=3, num_classes=1, pretrained=tmp_path / "swin_tiny_patch4_window7_224.pth"
    )
    torch.testing.assert_close(
        net.state_dict()["layers_up.3.blocks.1.attn.qkv.weight"],
        state["layers.0.blocks.1.attn.qkv.weight"],
    )


@pytest.mark.slow
def test_swin_unet_macs_at_224():
    from torch.utils.flop_counter import FlopCounterMode

    net = SwinUNet(in_channels=3, num_classes=1, attention_backend="reference").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.randn(1, 3, 224, 224))
    gmac = counter.get_total_flops() / 2e9
    assert 5.9 < gmac < 6.3, gmac  # 6.07 measured; official 6.13 (its counter adds norms/softmax)
