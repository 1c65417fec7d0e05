"""SAM-based networks: official-model parity at identity init, freezing, prompts, weights."""

import logging

import pytest
import torch
from segment_anything.modeling import Sam

import networks
from networks import build_network
from networks.sam.blocks import build_sam_parts
from networks.sam.prompts import boxes_from_masks, points_from_masks
from networks.sam.sam_adapter import TINY_SAM, SAMAdapter


def _masks(size=128):
    mask = torch.zeros(2, size, size, dtype=torch.long)
    mask[0, 20:60, 30:90] = 1
    mask[1, 70:120, 10:40] = 1
    mask[1, 75:80, 50:55] = 1  # a second blob: the box must cover both
    return mask


def _randomise(module):
    """Give zero-initialised SAM parameters (relative positions) values so every path matters."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                param.normal_(std=0.2)


def _official_logits(sam, image, points, boxes):
    """Call the official components exactly as ``Sam.forward`` does, one image at a time."""
    embeddings = sam.image_encoder(image)
    out = []
    for i in range(image.shape[0]):
        sparse, dense = sam.prompt_encoder(
            points=None if points is None else (points[0][i : i + 1], points[1][i : i + 1]),
            boxes=None if boxes is None else boxes[i : i + 1],
            masks=None,
        )
        low_res, _ = sam.mask_decoder(
            image_embeddings=embeddings[i : i + 1],
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        out.append(sam.postprocess_masks(low_res, image.shape[-2:], image.shape[-2:]))
    return torch.cat(out)


def _official_sam(net):
    sam = Sam(*build_sam_parts(**TINY_SAM))
    missing, unexpected = sam.load_state_dict(net.state_dict(), strict=False)
    assert not missing, f"official SAM keys absent from the adapted model: {missing[:5]}"
    assert all(".adapter." in k for k in unexpected), unexpected[:5]
    return sam.eval()


@pytest.mark.parametrize("prompt", ["none", "box", "point"])
@pytest.mark.parametrize("backend", ["native", "reference"])
def test_identity_init_equals_official_sam(prompt, backend):
    torch.manual_seed(0)
    net = SAMAdapter(**TINY_SAM, prompt=prompt, attention_backend=backend).eval()
    _randomise(net)
    sam = _official_sam(net)
    image, mask = torch.randn(2, 3, 128, 128), _masks()
    points, boxes = net.sample_prompts(mask, random=False)
    with torch.no_grad():
        ours = net(image, prompt_mask=mask)
        ref = _official_logits(sam, image, points, boxes)
    if backend == "native":
        assert torch.equal(ours, ref), (ours - ref).abs().max()
    else:  # the dispatcher adds the relative-position bias in one step: float rounding only
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_released_init_is_not_identity():
    torch.manual_seed(0)
    net = SAMAdapter(**TINY_SAM, adapter_init="released").eval()
    sam = _official_sam(net)
    image = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert not torch.allclose(net(image), _official_logits(sam, image, None, None), atol=1e-3)


def test_vit_b_parameter_counts():
    net = SAMAdapter()  # ViT-B, built but not run
    params = dict(net.named_parameters())
    adapters = sum(p.numel() for n, p in params.items() if ".adapter." in n)
    encoder = sum(
        p.numel() for n, p in net.image_encoder.named_parameters() if ".adapter." not in n
    )
    total_sam = sum(p.numel() for n, p in params.items() if ".adapter." not in n)
    decoder = sum(p.numel() for p in net.mask_decoder.parameters() if p.requires_grad)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert adapters == 7_100_928  # 12 blocks x 2 x (768*192 + 192 + 192*768 + 768): 7.10 M
    assert encoder == 89_670_912  # SAM ViT-B image encoder (sam_vit_b_01ec64.pth): 89.67 M
    assert total_sam == 93_735_472  # SAM ViT-B, all three parts: 93.74 M
    # Decoder 4.06 M minus the IoU head and hyper-network MLPs 1-3 (unused with multimask off).
    assert decoder == 3_506_304
    assert trainable == adapters + decoder == 10_607_232


def test_frozen_parts_stay_frozen():
    torch.manual_seed(0)
    net = SAMAdapter(**TINY_SAM, adapter_init="released").train()
    frozen = {
        n: p.detach().clone()
        for n, p in net.named_parameters()
        if n.startswith("prompt_encoder.")
        or (n.startswith("image_encoder.") and ".adapter." not in n)
    }
    assert all(not net.get_parameter(n).requires_grad for n in frozen)
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1.0)
    net(torch.randn(2, 3, 128, 128)).square().mean().backward()
    optimizer.step()
    for name, before in frozen.items():
        assert net.get_parameter(name).grad is None, f"{name} got a gradient"
        assert torch.equal(net.get_parameter(name), before), f"{name} changed"
    assert any(".adapter." in n for n, p in net.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("init", ["zero", "released"])
@pytest.mark.parametrize("prompt", ["none", "box"])
def test_every_trainable_parameter_gets_a_gradient(init, prompt):
    torch.manual_seed(0)
    net = build_network(
        "sam_adapter_tiny", in_channels=3, num_classes=1, adapter_init=init, prompt=prompt
    )
    loss, _ = net.train().compute_loss(
        {"image": torch.randn(2, 3, 128, 128), "mask": _masks()},
        lambda logits, mask: torch.nn.functional.binary_cross_entropy_with_logits(
            logits[:, 0], mask.float()
        ),
    )
    loss.backward()
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        # With zero-initialised up-projections the down-projections' first gradient is exactly 0.
        if init == "released" or not name.endswith(("fc1.weight", "fc1.bias")):
            assert param.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


@pytest.mark.parametrize("size", [128, 256, 96])
def test_output_shape_at_other_sizes(size):
    net = build_network("sam_adapter_tiny", in_channels=3, num_classes=1).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, size, size)).shape == (1, 1, size, size)
        assert net(torch.randn(1, 3, size, size + 32)).shape == (1, 1, size, size + 32)


def test_bad_inputs_and_arguments_raise():
    net = build_network("sam_adapter_tiny", in_channels=3, num_classes=1)
    with pytest.raises(ValueError, match="divisible by 16.*112x112"):
        net(torch.randn(1, 3, 100, 100))
    with pytest.raises(ValueError, match="in_channels=3"):
        SAMAdapter(**TINY_SAM, in_channels=1)
    with pytest.raises(ValueError, match="num_classes=1"):
        SAMAdapter(**TINY_SAM, num_classes=2)
    with pytest.raises(ValueError, match="prompt 'boxes' unknown"):
        SAMAdapter(**TINY_SAM, prompt="boxes")
    with pytest.raises(ValueError, match="adapter init 'kaiming' unknown"):
        SAMAdapter(**TINY_SAM, adapter_init="kaiming")
    prompted = SAMAdapter(**TINY_SAM, prompt="box")
    with pytest.raises(ValueError, match="needs a mask to sample the prompt"):
        prompted.predict(torch.randn(1, 3, 128, 128))


def test_state_dict_round_trip():
    torch.manual_seed(0)
    net = SAMAdapter(**TINY_SAM, adapter_init="released").eval()
    fresh = SAMAdapter(**TINY_SAM).eval()
    fresh.load_state_dict(net.state_dict())
    image = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(net(image), fresh(image))


@pytest.mark.parametrize("layout", ["sam", "medsam"])
def test_official_checkpoint_loads_with_report(tmp_path, layout, caplog):
    torch.manual_seed(1)
    sam = Sam(*build_sam_parts(**TINY_SAM)).eval()
    _randomise(sam)
    state = sam.state_dict()
    # SAM releases a bare state dict; MedSAM's medsam_vit_b.pth has the same keys (we also accept
    # the {"model": ...} wrapping used by fine-tuning scripts).
    path = tmp_path / f"{layout}.pth"
    torch.save(state if layout == "sam" else {"model": state}, path)
    with caplog.at_level(logging.INFO, logger="networks.sam.prompts"):
        net = SAMAdapter(**TINY_SAM, checkpoint=str(path)).eval()
    assert f"SAMAdapter: loaded {path}" in caplog.text  # the report is printed, not only stored
    assert net.load_report["path"] == str(path)
    assert net.load_report["unexpected"] == []
    assert net.load_report["missing"] and all(".adapter." in k for k in net.load_report["missing"])
    image = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(net(image), _official_logits(sam, image, None, None))
    # Frozen after loading, too.
    assert not net.image_encoder.patch_embed.proj.weight.requires_grad


def test_wrong_checkpoint_raises(tmp_path):
    sam = Sam(*build_sam_parts(**TINY_SAM))
    state = {k: v for k, v in sam.state_dict().items() if not k.startswith("mask_decoder.")}
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(RuntimeError, match="missing key"):
        SAMAdapter(**TINY_SAM, checkpoint=str(tmp_path / "partial.pth"))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        SAMAdapter(**TINY_SAM, checkpoint=str(tmp_path / "absent.pth"))


def test_prompts_sampled_from_mask_lie_inside_it():
    mask = _masks()
    generator = torch.Generator().manual_seed(0)
    for random in (True, False):
        for _ in range(5):
            coords, labels = points_from_masks(mask, random=random, generator=generator)
            assert labels.tolist() == [[1], [1]]
            for i, (x, y) in enumerate(coords[:, 0].long().tolist()):
                assert mask[i, y, x] == 1, (i, x, y)
    boxes = boxes_from_masks(mask)
    assert boxes.tolist() == [[30, 20, 89, 59], [10, 70, 54, 119]]
    jittered = boxes_from_masks(mask, jitter=0.2, generator=generator)
    assert (jittered >= 0).all() and (jittered <= 127).all()
    assert not torch.equal(jittered, boxes)
    empty = torch.zeros(1, 64, 64, dtype=torch.long)
    assert boxes_from_masks(empty).tolist() == [[0, 0, 63, 63]]
    assert points_from_masks(empty, random=True)[1].tolist() == [[0]]  # a negative point


def test_prompt_source_is_reported():
    assert SAMAdapter(**TINY_SAM).prompt_source == "none"
    net = SAMAdapter(**TINY_SAM, prompt="point").eval()
    assert net.prompt_source == "oracle"
    assert net.prompt_description == "oracle prompt (point from ground truth)"
    _, logs = net.compute_loss(
        {"image": torch.randn(1, 3, 128, 128), "mask": _masks()[:1]},
        lambda logits, mask: logits.mean(),
    )
    assert logs["oracle_prompt"] == 1.0
    provider = build_network("unet_tiny", in_channels=3, num_classes=1)
    net.set_prompt_provider(provider)
    assert net.prompt_source == "provided"
    assert "provided prompt" in net.prompt_description
    assert net.predict(torch.randn(1, 3, 128, 128)).shape == (1, 1, 128, 128)
    assert "prompt_provider" not in dict(net.named_children())
    assert (
        SAMAdapter(**TINY_SAM, prompt="box", prompt_source="provided").prompt_source == "provided"
    )


def test_public_import():
    assert networks.SAMAdapter is SAMAdapter
    assert "sam_adapter" in networks.list_networks()


# ---------------------------------------------------------------- MedSAM-CA


def test_medsam_ca_shapes_gradients_and_freezing():
    torch.manual_seed(0)
    net = build_network("medsam_ca_tiny", in_channels=3, num_classes=1, prompt="box").train()
    assert net(torch.randn(1, 3, 256, 256), prompt_mask=_masks(256)[:1]).shape == (1, 1, 256, 256)
    loss, logs = net.compute_loss(
        {"image": torch.randn(2, 3, 128, 128), "mask": _masks()},
        lambda logits, mask: torch.nn.functional.binary_cross_entropy_with_logits(
            logits[:, 0], mask.float()
        ),
    )
    loss.backward()
    assert logs["oracle_prompt"] == 1.0
    for name, param in net.named_parameters():
        frozen = name.startswith("prompt_encoder.") or (
            name.startswith("image_encoder.") and ".adapter." not in name
        )
        assert param.requires_grad != frozen, name
        if frozen:
            assert param.grad is None, f"{name} is frozen but got a gradient"
            continue
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        # Exactly-zero gradients are expected for the adapters' down-projections (their
        # up-projections start at zero) and can happen in CBAM's narrow channel MLP (a ReLU
        # bottleneck fed with non-negative pooled features may be dead at init at test widths).
        if not name.endswith(("fc1.weight", "fc1.bias")) and ".cbam.channel." not in name:
            assert param.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


def test_medsam_ca_structure_and_counts():
    from networks.sam.medsam_ca import MedSAMCA

    net = MedSAMCA()  # ViT-B, built but not run
    adapters = sum(p.numel() for n, p in net.named_parameters() if ".adapter." in n)
    assert adapters == 12 * (768 * 76 + 76 + 76 * 768 + 768) == 1_410_960
    assert not any(".mlp.adapter." in n for n, _ in net.named_parameters())
    assert [b.body[0][0].out_channels for b in net.cbr_net.blocks] == [64, 128, 256, 512]
    assert torch.all(net.fusion.gate.bias == 0.8) and torch.all(net.fusion.gate.weight == 0)
    assert len(net.up_stages) == 4
    assert not hasattr(net.mask_decoder, "output_upscaling")
    with pytest.raises(ValueError, match="use \\(1, 2, 2, 2\\)"):
        MedSAMCA(**TINY_SAM, cnn_strides=(2, 2, 2, 2))


def test_medsam_ca_loads_medsam_checkpoint(tmp_path):
    from networks.sam.medsam_ca import TINY_MEDSAM_CA, MedSAMCA

    torch.manual_seed(2)
    sam = Sam(*build_sam_parts(**TINY_SAM))
    _randomise(sam)
    torch.save(sam.state_dict(), tmp_path / "medsam.pth")
    net = MedSAMCA(**TINY_MEDSAM_CA, checkpoint=str(tmp_path / "medsam.pth"))
    report = net.load_report
    assert report["unexpected"] and all(
        k.startswith(("mask_decoder.output_", "mask_decoder.iou_prediction_head."))
        for k in report["unexpected"]
    )
    assert not any(
        k.startswith(("image_encoder.patch", "mask_decoder.transformer")) for k in report["missing"]
    )
    torch.testing.assert_close(
        net.image_encoder.blocks[0].attn.qkv.weight, sam.image_encoder.blocks[0].attn.qkv.weight
    )
    assert not net.image_encoder.blocks[0].attn.qkv.weight.requires_grad


def test_medsam_ca_public_import_and_round_trip():
    from networks import MedSAMCA

    torch.manual_seed(0)
    net = build_network("medsam_ca_tiny", in_channels=3, num_classes=1).eval()
    assert isinstance(net, MedSAMCA)
    fresh = build_network("medsam_ca_tiny", in_channels=3, num_classes=1).eval()
    fresh.load_state_dict(net.state_dict())
    image = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(net(image), fresh(image))


# ---------------------------------------------------------------- SAM 2


def _official_sam2(net):
    """A ``SAM2Base`` from the package with our weights (memory modules unused in one image)."""
    from sam2.modeling.sam2_base import SAM2Base

    from networks.sam.sam2_adapter import TINY_SAM2, build_sam2_parts

    base = SAM2Base(
        image_encoder=build_sam2_parts(**TINY_SAM2)[0],
        memory_attention=torch.nn.Identity(),
        memory_encoder=torch.nn.Identity(),
        image_size=TINY_SAM2["image_size"],
        use_high_res_features_in_sam=True,
        directly_add_no_mem_embed=True,
        pred_obj_scores=True,
        pred_obj_scores_mlp=True,
        iou_prediction_use_sigmoid=True,
        use_multimask_token_for_obj_ptr=True,
    )
    result = base.load_state_dict(net.state_dict(), strict=False)
    assert set(result.missing_keys) == {"maskmem_tpos_enc", "no_mem_pos_enc"}, result.missing_keys
    return base.eval()


@pytest.mark.parametrize("prompt", ["none", "box", "point"])
@pytest.mark.parametrize("backend", ["native", "reference"])
def test_sam2_identity_init_equals_official_image_predictor(prompt, backend):
    import numpy as np
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from networks.sam.sam2_adapter import TINY_SAM2, SAM2Adapter

    torch.manual_seed(0)
    net = SAM2Adapter(**TINY_SAM2, prompt=prompt, attention_backend=backend).eval()
    with torch.no_grad():
        net.no_mem_embed.normal_()
    predictor = SAM2ImagePredictor(_official_sam2(net))
    predictor._bb_feat_sizes = [(32, 32), (16, 16), (8, 8)]  # hard-coded for 1024 upstream
    image = np.random.RandomState(0).randint(0, 256, (128, 128, 3), dtype=np.uint8)
    predictor.set_image(image)
    mask = _masks()[:1]
    points, boxes = net.sample_prompts(mask, random=False)
    ref, _, _ = predictor.predict(
        point_coords=None if points is None else points[0][0].numpy(),
        point_labels=None if points is None else points[1][0].numpy(),
        box=None if boxes is None else boxes[0].numpy(),
        multimask_output=False,
        return_logits=True,
    )
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255  # the predictor's transform
    x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor(
        [0.229, 0.224, 0.225]
    )[:, None, None]
    with torch.no_grad():
        ours = net(x, prompt_mask=mask)[0].numpy()
    if backend == "native":
        assert np.array_equal(ours, ref), np.abs(ours - ref).max()
    else:
        np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=1e-5)


def test_sam2_gradients_freezing_and_shapes():
    torch.manual_seed(0)
    net = build_network("sam2_adapter_tiny", in_channels=3, num_classes=1, adapter_init="released")
    loss, _ = net.train().compute_loss(
        {"image": torch.randn(2, 3, 128, 128), "mask": _masks()}, lambda lg, m: lg.square().mean()
    )
    loss.backward()
    for name, param in net.named_parameters():
        frozen = (
            name.startswith(("sam_prompt_encoder.", "no_mem_embed"))
            or (name.startswith("image_encoder.") and ".adapter." not in name)
            or name.startswith(("sam_mask_decoder.iou_prediction", "sam_mask_decoder.pred_obj"))
        )
        if frozen:
            assert not param.requires_grad and param.grad is None, name
        elif param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
            assert param.grad.abs().sum() > 0, f"{name} got an all-zero gradient"
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 3, 256, 192)).shape == (1, 1, 256, 192)
    with pytest.raises(ValueError, match="divisible by 32.*128x128"):
        net(torch.randn(1, 3, 112, 112))


def test_sam2_checkpoint_loads_with_report(tmp_path):
    from networks.sam.sam2_adapter import TINY_SAM2, SAM2Adapter

    torch.manual_seed(3)
    source = SAM2Adapter(**TINY_SAM2, adapter_init="released")
    base = _official_sam2(source)
    state = {k: v for k, v in base.state_dict().items()}
    state["memory_encoder.out_proj.weight"] = torch.zeros(8, 8)  # video keys are allowed extras
    torch.save({"model": state}, tmp_path / "sam2.1_hiera_tiny.pt")
    net = SAM2Adapter(**TINY_SAM2, checkpoint=str(tmp_path / "sam2.1_hiera_tiny.pt"))
    assert all(".adapter." in k for k in net.load_report["missing"]) and net.load_report["missing"]
    assert "maskmem_tpos_enc" in net.load_report["unexpected"]
    assert "memory_encoder.out_proj.weight" in net.load_report["unexpected"]
    torch.testing.assert_close(net.no_mem_embed, base.no_mem_embed)
    del state["sam_mask_decoder.conv_s0.weight"]
    torch.save({"model": state}, tmp_path / "broken.pt")
    with pytest.raises(RuntimeError, match="missing key"):
        SAM2Adapter(**TINY_SAM2, checkpoint=str(tmp_path / "broken.pt"))


def test_sam2_hiera_tiny_parameter_counts():
    from networks.sam.sam2_adapter import SAM2Adapter

    net = SAM2Adapter()  # Hiera-T (SAM 2.1), built but not run
    adapters = sum(p.numel() for n, p in net.named_parameters() if ".adapter." in n)
    single_image = sum(p.numel() for n, p in net.named_parameters() if ".adapter." not in n)
    decoder = sum(p.numel() for p in net.sam_mask_decoder.parameters() if p.requires_grad)
    assert adapters == 2_306_544
    assert single_image == 31_440_721  # image encoder + SAM heads + no_mem_embed
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == adapters + decoder


def test_sam_family_shares_one_freeze_and_loader():
    from networks.sam.medsam_ca import MedSAMCA
    from networks.sam.prompts import PromptedSegmenter
    from networks.sam.sam2_adapter import SAM2Adapter

    for cls in (SAMAdapter, MedSAMCA, SAM2Adapter):
        assert issubclass(cls, PromptedSegmenter)
        for method in ("freeze", "load_checkpoint", "load_pretrained_and_freeze"):
            assert method not in vars(cls), f"{cls.__name__} re-implements {method}"
    net = build_network("sam_adapter_tiny")
    assert net.load_report is None  # nothing loaded
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(
        ".adapter." in n or n.startswith("mask_decoder.") for n in trainable
    ), "only adapters and the mask decoder train"


def test_set_up_image_size_check_gives_oracle_prompted_networks_a_mask():
    """segmentation.training.checks probes the network; a box prompt must not need the data."""
    from segmentation.config import ConfigError
    from segmentation.training.checks import check_image_size

    net = build_network("sam_adapter_tiny", in_channels=3, num_classes=1, prompt="box")
    spec = {"name": "sam_adapter_tiny", "kwargs": {"in_channels": 3}}
    check_image_size(net, spec, 128, torch.device("cpu"))
    with pytest.raises(ConfigError, match="divisible by 16"):
        check_image_size(net, spec, 100, torch.device("cpu"))
