"""Med-SA: the Segment Anything Model with bottleneck adapters in its ViT image encoder.

Wu et al., "Medical SAM Adapter: Adapting Segment Anything Model for Medical Image Segmentation",
Medical Image Analysis 2025 (arXiv 2304.12620). Design follows the authors' repository
``SuperMedIntel/Medical-SAM-Adapter`` (2-D setting; the depth adapter for 3-D is not used).

The official ``segment_anything`` modules (``ImageEncoderViT``, ``PromptEncoder``, ``MaskDecoder``,
``TwoWayTransformer``) are wrapped, never forked, and ``Sam.forward`` is never called (it is
``no_grad`` and takes a list of dicts). Per ViT block: an attention-output adapter
(768 -> 192 -> 768, GELU) with its own residual, and an adapter beside the MLP (same widths, no
residual) scaled by 0.5 - 7.10 M adapter parameters on ViT-B. Trainable: adapters and mask decoder;
frozen: the rest of the image encoder and the prompt encoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from networks.common import check_input_shape
from networks.registry import NETWORKS
from networks.sam.blocks import (
    SAM_VIT_CONFIGS,
    adapt_sam_vit,
    build_sam_parts,
    decode_masks,
    encode_image,
    encode_prompts,
    unused_single_mask_parameters,
)
from networks.sam.prompts import PromptedSegmenter


def check_sam_io(name: str, in_channels: int, num_classes: int) -> None:
    """SAM-based networks segment one lesion class from RGB images."""
    if in_channels != 3:
        raise ValueError(
            f"{name} needs in_channels=3 (SAM's patch embedding is RGB), got {in_channels}; "
            "convert the images to RGB."
        )
    if num_classes != 1:
        raise ValueError(
            f"{name} predicts one mask (multimask off), got num_classes={num_classes}; use "
            "num_classes=1 (binary lesion segmentation)."
        )


class SAMAdapter(PromptedSegmenter):
    """Med-SA on an official SAM ViT (B/L/H or a small test configuration).

    Args:
        in_channels: must be 3.
        num_classes: must be 1.
        encoder_embed_dim, encoder_depth, encoder_num_heads, encoder_global_attn_indexes: ViT size
            (defaults: ViT-B; see ``SAM_VIT_CONFIGS``).
        image_size: resolution of the (pretrained) position embedding, 1024 for official weights.
            Inputs of any size divisible by ``patch_size`` work (position embedding resampled).
        patch_size, window_size, prompt_embed_dim, decoder_depth, decoder_mlp_dim,
            decoder_num_heads, iou_head_hidden_dim, mask_in_chans: SAM hyper-parameters.
        adapter_ratio: adapter bottleneck width as a fraction of the ViT width (0.25: 768 -> 192).
        mlp_adapter: add the parallel MLP adapter (Med-SA: yes).
        mlp_adapter_scale: its output scale (0.5).
        adapter_init: ``"zero"`` (identity at start) or ``"released"`` (PyTorch default init, as the
            released Med-SA code).
        prompt, prompt_source, box_jitter: see
            :class:`networks.sam.prompts.PromptedSegmenter`.
        checkpoint: local SAM or MedSAM checkpoint (official keys ``image_encoder.*``,
            ``prompt_encoder.*``, ``mask_decoder.*``); adapters are the only keys allowed
            missing, and the key report is kept in ``load_report``.
        attention_backend: ``"native"`` for SAM's own attention, else a global-attention dispatcher
            backend (``"auto"``, ``"reference"``, ...).
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        num_classes: int = 1,
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
        adapter_ratio: float = 0.25,
        mlp_adapter: bool = True,
        mlp_adapter_scale: float = 0.5,
        adapter_init: str = "zero",
        prompt: str = "none",
        prompt_source: str = "oracle",
        box_jitter: float = 0.1,
        checkpoint: str | None = None,
        attention_backend: str = "auto",
    ) -> None:
        super().__init__(prompt=prompt, prompt_source=prompt_source, box_jitter=box_jitter)
        check_sam_io(type(self).__name__, in_channels, num_classes)
        self.patch_size = patch_size
        self.image_encoder, self.prompt_encoder, self.mask_decoder = build_sam_parts(
            encoder_embed_dim=encoder_embed_dim,
            encoder_depth=encoder_depth,
            encoder_num_heads=encoder_num_heads,
            encoder_global_attn_indexes=encoder_global_attn_indexes,
            image_size=image_size,
            patch_size=patch_size,
            window_size=window_size,
            prompt_embed_dim=prompt_embed_dim,
            decoder_depth=decoder_depth,
            decoder_mlp_dim=decoder_mlp_dim,
            decoder_num_heads=decoder_num_heads,
            iou_head_hidden_dim=iou_head_hidden_dim,
            mask_in_chans=mask_in_chans,
        )
        adapt_sam_vit(
            self.image_encoder,
            attn_adapter_ratio=adapter_ratio,
            mlp_adapter_ratio=adapter_ratio if mlp_adapter else None,
            mlp_adapter_scale=mlp_adapter_scale,
            adapter_init=adapter_init,
            attention_backend=attention_backend,
        )
        self.load_pretrained_and_freeze(checkpoint)

    def frozen_prefixes(self) -> tuple[str, ...]:
        """Train adapters and the mask decoder (minus its unused multimask/IoU heads)."""
        unused = unused_single_mask_parameters(self.mask_decoder)
        return ("image_encoder.", "prompt_encoder.") + tuple(f"mask_decoder.{n}" for n in unused)

    def segment(self, image, points, boxes) -> torch.Tensor:
        """Logits ``[B, 1, H, W]`` for ``image [B, 3, H, W]``; prompts in pixel coordinates."""
        check_input_shape(image, self.patch_size, type(self).__name__)
        embeddings = encode_image(self.image_encoder, image)  # (B, C, H/16, W/16)
        grid = tuple(embeddings.shape[-2:])
        sparse, dense, image_pe = encode_prompts(
            self.prompt_encoder,
            points=points,
            boxes=boxes,
            batch_size=image.shape[0],
            input_hw=tuple(image.shape[-2:]),
            grid_hw=grid,
        )
        low_res = decode_masks(self.mask_decoder, embeddings, image_pe, sparse, dense)
        return F.interpolate(low_res, size=image.shape[-2:], mode="bilinear", align_corners=False)


# Small ViT for CPU tests and the CI benchmark (not a pretrained configuration).
TINY_SAM = dict(
    encoder_embed_dim=96,
    encoder_depth=2,
    encoder_num_heads=3,
    encoder_global_attn_indexes=(1,),
    image_size=128,
    window_size=4,
    prompt_embed_dim=64,
    decoder_mlp_dim=128,
    decoder_num_heads=4,
    iou_head_hidden_dim=64,
    mask_in_chans=8,
)


def _vit(name: str) -> dict:
    cfg = SAM_VIT_CONFIGS[name]
    return dict(
        encoder_embed_dim=cfg["embed_dim"],
        encoder_depth=cfg["depth"],
        encoder_num_heads=cfg["num_heads"],
        encoder_global_attn_indexes=cfg["global_attn_indexes"],
    )


NETWORKS.register("sam_adapter", SAMAdapter, **_vit("vit_b"))
NETWORKS.register("sam_adapter_vit_l", SAMAdapter, **_vit("vit_l"))
NETWORKS.register("sam_adapter_vit_h", SAMAdapter, **_vit("vit_h"))
NETWORKS.register("sam_adapter_tiny", SAMAdapter, **TINY_SAM)
