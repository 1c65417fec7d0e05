"""MedSAM-CA: MedSAM (SAM ViT-B) with a parallel CNN branch and an attention-fusion decoder.

Tian, Chen, Bi, Li, "MedSAM-CA: A CNN-Augmented ViT with Attention-Enhanced Multi-Scale Fusion for
Medical Image Segmentation", arXiv 2506.23700, 2025. No official code was available to us; this is
written from the paper's description, and where the paper leaves a detail open our choice is
stated below.

* Image encoder: the official SAM/MedSAM ViT-B, frozen, with one attention-output adapter per block
  (768 -> 76 -> 768, GELU, own residual, zero-initialised up-projection; no MLP adapter).
* CBR-Net: four residual blocks 3 -> 64 -> 128 -> 256 -> 512, each followed by CBAM (timm's
  ``CbamModule``, Woo et al. ECCV 2018). Strides 1, 2, 2, 2 (our choice) give features at 1, 1/2,
  1/4 and 1/8 of the input - exactly the resolutions of the four decoder stages.
* Gated fusion of the stage-3 CNN feature (256 channels) into the image embedding (256 channels,
  1/16): the feature is average-pooled to the embedding grid and mixed as
  ``g * E + (1 - g) * C`` with ``g = sigmoid(conv1x1([E, C]) + b)``; the 1x1 weights start at zero
  and the learnable per-channel gate bias ``b`` at 0.8, so training starts from a fixed
  ``sigmoid(0.8) = 0.69`` weight on the pretrained embedding.
* Decoder: SAM's two-way transformer (official module, trainable) followed by four 2x
  up-sampling stages (instead of SAM's two) 1/16 -> 1/8 -> 1/4 -> 1/2 -> 1, each fusing the CNN
  feature of matching resolution with an Atte-FFB (sigmoid-gated skip, 3x3 fusion conv, CBAM,
  residual). SAM's hyper-network MLP idea produces the mask from the first mask token. SAM's own
  up-scaling, hyper-network and IoU heads are not used and are not built (their checkpoint keys are
  reported as unexpected-and-allowed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from segment_anything.modeling.mask_decoder import MLP
from timm.layers import LayerNorm2d
from timm.layers.cbam import CbamModule
from torch import nn

from networks.common import check_input_shape
from networks.registry import NETWORKS
from networks.sam.blocks import encode_image, encode_prompts
from networks.sam.sam_adapter import TINY_SAM, SAMAdapter

_SAM_HEADS = ("output_upscaling.", "output_hypernetworks_mlps.", "iou_prediction_head.")


def cbam(channels: int) -> CbamModule:
    """CBAM with the usual reduction 16, at least 4 hidden units (narrow test widths)."""
    return CbamModule(channels, rd_channels=max(channels // 16, 4))


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class ResidualCBAMBlock(nn.Module):
    """Basic residual block (two 3x3 conv-BN) with CBAM on the residual branch.

    Shapes: ``[B, in_ch, H, W] -> [B, out_ch, H / stride, W / stride]``.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(in_ch, out_ch, 3, stride),
            nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            cbam(out_ch),
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class CBRNet(nn.Module):
    """CNN branch: residual CBAM blocks; returns every block's feature map (fine to coarse)."""

    def __init__(self, in_channels: int, widths: Sequence[int], strides: Sequence[int]) -> None:
        super().__init__()
        chans = [in_channels, *widths]
        self.blocks = nn.ModuleList(
            ResidualCBAMBlock(chans[i], chans[i + 1], s) for i, s in enumerate(strides)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features


class GatedEmbeddingFusion(nn.Module):
    """``g * E + (1 - g) * C``, ``g = sigmoid(conv1x1([E, C]) + b)``, ``b`` starting at 0.8."""

    def __init__(self, embed_dim: int, cnn_dim: int, gate_bias_init: float = 0.8) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cnn_dim, embed_dim, 1)
        self.gate = nn.Conv2d(2 * embed_dim, embed_dim, 1)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, gate_bias_init)

    def forward(self, embedding: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        feature = self.proj(F.adaptive_avg_pool2d(feature, embedding.shape[-2:]))  # (B, C, gh, gw)
        gate = torch.sigmoid(self.gate(torch.cat([embedding, feature], dim=1)))
        return gate * embedding + (1 - gate) * feature


class AtteFFB(nn.Module):
    """Attention-enhanced feature fusion: a sigmoid-gated CNN skip fused into a decoder feature.

    Shapes: decoder ``[B, C, H, W]`` and skip ``[B, C_skip, H, W]`` -> ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, skip_channels: int) -> None:
        super().__init__()
        self.skip = conv_bn_relu(skip_channels, channels, 1)
        self.gate = nn.Sequential(
            nn.Conv2d(2 * channels, channels, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1),
        )
        self.fuse = conv_bn_relu(2 * channels, channels, 3)
        self.cbam = cbam(channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        skip = self.skip(skip)
        gate = torch.sigmoid(self.gate(torch.cat([x, skip], dim=1)))
        return x + self.cbam(self.fuse(torch.cat([x, gate * skip], dim=1)))


class UpStage(nn.Module):
    """2x transposed-conv up-sampling (SAM's ``output_upscaling`` unit) followed by an Atte-FFB."""

    def __init__(self, in_ch: int, out_ch: int, skip_ch: int) -> None:
        super().__init__()
        self.up = nn.Sequential(
            nn.ConvTranspose2d(in_ch, out_ch, 2, 2), LayerNorm2d(out_ch), nn.GELU()
        )
        self.ffb = AtteFFB(out_ch, skip_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.ffb(self.up(x), skip)


class MedSAMCA(SAMAdapter):
    """MedSAM-CA on a SAM/MedSAM ViT (see the module docstring).

    Args:
        cnn_widths: CBR-Net block widths (paper: 64, 128, 256, 512).
        cnn_strides: CBR-Net block strides; their products must be 1, 2, 4, 8 (one CNN feature
            per decoder stage).
        fusion_stage: index of the CBR-Net feature fused into the image embedding (paper: the
            third, 0-based 2).
        gate_bias_init: initial gate bias of that fusion (paper: 0.8).
        decoder_channels: widths of the four up-sampling stages.
        adapter_ratio: attention-adapter width / ViT width (0.1: 768 -> 76).
        **sam_kwargs: every other :class:`~networks.sam.sam_adapter.SAMAdapter` argument (ViT size,
            prompts, ``checkpoint`` - a SAM or MedSAM file - and ``attention_backend``).
    """

    def __init__(
        self,
        *,
        cnn_widths: Sequence[int] = (64, 128, 256, 512),
        cnn_strides: Sequence[int] = (1, 2, 2, 2),
        fusion_stage: int = 2,
        gate_bias_init: float = 0.8,
        decoder_channels: Sequence[int] = (128, 64, 32, 16),
        adapter_ratio: float = 0.1,
        checkpoint: str | None = None,
        **sam_kwargs,
    ) -> None:
        sam_kwargs.setdefault("mlp_adapter", False)
        super().__init__(adapter_ratio=adapter_ratio, checkpoint=None, **sam_kwargs)
        if len(cnn_widths) != 4 or len(cnn_strides) != 4 or len(decoder_channels) != 4:
            raise ValueError(
                "MedSAM-CA has four CNN blocks and four decoder stages: cnn_widths, cnn_strides "
                f"and decoder_channels need 4 entries each, got {list(cnn_widths)}, "
                f"{list(cnn_strides)}, {list(decoder_channels)}."
            )
        scales = [1]
        for s in cnn_strides[1:]:
            scales.append(scales[-1] * s)
        if cnn_strides[0] != 1 or scales != [1, 2, 4, 8]:
            raise ValueError(
                f"cnn_strides {list(cnn_strides)} must put the CNN features at 1, 1/2, 1/4, 1/8 of "
                "the input (the decoder stages' resolutions); use (1, 2, 2, 2)."
            )
        embed_dim = self.mask_decoder.transformer_dim
        for name in _SAM_HEADS:  # replaced by the four-stage decoder below
            delattr(self.mask_decoder, name.rstrip("."))
        self.cbr_net = CBRNet(3, cnn_widths, cnn_strides)
        self.fusion_stage = fusion_stage
        self.fusion = GatedEmbeddingFusion(embed_dim, cnn_widths[fusion_stage], gate_bias_init)
        chans = [embed_dim, *decoder_channels]
        skips = list(reversed(cnn_widths))  # decoder goes 1/8 -> 1
        self.up_stages = nn.ModuleList(UpStage(chans[i], chans[i + 1], skips[i]) for i in range(4))
        self.hypernetwork = MLP(embed_dim, embed_dim, decoder_channels[-1], 3)
        self.load_pretrained_and_freeze(checkpoint)

    def frozen_prefixes(self) -> tuple[str, ...]:
        """Train adapters, CBR-Net, fusion and the decoder; freeze the ViT and prompt encoder."""
        return ("image_encoder.", "prompt_encoder.")

    def checkpoint_new_keys(self) -> tuple[str, ...]:
        """The CNN branch, fusion and four-stage decoder, plus the adapters."""
        new = ("cbr_net.", "fusion.", "up_stages.", "hypernetwork.")
        return new + super().checkpoint_new_keys()

    def checkpoint_unused_keys(self) -> tuple[str, ...]:
        """SAM's up-scaling, hyper-network and IoU heads (replaced, not built)."""
        return tuple(f"mask_decoder.{n}" for n in _SAM_HEADS)

    def segment(self, image, points, boxes) -> torch.Tensor:
        """Full-resolution logits ``[B, 1, H, W]`` for ``image [B, 3, H, W]`` (H, W % 16 == 0)."""
        check_input_shape(image, self.patch_size, type(self).__name__)
        features = self.cbr_net(image)  # 1, 1/2, 1/4, 1/8
        embedding = encode_image(self.image_encoder, image)  # (B, C, H/16, W/16)
        embedding = self.fusion(embedding, features[self.fusion_stage])
        b, c, h, w = embedding.shape
        sparse, dense, image_pe = encode_prompts(
            self.prompt_encoder,
            points=points,
            boxes=boxes,
            batch_size=b,
            input_hw=tuple(image.shape[-2:]),
            grid_hw=(h, w),
        )
        # SAM's MaskDecoder.predict_masks up to the transformer, batched (one prompt per image).
        decoder = self.mask_decoder
        tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat([tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        hs, src = decoder.transformer(embedding + dense, image_pe.expand(b, -1, -1, -1), tokens)
        x = src.transpose(1, 2).reshape(b, c, h, w)
        for stage, skip in zip(self.up_stages, reversed(features), strict=True):
            x = stage(x, skip)
        weights = self.hypernetwork(hs[:, 1])  # first mask token -> (B, C_last)
        return torch.einsum("bc,bchw->bhw", weights, x).unsqueeze(1)


TINY_MEDSAM_CA = dict(TINY_SAM, cnn_widths=(8, 16, 32, 64), decoder_channels=(32, 16, 8, 8))

NETWORKS.register("medsam_ca", MedSAMCA)
NETWORKS.register("medsam_ca_tiny", MedSAMCA, **TINY_MEDSAM_CA)
