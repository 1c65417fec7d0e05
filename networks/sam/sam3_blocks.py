"""SAM 3 pieces for :mod:`networks.sam.sam3_adapter`: the image model, adapters, vocabulary.

The modules are the ``sam3`` package's (Meta's reference implementation, PyPI ``sam3``), used as
they are. The full-size image model comes from the package's own builder,
``sam3.model_builder.build_sam3_image_model(load_from_HF=False)``; :func:`build_small_sam3` puts the
same component classes together with small widths (CPU tests and the synthetic benchmark). Both
return a ``Sam3Image`` whose state-dict keys, prefixed with ``detector.``, are those of the official
``sam3.pt`` checkpoint.

``sam3`` 0.1.4 assumes a GPU in two places that a CPU-only machine reaches: two constructors cache
tensors on ``device="cuda"`` (``PositionEmbeddingSine``, ``TransformerDecoder``) and the
geometry encoder pins a small tensor (``Tensor.pin_memory``) when it encodes boxes.
:class:`CudaFree` (a ``TorchFunctionMode``) sends such tensors to the build device and makes
pinning a no-op when CUDA is absent. It also leaves two text-encoder tensors uninitialised
(``torch.empty``, always overwritten by its checkpoint); :func:`init_uninitialised` gives them
open_clip's initialisation so that a model without weights is finite. Nothing else is changed.

References:
    Carion et al., "SAM 3: Segment Anything with Concepts", arXiv 2511.16719, 2025
    (``facebookresearch/sam3``).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Sequence
from functools import partial

import torch
from timm.layers import Mlp
from torch import nn
from torch.overrides import TorchFunctionMode

from networks.sam.blocks import BottleneckAdapter, ParallelAdapted

with warnings.catch_warnings():
    # Import-time noise of sam3 0.1.4 on CPU (autocast decorators, a torch.jit.script helper).
    warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*")
    from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer
    from sam3.model.encoder import TransformerEncoderFusion, TransformerEncoderLayer
    from sam3.model.geometry_encoders import Prompt, SequenceGeometryEncoder
    from sam3.model.maskformer_segmentation import PixelDecoder, UniversalSegmentationHead
    from sam3.model.model_misc import MLP, DotProductScoring, TransformerWrapper
    from sam3.model.model_misc import MultiheadAttentionWrapper as MultiheadAttention
    from sam3.model.necks import Sam3DualViTDetNeck
    from sam3.model.position_encoding import PositionEmbeddingSine
    from sam3.model.sam3_image import Sam3Image
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer
    from sam3.model.vitdet import Attention, ViT
    from sam3.model.vl_combiner import SAM3VLBackbone
    from sam3.model_builder import build_sam3_image_model

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


class CudaFree(TorchFunctionMode):
    """Run ``sam3`` code that hard-codes CUDA on whatever device is current.

    Inside the mode, factory calls with ``device="cuda"`` use ``device`` instead, and
    ``Tensor.pin_memory`` returns the tensor itself when CUDA is unavailable. On the ``meta``
    device ``torch.linspace`` stays on the CPU: the ViT turns its drop-path schedule into Python
    floats with ``.item()``, which meta tensors cannot do.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.device = torch.device(device) if device is not None else torch.get_default_device()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        device = kwargs.get("device")
        if device is not None and torch.device(device).type == "cuda":
            kwargs["device"] = self.device
        if func is torch.Tensor.pin_memory and not torch.cuda.is_available():
            return args[0]
        if func is torch.linspace and self.device.type == "meta":
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)


def bpe_vocabulary(path: str | os.PathLike | None = None) -> str:
    """The BPE vocabulary file of SAM 3's text tokenizer (the CLIP ``bpe_simple_vocab_16e6``).

    The ``sam3`` wheel does not ship it; ``open-clip-torch`` (installed by the ``[sam3]`` extra)
    does, and it is used when ``path`` is ``None``. A given ``path`` must exist.
    """
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"SAM 3 BPE vocabulary '{path}' not found; pass the path of "
                f"{BPE_FILE} (open-clip-torch ships it) or leave bpe_path unset."
            )
        return os.fspath(path)
    spec = importlib.util.find_spec("open_clip")
    candidate = (
        os.path.join(spec.submodule_search_locations[0], BPE_FILE)
        if spec and spec.submodule_search_locations
        else None
    )
    if candidate is None or not os.path.isfile(candidate):
        raise FileNotFoundError(
            f"SAM 3's text tokenizer needs {BPE_FILE}, which the sam3 wheel does not ship: "
            "install open-clip-torch (pip install -e '.[sam3]') or pass bpe_path=<local file>."
        )
    return candidate


def init_uninitialised(model: Sam3Image) -> None:
    """Initialise the two text-encoder tensors ``sam3`` creates with ``torch.empty``.

    ``TextTransformer`` leaves ``positional_embedding`` and ``text_projection`` uninitialised
    (a checkpoint always overwrites them), so a model without weights could hold NaN. They get
    open_clip's initialisation (normal, std 0.01 and ``width ** -0.5``); a checkpoint still
    overwrites them.
    """
    text = model.backbone.language_backbone.encoder
    if text.positional_embedding.device.type == "meta":
        return
    with torch.no_grad():
        nn.init.normal_(text.positional_embedding, std=0.01)
        if isinstance(text.text_projection, nn.Parameter):
            nn.init.normal_(text.text_projection, std=text.width**-0.5)


def build_official_sam3(bpe_path: str) -> Sam3Image:
    """The full SAM 3 image model from ``sam3``'s builder (no weights, no download)."""
    with CudaFree():
        model = build_sam3_image_model(
            bpe_path=bpe_path,
            device=str(torch.get_default_device()),
            eval_mode=True,
            checkpoint_path=None,
            load_from_HF=False,
            enable_segmentation=True,
            enable_inst_interactivity=False,
        )
    init_uninitialised(model)
    return model


def build_small_sam3(
    *,
    bpe_path: str,
    image_size: int,
    patch_size: int = 14,
    pretrain_image_size: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    mlp_ratio: float = 4.625,
    window_size: int,
    global_att_blocks: Sequence[int],
    d_model: int,
    num_attention_heads: int,
    dim_feedforward: int,
    text_width: int,
    text_heads: int,
    text_layers: int,
    fusion_layers: int,
    decoder_layers: int,
    geometry_layers: int,
    num_queries: int,
    activation_checkpointing: bool = False,
) -> Sam3Image:
    """SAM 3's image model from the same component classes at the given widths.

    Every switch is the one ``sam3.model_builder`` sets for the full model (RoPE ViT with tiled
    absolute positions, dual-ViTDet neck, text encoder, fusion encoder, DETR decoder with presence
    token, geometry encoder, universal segmentation head, dot-product scoring); only widths,
    depths and sizes change. ``activation_checkpointing`` (a memory setting, on in the official
    builder) is off by default; the fusion encoder always has it (it refuses to train without).
    """
    mha = partial(MultiheadAttention, num_heads=num_attention_heads, embed_dim=d_model)
    trunk = ViT(
        img_size=image_size,
        pretrain_img_size=pretrain_image_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        norm_layer="LayerNorm",
        drop_path_rate=0.1,
        use_abs_pos=True,
        tile_abs_pos=True,
        global_att_blocks=tuple(global_att_blocks),
        rel_pos_blocks=(),
        use_rope=True,
        use_interp_rope=True,
        window_size=window_size,
        pretrain_use_cls_token=True,
        retain_cls_token=False,
        ln_pre=True,
        ln_post=False,
        return_interm_layers=False,
        bias_patch_embed=False,
        use_act_checkpoint=activation_checkpointing,
    )
    neck = Sam3DualViTDetNeck(
        trunk=trunk,
        position_encoding=PositionEmbeddingSine(num_pos_feats=d_model, normalize=True),
        d_model=d_model,
        scale_factors=[4.0, 2.0, 1.0, 0.5],
    )
    text = VETextEncoder(
        d_model=d_model,
        tokenizer=SimpleTokenizer(bpe_path=bpe_path),
        width=text_width,
        heads=text_heads,
        layers=text_layers,
        use_act_checkpoint=activation_checkpointing,
    )

    def encoder_layer(*, batch_first: bool, pos_at_attn: bool, pos_at_keys: bool):
        return TransformerEncoderLayer(
            activation="relu",
            d_model=d_model,
            dim_feedforward=dim_feedforward,
            dropout=0.1,
            pos_enc_at_attn=pos_at_attn,
            pos_enc_at_cross_attn_keys=pos_at_keys,
            pos_enc_at_cross_attn_queries=False,
            pre_norm=True,
            self_attention=mha(dropout=0.1, batch_first=batch_first),
            cross_attention=mha(dropout=0.1, batch_first=batch_first),
        )

    fusion = TransformerEncoderFusion(
        layer=encoder_layer(batch_first=True, pos_at_attn=True, pos_at_keys=False),
        num_layers=fusion_layers,
        d_model=d_model,
        num_feature_levels=1,
        add_pooled_text_to_img_feat=False,
        pool_text_with_mask=True,
        use_act_checkpoint=True,
    )
    with CudaFree():  # the decoder caches its box-bias coordinates on "cuda"
        decoder = TransformerDecoder(
            layer=TransformerDecoderLayer(
                activation="relu",
                d_model=d_model,
                dim_feedforward=dim_feedforward,
                dropout=0.1,
                cross_attention=mha(dropout=0.1),
                n_heads=num_attention_heads,
                use_text_cross_attention=True,
            ),
            num_layers=decoder_layers,
            num_queries=num_queries,
            return_intermediate=True,
            box_refine=True,
            dac=True,
            boxRPB="log",
            d_model=d_model,
            frozen=False,
            interaction_layer=None,
            dac_use_selfatt_ln=True,
            resolution=image_size,
            stride=patch_size,
            presence_token=True,
            use_act_checkpoint=activation_checkpointing,
        )
    geometry = SequenceGeometryEncoder(
        pos_enc=PositionEmbeddingSine(num_pos_feats=d_model, normalize=True),
        encode_boxes_as_points=False,
        points_direct_project=True,
        points_pool=True,
        points_pos_enc=True,
        boxes_direct_project=True,
        boxes_pool=True,
        boxes_pos_enc=True,
        d_model=d_model,
        num_layers=geometry_layers,
        layer=encoder_layer(batch_first=False, pos_at_attn=False, pos_at_keys=True),
        add_cls=True,
        add_post_encode_proj=True,
        use_act_ckpt=activation_checkpointing,
    )
    head = UniversalSegmentationHead(
        hidden_dim=d_model,
        upsampling_stages=3,
        pixel_decoder=PixelDecoder(
            num_upsampling_stages=3, interpolation_mode="nearest", hidden_dim=d_model
        ),
        cross_attend_prompt=mha(dropout=0.0),
        act_ckpt=activation_checkpointing,
    )
    scoring = DotProductScoring(
        d_model=d_model,
        d_proj=d_model,
        prompt_mlp=MLP(
            input_dim=d_model,
            hidden_dim=dim_feedforward,
            output_dim=d_model,
            num_layers=2,
            dropout=0.1,
            residual=True,
            out_norm=nn.LayerNorm(d_model),
        ),
    )
    model = Sam3Image(
        backbone=SAM3VLBackbone(visual=neck, text=text, scalp=1),
        transformer=TransformerWrapper(encoder=fusion, decoder=decoder, d_model=d_model),
        input_geometry_encoder=geometry,
        segmentation_head=head,
        num_feature_levels=1,
        o2m_mask_predict=True,
        dot_prod_scoring=scoring,
        use_instance_query=False,
        multimask_output=True,
    )
    init_uninitialised(model)
    return model.eval()


class Sam3AdaptedAttention(Attention):
    """SAM 3 ViT attention whose projected output passes through ``self.adapter`` (Med-SA)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(super().forward(x))


class Sam3AdaptedMlp(ParallelAdapted, Mlp):
    """The timm ``Mlp`` of a SAM 3 ViT block with a parallel adapter (Med-SA)."""


def adapt_sam3_vit(
    trunk: ViT,
    *,
    adapter_ratio: float,
    mlp_adapter: bool,
    mlp_adapter_scale: float,
    adapter_init: str,
) -> None:
    """Inject Med-SA adapters into every block of SAM 3's ViT (in place, class swap).

    Per block: an attention-output adapter with its own residual and, with ``mlp_adapter``, an
    adapter beside the MLP scaled by ``mlp_adapter_scale``; hidden width ``int(dim * ratio)``
    (1024 -> 256 at 0.25). ``adapter_init="zero"`` makes both start as the identity, so the
    adapted model starts equal to SAM 3. New keys: ``...blocks.<i>.{attn,mlp}.adapter.*``.
    """
    for block in trunk.blocks:
        dim = block.attn.qkv.in_features
        block.attn.__class__ = Sam3AdaptedAttention
        block.attn.adapter = BottleneckAdapter(dim, int(dim * adapter_ratio), init=adapter_init)
        if mlp_adapter:
            block.mlp.__class__ = Sam3AdaptedMlp
            block.mlp.adapter_scale = mlp_adapter_scale
            block.mlp.adapter = BottleneckAdapter(
                dim, int(dim * adapter_ratio), skip=False, init=adapter_init
            )


def unused_parameters(model: Sam3Image, prompt: str) -> tuple[str, ...]:
    """Name prefixes (relative to ``model``) of parameters no gradient reaches for ``prompt``.

    The lesion mask is SAM 3's semantic-segmentation output, so the DETR decoder, its scoring and
    the instance-mask predictor are not run; the neck level that ``scalp`` drops and the pixel-
    decoder stage without an input level are computed or built but unused; the text encoder's
    pooled projection is unused; of the geometry encoder, only the branches of the prompt's kind
    (points or boxes) work (text and no prompt use its CLS token alone).
    """
    neck = model.backbone.vision_backbone
    levels = len(neck.convs) - model.backbone.scalp
    pixel = model.segmentation_head.pixel_decoder
    unused = [
        "transformer.decoder.",
        "dot_prod_scoring.",
        "segmentation_head.mask_predictor.",
        "segmentation_head.instance_seg_head.",
        "backbone.language_backbone.encoder.text_projection",
    ]
    unused += [f"backbone.vision_backbone.convs.{i}." for i in range(levels, len(neck.convs))]
    unused += [
        f"segmentation_head.pixel_decoder.{part}.{i}."
        for part in ("conv_layers", "norms")
        for i in range(levels - 1, len(pixel.conv_layers))
    ]
    points = ("points_direct_project.", "points_pool_project.", "points_pos_enc_project.")
    boxes = ("boxes_direct_project.", "boxes_pool_project.", "boxes_pos_enc_project.")
    if prompt == "point":
        branches = boxes
    elif prompt in ("box", "exemplar"):
        branches = points
    else:
        branches = points + boxes + ("label_embed.", "img_pre_norm.")
    unused += [f"geometry_encoder.{name}" for name in branches]
    return tuple(unused)


def geometric_prompt(
    *,
    points: tuple[torch.Tensor, torch.Tensor] | None = None,
    boxes: torch.Tensor | None = None,
    image_hw: tuple[int, int],
    batch_size: int,
    device: torch.device,
) -> Prompt:
    """SAM 3 ``Prompt`` from pixel-coordinate prompts (one per image) or none at all.

    Args:
        points: ``(coords [B, 1, 2] (x, y), labels [B, 1])``, labels 1 positive, 0 negative.
        boxes: ``[B, 4]`` ``(x0, y0, x1, y1)`` inclusive pixel indices (positive boxes).
        image_hw: the size the coordinates refer to.

    Returns:
        A prompt in SAM 3's convention: sequence first, normalised ``(x, y)`` points and
        ``(cx, cy, w, h)`` boxes.
    """
    h, w = image_hw
    if boxes is not None:
        scale = boxes.new_tensor([w, h, w, h])
        xyxy = (boxes + boxes.new_tensor([0, 0, 1, 1])) / scale  # pixel edges, in [0, 1]
        cxcywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], dim=1)
        return Prompt(
            box_embeddings=cxcywh[None],  # (1, B, 4)
            box_labels=torch.ones(1, batch_size, dtype=torch.long, device=device),
            box_mask=torch.zeros(batch_size, 1, dtype=torch.bool, device=device),
        )
    if points is not None:
        coords, labels = points
        xy = (coords + 0.5) / coords.new_tensor([w, h])  # pixel centres, in [0, 1]
        return Prompt(
            point_embeddings=xy.transpose(0, 1),  # (1, B, 2)
            point_labels=labels.transpose(0, 1).long(),
            point_mask=torch.zeros(batch_size, 1, dtype=torch.bool, device=device),
        )
    return Prompt(  # what Sam3Image._get_dummy_prompt builds: no box, no point
        box_embeddings=torch.zeros(0, batch_size, 4, device=device),
        box_mask=torch.zeros(batch_size, 0, dtype=torch.bool, device=device),
    )
