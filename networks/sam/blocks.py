"""Shared pieces of the SAM-based segmenters: adapters, SAM assembly, image encoding, mask decoding.

The official ``segment_anything`` modules are used as they are. Adapters are injected into the
official ViT ``Block`` modules by swapping the class of their ``attn`` / ``mlp`` children to a
subclass that adds the adapter (nothing of ``Block.forward`` is re-written), so the state-dict keys
of the official layers stay those of the official checkpoints and the adapters appear as new keys
``image_encoder.blocks.<i>.attn.adapter.*`` and ``image_encoder.blocks.<i>.mlp.adapter.*``.

Prompt sampling, the prompt/loss/predict contract, freezing and official-checkpoint loading shared
by every SAM-based network live in :mod:`networks.sam.prompts` (``PromptedSegmenter``).

References:
    Kirillov et al., "Segment Anything", ICCV 2023 (``facebookresearch/segment-anything``).
    Wu et al., "Medical SAM Adapter: Adapting Segment Anything Model for Medical Image
    Segmentation", Medical Image Analysis 2025 (arXiv 2304.12620; repository
    ``SuperMedIntel/Medical-SAM-Adapter``, formerly ``KidsWithTokens/Medical-SAM-Adapter``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer
from segment_anything.modeling.common import MLPBlock
from segment_anything.modeling.image_encoder import Attention, add_decomposed_rel_pos
from torch import nn

from networks.kernels.global_attention import global_attention

ADAPTER_INITS = ("zero", "released")

# Official SAM encoder hyper-parameters (segment_anything/build_sam.py).
SAM_VIT_CONFIGS = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}


class BottleneckAdapter(nn.Module):
    """Bottleneck adapter ``x -> fc2(act(fc1(x)))``, optionally plus ``x`` (Houlsby et al. 2019).

    Args:
        dim: input and output width.
        hidden_dim: bottleneck width (Med-SA: ``dim // 4``, 768 -> 192).
        act_layer: activation class.
        skip: add the input back (Med-SA's attention-output "Space" adapter has a skip, its MLP
            adapter does not).
        init: ``"zero"`` zero-initialises the up-projection so the adapter starts as the identity
            (skip) or as zero (no skip), i.e. the adapted model starts equal to the original;
            ``"released"`` keeps PyTorch's default ``nn.Linear`` initialisation for both
            projections, which is what the released Med-SA code does.

    Shapes: ``[..., dim] -> [..., dim]``.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        *,
        act_layer: type[nn.Module] = nn.GELU,
        skip: bool = True,
        init: str = "zero",
    ) -> None:
        super().__init__()
        if init not in ADAPTER_INITS:
            raise ValueError(f"adapter init '{init}' unknown; choose one of {ADAPTER_INITS}.")
        if hidden_dim < 1:
            raise ValueError(f"adapter hidden_dim must be >= 1, got {hidden_dim}; raise the ratio.")
        self.skip = skip
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_dim, dim)
        if init == "zero":
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc2(self.act(self.fc1(x)))
        return x + out if self.skip else out


class ParallelAdapted:
    """Mixin: ``module(x) + adapter_scale * adapter(x)`` - an adapter beside the wrapped module."""

    def forward(self, x):
        return super().forward(x) + self.adapter_scale * self.adapter(x)


class SamAdaptedAttention(Attention):
    """SAM ViT ``Attention`` whose core runs through dermseg's global-attention dispatcher.

    ``attention_backend="native"`` keeps SAM's own computation (bit-identical to the official
    module); any other value is handed to :func:`networks.kernels.global_attention.global_attention`
    with SAM's decomposed relative-position term as the additive bias (equal up to float rounding).
    The projected output then passes through ``self.adapter`` (identity when no adapter is used).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attention_backend == "native":
            return self.adapter(super().forward(x))
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, d) each
        bias = None
        if self.use_rel_pos:
            flat_q = q.reshape(b * self.num_heads, h * w, -1)  # (B*heads, N, d)
            zeros = flat_q.new_zeros(b * self.num_heads, h * w, h * w)
            bias = add_decomposed_rel_pos(
                zeros, flat_q, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w)
            )
            bias = bias.view(b, self.num_heads, h * w, h * w)
        out = global_attention(q, k, v, bias=bias, scale=self.scale, backend=self.attention_backend)
        out = out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return self.adapter(self.proj(out))


class SamAdaptedMLP(ParallelAdapted, MLPBlock):
    """SAM ``MLPBlock`` with a parallel adapter: ``mlp(x) + adapter_scale * adapter(x)``."""


def adapt_sam_vit(
    encoder: ImageEncoderViT,
    *,
    attn_adapter_ratio: float | None = 0.25,
    mlp_adapter_ratio: float | None = 0.25,
    mlp_adapter_scale: float = 0.5,
    adapter_init: str = "zero",
    attention_backend: str = "auto",
) -> None:
    """Inject Med-SA adapters into every official ``Block`` of ``encoder`` (in place).

    Per block: an attention-output adapter with its own residual (``attn_adapter_ratio``, ``None``
    for none) and a parallel MLP adapter without residual scaled by ``mlp_adapter_scale``
    (``mlp_adapter_ratio``, ``None`` for none). Hidden width is ``int(dim * ratio)``.
    """
    for block in encoder.blocks:
        dim = block.attn.qkv.in_features
        attn = block.attn
        attn.__class__ = SamAdaptedAttention
        attn.attention_backend = attention_backend
        attn.adapter = (
            BottleneckAdapter(dim, int(dim * attn_adapter_ratio), init=adapter_init)
            if attn_adapter_ratio
            else nn.Identity()
        )
        if mlp_adapter_ratio:
            block.mlp.__class__ = SamAdaptedMLP
            block.mlp.adapter_scale = mlp_adapter_scale
            block.mlp.adapter = BottleneckAdapter(
                dim, int(dim * mlp_adapter_ratio), skip=False, init=adapter_init
            )


def build_sam_parts(
    *,
    encoder_embed_dim: int = 768,
    encoder_depth: int = 12,
    encoder_num_heads: int = 12,
    encoder_global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
    image_size: int = 1024,
    patch_size: int = 16,
    window_size: int = 14,
    prompt_embed_dim: int = 256,
    decoder_depth: int = 2,
    decoder_mlp_dim: int = 2048,
    decoder_num_heads: int = 8,
    iou_head_hidden_dim: int = 256,
    mask_in_chans: int = 16,
) -> tuple[ImageEncoderViT, PromptEncoder, MaskDecoder]:
    """Build SAM's three components the way ``segment_anything.build_sam._build_sam`` does.

    Defaults are ViT-B; ``SAM_VIT_CONFIGS`` holds the ViT-B/L/H encoder settings. Small settings
    give the CPU test/benchmark models. ``image_size`` is the resolution the weights belong to
    (1024 for the official checkpoints); other input sizes are handled in :func:`encode_image`.
    """
    if image_size % patch_size:
        raise ValueError(
            f"image_size {image_size} must be a multiple of patch_size {patch_size}; "
            f"use {image_size // patch_size * patch_size}."
        )
    grid = image_size // patch_size
    encoder = ImageEncoderViT(
        depth=encoder_depth,
        embed_dim=encoder_embed_dim,
        img_size=image_size,
        mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=encoder_num_heads,
        patch_size=patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=tuple(encoder_global_attn_indexes),
        window_size=window_size,
        out_chans=prompt_embed_dim,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=prompt_embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(image_size, image_size),
        mask_in_chans=mask_in_chans,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(
            depth=decoder_depth,
            embedding_dim=prompt_embed_dim,
            mlp_dim=decoder_mlp_dim,
            num_heads=decoder_num_heads,
        ),
        transformer_dim=prompt_embed_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=iou_head_hidden_dim,
    )
    return encoder, prompt_encoder, mask_decoder


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bicubically resample an absolute position embedding ``[1, h, w, C]`` to ``[1, *grid, C]``.

    Returned unchanged (same tensor) when the grid already matches, so the native resolution is
    exactly the official computation.
    """
    if tuple(pos_embed.shape[1:3]) == tuple(grid):
        return pos_embed
    resized = F.interpolate(
        pos_embed.permute(0, 3, 1, 2), size=grid, mode="bicubic", align_corners=False
    )  # (1, C, gh, gw)
    return resized.permute(0, 2, 3, 1)


def encode_image(encoder: ImageEncoderViT, x: torch.Tensor) -> torch.Tensor:
    """Run the SAM ViT on ``x [B, 3, H, W]`` (H, W multiples of the patch size) at any size.

    Same steps as ``ImageEncoderViT.forward``, with the absolute position embedding resampled to the
    token grid. Global-attention blocks resample their relative-position tables themselves
    (``get_rel_pos`` interpolates), window blocks are size-independent.

    Returns:
        image embedding ``[B, out_chans, H / patch, W / patch]``.
    """
    x = encoder.patch_embed(x)  # (B, gh, gw, C)
    if encoder.pos_embed is not None:
        x = x + resize_pos_embed(encoder.pos_embed, tuple(x.shape[1:3]))
    for block in encoder.blocks:
        x = block(x)
    return encoder.neck(x.permute(0, 3, 1, 2))


def encode_prompts(
    prompt_encoder: nn.Module,
    *,
    points: tuple[torch.Tensor, torch.Tensor] | None,
    boxes: torch.Tensor | None,
    batch_size: int,
    input_hw: tuple[int, int],
    grid_hw: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embed prompts given in input-pixel coordinates with the (official) prompt encoder.

    Coordinates are rescaled to the encoder's ``input_image_size`` frame (what ``SamPredictor``
    does with ``ResizeLongestSide``), so the pixel convention of SAM is kept at any input size.
    Works for ``segment_anything`` and ``sam2`` prompt encoders (same interface).

    Args:
        points: ``(coords [B, P, 2] (x, y), labels [B, P])`` or ``None``.
        boxes: ``[B, 4]`` (x0, y0, x1, y1) or ``None``.
        batch_size: B (needed when there is no prompt at all).
        input_hw: the image size the coordinates refer to.
        grid_hw: the image-embedding grid.

    Returns:
        sparse ``[B, T, C]``, dense ``[B, C, *grid_hw]``, positional encoding ``[1, C, *grid_hw]``.
    """
    frame_h, frame_w = prompt_encoder.input_image_size
    scale = torch.tensor([frame_w / input_hw[1], frame_h / input_hw[0]])
    if points is not None:
        points = (points[0] * scale.to(points[0]), points[1])
    if boxes is not None:
        boxes = boxes * scale.repeat(2).to(boxes)
    if points is None and boxes is None:
        sparse, dense = prompt_encoder(points=None, boxes=None, masks=None)
        sparse = sparse.expand(batch_size, -1, -1)
    else:
        # One image at a time, as ``Sam.forward`` does: batched matmuls round differently, and
        # this keeps the adapted model bit-identical to the official one at identity init.
        sparse = torch.cat(
            [
                prompt_encoder(
                    points=None if points is None else (points[0][i : i + 1], points[1][i : i + 1]),
                    boxes=None if boxes is None else boxes[i : i + 1],
                    masks=None,
                )[0]
                for i in range(batch_size)
            ]
        )
        dense = prompt_encoder(points=None, boxes=None, masks=None)[1]
    # Without a mask prompt the dense embedding is one learned vector at every position.
    dense = dense[:1, :, :1, :1].expand(batch_size, -1, *grid_hw)
    image_pe = prompt_encoder.pe_layer(tuple(grid_hw)).unsqueeze(0)
    return sparse, dense, image_pe


def decode_masks(
    mask_decoder: MaskDecoder,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor,
) -> torch.Tensor:
    """Single-mask SAM decoding for a batch with one prompt per image.

    ``MaskDecoder`` expects one image and N prompts (it repeats the image embedding per prompt), so
    images are decoded one at a time, as ``Sam.forward`` does.

    Returns:
        low-resolution logits ``[B, 1, 4 gh, 4 gw]``.
    """
    masks = [
        mask_decoder(
            image_embeddings=image_embeddings[i : i + 1],
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse[i : i + 1],
            dense_prompt_embeddings=dense[i : i + 1],
            multimask_output=False,
        )[0]
        for i in range(image_embeddings.shape[0])
    ]
    return torch.cat(masks, dim=0)


def unused_single_mask_parameters(mask_decoder: nn.Module) -> list[str]:
    """Names of decoder parameters that get no gradient from a single-mask segmentation loss.

    The IoU head's output is not used, and hyper-network MLPs 1..3 only produce the multimask
    outputs that ``multimask_output=False`` slices away; they are frozen so every trainable
    parameter really trains (and weight decay does not silently shrink them).
    """
    prefixes = ("iou_prediction_head.", "pred_obj_score_head.") + tuple(
        f"output_hypernetworks_mlps.{i}."
        for i in range(1, len(mask_decoder.output_hypernetworks_mlps))
    )
    return [n for n, _ in mask_decoder.named_parameters() if n.startswith(prefixes)]
