"""Attention Swin U-Net (Aghdam, Azad, Zarvani, Merhof, "Attention Swin U-Net: Cross-Contextual
Attention Mechanism for Skin Lesion Segmentation", ISBI 2023; released code: NITR098/AttSwinUNet).

The Swin-Unet backbone (:class:`networks.swin_unet.SwinUNet`) with two additions on the skip path,
switchable for the paper's ablation through ``skip_attention``:

* **cross** - cross-contextual attention (CrossViT style, Chen, Fan, Panda, ICCV 2021) before each
  concat + Linear 2C -> C fusion. Each branch (decoder tokens, encoder skip tokens) is summarised by
  a pooled token (the token mean) that attends, with a residual, to itself and the other branch's
  tokens; ``cross_depth`` such layers per skip (8 heads of 64 dims, 2 layers in the released code).
  ``cross_norm="sequence"`` applies the LayerNorm to the whole ``[summary, other branch's tokens]``
  sequence (CrossViT's cross-attention block); ``cross_norm="summary"`` is the released code's
  ``PreNorm``, which normalises only the summary (the query) and feeds the other branch's tokens to
  the keys/values un-normalised. ``cls_mode="broadcast"`` adds the summary's total update to every
  token of its branch; ``cls_mode="first_token"`` reproduces the released code, which overwrites the
  first token with the updated summary (and leaves the first token out of the other branch's keys).
* **spatial** - decoder block ``j`` of stage ``s`` adds the softmax window-attention map of encoder
  block ``j`` of stage ``s`` (same window partition and shift) to its own before the values are
  weighted::

      out = softmax(Q K^T / sqrt(d) + B + M) V + A_enc V          # spatial_fusion="sum"

  The first term stays on the fused attention backend; the second is one batched matmul. The
  encoder blocks must return their maps, so they run the dispatcher's reference path. The map is
  not detached, so the encoder also learns through it. Rows of the combined map sum to 2 and at
  initialisation the two terms are nearly parallel, so ``"sum"`` is mostly a x2 gain on attention;
  ``spatial_fusion="mean"`` averages the two terms (rows sum to 1) and ``"gated"`` adds
  ``g * A_enc V`` with one learnable scalar ``g`` per decoder block, starting at 0 (the block starts
  as plain Swin-Unet). ``"sum"``, the published formulation, is the default; the 3-seed ablation
  of the three on the main benchmark, with its confidence intervals, is
  ``benchmarks/ablation_spatial_fusion.json`` (read in docs/benchmark.md); it has not found an
  alternative that is better than ``"sum"`` at 95 %.

Two facts about the released code (``networks/`` of NITR098/AttSwinUNet); in no released
configuration does a spatial branch change the output:

* the spatial branch is computed and discarded: ``SwinTransformerBlock.forward`` adds the encoder
  stage's map (of the stage's last block, for every decoder block) to its own map *after* the block
  output has been computed and returns the sum, which ``BasicLayer_up`` drops
  (``x, _ = blk(...)``) - a no-op;
* the released "spatial only" mode (``mode="swin"``, ``attention="1"``) applies the skip fusion
  twice: ``Decoder.forward`` concatenates the skip and applies ``concat_back_dim`` once for every
  decoder stage, then again (same skip, same Linear) in the ``add_attention`` branch.

``skip_attention="none"`` is Swin-Unet; ``"spatial"`` (spatial branch only, fused once)
completes the ablation grid. ``att_swinunet_released`` is the released cross-attention model
(``mode="crossvittoken"``, ``skip_num=3``, ``attention="0"``); :func:`released_key_map` /
:func:`load_released_weights` load a state dict of the released ``SwinAttentionUnet`` into it.

With cross attention on all three skips and lite depths (2-2-2-2): 32.68 M parameters for 1 class
and 8.25 GMAC at 224 (``FlopCounterMode``; the released code measures 32.69 M, 8.34 G).
"""

from __future__ import annotations

import os
import re

import torch
from einops import rearrange
from torch import nn

from networks.common import load_pretrained
from networks.kernels.global_attention import global_attention
from networks.registry import NETWORKS
from networks.swin_unet import SwinUNet, _init_weights, load_swin_pretrained

SKIP_ATTENTION_MODES = ("none", "cross", "spatial", "cross_spatial")
CLS_MODES = ("broadcast", "first_token")
CROSS_NORMS = ("sequence", "summary")
SPATIAL_FUSIONS = ("sum", "mean", "gated")


class CrossContextAttention(nn.Module):
    """A summary token attends to ``[itself, context tokens]`` (one direction of the skip).

    Args:
        dim: token channels.
        num_heads: attention heads.
        head_dim: channels per head (the inner width is ``num_heads * head_dim``, independent
            of ``dim``).
        drop: dropout after the output projection.
        norm_layer: pre-normalisation class.
        cross_norm: ``"sequence"`` normalises ``[summary, context]``; ``"summary"`` only the
            summary, the context reaching the keys/values un-normalised (released ``PreNorm``).
        attention_backend: global-attention dispatcher backend.
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int = 8,
        head_dim: int = 64,
        drop: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        cross_norm: str = "sequence",
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        if cross_norm not in CROSS_NORMS:
            raise ValueError(f"cross_norm must be one of {CROSS_NORMS}, got '{cross_norm}'.")
        self.num_heads, self.attention_backend = num_heads, attention_backend
        self.cross_norm = cross_norm
        inner = num_heads * head_dim
        self.norm = norm_layer(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(drop)

    def forward(self, summary: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Args: summary ``[B, 1, C]``, context ``[B, L, C]``. Returns the update ``[B, 1, C]`` (no
        residual)."""
        if self.cross_norm == "sequence":
            seq = self.norm(torch.cat([summary, context], dim=1))  # (B, 1+L, C)
        else:
            seq = torch.cat([self.norm(summary), context], dim=1)  # (B, 1+L, C)
        q = rearrange(self.to_q(seq[:, :1]), "b n (h d) -> b h n d", h=self.num_heads)
        k, v = rearrange(self.to_kv(seq), "b n (two h d) -> two b h n d", two=2, h=self.num_heads)
        out = global_attention(q, k, v, backend=self.attention_backend)  # (B, h, 1, d)
        return self.proj_drop(self.proj(rearrange(out, "b h n d -> b n (h d)")))


class CrossContextualSkip(nn.Module):
    """Exchange context between decoder tokens and encoder skip tokens of one stage.

    Args:
        dim: token channels of both branches.
        depth: number of layers (each updates both summaries).
        num_heads, head_dim, drop, norm_layer, cross_norm, attention_backend: as in
            :class:`CrossContextAttention`.
        cls_mode: ``"broadcast"`` or ``"first_token"`` (see the module docstring).
    """

    def __init__(
        self,
        *,
        dim: int,
        depth: int = 2,
        num_heads: int = 8,
        head_dim: int = 64,
        drop: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        cls_mode: str = "broadcast",
        cross_norm: str = "sequence",
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        if cls_mode not in CLS_MODES:
            raise ValueError(f"cls_mode must be one of {CLS_MODES}, got '{cls_mode}'.")
        self.cls_mode = cls_mode

        def direction() -> CrossContextAttention:
            return CrossContextAttention(
                dim=dim,
                num_heads=num_heads,
                head_dim=head_dim,
                drop=drop,
                norm_layer=norm_layer,
                cross_norm=cross_norm,
                attention_backend=attention_backend,
            )

        # per layer: [decoder summary -> encoder tokens, encoder summary -> decoder tokens]
        self.layers = nn.ModuleList(nn.ModuleList([direction(), direction()]) for _ in range(depth))

    def forward(self, decoder: torch.Tensor, encoder: torch.Tensor):
        """Args: decoder, encoder tokens ``[B, L, C]``. Returns the updated ``(decoder,
        encoder)``."""
        first = self.cls_mode == "first_token"
        # the released code drops the first token from the keys, since it is about to be overwritten
        dec_ctx, enc_ctx = (decoder[:, 1:], encoder[:, 1:]) if first else (decoder, encoder)
        dec_cls0, enc_cls0 = (
            decoder.mean(1, keepdim=True),
            encoder.mean(1, keepdim=True),
        )  # (B, 1, C)
        dec_cls, enc_cls = dec_cls0, enc_cls0
        for dec_attends_enc, enc_attends_dec in self.layers:
            dec_cls = dec_cls + dec_attends_enc(dec_cls, enc_ctx)
            enc_cls = enc_cls + enc_attends_dec(enc_cls, dec_ctx)
        if first:
            return torch.cat([dec_cls, dec_ctx], 1), torch.cat([enc_cls, enc_ctx], 1)
        return decoder + (dec_cls - dec_cls0), encoder + (enc_cls - enc_cls0)


class SpatialFusion(nn.Module):
    """How a decoder block joins the encoder map's term to its own attention output.

    Args:
        mode: ``"mean"`` (``(own + encoder) / 2``) or ``"gated"`` (``own + g * encoder``, one
            learnable scalar ``g`` starting at 0). ``"sum"`` needs no module (the default of
            :class:`~networks.blocks.swin.WindowAttention`).

    Shapes: ``own``, ``encoder`` ``[B*nW, heads, N, d]`` -> ``[B*nW, heads, N, d]``.
    """

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in ("mean", "gated"):
            raise ValueError(f"SpatialFusion mode must be 'mean' or 'gated', got '{mode}'.")
        self.mode = mode
        self.gate = nn.Parameter(torch.zeros(())) if mode == "gated" else None

    def forward(self, own: torch.Tensor, encoder: torch.Tensor) -> torch.Tensor:
        if self.gate is None:
            return (own + encoder) / 2
        return own + self.gate * encoder


class AttSwinUNet(SwinUNet):
    """Attention Swin U-Net.

    Args:
        in_channels, num_classes, patch_size, embed_dim, depths, num_heads, window_size,
            mlp_ratio, qkv_bias, drop_rate, drop_path_rate, norm_layer, attention_backend: as in
            :class:`SwinUNet`.
        skip_attention: ``"none"``, ``"cross"``, ``"spatial"`` or ``"cross_spatial"`` (the
            paper's model).
        cls_mode: ``"broadcast"`` or ``"first_token"`` (released code).
        cross_norm: ``"sequence"`` (CrossViT) or ``"summary"`` (released ``PreNorm``), see the
            module docstring.
        spatial_fusion: ``"sum"`` (default), ``"mean"`` or ``"gated"``: how the spatial branch's
            ``A_enc V`` joins each decoder block's attention output (see the module docstring
            for the ablation that keeps ``"sum"``).
        cross_attention_skips: cross attention on the deepest this-many skips (``skip_num`` of
            the released code); None means all ``num_stages - 1``.
        cross_depth: layers per cross-contextual skip.
        cross_heads: heads of the cross attention.
        cross_head_dim: channels per cross-attention head.
        pretrained: local path of an official Swin checkpoint (see :func:`load_swin_pretrained`).
    """

    pretrained_new_prefixes = SwinUNet.pretrained_new_prefixes + ("cross_attention.",)

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        skip_attention: str = "cross_spatial",
        cls_mode: str = "broadcast",
        cross_norm: str = "sequence",
        spatial_fusion: str = "sum",
        cross_attention_skips: int | None = None,
        cross_depth: int = 2,
        cross_heads: int = 8,
        cross_head_dim: int = 64,
        patch_size: int = 4,
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 2, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        attention_backend: str = "auto",
        pretrained: str | os.PathLike | None = None,
    ) -> None:
        if skip_attention not in SKIP_ATTENTION_MODES:
            raise ValueError(
                f"skip_attention must be one of {SKIP_ATTENTION_MODES}, got '{skip_attention}'."
            )
        if cls_mode not in CLS_MODES:
            raise ValueError(f"cls_mode must be one of {CLS_MODES}, got '{cls_mode}'.")
        if cross_norm not in CROSS_NORMS:
            raise ValueError(f"cross_norm must be one of {CROSS_NORMS}, got '{cross_norm}'.")
        if spatial_fusion not in SPATIAL_FUSIONS:
            raise ValueError(
                f"spatial_fusion must be one of {SPATIAL_FUSIONS}, got '{spatial_fusion}'."
            )
        super().__init__(
            in_channels=in_channels,
            num_classes=num_classes,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depths=depths,
            num_heads=num_heads,
            window_size=window_size,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
            norm_layer=norm_layer,
            attention_backend=attention_backend,
        )
        skips = self.num_stages - 1
        if cross_attention_skips is None:
            cross_attention_skips = skips
        if not 0 <= cross_attention_skips <= skips:
            raise ValueError(
                f"cross_attention_skips must be between 0 and {skips} (the number of skips), "
                f"got {cross_attention_skips}."
            )
        self.skip_attention = skip_attention
        self.spatial_attention = skip_attention in ("spatial", "cross_spatial")
        use_cross = skip_attention in ("cross", "cross_spatial")
        # indexed by decoder position p (0: bottleneck, no skip), which fuses encoder stage S-1-p;
        # the deepest `cross_attention_skips` skips are positions 1 .. cross_attention_skips
        self.cross_attention = nn.ModuleList([nn.Identity()])
        for position in range(1, self.num_stages):
            if use_cross and position <= cross_attention_skips:
                block = CrossContextualSkip(
                    dim=embed_dim * 2 ** (self.num_stages - 1 - position),
                    depth=cross_depth,
                    num_heads=cross_heads,
                    head_dim=cross_head_dim,
                    drop=drop_rate,
                    norm_layer=norm_layer,
                    cls_mode=cls_mode,
                    cross_norm=cross_norm,
                    attention_backend=attention_backend,
                )
                block.apply(_init_weights)
            else:
                block = nn.Identity()
            self.cross_attention.append(block)
        self.spatial_fusion = spatial_fusion
        if self.spatial_attention and spatial_fusion != "sum":
            for stage in self.layers_up[1:]:
                for swin_block in stage.blocks:
                    swin_block.attn.spatial_fusion = SpatialFusion(spatial_fusion)
        if pretrained is not None:
            load_swin_pretrained(self, pretrained)

    def fuse_skip(self, position: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Cross-contextual attention (if enabled here), then concat + Linear 2C -> C."""
        cross = self.cross_attention[position]
        if not isinstance(cross, nn.Identity):
            b, h, w, c = x.shape
            x, skip = cross(x.reshape(b, h * w, c), skip.reshape(b, h * w, c))  # (B, L, C) each
            x, skip = x.view(b, h, w, c), skip.view(b, h, w, c)
        return super().fuse_skip(position, x, skip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, in_channels, H, W]``, any H, W. Returns logits ``[B, num_classes, H,
        W]``."""
        h, w = x.shape[-2:]
        features = self.forward_features(
            self.pad_input(x), spatial_attention=self.spatial_attention
        )
        return self.head(features, h, w)


def released_key_map(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a released ``SwinAttentionUnet`` state dict (NITR098/AttSwinUNet) to ours.

    ``encoder.``/``decoder.`` prefixes are dropped; ``decoder.Crossvit_layer.{i}`` (encoder stage
    ``i``; ``PreNorm`` at ``.fn.norm``, attention at ``.fn.fn``) becomes
    ``cross_attention.{S-1-i}`` (decoder position). Dropped: the unused top-level ``patch_embed``
    and ``decoder.norm``, and the derived ``relative_position_index``/``attn_mask`` buffers.
    """
    stages = {int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")}
    if not stages:
        raise KeyError(
            "not a released SwinAttentionUnet state dict: no 'encoder.layers.*' keys (found "
            f"{sorted(state)[:5]}); pass the file saved by the released training code."
        )
    num_stages = 1 + max(stages)
    cross = re.compile(r"decoder\.Crossvit_layer\.(\d+)\.layers\.(\d+)\.(\d+)\.fn\.(.*)")
    inner = {"norm.": "norm.", "fn.to_q.": "to_q.", "fn.to_kv.": "to_kv.", "fn.to_out.0.": "proj."}
    out = {}
    for key, value in state.items():
        if key.startswith(("patch_embed.", "decoder.norm.")) or key.endswith(
            ("relative_position_index", "attn_mask")
        ):
            continue
        match = cross.fullmatch(key)
        if match:
            stage, layer, direction, rest = match.groups()
            old = next((o for o in inner if rest.startswith(o)), None)
            if old is None:
                raise KeyError(f"released key '{key}' has no counterpart in AttSwinUNet.")
            position = num_stages - 1 - int(stage)
            key = f"cross_attention.{position}.layers.{layer}.{direction}.{inner[old]}"
            key += rest[len(old) :]
        elif key.startswith(("encoder.", "decoder.")):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def load_released_weights(model: AttSwinUNet, path: str | os.PathLike) -> None:
    """Load a released Att-SwinU-Net checkpoint (strict after :func:`released_key_map`).

    Accepts a bare state dict, ``{"model": ...}`` or the released notebook's
    ``{"model_weights": ..., "val_loss": ...}``. Use ``att_swinunet_released`` (or the same
    settings) with the checkpoint's depths and widths.
    """
    load_pretrained(
        model, path, key_map=lambda state: released_key_map(state.get("model_weights", state))
    )


NETWORKS.register("att_swinunet", AttSwinUNet)
NETWORKS.register("att_swinunet_cross", AttSwinUNet, skip_attention="cross")
NETWORKS.register("att_swinunet_spatial", AttSwinUNet, skip_attention="spatial")
NETWORKS.register(
    "att_swinunet_released",
    AttSwinUNet,
    skip_attention="cross",
    cls_mode="first_token",
    cross_norm="summary",
)
NETWORKS.register(
    "att_swinunet_tiny",
    AttSwinUNet,
    embed_dim=24,
    depths=(2, 2, 2, 2),
    num_heads=(1, 2, 4, 8),
    window_size=4,
    drop_path_rate=0.1,
    cross_heads=2,
    cross_head_dim=16,
)
