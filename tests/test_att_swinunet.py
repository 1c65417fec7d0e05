"""Att-SwinU-Net against the released code (NITR098/AttSwinUNet) and its spatial-fusion options.

The reference below is written from the released modules' definitions in plain tensor operations
(``SwinTransformerBlock``, ``PatchMerging``, ``PatchExpand``, ``FinalPatchExpand_X4``,
``CrossTransformer`` with lucidrains' ``PreNorm``), reading a state dict in the released key layout;
it shares no code with ``networks``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from networks import build_network
from networks.att_swinunet import SPATIAL_FUSIONS, load_released_weights, released_key_map

EMBED, DEPTHS, HEADS, WINDOW, CROSS_HEADS, CROSS_DIM = 24, (2, 2, 2, 2), (1, 2, 4, 8), 4, 2, 16


def released_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors named and shaped as the released ``SwinAttentionUnet`` (crossvittoken)."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def put(name, *shape, scale=0.2):
        state[name] = torch.randn(*shape, generator=g) * scale

    def ln(name, dim):
        put(f"{name}.weight", dim)
        state[f"{name}.weight"] += 1.0
        put(f"{name}.bias", dim, scale=0.05)

    def linear(name, i, o, bias=True):
        put(f"{name}.weight", o, i, scale=i**-0.5)
        if bias:
            put(f"{name}.bias", o, scale=0.05)

    def blocks(prefix, dim, depth, heads):
        for j in range(depth):
            b = f"{prefix}.blocks.{j}"
            ln(f"{b}.norm1", dim)
            put(f"{b}.attn.relative_position_bias_table", (2 * WINDOW - 1) ** 2, heads)
            state[f"{b}.attn.relative_position_index"] = torch.zeros(WINDOW**2, WINDOW**2).long()
            linear(f"{b}.attn.qkv", dim, 3 * dim)
            linear(f"{b}.attn.proj", dim, dim)
            ln(f"{b}.norm2", dim)
            linear(f"{b}.mlp.fc1", dim, 4 * dim)
            linear(f"{b}.mlp.fc2", 4 * dim, dim)

    for top in ("patch_embed", "encoder.patch_embed"):  # the top-level copy is unused
        put(f"{top}.proj.weight", EMBED, 3, 4, 4, scale=0.3)
        put(f"{top}.proj.bias", EMBED, scale=0.05)
        ln(f"{top}.norm", EMBED)
    dims = [EMBED * 2**s for s in range(4)]
    for s in range(4):
        blocks(f"encoder.layers.{s}", dims[s], DEPTHS[s], HEADS[s])
        if s < 3:
            ln(f"encoder.layers.{s}.downsample.norm", 4 * dims[s])
            linear(f"encoder.layers.{s}.downsample.reduction", 4 * dims[s], 2 * dims[s], False)
    ln("encoder.norm", dims[3])
    linear("decoder.layers_up.0.expand", dims[3], 2 * dims[3], False)
    ln("decoder.layers_up.0.norm", dims[2])
    for i in range(1, 4):
        s = 3 - i
        blocks(f"decoder.layers_up.{i}", dims[s], DEPTHS[s], HEADS[s])
        if i < 3:
            linear(f"decoder.layers_up.{i}.upsample.expand", dims[s], 2 * dims[s], False)
            ln(f"decoder.layers_up.{i}.upsample.norm", dims[s] // 2)
        linear(f"decoder.concat_back_dim.{i}", 2 * dims[s], dims[s])
    for s in range(3):
        for layer in range(2):
            for direction in range(2):
                c = f"decoder.Crossvit_layer.{s}.layers.{layer}.{direction}.fn"
                ln(f"{c}.norm", dims[s])
                inner = CROSS_HEADS * CROSS_DIM
                linear(f"{c}.fn.to_q", dims[s], inner, False)
                linear(f"{c}.fn.to_kv", dims[s], 2 * inner, False)
                linear(f"{c}.fn.to_out.0", inner, dims[s])
    ln("decoder.norm", dims[3])  # unused by the released forward
    ln("decoder.norm_up", EMBED)
    linear("decoder.up.expand", EMBED, 16 * EMBED, False)
    ln("decoder.up.norm", EMBED)
    put("decoder.output.weight", 1, EMBED, 1, 1, scale=0.3)
    return state


# ---------------------------------------------------------------- reference (released semantics)


def _ln(p, name, x):
    return F.layer_norm(x, x.shape[-1:], p[f"{name}.weight"], p[f"{name}.bias"])


def _lin(p, name, x):
    return F.linear(x, p[f"{name}.weight"], p.get(f"{name}.bias"))


def _rel_index(ws):
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij"))
    flat = coords.flatten(1)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]  # (N, N)


def _windows(x, ws):  # (B, H, W, C) -> (B*nW, ws*ws, C)
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def _unwindows(x, ws, b, h, w):
    x = x.view(b, h // ws, w // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, -1)


def _shift_mask(h, w, ws, shift):
    img = torch.zeros(1, h, w, 1)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, hs, wsl, :] = cnt
            cnt += 1
    m = _windows(img, ws)[..., 0]
    diff = m[:, None, :] - m[:, :, None]
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def _block(p, name, x, h, w, heads, shift):
    ws = WINDOW
    if min(h, w) <= ws:  # released: one window, no shift
        shift, ws = 0, min(h, w)
    b, _, c = x.shape
    shortcut = x
    y = _ln(p, f"{name}.norm1", x).view(b, h, w, c)
    if shift:
        y = torch.roll(y, (-shift, -shift), (1, 2))
    win = _windows(y, ws)
    n = ws * ws
    qkv = (
        _lin(p, f"{name}.attn.qkv", win).reshape(-1, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    )
    q, k, v = qkv[0] * (c // heads) ** -0.5, qkv[1], qkv[2]
    attn = q @ k.transpose(-2, -1)
    table = p[f"{name}.attn.relative_position_bias_table"]
    attn = attn + table[_rel_index(ws).view(-1)].view(n, n, -1).permute(2, 0, 1)
    if shift:
        mask = _shift_mask(h, w, ws, shift)
        attn = attn.view(b, -1, heads, n, n) + mask[None, :, None]
        attn = attn.view(-1, heads, n, n)
    out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(-1, n, c)
    out = _unwindows(_lin(p, f"{name}.attn.proj", out), ws, b, h, w)
    if shift:
        out = torch.roll(out, (shift, shift), (1, 2))
    x = shortcut + out.reshape(b, h * w, c)
    mlp = _lin(p, f"{name}.mlp.fc2", F.gelu(_lin(p, f"{name}.mlp.fc1", _ln(p, f"{name}.norm2", x))))
    return x + mlp


def _expand(p, name, x, h, w, scale):
    x = _lin(p, f"{name}.expand", x)
    b, _, c = x.shape
    x = x.view(b, h, w, scale, scale, c // scale**2).permute(0, 1, 3, 2, 4, 5)
    return _ln(p, f"{name}.norm", x.reshape(b, h * scale * w * scale, c // scale**2))


def _cross_attend(p, name, cls, context):
    """lucidrains' PreNorm(Attention)(cls, context=context, kv_include_self=True)."""
    x = _ln(p, f"{name}.norm", cls)  # PreNorm normalises only its input, the summary token
    kv_in = torch.cat([x, context], 1)
    q = _lin(p, f"{name}.fn.to_q", x)
    k, v = _lin(p, f"{name}.fn.to_kv", kv_in).chunk(2, -1)
    b = x.shape[0]
    q, k, v = (t.view(b, -1, CROSS_HEADS, CROSS_DIM).transpose(1, 2) for t in (q, k, v))
    out = ((q @ k.transpose(-2, -1)) * CROSS_DIM**-0.5).softmax(-1) @ v
    return _lin(
        p, f"{name}.fn.to_out.0", out.transpose(1, 2).reshape(b, -1, CROSS_HEADS * CROSS_DIM)
    )


def _cross_transformer(p, name, sm, lg):
    sm_cls, sm_patch = sm.mean(1, keepdim=True), sm[:, 1:]
    lg_cls, lg_patch = lg.mean(1, keepdim=True), lg[:, 1:]
    for layer in range(2):
        sm_cls = _cross_attend(p, f"{name}.layers.{layer}.0.fn", sm_cls, lg_patch) + sm_cls
        lg_cls = _cross_attend(p, f"{name}.layers.{layer}.1.fn", lg_cls, sm_patch) + lg_cls
    return torch.cat([sm_cls, sm_patch], 1), torch.cat([lg_cls, lg_patch], 1)


def released_forward(p, image):
    """``SwinAttentionUnet.forward`` with mode="crossvittoken", skip_num="3", attention="0"."""
    b, _, height, width = image.shape
    x = F.conv2d(image, p["encoder.patch_embed.proj.weight"], p["encoder.patch_embed.proj.bias"], 4)
    h, w = x.shape[-2:]
    x = _ln(p, "encoder.patch_embed.norm", x.flatten(2).transpose(1, 2))
    skips = []
    for s in range(4):
        skips.append(x)
        for j in range(DEPTHS[s]):
            x = _block(
                p, f"encoder.layers.{s}.blocks.{j}", x, h, w, HEADS[s], (j % 2) * WINDOW // 2
            )
        if s < 3:
            g = x.view(b, h, w, -1)
            g = torch.cat(
                [g[:, 0::2, 0::2], g[:, 1::2, 0::2], g[:, 0::2, 1::2], g[:, 1::2, 1::2]], -1
            )
            g = _ln(p, f"encoder.layers.{s}.downsample.norm", g.view(b, -1, g.shape[-1]))
            x = _lin(p, f"encoder.layers.{s}.downsample.reduction", g)
            h, w = h // 2, w // 2
    x = _ln(p, "encoder.norm", x)
    x = _expand(p, "decoder.layers_up.0", x, h, w, 2)
    h, w = 2 * h, 2 * w
    for i in range(1, 4):
        s = 3 - i
        a, c = _cross_transformer(p, f"decoder.Crossvit_layer.{s}", x, skips[s])
        x = _lin(p, f"decoder.concat_back_dim.{i}", torch.cat([a, c], -1))
        for j in range(DEPTHS[s]):
            x = _block(
                p, f"decoder.layers_up.{i}.blocks.{j}", x, h, w, HEADS[s], (j % 2) * WINDOW // 2
            )
        if i < 3:
            x = _expand(p, f"decoder.layers_up.{i}.upsample", x, h, w, 2)
            h, w = 2 * h, 2 * w
    x = _expand(p, "decoder.up", _ln(p, "decoder.norm_up", x), h, w, 4)
    x = x.view(b, 4 * h, 4 * w, -1).permute(0, 3, 1, 2)
    return F.conv2d(x, p["decoder.output.weight"])


def released_model():
    return build_network(
        "att_swinunet_released",
        in_channels=3,
        num_classes=1,
        embed_dim=EMBED,
        depths=DEPTHS,
        num_heads=HEADS,
        window_size=WINDOW,
        cross_heads=CROSS_HEADS,
        cross_head_dim=CROSS_DIM,
    ).eval()


def test_released_weights_reproduce_the_released_forward(tmp_path):
    state = released_state()
    # saved as the released notebook does
    torch.save({"model_weights": state, "val_loss": 0.25}, tmp_path / "released.pth")
    net = released_model()
    load_released_weights(net, tmp_path / "released.pth")  # strict: every key maps
    mapped = released_key_map(state)
    assert set(mapped) == set(net.state_dict())
    image = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = released_forward(state, image)
        out = net(image)
    assert expected.abs().mean() > 0.1  # a non-trivial comparison
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)
    # Normalising [summary, context] together (CrossViT, our default) is another function.
    sequence = build_network(
        "att_swinunet_released",
        in_channels=3,
        num_classes=1,
        embed_dim=EMBED,
        depths=DEPTHS,
        num_heads=HEADS,
        window_size=WINDOW,
        cross_heads=CROSS_HEADS,
        cross_head_dim=CROSS_DIM,
        cross_norm="sequence",
    ).eval()
    sequence.load_state_dict(mapped)
    with torch.no_grad():
        assert (sequence(image) - expected).abs().max() > 0.1


def test_released_key_map_rejects_other_layouts():
    state = {"encoder.layers.0.x": torch.zeros(1), "decoder.Crossvit_layer.0.layers.0.0.fn.bad": 0}
    with pytest.raises(KeyError, match="Crossvit_layer.0.layers.0.0.fn.bad"):
        released_key_map(state)
    with pytest.raises(KeyError, match="no 'encoder.layers.\\*' keys"):
        released_key_map({"layers.0.blocks.0.norm1.weight": torch.zeros(1)})


# ---------------------------------------------------------------- spatial fusion


def tiny(seed=0, **kwargs):
    torch.manual_seed(seed)
    return build_network("att_swinunet_tiny", in_channels=3, num_classes=1, **kwargs)


def _fusions(net):
    return [b.attn.spatial_fusion for stage in net.layers_up[1:] for b in stage.blocks]


def test_spatial_fusion_sum_is_the_default_and_adds_no_parameter():
    default, summed = tiny(), tiny(spatial_fusion="sum")
    assert default.spatial_fusion == "sum" and all(f is None for f in _fusions(summed))
    assert list(default.state_dict()) == list(summed.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(default.eval()(x), summed.eval()(x), rtol=0, atol=0)


def test_gated_fusion_starts_as_the_model_without_spatial_branch_and_learns_its_gate():
    gated = tiny(spatial_fusion="gated", drop_path_rate=0.0)
    gates = [name for name, _ in gated.named_parameters() if name.endswith("spatial_fusion.gate")]
    assert len(gates) == sum(len(stage.blocks) for stage in gated.layers_up[1:])  # one per block
    cross = tiny(skip_attention="cross", seed=1, drop_path_rate=0.0).eval()
    assert cross.load_state_dict(gated.state_dict(), strict=False).missing_keys == []
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(gated.eval()(x), cross(x), atol=1e-5, rtol=1e-5)
    gated.train()(x).square().mean().backward()
    for name in gates:
        grad = gated.get_parameter(name).grad
        assert grad is not None and grad.abs() > 0, f"{name} gets no gradient"


def test_mean_fusion_averages_the_two_attention_terms():
    summed, mean = tiny(), tiny(spatial_fusion="mean")
    attn = mean.layers_up[1].blocks[0].attn
    own, enc = torch.randn(3, 2, 4, 8), torch.randn(3, 2, 4, 8)
    torch.testing.assert_close(attn.spatial_fusion(own, enc), (own + enc) / 2)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(summed.eval()(x), mean.eval()(x), atol=1e-4)


@pytest.mark.parametrize("fusion", SPATIAL_FUSIONS)
def test_every_parameter_gets_a_gradient_for_each_fusion(fusion):
    net = tiny(spatial_fusion=fusion, drop_path_rate=0.0)
    net(torch.randn(2, 3, 64, 64)).square().mean().backward()
    offenders = [
        name
        for name, p in net.named_parameters()
        if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().sum() > 0
    ]
    assert not offenders, f"parameters without a finite non-zero gradient: {offenders}"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"spatial_fusion": "product"}, "spatial_fusion must be one of"),
        ({"cross_norm": "all"}, "cross_norm must be one of"),
    ],
)
def test_fusion_and_norm_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)
