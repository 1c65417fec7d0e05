"""Swin-Unet (Cao, Wang, Chen, Jiang, Zhang, Tian, Wang, "Swin-Unet: Unet-like Pure Transformer for
Medical Image Segmentation", ECCV Workshops 2022), following the design of the
HuCaoFighting/Swin-Unet repository.

A Swin Transformer encoder (patch 4, stages of ``embed_dim * 2**s`` channels joined by patch
merging), a symmetric decoder of Swin blocks joined by patch expanding, skips taken from the inputs
of encoder stages ``0 .. S-2`` and fused by concatenation + Linear 2C -> C, and a final x4 patch
expanding to pixels. The "lite" configuration (depths 2-2-2-2) has 27.17 M parameters for 1 class
and 6.07 GMAC at 224 (matmuls and convolutions counted by ``torch.utils.flop_counter``'s
``FlopCounterMode``; the official count is 6.13 G).

Input sizes: any. Sides that are not multiples of ``patch_size * 2**(num_stages - 1)`` (32 for
Swin-Unet) are zero-padded on the bottom/right before the patch embedding (zero is the mean colour
of an ImageNet-normalised image) and the logits are cropped back to the input size.
"""

from __future__ import annotations

import logging
import os
import re

import torch
from timm.layers import resize_rel_pos_bias_table, trunc_normal_
from timm.models import adapt_input_conv
from torch import nn

from networks.blocks.swin import FinalPatchExpand, PatchEmbed, PatchExpand, PatchMerging, SwinStage
from networks.common import load_pretrained, pad_to_multiple
from networks.registry import NETWORKS

logger = logging.getLogger(__name__)


class SwinUNet(nn.Module):
    """Swin-Unet.

    Args:
        in_channels: image channels.
        num_classes: output channels (1 for binary lesion segmentation).
        patch_size: patch side of the embedding (also the final up-sampling factor).
        embed_dim: channels of stage 0; stage ``s`` has ``embed_dim * 2**s``.
        depths: Swin blocks per stage (encoder; the decoder mirrors stages ``S-2 .. 0``).
        num_heads: attention heads per stage.
        window_size: attention window side (7 at 224, 8 at 256, 4 at 128 keep every map a whole
            number of windows; other sizes are padded).
        mlp_ratio: MLP width relative to the token channels.
        qkv_bias: learn query/key/value biases.
        drop_rate: dropout after the embedding, attention projections and MLPs.
        drop_path_rate: stochastic depth, rising linearly over the encoder blocks (mirrored in
            the decoder).
        norm_layer: normalisation class.
        attention_backend: window-attention dispatcher backend (``"auto"``, ``"reference"``, ...).
        pretrained: local path of an official Swin checkpoint
            (``swin_tiny_patch4_window7_224.pth`` layout)
            loaded into the encoder and, mirrored, into the decoder; see
            :func:`load_swin_pretrained`.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
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
        super().__init__()
        depths, num_heads = tuple(depths), tuple(num_heads)
        if len(depths) != len(num_heads) or len(depths) < 2:
            raise ValueError(
                f"{type(self).__name__} needs one depth and one head count per stage (at least "
                f"2 stages), got depths={depths} and num_heads={num_heads}."
            )
        bad = [s for s, h in enumerate(num_heads) if (embed_dim * 2**s) % h]
        if bad:
            raise ValueError(
                f"stage {bad[0]} has {embed_dim * 2 ** bad[0]} channels, not divisible by "
                f"num_heads[{bad[0]}]={num_heads[bad[0]]}; choose head counts dividing "
                "embed_dim * 2**s."
            )
        self.num_stages = num_stages = len(depths)
        self.patch_size, self.depths = patch_size, depths
        self.input_divisor = patch_size * 2 ** (num_stages - 1)
        dims = [embed_dim * 2**s for s in range(num_stages)]
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stage_rates = [rates[sum(depths[:s]) : sum(depths[: s + 1])] for s in range(num_stages)]

        def stage(s: int, resample: type[nn.Module] | None) -> SwinStage:
            return SwinStage(
                dim=dims[s],
                depth=depths[s],
                num_heads=num_heads[s],
                window_size=window_size,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop=drop_rate,
                drop_path=stage_rates[s],
                norm_layer=norm_layer,
                downsample=resample,
                attention_backend=attention_backend,
            )

        self.patch_embed = PatchEmbed(
            in_channels=in_channels,
            embed_dim=embed_dim,
            patch_size=patch_size,
            norm_layer=norm_layer,
        )
        self.pos_drop = nn.Dropout(drop_rate)
        last = num_stages - 1
        self.layers = nn.ModuleList(
            stage(s, PatchMerging if s < last else None) for s in range(num_stages)
        )
        self.norm = norm_layer(dims[-1])
        # decoder position i works at encoder stage last - i; position 0 only expands the bottleneck
        self.layers_up = nn.ModuleList([PatchExpand(dim=dims[-1], norm_layer=norm_layer)])
        self.layers_up.extend(
            stage(s, PatchExpand if s > 0 else None) for s in reversed(range(last))
        )
        self.concat_back_dim = nn.ModuleList([nn.Identity()])
        self.concat_back_dim.extend(nn.Linear(2 * dims[s], dims[s]) for s in reversed(range(last)))
        self.norm_up = norm_layer(embed_dim)
        self.up = FinalPatchExpand(dim=embed_dim, scale=patch_size, norm_layer=norm_layer)
        self.output = nn.Conv2d(embed_dim, num_classes, 1, bias=False)
        self.apply(_init_weights)
        if pretrained is not None:  # subclasses pass None here and load once fully built
            load_swin_pretrained(self, pretrained)

    #: module prefixes a Swin ImageNet checkpoint cannot fill (subclasses add theirs)
    pretrained_new_prefixes: tuple[str, ...] = ("concat_back_dim.", "norm_up.", "up.", "output.")

    def fuse_skip(self, position: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Fuse decoder tokens ``x`` with encoder ``skip`` (both ``[B, H, W, C]``) at decoder
        ``position``."""
        return self.concat_back_dim[position](torch.cat([x, skip], dim=-1))

    def forward_features(self, x: torch.Tensor, spatial_attention: bool = False) -> torch.Tensor:
        """Encoder + decoder on a padded image ``[B, C, H, W]`` -> tokens ``[B, H/p, W/p, C0]``.

        With ``spatial_attention`` every decoder block also receives the attention map of the
        encoder block with the same stage and index (hence the same shift), see
        :class:`AttSwinUNet`.
        """
        x = self.pos_drop(self.patch_embed(x))  # (B, H/p, W/p, C0)
        skips, encoder_attns = [], []
        for layer in self.layers:
            skips.append(x)
            if spatial_attention:
                x, attns = layer(x, return_attn=True)
                encoder_attns.append(attns)
            else:
                x = layer(x)
        x = self.layers_up[0](self.norm(x))
        for position in range(1, self.num_stages):
            s = self.num_stages - 1 - position  # encoder stage of this decoder position
            x = self.fuse_skip(position, x, skips[s])
            x = self.layers_up[position](
                x, encoder_attns=encoder_attns[s] if spatial_attention else None
            )
        return self.norm_up(x)

    def pad_input(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad ``[B, C, H, W]`` on the bottom/right to multiples of ``input_divisor``."""
        if x.ndim != 4:
            raise ValueError(
                f"{type(self).__name__} expects a [B, C, H, W] tensor, got shape {tuple(x.shape)}."
            )
        return pad_to_multiple(x, self.input_divisor)

    def head(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Tokens ``[B, h, w, C0]`` -> logits ``[B, K, height, width]`` (x4 expand, 1x1 conv,
        crop)."""
        x = self.output(self.up(x).permute(0, 3, 1, 2))
        return x[..., :height, :width]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, in_channels, H, W]``, any H, W. Returns logits ``[B, num_classes, H,
        W]``."""
        h, w = x.shape[-2:]
        return self.head(self.forward_features(self.pad_input(x)), h, w)


def _init_weights(module: nn.Module) -> None:
    # Swin initialisation: truncated-normal Linear weights, zero biases, unit LayerNorms
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def load_swin_pretrained(model: SwinUNet, path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Load an official Swin ImageNet checkpoint into a :class:`SwinUNet` (or subclass).

    Expects the microsoft/Swin-Transformer layout (a ``model`` dict with
    ``patch_embed.proj.weight``, ``layers.{s}.blocks.{j}.attn.relative_position_bias_table``,
    ``layers.{s}.downsample.reduction.weight``, ``norm.weight``, ``head.weight``, ...). As in
    Swin-Unet's ``load_from``, every encoder block ``layers.{s}.blocks.{j}`` is also copied into the
    decoder block ``layers_up.{S-1-s}.blocks.{j}``.
    Adaptations: ``relative_position_index``/``attn_mask`` buffers are dropped (derived, not
    learned); bias tables are resized bicubically when the window differs (timm
    ``resize_rel_pos_bias_table``); the patch-embedding kernel is adapted to ``in_channels != 3``
    (timm ``adapt_input_conv``); the classification ``head`` and blocks deeper than the model's
    ``depths`` (Swin-T has 6 blocks in stage 2, Swin-Unet lite 2) are skipped.

    Returns:
        ``(missing, unexpected)``: model keys left at their initialisation, and file keys not used.

    Raises:
        FileNotFoundError, RuntimeError: from :func:`networks.common.load_pretrained` (a file
            in another layout, or shapes that cannot be adapted).
    """
    own = model.state_dict()
    skipped: list[str] = []
    block_key = re.compile(r"layers\.(\d+)\.blocks\.(\d+)\.(.*)")

    def key_map(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in state.items():
            match = block_key.fullmatch(key)
            if key.endswith(("relative_position_index", "attn_mask")):
                continue
            if key.startswith("head.") or (
                match
                and int(match[1]) < model.num_stages
                and int(match[2]) >= model.depths[int(match[1])]
            ):
                skipped.append(key)
                continue
            if key == "patch_embed.proj.weight" and key in own and value.shape != own[key].shape:
                value = adapt_input_conv(own[key].shape[1], value)
            if key.endswith("relative_position_bias_table") and key in own:
                target = own[key]
                if value.shape != target.shape:
                    window = round((target.shape[0] ** 0.5 + 1) / 2)
                    value = resize_rel_pos_bias_table(value, (window, window), target.shape)
            out[key] = value
            if match and int(match[1]) < model.num_stages - 1:
                position = model.num_stages - 1 - int(match[1])  # decoder twin of this stage
                out[f"layers_up.{position}.blocks.{match[2]}.{match[3]}"] = value
        return out

    allowed = model.pretrained_new_prefixes + ("layers_up.0.",)
    allowed += tuple(f"layers_up.{i}.upsample." for i in range(1, model.num_stages))
    missing, unexpected = load_pretrained(model, path, key_map=key_map, allowed_missing=allowed)
    unexpected = skipped + unexpected
    logger.info(
        "loaded Swin weights from %s: %d model keys kept their initialisation (%s), "
        "%d file keys unused (%s)",
        path,
        len(missing),
        ", ".join(missing[:6]),
        len(unexpected),
        ", ".join(unexpected[:6]),
    )
    return missing, unexpected


NETWORKS.register("swin_unet", SwinUNet)
NETWORKS.register(
    "swin_unet_tiny",
    SwinUNet,
    embed_dim=24,
    depths=(2, 2, 2, 2),
    num_heads=(1, 2, 4, 8),
    window_size=4,
    drop_path_rate=0.1,
)
